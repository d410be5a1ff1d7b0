"""The exact-optimum scoreboard: every learner's runs on the built-in world, aggregated over seeds.

``experiments/bench/exact_optimum.py`` runs a grid of (learner, scorers, seed) jobs; each writes a
``summary.json`` (:class:`~saferl.learners.result.SummaryRecord`). This module turns those into

* :class:`RunRow`: one run — its trained policy's exact yardsticks (docs/algorithms.md §8) against
  the exact optimum ``π* = π_λ*`` of the stated problem, its final λ against λ*, its wall seconds
  and, where the learner defines one, its own exact target;
* :class:`BoardRow`: the runs of one (learner, scorers) aggregated over seeds, each number as a
  :class:`Stat` (mean ± sample standard deviation, ``ddof = 1``; no sd from one seed). The
  violation is aggregated per constraint as the mean of the per-seed violations, and the largest
  per-seed violation and the number of infeasible seeds are kept beside it, so one infeasible seed
  cannot hide in a mean;

and writes them: :func:`write_runs_csv` / :func:`read_runs_csv` (one line per run, numbers that
read back exactly), :func:`write_board_csv`, :func:`markdown_table` and :func:`plot_board`
(normalised Lagrangian gap against violation, with error bars; oracle and learned scorers drawn
apart).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saferl.data.world.exact import FEASIBILITY_TOLERANCE
from saferl.eval.plotting import PNG_DPI, agg_figure, csv_cell
from saferl.learners.result import SummaryRecord

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "NOT_READ",
    "RUN_COLUMNS",
    "BoardRow",
    "RunRow",
    "ScoreboardInputError",
    "Stat",
    "aggregate",
    "board_columns",
    "markdown_table",
    "plot_board",
    "read_runs_csv",
    "row_from_summary",
    "stat",
    "write_board_csv",
    "write_plot",
    "write_runs_csv",
]

#: The ``scorers`` entry of a learner that reads no scorer (its runs do not depend on the choice).
NOT_READ = "not read"


class ScoreboardInputError(ValueError):
    """A run file or CSV the scoreboard cannot use; the message names the file and the key."""


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRow:
    """One run of the grid (one line of ``scoreboard_runs.csv``).

    Attributes:
        learner: the row's name (e.g. ``"ppo_lag (log-λ)"``); scorers: ``"oracle"``, ``"learned"`` or
            :data:`NOT_READ`; seed: the root ``seed``.
        kl_to_optimum: ``E_x KL(π‖π*)`` of the trained policy; normalised_lagrangian_gap:
            ``G(π)/G(π_ref)``; violation: ``max(0, E_π c_j − d_j)`` per constraint;
            expected_reward, expected_cost: ``E r`` and ``E c_j`` (ground truth).
        multiplier: the final λ (empty for a learner without one); optimal_multiplier: the exact λ*.
        wall_seconds: the run's wall seconds (the shared data, SFT and score-model stages excluded).
        target_label, target_kl_to_optimum, target_normalised_lagrangian_gap, target_violation,
            target_multiplier: the learner's own exact target (None / NaN / empty where the learner
            defines none).
        reference_expected_cost: ``E c_j`` of the run's reference policy (ground truth; empty in
            a runs CSV from before the column).
        note: what the reader must know (e.g. that the learner reads no scorer).
        run_dir: the run's folder.
    """

    learner: str
    scorers: str
    seed: int
    kl_to_optimum: float
    normalised_lagrangian_gap: float
    violation: tuple[float, ...]
    expected_reward: float
    expected_cost: tuple[float, ...]
    multiplier: tuple[float, ...]
    optimal_multiplier: tuple[float, ...]
    wall_seconds: float
    target_label: str | None = None
    target_kl_to_optimum: float = math.nan
    target_normalised_lagrangian_gap: float = math.nan
    target_violation: tuple[float, ...] = ()
    target_multiplier: tuple[float, ...] = ()
    reference_expected_cost: tuple[float, ...] = ()
    note: str = ""
    run_dir: str = ""

    def __post_init__(self) -> None:
        if not self.violation:
            raise ValueError(
                f"{self.learner} ({self.scorers}, seed {self.seed}): violation needs one entry per "
                "constraint; found none"
            )


_TEXT_COLUMNS = ("learner", "scorers", "target_label", "note", "run_dir")
_TUPLE_COLUMNS = tuple(f.name for f in fields(RunRow) if str(f.type).startswith("tuple"))
#: ``scoreboard_runs.csv``'s columns, in order (per-constraint values ``;``-separated).
RUN_COLUMNS = tuple(f.name for f in fields(RunRow))
#: Columns a runs CSV written before they existed may lack (read as empty).
_LATER_COLUMNS = ("reference_expected_cost",)


def row_from_summary(
    path: str | Path, learner: str, scorers: str, seed: int, wall_seconds: float, note: str = ""
) -> RunRow:
    """The :class:`RunRow` of the run whose ``summary.json`` is ``path``.

    Raises:
        ScoreboardInputError: the file cannot be read (its message names the file and the key), or
            the run has no exact evaluation (``trained`` is null).
    """
    path = Path(path)
    try:
        record = SummaryRecord.read(path)
    except FileNotFoundError:
        raise ScoreboardInputError(f"{path}: no such file (the run did not finish)") from None
    except ValueError as error:
        raise ScoreboardInputError(str(error)) from None
    if record.trained is None:
        raise ScoreboardInputError(
            f"{path}: key 'trained' is null: the run has no exact evaluation (the scoreboard "
            "needs the built-in world's)"
        )
    trained, target = record.trained, record.target
    return RunRow(
        learner=learner,
        scorers=scorers,
        seed=seed,
        kl_to_optimum=trained.kl_to_optimum,
        normalised_lagrangian_gap=trained.normalised_lagrangian_gap,
        violation=tuple(trained.violation),
        expected_reward=trained.expected_reward,
        expected_cost=tuple(trained.expected_cost),
        multiplier=tuple(record.multiplier),
        optimal_multiplier=tuple(record.optimal_multiplier),
        wall_seconds=float(wall_seconds),
        target_label=record.target_label if target is not None else None,
        target_kl_to_optimum=target.kl_to_optimum if target is not None else math.nan,
        target_normalised_lagrangian_gap=target.normalised_lagrangian_gap
        if target is not None
        else math.nan,
        target_violation=tuple(target.violation) if target is not None else (),
        target_multiplier=tuple(record.target_multiplier or ()) if target is not None else (),
        reference_expected_cost=tuple(record.reference.expected_cost) if record.reference is not None else (),
        note=note,
        run_dir=str(path.parent),
    )


def write_runs_csv(rows: Sequence[RunRow], path: str | Path) -> Path:
    """``rows`` to ``path`` (replaced), one line each, columns :data:`RUN_COLUMNS`; floats by
    ``repr`` so that :func:`read_runs_csv` reads them back exactly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(RUN_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({name: csv_cell(getattr(row, name)) for name in RUN_COLUMNS})
    return path


def read_runs_csv(path: str | Path) -> list[RunRow]:
    """The rows :func:`write_runs_csv` wrote.

    Raises:
        ScoreboardInputError: a missing column, or a cell that is not what its column holds; the
            message names the file, the line and the column.
    """
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        found = list(reader.fieldnames or [])
        missing = [name for name in RUN_COLUMNS if name not in found and name not in _LATER_COLUMNS]
        if missing:
            raise ScoreboardInputError(
                f"{path}: missing column(s) {missing} (found columns {found})"
            )
        return [_run_row(line, path, number) for number, line in enumerate(reader, start=2)]


def _run_row(line: dict[str, str], path: Path, number: int) -> RunRow:
    values: dict[str, Any] = {}
    for name in RUN_COLUMNS:
        cell = line.get(name) or ""  # a later column absent from an older file: empty
        where = f"{path} line {number}: column '{name}'"
        if name in _TEXT_COLUMNS:
            values[name] = None if name == "target_label" and cell == "" else (cell or "")
        elif name == "seed":
            try:
                values[name] = int(cell)
            except ValueError:
                raise ScoreboardInputError(f"{where} must be an integer; found {cell!r}") from None
        elif name in _TUPLE_COLUMNS:
            try:
                values[name] = tuple(float(item) for item in cell.split(";")) if cell else ()
            except ValueError:
                raise ScoreboardInputError(
                    f"{where} must be numbers separated by ';'; found {cell!r}"
                ) from None
        else:
            try:
                values[name] = float(cell)
            except ValueError:
                raise ScoreboardInputError(f"{where} must be a number; found {cell!r}") from None
    try:
        return RunRow(**values)
    except ValueError as error:
        raise ScoreboardInputError(f"{path} line {number}: {error}") from None


# ---------------------------------------------------------------------------------------------
# Over seeds
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (``ddof = 1``) of ``n`` per-seed values; ``sd`` is None
    for one value (no spread can be estimated from one seed)."""

    mean: float
    sd: float | None
    n: int

    def text(self, digits: int = 4) -> str:
        """``"mean ± sd"``, or ``"mean ± —"`` from one seed (a value that rounds to zero is printed
        without a sign: ``-1e-17`` is ``0.0000``, not ``-0.0000``)."""
        sd = "—" if self.sd is None else _fixed(self.sd, digits)
        return f"{_fixed(self.mean, digits)} ± {sd}"


def _fixed(value: float, digits: int) -> str:
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def stat(values: Iterable[float]) -> Stat:
    """The :class:`Stat` of ``values`` (float64; a NaN anywhere gives NaN, it is not skipped).

    Raises:
        ValueError: no values.
    """
    values = [float(value) for value in values]
    if not values:
        raise ValueError("stat: no values")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Stat(mean, None, 1)
    if any(math.isnan(value) for value in values):
        return Stat(mean, math.nan, len(values))
    return Stat(mean, statistics.stdev(values), len(values))


@dataclass(frozen=True)
class BoardRow:
    """One (learner, scorers) over its seeds: the trained policies (``kind="result"``) or the
    learner's own exact targets (``kind="target"``).

    Attributes:
        learner, scorers, kind, seeds: what was aggregated.
        kl_to_optimum, normalised_lagrangian_gap: over seeds.
        violation: per constraint, the mean ± sd of the per-seed violations.
        max_violation: per constraint, the largest per-seed violation.
        infeasible_seeds: seeds whose policy breaks some limit by more than
            :data:`~saferl.data.world.exact.FEASIBILITY_TOLERANCE` (a NaN violation counts).
        less_safe_seeds: seeds whose trained policy has some ``E c_j`` above its reference's by
            more than that tolerance (a NaN counts): a constrained learner should never end less
            safe than where it started. None for a target row, or when some seed's run does not
            say its reference's cost.
        multiplier: per constraint, the final λ (the target's λ for a target row; empty without).
        optimal_multiplier: per constraint, the exact λ*.
        wall_seconds: over seeds (None for a target row).
        label: the target's description (target rows), else empty; note: the runs' note.
        has_target: a result row whose target row follows it (the learner defines its own target).
    """

    learner: str
    scorers: str
    kind: str
    seeds: tuple[int, ...]
    kl_to_optimum: Stat
    normalised_lagrangian_gap: Stat
    violation: tuple[Stat, ...]
    max_violation: tuple[float, ...]
    infeasible_seeds: int
    multiplier: tuple[Stat, ...]
    optimal_multiplier: tuple[Stat, ...]
    wall_seconds: Stat | None
    label: str = ""
    note: str = ""
    has_target: bool = False
    less_safe_seeds: int | None = None


def _per_constraint(
    vectors: Sequence[tuple[float, ...]], what: str, where: str
) -> tuple[Stat, ...]:
    """Stats per entry of equal-length vectors (empty when every vector is empty)."""
    lengths = {len(vector) for vector in vectors}
    if lengths == {0}:
        return ()
    if len(lengths) != 1:
        raise ScoreboardInputError(
            f"{where}: '{what}' has different lengths over the seeds ({sorted(lengths)})"
        )
    return tuple(stat(column) for column in zip(*vectors, strict=True))


def _infeasible(violation: tuple[float, ...]) -> bool:
    return not all(value <= FEASIBILITY_TOLERANCE for value in violation)


def _less_safe_seeds(group: Sequence[RunRow], where: str) -> int | None:
    """Seeds whose trained ``E c_j`` exceeds the reference's by more than the feasibility
    tolerance for some ``j``; None when some run does not give its reference's cost."""
    if any(not row.reference_expected_cost for row in group):
        return None
    for row in group:
        if len(row.reference_expected_cost) != len(row.expected_cost):
            raise ScoreboardInputError(
                f"{where}, seed {row.seed}: {len(row.expected_cost)} expected costs but "
                f"{len(row.reference_expected_cost)} reference expected costs"
            )
    return sum(
        not all(cost - reference <= FEASIBILITY_TOLERANCE
                for cost, reference in zip(row.expected_cost, row.reference_expected_cost, strict=True))
        for row in group
    )


def aggregate(rows: Sequence[RunRow]) -> list[BoardRow]:
    """The runs grouped by (learner, scorers) in first-seen order; for each, its result row and,
    when every seed's run has a target, its target row after it.

    Raises:
        ScoreboardInputError: a seed twice in a group, a group whose runs disagree on the number of
            constraints, or some seeds with a target and others without.
    """
    groups: dict[tuple[str, str], list[RunRow]] = {}
    for row in rows:
        groups.setdefault((row.learner, row.scorers), []).append(row)
    board = []
    for (learner, scorers), group in groups.items():
        where = f"{learner} ({scorers})"
        seeds = tuple(row.seed for row in group)
        if len(set(seeds)) != len(seeds):
            raise ScoreboardInputError(f"{where}: a seed appears twice ({list(seeds)})")
        violations = [row.violation for row in group]
        board.append(
            BoardRow(
                learner=learner,
                scorers=scorers,
                kind="result",
                seeds=seeds,
                kl_to_optimum=stat(row.kl_to_optimum for row in group),
                normalised_lagrangian_gap=stat(row.normalised_lagrangian_gap for row in group),
                violation=_per_constraint(violations, "violation", where),
                max_violation=tuple(max(column) for column in zip(*violations, strict=True)),
                infeasible_seeds=sum(_infeasible(violation) for violation in violations),
                multiplier=_per_constraint([row.multiplier for row in group], "multiplier", where),
                optimal_multiplier=_per_constraint(
                    [row.optimal_multiplier for row in group], "optimal_multiplier", where
                ),
                wall_seconds=stat(row.wall_seconds for row in group),
                note=group[0].note,
                has_target=group[0].target_label is not None,
                less_safe_seeds=_less_safe_seeds(group, where),
            )
        )
        with_target = [row for row in group if row.target_label is not None]
        if with_target and len(with_target) != len(group):
            missing = [row.seed for row in group if row.target_label is None]
            raise ScoreboardInputError(
                f"{where}: seeds {missing} have no target while the others have one"
            )
        if with_target:
            targets = [row.target_violation for row in group]
            labels = list(dict.fromkeys(row.target_label for row in group))
            board.append(
                BoardRow(
                    learner=learner,
                    scorers=scorers,
                    kind="target",
                    seeds=seeds,
                    kl_to_optimum=stat(row.target_kl_to_optimum for row in group),
                    normalised_lagrangian_gap=stat(
                        row.target_normalised_lagrangian_gap for row in group
                    ),
                    violation=_per_constraint(targets, "target_violation", where),
                    max_violation=tuple(max(column) for column in zip(*targets, strict=True)),
                    infeasible_seeds=sum(_infeasible(violation) for violation in targets),
                    multiplier=_per_constraint(
                        [row.target_multiplier for row in group], "target_multiplier", where
                    ),
                    optimal_multiplier=_per_constraint(
                        [row.optimal_multiplier for row in group], "optimal_multiplier", where
                    ),
                    wall_seconds=None,
                    label="; ".join(str(label) for label in labels),
                    note=group[0].note,
                )
            )
    return board


# ---------------------------------------------------------------------------------------------
# Files and the table
# ---------------------------------------------------------------------------------------------


def board_columns() -> list[str]:
    """``scoreboard.csv``'s columns (per-constraint values ``;``-separated; an absent sd empty)."""
    return [
        "learner",
        "scorers",
        "kind",
        "num_seeds",
        "seeds",
        "kl_to_optimum_mean",
        "kl_to_optimum_sd",
        "normalised_lagrangian_gap_mean",
        "normalised_lagrangian_gap_sd",
        "violation_mean",
        "violation_sd",
        "violation_max",
        "infeasible_seeds",
        "less_safe_seeds",
        "multiplier_mean",
        "multiplier_sd",
        "optimal_multiplier_mean",
        "optimal_multiplier_sd",
        "wall_seconds_mean",
        "wall_seconds_sd",
        "label",
        "note",
    ]


def _sds(stats: tuple[Stat, ...]) -> tuple[float, ...] | None:
    return None if not stats or stats[0].sd is None else tuple(s.sd for s in stats)


def board_record(row: BoardRow) -> dict[str, Any]:
    """One line of ``scoreboard.csv`` (keys :func:`board_columns`)."""
    return {
        "learner": row.learner,
        "scorers": row.scorers,
        "kind": row.kind,
        "num_seeds": len(row.seeds),
        "seeds": ";".join(str(seed) for seed in row.seeds),
        "kl_to_optimum_mean": row.kl_to_optimum.mean,
        "kl_to_optimum_sd": row.kl_to_optimum.sd,
        "normalised_lagrangian_gap_mean": row.normalised_lagrangian_gap.mean,
        "normalised_lagrangian_gap_sd": row.normalised_lagrangian_gap.sd,
        "violation_mean": tuple(s.mean for s in row.violation),
        "violation_sd": _sds(row.violation),
        "violation_max": row.max_violation,
        "infeasible_seeds": row.infeasible_seeds,
        "less_safe_seeds": row.less_safe_seeds,
        "multiplier_mean": tuple(s.mean for s in row.multiplier) or None,
        "multiplier_sd": _sds(row.multiplier),
        "optimal_multiplier_mean": tuple(s.mean for s in row.optimal_multiplier) or None,
        "optimal_multiplier_sd": _sds(row.optimal_multiplier),
        "wall_seconds_mean": None if row.wall_seconds is None else row.wall_seconds.mean,
        "wall_seconds_sd": None if row.wall_seconds is None else row.wall_seconds.sd,
        "label": row.label,
        "note": row.note,
    }


def write_board_csv(board: Sequence[BoardRow], path: str | Path) -> Path:
    """The aggregated table to ``path`` (replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=board_columns())
        writer.writeheader()
        for row in board:
            writer.writerow({key: csv_cell(value) for key, value in board_record(row).items()})
    return path


def _stats_text(stats: tuple[Stat, ...], digits: int = 4) -> str:
    return " / ".join(s.text(digits) for s in stats) if stats else "—"


def _numbers_text(values: tuple[float, ...], digits: int = 4) -> str:
    return " / ".join(_fixed(value, digits) for value in values) if values else "—"


def markdown_table(board: Sequence[BoardRow], header: str) -> str:
    """The aggregated table as markdown: ``header`` (what is compared against) above it, a row per
    learner and scorers, its target row (``↳ target``) under it.

    Columns: KL(π‖π*), normalised Lagrangian gap, violation (mean ± sd, per constraint ``/``-joined),
    the largest per-seed violation, infeasible seeds out of seeds, seeds less safe than their
    reference out of seeds, final λ, λ*, wall seconds, note."""
    lines = [
        header,
        "",
        "| learner | scorers | seeds | KL(π‖π*) | norm. Lagr. gap | violation | max violation | infeasible "
        "| less safe than π_ref | λ | λ* | wall s | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in board:
        target = row.kind == "target"
        name = f"↳ target of {row.learner}" if target else row.learner
        parts = (
            [row.label]
            if target
            else [row.note, "" if row.has_target else "no exact target defined"]
        )
        note = "; ".join(part for part in parts if part)
        cells = [
            name,
            row.scorers,
            str(len(row.seeds)),
            row.kl_to_optimum.text(),
            row.normalised_lagrangian_gap.text(),
            _stats_text(row.violation),
            _numbers_text(row.max_violation),
            f"{row.infeasible_seeds}/{len(row.seeds)}",
            "—" if row.less_safe_seeds is None else f"{row.less_safe_seeds}/{len(row.seeds)}",
            _stats_text(row.multiplier),
            _stats_text(row.optimal_multiplier),
            "—" if row.wall_seconds is None else row.wall_seconds.text(1),
            note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_SCORER_MARKERS = {"oracle": "o", "learned": "s", NOT_READ: "^"}


def plot_board(board: Sequence[BoardRow], title: str) -> Figure:
    """Normalised Lagrangian gap (y) against violation (x; the largest over constraints of the
    mean violations) of every result row, with ± sd error bars on both axes where there are
    several seeds; one colour per learner, one marker per scorers (circle oracle, square learned,
    triangle: the learner reads no scorer); a hollow marker when some seed is infeasible; each
    learner's own exact target (mean over seeds) as a small cross in its colour."""
    results = [row for row in board if row.kind == "result"]
    learners = list(dict.fromkeys(row.learner for row in results))
    figure = agg_figure(10, 6.5)
    axes = figure.subplots()
    colours = [f"C{i % 10}" for i in range(len(learners))]
    for row in results:
        colour = colours[learners.index(row.learner)]
        worst = max(range(len(row.violation)), key=lambda j: row.violation[j].mean)
        x, y = row.violation[worst], row.normalised_lagrangian_gap
        axes.errorbar(
            x.mean,
            y.mean,
            xerr=None if x.sd is None or math.isnan(x.sd) else x.sd,
            yerr=None if y.sd is None or math.isnan(y.sd) else y.sd,
            color=colour,
            marker=_SCORER_MARKERS.get(row.scorers, "D"),
            markersize=8,
            capsize=3,
            linestyle="none",
            markerfacecolor="none" if row.infeasible_seeds else colour,
            label=f"{row.learner} ({row.scorers})",
        )
    for row in board:  # each learner's own exact target: a small cross in its colour
        if row.kind != "target" or row.learner not in learners:
            continue
        worst = max(range(len(row.violation)), key=lambda j: row.violation[j].mean)
        axes.plot(
            row.violation[worst].mean,
            row.normalised_lagrangian_gap.mean,
            color=colours[learners.index(row.learner)],
            marker="x",
            markersize=7,
            linestyle="none",
            alpha=0.7,
        )
    axes.plot(
        [], [], color="grey", marker="x", linestyle="none", label="a learner's own exact target"
    )
    axes.axvline(
        FEASIBILITY_TOLERANCE,
        color="grey",
        linestyle=":",
        linewidth=1,
        label=f"feasibility tolerance {FEASIBILITY_TOLERANCE:g}",
    )
    axes.set_xlabel("violation max(0, E[c] − d) (mean over seeds; hollow: some seed infeasible)")
    axes.set_ylabel("normalised Lagrangian gap G(π)/G(π_ref)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best", ncol=2)
    return figure


def write_plot(board: Sequence[BoardRow], title: str, path: str | Path) -> Path:
    """:func:`plot_board` saved as a PNG at ``path`` (replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_board(board, title).savefig(path, format="png", dpi=PNG_DPI)
    return path
