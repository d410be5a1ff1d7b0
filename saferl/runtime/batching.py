"""Splitting typed batches across ranks and joining the results, in order.

A *batch* here is a tensor whose first dimension is rows, or a dataclass (usually frozen) whose
fields are batches, ``None`` or plain values (kept as they are). Every tensor of one batch has the
same number of rows. ``SequenceBatch``, ``PromptBatch``, ``PairBatch`` and the runtime's own
containers all qualify, and so does a learner's rollout dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from saferl.data.batches import PairBatch

__all__ = [
    "batch_rows",
    "batch_to",
    "concat_batches",
    "model_inputs",
    "pad_and_concat",
    "slice_batch",
    "split_batch",
]

B = TypeVar("B")


def _tensors(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        tensors: list[torch.Tensor] = []
        for item in dataclasses.fields(batch):
            tensors.extend(_tensors(getattr(batch, item.name)))
        return tensors
    return []


def batch_rows(batch: Any) -> int:
    """Rows of a batch (the common first dimension of its tensors).

    Raises:
        ValueError: no tensor, a 0-d tensor, or tensors with different row counts.
    """
    tensors = _tensors(batch)
    if not tensors:
        raise ValueError(f"{type(batch).__name__} holds no tensor; expected a batch of tensors")
    if any(t.dim() == 0 for t in tensors):
        raise ValueError(f"{type(batch).__name__} holds a 0-d tensor; every tensor needs a row dim")
    rows = {int(t.shape[0]) for t in tensors}
    if len(rows) != 1:
        raise ValueError(
            f"the tensors of {type(batch).__name__} have different row counts {sorted(rows)}"
        )
    return rows.pop()


def slice_batch(batch: B, start: int, stop: int) -> B:
    """Rows ``start:stop`` of every tensor of ``batch`` (same container type)."""
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]  # type: ignore[return-value]
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {
            item.name: slice_batch(getattr(batch, item.name), start, stop)
            for item in dataclasses.fields(batch)
            if item.init
        }
        return dataclasses.replace(batch, **changes)  # type: ignore[type-var]
    return batch


def batch_to(batch: B, device: torch.device | str) -> B:
    """``batch`` with every tensor moved to ``device`` (same container type)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)  # type: ignore[return-value]
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {
            item.name: batch_to(getattr(batch, item.name), device)
            for item in dataclasses.fields(batch)
            if item.init
        }
        return dataclasses.replace(batch, **changes)  # type: ignore[type-var]
    return batch


def split_batch(batch: B, num_shards: int) -> list[B]:
    """Equal contiguous shards: shard ``r`` holds rows ``r * n : (r + 1) * n``.

    Raises:
        ValueError: the batch size is not divisible by ``num_shards`` (the message names both).
    """
    rows = batch_rows(batch)
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if rows % num_shards != 0:
        raise ValueError(
            f"a batch of {rows} rows cannot be split evenly over num_ranks={num_shards}; pass a "
            f"batch size that is a multiple of {num_shards}"
        )
    size = rows // num_shards
    return [slice_batch(batch, r * size, (r + 1) * size) for r in range(num_shards)]


def _pad_cols(tensor: torch.Tensor, width: int, value: Any) -> torch.Tensor:
    if tensor.dim() < 2 or tensor.shape[1] == width:
        return tensor
    pad = tensor.new_full((tensor.shape[0], width - tensor.shape[1], *tensor.shape[2:]), value)
    return torch.cat([tensor, pad], dim=1)


def concat_batches(batches: Sequence[B]) -> B:
    """Concatenate batches of one type along rows, in order (the inverse of :func:`split_batch`).

    Tensors of equal row shape are concatenated as they are; callers that gather variable-length
    outputs right-pad them to one width first.
    """
    if not batches:
        raise ValueError("concat_batches needs at least one batch")
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(batches), dim=0)  # type: ignore[arg-type, return-value]
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        changes = {}
        for item in dataclasses.fields(first):
            if not item.init:
                continue
            values = [getattr(b, item.name) for b in batches]
            if all(v is None for v in values):
                changes[item.name] = None
            elif isinstance(values[0], torch.Tensor) or dataclasses.is_dataclass(values[0]):
                changes[item.name] = concat_batches(values)
            else:
                changes[item.name] = values[0]
        return dataclasses.replace(first, **changes)  # type: ignore[type-var]
    raise TypeError(f"cannot concatenate batches of type {type(first).__name__}")


def model_inputs(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` a role's model runs on for ``batch``.

    A :class:`~saferl.data.batches.PairBatch` runs chosen rows then rejected rows
    (:meth:`PairBatch.concatenated`, ``(2 * batch, seq_len)``); any other batch must have
    ``input_ids`` and ``attention_mask`` tensors (``SequenceBatch`` and rollout containers).

    Raises:
        TypeError: the batch has neither form.
    """
    if isinstance(batch, PairBatch):
        batch = batch.concatenated()
    input_ids = getattr(batch, "input_ids", None)
    attention_mask = getattr(batch, "attention_mask", None)
    if not isinstance(input_ids, torch.Tensor) or not isinstance(attention_mask, torch.Tensor):
        raise TypeError(
            f"{type(batch).__name__} has no input_ids/attention_mask tensors; a training batch "
            "must be a PairBatch or have input_ids and attention_mask fields (e.g. SequenceBatch)"
        )
    return input_ids, attention_mask


def pad_and_concat(tensors: Sequence[torch.Tensor], value: Any) -> torch.Tensor:
    """Right-pad ``(rows, cols, ...)`` tensors to the widest ``cols`` and concatenate rows."""
    width = max(int(t.shape[1]) for t in tensors)
    return torch.cat([_pad_cols(t, width, value) for t in tensors], dim=0)
