"""A learner's own target (``saferl.core.targets``) on a small exact problem, in float64: the §1
streams' fixed point is π* itself, the published streams' fixed point is the optimum at KL weight
β(1+λ) and meets the limit, a fixed multiplier is the plain tilt, and the cap binds when it must."""

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
    multiplier, logprobs = target_logprobs(ref_logprobs, rewards, costs, TiltTarget("π*", BETA), LIMIT)
    assert multiplier == pytest.approx(exact.multiplier.item(), abs=1e-9)
    assert torch.allclose(logprobs, tilt(ref_logprobs, rewards, costs, exact.multiplier.item(), BETA), atol=1e-9)
    assert expected_cost(logprobs, costs) == pytest.approx(LIMIT, abs=1e-9)


def test_the_published_streams_fixed_point_meets_the_limit_at_kl_weight_beta_one_plus_lambda(problem):
    ref_logprobs, rewards, costs = problem
    target = TiltTarget("published", BETA, kl_grows_with_multiplier=True)
    multiplier, logprobs = target_logprobs(ref_logprobs, rewards, costs, target, LIMIT)
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
    multiplier, logprobs = target_logprobs(ref_logprobs, rewards, costs, TiltTarget("fixed", 0.25, multiplier=0.7),
                                           LIMIT)
    assert multiplier == 0.7 and torch.allclose(logprobs, tilt(ref_logprobs, rewards, costs, 0.7, 0.25), atol=1e-12)
    # A cap below the λ that meets the limit: the update stops at the cap, above the limit.
    multiplier, logprobs = target_logprobs(ref_logprobs, rewards, costs, TiltTarget("capped", BETA, max_multiplier=0.01),
                                           LIMIT)
    assert multiplier == 0.01 and expected_cost(logprobs, costs) > LIMIT
    # A loose limit: the unconstrained tilt meets it, λ stays 0.
    multiplier, logprobs = target_logprobs(ref_logprobs, rewards, costs, TiltTarget("loose", BETA), 10.0)
    assert multiplier == 0.0 and torch.allclose(logprobs, tilt(ref_logprobs, rewards, costs, 0.0, BETA), atol=1e-12)
    # Safety labels only: the tilt towards −c.
    _, logprobs = target_logprobs(ref_logprobs, rewards, costs,
                                  TiltTarget("safety", 0.5, reward_weight=0.0, multiplier=1.0), LIMIT)
    assert torch.allclose(logprobs, torch.log_softmax(ref_logprobs - costs / 0.5, dim=1), atol=1e-12)
