"""What every learner returns (:class:`RunResult`) and what every run writes (:class:`RunSummary`).

One typed result for every learner on every setup: the CLI adds the setup's evaluation (exact on
the world) and the problem, writes ``summary.json`` (compact; what ``saferl-sweep-summary`` reads)
and ``result.json`` (the same plus every iteration's metrics and the learner's details).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from saferl.core.dual import DualSolution, Frontier
from saferl.core.targets import TiltTarget
from saferl.data.world import PolicyScore
from saferl.setups.base import Evaluation

__all__ = ["DualPrediction", "RunResult", "RunSummary", "SummaryFileError", "SummaryRecord", "SCORE_KEYS"]


@dataclass(frozen=True)
class DualPrediction:
    """What a dualized learner's dual predicted before any training (MoCAN, PeCAN).

    Attributes:
        solution: λ̂ and the predicted statistics of ``π_λ̂``.
        frontier: the predicted frontier over the learner's λ grid.
        units: what the scores are in (``"ground-truth units"``, ``"cost-model units"`` or
            ``"implicit units"``); only ground-truth and cost-model units go on a sweep's plot.
        title: the frontier plot's title; heading: the console table's heading.
    """

    solution: DualSolution
    frontier: Frontier
    units: str
    title: str
    heading: str

    def record(self) -> dict[str, Any]:
        solution = self.solution
        return {
            "multiplier": solution.multiplier.tolist(),
            "cost_limit": solution.cost_limit.tolist(),
            "predicted_reward": float(solution.expected_reward),
            "predicted_cost": solution.expected_cost.tolist(),
            "predicted_kl": float(solution.kl),
            "objective": float(solution.objective),
            "solver": solution.method,
            "units": self.units,
        }


@dataclass(frozen=True)
class RunResult:
    """What a learner produced.

    Attributes:
        method: ``"ppo_lag"``, ``"mocan"``, ``"pecan"`` or ``"preference:<loss>"``.
        headline: the learner's own headline, used where the setup has no evaluator: the last
            rollout's reward (ppo_lag), the dual's predicted objective (mocan, pecan), the last
            step's loss (preference losses).
        policy_dir: the trained policy, exported (None when the learner stopped before training,
            e.g. ``predict_only``).
        folder: where the learner wrote (the run folder, or its ``mocan/`` / ``pecan/`` part).
        multiplier: the final λ, one value per constraint (empty without constraints).
        history: every iteration's or step's metrics.
        seconds: wall seconds per step of the learner.
        dual: the dual's prediction (dualized learners).
        target: the learner's own target under its settings (docs/algorithms.md §8), for a setup that
            can score it; None where the learner has none defined.
        details: the learner's own record (JSON-able), reported as it is.
    """

    method: str
    headline: float
    policy_dir: Path | None
    folder: Path
    multiplier: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    dual: DualPrediction | None = None
    target: TiltTarget | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _score(value: PolicyScore | None) -> dict | None:
    return None if value is None else asdict(value)


def _relative(path: Path | None, folder: Path) -> str | None:
    return None if path is None else str(Path(path).resolve().relative_to(folder.resolve()))


@dataclass(frozen=True)
class RunSummary:
    """A finished run: the learner's result, the setup's evaluation and the problem.

    Attributes:
        result: the learner's result.
        setup: ``"world"`` or ``"hub"``.
        beta, cost_limit: the problem (root ``beta`` and ``cost_limit``: a float for one constraint,
            or one limit per constraint).
        evaluation: the setup's evaluation of the trained policy (None without an evaluator or a
            trained policy).
        setup_details: what the setup's own stages measured (e.g. score-model accuracies).
        seconds: wall seconds of every stage, in order: the setup's, the learner's, evaluation.
        predicted_frontier_csv: the dual's predicted frontier file, when it is in ground-truth or
            cost-model units (what a sweep plot may show).
    """

    result: RunResult
    setup: str
    beta: float
    cost_limit: float | tuple[float, ...]
    evaluation: Evaluation | None = None
    setup_details: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    predicted_frontier_csv: Path | None = None

    @property
    def headline(self) -> float:
        """What a sweeper minimises: the trained policy's normalised Lagrangian gap
        ``G(π)/G(π_ref)`` (docs/algorithms.md §8) when the setup evaluates it, else the learner's own
        headline. The Lagrangian gap is never negative and is 0 only at ``π*``, so a run that
        breaks the limit never scores better than the optimum for its higher ``J``."""
        if self.evaluation is not None:
            return float(self.evaluation.trained.normalised_lagrangian_gap)
        return float(self.result.headline)

    def record(self, folder: Path) -> SummaryRecord:
        """The run's :class:`SummaryRecord` (paths relative to the run folder ``folder``)."""
        evaluation = self.evaluation
        return SummaryRecord(
            method=self.result.method,
            setup=self.setup,
            beta=float(self.beta),
            cost_limit=tuple(float(v) for v in (self.cost_limit if isinstance(self.cost_limit, (list, tuple))
                                                else (self.cost_limit,))),
            headline=self.headline,
            trained=evaluation.trained if evaluation else None,
            reference=evaluation.reference if evaluation else None,
            optimum=evaluation.optimum if evaluation else None,
            target=evaluation.target if evaluation else None,
            target_label=evaluation.target_label if evaluation else None,
            target_multiplier=tuple(evaluation.target_multiplier)
            if evaluation and evaluation.target_multiplier is not None else None,
            learned_optimum=evaluation.learned_optimum if evaluation else None,
            learned_optimal_multiplier=tuple(evaluation.learned_optimal_multiplier or ()) if evaluation else (),
            multiplier=tuple(float(v) for v in self.result.multiplier),
            optimal_multiplier=tuple(float(v) for v in (evaluation.optimal_multiplier if evaluation else ())),
            predicted_frontier_csv=_relative(self.predicted_frontier_csv, folder),
            policy_dir=_relative(self.result.policy_dir, folder),
            cost_names=tuple(evaluation.cost_names or ()) if evaluation else (),
            behaviour=evaluation.behaviour if evaluation else None,
            **(evaluation.behaviour or {}).get("trained", {}) if evaluation else {},
        )

    def summary_record(self, folder: Path) -> dict[str, Any]:
        """``summary.json``: what ``saferl-sweep-summary`` and ``job=evaluate`` read."""
        return self.record(folder).to_dict()

    def result_record(self, folder: Path) -> dict[str, Any]:
        """``result.json``: the summary plus every iteration's metrics, seconds and details."""
        result = self.result
        return {
            **self.summary_record(folder),
            "history": result.history,
            "seconds": self.seconds,
            "dual": None if result.dual is None else result.dual.record(),
            "setup_details": self.setup_details,
            "details": result.details,
        }

    def write(self, folder: Path) -> None:
        """Write ``result.json`` and ``summary.json`` into ``folder`` (summary last: its presence
        marks a finished run)."""
        for name, record in (("result.json", self.result_record(folder)), ("summary.json", self.summary_record(folder))):
            (folder / name).write_text(json.dumps(record, indent=2, allow_nan=True) + "\n")


# ---------------------------------------------------------------------------------------------
# summary.json: one typed record, written by the CLI and read by saferl-sweep-summary
# ---------------------------------------------------------------------------------------------

#: The keys of a score block (``trained``, ``reference``, ``optimum``, ...): PolicyScore's fields.
SCORE_KEYS = tuple(f.name for f in fields(PolicyScore))
#: The keys of a score block that hold one number per constraint (a JSON list).
PER_CONSTRAINT_SCORE_KEYS = tuple(f.name for f in fields(PolicyScore) if str(f.type).startswith("tuple"))
_SCORE_BLOCKS = ("trained", "reference", "optimum", "target", "learned_optimum")
_REQUIRED_KEYS = ("method", "beta", "cost_limit", "trained")


class SummaryFileError(ValueError):
    """A ``summary.json`` (or a sweep folder) that cannot be read: the message names the file,
    the key, what was expected and what was found."""


@dataclass(frozen=True)
class SummaryRecord:
    """The contents of a run's ``summary.json``.

    Attributes:
        method: the learner (``ppo_lag``, ``mocan``, ``pecan``, ``preference:<loss>``, ``arena``).
        setup: ``world``, ``hub`` or ``tiny`` (None in a summary that does not say).
        beta: β; cost_limit: ``d``, one entry per constraint.
        headline: what a sweeper optimises (None where absent).
        trained, reference, optimum: exact scores (None without an evaluator).
        target, target_label, target_multiplier: the learner's own target and its λ (one value per
            constraint).
        learned_optimum, learned_optimal_multiplier: the exact optimum of the learned problem.
        multiplier: the learner's final λ; optimal_multiplier: the exact λ*.
        predicted_frontier_csv, policy_dir: paths relative to the run folder (or None).
        cost_names: what each constraint's cost is (e.g. ``("harm", "refusal")``; empty where the
            summary does not say).
        not_unsafe, not_overrefuse, f1, hard_refusal_style: the trained policy's behaviour metrics
            (docs/algorithms.md §6; exact on the world; None where the setup cannot judge).
        behaviour: the same four rates of every scored policy (``trained``, ``reference``,
            ``optimum``, ``target``), or None.
    """

    method: str
    beta: float
    cost_limit: tuple[float, ...]
    trained: PolicyScore | None
    headline: float | None = None
    setup: str | None = None
    reference: PolicyScore | None = None
    optimum: PolicyScore | None = None
    target: PolicyScore | None = None
    target_label: str | None = None
    target_multiplier: tuple[float, ...] | None = None
    learned_optimum: PolicyScore | None = None
    learned_optimal_multiplier: tuple[float, ...] = ()
    multiplier: tuple[float, ...] = ()
    optimal_multiplier: tuple[float, ...] = ()
    predicted_frontier_csv: str | None = None
    policy_dir: str | None = None
    cost_names: tuple[str, ...] = ()
    not_unsafe: float | None = None
    not_overrefuse: float | None = None
    f1: float | None = None
    hard_refusal_style: float | None = None
    behaviour: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (one constraint's limit as a number, as the config gives it)."""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in _SCORE_BLOCKS:
            record[name] = _score(record[name])
        for name in ("multiplier", "optimal_multiplier", "learned_optimal_multiplier", "cost_names"):
            record[name] = list(record[name])
        if self.target_multiplier is not None:
            record["target_multiplier"] = list(self.target_multiplier)
        record["cost_limit"] = self.cost_limit[0] if len(self.cost_limit) == 1 else list(self.cost_limit)
        return record

    @classmethod
    def read(cls, path: Path) -> SummaryRecord:
        """Read and check ``path``.

        ``method``, ``beta``, ``cost_limit`` and ``trained`` are required; the other keys may be
        absent (read as null or empty), and unknown keys are ignored. A score block is null or
        holds every key of :data:`SCORE_KEYS`.

        Raises:
            SummaryFileError: not valid JSON, a required key missing, or a value of the wrong type.
        """
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise SummaryFileError(f"{path} is not valid JSON ({error}); expected the run summary written by saferl") \
                from None
        if not isinstance(data, dict):
            raise SummaryFileError(f"{path}: expected a JSON object; found {type(data).__name__}")
        for key in _REQUIRED_KEYS:
            if key not in data:
                raise SummaryFileError(f"{path}: missing required key '{key}' (found keys {sorted(data)})")
        for key in ("method", "setup", "target_label", "predicted_frontier_csv", "policy_dir"):
            value = data.get(key)
            if (value is not None or key == "method") and not isinstance(value, str):
                expected = "a string" if key == "method" else "a string or null"
                raise SummaryFileError(f"{path}: key '{key}' must be {expected}; found {value!r}")
        headline, target_multiplier = data.get("headline"), data.get("target_multiplier")
        return cls(
            method=data["method"],
            setup=data.get("setup"),
            beta=_number(data["beta"], path, "beta"),
            cost_limit=_numbers(data["cost_limit"], path, "cost_limit"),
            headline=None if headline is None else _number(headline, path, "headline"),
            **{name: _scores(data.get(name), path, name) for name in _SCORE_BLOCKS},
            target_label=data.get("target_label"),
            target_multiplier=None if target_multiplier is None else _numbers(target_multiplier, path,
                                                                              "target_multiplier"),
            learned_optimal_multiplier=_numbers(data.get("learned_optimal_multiplier") or [], path,
                                                "learned_optimal_multiplier"),
            multiplier=_numbers(data.get("multiplier", []), path, "multiplier"),
            optimal_multiplier=_numbers(data.get("optimal_multiplier", []), path, "optimal_multiplier"),
            predicted_frontier_csv=data.get("predicted_frontier_csv"),
            policy_dir=data.get("policy_dir"),
            cost_names=_names(data.get("cost_names") or [], path),
            **{key: None if data.get(key) is None else _number(data[key], path, key) for key in _BEHAVIOUR_KEYS},
            behaviour=_behaviour(data.get("behaviour"), path),
        )


#: The behaviour metrics of a summary (top level: the trained policy's; docs/algorithms.md §6).
_BEHAVIOUR_KEYS = ("not_unsafe", "not_overrefuse", "f1", "hard_refusal_style")


def _behaviour(value: Any, path: Path) -> dict[str, dict[str, float]] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(block, dict) for block in value.values()):
        raise SummaryFileError(f"{path}: key 'behaviour' must be an object of policy → {{rate: number}} or null; "
                               f"found {value!r}")
    return {name: {key: _number(rate, path, f"behaviour.{name}.{key}") for key, rate in block.items()}
            for name, block in value.items()}


def _number(value: Any, path: Path, key: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SummaryFileError(f"{path}: key '{key}' must be a number; found {value!r}")
    return float(value)


def _numbers(value: Any, path: Path, key: str) -> tuple[float, ...]:
    if isinstance(value, list):
        return tuple(_number(item, path, f"{key}[{i}]") for i, item in enumerate(value))
    if value is None:
        raise SummaryFileError(f"{path}: key '{key}' must be a number or a list of numbers; found null")
    return (_number(value, path, key),)


def _names(value: Any, path: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SummaryFileError(f"{path}: key 'cost_names' must be a list of strings; found {value!r}")
    return tuple(value)


def _scores(block: Any, path: Path, key: str) -> PolicyScore | None:
    if block is None:
        return None
    if not isinstance(block, dict):
        raise SummaryFileError(
            f"{path}: key '{key}' must be an object with keys {list(SCORE_KEYS)} or null; found {block!r}"
        )
    for name in SCORE_KEYS:
        if name not in block:
            older = (
                "; a block with 'normalised_gap' was written by a saferl from before the Lagrangian "
                "yardsticks (docs/algorithms.md §8): evaluate the run again"
                if "normalised_gap" in block
                else ""
            )
            raise SummaryFileError(f"{path}: missing required key '{key}.{name}' (found keys {sorted(block)}){older}")
    return PolicyScore(**{
        name: (_numbers if name in PER_CONSTRAINT_SCORE_KEYS else _number)(block[name], path, f"{key}.{name}")
        for name in SCORE_KEYS
    })
