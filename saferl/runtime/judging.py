"""Judges and graders as a role group: any causal LM, or a sequence classifier, read per row.

The RBR LM grader (``P(yes) / (P(yes) + P(no))``), LlamaGuard-style safety judges (``P(unsafe)``
from the first answer token, categories from a short greedy continuation) and
sequence-classification judges (a softmax over the classifier's labels) all need the same thing
of a model: run it over many short texts and read a few probabilities per row. This module is
that, as a role group beside the score models:

=================  ==========================================  =================================
piece              what                                        like
=================  ==========================================  =================================
JudgeHead          a causal LM or a sequence classifier from   ``ScoreHead``
                   a folder (hub name, or a tiny config);
                   ``kind="causal_lm"``: forward returns
                   logits ``(batch, seq, vocab)``;
                   ``kind="classifier"``: ``(batch, labels)``
JudgeWorker        a DeepSpeed inference engine around it      ``ScoreWorker``
                   (ZeRO-3 partitions a large judge over the
                   ranks); reads its shard in micro-batches
JudgeGroup         ``next_token_readings(rows, token_sets)``,  ``ScoreGroup``
                   ``label_probabilities(rows)``: rows are
                   texts or token-id lists, any number; the
                   group pads the row count to a multiple of
                   the ranks, sorts rows by length (less
                   padding), shards, joins in the caller's
                   order
=================  ==========================================  =================================

**Readings of a causal LM** (:meth:`JudgeGroup.next_token_readings`). Rows are right-padded
(exact for a causal LM: padding after a row's last token cannot change its logits). At each
row's last token the next-token distribution is read in float64: for each *token set* (e.g. the
ids of ``yes`` and `` yes``) the log of its total probability ``log Σ_{t∈set} p(t)``. Optionally
the row is then continued greedily (``max_new_tokens``), so a judge whose answer is
``unsafe\\nS1,S10`` gives its categories; tokens in ``skip_token_ids`` chosen greedily *before*
the answer (LlamaGuard 3 writes ``\\n\\n`` first) are appended and the reading moves to the next
position (at most ``max_skips`` times). The continuation re-runs the whole row at each step (no
KV cache: rows of different lengths grow at different positions); it is meant for a few tokens.

Why a DeepSpeed engine: a judge is a frozen model like the reward and cost models, and the large
ones (LlamaGuard 3 8B, HarmBench's 13B classifier) are what ZeRO-3's partitioning is for; on one
GPU with ZeRO 0 the engine is a plain copy and costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from saferl.models import ModelSpec, tiny_transformers_config
from saferl.models.untrusted import check_remote_code
from saferl.runtime.batching import batch_to
from saferl.runtime.cluster import PlacementPlan
from saferl.runtime.engines import is_zero3
from saferl.runtime.roles import RoleGroup
from saferl.runtime.specs import DeepSpeedSpec, GroupSpec, RuntimeSpec
from saferl.runtime.workers import InferenceWorker

__all__ = [
    "JUDGE_KINDS",
    "JudgeBatch",
    "JudgeGroup",
    "JudgeHead",
    "JudgeWorker",
    "LabelLogitsModule",
    "LocalJudgeModel",
    "NextTokenLogitsModule",
    "NextTokenReadings",
    "read_next_tokens",
]

#: What a judge's model is: a causal LM read at its next token, or a sequence classifier.
JUDGE_KINDS = ("causal_lm", "classifier")


@dataclass(frozen=True)
class JudgeBatch:
    """Rows for a judge: ``input_ids`` ``(rows, width)`` int64, RIGHT-padded;
    ``attention_mask`` ``(rows, width)`` bool, True on real tokens (every row has one)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @staticmethod
    def right_padded(rows: Sequence[Sequence[int]], pad_id: int = 0) -> JudgeBatch:
        """Token-id lists as one right-padded batch.

        Raises:
            ValueError: a row is empty.
        """
        for index, row in enumerate(rows):
            if len(row) == 0:
                raise ValueError(f"judge row {index} has no token")
        width = max((len(row) for row in rows), default=1)
        input_ids = torch.full((len(rows), width), int(pad_id), dtype=torch.int64)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for index, row in enumerate(rows):
            input_ids[index, : len(row)] = torch.tensor(list(row), dtype=torch.int64)
            attention_mask[index, : len(row)] = True
        return JudgeBatch(input_ids, attention_mask)


@dataclass(frozen=True)
class NextTokenReadings:
    """What a causal judge read per row.

    Attributes:
        log_mass: ``(rows, num_sets)`` float64, ``log Σ_{t∈set} p(t)`` of each token set in the
            next-token distribution at the reading position (after the row, or after the
            skipped tokens).
        continuations: per row, the greedily generated token ids (skipped tokens first, then the
            answer token and what follows; empty when nothing was generated, i.e.
            ``max_new_tokens=0`` and no skip).
    """

    log_mass: torch.Tensor
    continuations: tuple[tuple[int, ...], ...]

    def probabilities(self) -> torch.Tensor:
        """``(rows, num_sets)`` float64 total probability of each set."""
        return self.log_mass.exp()

    def share(self, first: int = 0, second: int = 1) -> torch.Tensor:
        """``(rows,)`` float64 ``P(set first) / (P(set first) + P(set second))`` (e.g.
        ``P(yes)/(P(yes)+P(no))``), computed as ``σ(log_mass[first] − log_mass[second])``."""
        return torch.sigmoid(self.log_mass[:, first] - self.log_mass[:, second])


class NextTokenLogitsModule(nn.Module):
    """``forward(input_ids, attention_mask) -> (batch, seq_len, vocab)`` logits of a causal LM."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class LabelLogitsModule(nn.Module):
    """``forward(input_ids, attention_mask) -> (batch, num_labels)`` logits of a sequence
    classifier (its own pooling: the first token for encoders, the last non-pad token for
    decoders; pad positions are set to the model's pad id first)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pad_id = self.model.config.pad_token_id
        input_ids = torch.where(attention_mask.bool(), input_ids, int(pad_id))
        return self.model(input_ids=input_ids, attention_mask=attention_mask.long()).logits


@dataclass(frozen=True)
class JudgeHead:
    """A judge's model, as its ranks build it.

    Attributes:
        model_spec: the weights (a folder, hub name, or a tiny in-code config).
        tokenizer: the judge's tokenizer (any: no pad token is needed).
        kind: ``"causal_lm"`` (``AutoModelForCausalLM``) or ``"classifier"``
            (``AutoModelForSequenceClassification``, its own head).
    """

    model_spec: ModelSpec
    tokenizer: PreTrainedTokenizerBase
    kind: str = "causal_lm"

    def __post_init__(self) -> None:
        if self.kind not in JUDGE_KINDS:
            raise ValueError(f"judge kind must be one of {list(JUDGE_KINDS)}; got {self.kind!r}")

    def build(self) -> nn.Module:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        spec = self.model_spec
        auto = (
            AutoModelForCausalLM if self.kind == "causal_lm" else AutoModelForSequenceClassification
        )
        if spec.tiny is not None:
            model = auto.from_config(tiny_transformers_config(spec.tiny), dtype=spec.torch_dtype)
        else:
            check_remote_code(spec.name_or_path, spec.trust_remote_code,
                              key=spec.trust_remote_code_key, revision=spec.revision)
            model = auto.from_pretrained(
                spec.name_or_path,
                revision=spec.revision,
                trust_remote_code=spec.trust_remote_code,
                dtype=spec.torch_dtype,
            )
        if self.kind == "classifier" and model.config.pad_token_id is None:
            # decoder classifiers pool at the last non-pad token and need a pad id for batches
            candidates = (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0)
            model.config.pad_token_id = next(c for c in candidates if c is not None)
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        return (
            NextTokenLogitsModule(model) if self.kind == "causal_lm" else LabelLogitsModule(model)
        )

    def save(self, model: nn.Module, directory: str) -> Path:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        return folder


def _all_ranks_done(done: bool, synced: bool, device: torch.device | str) -> bool:
    """Whether every rank is done (ZeRO-3 ranks must run the same number of forwards); the flag
    lives on the rank's device (NCCL reduces CUDA tensors only)."""
    if not synced:
        return done
    flag = torch.tensor([1 if done else 0], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


@torch.no_grad()
def read_next_tokens(
    forward: Any,
    batch: JudgeBatch,
    token_sets: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 0,
    skip_token_ids: Sequence[int] = (),
    max_skips: int = 2,
    stop_token_ids: Sequence[int] = (),
    synced: bool = False,
    device: torch.device | str = "cpu",
) -> NextTokenReadings:
    """The readings of one micro-batch (see the module docstring).

    Args:
        forward: ``forward(input_ids, attention_mask) -> (rows, width, vocab)`` logits (the
            engine, or a :class:`NextTokenLogitsModule` in one process).
        batch: right-padded rows.
        token_sets: non-empty lists of token ids, one per set.
        max_new_tokens: answer tokens to generate greedily after the skipped ones (the answer
            token included); 0 or 1 read only.
        skip_token_ids, max_skips: tokens passed over before the reading position.
        stop_token_ids: a row stops generating after one of these.
        synced: ranks keep stepping together until all are done (ZeRO-3 with several ranks).
    """
    if not token_sets or any(len(ids) == 0 for ids in token_sets):
        raise ValueError("token_sets: every set needs at least one token id")
    sets = [torch.tensor(list(ids), dtype=torch.int64) for ids in token_sets]
    rows = int(batch.input_ids.shape[0])
    lengths = batch.attention_mask.sum(-1).long()
    answer_tokens = max(int(max_new_tokens), 1)
    capacity = int(lengths.max()) + answer_tokens + max_skips
    input_ids = torch.zeros((rows, capacity), dtype=torch.int64)
    attention_mask = torch.zeros((rows, capacity), dtype=torch.bool)
    input_ids[:, : batch.input_ids.shape[1]] = batch.input_ids
    attention_mask[:, : batch.input_ids.shape[1]] = batch.attention_mask.bool()
    log_mass = torch.full((rows, len(sets)), float("nan"), dtype=torch.float64)
    read = [False] * rows
    done = [False] * rows
    skips = [0] * rows
    answered = [0] * rows
    continuations: list[list[int]] = [[] for _ in range(rows)]
    skip, stop = {int(t) for t in skip_token_ids}, {int(t) for t in stop_token_ids}
    generate = max_new_tokens > 0 or bool(skip)
    while True:
        width = int(lengths.max())
        logits = forward(
            input_ids[:, :width].to(device), attention_mask[:, :width].to(device)
        )  # (rows, width, vocab)
        last = logits[torch.arange(rows, device=logits.device), (lengths - 1).to(logits.device)]
        logp = torch.log_softmax(last.double().cpu(), dim=-1)  # (rows, vocab)
        greedy = logp.argmax(-1)
        for row in range(rows):
            if done[row]:
                continue
            token = int(greedy[row])
            if not read[row]:
                if generate and token in skip and skips[row] < max_skips:
                    skips[row] += 1
                else:
                    log_mass[row] = torch.stack([torch.logsumexp(logp[row, s], 0) for s in sets])
                    read[row] = True
                    answered[row] = 1
            else:
                answered[row] += 1
            if not generate:
                done[row] = True
                continue
            continuations[row].append(token)
            position = int(lengths[row])
            input_ids[row, position] = token
            attention_mask[row, position] = True
            lengths[row] += 1
            if read[row] and (answered[row] >= answer_tokens or token in stop):
                done[row] = True
        # with ZeRO-3 a rank whose rows are done keeps stepping until every rank is done
        if _all_ranks_done(all(done), synced, device):
            break
    return NextTokenReadings(log_mass, tuple(tuple(c) for c in continuations))


class JudgeWorker(InferenceWorker):
    """Judge ranks: an inference engine with a :class:`JudgeHead`; reads its shard in
    micro-batches of ``micro_batch_size`` rows."""

    def next_token_readings(
        self, batch: JudgeBatch, micro_batch_size: int, options: dict[str, Any]
    ) -> NextTokenReadings:
        if self.head.kind != "causal_lm":
            raise TypeError("next_token_readings needs a causal-LM judge; this one is a classifier")
        self.engine.eval()
        synced = is_zero3(self.engine) and self.ctx.setup.world_size > 1
        parts = []
        for start in range(0, int(batch.input_ids.shape[0]), micro_batch_size):
            micro = _trimmed(batch, start, start + micro_batch_size)
            parts.append(
                read_next_tokens(
                    self.engine, micro, synced=synced, device=self.ctx.device, **options
                )
            )
        return _join_readings(parts, len(options["token_sets"]))

    def label_probabilities(self, batch: JudgeBatch, micro_batch_size: int) -> torch.Tensor:
        if self.head.kind != "classifier":
            raise TypeError("label_probabilities needs a classifier judge; this one is a causal LM")
        self.engine.eval()
        parts = []
        with torch.no_grad():
            for start in range(0, int(batch.input_ids.shape[0]), micro_batch_size):
                micro = batch_to(_trimmed(batch, start, start + micro_batch_size), self.ctx.device)
                logits = self.engine(micro.input_ids, micro.attention_mask)
                parts.append(torch.softmax(logits.double().cpu(), dim=-1))
        return torch.cat(parts) if parts else torch.zeros(0, 0, dtype=torch.float64)


def _trimmed(batch: JudgeBatch, start: int, stop: int) -> JudgeBatch:
    """Rows ``start:stop`` cut to their own longest row."""
    mask = batch.attention_mask[start:stop]
    width = max(int(mask.sum(-1).max()), 1) if mask.shape[0] else 1
    return JudgeBatch(batch.input_ids[start:stop, :width], mask[:, :width])


def _join_readings(parts: Sequence[NextTokenReadings], num_sets: int) -> NextTokenReadings:
    if not parts:
        return NextTokenReadings(torch.zeros(0, num_sets, dtype=torch.float64), ())
    return NextTokenReadings(
        torch.cat([p.log_mass for p in parts]),
        tuple(c for p in parts for c in p.continuations),
    )


class JudgeGroup(RoleGroup):
    """A judge or grader: DeepSpeed inference engines around a causal LM or a classifier.

    Args (beyond :class:`~saferl.runtime.roles.ScoreGroup`'s):
        kind: ``"causal_lm"`` or ``"classifier"``.
        micro_batch_size: rows per forward pass on a rank.
    """

    def __init__(
        self,
        model_spec: ModelSpec,
        tokenizer: PreTrainedTokenizerBase,
        deepspeed_spec: DeepSpeedSpec,
        group_spec: GroupSpec,
        runtime_spec: RuntimeSpec,
        *,
        kind: str = "causal_lm",
        micro_batch_size: int = 16,
        placement: PlacementPlan | None = None,
        role: str = "judge",
        seed: int = 0,
        wait: bool = True,
    ) -> None:
        if isinstance(micro_batch_size, bool) or int(micro_batch_size) < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size!r}")
        self.tokenizer = tokenizer
        self.kind = kind
        self.micro_batch_size = int(micro_batch_size)
        head = JudgeHead(model_spec, tokenizer, kind=kind)
        super().__init__(
            role, JudgeWorker, head, deepspeed_spec, group_spec, runtime_spec,
            placement=placement, seed=seed, wait=wait,
        )  # fmt: skip

    def _token_rows(self, rows: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        encoded = []
        for row in rows:
            ids = self.tokenizer.encode(row) if isinstance(row, str) else [int(t) for t in row]
            encoded.append(ids)
        return encoded

    def _sharded(
        self, rows: Sequence[str] | Sequence[Sequence[int]]
    ) -> tuple[list[JudgeBatch], list[int], int]:
        """Per-rank batches of the rows sorted by length (padded to a multiple of the ranks with
        copies of the last row), the order, and the number of real rows."""
        encoded = self._token_rows(rows)
        if not encoded:
            raise ValueError("a judge call needs at least one row")
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        ranks = self.group.num_ranks
        padded = [encoded[i] for i in order]
        padded += [padded[-1]] * (-len(padded) % ranks)
        size = len(padded) // ranks
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        shards = [
            JudgeBatch.right_padded(padded[r * size : (r + 1) * size], pad_id) for r in range(ranks)
        ]
        return shards, order, len(encoded)

    @staticmethod
    def _unsort(values: torch.Tensor, order: list[int], real: int) -> torch.Tensor:
        out = torch.empty_like(values[:real])
        out[torch.tensor(order)] = values[:real]
        return out

    def next_token_readings(
        self,
        rows: Sequence[str] | Sequence[Sequence[int]],
        token_sets: Sequence[Sequence[int]],
        *,
        max_new_tokens: int = 0,
        skip_token_ids: Sequence[int] = (),
        max_skips: int = 2,
        stop_token_ids: Sequence[int] = (),
    ) -> NextTokenReadings:
        """Per row (texts are encoded with the judge's tokenizer, special tokens added; token-id
        lists are taken as they are), the log-mass of each token set at the next token, and the
        greedy continuation (module docstring). Rows come back in the caller's order."""
        shards, order, real = self._sharded(rows)
        options = {
            "token_sets": [[int(t) for t in s] for s in token_sets],
            "max_new_tokens": int(max_new_tokens),
            "skip_token_ids": [int(t) for t in skip_token_ids],
            "max_skips": int(max_skips),
            "stop_token_ids": [int(t) for t in stop_token_ids],
        }
        parts = self.group.call_per_rank(
            "next_token_readings",
            [(shard, self.micro_batch_size, options) for shard in shards],
        )
        joined = _join_readings(parts, len(token_sets))
        continuations: list[tuple[int, ...]] = [()] * real
        for sorted_index, original in enumerate(order):
            continuations[original] = joined.continuations[sorted_index]
        return NextTokenReadings(self._unsort(joined.log_mass, order, real), tuple(continuations))

    def label_probabilities(self, rows: Sequence[str] | Sequence[Sequence[int]]) -> torch.Tensor:
        """``(rows, num_labels)`` float64 softmax of a classifier judge, in the caller's order."""
        shards, order, real = self._sharded(rows)
        parts = self.group.call_per_rank(
            "label_probabilities", [(shard, self.micro_batch_size) for shard in shards]
        )
        return self._unsort(torch.cat(parts), order, real)


class LocalJudgeModel:
    """A judge's model in this process, with :class:`JudgeGroup`'s reading methods (the one-process
    reference the group is tested against, and a judge for small jobs without Ray).

    Args:
        model: a causal LM or a sequence classifier (e.g. ``JudgeHead(...).build()``).
        tokenizer: its tokenizer.
        kind: ``"causal_lm"`` or ``"classifier"``.
        micro_batch_size: rows per forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        kind: str = "causal_lm",
        micro_batch_size: int = 16,
    ) -> None:
        if kind not in JUDGE_KINDS:
            raise ValueError(f"judge kind must be one of {list(JUDGE_KINDS)}; got {kind!r}")
        self.tokenizer = tokenizer
        self.kind = kind
        self.micro_batch_size = int(micro_batch_size)
        model.eval()
        self.module = (
            NextTokenLogitsModule(model) if kind == "causal_lm" else LabelLogitsModule(model)
        )

    @classmethod
    def load(
        cls, model_spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, kind: str, **kwargs: Any
    ) -> LocalJudgeModel:
        """Built exactly as a judge rank builds it (:class:`JudgeHead`)."""
        return cls(JudgeHead(model_spec, tokenizer, kind).build(), tokenizer, kind, **kwargs)

    def _batches(self, rows: Sequence[str] | Sequence[Sequence[int]]) -> list[JudgeBatch]:
        encoded = [self.tokenizer.encode(r) if isinstance(r, str) else list(r) for r in rows]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        size = self.micro_batch_size
        return [
            JudgeBatch.right_padded(encoded[i : i + size], pad_id)
            for i in range(0, len(encoded), size)
        ]

    def next_token_readings(
        self,
        rows: Sequence[str] | Sequence[Sequence[int]],
        token_sets: Sequence[Sequence[int]],
        **options: Any,
    ) -> NextTokenReadings:
        """As :meth:`JudgeGroup.next_token_readings`."""
        if self.kind != "causal_lm":
            raise TypeError("next_token_readings needs a causal-LM judge; this one is a classifier")
        parts = [
            read_next_tokens(self.module, b, token_sets, **options) for b in self._batches(rows)
        ]
        return _join_readings(parts, len(token_sets))

    @torch.no_grad()
    def label_probabilities(self, rows: Sequence[str] | Sequence[Sequence[int]]) -> torch.Tensor:
        """As :meth:`JudgeGroup.label_probabilities`."""
        if self.kind != "classifier":
            raise TypeError("label_probabilities needs a classifier judge; this one is a causal LM")
        parts = [
            torch.softmax(self.module(b.input_ids, b.attention_mask).double(), dim=-1)
            for b in self._batches(rows)
        ]
        return torch.cat(parts)

    def shutdown(self) -> None:
        """Nothing to stop (the group's counterpart)."""
