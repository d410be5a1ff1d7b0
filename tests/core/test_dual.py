"""The dual solver of docs/algorithms.md §1 against closed forms, finite differences and a primal solve."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from saferl.core.dual import (
    DualProblem,
    InfeasibleConstraintError,
    predict_frontier,
    predict_frontier_at_limits,
    projected_gradient_dual,
    solve,
    solve_exact,
    solve_from_samples,
)

F64 = torch.float64


def random_problem(
    seed: int, num_prompts: int = 5, num_responses: int = 6, m: int = 1, beta: float = 0.5
):
    """A random enumerable problem whose rewards and costs are positively correlated (tension)."""
    generator = torch.Generator().manual_seed(seed)
    ref_logits = torch.randn(num_prompts, num_responses, generator=generator, dtype=F64)
    rewards = torch.randn(num_prompts, num_responses, generator=generator, dtype=F64)
    noise = torch.randn(num_prompts, num_responses, m, generator=generator, dtype=F64)
    costs = 0.8 * rewards.unsqueeze(-1) + 0.6 * noise
    if m == 1:
        costs = costs.squeeze(-1)
    weights = torch.rand(num_prompts, generator=generator, dtype=F64) + 0.2
    return ref_logits, rewards, costs, beta, weights


def binding_limit(ref_logits, rewards, costs, beta, weights, fraction: float = 0.5) -> torch.Tensor:
    """A limit between the smallest achievable cost and the unconstrained tilt's cost."""
    problem = DualProblem.exact(ref_logits, rewards, costs, beta, 0.0, weights)
    free_cost = problem.statistics(torch.zeros(problem.num_constraints, dtype=F64))["expected_cost"]
    return problem.min_achievable_cost() + fraction * (free_cost - problem.min_achievable_cost())


# ---------------------------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------------------------
def test_one_prompt_two_responses_closed_form():
    # π_ref = (½, ½), r = (0, 1), c = (0, 1), β = 1, d = 0.25.
    # π_λ(y₂) = e^{1−λ} / (1 + e^{1−λ}) = ¼  ⇒  e^{1−λ} = ⅓  ⇒  λ* = 1 + ln 3 = 2.0986122886681098.
    # At λ*: E r = E c = ¼; KL = ¼ ln(½) + ¾ ln(3/2) = 0.1308120897...; J = ¼ − KL.
    solution = solve_exact(
        torch.log(torch.tensor([[0.5, 0.5]], dtype=F64)),
        torch.tensor([[0.0, 1.0]], dtype=F64),
        torch.tensor([[0.0, 1.0]], dtype=F64),
        beta=1.0,
        cost_limit=0.25,
    )
    assert solution.multiplier.item() == pytest.approx(1.0 + math.log(3.0), abs=1e-12)
    assert solution.expected_cost.item() == pytest.approx(0.25, abs=1e-12)
    assert solution.expected_reward.item() == pytest.approx(0.25, abs=1e-12)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert solution.kl.item() == pytest.approx(kl, abs=1e-12)
    assert solution.objective.item() == pytest.approx(0.25 - kl, abs=1e-12)
    assert solution.dual_value.item() == pytest.approx(0.25 - kl, abs=1e-12)


def test_two_constraints_closed_form():
    # Two prompts of weight ½; cost 1 lives on prompt 0 only, cost 2 on prompt 1 only, so the
    # problem splits: E c₁ = ½ π₀(y₂) ≤ 0.125 ⇒ π₀(y₂) = ¼ ⇒ λ₁ = 1 + ln 3;
    #                  E c₂ = ½ π₁(y₂) ≤ 0.1   ⇒ π₁(y₂) = ⅕ ⇒ λ₂ = 1 + ln 4.
    ref = torch.log(torch.full((2, 2), 0.5, dtype=F64))
    rewards = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=F64)
    costs = torch.zeros(2, 2, 2, dtype=F64)
    costs[0, 1, 0] = 1.0
    costs[1, 1, 1] = 1.0
    solution = solve_exact(ref, rewards, costs, beta=1.0, cost_limit=[0.125, 0.1])
    expected = torch.tensor([1.0 + math.log(3.0), 1.0 + math.log(4.0)], dtype=F64)
    torch.testing.assert_close(solution.multiplier, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(
        solution.expected_cost, torch.tensor([0.125, 0.1], dtype=F64), atol=1e-12, rtol=0
    )
    assert solution.method == "projected_newton"


# ---------------------------------------------------------------------------------------------
# Derivatives
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 2])
def test_gradient_and_hessian_match_finite_differences(m):
    ref_logits, rewards, costs, beta, weights = random_problem(seed=3, m=m)
    problem = DualProblem.exact(ref_logits, rewards, costs, beta, torch.full((m,), 0.1), weights)
    multiplier = torch.tensor([0.7, 0.3][:m], dtype=F64)
    step = 1e-6
    numeric_gradient = torch.zeros(m, dtype=F64)
    numeric_hessian = torch.zeros(m, m, dtype=F64)
    for j in range(m):
        offset = torch.zeros(m, dtype=F64)
        offset[j] = step
        numeric_gradient[j] = (
            problem.value(multiplier + offset) - problem.value(multiplier - offset)
        ) / (2 * step)
        numeric_hessian[:, j] = (
            problem.gradient(multiplier + offset) - problem.gradient(multiplier - offset)
        ) / (2 * step)
    torch.testing.assert_close(problem.gradient(multiplier), numeric_gradient, atol=1e-8, rtol=0)
    torch.testing.assert_close(problem.hessian(multiplier), numeric_hessian, atol=1e-7, rtol=0)
    # ∇²D is a covariance over β: symmetric positive semi-definite.
    hessian = problem.hessian(multiplier)
    torch.testing.assert_close(hessian, hessian.T)
    assert torch.linalg.eigvalsh(hessian).min() >= -1e-12


def test_dual_value_is_beta_log_partition_plus_limit_term():
    # D(λ) by a plain loop over prompts, independent of the vectorised code.
    ref_logits, rewards, costs, beta, weights = random_problem(seed=4)
    problem = DualProblem.exact(ref_logits, rewards, costs, beta, 0.2, weights)
    multiplier = 0.4
    probs_ref = torch.softmax(ref_logits, dim=1)
    expected = 0.0
    for i in range(ref_logits.shape[0]):
        z = sum(
            probs_ref[i, k].item()
            * math.exp((rewards[i, k] - multiplier * costs[i, k]).item() / beta)
            for k in range(ref_logits.shape[1])
        )
        expected += (weights[i] / weights.sum()).item() * beta * math.log(z)
    expected += multiplier * 0.2
    assert problem.value(multiplier).item() == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Optimality on random problems
# ---------------------------------------------------------------------------------------------
def primal_solve(ref_logits, rewards, costs, beta, weights, limits) -> tuple[float, np.ndarray]:
    """Maximise E[r] − β KL over per-prompt softmax policies subject to E c_j ≤ d_j (SLSQP)."""
    ref = torch.softmax(ref_logits, dim=1).numpy()
    r = rewards.numpy()
    c = costs.numpy() if costs.ndim == 3 else costs.numpy()[..., None]
    p = (weights / weights.sum()).numpy()
    n, k = r.shape

    def policy(theta):
        logits = theta.reshape(n, k)
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def negative_objective(theta):
        pi = policy(theta)
        kl = (pi * (np.log(pi) - np.log(ref))).sum(axis=1)
        return -(p @ ((pi * r).sum(axis=1) - beta * kl))

    constraints = [
        {
            "type": "ineq",
            "fun": (lambda theta, j=j: limits[j] - p @ (policy(theta) * c[..., j]).sum(axis=1)),
        }
        for j in range(c.shape[-1])
    ]
    start = np.log(ref).reshape(-1)
    result = minimize(
        negative_objective,
        start,
        method="SLSQP",
        constraints=constraints,
        options={"ftol": 1e-14, "maxiter": 2000},
    )
    assert result.success, result.message
    return -result.fun, policy(result.x)


@pytest.mark.parametrize("seed,m", [(0, 1), (1, 1), (2, 1), (5, 2), (6, 2)])
def test_kkt_strong_duality_and_primal_agreement(seed, m):
    ref_logits, rewards, costs, beta, weights = random_problem(seed=seed, m=m)
    limits = binding_limit(ref_logits, rewards, costs, beta, weights)
    solution = solve_exact(ref_logits, rewards, costs, beta, limits, weights)
    problem = DualProblem.exact(ref_logits, rewards, costs, beta, limits, weights)
    # KKT: λ ≥ 0, feasibility, complementary slackness.
    slack = limits - solution.expected_cost
    assert (solution.multiplier >= 0).all()
    assert (slack >= -1e-10).all()
    assert (solution.multiplier * slack).abs().max() <= 1e-10
    assert solution.is_constrained
    # Strong duality: D(λ*) = J(π_λ*).
    assert solution.dual_value.item() == pytest.approx(solution.objective.item(), abs=1e-10)
    # An independent primal solve reaches the same objective and policy.
    primal_objective, primal_policy = primal_solve(
        ref_logits, rewards, costs, beta, weights, limits.numpy()
    )
    assert solution.objective.item() == pytest.approx(primal_objective, abs=1e-5)
    np.testing.assert_allclose(
        problem.tilted_policy(solution.multiplier).numpy(), primal_policy, atol=1e-4
    )


def test_multiplier_accurate_to_1e_8_against_independent_bisection():
    ref_logits, rewards, costs, beta, weights = random_problem(
        seed=11, num_prompts=40, num_responses=16, beta=0.1
    )
    limit = binding_limit(ref_logits, rewards, costs, beta, weights, fraction=0.3)
    solution = solve_exact(ref_logits, rewards, costs, beta, limit, weights)

    # D'(λ) = d − E c with plain numpy, bisected to machine precision.
    ref = torch.softmax(ref_logits, dim=1).numpy()
    r, c, p = rewards.numpy(), costs.numpy(), (weights / weights.sum()).numpy()

    def slope(value):
        logits = np.log(ref) + (r - value * c) / beta
        logits -= logits.max(axis=1, keepdims=True)
        pi = np.exp(logits)
        pi /= pi.sum(axis=1, keepdims=True)
        return limit.item() - p @ (pi * c).sum(axis=1)

    low, high = 0.0, 1.0
    while slope(high) < 0:
        high *= 2
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if slope(middle) < 0 else (low, middle)
    assert abs(solution.multiplier.item() - 0.5 * (low + high)) <= 1e-8
    assert solution.iterations < 30


def test_zero_multiplier_when_unconstrained_tilt_is_feasible():
    ref_logits, rewards, costs, beta, weights = random_problem(seed=7)
    problem = DualProblem.exact(ref_logits, rewards, costs, beta, 0.0, weights)
    free_cost = problem.statistics(torch.zeros(1, dtype=F64))["expected_cost"]
    solution = solve_exact(ref_logits, rewards, costs, beta, free_cost + 0.01, weights)
    assert solution.multiplier.item() == 0.0
    assert solution.iterations == 0
    assert not solution.is_constrained
    # Two constraints, one loose and one binding: only the binding one gets a multiplier.
    ref_logits, rewards, costs, beta, weights = random_problem(seed=8, m=2)
    limits = binding_limit(ref_logits, rewards, costs, beta, weights)
    problem = DualProblem.exact(ref_logits, rewards, costs, beta, 0.0, weights)
    limits[1] = problem.statistics(torch.zeros(2, dtype=F64))["expected_cost"][1] + 10.0
    solution = solve_exact(ref_logits, rewards, costs, beta, limits, weights)
    assert solution.multiplier[0] > 0 and solution.multiplier[1] == 0.0


def test_infeasible_limit_raises_with_smallest_achievable_cost():
    ref_logits, rewards, costs, beta, weights = random_problem(seed=9)
    problem = DualProblem.exact(ref_logits, rewards, costs, beta, 0.0, weights)
    smallest = problem.min_achievable_cost().item()
    with pytest.raises(InfeasibleConstraintError, match="smallest achievable") as caught:
        solve_exact(ref_logits, rewards, costs, beta, smallest - 0.1, weights)
    assert caught.value.min_achievable_cost.item() == pytest.approx(smallest)
    assert isinstance(caught.value, ValueError)
    assert f"{smallest:.6g}" in str(caught.value)
    # Exactly at the minimum there is no finite multiplier either.
    with pytest.raises(InfeasibleConstraintError):
        solve_exact(ref_logits, rewards, costs, beta, smallest, weights)
    # Just above it the solve succeeds with a large but finite multiplier.
    solution = solve_exact(ref_logits, rewards, costs, beta, smallest + 1e-3, weights)
    assert math.isfinite(solution.multiplier.item()) and solution.multiplier.item() > 0


def test_responses_outside_the_support_do_not_count_for_feasibility():
    # The zero-cost response has π_ref = 0 (log-prob −inf), so it cannot be used: the smallest
    # achievable cost is 1, and a limit of 0.5 is infeasible.
    ref = torch.tensor([[-math.inf, 0.0, 0.0]], dtype=F64)
    rewards = torch.tensor([[0.0, 1.0, 2.0]], dtype=F64)
    costs = torch.tensor([[0.0, 1.0, 2.0]], dtype=F64)
    with pytest.raises(InfeasibleConstraintError):
        solve_exact(ref, rewards, costs, beta=1.0, cost_limit=0.5)
    solution = solve_exact(ref, rewards, costs, beta=1.0, cost_limit=1.5)
    policy = DualProblem.exact(ref, rewards, costs, 1.0, 1.5).tilted_policy(solution.multiplier)
    assert policy[0, 0].item() == 0.0


def test_jointly_infeasible_limits_raise():
    # One prompt, responses (c₁, c₂) = (0, 1) or (1, 0): each limit ≤ 0.2 is achievable alone,
    # but E c₁ + E c₂ = 1 for every policy, so both ≤ 0.2 together is impossible.
    ref = torch.zeros(1, 2, dtype=F64)
    rewards = torch.zeros(1, 2, dtype=F64)
    costs = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], dtype=F64)
    with pytest.raises(InfeasibleConstraintError, match="all of them"):
        solve_exact(ref, rewards, costs, beta=0.5, cost_limit=[0.2, 0.2])
    solution = solve_exact(ref, rewards, costs, beta=0.5, cost_limit=[0.6, 0.6])
    assert (solution.expected_cost <= 0.6 + 1e-10).all()


def test_unnormalised_reference_and_prompt_weights():
    ref_logits, rewards, costs, beta, weights = random_problem(seed=12)
    limit = binding_limit(ref_logits, rewards, costs, beta, weights)
    shifted = ref_logits + torch.arange(ref_logits.shape[0], dtype=F64).unsqueeze(1) * 3.0
    a = solve_exact(ref_logits, rewards, costs, beta, limit, weights)
    b = solve_exact(shifted, rewards, costs, beta, limit, weights * 7.0)
    torch.testing.assert_close(a.multiplier, b.multiplier, atol=1e-12, rtol=0)
    torch.testing.assert_close(a.kl, b.kl, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------
# The plug-in estimator
# ---------------------------------------------------------------------------------------------
def test_samples_equal_exact_problem_with_uniform_reference():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(30, 8, generator=generator, dtype=F64)
    costs = 0.7 * rewards + 0.7 * torch.randn(30, 8, generator=generator, dtype=F64)
    from_samples = solve_from_samples(rewards, costs, beta=0.2, cost_limit=-0.3)
    exact = solve_exact(torch.zeros(30, 8, dtype=F64), rewards, costs, beta=0.2, cost_limit=-0.3)
    torch.testing.assert_close(from_samples.multiplier, exact.multiplier, atol=1e-12, rtol=0)
    torch.testing.assert_close(from_samples.kl, exact.kl, atol=1e-12, rtol=0)


def test_plug_in_estimate_is_biased_upward_and_converges():
    # Each prompt has 12 possible responses with a known reference distribution. λ̂ from K samples
    # per prompt is biased upward at small K and converges to the exact λ* as K grows.
    generator = torch.Generator().manual_seed(1)
    ref_logits, rewards, costs, beta, _ = random_problem(
        seed=13, num_prompts=50, num_responses=12, beta=0.5
    )
    limit = binding_limit(ref_logits, rewards, costs, beta, torch.ones(50, dtype=F64), fraction=0.4)
    exact = solve_exact(ref_logits, rewards, costs, beta, limit).multiplier.item()
    ref_probs = torch.softmax(ref_logits, dim=1)

    def estimate(num_samples: int) -> float:
        index = torch.multinomial(ref_probs, num_samples, replacement=True, generator=generator)
        return solve_from_samples(
            rewards.gather(1, index), costs.gather(1, index), beta, limit
        ).multiplier.item()

    small = np.mean([estimate(4) for _ in range(20)])
    large = np.mean([estimate(2048) for _ in range(3)])
    assert small > exact * 1.05
    assert abs(large - exact) < 0.03 * exact
    assert abs(large - exact) < abs(small - exact)


def test_projected_gradient_baseline_reaches_the_same_root():
    generator = torch.Generator().manual_seed(2)
    rewards = torch.randn(50, 16, generator=generator, dtype=F64)
    costs = 0.6 * rewards + 0.8 * torch.randn(50, 16, generator=generator, dtype=F64)
    problem = DualProblem.from_samples(rewards, costs, beta=0.5, cost_limit=-0.2)
    newton = solve(problem)
    baseline = projected_gradient_dual(problem, step_size=0.2, tolerance=1e-12)
    assert baseline.multiplier.item() == pytest.approx(newton.multiplier.item(), abs=1e-8)
    assert baseline.iterations > 5 * newton.iterations


# ---------------------------------------------------------------------------------------------
# The predicted frontier
# ---------------------------------------------------------------------------------------------
def test_frontier_is_monotone_and_passes_through_the_optimum():
    ref_logits, rewards, costs, beta, weights = random_problem(seed=14)
    limit = binding_limit(ref_logits, rewards, costs, beta, weights)
    solution = solve_exact(ref_logits, rewards, costs, beta, limit, weights)
    problem = DualProblem.exact(ref_logits, rewards, costs, beta, limit, weights)
    grid = torch.cat([torch.linspace(0, 5, 21, dtype=F64), solution.multiplier])
    frontier = predict_frontier(problem, grid)
    # Cost (and reward) of π_λ are non-increasing in λ; the KL grows away from λ = 0.
    assert (frontier.expected_cost[1:-1, 0] - frontier.expected_cost[:-2, 0] <= 1e-12).all()
    assert (frontier.expected_reward[1:-1] - frontier.expected_reward[:-2] <= 1e-12).all()
    assert frontier.expected_cost[-1, 0].item() == pytest.approx(limit.item(), abs=1e-10)
    assert frontier.expected_reward[-1].item() == pytest.approx(
        solution.expected_reward.item(), abs=1e-12
    )

    smallest = problem.min_achievable_cost().item()
    at_limits = predict_frontier_at_limits(
        problem, torch.tensor([smallest - 1.0, limit.item()], dtype=F64)
    )
    assert at_limits.feasible.tolist() == [False, True]
    assert math.isnan(at_limits.expected_reward[0].item())
    assert at_limits.multipliers[1, 0].item() == pytest.approx(
        solution.multiplier.item(), abs=1e-10
    )


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"beta": 0.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"costs": torch.zeros(2, 4)}, "costs must have shape"),
        ({"rewards": torch.zeros(3, 4)}, "rewards must have shape"),
        ({"cost_limit": [0.1, 0.2]}, "cost_limit"),
        ({"cost_limit": math.nan}, "cost_limit"),
        ({"rewards": torch.full((2, 3), math.nan)}, "rewards must be finite"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(kwargs, match):
    arguments = {
        "ref_logprobs": torch.zeros(2, 3),
        "rewards": torch.zeros(2, 3),
        "costs": torch.zeros(2, 3),
        "beta": 0.1,
        "cost_limit": 0.5,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        solve_exact(**arguments)
