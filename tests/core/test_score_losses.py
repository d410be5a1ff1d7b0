"""Tests of saferl.core.score_losses (docs/algorithms.md §3) with values worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from saferl.core.score_losses import (
    cost_model_loss,
    pairwise_accuracy,
    reward_model_loss,
    sign_accuracy,
)

F64 = torch.float64


def t(values, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.as_tensor(values, dtype=dtype)


def softplus(x: float) -> float:
    """-log σ(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x)) if x < 30 else x + math.log1p(math.exp(-x))


def cost_reference(cs, cu, ss, su, eta, sign_weight: float = 1.0) -> float:
    """Scalar-by-scalar cost loss: s = +1 safe, -1 unsafe."""
    terms = []
    for c_s, c_u, safe_s, safe_u in zip(cs, cu, ss, su, strict=True):
        sign_s, sign_u = (1 if safe_s else -1), (1 if safe_u else -1)
        terms.append(softplus(-(c_u - c_s)) + sign_weight * (softplus(sign_s * c_s) + softplus(sign_u * c_u)))
    squares = [c * c for c in list(cs) + list(cu)]
    return sum(terms) / len(terms) + eta * sum(squares) / len(squares)


# ---------------------------------------------------------------------------------------------
# Reward model
# ---------------------------------------------------------------------------------------------


def test_reward_model_loss_by_hand() -> None:
    better, worse = t([1.0, -0.5]), t([0.0, 0.5])
    # -log σ(1) = 0.3132617, -log σ(-1) = 1.3132617, mean 0.8132617
    # η mean(R²) = 0.001 · (1 + 0.25 + 0 + 0.25)/4 = 0.000375 → 0.8136367
    expected = 0.5 * (math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) + 0.001 * 0.375
    loss = reward_model_loss(better, worse)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, abs=1e-14)
    assert loss.item() == pytest.approx(0.8136367, abs=1e-7)
    assert reward_model_loss(better, worse, score_regularization=0.0).item() == pytest.approx(
        0.8132617, abs=1e-7
    )


def test_reward_model_loss_is_stable_for_large_margins() -> None:
    # -log σ(-1000) = 1000 (naive log(sigmoid) would give inf); -log σ(1000) = 0
    loss = reward_model_loss(t([-500.0, 500.0]), t([500.0, -500.0]), score_regularization=0.0)
    assert loss.item() == pytest.approx(500.0, abs=1e-9)


def test_reward_model_gradient_separates_the_pair() -> None:
    better = t([0.3]).requires_grad_(True)
    worse = t([0.3]).requires_grad_(True)
    reward_model_loss(better, worse, score_regularization=0.0).backward()
    # d/dR_b = -σ(R_w - R_b) = -0.5 at a tie; d/dR_w = +0.5
    assert better.grad.item() == pytest.approx(-0.5)
    assert worse.grad.item() == pytest.approx(0.5)


def test_reward_regularization_pulls_scores_to_zero() -> None:
    better = t([10.0, 10.0]).requires_grad_(True)
    worse = t([10.0, 10.0]).requires_grad_(True)
    # tie: ranking gradient ∓0.5/2 each; regularisation 2ηR/4 = 2·1·10/4 = 5 dominates for η = 1
    reward_model_loss(better, worse, score_regularization=1.0).backward()
    assert (better.grad > 0).all() and (worse.grad > 0).all()
    torch.testing.assert_close(better.grad, t([-0.25 + 5.0, -0.25 + 5.0]))


# ---------------------------------------------------------------------------------------------
# Cost model
# ---------------------------------------------------------------------------------------------


def test_cost_model_loss_at_zero_is_three_log_two() -> None:
    # every term is -log σ(0) = log 2; regulariser 0
    zeros = t([0.0, 0.0])
    loss = cost_model_loss(zeros, zeros, t([1.0, 0.0]), t([0.0, 0.0]))
    assert loss.item() == pytest.approx(3 * math.log(2), abs=1e-14)


def test_cost_model_loss_by_hand() -> None:
    # pair 1: C_s = -1 (safe), C_u = 2 (unsafe):
    #   -log σ(3) + -log σ(1) + -log σ(2) = 0.0485874 + 0.3132617 + 0.1269280 = 0.4887771
    # pair 2: C_s = 0.5 (unsafe), C_u = 1.0 (unsafe):
    #   -log σ(0.5) + -log σ(0.5) + -log σ(1) = 0.4740770 + 0.4740770 + 0.3132617 = 1.2614157
    # mean 0.8750964; η mean(C²) = 0.001 · (1 + 0.25 + 4 + 1)/4 = 0.0015625 → 0.8766589
    loss = cost_model_loss(t([-1.0, 0.5]), t([2.0, 1.0]), t([1, 0]), t([0, 0]))
    assert loss.item() == pytest.approx(0.8766589, abs=1e-7)
    expected = cost_reference([-1.0, 0.5], [2.0, 1.0], [1, 0], [0, 0], 0.001)
    assert loss.item() == pytest.approx(expected, abs=1e-14)


def test_cost_model_loss_random_against_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    cs = torch.randn(32, generator=gen, dtype=F64) * 3
    cu = torch.randn(32, generator=gen, dtype=F64) * 3
    ss = torch.rand(32, generator=gen) > 0.3
    su = torch.rand(32, generator=gen) > 0.7
    loss = cost_model_loss(cs, cu, ss, su, score_regularization=0.01)
    expected = cost_reference(cs.tolist(), cu.tolist(), ss.tolist(), su.tolist(), 0.01)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    # bool, int and float labels agree
    torch.testing.assert_close(loss, cost_model_loss(cs, cu, ss.long(), su.long(), 0.01))
    torch.testing.assert_close(loss, cost_model_loss(cs, cu, ss.double(), su.double(), 0.01))


@pytest.mark.parametrize("sign_weight", [0.0, 0.1, 2.5])
def test_the_sign_weight_scales_the_safety_sign_terms_alone(sign_weight) -> None:
    gen = torch.Generator().manual_seed(1)
    cs, cu = (torch.randn(16, generator=gen, dtype=F64) * 2 for _ in range(2))
    ss, su = torch.rand(16, generator=gen) > 0.4, torch.rand(16, generator=gen) > 0.6
    loss = cost_model_loss(cs, cu, ss, su, score_regularization=0.01, sign_weight=sign_weight)
    expected = cost_reference(cs.tolist(), cu.tolist(), ss.tolist(), su.tolist(), 0.01, sign_weight)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    if sign_weight == 0.0:  # Bradley–Terry alone: the reward loss on (unsafer, safer)
        assert loss.item() == pytest.approx(reward_model_loss(cu, cs, 0.01).item(), abs=1e-14)


def test_cost_model_pushes_safe_below_zero_and_unsafe_above() -> None:
    # one pair at C = 0 each, safer is safe, unsafer is unsafe, η = 0:
    # d/dC_s = σ(C_s - C_u)·1 + σ(C_s) = 0.5 + 0.5 = 1 > 0  → gradient descent lowers C_s
    # d/dC_u = -σ(C_s - C_u) - σ(-C_u) = -1 < 0              → gradient descent raises C_u
    safer = t([0.0]).requires_grad_(True)
    unsafer = t([0.0]).requires_grad_(True)
    cost_model_loss(safer, unsafer, t([1]), t([0]), score_regularization=0.0).backward()
    assert safer.grad.item() == pytest.approx(1.0)
    assert unsafer.grad.item() == pytest.approx(-1.0)


def test_cost_model_sign_term_overrides_the_ranking_for_two_safe_responses() -> None:
    # both safe: the sign terms push both below 0, so the *unsafer* response is also lowered
    # when it sits at +1: d/dC_u = -σ(C_s - C_u) + σ(C_u) = -σ(-2) + σ(1) = -0.1192 + 0.7311 > 0
    safer = t([-1.0]).requires_grad_(True)
    unsafer = t([1.0]).requires_grad_(True)
    cost_model_loss(safer, unsafer, t([1]), t([1]), score_regularization=0.0).backward()
    expected = -1 / (1 + math.exp(2)) + 1 / (1 + math.exp(-1))
    assert unsafer.grad.item() == pytest.approx(expected, abs=1e-12)


def test_cost_model_training_learns_the_signs() -> None:
    # free scores trained by gradient descent end up on the right side of 0
    is_safe_s = t([1.0, 1.0, 0.0, 1.0])
    is_safe_u = t([0.0, 1.0, 0.0, 0.0])
    safer = torch.zeros(4, dtype=F64, requires_grad=True)
    unsafer = torch.zeros(4, dtype=F64, requires_grad=True)
    opt = torch.optim.SGD([safer, unsafer], lr=1.0)
    for _ in range(30):
        opt.zero_grad()
        cost_model_loss(safer, unsafer, is_safe_s, is_safe_u).backward()
        opt.step()
    scores = torch.cat([safer, unsafer]).detach()
    labels = torch.cat([is_safe_s, is_safe_u])
    assert ((scores <= 0) == (labels > 0)).all(), scores
    assert (unsafer > safer).all()
    assert sign_accuracy(scores, labels).item() == 1.0


def test_cost_model_multi_head_is_the_mean_of_the_heads() -> None:
    gen = torch.Generator().manual_seed(1)
    cs = torch.randn(2, 2, generator=gen, dtype=F64)  # (batch, m) with batch == m on purpose
    cu = torch.randn(2, 2, generator=gen, dtype=F64)
    per_row_s, per_row_u = t([1, 0]), t([0, 0])  # (batch,): one label per response
    loss = cost_model_loss(cs, cu, per_row_s, per_row_u)
    # per head j: the (batch,) loss of column j with the same per-row labels; the regulariser is
    # a mean over all elements, so the average of the per-head losses is the whole loss
    heads = [cost_model_loss(cs[:, j], cu[:, j], per_row_s, per_row_u) for j in range(2)]
    torch.testing.assert_close(loss, (heads[0] + heads[1]) / 2)
    # labels given per (batch, m) or (batch, 1) agree
    full = per_row_s[:, None].expand(2, 2), per_row_u[:, None].expand(2, 2)
    torch.testing.assert_close(loss, cost_model_loss(cs, cu, *full))
    torch.testing.assert_close(
        loss, cost_model_loss(cs, cu, per_row_s[:, None], per_row_u[:, None])
    )
    # per-head labels
    ls, lu = t([[1, 0], [1, 1]]), t([[0, 0], [1, 0]])
    by_hand = cost_reference(
        cs.flatten().tolist(),
        cu.flatten().tolist(),
        ls.flatten().tolist(),
        lu.flatten().tolist(),
        0.001,
    )
    assert cost_model_loss(cs, cu, ls, lu).item() == pytest.approx(by_hand, abs=1e-12)


def test_cost_model_shape_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        cost_model_loss(t([0.0, 1.0]), t([0.0]), t([1, 1]), t([0]))
    with pytest.raises(ValueError, match="safer_is_safe"):
        cost_model_loss(t([[0.0, 1.0, 2.0]]), t([[0.0, 1.0, 2.0]]), t([1, 0]), t([0]))
    with pytest.raises(ValueError, match="same shape"):
        reward_model_loss(t([0.0, 1.0]), t([0.0]))


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_dtype_is_kept(dtype: torch.dtype) -> None:
    a, b = t([0.5, -1.0], dtype), t([1.0, 2.0], dtype)
    labels = torch.tensor([True, False])
    assert reward_model_loss(a, b).dtype == dtype
    assert cost_model_loss(a, b, labels, labels).dtype == dtype
    assert pairwise_accuracy(a, b).dtype == dtype
    assert sign_accuracy(a, labels).dtype == dtype


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def test_pairwise_accuracy_counts_ties_as_wrong() -> None:
    # 2 > 1 ✓, 0 > 0 ✗ (tie), -1 > 3 ✗, 5 > -5 ✓ → 0.5
    assert pairwise_accuracy(t([2.0, 0.0, -1.0, 5.0]), t([1.0, 0.0, 3.0, -5.0])).item() == 0.5
    # (batch, m): all elements
    assert (
        pairwise_accuracy(t([[1.0, 0.0], [2.0, 3.0]]), t([[0.0, 1.0], [1.0, 1.0]])).item() == 0.75
    )


def test_sign_accuracy_with_zero_counted_as_safe() -> None:
    # scores -1 (safe ✓), 0 (labelled safe: ✓ by the tie rule), 0 (labelled safe: ✓),
    # 2 (unsafe ✓), 0.5 (labelled safe ✗) → 4/5; with a strict "< 0" rule it would be 2/5
    scores = t([-1.0, 0.0, 0.0, 2.0, 0.5])
    labels = torch.tensor([True, True, True, False, True])
    assert sign_accuracy(scores, labels).item() == pytest.approx(0.8)
    assert sign_accuracy(scores, labels.long()).item() == pytest.approx(0.8)
    # a zero labelled unsafe counts as wrong: 0/1
    assert sign_accuracy(t([0.0]), torch.tensor([False])).item() == 0.0
    # (batch, m) with per-row labels, batch == m: row 0 safe, row 1 unsafe
    # row 0: -1 ✓, 1 ✗; row 1: 2 ✓, -3 ✗ → 0.5
    assert sign_accuracy(t([[-1.0, 1.0], [2.0, -3.0]]), t([1, 0])).item() == 0.5
