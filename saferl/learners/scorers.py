"""Pluggable scorers: what turns a rollout into reward and cost scores.

A scorer maps a right-padded prompt+response batch to end-of-response scores ``(batch, outputs)``.
Three kinds:

* :class:`ModelScorer` — a trained reward or cost model hosted by a
  :class:`~saferl.runtime.ScoreGroup` (the normal case);
* :class:`WorldOracleScorer` — the built-in world's ground-truth reward or cost, so an optimiser
  can be judged apart from its score models;
* :class:`AffineScorer` — ``scale · s + shift`` of another scorer: on the built-in world, a learned
  model mapped into ground-truth units (:func:`fit_affine`), so that β and the cost limit mean the
  same as in the exact optimum;
* :class:`ShapedRewardScorer` — ``r − Σ_j λ_j c_j`` with a constant λ (the fixed-λ reward-shaping
  baseline is plain PPO with this scorer as its reward).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedTokenizerBase

from saferl.data.collators import SequenceBatch
from saferl.data.world import EOS, cost_function, ground_truth_reward, world_prompts

__all__ = [
    "Scorer",
    "ModelScorer",
    "WorldOracleScorer",
    "ShapedRewardScorer",
    "AffineScorer",
    "fit_affine",
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


class AffineScorer:
    """``scale · s + shift`` of another scorer's outputs (same ``num_outputs``)."""

    def __init__(self, scorer: Scorer, scale: float, shift: float) -> None:
        self.scorer = scorer
        self.scale = float(scale)
        self.shift = float(shift)
        self.num_outputs = scorer.num_outputs

    def score(self, batch: SequenceBatch, prompts: Sequence[str]) -> torch.Tensor:
        return self.scale * self.scorer.score(batch, prompts) + self.shift


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
