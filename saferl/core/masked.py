"""Reductions over the valid entries of a tensor.

Every mask in saferl means **True = valid** (a bool tensor, or a 0/1 tensor of any dtype) and is
broadcastable to the values it masks. Invalid entries never contribute to a result, even when they
hold ``nan`` or ``inf``: they are replaced with 0 by ``torch.where`` before any arithmetic, never
multiplied by the mask.
"""

from __future__ import annotations

import torch

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
]


def _require_same_shape(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every named tensor has the same shape (shared by saferl.core)."""
    shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    if len(set(shapes.values())) > 1:
        found = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"expected tensors of one shape, found {found}")


def _bool_mask(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` as a bool tensor broadcast to the shape of ``values``."""
    try:
        return torch.broadcast_to(mask.to(torch.bool), values.shape)
    except RuntimeError as error:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to values of shape "
            f"{tuple(values.shape)}"
        ) from error


def masked_sum(
    values: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Sum of the valid entries, ``Σ_i mask_i · values_i``.

    Args:
        values: any shape, e.g. ``(batch, seq_len)``.
        mask: True = valid; broadcastable to ``values``.
        dim: dimension(s) to reduce; ``None`` reduces over every entry.

    Returns:
        ``values`` reduced over ``dim`` (a 0-dim tensor when ``dim`` is None), dtype of
        ``values``. A slice without valid entries sums to 0.
    """
    mask = _bool_mask(values, mask)
    kept = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    if dim is None:
        return kept.sum()
    return kept.sum(dim=dim)


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Mean of the valid entries, ``Σ_i mask_i values_i / Σ_i mask_i``.

    Never raises on empty slices: where a slice has no valid entry the mean is defined as **0**
    (not ``nan``), so fully padded rows are harmless in a batch.

    Args:
        values: any shape, e.g. ``(batch, seq_len)``.
        mask: True = valid; broadcastable to ``values``.
        dim: dimension(s) to reduce; ``None`` reduces over every entry.

    Returns:
        ``values`` reduced over ``dim`` (a 0-dim tensor when ``dim`` is None), dtype of
        ``values``.
    """
    mask = _bool_mask(values, mask)
    total = masked_sum(values, mask, dim=dim)
    if dim is None:
        count = mask.sum()
    else:
        count = mask.sum(dim=dim)
    # An empty slice has total 0, so dividing by max(count, 1) gives 0 there.
    return total / count.clamp(min=1).to(values.dtype)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of all valid entries (one number over the whole tensor).

    ``μ = masked_mean(values)``, ``Var = Σ_i mask_i (values_i − μ)² / (n − 1)`` with Bessel's
    correction (``unbiased=True``), or ``/ n`` otherwise, ``n = Σ_i mask_i``.

    Args:
        values: any shape, e.g. ``(batch, seq_len)``.
        mask: True = valid; broadcastable to ``values``.
        unbiased: divide by ``n − 1`` instead of ``n``.

    Returns:
        A 0-dim tensor, dtype of ``values``.

    Raises:
        ValueError: if there are fewer than 2 valid entries (``unbiased=True``) or none at all
            (``unbiased=False``): the variance is undefined there.
    """
    mask = _bool_mask(values, mask)
    count = int(mask.sum().item())
    needed = 2 if unbiased else 1
    if count < needed:
        raise ValueError(
            f"masked_var needs at least {needed} valid entries (unbiased={unbiased}), found {count}"
        )
    mean = masked_mean(values, mask)
    squared_deviations = (values - mean) ** 2
    return masked_sum(squared_deviations, mask) / (count - 1 if unbiased else count)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Whiten with the mean and (unbiased) variance of the valid entries only.

    ``whitened = (values − μ) / sqrt(Var + eps)``; with ``shift_mean=False`` the mean is added
    back, ``whitened + μ`` (scale only). ``μ`` and ``Var`` are those of :func:`masked_mean` and
    :func:`masked_var` (unbiased) over all valid entries.

    Args:
        values: any shape, e.g. ``(batch, seq_len)``.
        mask: True = valid; broadcastable to ``values``.
        shift_mean: leave the result with mean 0 (True) or with the original mean (False).
        eps: added to the variance before the square root.

    Returns:
        Same shape and dtype as ``values``; invalid entries are 0.

    Raises:
        ValueError: if there are fewer than 2 valid entries (see :func:`masked_var`).
    """
    mask = _bool_mask(values, mask)
    mean = masked_mean(values, mask)
    variance = masked_var(values, mask, unbiased=True)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros((), dtype=values.dtype, device=values.device))
