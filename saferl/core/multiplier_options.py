"""The Lagrange multipliers' options, checked in plain Python.

``saferl.core.multipliers`` builds its tensors from what :func:`check_options` returns, and
``saferl.config`` calls the same function to validate ``multiplier.*`` before anything imports
torch (seconds), so a mistake in a multiplier option is reported as fast as any other key and
by the same rules the multiplier itself applies.

Every per-constraint option is a float (broadcast to all ``m`` constraints) or ``m`` values;
``cost_limit`` fixes ``m``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MULTIPLIER_KINDS", "OPTIONS", "PerConstraintRule", "CountRule", "canonical_kind", "check_names",
           "check_options", "limits", "per_constraint", "count"]

REQUIRED = object()
"""An option without a default (the PID gains and cap, the fixed value)."""


@dataclass(frozen=True)
class PerConstraintRule:
    """A float or ``m`` values; ``minimum`` inclusive (exclusive with ``strictly_above``),
    ``below`` exclusive; ``allow_inf`` accepts ``+inf``; ``none_is_inf``: ``None`` means no cap."""

    default: Any = REQUIRED
    minimum: float | None = None
    strictly_above: bool = False
    below: float | None = None
    allow_inf: bool = False
    none_is_inf: bool = False


@dataclass(frozen=True)
class CountRule:
    """An integer ``>= minimum`` (a window length, a delay)."""

    default: Any = REQUIRED
    minimum: int = 0


OPTIONS: dict[str, dict[str, PerConstraintRule | CountRule]] = {
    "log_gradient_ascent": {
        "initial_value": PerConstraintRule(1.0, minimum=0.0, strictly_above=True),
        "lr": PerConstraintRule(0.1, minimum=0.0, strictly_above=True),
        "window": CountRule(128, minimum=1),
        "delay": CountRule(0, minimum=0),
        "max_value": PerConstraintRule(5.0, minimum=0.0, strictly_above=True, allow_inf=True, none_is_inf=True),
    },
    "pid": {
        "kp": PerConstraintRule(minimum=0.0),
        "ki": PerConstraintRule(minimum=0.0),
        "kd": PerConstraintRule(minimum=0.0),
        "max_value": PerConstraintRule(minimum=0.0),
        "initial_integral": PerConstraintRule(0.0, minimum=0.0),
        "ema_alpha_p": PerConstraintRule(0.0, minimum=0.0, below=1.0),
        "ema_alpha_d": PerConstraintRule(0.0, minimum=0.0, below=1.0),
        "delay": CountRule(1, minimum=1),
    },
    "fixed": {
        "value": PerConstraintRule(minimum=0.0),
    },
}
"""Each kind's options (besides ``cost_limit``) and their rules, in constructor order."""

_ALIASES = {"lagrangian": "log_gradient_ascent"}  # the published Safe RLHF name

MULTIPLIER_KINDS: tuple[str, ...] = ("log_gradient_ascent", "lagrangian", "pid", "fixed")
"""The names ``build_multiplier`` and ``multiplier.kind`` accept."""


def canonical_kind(kind: str) -> str:
    """``kind`` with its alias resolved; ``ValueError`` naming the allowed kinds otherwise."""
    if kind not in MULTIPLIER_KINDS:
        raise ValueError(f"multiplier kind: expected one of {list(MULTIPLIER_KINDS)}, found {kind!r}")
    return _ALIASES.get(kind, kind)


def _floats(values: Any, name: str) -> list[float]:
    """A float or a flat sequence (or anything with ``tolist``, e.g. a tensor) as a list."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, bool):
        raise ValueError(f"{name}: expected a float or a sequence of floats, found {values!r}")
    if isinstance(values, (int, float)):
        return [float(values)]
    if isinstance(values, Sequence) and not isinstance(values, str):
        flat = []
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                shape = "nested values" if isinstance(value, Sequence) else repr(value)
                raise ValueError(f"{name}: expected a float or a flat sequence of floats, found {shape} in {values!r}")
            flat.append(float(value))
        return flat
    raise ValueError(f"{name}: expected a float or a sequence of floats, found {values!r}")


def limits(cost_limit: Any) -> list[float]:
    """``d`` as ``m`` finite floats; ``m`` is inferred from it."""
    limit = _floats(cost_limit, "cost_limit")
    if not limit:
        raise ValueError("cost_limit: expected a float or a non-empty 1-D sequence of m limits, found an empty one")
    if not all(math.isfinite(value) for value in limit):
        raise ValueError(f"cost_limit: expected finite limits, found {limit}")
    return limit


def per_constraint(values: Any, name: str, num_constraints: int, rule: PerConstraintRule) -> list[float]:
    """A float or ``m`` values broadcast to ``m`` floats, checked against ``rule``."""
    if values is None and rule.none_is_inf:
        return [math.inf] * num_constraints
    if values is None:
        raise ValueError(f"{name}: expected a float or {num_constraints} values (one per constraint), found None")
    flat = _floats(values, name)
    if len(flat) not in (1, num_constraints):
        raise ValueError(f"{name}: expected a float or {num_constraints} values (one per constraint), "
                         f"found {len(flat)} values")
    flat = flat * num_constraints if len(flat) == 1 else flat
    if any(math.isnan(v) or (math.isinf(v) and not (rule.allow_inf and v > 0)) for v in flat):
        raise ValueError(f"{name}: expected finite values, found {flat}")
    if rule.minimum is not None:
        too_small = [v <= rule.minimum if rule.strictly_above else v < rule.minimum for v in flat]
        if any(too_small):
            relation = ">" if rule.strictly_above else ">="
            raise ValueError(f"{name}: expected values {relation} {rule.minimum}, found {flat}")
    if rule.below is not None and any(v >= rule.below for v in flat):
        raise ValueError(f"{name}: expected values < {rule.below}, found {flat}")
    return flat


def count(value: Any, name: str, minimum: int) -> int:
    """A non-negative integer option (window length, delay)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, found {value!r}")
    return value


def check_names(kind: str, options: Mapping[str, Any]) -> str:
    """The kind (its alias resolved) after checking that ``options`` names only the kind's options
    and every required one; ``ValueError`` naming the accepted or missing options otherwise."""
    kind = canonical_kind(kind)
    rules = OPTIONS[kind]
    unknown = sorted(set(options) - set(rules))
    if unknown:
        raise ValueError(f"multiplier kind {kind!r}: unexpected option(s) {unknown}; accepted: {list(rules)}")
    missing = [name for name, rule in rules.items() if rule.default is REQUIRED and name not in options]
    if missing:
        raise ValueError(f"multiplier kind {kind!r}: missing required option(s) {missing}")
    return kind


def check_options(kind: str, cost_limit: Any, options: Mapping[str, Any]) -> tuple[list[float], dict[str, Any]]:
    """Check one multiplier's options the way its constructor does.

    Args:
        kind: a name in ``MULTIPLIER_KINDS``.
        cost_limit: ``d``, a float or ``m`` values.
        options: the kind's other options as given (missing ones take their defaults).

    Returns:
        ``(d, checked)``: ``d`` as ``m`` floats and every option of the kind, per-constraint
        ones as ``m`` floats (``+inf`` for an absent cap) and counts as ints.

    Raises:
        ValueError: an unknown kind, an unknown or missing option, or a value out of its range;
            the message starts with the option's name.
    """
    kind = check_names(kind, options)
    rules = OPTIONS[kind]
    given = {name: options.get(name, rule.default) for name, rule in rules.items()}
    limit = limits(cost_limit)
    if kind == "pid" and given["max_value"] is None:
        raise ValueError("max_value: expected a finite cap >= 0 (the PID multiplier always needs an explicit cap), "
                         "found None")
    if kind == "fixed":  # λ may name the constraints when d is one float broadcast to them
        m = max(len(limit), len(_floats(given["value"], "value")))
        limit = per_constraint(limit, "cost_limit", m, PerConstraintRule())
    m = len(limit)
    checked = {
        name: count(given[name], name, rule.minimum) if isinstance(rule, CountRule)
        else per_constraint(given[name], name, m, rule)
        for name, rule in rules.items()
    }
    if kind == "log_gradient_ascent" and any(a > b for a, b in zip(checked["initial_value"], checked["max_value"], strict=True)):
        raise ValueError(f"initial_value: expected values <= max_value {checked['max_value']}, "
                         f"found {checked['initial_value']}")
    return limit, checked
