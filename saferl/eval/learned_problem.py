"""Where a learned-scorer run's violation comes from, on the built-in world (issue 12's "what it takes").

A learner with learned scorers optimises the *learned* problem: max E[r̂] − β KL s.t. E[ĉ_j] ≤ d_j,
with r̂ and ĉ the calibrated score models. Even a perfect optimiser then reaches the learned
problem's optimum, which the ground truth may judge infeasible. This module takes that optimum
apart, exactly (every enumerated response, float64):

1. the learned problem (learned reward, learned costs): what a perfect learner reaches;
2. the true reward with the learned costs: the cost models' share of the error;
3. the learned reward with the true costs: the reward model's share;
4. the true problem (π*): the yardstick;

each solved by the dual at ``d`` and scored on the ground truth, and
5. the smallest margin δ on a grid such that the learned problem solved at ``d − δ`` is feasible
   on the ground truth (within :data:`FEASIBILITY_TOLERANCE`), with that policy's Lagrangian gap:
   what a conservative limit would cost.

:func:`calibrated_learned_scores` reads a run (or a stage) folder's score models and held-out pairs
and calibrates them as the run does (:func:`saferl.setups.world.calibrate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from saferl.core.dual import DualProblem, InfeasibleConstraintError, solve
from saferl.data.world.exact import FEASIBILITY_TOLERANCE, ExactWorld, PolicyScore, tilted_logprobs

__all__ = [
    "MARGIN_GRID",
    "LearnedProblemRow",
    "MarginNeeded",
    "calibrated_learned_scores",
    "calibrated_model_scores",
    "learned_problem_rows",
    "margin_needed",
]

#: The margins δ tried, in ground-truth cost units.
MARGIN_GRID = tuple(round(0.025 * k, 3) for k in range(0, 21))  # 0, 0.025, …, 0.5


@dataclass(frozen=True)
class LearnedProblemRow:
    """One problem's optimum at the limits ``d``, scored on the ground truth.

    Attributes:
        problem: which scores it optimises (e.g. ``"learned reward, learned cost"``).
        multiplier: its optimal λ, one per constraint; None when its costs cannot meet ``d``.
        score: the optimum scored on the ground truth; None when there is no optimum.
    """

    problem: str
    multiplier: tuple[float, ...] | None
    score: PolicyScore | None


@dataclass(frozen=True)
class MarginNeeded:
    """The smallest grid margin that makes the learned optimum feasible on the ground truth.

    Attributes:
        margin: δ (cost units, the same for every constraint); None when no margin on the grid does.
        score: the learned optimum at ``d − δ`` on the ground truth; None with no margin.
        grid_max: the largest margin tried.
    """

    margin: float | None
    score: PolicyScore | None
    grid_max: float


def _optimum(world: ExactWorld, rewards: torch.Tensor, costs: torch.Tensor,
             limits: Sequence[float]) -> tuple[tuple[float, ...], PolicyScore] | None:
    """The optimum of max E[rewards] − β KL s.t. E[costs_j] ≤ limits_j, scored on the truth."""
    try:
        solution = solve(DualProblem.exact(world.ref_logprobs, rewards, costs, world.beta, tuple(limits)))
    except InfeasibleConstraintError:
        return None
    logprobs = tilted_logprobs(world.ref_logprobs, rewards, costs, world.beta, solution.multiplier)
    return tuple(float(v) for v in solution.multiplier), world.score(logprobs)


def learned_problem_rows(world: ExactWorld, learned_rewards: torch.Tensor,
                         learned_costs: torch.Tensor) -> list[LearnedProblemRow]:
    """Steps 1–4 of the module docstring.

    Args:
        world: the exact world (reference, ground truth, β and ``d``).
        learned_rewards: calibrated learned reward of every response, ``(num_prompts, num_responses)``.
        learned_costs: calibrated learned costs, ``(num_prompts, num_responses, m)``, m as the world's.
    """
    if learned_rewards.shape != world.rewards.shape or learned_costs.shape != world.costs.shape:
        raise ValueError(f"learned scores of shapes {tuple(learned_rewards.shape)} and {tuple(learned_costs.shape)} "
                         f"do not match the world's {tuple(world.rewards.shape)} and {tuple(world.costs.shape)}")
    problems = (
        ("learned reward, learned cost", learned_rewards, learned_costs),
        ("true reward, learned cost", world.rewards, learned_costs),
        ("learned reward, true cost", learned_rewards, world.costs),
        ("true problem (π*)", world.rewards, world.costs),
    )
    rows = []
    for name, rewards, costs in problems:
        found = _optimum(world, rewards.double(), costs.double(), world.cost_limit)
        rows.append(LearnedProblemRow(name, *(found if found is not None else (None, None))))
    return rows


def margin_needed(world: ExactWorld, learned_rewards: torch.Tensor, learned_costs: torch.Tensor,
                  grid: Sequence[float] = MARGIN_GRID,
                  tolerance: float = FEASIBILITY_TOLERANCE) -> MarginNeeded:
    """Step 5: the smallest δ in ``grid`` (ascending) whose learned optimum at ``d − δ`` has every
    ground-truth violation ≤ ``tolerance``."""
    grid = sorted(float(v) for v in grid)
    if not grid or grid[0] < 0:
        raise ValueError(f"margin grid: expected non-negative margins, found {grid}")
    for margin in grid:
        found = _optimum(world, learned_rewards.double(), learned_costs.double(),
                         [limit - margin for limit in world.cost_limit])
        if found is not None and found[1].is_feasible(tolerance):
            return MarginNeeded(margin, found[1], grid[-1])
    return MarginNeeded(None, None, grid[-1])


def calibrated_learned_scores(folder: str | Path, world: ExactWorld, tokenizer,
                              calibration: str = "isotonic") -> tuple[torch.Tensor, torch.Tensor]:
    """The calibrated learned reward ``(N, K)`` and costs ``(N, K, m)`` of every enumerated response,
    from a run or stage folder's ``models/reward_model``, ``models/<cost>_model`` and held-out pairs
    ``data/preferences_test*.jsonl``, calibrated as a run calibrates them (``calibration``, the
    ``scorers.calibration`` map, fitted on the held-out responses' ground truth)."""
    from saferl.data.loading import load_preference_dataset
    from saferl.data.world import world_dataset_paths
    from saferl.setups.settings import cost_model_name
    from saferl.setups.world import world_truth

    folder = Path(folder)
    paths = world_dataset_paths(folder / "data")
    sources = [("reward", "harm", folder / "models" / "reward_model")]
    sources += [("cost", name, folder / "models" / cost_model_name(name)) for name in world.cost_names]
    scores = []
    for kind, cost, model_dir in sources:
        test_path = paths.preferences("test", cost)
        for path in (model_dir, test_path):
            if not path.exists():
                raise FileNotFoundError(f"{folder}: the learned problem needs {path} (a world run's or stage "
                                        f"folder's {kind} model and held-out pairs); it is missing")
        pairs = list(load_preference_dataset(str(test_path)).records)
        scores.append(calibrated_model_scores(model_dir, pairs, world_truth(kind, cost), world, tokenizer, calibration))
    return scores[0], torch.stack(scores[1:], dim=-1)


def calibrated_model_scores(model_dir: str | Path, pairs, truth, world: ExactWorld, tokenizer,
                            calibration: str = "isotonic") -> torch.Tensor:
    """One score model's calibrated end score of every enumerated response ``(N, K)``: the
    ``calibration`` map fitted on ``pairs``' responses against ``truth(prompt, response)``, as a run
    calibrates it, applied to the enumeration."""
    from saferl.learners.scorers import apply_calibration
    from saferl.models import load_score_model
    from saferl.setups.world import InProcessScores, calibrate, enumerate_end_scores

    model, _ = load_score_model(model_dir)
    group = InProcessScores(model)
    fitted = calibrate(group, pairs, truth, tokenizer, 1, calibration)
    return apply_calibration(fitted, enumerate_end_scores(group.model, tokenizer, world.prompts, world.responses))
