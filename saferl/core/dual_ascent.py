"""Dual ascent on the Lagrange multiplier between rounds of an unconstrained learner: C-DPO's
multiplier step (docs/algorithms.md §1, §4).

The dual of the constrained problem is ``D(λ) = β E_x log Z_λ(x) + λ·d`` with gradient
``∇_j D(λ) = d_j − E_x E_{π_λ} c_j`` (§1). One projected gradient step on ``min_{λ ≥ 0} D`` with
step size ``η`` is therefore

    λ ← max(0, λ − η ∇D(λ)) = max(0, λ + η (E[c] − d)),

with ``E[c]`` estimated on the current policy (C-DPO evaluates it on the policy the previous round
trained, which stands in for ``π_λ``). The sign convention is the project's
(:mod:`saferl.core.conventions`): costs are lower-is-safer and the constraint is ``E[c_j] ≤ d_j``,
so λ rises while the constraint is violated and falls, down to 0, while it is slack — the same
direction as the PPO-Lagrangian multipliers of :mod:`saferl.core.multipliers`.

Pure function of tensors and floats; float64 throughout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["projected_dual_step"]


def _vector(value: torch.Tensor | float | Sequence[float], name: str) -> torch.Tensor:
    vector = torch.atleast_1d(torch.as_tensor(value, dtype=torch.float64)).flatten()
    if not bool(torch.isfinite(vector).all()):
        raise ValueError(f"{name} must be finite; found {vector.tolist()}")
    return vector


def projected_dual_step(
    multiplier: torch.Tensor | float | Sequence[float],
    expected_cost: torch.Tensor | float | Sequence[float],
    cost_limit: torch.Tensor | float | Sequence[float],
    step_size: torch.Tensor | float | Sequence[float],
) -> torch.Tensor:
    """``λ ← max(0, λ + η (E[c] − d))`` per constraint (module docstring).

    Args:
        multiplier: the current ``λ ≥ 0``, shape ``(m,)`` (a float for ``m = 1``).
        expected_cost: the estimate of ``E_x E_π c_j``, shape ``(m,)``.
        cost_limit: the limits ``d_j``, shape ``(m,)``.
        step_size: ``η > 0``, a float for every constraint or shape ``(m,)``.

    Returns:
        The new ``λ``, shape ``(m,)``, float64, every entry ``≥ 0``.

    Raises:
        ValueError: shapes that do not agree, a negative λ, a step size that is not ``> 0``, or a
            non-finite input.

    Example (worked): ``λ = [0.5, 0.2]``, ``E c = [−0.5, −1.0]``, ``d = [−0.8, −0.8]``, ``η = 2``:
    ``[0.5 + 2·0.3, 0.2 + 2·(−0.2)] = [1.1, −0.2]`` → projected ``[1.1, 0.0]``.
    """
    multiplier = _vector(multiplier, "multiplier")
    expected_cost = _vector(expected_cost, "expected_cost")
    cost_limit = _vector(cost_limit, "cost_limit")
    step_size = _vector(step_size, "step_size")
    m = cost_limit.numel()
    if multiplier.numel() != m or expected_cost.numel() != m:
        raise ValueError(
            f"multiplier, expected_cost and cost_limit need one value per constraint (m = {m}); found "
            f"{multiplier.numel()}, {expected_cost.numel()} and {m}"
        )
    if step_size.numel() not in (1, m):
        raise ValueError(
            f"step_size must be one value or {m} (one per constraint); found {step_size.numel()}"
        )
    if bool((multiplier < 0).any()):
        raise ValueError(f"multiplier must be >= 0; found {multiplier.tolist()}")
    if bool((step_size <= 0).any()):
        raise ValueError(f"step_size must be > 0; found {step_size.tolist()}")
    return (multiplier + step_size * (expected_cost - cost_limit)).clamp_min(0.0)
