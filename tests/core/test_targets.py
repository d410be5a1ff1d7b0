"""A learner's own target (``saferl.core.targets``) on a small exact problem, in float64: the §1
streams' fixed point is π* itself, the published streams' fixed point is the optimum at KL weight
β(1+λ) and meets the limit, a fixed multiplier is the plain tilt, and the cap binds when it must.
With two constraints the §1 fixed point is π* of the m = 2 dual, and under a binding cap it is the
box-constrained dual minimum (checked against its KKT conditions)."""

from __future__ import annotations

import pytest
import torch

from saferl.core.dual import DualProblem, solve
from saferl.core.targets import TiltTarget, expected_cost, target_logprobs

BETA, LIMIT = 0.5, 0.1


@pytest.fixture
def problem():
    generator = torch.Generator().manual_seed(0)
    ref_logprobs = torch.log_softmax(torch.randn(4, 7, generator=generator, dtype=torch.float64), dim=1)
    rewards = torch.randn(4, 7, generator=generator, dtype=torch.float64)
    # Reward and cost agree in part: the most helpful answers are the costliest (the world's tension).
    costs = 0.8 * rewards + 0.5 * torch.randn(4, 7, generator=generator, dtype=torch.float64)
    return ref_logprobs, rewards, costs


def tilt(ref_logprobs, rewards, costs, multiplier, kl_weight):
    return torch.log_softmax(ref_logprobs + (rewards - multiplier * costs) / kl_weight, dim=1)


def test_the_section_1_fixed_point_is_the_constrained_optimum(problem):
    ref_logprobs, rewards, costs = problem
    exact = solve(DualProblem.exact(ref_logprobs, rewards, costs, BETA, LIMIT))
    assert exact.multiplier.item() > 0  # the limit binds
    (multiplier,), logprobs = target_logprobs(ref_logprobs, rewards, costs, TiltTarget("π*", BETA), LIMIT)
    assert multiplier == pytest.approx(exact.multiplier.item(), abs=1e-9)
    assert torch.allclose(logprobs, tilt(ref_logprobs, rewards, costs, exact.multiplier.item(), BETA), atol=1e-9)
    assert expected_cost(logprobs, costs) == pytest.approx(LIMIT, abs=1e-9)


def test_the_published_streams_fixed_point_meets_the_limit_at_kl_weight_beta_one_plus_lambda(problem):
    ref_logprobs, rewards, costs = problem
    target = TiltTarget("published", BETA, kl_grows_with_multiplier=True)
    (multiplier,), logprobs = target_logprobs(ref_logprobs, rewards, costs, target, LIMIT)
    # π_ref·exp((r − λc)/(β(1+λ))): the optimum of the problem at KL weight β(1+λ), on the limit.
    assert torch.allclose(logprobs, tilt(ref_logprobs, rewards, costs, multiplier, BETA * (1 + multiplier)),
                          atol=1e-12)
    assert expected_cost(logprobs, costs) == pytest.approx(LIMIT, abs=1e-9)
    # It is not π*: a different λ and a positive KL to π*.
    exact = solve(DualProblem.exact(ref_logprobs, rewards, costs, BETA, LIMIT))
    assert abs(multiplier - exact.multiplier.item()) > 1e-3
    optimal = tilt(ref_logprobs, rewards, costs, exact.multiplier.item(), BETA)
    assert float((logprobs.exp() * (logprobs - optimal)).sum(1).mean()) > 1e-6


def test_a_fixed_multiplier_is_the_plain_tilt_and_the_cap_binds_when_it_must(problem):
    ref_logprobs, rewards, costs = problem
    (multiplier,), logprobs = target_logprobs(ref_logprobs, rewards, costs,
                                              TiltTarget("fixed", 0.25, multiplier=0.7), LIMIT)
    assert multiplier == 0.7 and torch.allclose(logprobs, tilt(ref_logprobs, rewards, costs, 0.7, 0.25), atol=1e-12)
    # A cap below the λ that meets the limit: the update stops at the cap, above the limit.
    (multiplier,), logprobs = target_logprobs(ref_logprobs, rewards, costs,
                                              TiltTarget("capped", BETA, max_multiplier=0.01), LIMIT)
    assert multiplier == 0.01 and expected_cost(logprobs, costs) > LIMIT
    # A loose limit: the unconstrained tilt meets it, λ stays 0.
    (multiplier,), logprobs = target_logprobs(ref_logprobs, rewards, costs, TiltTarget("loose", BETA), 10.0)
    assert multiplier == 0.0 and torch.allclose(logprobs, tilt(ref_logprobs, rewards, costs, 0.0, BETA), atol=1e-12)
    # Safety labels only: the tilt towards −c.
    _, logprobs = target_logprobs(ref_logprobs, rewards, costs,
                                  TiltTarget("safety", 0.5, reward_weight=0.0, multiplier=1.0), LIMIT)
    assert torch.allclose(logprobs, torch.log_softmax(ref_logprobs - costs / 0.5, dim=1), atol=1e-12)


# --------------------------------------------------------------------------------------------
# Two constraints
# --------------------------------------------------------------------------------------------
@pytest.fixture
def two_costs(problem):
    """The problem with a second cost that pulls against the first on the same prompts."""
    ref_logprobs, rewards, costs = problem
    generator = torch.Generator().manual_seed(5)
    second = -0.6 * costs + 0.4 * torch.randn(costs.shape, generator=generator, dtype=torch.float64)
    stacked = torch.stack([costs, second], dim=-1)  # (4, 7, 2)
    probs = ref_logprobs.exp()
    reference_cost = torch.einsum("nk,nkj->j", probs, stacked) / probs.shape[0]
    limits = reference_cost - torch.tensor([0.15, 0.05], dtype=torch.float64)  # the reference breaks both
    return ref_logprobs, rewards, stacked, limits


def test_the_section_1_fixed_point_with_two_constraints_is_the_m2_optimum(two_costs):
    ref_logprobs, rewards, costs, limits = two_costs
    exact = solve(DualProblem.exact(ref_logprobs, rewards, costs, BETA, limits))
    assert (exact.multiplier > 1e-3).all()  # both limits bind
    multiplier, logprobs = target_logprobs(ref_logprobs, rewards, costs, TiltTarget("π*", BETA), limits)
    assert multiplier == pytest.approx(exact.multiplier.tolist(), abs=1e-12)
    expected = torch.log_softmax(ref_logprobs + (rewards - costs @ exact.multiplier) / BETA, dim=1)
    assert torch.allclose(logprobs, expected, atol=1e-12)
    assert torch.allclose(expected_cost(logprobs, costs), limits, atol=1e-9)
    # A fixed multiplier per constraint is the plain tilt; a single number for two is refused.
    fixed, logprobs = target_logprobs(ref_logprobs, rewards, costs, TiltTarget("fixed", BETA, multiplier=(0.3, 0.1)),
                                      limits)
    assert fixed == (0.3, 0.1)
    shift = costs @ torch.tensor([0.3, 0.1], dtype=torch.float64)
    assert torch.allclose(logprobs, torch.log_softmax(ref_logprobs + (rewards - shift) / BETA, dim=1), atol=1e-12)
    with pytest.raises(ValueError, match="needs 2 value"):
        target_logprobs(ref_logprobs, rewards, costs, TiltTarget("fixed", BETA, multiplier=0.3), limits)
    with pytest.raises(ValueError, match="not defined"):
        target_logprobs(ref_logprobs, rewards, costs, TiltTarget("published", BETA, kl_grows_with_multiplier=True),
                        limits)


def test_under_a_binding_cap_the_two_constraint_fixed_point_meets_kkt_on_the_box(two_costs):
    ref_logprobs, rewards, costs, limits = two_costs
    exact = solve(DualProblem.exact(ref_logprobs, rewards, costs, BETA, limits))
    cap = 0.5 * float(exact.multiplier.max())  # below the larger λ*_j: the cap binds there
    multiplier, logprobs = target_logprobs(ref_logprobs, rewards, costs, TiltTarget("capped", BETA,
                                                                                    max_multiplier=cap), limits)
    slack = limits - expected_cost(logprobs, costs)  # ∇D = d − E c at the fixed point
    for value, gradient in zip(multiplier, slack.tolist(), strict=True):
        assert -1e-12 <= value <= cap + 1e-12
        if value <= 1e-9:  # at 0: its constraint holds
            assert gradient >= -1e-7
        elif value >= cap - 1e-9:  # at the cap: its constraint is still broken (the update stops there)
            assert gradient <= 1e-7
        else:  # interior: its constraint is met exactly
            assert abs(gradient) < 1e-7
    assert max(multiplier) == pytest.approx(cap, abs=1e-12)


def test_a_target_with_its_own_limit_is_the_optimum_at_that_limit_not_at_d(problem):
    """A learner given ``d − δ`` (``scorers.cost_margin``) seeks the fixed point at ``d − δ``: the
    exact optimum of the tighter problem, whatever limit the table scores at."""
    ref_logprobs, rewards, costs = problem
    tighter = LIMIT - 0.2
    exact = solve(DualProblem.exact(ref_logprobs, rewards, costs, BETA, tighter))
    (multiplier,), logprobs = target_logprobs(ref_logprobs, rewards, costs,
                                              TiltTarget("π* at d − δ", BETA, cost_limit=(tighter,)), LIMIT)
    assert multiplier == pytest.approx(exact.multiplier.item(), abs=1e-9)
    assert expected_cost(logprobs, costs) == pytest.approx(tighter, abs=1e-9)
    (at_d,), _ = target_logprobs(ref_logprobs, rewards, costs, TiltTarget("π*", BETA), LIMIT)
    assert multiplier > at_d  # the tighter limit needs the larger multiplier
