"""The closed-form optimum of the KL-regularised constrained problem and its dual (docs/algorithms.md §1).

For a fixed multiplier ``λ ∈ R^m_{≥0}`` the maximiser of the Lagrangian is the Gibbs policy::

    π_λ(y|x) = π_ref(y|x) exp((r − λ·c)/β) / Z_λ(x),    log Z_λ(x) = log E_{π_ref} exp((r − λ·c)/β)

and the dual function, convex and smooth, is::

    D(λ) = β E_x log Z_λ(x) + λ·d
    ∇D(λ) = d − E_x E_{π_λ} c                  (the constraint slack of π_λ)
    ∇²D(λ) = (1/β) E_x Cov_{π_λ(·|x)}[c]

``λ* = argmin_{λ≥0} D(λ)`` and, under strict feasibility, ``π* = π_{λ*}`` with ``D(λ*) = J(π*)``
where ``J(π) = E[r] − β KL(π‖π_ref)``.

Two ways to build the problem share one solver:

* :func:`solve_exact` — enumerable responses with reference log-probabilities (need not be
  normalised: they are normalised per prompt);
* :func:`solve_from_samples` — the plug-in estimator over ``K`` reference samples per prompt,
  i.e. the same problem with a uniform ``1/K`` reference over the samples (MoCAN's estimator;
  biased upward at small ``K``).

Everything is evaluated through log-sum-exp with the maximum subtracted, with β inside the
exponent, in float64. Costs follow the project's convention (:mod:`saferl.core.conventions`):
lower is safer and the constraint is ``E c_j ≤ d_j``.

The solver: for ``m = 1`` a safeguarded Newton iteration on ``D'(λ) = 0`` inside a bracket
(bisection when Newton leaves it); for ``m ≥ 2`` a projected Newton method with an Armijo line
search on ``λ ≥ 0`` (Bertsekas 1982). Both reach ``λ*`` to ~1e-12 on well-conditioned problems.
:func:`projected_gradient_dual` is the published method (fixed-step projected gradient descent
with restarts), kept as a baseline for comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "DualProblem",
    "DualSolution",
    "Frontier",
    "InfeasibleConstraintError",
    "solve_exact",
    "solve_from_samples",
    "solve",
    "projected_gradient_dual",
    "predict_frontier",
    "predict_frontier_at_limits",
]

_DTYPE = torch.float64


class InfeasibleConstraintError(ValueError):
    """The cost limit cannot be met strictly by any policy on the support of the reference.

    Attributes:
        cost_limit: the requested limits ``d``, shape ``(m,)``.
        min_achievable_cost: per constraint, the smallest expected cost any policy on the
            reference's support can reach on its own, shape ``(m,)``. For several constraints the
            limits can be infeasible jointly even when each is achievable on its own; the message
            then says so.
    """

    def __init__(
        self, message: str, cost_limit: torch.Tensor, min_achievable_cost: torch.Tensor
    ) -> None:
        super().__init__(message)
        self.cost_limit = cost_limit
        self.min_achievable_cost = min_achievable_cost


@dataclass(frozen=True)
class DualSolution:
    """The dual optimum and the statistics of ``π_{λ*}``.

    Attributes:
        multiplier: ``λ*``, shape ``(m,)``, float64, ``≥ 0``.
        expected_reward: ``E_x E_{π_λ*} r``, scalar tensor.
        expected_cost: ``E_x E_{π_λ*} c``, shape ``(m,)``.
        kl: ``E_x KL(π_λ*‖π_ref)``, scalar tensor (exact for enumerable problems, the
            self-normalised estimate for sampled ones).
        objective: ``E[r] − β KL`` at ``π_λ*``, scalar tensor (equals ``dual_value`` at the
            optimum: strong duality).
        dual_value: ``D(λ*)``, scalar tensor.
        cost_limit: ``d``, shape ``(m,)``.
        beta: the KL coefficient β.
        iterations: number of solver iterations (Newton steps, or gradient steps summed over
            restarts for the projected-gradient baseline).
        method: the solver's name.
    """

    multiplier: torch.Tensor
    expected_reward: torch.Tensor
    expected_cost: torch.Tensor
    kl: torch.Tensor
    objective: torch.Tensor
    dual_value: torch.Tensor
    cost_limit: torch.Tensor
    beta: float
    iterations: int
    method: str

    @property
    def is_constrained(self) -> bool:
        """Whether any constraint is active (``λ*_j > 0``)."""
        return bool((self.multiplier > 0).any())


@dataclass(frozen=True)
class Frontier:
    """Statistics of ``π_λ`` along a grid (docs/algorithms.md §1, "predicted safety curve").

    Attributes:
        multipliers: shape ``(grid, m)``.
        expected_reward: shape ``(grid,)``.
        expected_cost: shape ``(grid, m)``.
        kl: shape ``(grid,)``.
        cost_limits: shape ``(grid, m)`` when the grid was given as limits, else ``None``.
        feasible: shape ``(grid,)`` bool; ``False`` rows (infeasible limits) hold NaN.
    """

    multipliers: torch.Tensor
    expected_reward: torch.Tensor
    expected_cost: torch.Tensor
    kl: torch.Tensor
    cost_limits: torch.Tensor | None
    feasible: torch.Tensor


@dataclass(frozen=True)
class _Tilt:
    """``π_λ`` on every prompt at one ``λ``: the quantities all derivatives are built from."""

    log_partition: torch.Tensor  # (N,)  log Z_λ(x_i)
    probs: torch.Tensor  # (N, K) π_λ(y_k|x_i)
    shaped: torch.Tensor  # (N, K) (r − λ·c)/β
    cost_per_prompt: torch.Tensor  # (N, m) E_{π_λ(·|x_i)} c


class DualProblem:
    """One KL-regularised constrained problem in dual form, over a finite response set per prompt.

    Build it with :meth:`exact` or :meth:`from_samples`; evaluate ``D``, ``∇D`` and ``∇²D`` at any
    ``λ ≥ 0``; solve it with :func:`solve`.

    Attributes:
        log_ref: normalised ``log π_ref(y_k|x_i)`` (``-inf`` off the support), shape ``(N, K)``.
        rewards: shape ``(N, K)``.
        costs: shape ``(N, K, m)``.
        prompt_weights: shape ``(N,)``, non-negative, summing to 1.
        beta: KL coefficient, ``> 0``.
        cost_limit: ``d``, shape ``(m,)``.
        sampled: whether the problem is the plug-in estimator (affects only wording/KL meaning).
    """

    def __init__(
        self,
        log_ref: torch.Tensor,
        rewards: torch.Tensor,
        costs: torch.Tensor,
        prompt_weights: torch.Tensor,
        beta: float,
        cost_limit: torch.Tensor,
        sampled: bool,
    ) -> None:
        self.log_ref = log_ref
        self.rewards = rewards
        self.costs = costs
        self.prompt_weights = prompt_weights
        self.beta = beta
        self.cost_limit = cost_limit
        self.sampled = sampled

    # ----------------------------------------------------------------------------------------
    # Construction
    # ----------------------------------------------------------------------------------------
    @classmethod
    def exact(
        cls,
        ref_logprobs: torch.Tensor,
        rewards: torch.Tensor,
        costs: torch.Tensor,
        beta: float,
        cost_limit: float | torch.Tensor | list[float],
        prompt_weights: torch.Tensor | None = None,
    ) -> DualProblem:
        """An enumerable problem: every response of every prompt, weighted by ``π_ref``.

        Args:
            ref_logprobs: ``log π_ref(y_k|x_i)`` up to a per-prompt constant, shape
                ``(num_prompts, num_responses)``; ``-inf`` marks responses outside the support.
            rewards: shape ``(num_prompts, num_responses)``.
            costs: shape ``(num_prompts, num_responses)`` (m = 1) or
                ``(num_prompts, num_responses, m)``.
            beta: KL coefficient ``β > 0``.
            cost_limit: ``d``, a float or length-m sequence/tensor.
            prompt_weights: ``p(x_i)``, shape ``(num_prompts,)``, non-negative (normalised
                here); uniform when ``None``.
        """
        ref_logprobs = _as_float64(ref_logprobs, "ref_logprobs")
        if ref_logprobs.ndim != 2:
            raise ValueError(
                f"ref_logprobs must have shape (num_prompts, num_responses); found {tuple(ref_logprobs.shape)}"
            )
        if torch.isnan(ref_logprobs).any() or torch.isposinf(ref_logprobs).any():
            raise ValueError(
                "ref_logprobs must be finite or -inf (outside the support); found NaN or +inf"
            )
        log_norm = torch.logsumexp(ref_logprobs, dim=1, keepdim=True)
        if torch.isneginf(log_norm).any():
            bad = int(torch.nonzero(torch.isneginf(log_norm.squeeze(1)))[0])
            raise ValueError(
                f"ref_logprobs: prompt {bad} has no response with finite log-probability"
            )
        return cls._build(
            ref_logprobs - log_norm, rewards, costs, beta, cost_limit, prompt_weights, sampled=False
        )

    @classmethod
    def from_samples(
        cls,
        rewards: torch.Tensor,
        costs: torch.Tensor,
        beta: float,
        cost_limit: float | torch.Tensor | list[float],
    ) -> DualProblem:
        """The plug-in estimator over K reference samples per prompt (uniform ``1/K`` weights).

        Args:
            rewards: ``r(x_i, y_ik)`` for ``y_ik ~ π_ref(·|x_i)``, shape ``(N, K)``.
            costs: shape ``(N, K)`` or ``(N, K, m)``.
            beta: KL coefficient ``β > 0``.
            cost_limit: ``d``, a float or length-m sequence/tensor.
        """
        rewards = _as_float64(rewards, "rewards")
        if rewards.ndim != 2:
            raise ValueError(f"rewards must have shape (N, K); found {tuple(rewards.shape)}")
        num_samples = rewards.shape[1]
        log_ref = torch.full_like(rewards, -math.log(num_samples))
        return cls._build(log_ref, rewards, costs, beta, cost_limit, None, sampled=True)

    @classmethod
    def _build(
        cls,
        log_ref: torch.Tensor,
        rewards: torch.Tensor,
        costs: torch.Tensor,
        beta: float,
        cost_limit: float | torch.Tensor | list[float],
        prompt_weights: torch.Tensor | None,
        sampled: bool,
    ) -> DualProblem:
        rewards = _as_float64(rewards, "rewards")
        costs = _as_float64(costs, "costs")
        if rewards.shape != log_ref.shape:
            raise ValueError(
                f"rewards must have shape {tuple(log_ref.shape)} (num_prompts, num_responses); found {tuple(rewards.shape)}"
            )
        if costs.ndim == 2:
            costs = costs.unsqueeze(-1)
        if costs.ndim != 3 or costs.shape[:2] != log_ref.shape:
            raise ValueError(
                f"costs must have shape {tuple(log_ref.shape)} or {tuple(log_ref.shape)} + (m,); found {tuple(costs.shape)}"
            )
        for name, tensor in (("rewards", rewards), ("costs", costs)):
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{name} must be finite; found NaN or inf")
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
            raise ValueError(
                f"beta (the KL coefficient) must be a finite number > 0; found {beta!r}"
            )
        num_constraints = costs.shape[-1]
        limit = torch.atleast_1d(_as_float64(cost_limit, "cost_limit"))
        if limit.ndim != 1 or limit.shape[0] not in (1, num_constraints):
            raise ValueError(
                f"cost_limit must be a float or have length m={num_constraints}; found shape {tuple(limit.shape)}"
            )
        limit = limit.expand(num_constraints).clone()
        if not torch.isfinite(limit).all():
            raise ValueError(f"cost_limit must be finite; found {limit.tolist()}")
        num_prompts = log_ref.shape[0]
        if prompt_weights is None:
            weights = torch.full((num_prompts,), 1.0 / num_prompts, dtype=_DTYPE)
        else:
            weights = _as_float64(prompt_weights, "prompt_weights")
            if weights.shape != (num_prompts,):
                raise ValueError(
                    f"prompt_weights must have shape ({num_prompts},); found {tuple(weights.shape)}"
                )
            if (weights < 0).any() or not torch.isfinite(weights).all() or weights.sum() <= 0:
                raise ValueError("prompt_weights must be finite, non-negative and not all zero")
            weights = weights / weights.sum()
        return cls(log_ref, rewards, costs, weights, float(beta), limit, sampled)

    @property
    def num_constraints(self) -> int:
        """``m``."""
        return self.costs.shape[-1]

    # ----------------------------------------------------------------------------------------
    # Evaluation
    # ----------------------------------------------------------------------------------------
    def _multiplier(self, multiplier: torch.Tensor | float | list[float]) -> torch.Tensor:
        value = torch.atleast_1d(_as_float64(multiplier, "multiplier"))
        if value.shape != (self.num_constraints,):
            if value.shape == (1,):
                value = value.expand(self.num_constraints)
            else:
                raise ValueError(
                    f"multiplier must have shape ({self.num_constraints},); found {tuple(value.shape)}"
                )
        return value

    def _tilt(self, multiplier: torch.Tensor) -> _Tilt:
        shaped = (self.rewards - self.costs @ multiplier) / self.beta  # (N, K)
        logits = self.log_ref + shaped  # -inf off the support
        log_partition = torch.logsumexp(logits, dim=1)  # (N,), max-subtracted internally
        probs = torch.exp(logits - log_partition.unsqueeze(1))  # (N, K)
        cost_per_prompt = torch.einsum("nk,nkj->nj", probs, self.costs)  # (N, m)
        return _Tilt(log_partition, probs, shaped, cost_per_prompt)

    def value(self, multiplier: torch.Tensor | float | list[float]) -> torch.Tensor:
        """``D(λ) = β E_x log Z_λ(x) + λ·d``; ``multiplier`` shape ``(m,)``; returns a scalar."""
        multiplier = self._multiplier(multiplier)
        tilt = self._tilt(multiplier)
        return self.beta * (self.prompt_weights @ tilt.log_partition) + multiplier @ self.cost_limit

    def gradient(self, multiplier: torch.Tensor | float | list[float]) -> torch.Tensor:
        """``∇D(λ) = d − E_x E_{π_λ} c``, shape ``(m,)``."""
        tilt = self._tilt(self._multiplier(multiplier))
        return self.cost_limit - self.prompt_weights @ tilt.cost_per_prompt

    def hessian(self, multiplier: torch.Tensor | float | list[float]) -> torch.Tensor:
        """``∇²D(λ) = (1/β) E_x Cov_{π_λ(·|x)}[c]``, shape ``(m, m)``."""
        return self._hessian(self._tilt(self._multiplier(multiplier)))

    def _hessian(self, tilt: _Tilt) -> torch.Tensor:
        centred = self.costs - tilt.cost_per_prompt.unsqueeze(1)  # (N, K, m)
        weighted = centred * (tilt.probs * self.prompt_weights.unsqueeze(1)).unsqueeze(-1)
        return torch.einsum("nkj,nkl->jl", weighted, centred) / self.beta

    def tilted_policy(self, multiplier: torch.Tensor | float | list[float]) -> torch.Tensor:
        """``π_λ(y_k|x_i)``, shape ``(N, K)`` (rows sum to 1)."""
        return self._tilt(self._multiplier(multiplier)).probs

    def statistics(self, multiplier: torch.Tensor | float | list[float]) -> dict[str, torch.Tensor]:
        """Expected reward, expected cost ``(m,)``, KL and objective of ``π_λ``, and ``D(λ)``.

        ``KL(π_λ‖π_ref) = E_{π_λ}[(r − λ·c)/β] − log Z_λ``, exact for enumerable problems and the
        self-normalised importance estimate for sampled ones.
        """
        multiplier = self._multiplier(multiplier)
        tilt = self._tilt(multiplier)
        expected_reward = self.prompt_weights @ (tilt.probs * self.rewards).sum(1)
        expected_cost = self.prompt_weights @ tilt.cost_per_prompt
        kl_per_prompt = (tilt.probs * tilt.shaped).sum(1) - tilt.log_partition
        kl = (self.prompt_weights @ kl_per_prompt).clamp_min(0.0)
        dual_value = (
            self.beta * (self.prompt_weights @ tilt.log_partition) + multiplier @ self.cost_limit
        )
        return {
            "expected_reward": expected_reward,
            "expected_cost": expected_cost,
            "kl": kl,
            "objective": expected_reward - self.beta * kl,
            "dual_value": dual_value,
        }

    def min_achievable_cost(self) -> torch.Tensor:
        """Per constraint, ``E_x min_{y ∈ supp π_ref(·|x)} c_j(x, y)``, shape ``(m,)``."""
        on_support = torch.isfinite(self.log_ref).unsqueeze(-1)  # (N, K, 1)
        masked = torch.where(on_support, self.costs, torch.full_like(self.costs, math.inf))
        return self.prompt_weights @ masked.min(dim=1).values

    def reference_expected_cost(self) -> torch.Tensor:
        """``E_x E_{π_ref} c``, shape ``(m,)`` (what a relative margin is measured from)."""
        return self.statistics(torch.zeros(self.num_constraints, dtype=_DTYPE))["expected_cost"]

    def with_cost_limit(self, cost_limit: float | torch.Tensor | list[float]) -> DualProblem:
        """The same problem at another cost limit."""
        return DualProblem._build(
            self.log_ref,
            self.rewards,
            self.costs,
            self.beta,
            cost_limit,
            self.prompt_weights,
            self.sampled,
        )


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------
def solve_exact(
    ref_logprobs: torch.Tensor,
    rewards: torch.Tensor,
    costs: torch.Tensor,
    beta: float,
    cost_limit: float | torch.Tensor | list[float],
    prompt_weights: torch.Tensor | None = None,
) -> DualSolution:
    """Solve the dual of an enumerable problem exactly (see :meth:`DualProblem.exact`).

    Args:
        ref_logprobs: shape ``(num_prompts, num_responses)``, unnormalised per prompt allowed.
        rewards: shape ``(num_prompts, num_responses)``.
        costs: shape ``(num_prompts, num_responses)`` or ``(num_prompts, num_responses, m)``.
        beta: KL coefficient ``β > 0``.
        cost_limit: ``d``, a float or length-m tensor.
        prompt_weights: shape ``(num_prompts,)``; uniform when ``None``.

    Raises:
        InfeasibleConstraintError: when no policy on the reference's support meets the limits
            strictly.
    """
    return solve(DualProblem.exact(ref_logprobs, rewards, costs, beta, cost_limit, prompt_weights))


def solve_from_samples(
    rewards: torch.Tensor,
    costs: torch.Tensor,
    beta: float,
    cost_limit: float | torch.Tensor | list[float],
) -> DualSolution:
    """Solve the plug-in dual over K reference samples per prompt (MoCAN's estimator).

    Args:
        rewards: shape ``(N, K)``.
        costs: shape ``(N, K)`` or ``(N, K, m)``.
        beta: KL coefficient ``β > 0``.
        cost_limit: ``d``, a float or length-m tensor.
    """
    return solve(DualProblem.from_samples(rewards, costs, beta, cost_limit))


def solve(problem: DualProblem, max_iterations: int = 200) -> DualSolution:
    """``λ* = argmin_{λ≥0} D(λ)`` and the statistics of ``π_{λ*}``.

    ``λ* = 0`` when the unconstrained tilt already meets every limit; an infeasible limit raises
    :class:`InfeasibleConstraintError`, never a silently huge multiplier.
    """
    _check_each_constraint_feasible(problem)
    if problem.num_constraints == 1:
        multiplier, iterations, method = (
            *_solve_one_constraint(problem, max_iterations),
            "bracketed_newton",
        )
    else:
        multiplier, iterations, method = (
            *_solve_projected_newton(problem, max_iterations),
            "projected_newton",
        )
    return _solution(problem, multiplier, iterations, method)


def projected_gradient_dual(
    problem: DualProblem,
    step_size: float = 0.01,
    max_iterations: int = 10_000,
    num_restarts: int = 5,
    initial_scale: float = 5.0,
    tolerance: float = 1e-8,
    seed: int = 0,
) -> DualSolution:
    """The published solver: projected gradient descent on ``D`` with a fixed step and restarts.

    ``λ ← max(0, λ − step_size · ∇D(λ))`` from ``num_restarts`` random starts in
    ``[0, initial_scale]^m`` (the first start is ``λ = 0``), each run until the step is below
    ``tolerance`` or ``max_iterations``; the start with the lowest ``D`` wins. Kept as a baseline:
    :func:`solve` reaches the same root in far fewer iterations.
    """
    generator = torch.Generator().manual_seed(seed)
    best: tuple[torch.Tensor, torch.Tensor] | None = None
    total_iterations = 0
    for restart in range(num_restarts):
        if restart == 0:
            multiplier = torch.zeros(problem.num_constraints, dtype=_DTYPE)
        else:
            multiplier = initial_scale * torch.rand(
                problem.num_constraints, generator=generator, dtype=_DTYPE
            )
        for _ in range(max_iterations):
            total_iterations += 1
            updated = (multiplier - step_size * problem.gradient(multiplier)).clamp_min(0.0)
            moved = (updated - multiplier).abs().max()
            multiplier = updated
            if moved < tolerance:
                break
        dual_value = problem.value(multiplier)
        if best is None or dual_value < best[1]:
            best = (multiplier, dual_value)
    assert best is not None
    return _solution(problem, best[0], total_iterations, "projected_gradient")


def predict_frontier(problem: DualProblem, multipliers: torch.Tensor | list[float]) -> Frontier:
    """Expected reward, cost and KL of ``π_λ`` for each ``λ`` of a grid.

    Args:
        problem: the (exact or sampled) dual problem; its cost limit is not used.
        multipliers: shape ``(grid,)`` for m = 1 or ``(grid, m)``; every entry ``≥ 0``.
    """
    grid = _as_float64(multipliers, "multipliers")
    if grid.ndim == 1:
        grid = grid.unsqueeze(-1).expand(-1, problem.num_constraints)
    if grid.ndim != 2 or grid.shape[1] != problem.num_constraints:
        raise ValueError(
            f"multipliers must have shape (grid,) or (grid, {problem.num_constraints}); found {tuple(grid.shape)}"
        )
    if (grid < 0).any():
        raise ValueError("multipliers must be >= 0")
    rows = [problem.statistics(row) for row in grid]
    return Frontier(
        multipliers=grid.clone(),
        expected_reward=torch.stack([row["expected_reward"] for row in rows]),
        expected_cost=torch.stack([row["expected_cost"] for row in rows]),
        kl=torch.stack([row["kl"] for row in rows]),
        cost_limits=None,
        feasible=torch.ones(grid.shape[0], dtype=torch.bool),
    )


def predict_frontier_at_limits(
    problem: DualProblem, cost_limits: torch.Tensor | list[float]
) -> Frontier:
    """Solve the dual at each limit of a grid; infeasible limits give NaN rows, ``feasible=False``.

    Args:
        problem: the (exact or sampled) dual problem; its own cost limit is replaced.
        cost_limits: shape ``(grid,)`` for m = 1 or ``(grid, m)``.
    """
    limits = _as_float64(cost_limits, "cost_limits")
    if limits.ndim == 1:
        limits = limits.unsqueeze(-1).expand(-1, problem.num_constraints)
    if limits.ndim != 2 or limits.shape[1] != problem.num_constraints:
        raise ValueError(
            f"cost_limits must have shape (grid,) or (grid, {problem.num_constraints}); found {tuple(limits.shape)}"
        )
    m = problem.num_constraints
    nan = torch.tensor(math.nan, dtype=_DTYPE)
    multipliers, rewards, costs, kls, feasible = [], [], [], [], []
    for limit in limits:
        try:
            solution = solve(problem.with_cost_limit(limit))
        except InfeasibleConstraintError:
            multipliers.append(nan.expand(m))
            rewards.append(nan)
            costs.append(nan.expand(m))
            kls.append(nan)
            feasible.append(False)
            continue
        multipliers.append(solution.multiplier)
        rewards.append(solution.expected_reward)
        costs.append(solution.expected_cost)
        kls.append(solution.kl)
        feasible.append(True)
    return Frontier(
        multipliers=torch.stack(multipliers),
        expected_reward=torch.stack(rewards),
        expected_cost=torch.stack(costs),
        kl=torch.stack(kls),
        cost_limits=limits.clone(),
        feasible=torch.tensor(feasible, dtype=torch.bool),
    )


# --------------------------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------------------------
def _check_each_constraint_feasible(problem: DualProblem) -> None:
    """Raise when a limit is at or below the smallest cost reachable on the reference's support.

    At equality the optimum needs ``λ → ∞`` (no finite multiplier), so the limit must be strictly
    above the minimum (Slater's condition).
    """
    min_cost = problem.min_achievable_cost()
    slack = problem.cost_limit - min_cost
    scale = 1.0 + problem.costs.abs().amax(dim=(0, 1))
    violated = slack <= 1e-12 * scale
    if violated.any():
        rows = ", ".join(
            f"constraint {j}: limit {problem.cost_limit[j].item():.6g}, smallest achievable {min_cost[j].item():.6g}"
            for j in torch.nonzero(violated).flatten().tolist()
        )
        source = "the sampled responses" if problem.sampled else "the reference policy's support"
        raise InfeasibleConstraintError(
            f"infeasible cost limit: no policy over {source} reaches an expected cost strictly below "
            f"the limit ({rows}). Raise the limit above the smallest achievable cost"
            + (" or sample more responses per prompt." if problem.sampled else "."),
            cost_limit=problem.cost_limit.clone(),
            min_achievable_cost=min_cost,
        )


def _solve_one_constraint(problem: DualProblem, max_iterations: int) -> tuple[torch.Tensor, int]:
    """Safeguarded Newton on ``D'(λ) = 0`` inside a bracket ``[low, high]``, bisecting when needed.

    ``D'`` is continuous and non-decreasing, ``D'(0) < 0`` (else ``λ* = 0``) and ``D'(λ) → d −
    c_min > 0`` as ``λ → ∞`` (checked beforehand), so a bracket exists.
    """
    zero = torch.zeros(1, dtype=_DTYPE)

    def slope_and_curvature(value: float) -> tuple[float, float]:
        multiplier = torch.tensor([value], dtype=_DTYPE)
        tilt = problem._tilt(multiplier)
        slope = (problem.cost_limit - problem.prompt_weights @ tilt.cost_per_prompt).item()
        return slope, problem._hessian(tilt).item()

    slope, curvature = slope_and_curvature(0.0)
    if slope >= 0:
        return zero, 0
    iterations = 0
    low, high = 0.0, 1.0
    # Expand the bracket: the scale of λ is β / (cost scale); doubling finds it in a few steps.
    while True:
        iterations += 1
        high_slope, _ = slope_and_curvature(high)
        if high_slope >= 0:
            break
        low, slope, curvature = high, *slope_and_curvature(high)
        high *= 2.0
        if high > 1e15:  # unreachable after the feasibility check, barring overflow
            raise RuntimeError("dual solver could not bracket the multiplier")
    if high_slope == 0.0:
        return torch.tensor([high], dtype=_DTYPE), iterations
    current = low
    for _ in range(max_iterations):
        iterations += 1
        candidate = current - slope / curvature if curvature > 0 else math.nan
        if not (low < candidate < high):
            candidate = 0.5 * (low + high)
        step = abs(candidate - current)
        current = candidate
        slope, curvature = slope_and_curvature(current)
        if slope < 0:
            low = current
        elif slope > 0:
            high = current
        else:
            break
        if step <= 1e-13 * (1.0 + current) or high - low <= 4e-16 * (1.0 + high):
            break
    return torch.tensor([current], dtype=_DTYPE), iterations


def _solve_projected_newton(problem: DualProblem, max_iterations: int) -> tuple[torch.Tensor, int]:
    """Projected Newton with an Armijo search on ``λ ≥ 0`` (Bertsekas 1982), for m ≥ 2.

    The active set holds coordinates at the bound whose gradient pushes outward; the Newton system
    is solved on the free coordinates only. Divergence (λ running off to infinity) means the limits
    are jointly infeasible, which a linear programme then confirms and reports.
    """
    m = problem.num_constraints
    multiplier = torch.zeros(m, dtype=_DTYPE)
    armijo = 1e-4
    iterations = 0
    for _ in range(max_iterations):
        iterations += 1
        tilt = problem._tilt(multiplier)
        value = (
            problem.beta * (problem.prompt_weights @ tilt.log_partition)
            + multiplier @ problem.cost_limit
        )
        gradient = problem.cost_limit - problem.prompt_weights @ tilt.cost_per_prompt
        projected_gradient = multiplier - (multiplier - gradient).clamp_min(0.0)
        if projected_gradient.abs().max() <= 1e-15 * (1.0 + problem.costs.abs().max()):
            break
        active = (multiplier <= 1e-14) & (gradient > 0)
        free = ~active
        direction = torch.zeros(m, dtype=_DTYPE)
        hessian = problem._hessian(tilt)[free][:, free]
        ridge = 1e-12 * (1.0 + hessian.diagonal().abs().max())
        eye = torch.eye(int(free.sum()), dtype=_DTYPE)
        direction[free] = -torch.linalg.solve(hessian + ridge * eye, gradient[free])
        step_size = 1.0
        while True:
            candidate = (multiplier + step_size * direction).clamp_min(0.0)
            predicted_decrease = -(gradient @ (candidate - multiplier))
            if step_size == 1.0 and predicted_decrease <= 1e-12 * (1.0 + value.abs()):
                # Close to the optimum the change of D is below its rounding error, so Armijo
                # cannot judge the step; the full Newton step converges quadratically there.
                break
            candidate_value = problem.value(candidate)
            if candidate_value <= value + armijo * (gradient @ (candidate - multiplier)):
                break
            step_size *= 0.5
            if step_size < 1e-20:
                break
        moved = (candidate - multiplier).abs().max()
        multiplier = candidate
        if moved <= 1e-13 * (1.0 + multiplier.abs().max()):
            break
        if multiplier.max() > 1e12:
            break
    if multiplier.max() > 1e8:
        _raise_if_jointly_infeasible(problem)
    return multiplier, iterations


def _raise_if_jointly_infeasible(problem: DualProblem) -> None:
    """Linear programme: the largest ``t`` with ``E_π c_j + t ≤ d_j`` for all j over policies on the
    reference's support; ``t ≤ 0`` means the limits cannot be met strictly together."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, hstack, vstack

    on_support = torch.isfinite(problem.log_ref)
    prompts, responses = torch.nonzero(on_support, as_tuple=True)
    num_vars = prompts.numel()
    weights = problem.prompt_weights[prompts].numpy()
    costs = problem.costs[prompts, responses].numpy()  # (num_vars, m)
    m = problem.num_constraints
    # Inequalities: Σ p_i π_ik c_ikj + t ≤ d_j
    a_ub = hstack([coo_matrix((weights[:, None] * costs).T), coo_matrix(np.ones((m, 1)))])
    # Equalities: Σ_k π_ik = 1 for each prompt.
    num_prompts = problem.log_ref.shape[0]
    a_eq = hstack(
        [
            coo_matrix(
                (np.ones(num_vars), (prompts.numpy(), np.arange(num_vars))),
                shape=(num_prompts, num_vars),
            ),
            coo_matrix((num_prompts, 1)),
        ]
    )
    objective = np.zeros(num_vars + 1)
    objective[-1] = -1.0
    bounds = [(0.0, None)] * num_vars + [(None, None)]
    result = linprog(
        objective,
        A_ub=vstack([a_ub]).tocsr(),
        b_ub=problem.cost_limit.numpy(),
        A_eq=a_eq.tocsr(),
        b_eq=np.ones(num_prompts),
        bounds=bounds,
        method="highs",
    )
    if result.status == 0 and -result.fun > 1e-12:
        return
    raise InfeasibleConstraintError(
        "infeasible cost limits: each limit can be met on its own, but no policy meets all of them "
        f"strictly at once (limits {problem.cost_limit.tolist()}; best joint slack "
        f"{(-result.fun if result.status == 0 else math.nan):.6g}). Loosen at least one limit.",
        cost_limit=problem.cost_limit.clone(),
        min_achievable_cost=problem.min_achievable_cost(),
    )


def _solution(
    problem: DualProblem, multiplier: torch.Tensor, iterations: int, method: str
) -> DualSolution:
    stats = problem.statistics(multiplier)
    return DualSolution(
        multiplier=multiplier.clone(),
        expected_reward=stats["expected_reward"],
        expected_cost=stats["expected_cost"],
        kl=stats["kl"],
        objective=stats["objective"],
        dual_value=stats["dual_value"],
        cost_limit=problem.cost_limit.clone(),
        beta=problem.beta,
        iterations=iterations,
        method=method,
    )


def _as_float64(value: object, name: str) -> torch.Tensor:
    try:
        # Python floats go straight to float64 (as_tensor would round them through float32).
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=_DTYPE)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"{name} must be a number or a tensor; found {type(value).__name__}"
        ) from error
    if tensor.is_complex():
        raise ValueError(f"{name} must be real; found a complex tensor")
    return tensor.detach().to(device="cpu", dtype=_DTYPE)
