"""Typed role groups: what a learner's driver calls.

Each group holds an :class:`~saferl.runtime.group.ActorGroup` of its role's worker class and
exposes that role's methods on whole batches: the batch is split into equal contiguous shards
(one per rank; a batch that does not divide raises a ``ValueError`` naming its size and the
number of ranks), each rank works on its shard, and the results are joined in row order.

=================  =====================  =============================================
group              worker                 methods
=================  =====================  =============================================
PolicyGroup        PolicyWorker           generate, token_logprobs, train_step, export_hf
ReferenceGroup     ReferenceWorker        token_logprobs
ScoreGroup         ScoreWorker            end_scores, export_hf
CriticGroup        CriticWorker           values, train_step, export_hf
=================  =====================  =============================================

All have ``save_checkpoint(dir)``, ``load_checkpoint(dir)``, ``state_dicts()``,
``rank_infos``, ``wait_ready()`` and ``shutdown()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from saferl.data.collators import PromptBatch
from saferl.models import ModelSpec
from saferl.runtime.batching import batch_rows, pad_and_concat, split_batch
from saferl.runtime.cluster import PlacementPlan
from saferl.runtime.group import ActorGroup
from saferl.runtime.specs import DeepSpeedSpec, GenerationSpec, GroupSpec, RuntimeSpec
from saferl.runtime.types import GenerationOutput, LossFn, RankInfo, TrainStepOutput
from saferl.runtime.workers import (
    CriticWorker,
    PolicyWorker,
    RankStepResult,
    ReferenceWorker,
    ScoreWorker,
)

__all__ = ["CriticGroup", "PolicyGroup", "ReferenceGroup", "ScoreGroup"]


# -- helpers shared by the role groups (composition: each group calls these) ------------------


def _sharded_call(group: ActorGroup, method: str, batch: Any, *extra: Any) -> list[Any]:
    shards = split_batch(batch, group.num_ranks)
    return group.call_per_rank(method, [(shard, *extra) for shard in shards])


def _reduce_steps(results: list[RankStepResult]) -> TrainStepOutput:
    count = len(results)
    keys = sorted({key for result in results for key in result.metrics})
    return TrainStepOutput(
        loss=sum(r.loss for r in results) / count,
        grad_norm=results[0].grad_norm,  # a global norm: every rank reports the same one
        learning_rate=results[0].learning_rate,
        num_rows=sum(r.num_rows for r in results),
        metrics={k: sum(r.metrics.get(k, 0.0) for r in results) / count for k in keys},
    )


def _train_step(
    group: ActorGroup, spec: DeepSpeedSpec, batch: Any, loss_fn: LossFn
) -> TrainStepOutput:
    rows = batch_rows(batch)
    expected = spec.train_batch_size(group.num_ranks)
    if rows != expected:
        raise ValueError(
            f"{group.role}.train_step needs exactly {expected} rows "
            f"(deepspeed.micro_batch_size_per_rank={spec.micro_batch_size_per_rank} x "
            f"gradient_accumulation_steps={spec.gradient_accumulation_steps} x "
            f"num_ranks={group.num_ranks}), got {rows}"
        )
    return _reduce_steps(_sharded_call(group, "train_step", batch, loss_fn))


def _save(group: ActorGroup, directory: str | Path, tag: str | None) -> str:
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    return group.call("save_checkpoint", str(folder), tag)[0]


def _load(group: ActorGroup, directory: str | Path, tag: str | None) -> None:
    group.call("load_checkpoint", str(directory), tag)


def _export(group: ActorGroup, directory: str | Path) -> Path:
    paths = [p for p in group.call("export_hf", str(directory)) if p is not None]
    return Path(paths[0])


class PolicyGroup:
    """The policy: DeepSpeed training engines that also generate.

    Args:
        model_spec: the policy's weights (e.g. the SFT checkpoint).
        tokenizer: with a pad token distinct from EOS.
        deepspeed_spec: ZeRO stage, optimizer, batch geometry.
        group_spec: ranks and per-rank resources.
        runtime_spec: backend, placement strategy, timeouts.
        placement: a shared :class:`PlacementPlan` holding ``role`` (colocation); None: own one.
        role: the role's name.
        seed: torch seed of the model build (same on every rank).
        wait: block until the ranks are up (default); with False the start-up runs in the
            background (start several groups at once) and the first call waits.
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
        self.deepspeed_spec = deepspeed_spec
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.group = ActorGroup(
            role,
            PolicyWorker,
            group_spec,
            runtime_spec,
            {"model_spec": model_spec, "tokenizer": tokenizer, "deepspeed_spec": deepspeed_spec},
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
        """``(batch, seq_len)`` token log-probs under the current policy (no grad)."""
        return torch.cat(_sharded_call(self.group, "token_logprobs", batch))

    def train_step(self, batch: Any, loss_fn: LossFn) -> TrainStepOutput:
        """One optimizer step on a global batch of ``deepspeed_spec.train_batch_size(num_ranks)``
        rows; ``loss_fn(token_logprobs (micro, seq_len), micro_batch)`` (see ``LossFn``)."""
        return _train_step(self.group, self.deepspeed_spec, batch, loss_fn)

    def save_checkpoint(self, directory: str | Path, tag: str | None = None) -> str:
        """DeepSpeed checkpoint (weights, optimizer, scheduler) into ``directory``; returns its tag.
        On several nodes ``directory`` must be on storage every node sees."""
        return _save(self.group, directory, tag)

    def load_checkpoint(self, directory: str | Path, tag: str | None = None) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (``tag=None``: the latest)."""
        _load(self.group, directory, tag)

    def export_hf(self, directory: str | Path) -> Path:
        """Hugging Face folder (model + tokenizer) loadable with ``AutoModelForCausalLM``."""
        return _export(self.group, directory)

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """Each rank's full weights (gathered under ZeRO-3), in rank order."""
        return self.group.call("state_dict")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full weights once (rank 0's copy; e.g. to sync rollout engines)."""
        return self.group.call("state_dict", False)[0]

    def shutdown(self) -> None:
        """Kill the ranks (and an owned placement group)."""
        self.group.shutdown()


class ReferenceGroup:
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
        self.group = ActorGroup(
            role,
            ReferenceWorker,
            group_spec,
            runtime_spec,
            {"model_spec": model_spec, "tokenizer": tokenizer, "deepspeed_spec": deepspeed_spec},
            placement=placement,
            seed=seed,
            wait=wait,
        )

    @property
    def rank_infos(self) -> list[RankInfo]:
        return self.group.rank_infos

    def wait_ready(self) -> None:
        self.group.wait_ready()

    def token_logprobs(self, batch: Any) -> torch.Tensor:
        """``(batch, seq_len)`` reference token log-probs."""
        return torch.cat(_sharded_call(self.group, "token_logprobs", batch))

    def save_checkpoint(self, directory: str | Path, tag: str | None = None) -> str:
        """The frozen weights (rank 0 writes them in full)."""
        return _save(self.group, directory, tag)

    def load_checkpoint(self, directory: str | Path, tag: str | None = None) -> None:
        _load(self.group, directory, tag)

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        return self.group.call("state_dict")

    def shutdown(self) -> None:
        self.group.shutdown()


class ScoreGroup:
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
        self.group = ActorGroup(
            role,
            ScoreWorker,
            group_spec,
            runtime_spec,
            {
                "model_spec": model_spec,
                "tokenizer": tokenizer,
                "deepspeed_spec": deepspeed_spec,
                "num_outputs": num_outputs,
                "kind": kind,
            },
            placement=placement,
            seed=seed,
            wait=wait,
        )

    @property
    def rank_infos(self) -> list[RankInfo]:
        return self.group.rank_infos

    def wait_ready(self) -> None:
        self.group.wait_ready()

    def end_scores(self, batch: Any) -> torch.Tensor:
        """``(batch, m)`` scores at each row's last real token."""
        return torch.cat(_sharded_call(self.group, "end_scores", batch))

    def save_checkpoint(self, directory: str | Path, tag: str | None = None) -> str:
        return _save(self.group, directory, tag)

    def load_checkpoint(self, directory: str | Path, tag: str | None = None) -> None:
        _load(self.group, directory, tag)

    def export_hf(self, directory: str | Path) -> Path:
        """Hugging Face folder loadable with ``AutoModelForSequenceClassification``."""
        return _export(self.group, directory)

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        return self.group.call("state_dict")

    def shutdown(self) -> None:
        self.group.shutdown()


class CriticGroup:
    """A reward or cost critic: DeepSpeed training engines around a one-output score model.

    Args (beyond :class:`PolicyGroup`'s):
        init_from: a saved score model to initialise from (Safe RLHF: the reward/cost model).
        init_output_index: which output of an ``m > 1`` score model this critic keeps.
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
        placement: PlacementPlan | None = None,
        role: str = "reward_critic",
        seed: int = 0,
        wait: bool = True,
    ) -> None:
        self.deepspeed_spec = deepspeed_spec
        self.group = ActorGroup(
            role,
            CriticWorker,
            group_spec,
            runtime_spec,
            {
                "model_spec": model_spec,
                "tokenizer": tokenizer,
                "deepspeed_spec": deepspeed_spec,
                "init_from": init_from,
                "init_output_index": init_output_index,
            },
            placement=placement,
            seed=seed,
            wait=wait,
        )

    @property
    def rank_infos(self) -> list[RankInfo]:
        return self.group.rank_infos

    def wait_ready(self) -> None:
        self.group.wait_ready()

    def values(self, batch: Any) -> torch.Tensor:
        """``(batch, seq_len)`` values ``V_t`` (no grad)."""
        return torch.cat(_sharded_call(self.group, "values", batch))

    def train_step(self, batch: Any, loss_fn: LossFn) -> TrainStepOutput:
        """One optimizer step; ``loss_fn(values (micro, seq_len), micro_batch)``."""
        return _train_step(self.group, self.deepspeed_spec, batch, loss_fn)

    def save_checkpoint(self, directory: str | Path, tag: str | None = None) -> str:
        return _save(self.group, directory, tag)

    def load_checkpoint(self, directory: str | Path, tag: str | None = None) -> None:
        _load(self.group, directory, tag)

    def export_hf(self, directory: str | Path) -> Path:
        """Hugging Face folder loadable with ``AutoModelForSequenceClassification``."""
        return _export(self.group, directory)

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        return self.group.call("state_dict")

    def shutdown(self) -> None:
        self.group.shutdown()
