"""The scoreboard: every learner against the exact constrained optimum of the built-in world.

On the world in exact mode every response is enumerated, so each number below is exact under the
ground truth, not sampled. For each seed the data, the SFT reference and the reward and cost models
are trained once (stages 1–4 of the default job, in ``<output>/seed<k>/stages``); then every run of
the grid (learner × scorers) goes through the ``saferl`` command's own path
(``saferl.cli.run`` on the composed config of the default job plus the row's overrides, with
``model.from_run`` pointing at those stages), writes its ``summary.json`` and is scored by the
world's exact evaluator:

==================  ==============================================================================
row                 the command it is (plus ``seed=<k> scorers=<oracle|learned>``)
==================  ==============================================================================
ppo_lag             ``saferl`` (PPO-Lagrangian, log-λ gradient ascent, §1 streams)
ppo_lag_pid         ``saferl multiplier=pid``
shaping             ``saferl multiplier=fixed multiplier.value=<λ*>``: PPO on the Lagrangian reward
                    ``r − λ*·c`` with λ held at the seed's exact λ* (reward shaping at λ*)
mocan_dpo           ``saferl learner=mocan`` (λ̂ from K reference samples, then DPO on relabelled pairs)
mocan_ppo           ``saferl learner=mocan learner.mocan.stage=ppo``
pecan_consistent    ``saferl learner=pecan`` (reads no scorer)
pecan_published     ``saferl learner=pecan learner.pecan.consistent=false`` (reads no scorer)
dpo                 ``saferl learner=preference`` (helpfulness pairs; reads no scorer)
safe_nca            ``saferl experiment=world_safe_nca`` (reads no scorer)
bfpo                ``saferl experiment=world_bfpo`` (reads no scorer)
cdpo                ``saferl learner=cdpo learner.cdpo.evaluate_rounds=true`` (C-DPO: λ by projected
                    dual ascent between DPO rounds on the current policy's relabelled samples; every
                    round's policy scored exactly, outside its timings)
rbr                 ``saferl learner=rbr`` (PPO-Lag on ``R_rm + R_rbr``, the RBR fitted on graded
                    reference samples; its target is the optimum of ``R_rm + R_rbr``, not π*)
==================  ==============================================================================

and, asked for by name: ``ppo_lag_published`` (``learner.kl_in_cost_stream=true``), ``ppo``
(``multiplier=fixed multiplier.value=0``: unconstrained PPO), ``ipo`` and ``rbr_fixed``
(``learner=rbr learner.rbr.weights=fixed``: the RBR-Fixed ablation).

A learner that reads no scorer (``needs(settings).scorers`` is false) runs once per seed, in the
row ``scorers = not read``, instead of twice with the same result.

Columns (docs/algorithms.md §8), each as mean ± sd over seeds (sd with ddof 1; "—" from one seed):
KL(π‖π*), the normalised Lagrangian gap ``G(π)/G(π_ref)`` with ``G(π) = β E_x KL(π‖π*)`` (never
negative, so a policy that breaks the limit gets no credit for it), the violation
``max(0, E c − d)`` with its largest value over seeds and the number of seeds infeasible beyond the
tolerance, the number of seeds whose policy ends less safe than its reference (E c above the
reference's by more than that tolerance), the final λ against λ*, and the run's wall seconds (the shared stages 1–4 not counted);
under each learner its own exact target (``↳ target``), which separates the choice of objective
from optimisation error.

Writes into ``--output`` (default ``outputs/scoreboard``): ``scoreboard_runs.csv`` (one line per
run), ``scoreboard.csv`` (the aggregated table), ``scoreboard.md`` (the table as printed) and
``scoreboard.png`` (normalised Lagrangian gap against violation, error bars, oracle and learned
scorers drawn apart). ``--reuse`` keeps every finished run (and resumes an unfinished one from its
last checkpoint), so an interrupted scoreboard continues where it stopped.

Run (the full board: 3 seeds × 12 learners, both scorers where read: 57 runs, 40 minutes on a 2-core machine):
``python experiments/bench/exact_optimum.py --reuse``; a smoke check:
``python experiments/bench/exact_optimum.py --quick --seeds 1 --learners ppo_lag,dpo --output /tmp/board``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from saferl.eval.scoreboard import (
    NOT_READ,
    RunRow,
    aggregate,
    markdown_table,
    row_from_summary,
    write_board_csv,
    write_plot,
    write_runs_csv,
)

MARKER = "scoreboard_run.json"  # written after a run's summary.json: the run is finished and timed
STAGES = "stages"


@dataclass(frozen=True)
class Learner:
    """A row of the board: its label, its overrides of the default job, and whether
    ``--iterations`` applies (the PPO loop's ``learner.iterations``)."""

    label: str
    overrides: tuple[str, ...] = ()
    ppo_iterations: bool = False
    at_optimum: bool = False  # multiplier=fixed at the seed's exact λ*
    note: str = ""


LEARNERS = {
    "ppo_lag": Learner("ppo_lag (log-λ)", ppo_iterations=True),
    "ppo_lag_pid": Learner("ppo_lag (PID)", ("multiplier=pid",), ppo_iterations=True),
    "shaping": Learner(
        "PPO, shaping at λ*",
        ("multiplier=fixed",),
        ppo_iterations=True,
        at_optimum=True,
        note="λ held at the seed's exact λ* (multiplier=fixed)",
    ),
    "mocan_dpo": Learner(
        "mocan dpo", ("learner=mocan",), note="λ̂ from the plug-in dual on reference samples"
    ),
    "mocan_ppo": Learner(
        "mocan ppo",
        ("learner=mocan", "learner.mocan.stage=ppo"),
        ppo_iterations=True,
        note="λ̂ from the plug-in dual on reference samples",
    ),
    "pecan_consistent": Learner(
        "pecan (consistent)", ("learner=pecan",), note="λ in implicit units, not λ*'s"
    ),
    "pecan_published": Learner(
        "pecan (published)",
        ("learner=pecan", "learner.pecan.consistent=false"),
        note="λ in implicit units, not λ*'s",
    ),
    "dpo": Learner("dpo (helpful)", ("learner=preference",)),
    "safe_nca": Learner("safe_nca", ("experiment=world_safe_nca",)),
    "bfpo": Learner("bfpo", ("experiment=world_bfpo",)),
    "cdpo": Learner(
        "cdpo (dual ascent)",
        ("learner=cdpo", "learner.cdpo.evaluate_rounds=true"),
        note="λ by projected dual ascent over DPO rounds; target π_λ at its final λ",
    ),
    "rbr": Learner(
        "rbr (PPO-Lag, fitted)",
        ("learner=rbr",),
        ppo_iterations=True,
        note="targets the optimum of R_rm + R_rbr at β (multiplier fixed point), not π*",
    ),
    # Asked for by name only.
    "ppo_lag_published": Learner(
        "ppo_lag (published streams)", ("learner.kl_in_cost_stream=true",), ppo_iterations=True
    ),
    "ppo": Learner(
        "ppo (unconstrained)", ("multiplier=fixed", "multiplier.value=0.0"), ppo_iterations=True
    ),
    "ipo": Learner("ipo (helpful)", ("learner=preference", "learner.preference.loss=ipo")),
    "rbr_fixed": Learner(
        "rbr-fixed (PPO-Lag)",
        ("learner=rbr", "learner.rbr.weights=fixed"),
        ppo_iterations=True,
        note="targets the optimum of R_rm + R_rbr (fixed weights) at β, not π*",
    ),
}
DEFAULT_LEARNERS = (
    "ppo_lag",
    "ppo_lag_pid",
    "shaping",
    "mocan_dpo",
    "mocan_ppo",
    "pecan_consistent",
    "pecan_published",
    "dpo",
    "safe_nca",
    "bfpo",
    "cdpo",
    "rbr",
)
SCORERS = ("oracle", "learned")


def compose(overrides: list[str]):
    """The root config composed with ``overrides`` (Hydra's compose API, as the tests use it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from saferl.conf_tree import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def parse_seeds(text: str) -> list[int]:
    """``"3"``: seeds 0, 1, 2; ``"0,4,7"`` (a comma anywhere): those seeds (``"5,"``: seed 5 alone)."""
    try:
        if "," in text:
            seeds = [int(item) for item in text.split(",") if item.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count (3) or a comma-separated list (0,1,2); found {text!r}"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected at least one seed, each once; found {text!r}")
    return seeds


def parse_names(text: str, allowed, what: str) -> list[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {unknown or text!r}; allowed: {', '.join(allowed)}"
        )
    return names


def prepare_stages(
    folder: Path, base: list[str], need_optimum: bool
) -> tuple[float, list[float] | None]:
    """Stages 1–4 of the default job in ``folder`` (finished ones kept): every score model, so that
    every learner can reuse them. Returns the stages' wall seconds (as first measured) and, when
    asked, the exact λ* of this seed's problem (its SFT policy as the reference)."""
    from saferl.cli import build_setup
    from saferl.config import validate
    from saferl.learners.output import RunOutput
    from saferl.setups.base import Needs

    record_path = folder / "scoreboard_stages.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if record.get("overrides") not in (None, base):
        raise SystemExit(
            f"{record_path}: its stages were made with other overrides ({record['overrides']}) than "
            f"this board's ({base}); choose another --output"
        )
    # An earlier board that needed no optimum recorded it as null: solve it now.
    if "seconds" in record and (not need_optimum or record.get("optimal_multiplier") is not None):
        return record["seconds"], record.get("optimal_multiplier")
    config = validate(compose([*base, f"output_dir={folder}"]))
    clock = time.perf_counter()
    setup = build_setup(
        config, Needs(scorers=True, critics=True, pairs=True), RunOutput(folder, resume=True)
    )
    seconds = record.get("seconds", time.perf_counter() - clock)
    optimal = None
    if need_optimum:
        optimal = [
            float(v)
            for v in setup.evaluator.evaluate(Path(setup.policy.name_or_path)).optimal_multiplier
        ]
    record_path.write_text(
        json.dumps({"overrides": base, "seconds": seconds, "optimal_multiplier": optimal}, indent=2)
        + "\n"
    )
    return seconds, optimal


def run_one(folder: Path, overrides: list[str], paths: list[str], reuse: bool) -> float:
    """One run of the grid through ``saferl.cli.run`` in ``folder``; returns its wall seconds.

    A finished run (its marker present) is kept with ``reuse`` and refused without it; an unfinished
    one is resumed (``resume=auto``) with ``reuse``."""
    from saferl.cli import run
    from saferl.learners.run_state import RUN_MARKERS

    marker = folder / MARKER
    if marker.is_file():
        if not reuse:
            raise SystemExit(
                f"{folder} already holds a finished run; pass --reuse to keep it, or choose another "
                "--output"
            )
        record = json.loads(marker.read_text())
        if record.get("overrides") != overrides:
            raise SystemExit(
                f"{marker}: the run was made with overrides {record.get('overrides')}, not this board's "
                f"{overrides}; choose another --output"
            )
        return float(record["wall_seconds"])
    started = any((folder / name).exists() for name in RUN_MARKERS)
    if started and not reuse:
        raise SystemExit(
            f"{folder} holds an unfinished run; pass --reuse to continue it, or choose another --output"
        )
    cfg = compose([*overrides, *paths, *(["resume=auto"] if started else [])])
    clock = time.perf_counter()
    run(cfg)
    seconds = time.perf_counter() - clock
    marker.write_text(
        json.dumps({"overrides": overrides, "wall_seconds": seconds}, indent=2) + "\n"
    )
    return seconds


def print_dual_predictions(rows: list[RunRow]) -> None:
    """MoCAN's dual: what it predicted for π_λ̂ before training (``result.json``'s ``dual``) against
    what the trained policy realised (ground truth; the scores are in ground-truth units, calibrated
    when learned)."""
    lines = []
    for row in rows:
        result = Path(row.run_dir) / "result.json"
        if not row.learner.startswith("mocan") or not result.is_file():
            continue
        dual = json.loads(result.read_text()).get("dual")
        if not dual:
            continue
        lines.append(
            f"| {row.learner} | {row.scorers} | {row.seed} | {dual['multiplier'][0]:.4f} | "
            f"{row.optimal_multiplier[0]:.4f} | {dual['predicted_reward']:.4f} | {row.expected_reward:.4f} | "
            f"{dual['predicted_cost'][0]:.4f} | {row.expected_cost[0]:.4f} |"
        )
    if lines:
        print()
        print("MoCAN's dual, predicted before training against realised (ground truth):")
        print(
            "| learner | scorers | seed | λ̂ | λ* | predicted E r | realised E r | predicted E c | realised E c |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        print("\n".join(lines))


def _learner_seconds(result: dict) -> float:
    """A run's own learner seconds from its ``result.json`` (the setup's stages and the final
    evaluation left out; C-DPO's per-round evaluations are not in its rounds' seconds)."""
    details = result.get("details", {})
    if details.get("rounds"):
        return float(details["rounds"][-1]["cumulative_seconds"])
    # MoCAN's own steps (mocan.run): reference samples and scores, the dual, the alignment.
    return float(
        sum(result.get("seconds", {}).get(key, 0.0) for key in ("sample", "dual", "align"))
    )


def cdpo_rounds_table(rows: list[RunRow]) -> str:
    """C-DPO round by round against MoCAN's one-shot λ̂ (same seed and scorers): each round's λ, the
    sampled E[c] it stepped on, the samples and learner seconds so far and the exact normalised
    Lagrangian gap and violation of the round's policy; then the rounds, samples and seconds C-DPO
    needed to reach MoCAN-DPO's gap ("not reached" within its rounds). Empty without a C-DPO run."""
    mocan = {
        (row.seed, row.scorers): row for row in rows if row.learner == LEARNERS["mocan_dpo"].label
    }
    lines = []
    for row in rows:
        path = Path(row.run_dir) / "result.json"
        if row.learner != LEARNERS["cdpo"].label or not path.is_file():
            continue
        rounds = json.loads(path.read_text())["details"]["rounds"]
        other = mocan.get((row.seed, row.scorers))
        reference = None
        if other is not None and (Path(other.run_dir) / "result.json").is_file():
            result = json.loads((Path(other.run_dir) / "result.json").read_text())
            details = result["details"]
            reference = (
                other.normalised_lagrangian_gap,
                details["num_prompts"] * details["num_samples"],
                _learner_seconds(result),
                other.multiplier[0] if other.multiplier else math.nan,
            )
            lines.append(
                f"| mocan dpo (one shot) | {row.scorers} | {row.seed} | 1 | {reference[3]:.4f} | — | "
                f"{reference[1]} | {reference[2]:.1f} | {reference[0]:.4f} | "
                f"{other.violation[0]:.4f} |"
            )
        reached = None
        for record in rounds:
            gap = record.get("normalised_lagrangian_gap", math.nan)
            if reached is None and reference is not None and gap <= reference[0]:
                reached = record
            lines.append(
                f"| cdpo round {record['round']} | {row.scorers} | {row.seed} | {record['round']} | "
                f"{record['multiplier'][0]:.4f} | {record['expected_cost'][0]:.4f} | {record['cumulative_samples']} | "
                f"{record['cumulative_seconds']:.1f} | {gap:.4f} | {record.get('violation', [math.nan])[0]:.4f} |"
            )
        if reference is not None:
            lines.append(
                f"| **cdpo to reach mocan's gap** | {row.scorers} | {row.seed} | "
                + (
                    f"{reached['round']} | {reached['multiplier'][0]:.4f} | — | {reached['cumulative_samples']} | "
                    f"{reached['cumulative_seconds']:.1f} | {reached['normalised_lagrangian_gap']:.4f} | — |"
                    if reached is not None
                    else f"not reached in {len(rounds)} | — | — | — | — | — | — |"
                )
            )
    if not lines:
        return ""
    return "\n".join(
        [
            "C-DPO round by round against MoCAN's one-shot λ̂ (same seed and scorers). λ: after the round's step; "
            "E c: the sampled cost it stepped on; samples and learner s: cumulative (the setup's stages, the final "
            "and the per-round evaluations left out; MoCAN: its sampling, dual and DPO); gap and violation: exact, "
            "of the round's policy.",
            "| run | scorers | seed | rounds | λ | sampled E c | samples | learner s | norm. Lagr. gap | violation |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *lines,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--learners",
        type=lambda text: parse_names(text, LEARNERS, "learner"),
        default=list(DEFAULT_LEARNERS),
        help=f"comma-separated rows (default: {','.join(DEFAULT_LEARNERS)}; also "
        f"{','.join(name for name in LEARNERS if name not in DEFAULT_LEARNERS)})",
    )
    parser.add_argument(
        "--scorers",
        type=lambda text: parse_names(text, SCORERS, "scorers"),
        default=list(SCORERS),
        help="comma-separated: oracle, learned (default both)",
    )
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        default=[0, 1, 2],
        help="a count (3: seeds 0,1,2; the default) or a comma-separated list (0,4 or 5,)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("outputs/scoreboard"),
        help="where the runs and the board go (default: outputs/scoreboard)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the finished runs in --output and resume unfinished ones",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke size: debug=tiny (small data and stages, 2 PPO iterations, 4 DPO steps)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="learner.iterations of the PPO rows (default: the default job's 300; 2 with --quick)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further Hydra override for every run (repeatable; every row's config must have the key), e.g. cost_limit=-1.0",
    )
    args = parser.parse_args(argv)

    from saferl.cli import learner_module
    from saferl.config import validate

    root = args.output.resolve()
    size = [*(["debug=tiny"] if args.quick else []), *args.override]
    rows: list[RunRow] = []
    failures: list[str] = []
    stage_seconds: dict[int, float] = {}
    problem = validate(compose(["logger=none", *size]))
    need_optimum = any(LEARNERS[name].at_optimum for name in args.learners)
    for seed in args.seeds:
        base = [f"seed={seed}", "logger=none", *size]
        stages = root / f"seed{seed}" / STAGES
        stage_seconds[seed], optimal = prepare_stages(stages, base, need_optimum)
        for name in args.learners:
            learner = LEARNERS[name]
            overrides = [*base, *learner.overrides]
            if learner.at_optimum:
                overrides.append(f"multiplier.value={optimal[0]!r}")
            if learner.ppo_iterations and args.iterations is not None:
                overrides.append(f"learner.iterations={args.iterations}")
            config = validate(compose([*overrides, f"model.from_run={stages}"]))
            reads_scorers = learner_module(config.learner).needs(config.settings).scorers
            for scorers in args.scorers if reads_scorers else [NOT_READ]:
                folder = root / f"seed{seed}" / name / ("runs" if scorers == NOT_READ else scorers)
                these = [*overrides, f"scorers={scorers}"] if reads_scorers else overrides
                paths = [f"model.from_run={stages}", f"output_dir={folder}"]
                note = "; ".join(
                    part
                    for part in (
                        "" if reads_scorers else "scorers not read (one run per seed)",
                        learner.note,
                    )
                    if part
                )
                try:
                    seconds = run_one(folder, these, paths, args.reuse)
                    row = row_from_summary(
                        folder / "summary.json", learner.label, scorers, seed, seconds, note
                    )
                except SystemExit:
                    raise
                # One failed run does not lose the others: its traceback here, its name at the end.
                except Exception:
                    traceback.print_exc()
                    failures.append(f"{learner.label} ({scorers}), seed {seed}: {folder}")
                    continue
                rows.append(row)
                print(
                    f"done: {learner.label} ({scorers}), seed {seed}: norm. Lagr. gap "
                    f"{row.normalised_lagrangian_gap:.4f}, violation {row.violation[0]:.4f}, {seconds:.1f} s",
                    flush=True,
                )

    board = aggregate(rows)
    limits = problem.cost_limit if isinstance(problem.cost_limit, tuple) else (problem.cost_limit,)
    size_text = " ".join(size) if size else "the default job's settings (conf/)"
    header = (
        f"**Compared against the exact optimum π\\* = π_λ\\* of the stated problem**: max E[r] − β·KL(π‖π_ref) "
        f"s.t. E[c] ≤ d with β = {problem.beta:g}, d = {', '.join(f'{d:g}' for d in limits)}, the world's "
        "ground-truth reward and cost and each seed's SFT policy as π_ref, computed by enumerating every "
        f"response. Seeds {', '.join(str(s) for s in args.seeds)}; size: {size_text}"
        f"{f', PPO iterations {args.iterations}' if args.iterations is not None else ''}. Each number is mean ± "
        "sd over seeds (sd with ddof 1; — from one seed). Norm. Lagr. gap = G(π)/G(π_ref) = KL(π‖π\\*)/"
        "KL(π_ref‖π\\*): 0 at π\\*, 1 at the reference, never negative. Violation = max(0, E[c] − d) in "
        "ground-truth cost units; max violation: the largest over seeds; infeasible: seeds whose violation "
        "exceeds 1e-3. λ: the final multiplier against the exact λ\\*. Wall s: the run alone (data, SFT and "
        f"score models are shared per seed: {', '.join(f'{v:.0f}' for v in stage_seconds.values())} s). "
        "↳ target: the learner's own exact target under its settings (learned scorers: on the calibrated "
        "learned scores), scored the same way."
    )
    table = markdown_table(board, header)
    root.mkdir(parents=True, exist_ok=True)
    paths = [
        write_runs_csv(rows, root / "scoreboard_runs.csv"),
        write_board_csv(board, root / "scoreboard.csv"),
    ]
    (root / "scoreboard.md").write_text(table + "\n")
    paths.append(root / "scoreboard.md")
    if board:
        title = (
            f"Exact-optimum scoreboard: β {problem.beta:g}, d {', '.join(f'{d:g}' for d in limits)}, "
            f"seeds {', '.join(str(s) for s in args.seeds)}"
        )
        paths.append(write_plot(board, title, root / "scoreboard.png"))
    print()
    print(table)
    print_dual_predictions(rows)
    rounds_table = cdpo_rounds_table(rows)
    if rounds_table:
        (root / "cdpo_rounds.md").write_text(rounds_table + "\n")
        paths.append(root / "cdpo_rounds.md")
        print()
        print(rounds_table)
    print()
    for path in paths:
        print(f"wrote {path}")
    if failures:
        print("failed runs (not in the table):", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
