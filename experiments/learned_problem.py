"""Experiment: where a learned-scorer run's violation comes from, and what a conservative limit costs.

For each world run (or scoreboard stage) folder given, with its SFT reference, reward and cost
models and held-out pairs (saferl.eval.learned_problem):

1. calibrate the score models as a run does (``--calibration``: isotonic, the default job's, or
   affine; on the held-out responses' ground truth) and
   score every enumerated response;
2. solve, exactly at the limit d, the learned problem, the true reward with the learned costs, the
   learned reward with the true costs, and the true problem (π*); score each optimum on the
   ground truth;
3. find the smallest margin δ (grid 0, 0.025, …, 0.5) whose learned optimum at d − δ is feasible
   on the ground truth, and that policy's normalised Lagrangian gap.

Every number is what a perfect optimiser would reach: no learner runs. Compared against the exact
optimum π* of max E[r] − β KL(π‖π_ref) s.t. E[c] ≤ d on the ground truth, with each folder's SFT
policy as π_ref.

Run: ``python experiments/learned_problem.py outputs/scoreboard/seed{0,1,2}/stages`` (any run
folder of the default job works too; ``--beta``/``--cost-limit`` must be that run's).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from saferl.data.world.exact import FEASIBILITY_TOLERANCE


def _format(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(folders: Sequence[Path], beta: float, cost_limit: float, calibration: str = "isotonic") -> list[str]:
    """The printed lines: a header, then per folder the four optima and the margin row."""
    from saferl.data.world import build_world_tokenizer
    from saferl.data.world.exact import build_exact_world
    from saferl.eval.learned_problem import (
        calibrated_learned_scores,
        learned_problem_rows,
        margin_needed,
    )
    from saferl.models import load_policy

    tokenizer = build_world_tokenizer()
    lines = [
        f"The learned problem's optimum, scored on the ground truth: β = {beta}, d = {cost_limit}; every "
        f"row is the exact optimum of its problem (a perfect optimiser), π_ref each folder's SFT policy; "
        f"violation = max(0, E[c] − d); feasible within {FEASIBILITY_TOLERANCE:g}; score models calibrated "
        f"{calibration}",
        "",
        "| folder | problem | λ | E reward | E cost | violation | norm. Lagr. gap |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for folder in folders:
        sft = folder / "models" / "sft"
        if not sft.exists():
            raise SystemExit(f"{folder}: expected a world run or stage folder with models/sft; it is missing")
        reference, _ = load_policy(sft)
        world = build_exact_world(reference.eval(), tokenizer, beta, cost_limit)
        rewards, costs = calibrated_learned_scores(folder, world, tokenizer, calibration)
        for row in learned_problem_rows(world, rewards, costs):
            score = row.score
            lines.append(
                f"| {folder} | {row.problem} | {_format(row.multiplier[0] if row.multiplier else None)} | "
                f"{_format(score and score.expected_reward)} | {_format(score and score.expected_cost[0])} | "
                f"{_format(score and score.violation[0])} | {_format(score and score.normalised_lagrangian_gap, 3)} |"
            )
        needed = margin_needed(world, rewards, costs)
        if needed.margin is None:
            lines.append(f"| {folder} | learned problem at d − δ | no δ ≤ {needed.grid_max} makes it feasible | | | | |")
        else:
            score = needed.score
            lines.append(
                f"| {folder} | learned problem at d − δ, δ = {needed.margin:g} (smallest feasible) | — | "
                f"{_format(score.expected_reward)} | {_format(score.expected_cost[0])} | {_format(score.violation[0])} | "
                f"{_format(score.normalised_lagrangian_gap, 3)} |"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="world run or scoreboard stage folders")
    parser.add_argument("--beta", type=float, default=0.5, help="β of the runs (the default job's 0.5)")
    parser.add_argument("--cost-limit", type=float, default=-0.8, help="d of the runs (the default job's -0.8)")
    parser.add_argument("--calibration", choices=("isotonic", "affine"), default="isotonic",
                        help="the scorers.calibration map (the default job's isotonic)")
    args = parser.parse_args(argv)
    print("\n".join(table(args.folders, args.beta, args.cost_limit, args.calibration)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
