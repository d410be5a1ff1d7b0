"""The project's one sign convention (docs/algorithms.md §0), stated once, with explicit converters.

Every constrained component of saferl works in the **cost form**:

* reward ``r(x, y)``: higher is more helpful;
* costs ``c_j(x, y)``, ``j = 1..m``: **lower is safer**; ``c <= 0`` means "safe" for a cost model
  trained with the safety-sign loss;
* constraints ``E_x E_{y~π} c_j(x, y) <= d_j`` with an absolute cost limit ``d_j``;
* Lagrange multipliers ``λ_j >= 0``, entering the Lagrangian as ``r - Σ_j λ_j (c_j - d_j)``.

Published methods sometimes use the *utility/margin form* instead (MoCAN/PeCAN): a safety utility
``g = -c`` (higher is safer) and a *relative margin* ``b_j`` asking the policy to improve safety by
``b_j`` over the reference, ``E_π g_j >= E_{π_ref} g_j + b_j``. That is the same constraint with
``d_j = E_{π_ref} c_j - b_j``. Code that accepts the utility/margin form converts it **here** and
nowhere else.
"""

from __future__ import annotations

import torch

__all__ = [
    "cost_from_utility",
    "utility_from_cost",
    "limit_from_margin",
    "margin_from_limit",
]


def cost_from_utility(utility: torch.Tensor) -> torch.Tensor:
    """Convert a safety utility ``g`` (higher is safer) to a cost ``c = -g`` (lower is safer).

    Args:
        utility: any shape, e.g. ``(num_prompts, num_responses)`` or ``(..., m)``.

    Returns:
        The costs, same shape as ``utility``.
    """
    return -utility


def utility_from_cost(cost: torch.Tensor) -> torch.Tensor:
    """Convert a cost ``c`` (lower is safer) to a safety utility ``g = -c`` (higher is safer).

    Args:
        cost: any shape.

    Returns:
        The utilities, same shape as ``cost``.
    """
    return -cost


def limit_from_margin(
    reference_expected_cost: torch.Tensor | float, margin: torch.Tensor | float
) -> torch.Tensor:
    """Absolute cost limit ``d = E_{π_ref} c - b`` from a relative safety margin ``b``.

    A positive margin asks the aligned policy to be *safer* than the reference by ``b`` cost units.

    Args:
        reference_expected_cost: ``E_x E_{π_ref} c_j``, a float or shape ``(m,)``.
        margin: ``b_j``, a float or shape ``(m,)``.

    Returns:
        The cost limit ``d``, shape ``(m,)`` (``(1,)`` for scalar inputs), float64 unless the
        inputs are tensors of another floating dtype.
    """
    ref = _as_tensor(reference_expected_cost)
    b = _as_tensor(margin)
    dtype = torch.promote_types(ref.dtype, b.dtype)
    return torch.atleast_1d(ref.to(dtype) - b.to(dtype))


def margin_from_limit(
    reference_expected_cost: torch.Tensor | float, cost_limit: torch.Tensor | float
) -> torch.Tensor:
    """Relative safety margin ``b = E_{π_ref} c - d`` of an absolute cost limit ``d``.

    Args:
        reference_expected_cost: ``E_x E_{π_ref} c_j``, a float or shape ``(m,)``.
        cost_limit: ``d_j``, a float or shape ``(m,)``.

    Returns:
        The margin ``b``, shape ``(m,)``.
    """
    return limit_from_margin(reference_expected_cost, cost_limit)


def _as_tensor(value: torch.Tensor | float) -> torch.Tensor:
    """Tensors keep a floating dtype; Python numbers and integer tensors become float64."""
    if isinstance(value, torch.Tensor) and value.dtype.is_floating_point:
        return value
    return torch.as_tensor(value, dtype=torch.float64)
