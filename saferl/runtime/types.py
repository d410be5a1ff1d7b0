"""Typed containers that cross the driver/actor boundary (frozen dataclasses of tensors).

Masks follow the project convention: ``torch.bool``, True = valid. Tensors travel on the CPU.
Batches from :mod:`saferl.data.batches` (``PromptBatch``, ``SequenceBatch``, ``PairBatch``)
are used as they are; this module adds what the runtime returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from saferl.core.finite import NonFiniteCount
from saferl.data.batches import SequenceBatch

__all__ = [
    "GenerationOutput",
    "LossFn",
    "RankInfo",
    "RefusedStep",
    "TrainStepOutput",
    "response_mask_from_eos",
]

#: A training loss plugged into ``train_step``: ``loss_fn(outputs, micro_batch)``.
#: ``outputs`` is what the role's model computes on the micro-batch (the policy's token
#: log-probs ``(batch, seq_len)``, a critic's values ``(batch, seq_len)``); ``micro_batch`` is the
#: slice of the batch the driver passed. It returns a scalar loss, or ``(loss, metrics)`` with
#: scalar metric tensors. It must be picklable (a module-level function or a
#: ``functools.partial`` of one) and the loss a **mean** over the micro-batch's rows, so that
#: DeepSpeed's gradient averaging over micro-batches and ranks gives the global-batch mean.
LossFn = Callable[
    [torch.Tensor, Any], torch.Tensor | tuple[torch.Tensor, Mapping[str, torch.Tensor]]
]


def response_mask_from_eos(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Valid response tokens: every generated token up to and including the first EOS.

    Derived from the EOS position, not from pad ids (a policy may emit the pad token as an
    ordinary token). A row without EOS (cut at ``max_new_tokens``) is valid throughout.

    Args:
        response_ids: ``(batch, response_len)`` generated ids (pad after a row finished).
        eos_token_id: the EOS id.

    Returns:
        ``(batch, response_len)`` bool.
    """
    is_eos = response_ids == eos_token_id  # (batch, response_len)
    # EOS tokens strictly before t: 0 up to and including the first EOS.
    eos_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    return eos_before == 0


@dataclass(frozen=True)
class GenerationOutput:
    """Prompts and the responses generated for them.

    Attributes:
        prompt_ids: ``(batch, prompt_len)`` long, the LEFT-padded prompts as given.
        sequences: ``(batch, prompt_len + response_len)`` long, prompt then response; response
            positions after the first EOS hold the pad id.
        attention_mask: ``(batch, prompt_len + response_len)`` bool, the prompt's mask then the
            response mask.
        response_mask: ``(batch, prompt_len + response_len)`` bool, True exactly on generated
            tokens up to and including the first EOS (prompt positions False).
    """

    prompt_ids: torch.Tensor
    sequences: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    @property
    def prompt_len(self) -> int:
        """Columns of the (left-padded) prompt block."""
        return int(self.prompt_ids.shape[1])

    @property
    def response_ids(self) -> torch.Tensor:
        """``(batch, response_len)`` generated ids."""
        return self.sequences[:, self.prompt_len :]

    def response_lengths(self) -> torch.Tensor:
        """``(batch,)`` valid response tokens per row (EOS included)."""
        return self.response_mask.sum(dim=-1)

    def to_sequence_batch(self, pad_token_id: int) -> SequenceBatch:
        """The same rows as a RIGHT-padded :class:`SequenceBatch` (prompt, response, padding).

        Each row's real tokens are moved to the start, so position ids start at 0 for every row,
        as in generation (which derives positions from the attention mask) and in
        :func:`saferl.data.collate_sequences`; score models then read the last real token.

        Returns:
            A ``SequenceBatch`` of shape ``(batch, L)``, ``L`` = the longest row's real length.
        """
        valid = self.attention_mask  # (batch, total_len)
        lengths = valid.sum(dim=-1)  # (batch,)
        seq_len = int(lengths.max())
        batch = valid.shape[0]
        input_ids = torch.full((batch, seq_len), pad_token_id, dtype=self.sequences.dtype)
        attention_mask = torch.zeros((batch, seq_len), dtype=torch.bool)
        response_mask = torch.zeros((batch, seq_len), dtype=torch.bool)
        # Stable sort puts each row's valid columns first, in their original order.
        order = torch.sort((~valid).to(torch.int8), dim=-1, stable=True).indices[:, :seq_len]
        input_ids.copy_(torch.gather(self.sequences, 1, order))
        attention_mask.copy_(torch.gather(valid, 1, order))
        response_mask.copy_(torch.gather(self.response_mask, 1, order))
        input_ids[~attention_mask] = pad_token_id
        return SequenceBatch(input_ids, attention_mask, response_mask)


@dataclass(frozen=True)
class RefusedStep:
    """An optimizer step every rank of a group refused because a rank's loss was NaN or ±inf
    (before ``backward``: the weights, optimizer and scheduler are as they were).

    Attributes:
        where: the first rank whose loss was non-finite, e.g. ``"policy rank 1"``.
        count: that loss's non-finite entries.
    """

    where: str
    count: NonFiniteCount


@dataclass(frozen=True)
class TrainStepOutput:
    """The result of one optimizer step of a group (reduced over micro-batches and ranks).

    Attributes:
        loss: mean of the loss over micro-batches and ranks (= the global-batch loss for a loss
            that is a mean over rows); NaN for a refused step.
        grad_norm: global gradient norm before clipping (None when DeepSpeed does not report it).
        learning_rate: learning rate used by this step.
        num_rows: rows of the global batch.
        metrics: the loss function's extra metrics, averaged like ``loss``.
        refused: set when the ranks refused the step on a non-finite loss (nothing was updated);
            only a caller that asked for it (``train_step(..., report_nonfinite=True)``) sees it.
    """

    loss: float
    grad_norm: float | None
    learning_rate: float
    num_rows: int
    metrics: dict[str, float] = field(default_factory=dict)
    refused: RefusedStep | None = None


@dataclass(frozen=True)
class RankInfo:
    """Where one rank of a group runs.

    Attributes:
        role: the group's role name.
        rank: rank in the group's torch.distributed world.
        world_size: ranks of the group.
        node_id: Ray node id.
        node_ip: node address.
        pid: worker process id.
        device: ``"cpu"`` or ``"cuda:<i>"``.
        backend: torch.distributed backend.
    """

    role: str
    rank: int
    world_size: int
    node_id: str
    node_ip: str
    pid: int
    device: str
    backend: str
