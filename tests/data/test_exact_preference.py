"""Dualized alignment checked exactly on the built-in world (docs/algorithms.md §1, §4).

* Population soft-label DPO at β on MoCAN labels ``σ(s(y) − s(y'))`` with ``s = r − λ*·c``
  reaches ``π_λ*`` (compared by enumeration on a restricted support);
* PeCAN's published labelling (raw log-ratios of ``π_λ*`` as scores, i.e. ``s/β`` + const)
  reaches ``π ∝ π_ref exp(s/β²)`` instead; the consistent labelling (``β·log-ratio``) reaches
  ``π_λ*``;
* the plug-in dual estimator over K reference samples per prompt is biased upward at small K and
  converges to the exact ``λ*`` as K grows.

The world tests share one small reference policy (80 SFT steps) and one exact world, built once
for the module; that takes well over 10 s on a shared CPU, so they are marked slow. The synthetic
tests at the top are fast.
"""

from __future__ import annotations

import math

import pytest
import torch

from saferl.core.dual import DualProblem, solve_exact, solve_from_samples
from saferl.core.dualized import composite_score, pecan_scores
from saferl.data.world import (
    ExactWorld,
    ReferenceConfig,
    build_exact_world,
    build_world_tokenizer,
    train_reference_policy,
)
from saferl.eval.exact_preference import (
    population_dpo,
    population_dpo_loss,
    restrict_to_support,
)

F64 = torch.float64
BETA, COST_LIMIT = 0.5, -0.8
SUPPORT_SIZE = 64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# --------------------------------------------------------------------------------------------
# Synthetic problems with closed-form answers (fast)
# --------------------------------------------------------------------------------------------
def test_restrict_to_support_keeps_the_most_likely_responses_in_input_order():
    ref_logprobs = torch.log(t([[0.2, 0.5, 0.3], [0.1, 0.0, 0.9]]))  # second row: one -inf
    indices, restricted = restrict_to_support(ref_logprobs, 2)
    assert indices.tolist() == [[1, 2], [0, 2]]
    # Renormalised: [0.5, 0.3]/0.8 = [0.625, 0.375]; [0.1, 0.9]/1.0.
    torch.testing.assert_close(restricted.exp(), t([[0.625, 0.375], [0.1, 0.9]]))
    with pytest.raises(ValueError, match="prompt 1 has only 2 responses"):
        restrict_to_support(ref_logprobs, 3)
    with pytest.raises(ValueError, match="support_size must be between 2 and"):
        restrict_to_support(ref_logprobs, 1)


def test_population_dpo_two_responses_worked_value():
    # q = [½, ½], s = [1, 0], β = ½: the optimum has β(u_0 − u_1) = s_0 − s_1 = 1, so
    # π_0/π_1 = e^{1/β} = e², π_0 = σ(2) = 0.8807970779778823.
    fit = population_dpo(torch.log(t([[0.5, 0.5]])), t([[1.0, 0.0]]), beta=0.5, support_size=None)
    torch.testing.assert_close(fit.exp(), t([[0.8807970779778823, 0.1192029220221177]]))


def test_population_dpo_reaches_the_gibbs_policy_of_its_scores():
    # π ∝ π_ref exp(s/β) for any scores, here with a per-prompt constant added to s (no effect).
    generator = torch.Generator().manual_seed(0)
    ref_logprobs = torch.log_softmax(torch.randn(3, 7, generator=generator, dtype=F64), dim=1)
    scores = torch.randn(3, 7, generator=generator, dtype=F64) + t([[5.0], [-2.0], [0.0]])
    beta = 0.25
    fit = population_dpo(ref_logprobs, scores, beta, support_size=None)
    expected = torch.softmax(ref_logprobs + scores / beta, dim=1)
    assert (fit.exp() - expected).abs().max() < 1e-12
    # The learner's own dpo_loss, summed over the weighted pairs, is stationary at the fit.
    policy = fit.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(
        population_dpo_loss(ref_logprobs, scores, policy, beta), policy
    )
    assert gradient.abs().max() < 1e-12


def test_population_dpo_rejects_bad_inputs():
    ref_logprobs = torch.log(t([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="beta"):
        population_dpo(ref_logprobs, t([[1.0, 0.0]]), beta=0.0)
    with pytest.raises(ValueError, match="scores must have the shape"):
        population_dpo(ref_logprobs, t([[1.0, 0.0, 2.0]]), beta=0.5, support_size=None)
    with pytest.raises(ValueError, match="finite"):
        population_dpo(ref_logprobs, t([[math.inf, 0.0]]), beta=0.5, support_size=None)


# --------------------------------------------------------------------------------------------
# The built-in world (slow: one reference policy and one exact world for the module)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world() -> ExactWorld:
    tokenizer = build_world_tokenizer()
    model, _ = train_reference_policy(ReferenceConfig(steps=80, num_examples=800), tokenizer)
    return build_exact_world(model, tokenizer, beta=BETA, cost_limit=COST_LIMIT)


@pytest.fixture(scope="module")
def restricted(world: ExactWorld) -> dict[str, torch.Tensor]:
    """The world on its 64 most likely reference responses per prompt, and its exact optimum."""
    indices, ref_logprobs = restrict_to_support(world.ref_logprobs, SUPPORT_SIZE)
    rewards, costs = world.rewards.gather(1, indices), world.costs[..., 0].gather(1, indices)
    solution = solve_exact(ref_logprobs, rewards, costs, BETA, COST_LIMIT)
    problem = DualProblem.exact(ref_logprobs, rewards, costs, BETA, COST_LIMIT)
    optimal = problem.tilted_policy(solution.multiplier)  # π_λ* on the support, (P, 64)
    return {
        "indices": indices,
        "ref_logprobs": ref_logprobs,
        "multiplier": solution.multiplier,
        "expected_cost": solution.expected_cost,
        "scores": composite_score(rewards, costs, solution.multiplier),  # s = r − λ*·c
        "optimal": optimal,
        "optimal_logratio": optimal.log() - ref_logprobs,  # s/β − log Z_λ*
    }


def _on_full_grid(world: ExactWorld, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Place support values back into a (P, 7240) tensor (zeros elsewhere: never read)."""
    return torch.zeros_like(world.ref_logprobs).scatter(1, indices, values)


@pytest.mark.slow
def test_restricted_optimum_is_a_constrained_one(restricted):
    # The limit binds on the support (λ* > 0) and π_λ* meets it with equality.
    assert restricted["multiplier"].item() > 0.1
    assert abs(restricted["expected_cost"].item() - COST_LIMIT) < 1e-9


@pytest.mark.slow
def test_mocan_labels_with_dpo_at_beta_reach_the_constrained_optimum(world, restricted):
    scores = _on_full_grid(world, restricted["indices"], restricted["scores"])
    fit = population_dpo(world.ref_logprobs, scores, BETA, support_size=SUPPORT_SIZE)
    assert fit.shape == (len(world.prompts), SUPPORT_SIZE)
    assert (fit.exp() - restricted["optimal"]).abs().max() < 1e-4


@pytest.mark.slow
def test_pecan_published_labelling_reaches_the_beta_squared_tilt_not_the_optimum(world, restricted):
    # Published: the raw log-ratio log(π_λ*/π_ref) = s/β − log Z as the score.
    raw = pecan_scores(restricted["optimal_logratio"], BETA, consistent=False)
    scores = _on_full_grid(world, restricted["indices"], raw)
    fit = population_dpo(world.ref_logprobs, scores, BETA, support_size=SUPPORT_SIZE).exp()
    beta_squared_tilt = torch.softmax(
        restricted["ref_logprobs"] + restricted["scores"] / BETA**2, 1
    )
    assert (fit - beta_squared_tilt).abs().max() < 1e-4
    assert (fit - restricted["optimal"]).abs().max() > 0.05


@pytest.mark.slow
def test_pecan_consistent_labelling_reaches_the_constrained_optimum(world, restricted):
    consistent = pecan_scores(restricted["optimal_logratio"], BETA)  # s − β log Z
    scores = _on_full_grid(world, restricted["indices"], consistent)
    fit = population_dpo(world.ref_logprobs, scores, BETA, support_size=SUPPORT_SIZE)
    assert (fit.exp() - restricted["optimal"]).abs().max() < 1e-4


def _sampled_multipliers(world: ExactWorld, num_samples: int, seeds: range) -> torch.Tensor:
    """λ̂ from ``num_samples`` reference samples per prompt, one per seed."""
    ref_probs = world.ref_logprobs.exp()  # (P, 7240)
    estimates = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        drawn = torch.multinomial(ref_probs, num_samples, replacement=True, generator=generator)
        rewards, costs = world.rewards.gather(1, drawn), world.costs[..., 0].gather(1, drawn)  # (P, K)
        estimates.append(
            solve_from_samples(rewards, costs, world.beta, world.cost_limit).multiplier
        )
    return torch.cat(estimates)


@pytest.mark.slow
def test_sampled_dual_is_biased_upward_at_small_k_and_converges(world):
    exact = world.optimum().multiplier.item()  # ≈ 0.658 for this reference
    small = _sampled_multipliers(world, 4, range(100))
    # K = 4: mean λ̂ ≈ 0.757 with a standard error ≈ 0.017 over 100 draws (≈ 0.740 over 400: the
    # bias is ≈ 0.08, about 5 standard errors).
    assert small.mean().item() > exact + 0.05
    large = _sampled_multipliers(world, 2048, range(4))
    # K = 2048: spread ≈ 0.006 per draw.
    assert abs(large.mean().item() - exact) < 0.03 * exact
    assert abs(large.mean().item() - exact) < abs(small.mean().item() - exact)
