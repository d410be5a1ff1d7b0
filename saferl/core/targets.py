"""A learner's own target: the policy it would reach with perfect optimisation under its settings
(docs/algorithms.md §8), on an enumerable problem with ``m ≥ 1`` constraints.

Every target here is a tilt of the reference,

    π_t(y|x) ∝ π_ref(y|x) · exp((w·r(x,y) + b(x,y) − λ·c(x,y)) / (β_t · g(λ))),

with ``g(λ) = 1 + Σ_j λ_j`` for Safe RLHF's published streams (``+β·kl`` in the cost stream, whose
combined per-token reward is ``(r − λ·c)/(1+Σλ) − β·kl``, docs/algorithms.md §2) and ``g(λ) = 1``
otherwise, and ``b`` an optional reward bonus (0 unless given: the rule-based reward ``R_rbr`` of
``learner=rbr``). λ is either given (a fixed multiplier: MoCAN's λ̂, reward shaping, DPO on relabelled
pairs) or the multiplier update's fixed point: where each constraint's multiplier stops moving,

    λ_j = 0 and E_x E_{π_t} c_j ≤ d_j,   or   E_x E_{π_t} c_j = d_j,   or   λ_j = cap and E c_j ≥ d_j.

For one constraint that λ is found by bisection on ``E c = d``. For several constraints with
``g = 1`` these are exactly the KKT conditions of the dual ``min D(λ)`` over the box
``0 ≤ λ ≤ cap`` (docs/algorithms.md §1: ``∇_j D = d_j − E_{π_λ} c_j``), so the fixed point is the exact
optimum λ* when it lies under the cap and the box-constrained dual minimum otherwise. With the
published streams and several constraints ``g`` couples every λ_j into the temperature and the
fixed point is no longer a dual minimum; it is not defined here (ValueError).

Shapes: ``ref_logprobs``, ``rewards`` are ``(num_prompts, num_responses)``; ``costs`` is
``(num_prompts, num_responses)`` (m = 1) or ``(num_prompts, num_responses, m)``; everything is
float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from saferl.core.dual import DualProblem, InfeasibleConstraintError, solve

__all__ = ["TiltTarget", "expected_cost", "target_logprobs"]


@dataclass(frozen=True)
class TiltTarget:
    """The target of one learner (see the module docstring).

    Attributes:
        label: how the target is named in tables (e.g. ``"PPO-Lag fixed point (published streams)"``).
        kl_weight: ``β_t``, the KL weight of the tilt (``β``; ``β·τ`` for DPO on labels of
            temperature τ; ``β²·τ`` for PeCAN's published labelling).
        reward_weight: ``w`` (1, or 0 for a learner trained on safety labels only).
        multiplier: a fixed λ (a float for one constraint, or one value per constraint); None: the
            fixed point of the multiplier update.
        kl_grows_with_multiplier: ``g(λ) = 1 + Σλ`` (the published streams) instead of 1.
        max_multiplier: the multiplier's cap, one for every constraint or one per constraint (None:
            none).
        reward_bonus: ``b``, ``(num_prompts, num_responses)`` added to ``w·r`` (None: 0), in the
            enumeration's prompt and response order (e.g. ``R_rbr`` on the safety-relevant prompts).
        cost_limit: the limits whose fixed point the learner seeks, one per constraint, when they
            are its own (a learner given ``d − δ`` by ``scorers.cost_margin``); None: the
            problem's ``d`` passed to :func:`target_logprobs`.
    """

    label: str
    kl_weight: float
    reward_weight: float = 1.0
    multiplier: float | tuple[float, ...] | None = None
    kl_grows_with_multiplier: bool = False
    max_multiplier: float | tuple[float, ...] | None = None
    reward_bonus: torch.Tensor | None = field(default=None, compare=False, repr=False)
    cost_limit: tuple[float, ...] | None = None


def _tilt(ref_logprobs: torch.Tensor, rewards: torch.Tensor, costs: torch.Tensor, target: TiltTarget,
          multiplier: torch.Tensor) -> torch.Tensor:
    """``log π_t`` at λ = ``multiplier`` ``(m,)``, ``(num_prompts, num_responses)``; costs ``(N, K, m)``."""
    temperature = target.kl_weight * ((1.0 + float(multiplier.sum())) if target.kl_grows_with_multiplier else 1.0)
    scores = target.reward_weight * rewards - costs @ multiplier
    return torch.log_softmax(ref_logprobs + scores / temperature, dim=1)


def expected_cost(logprobs: torch.Tensor, costs: torch.Tensor) -> float | torch.Tensor:
    """``E_x E_π c`` with prompts weighted uniformly: a float for costs ``(N, K)``, shape ``(m,)``
    for costs ``(N, K, m)``."""
    probs = logprobs.exp().to(costs.dtype)
    if costs.ndim == 3:
        return torch.einsum("nk,nkj->j", probs, costs) / probs.shape[0]
    return float((probs * costs).sum(1).mean())


def _limits(cost_limit: float | Sequence[float] | torch.Tensor, m: int) -> torch.Tensor:
    limit = torch.atleast_1d(torch.as_tensor(cost_limit, dtype=torch.float64)).flatten()
    if limit.numel() != m:
        raise ValueError(f"cost_limit: expected {m} value(s), one per constraint; found {limit.tolist()}")
    return limit


def target_logprobs(
    ref_logprobs: torch.Tensor,
    rewards: torch.Tensor,
    costs: torch.Tensor,
    target: TiltTarget,
    cost_limit: float | Sequence[float] | torch.Tensor,
    *,
    tolerance: float = 1e-12,
) -> tuple[tuple[float, ...], torch.Tensor]:
    """The target's multiplier (one value per constraint) and ``log π_t(y|x)``.

    With ``target.multiplier`` None, λ is the multiplier update's fixed point (module docstring) at
    ``target.cost_limit`` when the target has its own limits, else at ``cost_limit``:
    for m = 1 bisection on ``E_{π_t(λ)} c = d`` over ``[0, cap]`` (the cap grows by doubling when
    none is set, up to 1e6; ``E c`` need not be monotone in λ under the published streams'
    ``1 + λ``, and bisection keeps a bracket with a sign change); for m ≥ 2 (``g = 1`` only) the
    exact dual solve, then L-BFGS-B on the box ``[0, cap]^m`` when λ* exceeds the cap.

    Returns:
        λ (one float per constraint) and the target's log-probs, shape ``(num_prompts, num_responses)``.

    Raises:
        ValueError: no finite λ meets the limits and there is no cap; a fixed multiplier or limit of
            the wrong length; the published streams' fixed point with several constraints.
    """
    ref_logprobs, rewards, costs = (t.to(torch.float64) for t in (ref_logprobs, rewards, costs))
    if target.reward_bonus is not None:  # w·r + b is the reward of a tilt with w = 1 and no bonus
        bonus = target.reward_bonus.to(torch.float64)
        if bonus.shape != rewards.shape:
            raise ValueError(f"target {target.label!r}: reward_bonus has shape {tuple(bonus.shape)}; expected "
                             f"{tuple(rewards.shape)} (num_prompts, num_responses), as the rewards")
        rewards = target.reward_weight * rewards + bonus
        target = replace(target, reward_weight=1.0, reward_bonus=None)
    if costs.ndim == 2:
        costs = costs.unsqueeze(-1)
    m = costs.shape[-1]
    if target.multiplier is not None:
        fixed = torch.atleast_1d(torch.as_tensor(target.multiplier, dtype=torch.float64)).flatten()
        if fixed.numel() != m:
            raise ValueError(f"target {target.label!r}: a fixed multiplier needs {m} value(s), one per constraint; "
                             f"found {fixed.tolist()}")
        return tuple(fixed.tolist()), _tilt(ref_logprobs, rewards, costs, target, fixed)
    limit = _limits(cost_limit if target.cost_limit is None else target.cost_limit, m)
    caps = None if target.max_multiplier is None else torch.atleast_1d(
        torch.as_tensor(target.max_multiplier, dtype=torch.float64)).flatten().expand(m).clone()
    if m == 1:
        cap = None if caps is None else float(caps[0])
        value, logprobs = _one_constraint_fixed_point(ref_logprobs, rewards, costs, target, float(limit[0]), cap,
                                                      tolerance)
        return (value,), logprobs
    if target.kl_grows_with_multiplier:
        raise ValueError(
            f"target {target.label!r}: the published streams' fixed point (KL weight β(1 + Σλ)) is not defined "
            f"here for m = {m} constraints"
        )
    multiplier = _box_dual_minimum(ref_logprobs, rewards, costs, target, limit, caps)
    return tuple(multiplier.tolist()), _tilt(ref_logprobs, rewards, costs, target, multiplier)


def _one_constraint_fixed_point(ref_logprobs, rewards, costs, target: TiltTarget, cost_limit: float,
                                cap: float | None, tolerance: float) -> tuple[float, torch.Tensor]:
    def tilt_at(value: float) -> torch.Tensor:
        return _tilt(ref_logprobs, rewards, costs, target, torch.tensor([value], dtype=torch.float64))

    def slack(value: float) -> float:  # E c − d of the tilt at λ
        return float(expected_cost(tilt_at(value), costs)[0]) - cost_limit

    if slack(0.0) <= 0:  # the unconstrained tilt meets the limit: λ stays at 0
        return 0.0, tilt_at(0.0)
    high = cap
    if high is None:
        high = 1.0
        while slack(high) > 0:
            high *= 2
            if high > 1e6:
                raise ValueError(f"no multiplier up to 1e6 meets the cost limit {cost_limit}")
    elif slack(high) > 0:  # even the cap breaks the limit: the update stops at the cap
        return float(high), tilt_at(float(high))
    low = 0.0
    while high - low > tolerance * max(1.0, high):
        middle = 0.5 * (low + high)
        if slack(middle) > 0:
            low = middle
        else:
            high = middle
    return high, tilt_at(high)


def _box_dual_minimum(ref_logprobs, rewards, costs, target: TiltTarget, limit: torch.Tensor,
                      caps: torch.Tensor | None) -> torch.Tensor:
    """``argmin D(λ)`` over ``0 ≤ λ ≤ caps`` for the tilt at KL weight β_t with reward weight w (the
    dual of ``max E[w·r] − β_t KL s.t. E c ≤ d``); the exact solver when its λ* is under the caps."""
    problem = DualProblem.exact(ref_logprobs, target.reward_weight * rewards, costs, target.kl_weight, limit)
    try:
        multiplier = solve(problem).multiplier
        if caps is None or bool((multiplier <= caps).all()):
            return multiplier
    except InfeasibleConstraintError as error:
        if caps is None:
            raise ValueError(f"target {target.label!r}: no finite multiplier meets the cost limits "
                             f"{limit.tolist()} ({error})") from error
    from scipy.optimize import minimize

    # D is convex and smooth, and the box keeps it bounded below even for infeasible limits.
    result = minimize(
        lambda x: float(problem.value(torch.from_numpy(x))),
        x0=caps.clamp_max(1.0).numpy(),
        jac=lambda x: problem.gradient(torch.from_numpy(x)).numpy(),
        method="L-BFGS-B",
        bounds=[(0.0, float(cap)) for cap in caps],
        options={"ftol": 0.0, "gtol": 1e-13, "maxiter": 1000},
    )
    if not all(math.isfinite(v) for v in result.x):
        raise ValueError(f"target {target.label!r}: the box-constrained dual did not converge ({result.message})")
    return torch.as_tensor(result.x, dtype=torch.float64)
