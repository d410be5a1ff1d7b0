"""The rank actors: one worker per engine kind, each holding a head (the kind of model).

=================  =======================  =====================================================
worker             engine                   methods (beyond the shared ones)
=================  =======================  =====================================================
TrainableWorker    DeepSpeed training       ``train_step``; checkpoints: DeepSpeed's own (weights,
                                            optimizer, scheduler)
InferenceWorker    DeepSpeed inference      checkpoints: rank 0 writes the full frozen weights
=================  =======================  =====================================================

Both serve ``forward`` (the head's output: token log-probs, end scores or values, see
:mod:`saferl.runtime.heads`), ``generate`` (policy heads only), ``export_hf`` and
``state_dict``. These are plain classes: each rank's Ray actor is a
:class:`~saferl.runtime.pool.RankHost` that constructs one and forwards calls to it, and may
serve several groups one after the other (:mod:`saferl.runtime.pool`). Each role has a named
subclass that adds nothing (``PolicyWorker``, ``ReferenceWorker``, ``ScoreWorker``,
``CriticWorker``), so errors and logs name the role's worker. Every worker

1. is constructed with a :class:`RankSetup` (role, rank, world size, backend, ...), its head and
   its DeepSpeed spec; nothing heavy happens in the constructor;
2. reports ``master_address()`` (rank 0's node address and a free port) and ``rank_info()``;
3. ``setup((master_addr, master_port))``: joins the world (``setup(None)``: a reused process,
   already in it), builds its head's model on the CPU
   with the group's seed, wraps it (:mod:`saferl.runtime.engines`) and starts its DeepSpeed
   engine, which moves it to the rank's device (ZeRO 0-2) or partitions it there (ZeRO-3: no
   rank's GPU ever holds the whole model);
4. serves its role's methods on the shard of the batch the driver sends. Methods that hold a
   collective under ZeRO-3 (any forward, checkpoints, exports) must be called on every rank with
   equal shards, which the groups guarantee.

The rank plumbing is :class:`RankContext`; the two workers share :class:`EngineWorker` (one
level, no hooks: each worker's ``setup`` and checkpoints are its own).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saferl.core.finite import NonFiniteCount, count_nonfinite, nonfinite_error
from saferl.data.batches import PromptBatch
from saferl.runtime import distributed
from saferl.runtime.batching import batch_rows, batch_to, model_inputs, slice_batch
from saferl.runtime.engines import (
    build_inference_engine,
    build_train_engine,
    full_state_dict,
    is_zero3,
    load_full_state_dict,
)
from saferl.runtime.generation import generate_sequences
from saferl.runtime.heads import Head, PolicyHead
from saferl.runtime.specs import DeepSpeedSpec, GenerationSpec
from saferl.runtime.types import GenerationOutput, LossFn, RankInfo, RefusedStep

__all__ = [
    "CriticWorker",
    "EngineWorker",
    "InferenceWorker",
    "PolicyWorker",
    "RankContext",
    "RankSetup",
    "RankStepResult",
    "ReferenceWorker",
    "ScoreWorker",
    "TrainableWorker",
]

#: File an inference worker's checkpoint writes (rank 0, full weights) inside ``<dir>/<tag>/``.
INFERENCE_CHECKPOINT_FILE = "full_model_state.pt"


@dataclass(frozen=True)
class RankSetup:
    """What a rank needs to know about its place in the group.

    Attributes:
        role: the group's role name (used in messages).
        rank: this rank.
        world_size: ranks of the group.
        uses_gpus: whether the rank was given a GPU.
        backend: torch.distributed backend.
        collective_timeout_s: timeout of the rendezvous and collectives.
        seed: torch seed before the model is built (the same on every rank, so freshly
            initialised weights agree).
    """

    role: str
    rank: int
    world_size: int
    uses_gpus: bool
    backend: str
    collective_timeout_s: float
    seed: int = 0


@dataclass(frozen=True)
class RankStepResult:
    """One rank's view of a train step (the group reduces these into a ``TrainStepOutput``);
    ``refused`` is the same on every rank (they agree on it, see :func:`refused_step`)."""

    loss: float
    grad_norm: float | None
    learning_rate: float
    num_rows: int
    metrics: dict[str, float]
    refused: RefusedStep | None = None


class RankContext:
    """The distributed plumbing of one rank: device, rendezvous, identity."""

    def __init__(self, setup: RankSetup) -> None:
        self.setup = setup
        self.device = distributed.local_device(setup.uses_gpus)
        self.joined = False

    @property
    def device_type(self) -> str:
        """``"cuda"`` or ``"cpu"`` (for the DeepSpeed config)."""
        return self.device.type

    def master_address(self) -> tuple[str, int]:
        """This node's address and a free port (asked of rank 0)."""
        return distributed.node_ip(), distributed.free_port()

    def join(self, master: tuple[str, int] | None) -> None:
        """Join the group's world (blocks until every rank joined), then seed torch.

        ``master`` None: this process is a reused rank that is already in the group's world
        (:mod:`saferl.runtime.pool`); it checks its place there instead.
        """
        if master is None:
            distributed.check_joined(self.setup.rank, self.setup.world_size, self.setup.backend)
        else:
            distributed.init_process_group(
                *master,
                self.setup.rank,
                self.setup.world_size,
                self.setup.backend,
                self.setup.collective_timeout_s,
            )
        self.joined = True
        # Seeded after the join on every start, fresh or reused, so a model's initial weights
        # depend on the group's seed alone.
        torch.manual_seed(self.setup.seed)

    def info(self) -> RankInfo:
        """Where this rank runs."""
        import ray

        return RankInfo(
            role=self.setup.role,
            rank=self.setup.rank,
            world_size=self.setup.world_size,
            node_id=ray.get_runtime_context().get_node_id(),
            node_ip=distributed.node_ip(),
            pid=os.getpid(),
            device=str(self.device),
            backend=self.setup.backend,
        )


def _to_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item())
    return float(value)


def refused_step(loss: torch.Tensor, setup: RankSetup, device: torch.device) -> RefusedStep | None:
    """Whether the group must refuse this step: None when every rank's loss is finite, else the
    first rank whose loss is NaN or ±inf.

    Every rank must reach the same answer: a rank that skipped ``backward`` while another went
    on would leave the other alone in ZeRO's gradient reduction, which then hangs. So with
    several ranks each one's count is all-reduced (a ``(world_size, 3)`` table, one row per rank).
    """
    own = count_nonfinite(loss)
    if setup.world_size == 1:
        counts = [own]
    else:
        table = torch.zeros(setup.world_size, 3, dtype=torch.int64, device=device)
        table[setup.rank] = torch.tensor([own.nan, own.inf, own.total], device=device)
        torch.distributed.all_reduce(table)
        counts = [NonFiniteCount(*(int(v) for v in row)) for row in table.cpu()]
    for rank, count in enumerate(counts):
        if not count.finite:
            return RefusedStep(f"{setup.role} rank {rank}", count)
    return None


def run_train_step(
    engine: Any,
    spec: DeepSpeedSpec,
    batch: Any,
    loss_fn: LossFn,
    device: torch.device,
    setup: RankSetup,
) -> RankStepResult:
    """One optimizer step on this rank's shard: ``gradient_accumulation_steps`` micro-batches of
    ``micro_batch_size_per_rank`` rows, each ``loss_fn(engine(ids, mask), micro_batch)``.

    DeepSpeed divides each micro-batch loss by the accumulation steps and averages gradients over
    ranks, so with equal shards and a per-row-mean loss the gradient is that of the global-batch
    mean.

    A NaN or ±inf loss on any rank never reaches ``backward``: every rank refuses the step
    (:func:`refused_step`) and returns ``refused``, weights, optimizer and scheduler untouched;
    the driver then stops the run or skips the batch.

    Raises:
        ValueError: the shard does not have ``micro_batch_size_per_rank *
            gradient_accumulation_steps`` rows, or ``loss_fn`` returns a non-scalar.
        NonFiniteError: a non-finite loss after an earlier micro-batch of the step went through
            ``backward`` (its gradients cannot be taken back out of ZeRO's buffers).
    """
    rows = batch_rows(batch)
    expected = spec.rows_per_rank()
    if rows != expected:
        raise ValueError(
            f"train_step got {rows} rows on this rank, expected deepspeed.micro_batch_size_per_rank"
            f" ({spec.micro_batch_size_per_rank}) x deepspeed.gradient_accumulation_steps "
            f"({spec.gradient_accumulation_steps}) = {expected}"
        )
    engine.train()
    learning_rate = float(engine.get_lr()[0])
    micro = spec.micro_batch_size_per_rank
    losses: list[float] = []
    metric_sums: dict[str, float] = {}
    for index in range(spec.gradient_accumulation_steps):
        micro_batch = batch_to(slice_batch(batch, index * micro, (index + 1) * micro), device)
        input_ids, attention_mask = model_inputs(micro_batch)
        outputs = engine(input_ids, attention_mask)
        result = loss_fn(outputs, micro_batch)
        loss, metrics = result if isinstance(result, tuple) else (result, {})
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(
                f"loss_fn must return a scalar tensor (or (loss, metrics)), got {type(loss).__name__}"
                f"{'' if not isinstance(loss, torch.Tensor) else tuple(loss.shape)}"
            )
        refused = refused_step(loss.detach(), setup, device)
        if refused is not None:
            if index > 0:
                raise nonfinite_error(
                    f"loss (micro-batch {index}, after {index} micro-batch(es) already went through "
                    "backward: with deepspeed.gradient_accumulation_steps > 1 a step can be refused "
                    "only on its first micro-batch)",
                    refused.count, None, refused.where,
                )
            return RankStepResult(float("nan"), None, learning_rate, rows, {}, refused)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach().float().item()))
        for key, value in metrics.items():
            metric_sums[key] = metric_sums.get(key, 0.0) + (_to_float(value) or 0.0)
    count = spec.gradient_accumulation_steps
    return RankStepResult(
        loss=sum(losses) / count,
        grad_norm=_to_float(engine.get_global_grad_norm()),
        learning_rate=learning_rate,
        num_rows=rows,
        metrics={key: total / count for key, total in metric_sums.items()},
    )


def run_forward(engine: Any, batch: Any, device: torch.device) -> torch.Tensor:
    """``engine(input_ids, attention_mask)`` on this rank's shard, in eval mode, no grad, on CPU."""
    engine.eval()
    batch = batch_to(batch, device)
    input_ids, attention_mask = model_inputs(batch)
    with torch.no_grad():
        return engine(input_ids, attention_mask).float().cpu()


def _checkpoint_train_engine(engine: Any, directory: str, tag: str | None) -> str:
    engine.save_checkpoint(directory, tag=tag)
    return tag if tag is not None else f"global_step{engine.global_steps}"


def _load_train_engine(engine: Any, directory: str, tag: str | None) -> None:
    # DeepSpeed unpickles its optimizer-state files with torch.load(weights_only=False) and has
    # no option to change that (load_checkpoint's custom_load_fn gets the already-unpickled state).
    # That is safe only because ``directory`` is this run's own checkpoint folder, written by
    # _checkpoint_train_engine; never point it at a checkpoint from elsewhere. Model inputs load
    # through saferl.models (safetensors or weights_only=True, see saferl.models.untrusted).
    load_path, _ = engine.load_checkpoint(
        directory, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint found in {directory!r} (tag {tag!r})")


def _latest_tag(directory: str, tag: str | None) -> str:
    if tag is not None:
        return tag
    latest = Path(directory) / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"no checkpoint in {directory!r}: {latest} is missing; pass a tag")
    return latest.read_text().strip()


def _checkpoint_inference_engine(engine: Any, rank: int, directory: str, tag: str | None) -> str:
    """Frozen weights only: rank 0 writes the full state dict (a collective under ZeRO-3)."""
    tag = tag or "frozen"
    state = full_state_dict(engine, keep=rank == 0)
    if rank == 0:
        folder = Path(directory) / tag
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(state, folder / INFERENCE_CHECKPOINT_FILE)
        (Path(directory) / "latest").write_text(tag)
    return tag


def _load_inference_engine(engine: Any, rank: int, directory: str, tag: str | None) -> None:
    path = Path(directory) / _latest_tag(directory, tag) / INFERENCE_CHECKPOINT_FILE
    load_on_this_rank = rank == 0 or not is_zero3(engine)
    if load_on_this_rank and not path.is_file():
        raise FileNotFoundError(f"no inference checkpoint at {str(path)!r}")
    state = torch.load(path, map_location="cpu", weights_only=True) if load_on_this_rank else {}
    load_full_state_dict(engine, state, source_rank=0)


def _export(engine: Any, rank: int, head: Head, directory: str) -> str | None:
    """Rank 0 writes the wrapped model in Hugging Face format; returns the folder there.

    Under ZeRO-3 the full weights are gathered (every rank takes part) into a freshly built
    model of the same structure on rank 0, cast to the engine's parameter dtype; otherwise
    rank 0 saves its own full copy.
    """
    if not is_zero3(engine):
        if rank == 0:
            return str(head.save(engine.module.model, directory))
        return None
    state = full_state_dict(engine, keep=rank == 0)
    if rank != 0:
        return None
    model: nn.Module = head.build()
    dtype = next(v.dtype for v in state.values() if v.is_floating_point())
    model.load_state_dict(state, strict=True)
    model.to(dtype=dtype)
    return str(head.save(model, directory))


class EngineWorker:
    """What both engine workers share: the rank's plumbing, the head's forward, generation,
    exports and full state dicts. Not used on its own (it builds no engine)."""

    def __init__(self, setup: RankSetup, head: Head, deepspeed_spec: DeepSpeedSpec) -> None:
        self.ctx = RankContext(setup)
        self.head = head
        self.spec = deepspeed_spec
        self.engine: Any = None

    def rank_info(self) -> RankInfo:
        return self.ctx.info()

    def master_address(self) -> tuple[str, int]:
        return self.ctx.master_address()

    def _join_and_build(self, master: tuple[str, int] | None) -> nn.Module:
        """Join the world (``master`` None: already in it), seed torch, build the head's model
        and wrap it (before the engine)."""
        self.ctx.join(master)
        return self.head.wrap(self.head.build())

    def close(self) -> None:
        """Drop the engine (its optimizer's and ZeRO's hooks and buffers) so that this process
        can serve another group (:mod:`saferl.runtime.pool`)."""
        engine, self.engine = self.engine, None
        if engine is not None and hasattr(engine, "destroy"):
            engine.destroy()

    def forward(self, batch: Any) -> torch.Tensor:
        """The head's output on this rank's shard (no grad, on CPU): token log-probs
        ``(shard, seq_len)`` (position ``t``: ``log π(x_t | x_<t)``; 0 at padding), end scores
        ``(shard, m)`` or values ``(shard, seq_len)``."""
        return run_forward(self.engine, batch, self.ctx.device)

    def generate(
        self, prompts: PromptBatch, spec: GenerationSpec, row_offset: int
    ) -> GenerationOutput:
        """Responses for this rank's prompts ``(shard, prompt_len)``; rows are numbered from
        ``row_offset`` for the per-row seeds.

        Raises:
            TypeError: the head is not a :class:`~saferl.runtime.heads.PolicyHead`.
        """
        if not isinstance(self.head, PolicyHead):
            raise TypeError(
                f"only a policy head generates; this rank holds a {type(self.head).__name__}"
            )
        self.engine.eval()
        synced = is_zero3(self.engine) and self.ctx.setup.world_size > 1
        return generate_sequences(
            self.engine.module.model,
            prompts.to(self.ctx.device),
            spec,
            pad_token_id=int(self.head.tokenizer.pad_token_id),
            eos_token_id=int(self.head.tokenizer.eos_token_id),
            row_offset=row_offset,
            synced_gpus=synced,
        )

    def export_hf(self, directory: str) -> str | None:
        """The head's Hugging Face folder, written by rank 0 (a collective under ZeRO-3)."""
        return _export(self.engine, self.ctx.setup.rank, self.head, directory)

    def state_dict(self, on_all_ranks: bool = True) -> Mapping[str, torch.Tensor]:
        """Full weights of the wrapped model on CPU (a collective under ZeRO-3); with
        ``on_all_ranks=False`` ranks other than 0 return an empty dict."""
        # every rank takes part; only those that return it copy
        return full_state_dict(self.engine, keep=on_all_ranks or self.ctx.setup.rank == 0)


class TrainableWorker(EngineWorker):
    """One rank of a trained model: a DeepSpeed training engine around its head's model.

    ``train_step(batch, loss_fn)`` calls ``loss_fn(forward outputs, micro_batch)``: token
    log-probs ``(micro, seq_len)`` for a policy head, values ``(micro, seq_len)`` for a critic
    head. Checkpoints are DeepSpeed's (weights, optimizer, scheduler).
    """

    def setup(self, master: tuple[str, int] | None) -> None:
        module = self._join_and_build(master)
        self.engine = build_train_engine(
            module, self.spec, self.ctx.setup.world_size, self.ctx.device_type
        )

    def train_step(self, batch: Any, loss_fn: LossFn) -> RankStepResult:
        return run_train_step(self.engine, self.spec, batch, loss_fn, self.ctx.device, self.ctx.setup)

    def save_checkpoint(self, directory: str, tag: str | None) -> str:
        return _checkpoint_train_engine(self.engine, directory, tag)

    def load_checkpoint(self, directory: str, tag: str | None) -> None:
        _load_train_engine(self.engine, directory, tag)


class InferenceWorker(EngineWorker):
    """One rank of a frozen model: a DeepSpeed inference engine around its head's model (ZeRO-3
    partitions its parameters when the spec's stage is 3). Checkpoints hold the frozen weights
    only (rank 0 writes them in full)."""

    def setup(self, master: tuple[str, int] | None) -> None:
        module = self._join_and_build(master)
        self.engine = build_inference_engine(
            module, self.spec, self.ctx.setup.world_size, self.ctx.device_type
        )

    def save_checkpoint(self, directory: str, tag: str | None) -> str:
        return _checkpoint_inference_engine(self.engine, self.ctx.setup.rank, directory, tag)

    def load_checkpoint(self, directory: str, tag: str | None) -> None:
        _load_inference_engine(self.engine, self.ctx.setup.rank, directory, tag)


# One named class per role, so that messages name the role's worker. They add nothing; the role
# groups pick them.


class PolicyWorker(TrainableWorker):
    """Policy ranks: a trainable engine with a :class:`~saferl.runtime.heads.PolicyHead`."""


class ReferenceWorker(InferenceWorker):
    """Reference ranks: an inference engine with a :class:`~saferl.runtime.heads.PolicyHead`."""


class ScoreWorker(InferenceWorker):
    """Reward or cost model ranks: an inference engine with a
    :class:`~saferl.runtime.heads.ScoreHead`."""


class CriticWorker(TrainableWorker):
    """Critic ranks: a trainable engine with a :class:`~saferl.runtime.heads.CriticHead`."""
