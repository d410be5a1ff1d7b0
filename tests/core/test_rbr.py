"""Tests of saferl.core.rbr (docs/algorithms.md §6) with values worked by hand in float64."""

from __future__ import annotations

import math

import pytest
import torch

from saferl.core.rbr import (
    class_features,
    ideal_outranked,
    linear_rbr_reward,
    ranked_pairs,
    rbr_hinge_loss,
    rule_probabilities,
    with_derived_probabilities,
    yes_probability,
)

F64 = torch.float64


def t(values, dtype=F64) -> torch.Tensor:
    return torch.as_tensor(values, dtype=dtype)


def b(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.bool)


# φ = (0.9, 0.2, 0.5) for propositions (a, b, c).
PHI = t([0.9, 0.2, 0.5])


def test_rule_probabilities_are_products_of_p_or_one_minus_p():
    mask = b([[1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 1, 1]])
    true = b([[1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 1, 1]])
    got = rule_probabilities(PHI, mask, true)
    # a ∧ ¬b = 0.9·0.8 = 0.72; ¬c = 0.5; no requirement = 1; ¬a ∧ b ∧ c = 0.1·0.2·0.5 = 0.01
    torch.testing.assert_close(got, t([0.72, 0.5, 1.0, 0.01]), rtol=0, atol=1e-15)


def test_rule_probabilities_ignore_required_values_outside_the_mask():
    mask = b([[1, 0, 0]])
    assert rule_probabilities(PHI, mask, b([[1, 0, 0]])) == rule_probabilities(
        PHI, mask, b([[1, 1, 1]])
    )


def test_rule_probabilities_broadcast_over_leading_dimensions():
    phi = torch.rand(2, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    mask, true = b([[1, 1, 0]]), b([[1, 0, 0]])
    got = rule_probabilities(phi, mask, true)
    assert got.shape == (2, 4, 1)
    torch.testing.assert_close(got[..., 0], phi[..., 0] * (1 - phi[..., 1]), rtol=0, atol=1e-15)


def test_rule_probabilities_reject_shapes_and_dtypes_that_do_not_fit():
    with pytest.raises(ValueError, match="3"):
        rule_probabilities(PHI, b([[1, 0]]), b([[1, 0]]))
    with pytest.raises(ValueError, match="bool"):
        rule_probabilities(PHI, t([[1, 0, 0]]), b([[1, 0, 0]]))


def test_derived_propositions_recurse_through_earlier_ones():
    # d0 = a ∧ ¬b = 0.72; d1 = d0 ∧ c = 0.36; d2 = ¬d0 ∧ c = 0.28·0.5 = 0.14
    mask = b([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0]])
    true = b([[1, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0]])
    got = with_derived_probabilities(PHI, mask, true)
    torch.testing.assert_close(got, t([0.9, 0.2, 0.5, 0.72, 0.36, 0.14]), rtol=0, atol=1e-15)


def test_a_derived_proposition_may_not_name_itself_or_a_later_one():
    mask = b([[1, 0, 0, 1]])  # derived 0 names column 3: itself
    with pytest.raises(ValueError, match="later derived"):
        with_derived_probabilities(PHI, mask, mask)


def test_class_features_are_the_products_normalised_over_the_classes():
    products = t([[0.72, 0.5, 0.01], [0.0, 0.25, 0.25]])
    got = class_features(products)
    torch.testing.assert_close(got.sum(-1), t([1.0, 1.0]), rtol=0, atol=1e-15)
    torch.testing.assert_close(
        got, t([[0.72 / 1.23, 0.5 / 1.23, 0.01 / 1.23], [0.0, 0.5, 0.5]]), rtol=0, atol=1e-15
    )


def test_class_features_of_all_zero_products_are_zero_not_nan():
    assert class_features(t([[0.0, 0.0, 0.0]])).tolist() == [[0.0, 0.0, 0.0]]


def test_linear_rbr_reward_is_the_dot_product():
    features = t([[1.0, 0.5], [0.0, 2.0]])
    torch.testing.assert_close(linear_rbr_reward(features, t([2.0, -1.0])), t([1.5, -2.0]))
    with pytest.raises(ValueError, match="weights"):
        linear_rbr_reward(features, t([1.0, 2.0, 3.0]))


def test_ranked_pairs_pair_different_classes_of_the_same_prompt_only():
    prompts = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    ranks = torch.tensor([2, 0, 4, 1, 1, 3, 0])
    better, worse = ranked_pairs(prompts, ranks)
    # prompt 0: 1 (rank 0) > 0 (rank 2) > 2 (rank 4); prompt 1: same class, no pair;
    # prompt 2: 6 (rank 0) > 5 (rank 3)
    pairs = set(zip(better.tolist(), worse.tolist(), strict=True))
    assert pairs == {(1, 0), (1, 2), (0, 2), (6, 5)}


def test_ranked_pairs_with_interleaved_prompts_come_in_increasing_order():
    prompts = torch.tensor([7, 3, 7, 3, 7])
    ranks = torch.tensor([1, 0, 0, 4, 1])
    better, worse = ranked_pairs(prompts, ranks)
    # prompt 7: 2 (rank 0) > 0, 4 (rank 1); prompt 3: 1 (rank 0) > 3 (rank 4)
    assert list(zip(better.tolist(), worse.tolist(), strict=True)) == [(1, 3), (2, 0), (2, 4)]
    empty = torch.zeros(0, dtype=torch.int64)
    assert [t.numel() for t in ranked_pairs(empty, empty)] == [0, 0]


def test_hinge_loss_worked_value_and_zero_beyond_the_margin():
    # The ALGORITHMS.md §6 test vector: better 1.0, worse 0.5, margin 1 → 0.5.
    rewards = t([1.0, 0.5, -0.5])
    better, worse = torch.tensor([0, 0]), torch.tensor([1, 2])
    got = rbr_hinge_loss(rewards, better, worse, t([1.0, 1.0]))
    torch.testing.assert_close(got, t([0.5, 0.0]), rtol=0, atol=1e-15)
    # A margin of 2 (a class factor of 2) on the second pair: 2 − 1.5 = 0.5.
    got = rbr_hinge_loss(rewards, better, worse, t([1.0, 2.0]))
    torch.testing.assert_close(got, t([0.5, 0.5]), rtol=0, atol=1e-15)


def test_hinge_loss_gradient_moves_the_better_reward_up():
    rewards = t([1.0, 0.5]).requires_grad_()
    rbr_hinge_loss(rewards, torch.tensor([0]), torch.tensor([1]), t([1.0])).sum().backward()
    assert rewards.grad.tolist() == [-1.0, 1.0]


def test_ideal_outranked_counts_ties_as_errors():
    rewards = t([1.0, 0.0, 1.0, 2.0])
    ideal, other = torch.tensor([0, 0, 0]), torch.tensor([1, 2, 3])
    assert ideal_outranked(rewards, ideal, other).tolist() == [False, True, True]


def test_yes_probability_worked_values():
    logits = t([[2.0, 0.0, 5.0, -1.0], [0.0, 0.0, 9.0, 0.0]])
    # row 0: yes = id 0 (logit 2), no = id 1 (logit 0) → σ(2); id 2 is neither and is ignored
    got = yes_probability(logits[:1], torch.tensor([0]), torch.tensor([1]))
    torch.testing.assert_close(got, t([1 / (1 + math.exp(-2.0))]), rtol=0, atol=1e-15)
    # row 1: yes = ids 0 and 3 (both 0), no = id 1 (0) → 2/3
    got = yes_probability(logits[1:], torch.tensor([0, 3]), torch.tensor([1]))
    torch.testing.assert_close(got, t([2 / 3]), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="at least one token"):
        yes_probability(logits, torch.tensor([0]), torch.tensor([], dtype=torch.int64))
