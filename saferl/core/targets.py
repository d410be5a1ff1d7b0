"""A learner's own target: the policy it would reach with perfect optimisation under its settings
(docs/algorithms.md §8), on an enumerable problem.

Every target here is a tilt of the reference,

    π_t(y|x) ∝ π_ref(y|x) · exp((w·r(x,y) − λ·c(x,y)) / (β_t · g(λ))),

with ``g(λ) = 1 + λ`` for Safe RLHF's published streams (``+β·kl`` in the cost stream, whose
combined per-token reward is ``(r − λc)/(1+λ) − β·kl``, docs/algorithms.md §2) and ``g(λ) = 1``
otherwise. λ is either given (a fixed multiplier: MoCAN's λ̂, reward shaping, DPO on relabelled
pairs) or the multiplier update's fixed point: the λ at which the target meets the limit,
``E_x E_{π_t} c = d`` (0 when the unconstrained tilt already meets it; the cap when even the cap
does not).

Shapes: ``ref_logprobs``, ``rewards``, ``costs`` are ``(num_prompts, num_responses)`` (one
constraint); everything is float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TiltTarget", "expected_cost", "target_logprobs"]


@dataclass(frozen=True)
class TiltTarget:
    """The target of one learner (see the module docstring).

    Attributes:
        label: how the target is named in tables (e.g. ``"PPO-Lag fixed point (published streams)"``).
        kl_weight: ``β_t``, the KL weight of the tilt (``β``; ``β·τ`` for DPO on labels of
            temperature τ; ``β²·τ`` for PeCAN's published labelling).
        reward_weight: ``w`` (1, or 0 for a learner trained on safety labels only).
        multiplier: a fixed λ; None: the fixed point of the multiplier update (``E c = d``).
        kl_grows_with_multiplier: ``g(λ) = 1 + λ`` (the published streams) instead of 1.
        max_multiplier: the multiplier's cap (None: none).
    """

    label: str
    kl_weight: float
    reward_weight: float = 1.0
    multiplier: float | None = None
    kl_grows_with_multiplier: bool = False
    max_multiplier: float | None = None


def _tilt(ref_logprobs: torch.Tensor, rewards: torch.Tensor, costs: torch.Tensor, target: TiltTarget,
          multiplier: float) -> torch.Tensor:
    """``log π_t`` at λ = ``multiplier``, ``(num_prompts, num_responses)``."""
    temperature = target.kl_weight * ((1.0 + multiplier) if target.kl_grows_with_multiplier else 1.0)
    scores = target.reward_weight * rewards - multiplier * costs
    return torch.log_softmax(ref_logprobs + scores / temperature, dim=1)


def expected_cost(logprobs: torch.Tensor, costs: torch.Tensor) -> float:
    """``E_x E_π c`` with prompts weighted uniformly."""
    return float((logprobs.exp() * costs).sum(1).mean())


def target_logprobs(
    ref_logprobs: torch.Tensor,
    rewards: torch.Tensor,
    costs: torch.Tensor,
    target: TiltTarget,
    cost_limit: float,
    *,
    tolerance: float = 1e-12,
) -> tuple[float, torch.Tensor]:
    """The target's multiplier and ``log π_t(y|x)``.

    With ``target.multiplier`` None, λ solves ``E_{π_t(λ)} c = d`` by bisection on ``[0, cap]``
    (the cap grows by doubling when none is set, up to 1e6). ``E c`` need not be monotone in λ
    under the published streams' ``1 + λ``; bisection keeps a bracket with a sign change, so it
    returns a root whenever the ends bracket one.

    Returns:
        λ (float) and the target's log-probs, shape ``(num_prompts, num_responses)``.

    Raises:
        ValueError: no finite λ meets the limit and there is no cap.
    """
    ref_logprobs, rewards, costs = (t.to(torch.float64) for t in (ref_logprobs, rewards, costs))
    if target.multiplier is not None:
        return float(target.multiplier), _tilt(ref_logprobs, rewards, costs, target, float(target.multiplier))

    def slack(multiplier: float) -> float:  # E c − d of the tilt at λ
        return expected_cost(_tilt(ref_logprobs, rewards, costs, target, multiplier), costs) - cost_limit

    if slack(0.0) <= 0:  # the unconstrained tilt meets the limit: λ stays at 0
        return 0.0, _tilt(ref_logprobs, rewards, costs, target, 0.0)
    high = target.max_multiplier
    if high is None:
        high = 1.0
        while slack(high) > 0:
            high *= 2
            if high > 1e6:
                raise ValueError(f"no multiplier up to 1e6 meets the cost limit {cost_limit}")
    elif slack(high) > 0:  # even the cap breaks the limit: the update stops at the cap
        return float(high), _tilt(ref_logprobs, rewards, costs, target, float(high))
    low = 0.0
    while high - low > tolerance * max(1.0, high):
        middle = 0.5 * (low + high)
        if slack(middle) > 0:
            low = middle
        else:
            high = middle
    return high, _tilt(ref_logprobs, rewards, costs, target, high)
