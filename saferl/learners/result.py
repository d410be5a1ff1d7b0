"""What every learner returns (:class:`RunResult`) and what every run writes (:class:`RunSummary`).

One typed result for every learner on every setup: the CLI adds the setup's evaluation (exact on
the world) and the problem, writes ``summary.json`` (compact; what ``saferl-sweep-summary`` reads)
and ``result.json`` (the same plus every iteration's metrics and the learner's details).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saferl.core.dual import DualSolution, Frontier
from saferl.core.targets import TiltTarget
from saferl.data.world import PolicyScore
from saferl.setups.base import Evaluation

__all__ = ["DualPrediction", "RunResult", "RunSummary"]


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
        target: the learner's own target under its settings (ALGORITHMS.md §8), for a setup that
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
        beta, cost_limit: the problem (root ``beta`` and ``cost_limit``).
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
    cost_limit: float
    evaluation: Evaluation | None = None
    setup_details: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    predicted_frontier_csv: Path | None = None

    @property
    def headline(self) -> float:
        """What a sweeper minimises: the trained policy's normalised Lagrangian gap
        ``G(π)/G(π_ref)`` (ALGORITHMS.md §8) when the setup evaluates it, else the learner's own
        headline. The Lagrangian gap is never negative and is 0 only at ``π*``, so a run that
        breaks the limit never scores better than the optimum for its higher ``J``."""
        if self.evaluation is not None:
            return float(self.evaluation.trained.normalised_lagrangian_gap)
        return float(self.result.headline)

    def summary_record(self, folder: Path) -> dict[str, Any]:
        """``summary.json``: what ``saferl-sweep-summary`` and ``job=evaluate`` read (paths relative
        to the run folder)."""
        evaluation = self.evaluation
        return {
            "method": self.result.method,
            "setup": self.setup,
            "beta": self.beta,
            "cost_limit": self.cost_limit,
            "headline": self.headline,
            "trained": _score(evaluation.trained if evaluation else None),
            "reference": _score(evaluation.reference if evaluation else None),
            "optimum": _score(evaluation.optimum if evaluation else None),
            # The learner's own target (what it would reach with perfect optimisation).
            "target": _score(evaluation.target if evaluation else None),
            "target_label": evaluation.target_label if evaluation else None,
            "target_multiplier": evaluation.target_multiplier if evaluation else None,
            # With learned scorers: the exact optimum of the problem the scorers define.
            "learned_optimum": _score(evaluation.learned_optimum if evaluation else None),
            "learned_optimal_multiplier": evaluation.learned_optimal_multiplier if evaluation else None,
            "multiplier": [float(v) for v in self.result.multiplier],
            "optimal_multiplier": [float(v) for v in (evaluation.optimal_multiplier if evaluation else ())],
            "predicted_frontier_csv": _relative(self.predicted_frontier_csv, folder),
            "policy_dir": _relative(self.result.policy_dir, folder),
        }

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
