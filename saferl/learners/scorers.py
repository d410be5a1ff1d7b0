"""Pluggable scorers: what turns a rollout into reward and cost scores.

A scorer maps a right-padded prompt+response batch to end-of-response scores ``(batch, outputs)``.
Three kinds:

* :class:`ModelScorer` — a trained reward or cost model hosted by a
  :class:`~saferl.runtime.ScoreGroup` (the normal case);
* :class:`WorldOracleScorer` — the built-in world's ground-truth reward or cost, so an optimiser
  can be judged apart from its score models;
* :class:`CalibratedScorer` — another scorer's outputs through a fitted calibration
  (:func:`fit_calibration`: affine, :func:`fit_affine`, or monotone, :func:`fit_isotonic`): on the
  built-in world, a learned model mapped into ground-truth units, so that β and the cost limit mean
  the same as in the exact optimum;
* :class:`ShapedRewardScorer` — ``r − Σ_j λ_j c_j`` with a constant λ (the fixed-λ reward-shaping
  baseline is plain PPO with this scorer as its reward).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import PreTrainedTokenizerBase

from saferl.data.collators import SequenceBatch
from saferl.data.world import EOS, cost_function, ground_truth_reward, world_prompts

__all__ = [
    "Scorer",
    "ModelScorer",
    "WorldOracleScorer",
    "ShapedRewardScorer",
    "CalibratedScorer",
    "apply_calibration",
    "fit_affine",
    "fit_calibration",
    "fit_isotonic",
    "response_words",
]


@runtime_checkable
class Scorer(Protocol):
    """Scores responses at their end.

    Attributes:
        num_outputs: columns of :meth:`score` (``m`` for a multi-head cost model).
    """

    num_outputs: int

    def score(self, batch: SequenceBatch, prompts: Sequence[str]) -> torch.Tensor:
        """``(batch, num_outputs)`` float scores of ``batch`` (rows as in ``prompts``)."""
        ...


class ModelScorer:
    """A reward or cost model hosted by a score group (anything with ``end_scores(batch)``)."""

    def __init__(self, group, num_outputs: int = 1) -> None:
        self.group = group
        self.num_outputs = num_outputs

    def score(self, batch: SequenceBatch, prompts: Sequence[str]) -> torch.Tensor:
        return self.group.end_scores(batch).float()


def response_words(
    tokenizer: PreTrainedTokenizerBase, eos_token_id: int, batch: SequenceBatch, row: int
) -> tuple[list[str], bool]:
    """Row ``row``'s response as the world's words (EOS excluded) and whether it ended with EOS
    (one that did not was cut off by the length limit: "unfinished", as in exact mode)."""
    ids = batch.input_ids[row][batch.response_mask[row]].tolist()
    finished = bool(ids) and ids[-1] == eos_token_id
    return tokenizer.convert_ids_to_tokens(ids[:-1] if finished else ids), finished


class WorldOracleScorer:
    """The built-in world's ground truth, read off the response tokens.

    A response ends at its first EOS; one without EOS (cut off by the length limit) is
    "unfinished", as in exact mode.

    Args:
        kind: ``"reward"`` or ``"cost"``.
        tokenizer: the world's tokenizer.
        cost: which of the world's costs (``saferl.data.world.COST_NAMES``) a cost scorer reads.
    """

    num_outputs = 1

    def __init__(self, kind: str, tokenizer: PreTrainedTokenizerBase, cost: str = "harm") -> None:
        if kind not in ("reward", "cost"):
            raise ValueError(f"scorer kind must be 'reward' or 'cost'; found {kind!r}")
        self.kind = kind
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.convert_tokens_to_ids(EOS)
        self.prompts = {prompt.text: prompt for prompt in world_prompts()}
        self.truth = ground_truth_reward if kind == "reward" else cost_function(cost)

    def score(self, batch: SequenceBatch, prompts: Sequence[str]) -> torch.Tensor:
        scores = []
        for row, prompt_text in enumerate(prompts):
            prompt = self.prompts.get(prompt_text)
            if prompt is None:
                raise ValueError(
                    f"oracle scorer: prompt {prompt_text!r} is not a prompt of the built-in world"
                )
            words, finished = response_words(self.tokenizer, self.eos_token_id, batch, row)
            scores.append(self.truth(prompt, words, finished))
        return torch.tensor(scores, dtype=torch.float32).unsqueeze(-1)


class ShapedRewardScorer:
    """``r − Σ_j λ_j c_j`` with a constant multiplier: one reward for unconstrained PPO.

    Args:
        reward: the reward scorer.
        costs: the cost scorers (their outputs concatenate to ``m`` columns).
        multiplier: ``λ``, length ``m``, ``≥ 0``.
    """

    num_outputs = 1

    def __init__(
        self, reward: Scorer, costs: Sequence[Scorer], multiplier: Sequence[float]
    ) -> None:
        self.reward = reward
        self.costs = list(costs)
        self.multiplier = torch.as_tensor(list(multiplier), dtype=torch.float32)
        num_costs = sum(cost.num_outputs for cost in self.costs)
        if self.multiplier.numel() != num_costs or (self.multiplier < 0).any():
            raise ValueError(
                f"shaped reward: multiplier needs {num_costs} non-negative values (one per cost); "
                f"found {self.multiplier.tolist()}"
            )

    def score(self, batch: SequenceBatch, prompts: Sequence[str]) -> torch.Tensor:
        reward = self.reward.score(batch, prompts)[:, :1]
        costs = torch.cat([cost.score(batch, prompts) for cost in self.costs], dim=-1)
        return reward - (costs * self.multiplier).sum(-1, keepdim=True)


class CalibratedScorer:
    """Another scorer's outputs through a calibration of :func:`fit_calibration` (same
    ``num_outputs``; the map applies to every output)."""

    def __init__(self, scorer: Scorer, calibration: Mapping[str, Any]) -> None:
        self.scorer = scorer
        self.calibration = dict(calibration)
        self.num_outputs = scorer.num_outputs

    def score(self, batch: SequenceBatch, prompts: Sequence[str]) -> torch.Tensor:
        return apply_calibration(self.calibration, self.scorer.score(batch, prompts))


def fit_calibration(kind: str, model_scores: torch.Tensor, true_scores: torch.Tensor) -> dict[str, Any]:
    """The ``kind`` map (``"isotonic"`` or ``"affine"``, ``scorers.calibration``) of model scores onto paired true scores ``(n,)``, as a
    JSON-ready mapping for :func:`apply_calibration`: ``{"kind": "affine", "scale", "shift"}`` or
    ``{"kind": "isotonic", "knots_x", "knots_y"}``."""
    if kind == "affine":
        scale, shift = fit_affine(model_scores, true_scores)
        return {"kind": "affine", "scale": scale, "shift": shift}
    if kind == "isotonic":
        knots_x, knots_y = fit_isotonic(model_scores, true_scores)
        return {"kind": "isotonic", "knots_x": knots_x, "knots_y": knots_y}
    raise ValueError(f"scorers.calibration: expected isotonic or affine; found {kind!r}")


def apply_calibration(calibration: Mapping[str, Any], scores: torch.Tensor) -> torch.Tensor:
    """``scores`` (any shape) through ``calibration`` (:func:`fit_calibration`; a mapping with only
    ``scale`` and ``shift``, as runs before isotonic calibration recorded, is affine), in their dtype."""
    if calibration.get("kind", "affine") == "affine":
        return calibration["scale"] * scores + calibration["shift"]
    knots_x = torch.tensor(calibration["knots_x"], dtype=torch.float64)
    knots_y = torch.tensor(calibration["knots_y"], dtype=torch.float64)
    values = scores.to(torch.float64)
    if knots_x.numel() == 1:
        return torch.full_like(values, float(knots_y[0])).to(scores.dtype)
    # Piecewise linear between the knots, constant beyond the end knots (no extrapolated trend).
    right = torch.searchsorted(knots_x, values.contiguous()).clamp(1, knots_x.numel() - 1)
    x0, x1, y0, y1 = knots_x[right - 1], knots_x[right], knots_y[right - 1], knots_y[right]
    fraction = ((values - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return (y0 + fraction * (y1 - y0)).to(scores.dtype)


def fit_affine(model_scores: torch.Tensor, true_scores: torch.Tensor) -> tuple[float, float]:
    """Least-squares ``true ≈ scale · model + shift`` over paired scores of shape ``(n,)``.

    Used on the built-in world only, where the ground truth of held-out responses is known: a
    learned reward or cost model is only determined up to an affine map (Bradley–Terry fixes
    neither scale nor offset), so comparing its optimum with the ground-truth optimum needs one.
    """
    x = model_scores.double().flatten()
    y = true_scores.double().flatten()
    if x.numel() < 2 or x.var() == 0:
        raise ValueError("fit_affine needs at least two distinct model scores")
    scale = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    shift = y.mean() - scale * x.mean()
    return float(scale), float(shift)


def fit_isotonic(model_scores: torch.Tensor, true_scores: torch.Tensor) -> tuple[list[float], list[float]]:
    """The least-squares non-decreasing map ``true ≈ f(model)`` over paired scores ``(n,)``
    (scipy's isotonic regression, pool adjacent violators), as the knots of a piecewise-linear
    ``f``: one knot per distinct model score, its value the fit there (equal model scores pooled,
    weighted by their count).

    Why not only affine: a Bradley–Terry cost model trained with safety labels separates safe from
    unsafe responses by far more than it separates responses within each class, so one affine map
    fitted over all responses squeezes each class (README, "What learned scorers cost"). A monotone
    map keeps the model's ranking and fits each region's size.
    """
    from scipy.optimize import isotonic_regression

    x = model_scores.double().flatten()
    y = true_scores.double().flatten()
    if x.numel() != y.numel():
        raise ValueError(f"fit_isotonic needs paired scores; found {x.numel()} model and {y.numel()} true scores")
    knots_x, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)  # sorted
    if knots_x.numel() < 2:
        raise ValueError("fit_isotonic needs at least two distinct model scores")
    means = torch.zeros_like(knots_x).index_add_(0, inverse, y) / counts
    fitted = isotonic_regression(means.numpy(), weights=counts.double().numpy(), increasing=True).x
    return knots_x.tolist(), [float(v) for v in fitted]
