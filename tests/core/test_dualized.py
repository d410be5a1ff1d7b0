"""MoCAN/PeCAN relabelling math (saferl.core.dualized): worked values in float64."""

from __future__ import annotations

import math

import pytest
import torch

from saferl.core.dual import InfeasibleConstraintError, solve_from_samples
from saferl.core.dualized import (
    composite_score,
    mocan_dual,
    pecan_scores,
    pseudo_preference_prob,
    sample_target_weights,
)
from saferl.core.preference_losses import PreferenceLogps, dpo_loss

F64 = torch.float64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# --------------------------------------------------------------------------------------------
# composite_score
# --------------------------------------------------------------------------------------------
def test_composite_score_one_constraint_worked_value():
    # s = r − λc = [1 − 2·0.4, 0.5 − 2·(−0.2)] = [0.2, 0.9]
    scores = composite_score(t([[1.0, 0.5]]), t([[0.4, -0.2]]), 2.0)
    assert scores.shape == (1, 2) and scores.dtype == F64
    torch.testing.assert_close(scores, t([[0.2, 0.9]]), rtol=0, atol=1e-15)
    # A (1,) tensor multiplier gives the same.
    torch.testing.assert_close(composite_score(t([[1.0, 0.5]]), t([[0.4, -0.2]]), t([2.0])), scores)


def test_composite_score_several_constraints_worked_value():
    rewards = t([[1.0, 0.5]])  # (N=1, K=2)
    costs = t([[[0.4, 1.0], [-0.2, 0.0]]])  # (N=1, K=2, m=2)
    # λ = [2, 0.5]: s = [1 − 0.8 − 0.5, 0.5 + 0.4 − 0] = [−0.3, 0.9]
    scores = composite_score(rewards, costs, t([2.0, 0.5]))
    torch.testing.assert_close(scores, t([[-0.3, 0.9]]), rtol=0, atol=1e-15)
    # A float applies the same λ to each constraint: λ = 1 → [1 − 1.4, 0.5 + 0.2] = [−0.4, 0.7]
    torch.testing.assert_close(composite_score(rewards, costs, 1.0), t([[-0.4, 0.7]]))


def test_composite_score_at_zero_multiplier_is_the_reward():
    rewards = torch.randn(3, 5, dtype=F64)
    torch.testing.assert_close(
        composite_score(rewards, torch.randn(3, 5, 2, dtype=F64), 0.0), rewards
    )


def test_composite_score_keeps_float64_precision_of_a_python_float():
    # 0.1 must not be rounded through float32 (0.10000000149…).
    scores = composite_score(t([[0.0]]), t([[1.0]]), 0.1)
    assert scores.item() == -0.1


@pytest.mark.parametrize(
    "costs, multiplier, match",
    [
        (t([[0.4, -0.2]]), -1.0, ">= 0"),
        (t([[[0.4, 1.0], [-0.2, 0.0]]]), t([1.0, 2.0, 3.0]), r"shape \(2,\)"),
        (t([[0.4, -0.2, 0.1]]), 1.0, "costs must have shape"),
    ],
)
def test_composite_score_rejects_bad_inputs(costs, multiplier, match):
    with pytest.raises(ValueError, match=match):
        composite_score(t([[1.0, 0.5]]), costs, multiplier)


# --------------------------------------------------------------------------------------------
# pseudo_preference_prob
# --------------------------------------------------------------------------------------------
def test_pseudo_preference_prob_is_probability_response_0_wins():
    # σ(0.9 − 0.2) = σ(0.7) = 1/(1 + e^−0.7) = 0.668187772168166
    prob = pseudo_preference_prob(t([0.9]), t([0.2]))
    torch.testing.assert_close(prob, t([0.668187772168166]), rtol=0, atol=1e-15)
    # Equal scores: a coin flip; swapping the responses gives 1 − p; no β anywhere.
    torch.testing.assert_close(pseudo_preference_prob(t([1.3]), t([1.3])), t([0.5]))
    torch.testing.assert_close(pseudo_preference_prob(t([0.2]), t([0.9])), 1 - prob)


def test_pseudo_preference_prob_is_finite_for_huge_gaps():
    prob = pseudo_preference_prob(t([1e4, -1e4]), t([-1e4, 1e4]))
    assert torch.isfinite(prob).all()
    torch.testing.assert_close(prob, t([1.0, 0.0]))


def test_soft_label_dpo_is_stationary_where_beta_h_equals_the_score_gap():
    # With p = σ(s_0 − s_1) and y_0 as "chosen", DPO's soft loss −p log σ(βh) − (1−p) log σ(−βh)
    # has derivative β(σ(βh) − p) in h: zero exactly at βh = s_0 − s_1 (§4: no β inside σ).
    beta, score_0, score_1 = 0.1, t([0.9]), t([0.2])
    h = ((score_0 - score_1) / beta).requires_grad_(True)  # h = 7
    logps = PreferenceLogps(
        chosen_logps=h,
        rejected_logps=t([0.0]),
        ref_chosen_logps=t([0.0]),
        ref_rejected_logps=t([0.0]),
        chosen_lengths=t([1.0]),
        rejected_lengths=t([1.0]),
        preference_prob=pseudo_preference_prob(score_0, score_1),
    )
    (gradient,) = torch.autograd.grad(dpo_loss(logps, beta=beta).sum(), h)
    assert abs(gradient.item()) < 1e-15


# --------------------------------------------------------------------------------------------
# pecan_scores
# --------------------------------------------------------------------------------------------
def test_pecan_scores_worked_values():
    logratio = t([2.0, -1.0])
    # consistent: β·log-ratio = [0.2, −0.1]; published: the raw log-ratio.
    torch.testing.assert_close(pecan_scores(logratio, 0.1), t([0.2, -0.1]), rtol=0, atol=1e-16)
    published = pecan_scores(logratio, 0.1, consistent=False)
    torch.testing.assert_close(published, logratio)
    published[0] = 5.0
    assert logratio[0].item() == 2.0  # a copy, not the caller's tensor
    with pytest.raises(ValueError, match="beta"):
        pecan_scores(logratio, 0.0)


def test_consistent_pecan_labels_of_a_gibbs_policy_are_the_reward_labels():
    # A DPO policy at β trained on reward labels is π = π_ref exp(r/β)/Z: its log-ratio is
    # r/β − log Z. The consistent implicit score gives back r − β log Z, and the per-prompt
    # constant cancels in every label; the published one gives labels σ((r_0 − r_1)/β).
    beta = 0.25
    rewards = t([[0.3, -0.4, 1.1]])
    ref_logprobs = torch.log_softmax(t([[0.1, -0.5, 0.2]]), dim=1)
    policy_logprobs = torch.log_softmax(ref_logprobs + rewards / beta, dim=1)
    logratio = policy_logprobs - ref_logprobs
    consistent = pecan_scores(logratio, beta)
    published = pecan_scores(logratio, beta, consistent=False)
    expected = pseudo_preference_prob(rewards[:, :, None], rewards[:, None, :])  # (1, 3, 3)
    torch.testing.assert_close(
        pseudo_preference_prob(consistent[:, :, None], consistent[:, None, :]), expected
    )
    torch.testing.assert_close(
        pseudo_preference_prob(published[:, :, None], published[:, None, :]),
        pseudo_preference_prob(rewards[:, :, None] / beta, rewards[:, None, :] / beta),
    )


# --------------------------------------------------------------------------------------------
# mocan_dual
# --------------------------------------------------------------------------------------------
# One prompt, two samples: r = [0, 1], c = [0, 1], β = 1, uniform reference over the samples.
# π_λ ∝ [1, e^{1−λ}], so E c = e^{1−λ}/(1 + e^{1−λ}) = 0.25 ⇔ e^{1−λ} = 1/3 ⇔ λ* = 1 + ln 3.
TWO_REWARDS = t([[0.0, 1.0]])
TWO_COSTS = t([[0.0, 1.0]])
LAMBDA_STAR = 1.0 + math.log(3.0)  # 2.09861228866811


def test_mocan_dual_at_an_absolute_limit_worked_value():
    solution = mocan_dual(TWO_REWARDS, TWO_COSTS, beta=1.0, cost_limit=0.25)
    assert solution.multiplier.shape == (1,)
    assert abs(solution.multiplier.item() - LAMBDA_STAR) < 1e-10
    assert abs(solution.expected_cost.item() - 0.25) < 1e-12
    # Expected reward at λ*: also 0.25 (r = c here).
    assert abs(solution.expected_reward.item() - 0.25) < 1e-12


def test_mocan_dual_at_a_margin_uses_the_samples_plain_mean():
    # E_ref c = mean([0, 1]) = 0.5; margin 0.25 → d = 0.5 − 0.25 = 0.25: the same λ*.
    solution = mocan_dual(TWO_REWARDS, TWO_COSTS, beta=1.0, margin=0.25)
    torch.testing.assert_close(solution.cost_limit, t([0.25]))
    assert abs(solution.multiplier.item() - LAMBDA_STAR) < 1e-10
    # A negative margin looser than the unconstrained tilt gives λ* = 0.
    assert mocan_dual(TWO_REWARDS, TWO_COSTS, beta=1.0, margin=-0.5).multiplier.item() == 0.0


def test_mocan_dual_margin_with_several_constraints_matches_solve_from_samples():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(6, 8, generator=generator, dtype=F64)
    costs = torch.randn(6, 8, 2, generator=generator, dtype=F64)
    margin = t([0.3, 0.1])
    solution = mocan_dual(rewards, costs, beta=0.5, margin=margin)
    limit = costs.mean(dim=(0, 1)) - margin  # d_j = E_ref c_j − b_j, shape (2,)
    torch.testing.assert_close(solution.cost_limit, limit)
    direct = solve_from_samples(rewards, costs, 0.5, limit)
    torch.testing.assert_close(solution.multiplier, direct.multiplier)
    assert (solution.expected_cost <= limit + 1e-9).all()


@pytest.mark.parametrize(
    "kwargs, found",
    [({}, "neither was given"), ({"cost_limit": 0.2, "margin": 0.1}, "both were given")],
)
def test_mocan_dual_needs_exactly_one_of_limit_and_margin(kwargs, found):
    with pytest.raises(ValueError, match=f"exactly one of cost_limit .* and margin .*{found}"):
        mocan_dual(TWO_REWARDS, TWO_COSTS, beta=1.0, **kwargs)


def test_mocan_dual_infeasible_request_says_what_is_achievable():
    # The smallest cost the samples reach is 0: a margin of 0.5 asks for d = 0, not strictly above.
    with pytest.raises(InfeasibleConstraintError) as caught:
        mocan_dual(TWO_REWARDS, TWO_COSTS, beta=1.0, margin=0.5)
    torch.testing.assert_close(caught.value.min_achievable_cost, t([0.0]))


# --------------------------------------------------------------------------------------------
# sample_target_weights: MoCAN's sample-target anchor
# --------------------------------------------------------------------------------------------


def test_sample_target_weights_worked_value():
    # One prompt, β = 1: rows y_a, y_a, y_b with π_ref 0.5, 0.5, 0.25 and s = 0, 0, log 2:
    # q(y_a) = 0.5 / (0.5 + 0.25·2) = ½ = q(y_b); y_a is on two rows, so w = ¼, ¼, ½.
    weights = sample_target_weights(torch.tensor([0, 0, 0]), torch.tensor([7, 7, 3]),
                                    t([math.log(0.5), math.log(0.5), math.log(0.25)]), t([0.0, 0.0, math.log(2)]), 1.0)
    assert torch.allclose(weights, t([0.25, 0.25, 0.5]), atol=1e-15, rtol=0)


def test_sample_target_weights_give_each_prompt_the_tilt_on_its_distinct_responses():
    generator = torch.Generator().manual_seed(0)
    prompt_index = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2])
    response_index = torch.tensor([0, 1, 0, 2, 0, 0, 5, 1, 1])  # distinct per prompt, reused across prompts
    table = torch.randn(3, 6, generator=generator, dtype=F64)  # log π_ref(y|x) of each (x, y)
    scores_table = torch.randn(3, 6, generator=generator, dtype=F64)
    ref, scores = table[prompt_index, response_index], scores_table[prompt_index, response_index]
    beta = 0.7
    weights = sample_target_weights(prompt_index, response_index, ref, scores, beta)
    assert bool((weights >= 0).all()) and float(weights.sum()) == pytest.approx(1.0, abs=1e-15)
    for x in range(3):
        rows = prompt_index == x
        distinct = sorted(set(response_index[rows].tolist()))
        logits = torch.stack([table[x, y] + scores_table[x, y] / beta for y in distinct])
        q = torch.softmax(logits, 0)  # π_λ(·|x, S_x) with λ folded into s
        for y, q_y in zip(distinct, q, strict=True):
            holding = rows & (response_index == y)
            assert float(weights[holding].sum()) == pytest.approx(float(q_y) / 3, abs=1e-15)
            assert torch.allclose(weights[holding], weights[holding][0].expand(int(holding.sum())))


def test_anchor_pins_the_mass_dpo_leaves_free_and_keeps_the_target():
    # A tabular policy over 6 responses of one prompt; the sample S holds the first 4. DPO on every
    # pair of S with soft labels σ(s_i − s_j) only fixes differences of log-ratios on S, so the mass
    # outside S is left free; with the anchor the optimum is π_λ(·|S), with nothing outside.
    beta = 0.5
    ref_logps = torch.log_softmax(t([0.3, -0.2, 0.1, -1.0, 0.4, 0.0]), 0)
    scores = t([1.0, -0.5, 0.25, 2.0, 3.0, -1.0])  # the unsampled y_4 scores highest
    sample = torch.arange(4)
    pairs = torch.combinations(sample, 2)
    labels = pseudo_preference_prob(scores[pairs[:, 0]], scores[pairs[:, 1]])
    weights = sample_target_weights(torch.zeros(4, dtype=torch.long), sample, ref_logps[sample], scores[sample], beta)
    target = torch.softmax(ref_logps[sample] + scores[sample] / beta, 0)
    assert torch.allclose(weights, target, atol=1e-15)  # one row per response: w = q

    def fit(anchor: float) -> torch.Tensor:
        logits = ref_logps.clone().requires_grad_(True)  # start at π_ref
        optimizer = torch.optim.LBFGS([logits], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            logps = torch.log_softmax(logits, 0)
            u = logps - ref_logps
            pair = PreferenceLogps(chosen_logps=logps[pairs[:, 0]], rejected_logps=logps[pairs[:, 1]],
                                   ref_chosen_logps=ref_logps[pairs[:, 0]], ref_rejected_logps=ref_logps[pairs[:, 1]],
                                   chosen_lengths=torch.ones(len(pairs), dtype=F64),
                                   rejected_lengths=torch.ones(len(pairs), dtype=F64), preference_prob=labels)
            loss = dpo_loss(pair, beta=beta).mean() - anchor * (weights * logps[sample]).sum()
            assert torch.isfinite(u).all()
            loss.backward()
            return loss

        for _ in range(5):
            optimizer.step(closure)
        return logits.detach()

    dpo_alone_logits, anchored_logits = fit(0.0), fit(1.0)
    dpo_alone, anchored = torch.softmax(dpo_alone_logits, 0), torch.softmax(anchored_logits, 0)
    # DPO alone never moves the unsampled responses' logits (zero gradient), so their mass is
    # whatever the level of S's logits leaves them (here a fifth of the policy or more).
    assert torch.equal(dpo_alone_logits[4:], ref_logps[4:]) and float(dpo_alone[4:].sum()) > 0.2
    # On S, DPO alone gets the tilt's shape right; only the level against the outside is free.
    assert torch.allclose(dpo_alone[:4] / dpo_alone[:4].sum(), target, atol=1e-6)
    assert float(anchored[4:].sum()) < 1e-3  # the anchor removes the mass outside S ...
    assert torch.allclose(anchored[:4] / anchored[:4].sum(), target, atol=1e-6)  # ... and keeps the target on S
