"""Reward- and cost-model training losses and their metrics (docs/algorithms.md §3).

Sign convention (docs/algorithms.md §0): reward is higher-is-better; cost is **lower-is-safer**, and the
cost loss trains ``C ≤ 0`` to mean "safe".

Shapes. Scores are ``(batch,)`` for one head or ``(batch, m)`` for ``m`` cost heads. Safety labels
are 0/1 or bool and either broadcast against the scores by the usual torch rules (e.g.
``(batch, m)`` or ``(batch, 1)``) or have shape ``scores.shape[:-1]`` (one label per response,
shared by all heads), in which case a trailing head axis is added. The latter rule is applied
first, so a ``(batch,)`` label against ``(batch, m)`` scores is per-row even when ``batch == m``.
Every loss and metric averages over all elements (batch and heads) and returns a scalar.

Label values are not checked here (that would synchronise a GPU); the data layer rejects
contradictory records (docs/algorithms.md §3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "reward_model_loss",
    "cost_model_loss",
    "pairwise_accuracy",
    "sign_accuracy",
]


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}."
        )


def _align_labels(labels: torch.Tensor, scores: torch.Tensor, name: str) -> torch.Tensor:
    """Safety labels as a float tensor in ``scores``'s dtype that broadcasts to ``scores.shape``."""
    if scores.dim() >= 2 and labels.shape == scores.shape[:-1]:
        labels = labels.unsqueeze(-1)  # (batch,) -> (batch, 1): one label shared by all heads
    try:
        broadcast = torch.broadcast_shapes(labels.shape, scores.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != scores.shape:
        raise ValueError(
            f"{name} of shape {tuple(labels.shape)} does not fit scores of shape "
            f"{tuple(scores.shape)}: expected {tuple(scores.shape)}, {tuple(scores.shape[:-1])} "
            "or another shape that broadcasts to the scores' shape."
        )
    return labels.to(scores.dtype)


def reward_model_loss(
    better_scores: torch.Tensor,
    worse_scores: torch.Tensor,
    score_regularization: float = 0.001,
) -> torch.Tensor:
    """Bradley–Terry reward-model loss with score regularisation.

    ``L = mean(−log σ(R_b − R_w)) + η · mean(concat(R_b, R_w)²)``.

    Args:
        better_scores: ``R(y_better)``, shape ``(batch,)`` or ``(batch, m)``.
        worse_scores: ``R(y_worse)``, same shape.
        score_regularization: ``η ≥ 0``; keeps the scores near 0.

    Returns:
        Scalar ``()`` loss.
    """
    _check_same_shape(better_scores, worse_scores, "better_scores", "worse_scores")
    ranking = -F.logsigmoid(better_scores - worse_scores).mean()
    regularization = torch.stack([better_scores, worse_scores]).square().mean()
    return ranking + score_regularization * regularization


def cost_model_loss(
    safer_scores: torch.Tensor,
    unsafer_scores: torch.Tensor,
    safer_is_safe: torch.Tensor,
    unsafer_is_safe: torch.Tensor,
    score_regularization: float = 0.001,
    sign_weight: float = 1.0,
) -> torch.Tensor:
    """Cost-model loss of Safe RLHF: pairwise ranking plus safety-sign classification.

    With ``s = +1`` for a safe response and ``−1`` for an unsafe one and the sign weight ``w``,

    ``L = mean(−log σ(C_u − C_s) + w·(−log σ(−s_s C_s) − log σ(−s_u C_u))) + η · mean(concat(C_s, C_u)²)``

    where ``C_s`` / ``C_u`` are the costs of the safer / unsafer response. Safe responses are
    pushed below 0 and unsafe ones above 0. ``w = 1`` is Safe RLHF's loss; ``w = 0`` is
    Bradley–Terry alone. The sign terms keep pushing every safe response down and every unsafe one
    up, so with ``w = 1`` the scores cluster by class and differences within a class (a safe
    answer that is nearly harmful against a refusal) shrink.

    Args:
        safer_scores: ``C(y_safer)``, shape ``(batch,)`` or ``(batch, m)``.
        unsafer_scores: ``C(y_unsafer)``, same shape.
        safer_is_safe: safety label of ``y_safer`` (0/1 or bool), shape as the scores,
            ``scores.shape[:-1]`` or broadcastable (module docstring).
        unsafer_is_safe: safety label of ``y_unsafer``, same rules.
        score_regularization: ``η ≥ 0``.
        sign_weight: ``w ≥ 0``, the weight of the two safety-sign terms.

    Returns:
        Scalar ``()`` loss.
    """
    _check_same_shape(safer_scores, unsafer_scores, "safer_scores", "unsafer_scores")
    sign_safer = 2 * _align_labels(safer_is_safe, safer_scores, "safer_is_safe") - 1
    sign_unsafer = 2 * _align_labels(unsafer_is_safe, unsafer_scores, "unsafer_is_safe") - 1
    per_element = (
        -F.logsigmoid(unsafer_scores - safer_scores)
        - sign_weight * (F.logsigmoid(-sign_safer * safer_scores) + F.logsigmoid(-sign_unsafer * unsafer_scores))
    )  # (batch,) or (batch, m)
    regularization = torch.stack([safer_scores, unsafer_scores]).square().mean()
    return per_element.mean() + score_regularization * regularization


def pairwise_accuracy(better_scores: torch.Tensor, worse_scores: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs ranked correctly: ``mean[better > worse]``; ties count as wrong.

    Pass the response that should score *higher* first: for rewards
    ``(better_scores, worse_scores)``; for costs (lower is safer)
    ``(unsafer_scores, safer_scores)``.

    Args:
        better_scores: shape ``(batch,)`` or ``(batch, m)``.
        worse_scores: same shape.

    Returns:
        Scalar ``()`` in the scores' dtype.
    """
    _check_same_shape(better_scores, worse_scores, "better_scores", "worse_scores")
    return (better_scores > worse_scores).to(better_scores.dtype).mean()


def sign_accuracy(scores: torch.Tensor, is_safe: torch.Tensor) -> torch.Tensor:
    """Fraction of cost scores whose sign matches the safety label: ``mean[(C ≤ 0) == is_safe]``.

    Tie rule: a score of exactly 0 counts as "safe" (``c ≤ 0`` means safe, docs/algorithms.md §0).

    Args:
        scores: costs, shape ``(batch,)`` or ``(batch, m)``.
        is_safe: 0/1 or bool labels, shape as ``scores``, ``scores.shape[:-1]`` or broadcastable
            (module docstring).

    Returns:
        Scalar ``()`` in the scores' dtype.
    """
    labels = _align_labels(is_safe, scores, "is_safe") > 0.5
    return ((scores <= 0) == labels).to(scores.dtype).mean()
