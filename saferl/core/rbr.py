"""Rule-based rewards (Mu et al. 2024; docs/algorithms.md §6): the tensor math, one pure function each.

A *proposition* ``φ_k(x, y) ∈ [0, 1]`` is a grader's probability that a yes/no statement about a
completion holds. A *rule* (a derived proposition, or one completion class of one response type)
is a conjunction of required truth values ``v_k ∈ {True, False}`` over some propositions; its
probability is the product of ``φ_k`` (where ``v_k`` is True) or ``1 − φ_k`` (where it is False)
over the propositions it names, treating them as independent, as the paper does. A derived
proposition is then one more column of probabilities that later rules may name.

Rules are given as two boolean matrices over the proposition columns:

* ``required_mask (n_rules, n_props)``: True where the rule names the proposition (True = the
  column takes part; a rule that names none has probability 1);
* ``required_true (n_rules, n_props)``: the required value where the mask is True (ignored
  elsewhere).

The class features are the five class probabilities of a response type, normalised to sum to 1
(the classes of the release's spec partition the 0/1 assignments, but the product of marginals
over-counts overlapping rules on fractional inputs). The linear RBR is ``R_rbr = features · w``;
the fit's loss is the hinge over ranked pairs of completions of the same prompt with the frozen
reward model as an offset: ``max(0, m_ab + R_tot(y_b) − R_tot(y_a))``, ``R_tot = R_rm + R_rbr``.

Shapes are in each docstring; leading ``...`` dimensions broadcast. Nothing here knows a spec
file, a response type's name or a grader: that is :mod:`saferl.rbr`.
"""

from __future__ import annotations

import torch

__all__ = [
    "rule_probabilities",
    "with_derived_probabilities",
    "class_features",
    "linear_rbr_reward",
    "ranked_pairs",
    "rbr_hinge_loss",
    "ideal_outranked",
    "yes_probability",
]


def _check_rules(required_mask: torch.Tensor, required_true: torch.Tensor, n_props: int) -> None:
    if required_mask.dtype != torch.bool or required_true.dtype != torch.bool:
        raise ValueError(
            "required_mask and required_true must be bool tensors, got "
            f"{required_mask.dtype} and {required_true.dtype}."
        )
    if required_mask.dim() != 2 or required_mask.shape != required_true.shape:
        raise ValueError(
            "required_mask and required_true must both have shape (n_rules, n_props), got "
            f"{tuple(required_mask.shape)} and {tuple(required_true.shape)}."
        )
    if required_mask.shape[1] != n_props:
        raise ValueError(
            f"the rules name {required_mask.shape[1]} proposition columns but the probabilities "
            f"have {n_props} (their last dimension)."
        )


def rule_probabilities(
    probabilities: torch.Tensor,
    required_mask: torch.Tensor,
    required_true: torch.Tensor,
) -> torch.Tensor:
    """The probability of each conjunctive rule, as a product over the propositions it names.

    ``P(rule) = Π_{k : mask_k} (φ_k if true_k else 1 − φ_k)``; a rule that names nothing is 1.

    Args:
        probabilities: ``φ``, shape ``(..., n_props)``, values in ``[0, 1]`` (0/1 for exact labels).
        required_mask: ``(n_rules, n_props)`` bool, True where the rule names the proposition.
        required_true: ``(n_rules, n_props)`` bool, the value the rule requires there.

    Returns:
        ``(..., n_rules)``, in ``probabilities``'s dtype.
    """
    _check_rules(required_mask, required_true, probabilities.shape[-1])
    phi = probabilities.unsqueeze(-2)  # (..., 1, n_props): one row per rule below
    factors = torch.where(required_true, phi, 1 - phi)  # (..., n_rules, n_props)
    factors = torch.where(required_mask, factors, torch.ones_like(factors))
    return factors.prod(dim=-1)


def with_derived_probabilities(
    simple_probabilities: torch.Tensor,
    required_mask: torch.Tensor,
    required_true: torch.Tensor,
) -> torch.Tensor:
    """Append the derived propositions' probabilities, each a rule over the columns before it.

    Derived proposition ``j`` (column ``n_simple + j`` of the result) may name the simple
    propositions and the derived ones ``0 .. j−1``; so the rows must come in an order where each
    depends only on earlier ones (a topological order; :mod:`saferl.rbr` sorts a spec's).
    ``P(derived = False) = 1 − P(derived)`` when a later rule requires it False.

    Args:
        simple_probabilities: ``(..., n_simple)``.
        required_mask: ``(n_derived, n_simple + n_derived)`` bool; row ``j`` may be True only in
            columns ``< n_simple + j``.
        required_true: ``(n_derived, n_simple + n_derived)`` bool.

    Returns:
        ``(..., n_simple + n_derived)``: the simple columns unchanged, then the derived ones.
    """
    n_simple = simple_probabilities.shape[-1]
    n_derived = required_mask.shape[0] if required_mask.dim() == 2 else -1
    _check_rules(required_mask, required_true, n_simple + max(n_derived, 0))
    later = torch.ones_like(required_mask).triu(diagonal=n_simple)  # column ≥ n_simple + row
    if (required_mask & later).any():
        row = int((required_mask & later).any(dim=1).nonzero()[0])
        raise ValueError(
            f"derived proposition {row} names itself or a later derived proposition; "
            "order the rules so that each names only simple and earlier derived columns."
        )
    columns = simple_probabilities
    for row in range(n_derived):
        width = n_simple + row
        derived = rule_probabilities(
            columns, required_mask[row : row + 1, :width], required_true[row : row + 1, :width]
        )  # (..., 1)
        columns = torch.cat([columns, derived], dim=-1)
    return columns


def class_features(class_probabilities: torch.Tensor) -> torch.Tensor:
    """Class features: the completion classes' product probabilities normalised over the classes.

    ``f_c = P(c) / Σ_c' P(c')`` (Mu et al. 2024).
    When every class has probability 0 (impossible for a spec whose classes partition the 0/1
    assignments, reachable only through rounding) the features are 0, not NaN.

    Args:
        class_probabilities: ``(..., n_classes)``, from :func:`rule_probabilities` with one rule
            per class of one response type.

    Returns:
        ``(..., n_classes)``, non-negative, each row summing to 1 (or all 0, see above).
    """
    total = class_probabilities.sum(dim=-1, keepdim=True)
    return class_probabilities / total.clamp_min(torch.finfo(class_probabilities.dtype).tiny)


def linear_rbr_reward(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The linear rule-based reward ``R_rbr = Σ_i w_i f_i``.

    Args:
        features: ``(..., n_features)``: a response type's propositions then its class features.
        weights: ``(n_features,)``, that response type's fitted weights.

    Returns:
        ``(...)``.
    """
    if weights.dim() != 1 or features.shape[-1] != weights.shape[0]:
        raise ValueError(
            f"features of shape {tuple(features.shape)} do not fit weights of shape "
            f"{tuple(weights.shape)}: expected features (..., n) and weights (n,)."
        )
    return features @ weights


def ranked_pairs(
    group_ids: torch.Tensor, class_ranks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ordered pair of completions of the same prompt whose classes differ.

    The work is per prompt (``n_g × n_g`` for a prompt with ``n_g`` completions), not ``n × n``.

    Completion ``a`` is better than ``b`` when both have the same group (prompt) and
    ``class_ranks[a] < class_ranks[b]`` (rank 0 = the best class, e.g. ``ideal``). Completions of
    the same class are not paired.

    Args:
        group_ids: ``(n,)`` integer prompt ids.
        class_ranks: ``(n,)`` integer class positions in the class order.

    Returns:
        ``(better_index, worse_index)``, each ``(n_pairs,)`` int64 indices into the ``n``
        completions, in increasing ``(better, worse)`` order.
    """
    if group_ids.shape != class_ranks.shape or group_ids.dim() != 1:
        raise ValueError(
            "group_ids and class_ranks must both have shape (n,), got "
            f"{tuple(group_ids.shape)} and {tuple(class_ranks.shape)}."
        )
    order = torch.argsort(group_ids, stable=True)
    _, counts = torch.unique_consecutive(group_ids[order], return_counts=True)
    better_parts, worse_parts = [], []
    for members in torch.split(order, counts.tolist()):  # one prompt's completions at a time
        ranks = class_ranks[members]
        better, worse = (ranks.unsqueeze(1) < ranks.unsqueeze(0)).nonzero(as_tuple=True)
        better_parts.append(members[better])
        worse_parts.append(members[worse])
    if not better_parts:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    better_index, worse_index = torch.cat(better_parts), torch.cat(worse_parts)
    pair_order = torch.argsort(better_index * group_ids.numel() + worse_index)
    return better_index[pair_order], worse_index[pair_order]


def rbr_hinge_loss(
    total_rewards: torch.Tensor,
    better_index: torch.Tensor,
    worse_index: torch.Tensor,
    margins: torch.Tensor,
) -> torch.Tensor:
    """Per-pair hinge loss of the RBR weight fit (Mu et al. 2024).

    ``L_ab = max(0, m_ab + R_tot(y_b) − R_tot(y_a))`` for ``y_a`` better than ``y_b``. Worked
    value: ``R_tot(y_a) = 1.0``, ``R_tot(y_b) = 0.5``, ``m = 1`` → ``0.5``.

    Args:
        total_rewards: ``(n,)``, ``R_rm + R_rbr`` per completion.
        better_index, worse_index: ``(n_pairs,)`` indices (see :func:`ranked_pairs`).
        margins: ``(n_pairs,)``, ``m_ab`` (the margin times the better class's factor).

    Returns:
        ``(n_pairs,)``; the fit takes the mean.
    """
    return torch.relu(margins + total_rewards[worse_index] - total_rewards[better_index])


def ideal_outranked(
    total_rewards: torch.Tensor, ideal_index: torch.Tensor, other_index: torch.Tensor
) -> torch.Tensor:
    """Whether each non-ideal completion fails to rank below the ideal completion of its prompt.

    The held-out check before RL (docs/algorithms.md §6): centring a prompt's rewards on its ideal
    completion, a non-ideal completion with a centred reward ``≥ 0`` is an error. Ties count as
    errors: a reward that cannot tell the two apart has not ranked the ideal one first.

    Args:
        total_rewards: ``(n,)``.
        ideal_index, other_index: ``(n_pairs,)``, an ideal completion and a non-ideal completion
            of the same prompt.

    Returns:
        ``(n_pairs,)`` bool; its mean is the error rate.
    """
    return total_rewards[other_index] >= total_rewards[ideal_index]


def yes_probability(
    next_token_logits: torch.Tensor, yes_ids: torch.Tensor, no_ids: torch.Tensor
) -> torch.Tensor:
    """A grader's proposition probability ``φ = P(yes) / (P(yes) + P(no))``.

    ``P(yes)`` sums the next-token probabilities of every spelling of "yes" (e.g. ``yes``,
    `` yes``, ``Yes``), likewise ``P(no)``; the softmax's normaliser cancels, so
    ``φ = σ(logsumexp(logits[yes_ids]) − logsumexp(logits[no_ids]))``. Worked values: logits
    ``yes 2, no 0`` → ``σ(2) = 0.8808``; two "yes" spellings at 0 and one "no" at 0 → ``2/3``.

    Args:
        next_token_logits: ``(..., vocab)``, the grader's logits for the token after the prompt.
        yes_ids, no_ids: ``(k,)`` and ``(j,)`` int64 token ids, non-empty and disjoint.

    Returns:
        ``(...)``, in ``[0, 1]``.
    """
    if yes_ids.numel() == 0 or no_ids.numel() == 0:
        raise ValueError("yes_ids and no_ids must each name at least one token.")
    yes = torch.logsumexp(next_token_logits[..., yes_ids], dim=-1)
    no = torch.logsumexp(next_token_logits[..., no_ids], dim=-1)
    return torch.sigmoid(yes - no)
