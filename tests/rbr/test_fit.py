"""fit_rbr_weights on synthetic problems whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from saferl.rbr import fit_rbr_weights

F64 = torch.float64
N_CLASSES = 5


def separable_problem(n_prompts: int = 40, seed: int = 0):
    """Features for which the known weight vector ``w_true`` ranks every prompt's five completions
    by class with gaps of exactly 1 (``x · w_true = 4 − class``, plus noise orthogonal to
    ``w_true``), and a reward model that ranks them backwards (``R_rm = −0.5 · x · w_true``)."""
    generator = torch.Generator().manual_seed(seed)
    w_true = torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=F64)
    direction = w_true / w_true.norm()
    features, prompt_ids, class_ranks = [], [], []
    for prompt in range(n_prompts):
        for rank in torch.randperm(N_CLASSES, generator=generator).tolist():
            noise = torch.randn(4, generator=generator, dtype=F64)
            noise -= (noise @ direction) * direction
            features.append((N_CLASSES - 1 - rank) * w_true / (w_true @ w_true) + noise)
            prompt_ids.append(prompt)
            class_ranks.append(rank)
    features = torch.stack(features)
    reward_scores = -0.5 * (features @ w_true)
    return features, reward_scores, torch.tensor(prompt_ids), torch.tensor(class_ranks)


def test_a_separable_problem_reaches_zero_held_out_error_with_the_default_settings():
    features, reward_scores, prompt_ids, class_ranks = separable_problem()
    result = fit_rbr_weights(features, reward_scores, prompt_ids, class_ranks, seed=0)
    # The reward model alone puts every non-ideal completion above the ideal one.
    assert result.heldout_error_rate_reward_model == 1.0
    assert result.heldout_error_rate == 0.0
    assert result.n_heldout_ideal_pairs == 2 * (N_CLASSES - 1)  # 2 held-out prompts of 40
    assert len(result.loss) == len(result.zero_loss_fraction) == 1000
    assert result.zero_loss_fraction[0] == 0.0  # from weights 0 every pair is inside the margin
    assert result.final_zero_loss_fraction == 1.0 and result.final_loss == 0.0
    # Every pair of every prompt, held out or not, is ranked with at least the margin.
    total = reward_scores + features @ result.weights
    for prompt in range(40):
        order = total[prompt_ids == prompt][class_ranks[prompt_ids == prompt].argsort()]
        assert (order[:-1] - order[1:] >= 1 - 1e-9).all(), prompt


def hand_hinge_at_zero(reward_scores, prompt_ids, class_ranks, prompts, factors, margin=1.0):
    """The mean hinge loss with weights 0 over the given prompts' ranked pairs, by loops."""
    losses = []
    n = len(prompt_ids)
    for a in range(n):
        for b in range(n):
            same = prompt_ids[a] == prompt_ids[b] and int(prompt_ids[a]) in prompts
            if same and class_ranks[a] < class_ranks[b]:
                m = margin * factors[int(class_ranks[a])]
                losses.append(max(0.0, m + float(reward_scores[b]) - float(reward_scores[a])))
    return sum(losses) / len(losses), len(losses)


def test_the_first_loss_is_the_hinge_of_the_reward_model_alone_with_per_class_margins():
    features, _, prompt_ids, class_ranks = separable_problem(n_prompts=12, seed=1)
    reward_scores = torch.randn(
        len(prompt_ids), dtype=F64, generator=torch.Generator().manual_seed(5)
    )
    factors = [3.0, 1.0, 0.5, 1.0, 2.0]
    result = fit_rbr_weights(
        features,
        reward_scores,
        prompt_ids,
        class_ranks,
        margin=0.5,
        class_margin_factors=factors,
        steps=2,
        seed=3,
    )
    expected, n_pairs = hand_hinge_at_zero(
        reward_scores, prompt_ids, class_ranks, set(result.train_prompts), factors, margin=0.5
    )
    assert result.n_train_pairs == n_pairs == len(result.train_prompts) * 10  # C(5, 2) a prompt
    assert math.isclose(result.loss[0], expected, rel_tol=1e-12)
    expected_heldout, _ = hand_hinge_at_zero(
        reward_scores, prompt_ids, class_ranks, set(result.heldout_prompts), factors, margin=0.5
    )
    assert math.isclose(result.heldout_loss[0], expected_heldout, rel_tol=1e-12)


def test_the_split_is_by_prompt_95_5_and_deterministic_given_the_seed():
    problem = separable_problem()
    first = fit_rbr_weights(*problem, steps=50, seed=0)
    again = fit_rbr_weights(*problem, steps=50, seed=0)
    other = fit_rbr_weights(*problem, steps=50, seed=1)
    assert len(first.heldout_prompts) == 2  # 5 % of 40
    assert set(first.heldout_prompts).isdisjoint(first.train_prompts)
    assert set(first.heldout_prompts) | set(first.train_prompts) == set(range(40))
    assert first.n_train_pairs == 38 * 10 and first.n_heldout_pairs == 2 * 10
    assert torch.equal(first.weights, again.weights) and first.loss == again.loss
    assert first.heldout_prompts != other.heldout_prompts


def test_features_that_cannot_tell_completions_apart_leave_every_held_out_pair_an_error():
    _, _, prompt_ids, class_ranks = separable_problem(n_prompts=20)
    features = torch.ones(len(prompt_ids), 3, dtype=F64)  # the same features for every completion
    reward_scores = torch.zeros(len(prompt_ids), dtype=F64)
    result = fit_rbr_weights(features, reward_scores, prompt_ids, class_ranks, steps=20)
    assert result.heldout_error_rate == 1.0  # ties count as errors
    assert result.final_zero_loss_fraction == 0.0
    assert math.isclose(result.final_loss, 1.0, rel_tol=1e-12)  # every pair at the full margin


def test_weight_names_are_kept():
    problem = separable_problem(n_prompts=4)
    result = fit_rbr_weights(*problem, feature_names=["a", "b", "c", "d"], steps=3)
    assert list(result.weight_dict()) == ["a", "b", "c", "d"]
    assert list(result.weight_dict().values()) == result.weights.tolist()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda p: (p[0][:, :2].T, *p[1:]), "expected features"),
        (lambda p: (p[0], p[1][:-1], *p[2:]), "expected features"),
        (lambda p: (p[0], p[1], torch.zeros_like(p[2]), p[3]), "at least two prompts"),
        (lambda p: (*p[:3], p[3] - 1), "class_ranks must be positions.*found -1"),
    ],
)
def test_bad_input_is_rejected(change, match):
    with pytest.raises(ValueError, match=match):
        fit_rbr_weights(*change(separable_problem(n_prompts=4)), steps=1)


def test_bad_settings_are_rejected():
    problem = separable_problem(n_prompts=4)
    with pytest.raises(ValueError, match="heldout_fraction"):
        fit_rbr_weights(*problem, heldout_fraction=1.0)
    with pytest.raises(ValueError, match="2 class margin factors"):
        fit_rbr_weights(*problem, class_margin_factors=[1.0, 2.0])
    with pytest.raises(ValueError, match="3 feature names for 4"):
        fit_rbr_weights(*problem, feature_names=["a", "b", "c"])
