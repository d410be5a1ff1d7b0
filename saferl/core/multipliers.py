"""Lagrange multipliers ``λ ∈ R^m_{>=0}`` for the constrained problem (docs/algorithms.md §0, §2).

One interface, :class:`Multiplier`, and three small implementations that share only a one-level
record of the read-only views every multiplier reports (limits, update count, last estimate);
each update rule is its own, and the shared input checks are module-level helpers:

* :class:`LogGradientAscentMultiplier` -- the published Safe RLHF form (gradient ascent on
  ``log λ`` with a window of recent cost scores and a cap);
* :class:`PIDMultiplier` -- the PID Lagrangian of Stooke et al. 2020;
* :class:`FixedMultiplier` -- a constant ``λ`` (e.g. the dual-pre-optimised ``λ*`` of MoCAN/PeCAN).

Every multiplier is driven the same way. Once per training iteration the learner passes the raw
cost scores it observed -- the cost-model end scores of the sampled responses, **no KL term, no
clipping**, already gathered over all ranks -- to ``update``; the multiplier turns them into a
constraint estimate ``J_C`` (shape ``(m,)``), moves ``λ`` and returns it. The learner reads
``value`` (detached, float64, shape ``(m,)``) to combine the advantages and logs
``constraint_estimate``; it never reads the estimate back out of the logger.

Sign convention (``saferl.core.conventions``): costs are lower-is-safer and the constraint is
``J_C <= d``, so ``λ`` rises while ``J_C > d`` (violated) and falls while ``J_C < d``.

Vector constraints: ``cost_limit`` fixes ``m`` (a float means ``m = 1``); every other
per-constraint hyper-parameter is a float (broadcast to all ``m``) or ``m`` values. The
constraints are updated independently of each other. Everything is computed in float64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from saferl.core.multiplier_options import MULTIPLIER_KINDS, check_names, check_options, count

__all__ = [
    "Multiplier",
    "LogGradientAscentMultiplier",
    "PIDMultiplier",
    "FixedMultiplier",
    "MULTIPLIER_KINDS",
    "build_multiplier",
]

PerConstraint = float | Sequence[float] | torch.Tensor
"""A per-constraint hyper-parameter: one float for all constraints, or ``m`` values."""


@runtime_checkable
class Multiplier(Protocol):
    """The one interface every Lagrange multiplier implements.

    Attributes:
        value: the current ``λ``, shape ``(m,)``, float64, detached, ``>= 0``.
        cost_limit: the limits ``d``, shape ``(m,)``, float64.
        num_constraints: ``m``.
        constraint_estimate: the last ``J_C`` that ``update`` used, shape ``(m,)``; ``None``
            before the first update.
    """

    @property
    def value(self) -> torch.Tensor: ...

    @property
    def cost_limit(self) -> torch.Tensor: ...

    @property
    def num_constraints(self) -> int: ...

    @property
    def constraint_estimate(self) -> torch.Tensor | None: ...

    def update(self, episode_costs: torch.Tensor) -> torch.Tensor:
        """Observe this iteration's raw cost scores, shape ``(n,)`` (m = 1) or ``(n, m)``, and
        return the new ``λ``, shape ``(m,)``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly (tensors, ints, strings, None)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` of the same kind and ``m``; otherwise raise ``ValueError``."""
        ...


# ---------------------------------------------------------------------------------------------
# Shared input checks (plain functions, used by every implementation)
# ---------------------------------------------------------------------------------------------


def _vector(values: list[float]) -> torch.Tensor:
    """Checked floats (``saferl.core.multiplier_options``) as a float64 vector ``(m,)``."""
    return torch.tensor(values, dtype=torch.float64)


def _episode_costs_matrix(episode_costs: torch.Tensor, cost_limit: torch.Tensor) -> torch.Tensor:
    """Validate the raw cost scores and return them as float64, shape ``(n, m)``."""
    costs = torch.as_tensor(episode_costs, dtype=torch.float64).detach()
    num_constraints = cost_limit.shape[0]
    if num_constraints == 1:
        expected = "(n,) or (n, 1)"
        if costs.dim() == 1:
            costs = costs.unsqueeze(-1)
    else:
        expected = f"(n, {num_constraints}) (one column per constraint)"
    if costs.dim() != 2 or costs.shape[1] != num_constraints:
        raise ValueError(
            f"episode_costs: expected shape {expected} for m={num_constraints} "
            f"constraint(s), found {tuple(costs.shape)}; pass one raw cost score per sampled "
            f"response"
        )
    if costs.shape[0] == 0:
        raise ValueError(
            "episode_costs: expected at least one cost score, found an empty tensor "
            f"of shape {tuple(costs.shape)}"
        )
    costs = costs.to(dtype=torch.float64, device=cost_limit.device)
    if not bool(torch.isfinite(costs).all()):
        raise ValueError(
            "episode_costs: expected finite cost scores, found "
            f"{int((~torch.isfinite(costs)).sum())} non-finite value(s) (NaN/inf)"
        )
    return costs


def _check_state(
    state: Mapping[str, Any], kind: str, num_constraints: int, keys: Sequence[str]
) -> None:
    """Reject a state of another kind, another ``m`` or with keys missing."""
    if not isinstance(state, Mapping):
        raise ValueError(f"state: expected a dict from state_dict(), found {type(state).__name__}")
    found_kind = state.get("kind")
    if found_kind != kind:
        raise ValueError(
            f"state: expected a multiplier state of kind {kind!r}, found {found_kind!r}"
        )
    found_m = state.get("num_constraints")
    if found_m != num_constraints:
        raise ValueError(
            f"state: expected num_constraints={num_constraints} (m from cost_limit), "
            f"found {found_m!r}"
        )
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f"state: {kind!r} state is missing key(s) {missing}")


def _load_vector(
    state: Mapping[str, Any], key: str, num_constraints: int, like: torch.Tensor
) -> torch.Tensor:
    tensor = torch.as_tensor(state[key], dtype=torch.float64).to(like.device).clone()
    if tuple(tensor.shape) != (num_constraints,):
        raise ValueError(
            f"state[{key!r}]: expected shape ({num_constraints},), found {tuple(tensor.shape)}"
        )
    return tensor


def _load_optional_vector(
    state: Mapping[str, Any], key: str, num_constraints: int, like: torch.Tensor
) -> torch.Tensor | None:
    return None if state[key] is None else _load_vector(state, key, num_constraints, like)


def _load_rows(
    state: Mapping[str, Any], key: str, num_constraints: int, max_rows: int, like: torch.Tensor
) -> torch.Tensor:
    rows = torch.as_tensor(state[key], dtype=torch.float64).to(like.device).clone()
    if rows.dim() != 2 or rows.shape[1] != num_constraints or rows.shape[0] > max_rows:
        raise ValueError(
            f"state[{key!r}]: expected shape (k, {num_constraints}) with k <= {max_rows}, "
            f"found {tuple(rows.shape)}"
        )
    return rows


def _clone_or_none(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.clone()


# ---------------------------------------------------------------------------------------------
# Implementations
# ---------------------------------------------------------------------------------------------


class _MultiplierRecord:
    """What every multiplier reports besides ``λ``: the limits, the update count and the last
    constraint estimate (read-only views of ``_cost_limit``, ``_num_updates`` and
    ``_constraint_estimate``, which each implementation keeps up to date)."""

    _cost_limit: torch.Tensor
    _num_updates: int
    _constraint_estimate: torch.Tensor | None

    @property
    def cost_limit(self) -> torch.Tensor:
        """``d``, shape ``(m,)``."""
        return self._cost_limit.clone()

    @property
    def num_constraints(self) -> int:
        return self._cost_limit.shape[0]

    @property
    def num_updates(self) -> int:
        """How many times ``update`` has been called (for the log-GA kind, delay calls included)."""
        return self._num_updates

    @property
    def constraint_estimate(self) -> torch.Tensor | None:
        """The last ``J_C`` that ``update`` used (the log-GA kind: the window mean; the others: the
        mean of the last call's costs), shape ``(m,)``; ``None`` before the first update."""
        return _clone_or_none(self._constraint_estimate)


class LogGradientAscentMultiplier(_MultiplierRecord):
    """The published Safe RLHF multiplier: gradient ascent on ``log λ`` (docs/algorithms.md §2).

    Update rule, once per call of ``update`` with this iteration's raw cost scores ``c``::

        window ← last `window` rows of (window ++ c)               # per constraint
        J_C    = mean(window)                                      # (m,)
        if num_updates < delay:  λ unchanged                       # only record costs
        else:
            log λ ← log λ + lr · λ · (J_C − d)                     # one SGD step on −(J_C − d)·λ
            log λ ← min(log λ, log max_value)                      # λ ≤ max_value
        i.e.  λ ← min(λ · exp(lr · λ · (J_C − d)), max_value)

    Published defaults: ``initial_value = 1``, ``lr = 0.1``, ``window = 128``, ``delay = 0``,
    ``max_value = 5``, ``d = 0``. Storing ``log λ`` keeps ``λ > 0``; the step is multiplicative,
    so with the constraint satisfied ``λ`` decays towards 0 (roughly like ``1/t``) but never
    reaches it. When the cap binds ``value`` equals ``max_value`` exactly.

    Args:
        cost_limit: ``d``, a float or shape ``(m,)``; sets ``m``.
        initial_value: ``λ_init > 0``, float or ``(m,)``, ``<= max_value``.
        lr: step size on ``log λ``, ``> 0``, float or ``(m,)``.
        window: how many of the most recent cost scores (rows) enter ``J_C``, ``>= 1``.
        delay: number of initial ``update`` calls that only record costs, ``>= 0``.
        max_value: cap ``λ_max > 0``, float or ``(m,)``; ``None`` for no cap (the published
            runs cap at 5; without a cap ``λ`` can grow without bound).
    """

    kind = "log_gradient_ascent"

    def __init__(
        self,
        cost_limit: PerConstraint,
        initial_value: PerConstraint = 1.0,
        lr: PerConstraint = 0.1,
        window: int = 128,
        delay: int = 0,
        max_value: PerConstraint | None = 5.0,
    ) -> None:
        limit, checked = check_options(self.kind, cost_limit, {
            "initial_value": initial_value, "lr": lr, "window": window, "delay": delay, "max_value": max_value})
        self._cost_limit = _vector(limit)
        m = self._cost_limit.shape[0]
        like = self._cost_limit
        self.lr = _vector(checked["lr"])
        self.window: int = checked["window"]
        self.delay: int = checked["delay"]
        self.max_value: torch.Tensor = _vector(checked["max_value"])
        initial = _vector(checked["initial_value"])
        self._log_max_value = torch.log(self.max_value)  # +inf when uncapped
        self._log_multiplier = torch.log(initial)  # (m,)
        self._cost_window = like.new_zeros((0, m))  # (k, m), k <= window, oldest row first
        self._num_updates = 0
        self._constraint_estimate: torch.Tensor | None = None

    @property
    def value(self) -> torch.Tensor:
        """``λ = exp(log λ)``, exactly ``max_value`` where the cap binds; ``(m,)``, float64."""
        at_cap = self._log_multiplier >= self._log_max_value
        return torch.where(at_cap, self.max_value, torch.exp(self._log_multiplier))

    def update(self, episode_costs: torch.Tensor) -> torch.Tensor:
        """Record this iteration's raw cost scores and take one step on ``log λ``.

        Args:
            episode_costs: raw cost-model end scores of the sampled responses (no KL, no
                clipping, gathered over all ranks), shape ``(n,)`` for m = 1 or ``(n, m)``.
                The last rows count as the most recent.

        Returns:
            The new ``λ``, shape ``(m,)``.
        """
        costs = _episode_costs_matrix(episode_costs, self._cost_limit)  # (n, m)
        # (k + n, m) -> keep the newest `window` rows, (<= window, m)
        self._cost_window = torch.cat([self._cost_window, costs])[-self.window :].clone()
        # --- algorithm ---
        constraint_estimate = self._cost_window.mean(dim=0)  # J_C, (m,)
        if self._num_updates >= self.delay:
            multiplier = self.value
            log_multiplier = self._log_multiplier + self.lr * multiplier * (
                constraint_estimate - self._cost_limit
            )
            self._log_multiplier = torch.minimum(log_multiplier, self._log_max_value)
        # --- end algorithm ---
        self._constraint_estimate = constraint_estimate
        self._num_updates += 1
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """``log λ``, the cost window, the call count and the last ``J_C``.

        Hyper-parameters are not stored: they come from the constructor (the config).
        """
        return {
            "kind": self.kind,
            "num_constraints": self.num_constraints,
            "log_multiplier": self._log_multiplier.clone(),
            "cost_window": self._cost_window.clone(),
            "num_updates": self._num_updates,
            "constraint_estimate": _clone_or_none(self._constraint_estimate),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from ``state_dict``; ``ValueError`` for another kind or ``m``, or for
        a cost window longer than ``window``."""
        m = self.num_constraints
        keys = ["log_multiplier", "cost_window", "num_updates", "constraint_estimate"]
        _check_state(state, self.kind, m, keys)
        like = self._cost_limit
        log_multiplier = _load_vector(state, "log_multiplier", m, like)
        cost_window = _load_rows(state, "cost_window", m, self.window, like)
        constraint_estimate = _load_optional_vector(state, "constraint_estimate", m, like)
        num_updates = count(state["num_updates"], "state['num_updates']", 0)
        self._log_multiplier = torch.minimum(log_multiplier, self._log_max_value)
        self._cost_window = cost_window
        self._constraint_estimate = constraint_estimate
        self._num_updates = num_updates


class PIDMultiplier(_MultiplierRecord):
    """PID Lagrangian (Stooke, Achiam & Abbeel 2020, "Responsive Safety in RL by PID Lagrangian
    Methods", Algorithm 2; docs/algorithms.md §2).

    Update rule, once per call of ``update`` with this iteration's raw cost scores ``c``::

        J_C = mean(c)                                   # this call's costs only, (m,)
        e   = J_C − d
        I   ← max(0, I + K_i · e)
        P   ← α_p · P + (1 − α_p) · e                   # EMA of the error
        C̄_t ← α_d · C̄_{t−1} + (1 − α_d) · J_C           # EMA of the cost
        D   = max(0, C̄_t − C̄_{t−delay})
        λ   = clamp(K_p · P + I + K_d · D, 0, max_value)

    ``α = 0`` means no smoothing. Both EMAs start at their first observation (``P_1 = e_1``,
    ``C̄_1 = J_C,1``), and ``C̄_s = C̄_1`` for ``s < 1``, so ``D`` is 0 until the cost EMA has
    moved. (Departure: the paper and OmniSafe start both at 0, which adds a one-off derivative
    kick of ``K_d · J_C,1`` on the first update; in cost-model units that kick is arbitrary.)
    Before the first update ``λ = clamp(initial_integral, 0, max_value)``.

    Gains are for O(1) costs updated every iteration; ``λ`` always has an explicit cap.

    Args:
        cost_limit: ``d``, a float or shape ``(m,)``; sets ``m``.
        kp, ki, kd: the gains ``K_p, K_i, K_d >= 0``, float or ``(m,)``.
        max_value: cap ``λ_max``, finite and ``>= 0``, float or ``(m,)``. Required.
        initial_integral: ``I_0 >= 0``, float or ``(m,)``.
        ema_alpha_p: ``α_p ∈ [0, 1)``, smoothing of the proportional term.
        ema_alpha_d: ``α_d ∈ [0, 1)``, smoothing of the cost for the derivative term.
        delay: derivative look-back in updates, ``>= 1``.
    """

    kind = "pid"

    def __init__(
        self,
        cost_limit: PerConstraint,
        kp: PerConstraint,
        ki: PerConstraint,
        kd: PerConstraint,
        max_value: PerConstraint,
        initial_integral: PerConstraint = 0.0,
        ema_alpha_p: PerConstraint = 0.0,
        ema_alpha_d: PerConstraint = 0.0,
        delay: int = 1,
    ) -> None:
        limit, checked = check_options(self.kind, cost_limit, {
            "kp": kp, "ki": ki, "kd": kd, "max_value": max_value, "initial_integral": initial_integral,
            "ema_alpha_p": ema_alpha_p, "ema_alpha_d": ema_alpha_d, "delay": delay})
        self._cost_limit = _vector(limit)
        m = self._cost_limit.shape[0]
        like = self._cost_limit
        self.kp, self.ki, self.kd = (_vector(checked[name]) for name in ("kp", "ki", "kd"))
        self.max_value = _vector(checked["max_value"])
        self.ema_alpha_p = _vector(checked["ema_alpha_p"])
        self.ema_alpha_d = _vector(checked["ema_alpha_d"])
        self.delay: int = checked["delay"]
        self._integral = _vector(checked["initial_integral"])
        self._multiplier = torch.minimum(self._integral, self.max_value)  # (m,)
        self._error_ema: torch.Tensor | None = None  # P, (m,)
        self._cost_ema: torch.Tensor | None = None  # C̄_t, (m,)
        self._cost_ema_history = like.new_zeros((0, m))  # C̄_{t−delay..t−1}, (<= delay, m)
        self._num_updates = 0
        self._constraint_estimate: torch.Tensor | None = None

    @property
    def value(self) -> torch.Tensor:
        """The current ``λ``, shape ``(m,)``, float64."""
        return self._multiplier.clone()

    def update(self, episode_costs: torch.Tensor) -> torch.Tensor:
        """One PID step on this iteration's raw cost scores.

        Args:
            episode_costs: raw cost-model end scores of the sampled responses (no KL, no
                clipping, gathered over all ranks), shape ``(n,)`` for m = 1 or ``(n, m)``.

        Returns:
            The new ``λ``, shape ``(m,)``.
        """
        costs = _episode_costs_matrix(episode_costs, self._cost_limit)  # (n, m)
        # --- algorithm ---
        constraint_estimate = costs.mean(dim=0)  # J_C, (m,)
        error = constraint_estimate - self._cost_limit  # e, (m,)
        self._integral = torch.clamp(self._integral + self.ki * error, min=0.0)
        if self._error_ema is None or self._cost_ema is None:
            self._error_ema, self._cost_ema = error, constraint_estimate
        else:
            alpha_p, alpha_d = self.ema_alpha_p, self.ema_alpha_d
            self._error_ema = alpha_p * self._error_ema + (1.0 - alpha_p) * error
            self._cost_ema = alpha_d * self._cost_ema + (1.0 - alpha_d) * constraint_estimate
        if self._cost_ema_history.shape[0] == 0:
            delayed_cost_ema = self._cost_ema  # C̄_s = C̄_1 for s < 1
        else:
            delayed_cost_ema = self._cost_ema_history[0]  # C̄_{max(1, t − delay)}
        derivative = torch.clamp(self._cost_ema - delayed_cost_ema, min=0.0)
        output = self.kp * self._error_ema + self._integral + self.kd * derivative
        self._multiplier = torch.minimum(torch.clamp(output, min=0.0), self.max_value)
        # --- end algorithm ---
        history = torch.cat([self._cost_ema_history, self._cost_ema.unsqueeze(0)])
        self._cost_ema_history = history[-self.delay :].clone()  # (<= delay, m)
        self._constraint_estimate = constraint_estimate
        self._num_updates += 1
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """``λ``, ``I``, both EMAs, the cost-EMA history, the call count and the last ``J_C``.

        Hyper-parameters are not stored: they come from the constructor (the config).
        """
        return {
            "kind": self.kind,
            "num_constraints": self.num_constraints,
            "multiplier": self._multiplier.clone(),
            "integral": self._integral.clone(),
            "error_ema": _clone_or_none(self._error_ema),
            "cost_ema": _clone_or_none(self._cost_ema),
            "cost_ema_history": self._cost_ema_history.clone(),
            "num_updates": self._num_updates,
            "constraint_estimate": _clone_or_none(self._constraint_estimate),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from ``state_dict``; ``ValueError`` for another kind or ``m``, or for
        a history longer than ``delay``."""
        m = self.num_constraints
        keys = [
            "multiplier",
            "integral",
            "error_ema",
            "cost_ema",
            "cost_ema_history",
            "num_updates",
            "constraint_estimate",
        ]
        _check_state(state, self.kind, m, keys)
        like = self._cost_limit
        multiplier = _load_vector(state, "multiplier", m, like)
        integral = _load_vector(state, "integral", m, like)
        error_ema = _load_optional_vector(state, "error_ema", m, like)
        cost_ema = _load_optional_vector(state, "cost_ema", m, like)
        history = _load_rows(state, "cost_ema_history", m, self.delay, like)
        constraint_estimate = _load_optional_vector(state, "constraint_estimate", m, like)
        num_updates = count(state["num_updates"], "state['num_updates']", 0)
        self._multiplier = torch.minimum(torch.clamp(multiplier, min=0.0), self.max_value)
        self._integral = integral
        self._error_ema = error_ema
        self._cost_ema = cost_ema
        self._cost_ema_history = history
        self._constraint_estimate = constraint_estimate
        self._num_updates = num_updates


class FixedMultiplier(_MultiplierRecord):
    """A constant multiplier, e.g. the dual-pre-optimised ``λ*`` of MoCAN/PeCAN (§4).

    Update rule::

        J_C = mean(c)        # this call's costs, recorded for logging only
        λ   unchanged

    Args:
        value: ``λ >= 0``, finite, float or ``(m,)``.
        cost_limit: ``d``, float or ``(m,)`` (for logging the slack ``d − J_C``); default 0,
            the published threshold. ``m`` is the longer of ``value`` and ``cost_limit``; a
            single value broadcasts.
    """

    kind = "fixed"

    def __init__(self, value: PerConstraint, cost_limit: PerConstraint = 0.0) -> None:
        limit, checked = check_options(self.kind, cost_limit, {"value": value})
        self._cost_limit = _vector(limit)  # d broadcast to λ's m
        self._multiplier = _vector(checked["value"])
        self._num_updates = 0
        self._constraint_estimate: torch.Tensor | None = None

    @property
    def value(self) -> torch.Tensor:
        """The fixed ``λ``, shape ``(m,)``, float64."""
        return self._multiplier.clone()

    def update(self, episode_costs: torch.Tensor) -> torch.Tensor:
        """Record ``J_C`` for logging; ``λ`` does not change.

        Args:
            episode_costs: raw cost scores, shape ``(n,)`` for m = 1 or ``(n, m)``.

        Returns:
            The (unchanged) ``λ``, shape ``(m,)``.
        """
        costs = _episode_costs_matrix(episode_costs, self._cost_limit)  # (n, m)
        self._constraint_estimate = costs.mean(dim=0)
        self._num_updates += 1
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """The call count and the last ``J_C`` (``λ`` itself comes from the constructor)."""
        return {
            "kind": self.kind,
            "num_constraints": self.num_constraints,
            "num_updates": self._num_updates,
            "constraint_estimate": _clone_or_none(self._constraint_estimate),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from ``state_dict``; ``ValueError`` for another kind or ``m``."""
        m = self.num_constraints
        _check_state(state, self.kind, m, ["num_updates", "constraint_estimate"])
        constraint_estimate = _load_optional_vector(
            state, "constraint_estimate", m, self._cost_limit
        )
        self._num_updates = count(state["num_updates"], "state['num_updates']", 0)
        self._constraint_estimate = constraint_estimate


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------

_KIND_TO_CLASS: dict[str, type] = {
    "log_gradient_ascent": LogGradientAscentMultiplier,
    "pid": PIDMultiplier,
    "fixed": FixedMultiplier,
}


def build_multiplier(kind: str, cost_limit: PerConstraint, **kwargs: Any) -> Multiplier:
    """Construct a multiplier by name (the config's ``multiplier.kind``).

    Args:
        kind: one of ``MULTIPLIER_KINDS``: ``"log_gradient_ascent"`` (alias ``"lagrangian"``),
            ``"pid"``, ``"fixed"``.
        cost_limit: ``d``, a float or shape ``(m,)``.
        **kwargs: the chosen class's other constructor arguments.

    Returns:
        The multiplier.

    Raises:
        ValueError: unknown ``kind`` (the message lists the allowed kinds), an unknown or
            missing keyword for that kind (the message lists the accepted keywords), or a value
            out of its range (``saferl.core.multiplier_options.check_options``).
    """
    # The names first (an unknown keyword would otherwise be Python's TypeError); the constructor
    # checks the values.
    return _KIND_TO_CLASS[check_names(kind, kwargs)](cost_limit=cost_limit, **kwargs)
