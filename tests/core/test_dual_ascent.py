"""C-DPO's projected dual step (``saferl.core.dual_ascent``), in float64: the worked value, the
direction (λ rises while E[c] > d, falls while E[c] < d, and is projected at 0), bad input, and —
with every round's DPO optimised perfectly (the policy is the tilt ``π_λ``) — the iteration's
fixed point is the exact λ* of the dual solver (docs/algorithms.md §1, §4)."""

from __future__ import annotations

import pytest
import torch

from saferl.core.dual import DualProblem, solve
from saferl.core.dual_ascent import projected_dual_step
from saferl.core.targets import expected_cost


def test_worked_value_and_projection_at_zero():
    # λ = [0.5, 0.2], E c = [−0.5, −1.0], d = [−0.8, −0.8], η = 2:
    # [0.5 + 2·0.3, 0.2 + 2·(−0.2)] = [1.1, −0.2] → projected [1.1, 0.0].
    step = projected_dual_step([0.5, 0.2], [-0.5, -1.0], [-0.8, -0.8], 2.0)
    assert step.dtype == torch.float64 and step.tolist() == pytest.approx([1.1, 0.0], abs=1e-15)


def test_the_multiplier_rises_when_violated_and_falls_when_slack():
    assert projected_dual_step(0.3, -0.5, -0.8, 0.5).item() == pytest.approx(
        0.3 + 0.5 * 0.3, abs=1e-15
    )
    assert projected_dual_step(0.3, -0.9, -0.8, 0.5).item() == pytest.approx(
        0.3 - 0.5 * 0.1, abs=1e-15
    )
    assert projected_dual_step(0.0, -2.0, -0.8, 1.0).item() == 0.0  # slack at λ = 0: stays at 0
    assert projected_dual_step(0.4, -0.8, -0.8, 3.0).item() == 0.4  # on the limit: unchanged
    # One step size per constraint.
    assert projected_dual_step([0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 2.0]).tolist() == [
        1.0,
        2.0,
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([-0.1], [0.0], [0.0], 1.0), "multiplier must be >= 0"),
        (([0.1], [0.0], [0.0], 0.0), "step_size must be > 0"),
        (([0.1, 0.2], [0.0], [0.0], 1.0), "one value per constraint"),
        (([0.1], [float("nan")], [0.0], 1.0), "expected_cost must be finite"),
        (([0.1], [0.0], [0.0], [1.0, 1.0]), "step_size must be one value"),
    ],
)
def test_bad_input_is_refused(args, message):
    with pytest.raises(ValueError, match=message):
        projected_dual_step(*args)


def test_dual_ascent_on_exact_tilts_reaches_the_dual_optimum():
    # Perfect DPO rounds: each round's policy is π_λ = π_ref exp((r − λc)/β)/Z, and E c is exact.
    generator = torch.Generator().manual_seed(3)
    ref_logprobs = torch.log_softmax(
        torch.randn(5, 9, generator=generator, dtype=torch.float64), dim=1
    )
    rewards = torch.randn(5, 9, generator=generator, dtype=torch.float64)
    costs = 0.8 * rewards + 0.5 * torch.randn(5, 9, generator=generator, dtype=torch.float64)
    beta, limit = 0.5, 0.1
    exact = solve(DualProblem.exact(ref_logprobs, rewards, costs, beta, limit)).multiplier
    assert exact.item() > 0  # the limit binds
    multiplier = torch.zeros(1, dtype=torch.float64)
    for _ in range(400):
        policy = torch.log_softmax(ref_logprobs + (rewards - multiplier * costs) / beta, dim=1)
        multiplier = projected_dual_step(multiplier, expected_cost(policy, costs), limit, 0.5)
    assert multiplier.item() == pytest.approx(exact.item(), abs=1e-9)
