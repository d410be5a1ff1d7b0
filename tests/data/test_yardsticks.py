"""The exact yardsticks of docs/algorithms.md §8 (:func:`saferl.data.world.exact.score_policy`) on a
small synthetic enumerable problem: 4 prompts × 6 responses, one cost, float64, no model.

The reference breaks the limit (``E_ref c > d``), so the constraint is active (λ* > 0) and
``J* < J(π_ref)`` is possible: the old ``(J* − J)/(J* − J_ref)`` would flatter here. Every check is
against a value worked out from the definitions:

* ``G(π) = J* − [J(π) − λ*·(E_π c − d)]`` equals ``β E_x KL(π‖π*)`` (to 1e-10);
* ``G ≥ 0`` for every policy, feasible or not, ``G(π*) = 0`` (to 1e-12), ``G(π_ref)/G(π_ref) = 1``;
* a policy with ``J(π) > J*`` breaks the limit and still has ``G > 0``;
* the feasible verdict holds up to ``d + FEASIBILITY_TOLERANCE`` and not beyond.
"""

from __future__ import annotations

import math

import pytest
import torch

from saferl.core.dual import DualProblem, solve
from saferl.data.world.exact import (
    FEASIBILITY_TOLERANCE,
    PolicyScore,
    score_policy,
    tilted_logprobs,
)

BETA = 0.5
NUM_PROMPTS, NUM_RESPONSES = 4, 6


@pytest.fixture(scope="module")
def problem() -> dict:
    generator = torch.Generator().manual_seed(0)
    ref_logprobs = torch.log_softmax(
        torch.randn(NUM_PROMPTS, NUM_RESPONSES, generator=generator, dtype=torch.float64), dim=1
    )
    rewards = torch.randn(NUM_PROMPTS, NUM_RESPONSES, generator=generator, dtype=torch.float64)
    # Cost rises with reward (helpful answers are riskier), so the limit binds.
    costs = 0.8 * rewards + 0.5 * torch.randn(
        NUM_PROMPTS, NUM_RESPONSES, generator=generator, dtype=torch.float64
    )
    reference_cost = (ref_logprobs.exp() * costs).sum(1).mean().item()
    cost_limit = reference_cost - 0.3  # the reference breaks the limit by 0.3
    return {
        "ref_logprobs": ref_logprobs,
        "rewards": rewards,
        "costs": costs,
        "beta": BETA,
        "cost_limit": cost_limit,
    }


def score(problem: dict, logprobs: torch.Tensor) -> PolicyScore:
    return score_policy(logprobs, **problem)


def multiplier(problem: dict) -> torch.Tensor:
    dual = DualProblem.exact(
        problem["ref_logprobs"], problem["rewards"], problem["costs"], BETA, problem["cost_limit"]
    )
    return solve(dual).multiplier


def optimal_logprobs(problem: dict) -> torch.Tensor:
    return tilted_logprobs(
        problem["ref_logprobs"],
        problem["rewards"],
        problem["costs"].unsqueeze(-1),
        BETA,
        multiplier(problem),
    )


def random_policies(problem: dict, count: int, seed: int = 1) -> list[torch.Tensor]:
    """Random policies: sharp and flat logits, tilts towards reward (infeasible) and towards low
    cost (feasible), and some with zeros (responses of probability exactly 0)."""
    generator = torch.Generator().manual_seed(seed)
    policies = []
    for k in range(count):
        scale = (0.1, 1.0, 3.0)[k % 3]
        logits = scale * torch.randn(
            NUM_PROMPTS, NUM_RESPONSES, generator=generator, dtype=torch.float64
        )
        if k % 4 == 1:
            logits = problem["ref_logprobs"] + (k % 7 + 1) * problem["rewards"]  # reward-greedy
        if k % 4 == 2:
            costs = problem["costs"] if problem["costs"].ndim == 2 else problem["costs"].sum(-1)
            logits = problem["ref_logprobs"] - (k % 5 + 1) * costs  # cost-averse
        if k % 5 == 3:
            logits[:, : NUM_RESPONSES // 2] = -math.inf  # zeros: 0·log 0 = 0
        policies.append(torch.log_softmax(logits, dim=1))
    return policies


def kl_by_hand(logprobs: torch.Tensor, other: torch.Tensor) -> float:
    """``E_x Σ_y π log(π/q)``, term by term, skipping π = 0."""
    total = 0.0
    for row in range(logprobs.shape[0]):
        for col in range(logprobs.shape[1]):
            p = math.exp(logprobs[row, col].item())
            if p > 0:
                total += p * (logprobs[row, col].item() - other[row, col].item())
    return total / logprobs.shape[0]


def test_the_problem_is_one_where_j_alone_flatters(problem: dict) -> None:
    optimum = score(problem, optimal_logprobs(problem))
    reference = score(problem, problem["ref_logprobs"])
    assert multiplier(problem).item() > 0.1  # the constraint is active
    assert reference.violation[0] == pytest.approx(0.3, abs=1e-12)
    assert not reference.feasible
    # The reference breaks the limit and has a higher J than the optimum: J* − J(π_ref) < 0,
    # so the old normalisation would have divided by a negative number.
    assert reference.objective > optimum.objective


def test_lagrangian_gap_equals_beta_kl_to_optimum(problem: dict) -> None:
    optimal = optimal_logprobs(problem)
    for logprobs in random_policies(problem, 40):
        scored = score(problem, logprobs)
        assert scored.kl_to_optimum == pytest.approx(kl_by_hand(logprobs, optimal), abs=1e-12)
        assert scored.lagrangian_gap == pytest.approx(BETA * scored.kl_to_optimum, abs=1e-10)


def test_gap_is_never_negative_and_zero_only_at_the_optimum(problem: dict) -> None:
    optimum_objective = score(problem, optimal_logprobs(problem)).objective
    infeasible_above_optimum = 0
    for logprobs in random_policies(problem, 100, seed=2):
        scored = score(problem, logprobs)
        assert scored.lagrangian_gap > 1e-6
        assert scored.kl_to_optimum > 0
        assert scored.normalised_lagrangian_gap > 0
        if scored.objective > optimum_objective:
            infeasible_above_optimum += 1
            assert scored.violation[0] > 0 and not scored.feasible
    # The random set includes infeasible policies with J(π) > J*, which the old gap made negative.
    assert infeasible_above_optimum >= 5


def test_optimum_scores_zero_and_reference_one(problem: dict) -> None:
    optimum = score(problem, optimal_logprobs(problem))
    assert abs(optimum.lagrangian_gap) < 1e-12
    assert abs(optimum.kl_to_optimum) < 1e-12
    assert abs(optimum.normalised_lagrangian_gap) < 1e-10
    # π* meets the active limit with equality (complementary slackness): feasible, no violation.
    assert optimum.violation[0] < 1e-10 and optimum.feasible
    reference = score(problem, problem["ref_logprobs"])
    assert reference.normalised_lagrangian_gap == pytest.approx(1.0, abs=1e-12)
    assert reference.kl == 0.0
    assert reference.lagrangian_gap == pytest.approx(BETA * reference.kl_to_optimum, abs=1e-12)


def test_infeasible_policy_above_the_optimum_has_positive_gap_and_violation(problem: dict) -> None:
    # The unconstrained tilt π ∝ π_ref exp(r/β): the highest J of all, and it breaks the limit.
    unconstrained = torch.log_softmax(problem["ref_logprobs"] + problem["rewards"] / BETA, dim=1)
    scored = score(problem, unconstrained)
    optimum = score(problem, optimal_logprobs(problem))
    assert scored.objective > optimum.objective + 1e-3
    assert scored.violation[0] > 1e-3 and not scored.feasible
    assert scored.lagrangian_gap > 1e-3
    # G by hand: J* − [J(π) − λ*(E_π c − d)].
    cost_limit = problem["cost_limit"]
    by_hand = optimum.objective - (
        scored.objective - multiplier(problem).item() * (scored.expected_cost[0] - cost_limit)
    )
    assert scored.lagrangian_gap == pytest.approx(by_hand, abs=1e-12)


def test_feasible_verdict_respects_the_tolerance_at_the_boundary(problem: dict) -> None:
    assert FEASIBILITY_TOLERANCE == 1e-3
    # π* scored against limits it exceeds by just under and just over the tolerance.
    (reference_cost,) = score(problem, problem["ref_logprobs"]).expected_cost
    assert reference_cost > problem["cost_limit"]
    for excess, feasible in ((0.0, True), (0.9e-3, True), (1.1e-3, False), (0.01, False)):
        # Move the limit instead of the policy: the optimum's own cost sits at its limit.
        shifted = {**problem, "cost_limit": problem["cost_limit"] - excess}
        scored = score(shifted, optimal_logprobs(problem))
        assert scored.violation[0] == pytest.approx(excess, abs=1e-10)
        assert scored.feasible is feasible
        assert scored.is_feasible(tolerance=0.02) is True
    boundary = PolicyScore(0.0, (0.0,), 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, (FEASIBILITY_TOLERANCE,))
    assert boundary.feasible
    assert not PolicyScore(0.0, (0.0,), 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, (math.nan,)).feasible
    assert not PolicyScore(0.0, (0.0, 0.0), 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, (0.0, 2e-3)).feasible


def test_zero_probabilities_are_safe(problem: dict) -> None:
    # A policy that puts all its mass on one response per prompt: 0·log 0 terms must be 0.
    best = problem["rewards"].argmax(dim=1)
    logprobs = torch.full_like(problem["ref_logprobs"], -math.inf)
    logprobs[torch.arange(NUM_PROMPTS), best] = 0.0
    scored = score(problem, logprobs)
    assert math.isfinite(scored.kl) and math.isfinite(scored.kl_to_optimum)
    assert scored.kl == pytest.approx(
        -problem["ref_logprobs"][torch.arange(NUM_PROMPTS), best].mean().item()
    )
    assert scored.lagrangian_gap == pytest.approx(BETA * scored.kl_to_optimum, abs=1e-10)


# --------------------------------------------------------------------------------------------
# Two constraints (m = 2): the same yardsticks, λ* from the projected-Newton dual solve
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_constraints(problem: dict) -> dict:
    """The problem with a second cost that moves against the first on the same prompts (the
    Hessian of the dual has off-diagonal terms), and limits that the reference breaks on both."""
    generator = torch.Generator().manual_seed(7)
    second = -0.7 * problem["costs"] + 0.6 * torch.randn(
        NUM_PROMPTS, NUM_RESPONSES, generator=generator, dtype=torch.float64
    )
    costs = torch.stack([problem["costs"], second], dim=-1)  # (4, 6, 2)
    probs = problem["ref_logprobs"].exp()
    reference_cost = torch.einsum("nk,nkj->j", probs, costs) / NUM_PROMPTS
    return {**problem, "costs": costs, "cost_limit": (reference_cost - torch.tensor([0.2, 0.1], dtype=torch.float64)).tolist()}


def dual_by_scipy(problem: dict) -> torch.Tensor:
    """λ* = argmin_{λ ≥ 0} D(λ) by L-BFGS-B on D written out in numpy (not DualProblem):
    D(λ) = β mean_x logsumexp_y(log π_ref + (r − λ·c)/β) + λ·d."""
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import logsumexp, softmax

    log_ref, rewards = problem["ref_logprobs"].numpy(), problem["rewards"].numpy()
    costs, limit, beta = problem["costs"].numpy(), np.asarray(problem["cost_limit"]), problem["beta"]

    def value_and_gradient(multiplier):
        logits = log_ref + (rewards - costs @ multiplier) / beta
        probs = softmax(logits, axis=1)
        value = beta * logsumexp(logits, axis=1).mean() + multiplier @ limit
        return value, limit - np.einsum("nk,nkj->j", probs, costs) / probs.shape[0]

    result = minimize(value_and_gradient, np.zeros(costs.shape[-1]), jac=True, method="L-BFGS-B",
                      bounds=[(0, None)] * costs.shape[-1], options={"ftol": 0, "gtol": 1e-13, "maxiter": 10_000})
    return torch.from_numpy(result.x)


def test_two_constraint_optimum_satisfies_kkt_and_matches_a_scipy_solve(two_constraints: dict) -> None:
    problem = two_constraints
    dual = DualProblem.exact(problem["ref_logprobs"], problem["rewards"], problem["costs"], BETA,
                             problem["cost_limit"])
    solution = solve(dual)
    multiplier = solution.multiplier
    assert solution.method == "projected_newton"
    assert (multiplier > 0.05).all()  # both limits bind
    assert torch.allclose(multiplier, dual_by_scipy(problem), rtol=0, atol=1e-7)
    optimal = tilted_logprobs(problem["ref_logprobs"], problem["rewards"], problem["costs"], BETA, multiplier)
    optimum = score(problem, optimal)
    limits = torch.tensor(problem["cost_limit"], dtype=torch.float64)
    slack = limits - torch.tensor(optimum.expected_cost, dtype=torch.float64)
    # KKT: λ* ≥ 0, feasibility E c_j ≤ d_j, complementary slackness λ*_j (d_j − E c_j) = 0.
    assert (multiplier >= 0).all() and (slack >= -1e-10).all()
    assert (multiplier * slack).abs().max() < 1e-10
    # Strong duality D(λ*) = J(π*), and π* scores zero on every yardstick.
    assert solution.dual_value.item() == pytest.approx(optimum.objective, abs=1e-10)
    assert optimum.violation == pytest.approx((0.0, 0.0), abs=1e-10) and optimum.feasible
    assert abs(optimum.lagrangian_gap) < 1e-12 and abs(optimum.kl_to_optimum) < 1e-12
    assert len(optimum.expected_cost) == len(optimum.violation) == optimum.num_constraints == 2
    reference = score(problem, problem["ref_logprobs"])
    assert reference.violation == pytest.approx((0.2, 0.1), abs=1e-12)
    assert reference.normalised_lagrangian_gap == pytest.approx(1.0, abs=1e-12)


def test_two_constraint_gap_is_beta_kl_and_the_definition(two_constraints: dict) -> None:
    problem = two_constraints
    dual = DualProblem.exact(problem["ref_logprobs"], problem["rewards"], problem["costs"], BETA,
                             problem["cost_limit"])
    multiplier = solve(dual).multiplier
    optimal = tilted_logprobs(problem["ref_logprobs"], problem["rewards"], problem["costs"], BETA, multiplier)
    optimum = score(problem, optimal)
    limits = torch.tensor(problem["cost_limit"], dtype=torch.float64)
    broken = 0
    for logprobs in random_policies(problem, 40, seed=3):
        scored = score(problem, logprobs)
        assert scored.kl_to_optimum == pytest.approx(kl_by_hand(logprobs, optimal), abs=1e-12)
        assert scored.lagrangian_gap == pytest.approx(BETA * scored.kl_to_optimum, abs=1e-10)
        costs = torch.tensor(scored.expected_cost, dtype=torch.float64)
        by_hand = optimum.objective - (scored.objective - (multiplier @ (costs - limits)).item())
        assert scored.lagrangian_gap == pytest.approx(by_hand, abs=1e-10)
        assert scored.violation == pytest.approx(tuple((costs - limits).clamp_min(0).tolist()), abs=1e-14)
        broken += sum(value > 0 for value in scored.violation)
    assert broken > 10  # the random policies break each limit now and then


def test_with_one_constraint_inactive_the_two_constraint_score_is_the_one_constraint_score(
    two_constraints: dict,
) -> None:
    problem = two_constraints
    first_only = {**problem, "costs": problem["costs"][..., 0], "cost_limit": problem["cost_limit"][0]}
    # The second limit far above anything reachable: λ*_2 = 0, and π* is the m = 1 optimum.
    loose = {**problem, "cost_limit": [problem["cost_limit"][0], 100.0]}
    dual = DualProblem.exact(problem["ref_logprobs"], problem["rewards"], problem["costs"], BETA, loose["cost_limit"])
    both = solve(dual).multiplier
    assert both[1].item() == 0.0
    assert both[0].item() == pytest.approx(multiplier(first_only).item(), abs=1e-12)
    for logprobs in [problem["ref_logprobs"], *random_policies(problem, 8, seed=4)]:
        two, one = score(loose, logprobs), score(first_only, logprobs)
        for name in ("expected_reward", "kl", "objective", "kl_to_optimum", "lagrangian_gap",
                     "normalised_lagrangian_gap"):
            assert getattr(two, name) == pytest.approx(getattr(one, name), abs=1e-11), name
        assert two.expected_cost[0] == pytest.approx(one.expected_cost[0], abs=1e-14)
        assert two.violation[0] == pytest.approx(one.violation[0], abs=1e-14) and two.violation[1] == 0.0


def test_score_rejects_a_limit_list_of_the_wrong_length(two_constraints: dict) -> None:
    with pytest.raises(ValueError, match="cost_limit must be a float or have length m=2"):
        score({**two_constraints, "cost_limit": [0.0, 0.0, 0.0]}, two_constraints["ref_logprobs"])
