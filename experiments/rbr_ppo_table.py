"""Experiment: Rule-Based Rewards in PPO against helpful-only PPO and Safe RLHF's PPO-Lag, on the world.

Issue 13 §1's comparison (the paper's table, Mu et al. 2024: Helpful-PPO F1 95.8, Human-PPO 91.7,
RBR-PPO 97.1), run on the built-in world where every number is exact. Per seed the data, the SFT
reference and the score models are made once (``experiments/bench/exact_optimum.py``'s stages), then
each row is the ``saferl`` command's own path with ``model.from_run`` pointing at them:

==============  ==========================================================================
row             the run (plus ``seed=<k> scorers=<--scorers> learner.iterations=<n>``)
==============  ==========================================================================
helpful PPO     ``multiplier=fixed multiplier.value=0``: PPO on R_rm alone (λ held at 0)
PPO-Lag         ``saferl`` (Safe RLHF: PPO-Lagrangian on R_rm with the harm cost ≤ d)
RBR-PPO         ``learner=rbr learner.rbr.variant=ppo``: PPO on R_rm + R_rbr (fitted)
RBR-PPO-Lag     ``learner=rbr``: PPO-Lagrangian on R_rm + R_rbr (fitted)
RBR-Fixed       ``learner=rbr learner.rbr.variant=ppo learner.rbr.weights=fixed``
==============  ==========================================================================

Columns, mean ± sd over seeds (ddof 1): Not-Unsafe, Not-Overrefuse, F1, Hard-Refusal-Style (percent,
exact under the world's grader), E[c] (the harm cost), the violation ``max(0, E c − d)`` in its own
column, and the normalised Lagrangian gap ``G(π)/G(π_ref)`` against the exact constrained optimum π*
(docs/algorithms.md §8; RBR rows target the optimum of R_rm + R_rbr, not π*, so their gap also
measures how far that objective is from the constrained one). The reference policy's and π*'s
metrics are printed under the rows.

Run: ``python experiments/rbr_ppo_table.py`` (3 seeds; ``--quick``: ``debug=tiny`` stages, the RBR fit at its full size;
default 30 PPO iterations); ``--reuse`` keeps finished runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

ROWS = {
    "helpful PPO": ("multiplier=fixed", "multiplier.value=0.0"),
    "PPO-Lag (Safe RLHF)": (),
    "RBR-PPO": ("learner=rbr", "learner.rbr.variant=ppo"),
    "RBR-PPO-Lag": ("learner=rbr",),
    "RBR-Fixed (PPO)": ("learner=rbr", "learner.rbr.variant=ppo", "learner.rbr.weights=fixed"),
}
FULL_FIT = ["learner.rbr.num_samples=64", "learner.rbr.group_size=8", "learner.rbr.fit_steps=1000"]
RATES = ("not_unsafe", "not_overrefuse", "f1", "hard_refusal_style")


def _board():
    """``experiments/bench/exact_optimum.py`` as a module (its stages and run helpers)."""
    path = Path(__file__).resolve().parent / "bench" / "exact_optimum.py"
    spec = importlib.util.spec_from_file_location("exact_optimum", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _stat(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f} ± —"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def table(records: dict[str, list[dict]], header: str) -> str:
    lines = [
        header,
        "",
        "| policy | seeds | Not-Unsafe % | Not-Overrefuse % | F1 % | Hard-Refusal-Style % | E[c] | "
        "violation | norm. Lagr. gap | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def line(name: str, runs: list[dict], block: str, wall: bool) -> str:
        rates = [_stat([run["behaviour"][block][key] for run in runs], 100.0) for key in RATES]
        scores = [run[block] for run in runs]
        return (
            f"| {name} | {len(runs)} | {' | '.join(rates)} | "
            f"{_stat([s['expected_cost'][0] for s in scores], digits=3)} | "
            f"{_stat([s['violation'][0] for s in scores], digits=3)} | "
            f"{_stat([s['normalised_lagrangian_gap'] for s in scores], digits=3)} | "
            f"{_stat([run['wall_seconds'] for run in runs], digits=0) if wall else '—'} |"
        )

    for name, runs in records.items():
        lines.append(line(name, runs, "trained", wall=True))
    first = next(iter(records.values()))
    lines.append(line("reference π_ref (SFT)", first, "reference", wall=False))
    lines.append(line("exact optimum π*", first, "optimum", wall=False))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. n-1 (default 3)")
    parser.add_argument(
        "--iterations", type=int, default=30, help="PPO iterations per run (default 30)"
    )
    parser.add_argument(
        "--scorers",
        choices=("oracle", "learned"),
        default="oracle",
        help="R_rm and the cost during RL (default oracle: the ground truth)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="debug=tiny stages (small SFT and score models)",
    )
    parser.add_argument("--output", type=Path, default=Path("outputs/rbr_ppo_table"))
    parser.add_argument("--reuse", action="store_true", help="keep finished runs in --output")
    args = parser.parse_args(argv)

    board = _board()
    from saferl.config import validate

    root = args.output.resolve()
    size = ["debug=tiny"] if args.quick else []
    problem = validate(board.compose(["logger=none", *size]))
    records: dict[str, list[dict]] = {name: [] for name in ROWS}
    clock = time.perf_counter()
    for seed in range(args.seeds):
        base = [f"seed={seed}", "logger=none", *size]
        stages = root / f"seed{seed}" / "stages"
        board.prepare_stages(stages, base, False)
        for name, overrides in ROWS.items():
            folder = root / f"seed{seed}" / name.split(" ")[0].lower()
            # The RBR rows fit at the learner's default size (64 samples per prompt, 1000 steps), --quick too.
            fit = FULL_FIT if overrides and overrides[0] == "learner=rbr" else []
            these = [
                *base,
                *overrides,
                *fit,
                f"scorers={args.scorers}",
                f"learner.iterations={args.iterations}",
            ]
            paths = [f"model.from_run={stages}", f"output_dir={folder}"]
            seconds = board.run_one(folder, these, paths, args.reuse)
            summary = json.loads((folder / "summary.json").read_text())
            records[name].append({**summary, "wall_seconds": seconds})
            print(
                f"done: {name}, seed {seed}: F1 {100 * summary['f1']:.2f}, {seconds:.0f} s",
                flush=True,
            )
    header = (
        f"**Rule-Based Rewards on the built-in world** (exact; β = {problem.beta:g}, d = {problem.cost_limit:g}, "
        f"{args.scorers} scorers; seeds 0–{args.seeds - 1}; {args.iterations} PPO iterations of "
        f"{problem.settings.ppo.prompts_per_iteration} prompts, fewer than the default job's 300"
        f"{'; debug=tiny stages (SFT 30 steps, score models 10 steps); RBR fit at its default size (64 samples per prompt, 1000 steps)' if args.quick else ''}). "
        "Mean ± sd over seeds. Rates in percent; E[c] the harm cost, violation max(0, E[c] − d) in its own column; "
        "norm. Lagr. gap G(π)/G(π_ref) against the exact constrained optimum π* (0 at π*, 1 at π_ref). "
        f"Total {time.perf_counter() - clock:.0f} s."
    )
    text = table(records, header)
    root.mkdir(parents=True, exist_ok=True)
    (root / "rbr_ppo_table.md").write_text(text + "\n")
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
