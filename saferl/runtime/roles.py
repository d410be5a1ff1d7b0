"""Typed role groups: what a learner's driver calls.

Each group is a :class:`RoleGroup` (an :class:`~saferl.runtime.group.ActorGroup` of its role's
worker, each rank holding the role's head) and exposes that role's methods on whole batches: the
batch is split into equal contiguous shards (one per rank; a batch that does not divide raises a
``ValueError`` naming its size and the number of ranks), each rank works on its shard, and the
results are joined in row order.

=================  ======================================  ============================================
group              worker (engine, head)                   methods
=================  ======================================  ============================================
PolicyGroup        PolicyWorker (trainable, PolicyHead)    generate, token_logprobs, train_step,
                                                           export_hf, full_state_dict
ReferenceGroup     ReferenceWorker (inference, PolicyHead) token_logprobs
ScoreGroup         ScoreWorker (inference, ScoreHead)      end_scores, export_hf
CriticGroup        CriticWorker (trainable, CriticHead)    values, train_step, export_hf
=================  ======================================  ============================================

All have ``save_checkpoint(dir)``, ``load_checkpoint(dir)``, ``state_dicts()``,
``rank_infos``, ``wait_ready()`` and ``shutdown()`` (from :class:`RoleGroup`); the subclasses
only name their role's methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from saferl.core.finite import nonfinite_error
from saferl.data.batches import PromptBatch
from saferl.models import ModelSpec
from saferl.runtime.batching import batch_rows, pad_and_concat, split_batch
from saferl.runtime.cluster import PlacementPlan
from saferl.runtime.group import ActorGroup
from saferl.runtime.heads import CriticHead, Head, PolicyHead, ScoreHead
from saferl.runtime.specs import DeepSpeedSpec, GenerationSpec, GroupSpec, RuntimeSpec
from saferl.runtime.types import GenerationOutput, LossFn, RankInfo, TrainStepOutput
from saferl.runtime.workers import (
    CriticWorker,
    EngineWorker,
    PolicyWorker,
    RankStepResult,
    ReferenceWorker,
    ScoreWorker,
)

__all__ = ["CriticGroup", "PolicyGroup", "ReferenceGroup", "RoleGroup", "ScoreGroup"]


def _reduce_steps(results: list[RankStepResult]) -> TrainStepOutput:
    count = len(results)
    keys = sorted({key for result in results for key in result.metrics})
    return TrainStepOutput(
        loss=sum(r.loss for r in results) / count,
        grad_norm=results[0].grad_norm,  # a global norm: every rank reports the same one
        learning_rate=results[0].learning_rate,
        num_rows=sum(r.num_rows for r in results),
        metrics={k: sum(r.metrics.get(k, 0.0) for r in results) / count for k in keys},
        refused=results[0].refused,  # the ranks agreed on it
    )


class RoleGroup:
    """The plumbing every role group shares: start-up, checkpoints, state dicts, shutdown, and
    the sharded calls the subclasses name (``_forward``, ``_train_step``, ``_export_hf``).

    Args:
        role: the role's name.
        worker_class: the role's worker (e.g. ``PolicyWorker``).
        head: the model every rank builds (:mod:`saferl.runtime.heads`).
        deepspeed_spec: ZeRO stage, optimizer, batch geometry.
        group_spec: ranks and per-rank resources.
        runtime_spec: backend, placement strategy, timeouts.
        placement: a shared :class:`PlacementPlan` holding ``role`` (colocation); None: own one.
        seed: torch seed of the model build (same on every rank).
        wait: block until the ranks are up (default); with False the start-up runs in the
            background (start several groups at once) and the first call waits.
    """

    def __init__(
        self,
        role: str,
        worker_class: type[EngineWorker],
        head: Head,
        deepspeed_spec: DeepSpeedSpec,
        group_spec: GroupSpec,
        runtime_spec: RuntimeSpec,
        *,
        placement: PlacementPlan | None,
        seed: int,
        wait: bool,
    ) -> None:
        self.head = head
        self.deepspeed_spec = deepspeed_spec
        self.group = ActorGroup(
            role,
            worker_class,
            group_spec,
            runtime_spec,
            {"head": head, "deepspeed_spec": deepspeed_spec},
            placement=placement,
            seed=seed,
            wait=wait,
        )

    @property
    def rank_infos(self) -> list[RankInfo]:
        """Where each rank runs."""
        return self.group.rank_infos

    def wait_ready(self) -> None:
        """Wait for a group created with ``wait=False`` to finish starting."""
        self.group.wait_ready()

    def save_checkpoint(self, directory: str | Path, tag: str | None = None) -> str:
        """A checkpoint into ``directory``; returns its tag. Trainable roles write DeepSpeed's
        (weights, optimizer, scheduler), frozen ones their weights (rank 0 writes them in full).
        On several nodes ``directory`` must be on storage every node sees."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        return self.group.call("save_checkpoint", str(folder), tag)[0]

    def load_checkpoint(self, directory: str | Path, tag: str | None = None) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (``tag=None``: the latest)."""
        self.group.call("load_checkpoint", str(directory), tag)

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """Each rank's full weights (gathered under ZeRO-3), in rank order."""
        return self.group.call("state_dict")

    def shutdown(self) -> None:
        """Kill the ranks (and an owned placement group)."""
        self.group.shutdown()

    # -- the sharded calls the subclasses expose under their role's names ---------------------

    def _sharded_call(
        self, method: str, batch: Any, *extra: Any, label: str | None = None
    ) -> list[Any]:
        shards = split_batch(batch, self.group.num_ranks)
        per_rank_args = [(shard, *extra) for shard in shards]
        return self.group.call_per_rank(method, per_rank_args, label=label)

    def _forward(self, batch: Any, label: str) -> torch.Tensor:
        """The head's output on the whole batch, rows in order; ``label`` (the public method's
        name) is what a failure message calls it."""
        return torch.cat(self._sharded_call("forward", batch, label=label))

    def _train_step(self, batch: Any, loss_fn: LossFn, report_nonfinite: bool) -> TrainStepOutput:
        rows = batch_rows(batch)
        num_ranks = self.group.num_ranks
        spec = self.deepspeed_spec
        expected = spec.train_batch_size(num_ranks)
        if rows != expected:
            raise ValueError(
                f"{self.group.role}.train_step needs exactly {expected} rows "
                f"(deepspeed.micro_batch_size_per_rank={spec.micro_batch_size_per_rank} x "
                f"gradient_accumulation_steps={spec.gradient_accumulation_steps} x "
                f"num_ranks={num_ranks}), got {rows}"
            )
        output = _reduce_steps(self._sharded_call("train_step", batch, loss_fn))
        if output.refused is not None and not report_nonfinite:
            raise nonfinite_error(f"{self.group.role} loss", output.refused.count, None, output.refused.where)
        return output

    def _export_hf(self, directory: str | Path) -> Path:
        paths = [p for p in self.group.call("export_hf", str(directory)) if p is not None]
        return Path(paths[0])


class PolicyGroup(RoleGroup):
    """The policy: DeepSpeed training engines around a causal LM that also generate.

    Args:
        model_spec: the policy's weights (e.g. the SFT checkpoint).
        tokenizer: with a pad token distinct from EOS.
        deepspeed_spec: ZeRO stage, optimizer, batch geometry.
        group_spec: ranks and per-rank resources.
        runtime_spec: backend, placement strategy, timeouts.
        placement, role, seed, wait: as :class:`RoleGroup`.
    """

    def __init__(
        self,
        model_spec: ModelSpec,
        tokenizer: PreTrainedTokenizerBase,
        deepspeed_spec: DeepSpeedSpec,
        group_spec: GroupSpec,
        runtime_spec: RuntimeSpec,
        *,
        placement: PlacementPlan | None = None,
        role: str = "policy",
        seed: int = 0,
        wait: bool = True,
    ) -> None:
        self.pad_token_id = int(tokenizer.pad_token_id)
        head = PolicyHead(model_spec, tokenizer)
        super().__init__(
            role, PolicyWorker, head, deepspeed_spec, group_spec, runtime_spec,
            placement=placement, seed=seed, wait=wait,
        )  # fmt: skip

    def generate(self, prompts: PromptBatch, spec: GenerationSpec) -> GenerationOutput:
        """Responses for ``(batch, prompt_len)`` LEFT-padded prompts.

        Row ``i`` is sampled with the seed ``(spec.seed, i, step)`` whichever rank it lands on,
        so the output does not depend on the number of ranks.

        Returns:
            ``GenerationOutput`` with ``sequences (batch, prompt_len + response_len)``,
            ``response_len`` the longest response (shorter ones padded with the pad id).
        """
        shards = split_batch(prompts, self.group.num_ranks)
        size = batch_rows(shards[0])
        outputs: list[GenerationOutput] = self.group.call_per_rank(
            "generate", [(shard, spec, rank * size) for rank, shard in enumerate(shards)]
        )
        return GenerationOutput(
            prompt_ids=torch.cat([o.prompt_ids for o in outputs]),
            sequences=pad_and_concat([o.sequences for o in outputs], self.pad_token_id),
            attention_mask=pad_and_concat([o.attention_mask for o in outputs], False),
            response_mask=pad_and_concat([o.response_mask for o in outputs], False),
        )

    def token_logprobs(self, batch: Any) -> torch.Tensor:
        """``(batch, seq_len)`` token log-probs under the current policy (no grad; position
        ``t``: ``log π(x_t | x_<t)``, 0 at padding)."""
        return self._forward(batch, "token_logprobs")

    def train_step(self, batch: Any, loss_fn: LossFn, report_nonfinite: bool = False) -> TrainStepOutput:
        """One optimizer step on a global batch of ``deepspeed_spec.train_batch_size(num_ranks)``
        rows; ``loss_fn(token_logprobs (micro, seq_len), micro_batch)`` (see ``LossFn``).

        A NaN or ±inf loss on any rank is refused before ``backward`` (nothing is updated): this
        raises ``NonFiniteError``, or with ``report_nonfinite`` returns the output with
        ``refused`` set (a learner's guard then stops or skips the batch)."""
        return self._train_step(batch, loss_fn, report_nonfinite)

    def export_hf(self, directory: str | Path) -> Path:
        """Hugging Face folder (model + tokenizer) loadable with ``AutoModelForCausalLM``."""
        return self._export_hf(directory)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full weights once (rank 0's copy; e.g. to sync rollout engines)."""
        return self.group.call("state_dict", False)[0]


class ReferenceGroup(RoleGroup):
    """The frozen reference policy: DeepSpeed inference engines (arguments as
    :class:`PolicyGroup`; ``deepspeed_spec.zero_stage == 3`` partitions the weights)."""

    def __init__(
        self,
        model_spec: ModelSpec,
        tokenizer: PreTrainedTokenizerBase,
        deepspeed_spec: DeepSpeedSpec,
        group_spec: GroupSpec,
        runtime_spec: RuntimeSpec,
        *,
        placement: PlacementPlan | None = None,
        role: str = "reference",
        seed: int = 0,
        wait: bool = True,
    ) -> None:
        head = PolicyHead(model_spec, tokenizer)
        super().__init__(
            role, ReferenceWorker, head, deepspeed_spec, group_spec, runtime_spec,
            placement=placement, seed=seed, wait=wait,
        )  # fmt: skip

    def token_logprobs(self, batch: Any) -> torch.Tensor:
        """``(batch, seq_len)`` reference token log-probs."""
        return self._forward(batch, "token_logprobs")


class ScoreGroup(RoleGroup):
    """A reward or cost model: DeepSpeed inference engines around a score model.

    Args (beyond :class:`PolicyGroup`'s):
        num_outputs: ``m``, the score head's outputs.
        kind: ``"reward"`` or ``"cost"``, recorded by :meth:`export_hf` (None keeps the model's).
    """

    def __init__(
        self,
        model_spec: ModelSpec,
        tokenizer: PreTrainedTokenizerBase,
        deepspeed_spec: DeepSpeedSpec,
        group_spec: GroupSpec,
        runtime_spec: RuntimeSpec,
        *,
        num_outputs: int = 1,
        kind: str | None = None,
        placement: PlacementPlan | None = None,
        role: str = "reward",
        seed: int = 0,
        wait: bool = True,
    ) -> None:
        head = ScoreHead(model_spec, tokenizer, num_outputs=num_outputs, kind=kind)
        super().__init__(
            role, ScoreWorker, head, deepspeed_spec, group_spec, runtime_spec,
            placement=placement, seed=seed, wait=wait,
        )  # fmt: skip

    def end_scores(self, batch: Any) -> torch.Tensor:
        """``(batch, m)`` scores at each row's last real token."""
        return self._forward(batch, "end_scores")

    def export_hf(self, directory: str | Path) -> Path:
        """Hugging Face folder loadable with ``AutoModelForSequenceClassification``."""
        return self._export_hf(directory)


class CriticGroup(RoleGroup):
    """A reward or cost critic: DeepSpeed training engines around a one-output score model.

    Args (beyond :class:`PolicyGroup`'s):
        init_from: a saved score model to initialise from (Safe RLHF: the reward/cost model).
        init_output_index: which output of an ``m > 1`` score model this critic keeps.
        value_scale: multiplies the loaded head, so the critic starts in the calibrated units of
            the rewards it predicts (``build_critic``).
    """

    def __init__(
        self,
        model_spec: ModelSpec,
        tokenizer: PreTrainedTokenizerBase,
        deepspeed_spec: DeepSpeedSpec,
        group_spec: GroupSpec,
        runtime_spec: RuntimeSpec,
        *,
        init_from: str | None = None,
        init_output_index: int | None = None,
        value_scale: float = 1.0,
        placement: PlacementPlan | None = None,
        role: str = "reward_critic",
        seed: int = 0,
        wait: bool = True,
    ) -> None:
        head = CriticHead(
            model_spec, tokenizer, init_from=init_from, init_output_index=init_output_index,
            value_scale=value_scale,
        )
        super().__init__(
            role, CriticWorker, head, deepspeed_spec, group_spec, runtime_spec,
            placement=placement, seed=seed, wait=wait,
        )  # fmt: skip

    def values(self, batch: Any) -> torch.Tensor:
        """``(batch, seq_len)`` values ``V_t`` (no grad)."""
        return self._forward(batch, "values")

    def train_step(self, batch: Any, loss_fn: LossFn, report_nonfinite: bool = False) -> TrainStepOutput:
        """One optimizer step; ``loss_fn(values (micro, seq_len), micro_batch)``; a non-finite loss
        as :meth:`PolicyGroup.train_step`."""
        return self._train_step(batch, loss_fn, report_nonfinite)

    def export_hf(self, directory: str | Path) -> Path:
        """Hugging Face folder loadable with ``AutoModelForSequenceClassification``."""
        return self._export_hf(directory)
