"""The exact-optimum scoreboard (``saferl.eval.scoreboard`` and ``experiments/bench/exact_optimum.py``):
mean ± sd over seeds, a violation no aggregate can hide, the CSV round trip, the table, the plot,
and errors that name the file and the key; the bench's grid reads its rows from the real config."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from saferl.data.world.exact import FEASIBILITY_TOLERANCE, PolicyScore
from saferl.eval.scoreboard import (
    NOT_READ,
    RunRow,
    ScoreboardInputError,
    Stat,
    aggregate,
    board_record,
    markdown_table,
    plot_board,
    read_runs_csv,
    row_from_summary,
    stat,
    write_board_csv,
    write_plot,
    write_runs_csv,
)
from saferl.learners.result import SummaryRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LIMIT = -0.8


def score(cost: float, kl_to_optimum: float, gap: float) -> PolicyScore:
    """A trained policy's exact score at d = −0.8 (violation from the cost, as the world computes it)."""
    return PolicyScore(
        expected_reward=1.25,
        expected_cost=(cost,),
        kl=0.5,
        objective=1.0,
        safe_rate=0.875,
        kl_to_optimum=kl_to_optimum,
        lagrangian_gap=0.5 * kl_to_optimum,
        normalised_lagrangian_gap=gap,
        violation=(max(0.0, cost - LIMIT),),
    )


def write_summary(
    folder: Path,
    trained: PolicyScore | None,
    target: PolicyScore | None = None,
    multiplier: tuple[float, ...] = (0.75,),
) -> Path:
    """``summary.json`` as the CLI writes it (:meth:`SummaryRecord.to_dict`)."""
    record = SummaryRecord(
        method="ppo_lag",
        setup="world",
        beta=0.5,
        cost_limit=(LIMIT,),
        trained=trained,
        headline=0.1,
        target=target,
        target_label=None if target is None else "π* within the cap",
        target_multiplier=None if target is None else (0.6875,),
        multiplier=multiplier,
        optimal_multiplier=(0.6875,),
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "summary.json"
    path.write_text(json.dumps(record.to_dict(), indent=2))
    return path


def run_row(
    seed: int,
    violation: float | tuple[float, ...],
    gap: float = 0.1,
    learner: str = "ppo_lag (log-λ)",
    scorers: str = "oracle",
    **changes,
) -> RunRow:
    violations = violation if isinstance(violation, tuple) else (violation,)
    values = dict(
        learner=learner,
        scorers=scorers,
        seed=seed,
        kl_to_optimum=0.2 * gap,
        normalised_lagrangian_gap=gap,
        violation=violations,
        expected_reward=1.0,
        expected_cost=tuple(LIMIT + v for v in violations),
        multiplier=(0.7,),
        optimal_multiplier=(0.6875,),
        wall_seconds=100.0 + seed,
    )
    return RunRow(**{**values, **changes})


# ---------------------------------------------------------------------------------------------
# mean ± sd
# ---------------------------------------------------------------------------------------------


def test_stat_is_the_mean_and_the_ddof_1_standard_deviation_in_float64():
    # Exact by hand: mean 2.5, sample variance ((1.5² + 0.5²)·2)/3 = 5/3.
    assert stat([1.0, 2.0, 3.0, 4.0]) == Stat(2.5, math.sqrt(5 / 3), 4)
    values = np.array([0.123456789, 0.987654321, 0.5, 0.0003, 0.25], dtype=np.float64)
    result = stat(values.tolist())
    assert result.mean == pytest.approx(float(np.mean(values)), rel=1e-15, abs=0)
    assert result.sd == pytest.approx(float(np.std(values, ddof=1)), rel=1e-14, abs=0)
    # The population sd (ddof 0) is a different number: the test would see it.
    assert result.sd != pytest.approx(float(np.std(values, ddof=0)), rel=1e-6)


def test_one_seed_has_no_sd_and_prints_a_dash_and_a_nan_is_not_skipped():
    one = stat([0.125])
    assert (one.mean, one.sd, one.n) == (0.125, None, 1)
    assert one.text() == "0.1250 ± —"
    assert stat([1.0, 3.0]).text(2) == f"2.00 ± {math.sqrt(2):.2f}"
    assert stat([-1e-17, 1e-17]).text() == "0.0000 ± 0.0000"  # no "-0.0000"
    assert stat([-1e-17]).text() == "0.0000 ± —" and stat([-0.25]).text() == "-0.2500 ± —"
    nan = stat([0.5, math.nan, 0.25])
    assert math.isnan(nan.mean) and math.isnan(nan.sd)
    with pytest.raises(ValueError, match="no values"):
        stat([])


# ---------------------------------------------------------------------------------------------
# The violation cannot hide
# ---------------------------------------------------------------------------------------------


def test_one_infeasible_seed_shows_in_the_mean_the_max_and_the_count():
    # Seed 0 breaks the limit by 0.05; the mean cost of the three (−0.8167) is below d, so a violation
    # computed from the mean cost would be 0 — the board averages the per-seed violations instead.
    rows = [
        run_row(0, 0.05),
        run_row(1, 0.0, expected_cost=(-0.85,)),
        run_row(2, 0.0, expected_cost=(-0.85,)),
    ]
    assert max(0.0, float(np.mean([r.expected_cost[0] for r in rows])) - LIMIT) == 0.0
    (result,) = aggregate(rows)
    assert result.violation[0].mean == pytest.approx(0.05 / 3, rel=1e-15)
    assert result.violation[0].sd == pytest.approx(
        float(np.std([0.05, 0.0, 0.0], ddof=1)), rel=1e-14
    )
    assert result.max_violation == (0.05,)
    assert result.infeasible_seeds == 1
    table = markdown_table([result], "header")
    line = table.splitlines()[-1]
    assert "| 0.0500 | 1/3 |" in line and "0.0167 ± 0.0289" in line


def test_a_violation_within_the_tolerance_is_feasible_and_just_beyond_it_is_not():
    rows = [
        run_row(0, FEASIBILITY_TOLERANCE),
        run_row(1, 0.0),
        run_row(2, FEASIBILITY_TOLERANCE * 1.001),
    ]
    (result,) = aggregate(rows)
    assert result.infeasible_seeds == 1
    assert aggregate([run_row(0, math.nan)])[0].infeasible_seeds == 1  # unknown is not feasible


def test_rows_group_by_learner_and_scorers_with_their_target_rows_after():
    target = dict(
        target_label="π* within the cap",
        target_kl_to_optimum=0.0,
        target_normalised_lagrangian_gap=0.0,
        target_violation=(0.0,),
        target_multiplier=(0.6875,),
    )
    rows = [run_row(s, 0.0, gap=0.1 * (s + 1), **target) for s in range(3)]
    rows += [run_row(s, 0.02, scorers="learned", gap=0.5, **target) for s in range(2)]
    rows += [
        run_row(
            0,
            0.3,
            learner="dpo (helpful)",
            scorers=NOT_READ,
            multiplier=(),
            note="scorers not read",
        )
    ]
    board = aggregate(rows)
    assert [(b.learner, b.scorers, b.kind) for b in board] == [
        ("ppo_lag (log-λ)", "oracle", "result"),
        ("ppo_lag (log-λ)", "oracle", "target"),
        ("ppo_lag (log-λ)", "learned", "result"),
        ("ppo_lag (log-λ)", "learned", "target"),
        ("dpo (helpful)", NOT_READ, "result"),
    ]
    assert board[0].normalised_lagrangian_gap.mean == pytest.approx(0.2, rel=1e-15)
    assert board[0].wall_seconds == stat([100.0, 101.0, 102.0])
    assert board[1].normalised_lagrangian_gap == Stat(0.0, 0.0, 3) and board[1].wall_seconds is None
    assert board[1].multiplier == (Stat(0.6875, 0.0, 3),) and board[1].label == "π* within the cap"
    assert board[4].multiplier == () and board[4].wall_seconds == Stat(100.0, None, 1)
    table = markdown_table(board, "**Compared against the exact optimum π\\***").splitlines()
    assert table[0] == "**Compared against the exact optimum π\\***"
    assert table[5].startswith("| ↳ target of ppo_lag (log-λ) | oracle | 3 | 0.0000 ± 0.0000 |")
    assert table[5].endswith("| — | π* within the cap |")
    assert table[4].endswith("| 101.0 ± 1.0 |  |")  # a target row follows: nothing to say
    assert (
        table[-1].startswith("| dpo (helpful) | not read | 1 |")
        and "| 1/1 | — | — | 0.6875 ± — | 100.0 ± — | scorers not read; no exact target defined |"
        in table[-1]
    )


def test_seeds_that_end_less_safe_than_their_reference_are_counted_beyond_the_tolerance():
    """A constrained learner should never end less safe than its reference: the board counts the
    seeds whose trained E c_j exceeds the reference's by more than the feasibility tolerance, for
    any j, and says "—" when a run does not give its reference's cost (an older runs CSV)."""
    reference = (LIMIT + 0.1, 0.02)
    rows = [
        run_row(0, (0.0, 0.0), expected_cost=(LIMIT + 0.1 + FEASIBILITY_TOLERANCE / 2, 0.0),
                reference_expected_cost=reference),  # within the tolerance: not less safe
        run_row(1, (0.0, 0.0), expected_cost=(LIMIT + 0.1 + 2 * FEASIBILITY_TOLERANCE, 0.0),
                reference_expected_cost=reference),  # beyond it on the first cost
        run_row(2, (0.0, 0.0), expected_cost=(LIMIT - 0.5, 0.03), reference_expected_cost=reference),
    ]
    (board,) = aggregate(rows)
    assert board.less_safe_seeds == 2
    table = markdown_table([board], "header").splitlines()
    assert "| less safe than π_ref |" in table[2] and "| 0/3 | 2/3 |" in table[-1]
    assert board_record(board)["less_safe_seeds"] == 2
    older = aggregate([run_row(0, 0.0), run_row(1, 0.0)])[0]
    assert older.less_safe_seeds is None and "| 0/2 | — |" in markdown_table([older], "h").splitlines()[-1]
    with pytest.raises(ScoreboardInputError, match=r"seed 0: 2 expected costs but 1 reference expected costs"):
        aggregate([run_row(0, (0.0, 0.0), reference_expected_cost=(0.1,))])


def test_a_runs_csv_from_before_the_reference_cost_column_still_reads(tmp_path):
    rows = [run_row(0, 0.0, reference_expected_cost=(LIMIT + 0.2,)), run_row(1, 0.01)]
    path = write_runs_csv(rows, tmp_path / "runs.csv")
    # The new column round-trips, empty where absent.
    assert [row.reference_expected_cost for row in read_runs_csv(path)] == [(LIMIT + 0.2,), ()]
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("reference_expected_cost")
    older = tmp_path / "older.csv"
    older.write_text("\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != column)
                               for line in lines) + "\n")
    assert [row.reference_expected_cost for row in read_runs_csv(older)] == [(), ()]


def test_aggregation_refuses_a_repeated_seed_mixed_constraints_and_a_partial_target():
    with pytest.raises(
        ScoreboardInputError,
        match=r"ppo_lag \(log-λ\) \(oracle\): a seed appears twice \(\[0, 0\]\)",
    ):
        aggregate([run_row(0, 0.0), run_row(0, 0.1)])
    with pytest.raises(ScoreboardInputError, match="'violation' has different lengths"):
        aggregate([run_row(0, 0.0), run_row(1, (0.0, 0.1))])
    with pytest.raises(ScoreboardInputError, match=r"seeds \[1\] have no target"):
        aggregate([run_row(0, 0.0, target_label="t", target_violation=(0.0,)), run_row(1, 0.0)])


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def same(a: RunRow, b: RunRow) -> bool:
    """Field by field, NaN equal to NaN."""

    def equal(x, y):
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        return x == y

    return all(equal(getattr(a, f.name), getattr(b, f.name)) for f in fields(RunRow))


def test_the_runs_csv_reads_back_exactly(tmp_path):
    rows = [
        run_row(
            0,
            0.1 + 0.2,
            gap=1 / 3,
            note="a note, with a comma; and | a bar",
            run_dir="/x/seed0/ppo_lag/oracle",
            target_label="the fixed point (β(1+λ))",
            target_kl_to_optimum=0.0123456789012345678,
            target_normalised_lagrangian_gap=2 / 7,
            target_violation=(1e-17,),
            target_multiplier=(0.72,),
        ),
        run_row(
            1, 0.0, learner="dpo (helpful)", scorers=NOT_READ, multiplier=()
        ),  # no λ, no target
        run_row(2, (0.0, 0.015), expected_cost=(-0.9, 0.035), multiplier=(0.6, 0.25)),  # m = 2
    ]
    path = write_runs_csv(rows, tmp_path / "runs.csv")
    back = read_runs_csv(path)
    assert len(back) == 3 and all(same(a, b) for a, b in zip(rows, back, strict=True))
    assert back[1].target_label is None and math.isnan(back[1].target_kl_to_optimum)
    assert back[1].multiplier == () and back[2].violation == (0.0, 0.015)
    assert back[0].violation == (0.1 + 0.2,)  # 0.30000000000000004, not 0.3


def test_reading_a_bad_runs_csv_names_the_file_the_line_and_the_column(tmp_path):
    path = write_runs_csv([run_row(0, 0.0), run_row(1, 0.0)], tmp_path / "runs.csv")
    text = path.read_text().splitlines()
    cells = text[2].split(",")
    header = text[0].split(",")
    cells[header.index("violation")] = "lots"
    (tmp_path / "bad.csv").write_text("\n".join([text[0], text[1], ",".join(cells)]) + "\n")
    with pytest.raises(
        ScoreboardInputError,
        match=r"bad\.csv line 3: column 'violation' must be numbers separated by ';'; found 'lots'",
    ):
        read_runs_csv(tmp_path / "bad.csv")
    header.remove("wall_seconds")
    (tmp_path / "short.csv").write_text(",".join(header) + "\n")
    with pytest.raises(
        ScoreboardInputError, match=r"short\.csv: missing column\(s\) \['wall_seconds'\]"
    ):
        read_runs_csv(tmp_path / "short.csv")
    cells = text[1].split(",")
    cells[text[0].split(",").index("violation")] = ""
    (tmp_path / "empty.csv").write_text("\n".join([text[0], ",".join(cells)]) + "\n")
    with pytest.raises(
        ScoreboardInputError, match=r"empty\.csv line 2: .*violation needs one entry per constraint"
    ):
        read_runs_csv(tmp_path / "empty.csv")


def test_the_board_csv_has_every_number_and_an_empty_sd_from_one_seed(tmp_path):
    board = aggregate([run_row(0, 0.05), run_row(1, 0.0), run_row(0, 0.01, scorers="learned")])
    path = write_board_csv(board, tmp_path / "board.csv")
    with path.open() as handle:
        lines = list(csv.DictReader(handle))
    assert [line["scorers"] for line in lines] == ["oracle", "learned"]
    assert lines[0]["violation_mean"] == repr(0.025) and lines[0]["violation_max"] == repr(0.05)
    assert float(lines[0]["violation_sd"]) == pytest.approx(
        float(np.std([0.05, 0.0], ddof=1)), rel=1e-15
    )
    assert lines[0]["infeasible_seeds"] == "1" and lines[0]["seeds"] == "0;1"
    assert lines[1]["violation_sd"] == "" and lines[1]["normalised_lagrangian_gap_sd"] == ""
    assert lines[1]["infeasible_seeds"] == "1"


def test_a_row_from_summary_json_and_its_errors_name_the_file_and_the_key(tmp_path):
    path = write_summary(tmp_path / "run", score(-0.75, 0.2, 0.4), target=score(-0.8, 0.0, 0.0))
    row = row_from_summary(path, "ppo_lag (log-λ)", "learned", 2, 123.5, note="n")
    assert (
        row.violation == pytest.approx((0.05,), abs=1e-15) and row.normalised_lagrangian_gap == 0.4
    )
    assert (row.kl_to_optimum, row.multiplier, row.optimal_multiplier) == (0.2, (0.75,), (0.6875,))
    assert (row.target_label, row.target_multiplier, row.target_violation) == (
        "π* within the cap",
        (0.6875,),
        (0.0,),
    )
    assert (row.seed, row.wall_seconds, row.run_dir) == (2, 123.5, str(tmp_path / "run"))
    plain = row_from_summary(
        write_summary(tmp_path / "plain", score(-0.9, 0.3, 0.6)), "x", "oracle", 0, 1.0
    )
    assert (
        plain.target_label is None
        and plain.target_violation == ()
        and math.isnan(plain.target_kl_to_optimum)
    )

    with pytest.raises(ScoreboardInputError, match=r"nowhere/summary\.json: no such file"):
        row_from_summary(tmp_path / "nowhere" / "summary.json", "x", "oracle", 0, 1.0)
    data = json.loads(path.read_text())
    del data["trained"]["violation"]
    (tmp_path / "broken.json").write_text(json.dumps(data))
    with pytest.raises(
        ScoreboardInputError, match=r"broken\.json: missing required key 'trained\.violation'"
    ):
        row_from_summary(tmp_path / "broken.json", "x", "oracle", 0, 1.0)
    no_eval = write_summary(tmp_path / "hub", None)
    with pytest.raises(ScoreboardInputError, match=r"hub/summary\.json: key 'trained' is null"):
        row_from_summary(no_eval, "x", "oracle", 0, 1.0)


def test_the_plot_draws_each_result_with_error_bars_and_an_infeasible_one_hollow(tmp_path):
    board = aggregate(
        [
            run_row(0, 0.0),
            run_row(1, 0.0005),
            run_row(0, 0.05, scorers="learned"),
            run_row(1, 0.0, scorers="learned"),
            run_row(0, 0.3, learner="dpo", scorers=NOT_READ),
        ]
    )
    figure = plot_board(board, "title")
    (axes,) = figure.axes
    markers = {  # each errorbar's container carries the label; its first line is the marker
        container.get_label(): container.lines[0] for container in axes.containers
    }
    assert set(markers) == {
        "ppo_lag (log-λ) (oracle)",
        "ppo_lag (log-λ) (learned)",
        f"dpo ({NOT_READ})",
    }
    assert markers["ppo_lag (log-λ) (oracle)"].get_marker() == "o"
    assert markers["ppo_lag (log-λ) (learned)"].get_marker() == "s"
    assert markers["ppo_lag (log-λ) (learned)"].get_markerfacecolor() == "none"  # seed 0 infeasible
    assert markers["ppo_lag (log-λ) (oracle)"].get_markerfacecolor() != "none"
    assert markers["ppo_lag (log-λ) (learned)"].get_xdata()[0] == pytest.approx(0.025, rel=1e-15)
    # No target in these rows: no cross drawn but the legend's.
    crosses = [
        line for line in axes.get_lines() if line.get_marker() == "x" and len(line.get_xdata())
    ]
    assert crosses == []
    targeted = aggregate(
        [
            run_row(
                0,
                0.02,
                target_label="t",
                target_violation=(0.004,),
                target_normalised_lagrangian_gap=0.125,
            )
        ]
    )
    (cross,) = [
        line
        for line in plot_board(targeted, "t").axes[0].get_lines()
        if line.get_marker() == "x" and len(line.get_xdata())
    ]
    assert (cross.get_xdata()[0], cross.get_ydata()[0]) == (0.004, 0.125)
    path = write_plot(board, "title", tmp_path / "board.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


# ---------------------------------------------------------------------------------------------
# The bench's grid
# ---------------------------------------------------------------------------------------------


def bench():
    path = Path(__file__).resolve().parents[2] / "experiments" / "bench" / "exact_optimum.py"
    spec = importlib.util.spec_from_file_location("exact_optimum_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_bench_reads_seeds_and_names_and_its_rows_say_which_read_no_scorer():
    import argparse

    from saferl.cli import learner_module
    from saferl.config import validate

    module = bench()
    assert module.parse_seeds("3") == [0, 1, 2] and module.parse_seeds("0,4") == [0, 4]
    assert module.parse_seeds("5,") == [5]
    for bad in ("x", "1,1", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            module.parse_seeds(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown learner"):
        module.parse_names("ppo_lag,nope", module.LEARNERS, "learner")
    reads = {}
    for name in module.DEFAULT_LEARNERS:
        learner = module.LEARNERS[name]
        overrides = [
            "logger=none",
            *learner.overrides,
            *(["multiplier.value=0.6875"] if learner.at_optimum else []),
        ]
        config = validate(module.compose(overrides))
        reads[name] = learner_module(config.learner).needs(config.settings).scorers
        if name == "shaping":
            assert config.settings.multiplier == {"kind": "fixed", "value": 0.6875}
        if name == "mocan_ppo":
            assert config.settings.stage == "ppo"
    assert [name for name, read in reads.items() if not read] == [
        "pecan_consistent",
        "pecan_published",
        "dpo",
        "safe_nca",
        "bfpo",
    ]
