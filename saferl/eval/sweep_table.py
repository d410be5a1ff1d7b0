"""The sweep's table: one row of plain values per job (the rows of ``sweep_summary.csv``) and the
same jobs as a rich table on the console.

The sweep is read by :mod:`saferl.eval.sweep_load`; the CSV and the plot are written by
:func:`saferl.eval.sweep_summary.write_sweep_summary`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from saferl.data.world.exact import FEASIBILITY_TOLERANCE
from saferl.eval.sweep_load import SCORE_BLOCKS, SCORE_KEYS, Scores, SweepSummary

__all__ = ["sweep_columns", "sweep_table", "print_sweep_summary"]


def sweep_columns(summary: SweepSummary) -> list[str]:
    """The keys of :func:`sweep_table`'s rows, in ``sweep_summary.csv``'s column order."""
    blocks = [f"{block}_{name}" for block in SCORE_BLOCKS for name in SCORE_KEYS]
    return [
        "job",
        *(f"override.{key}" for key in summary.swept_keys),
        "status",
        "run_dir",
        "method",
        "beta",
        "cost_limit",
        "headline",
        *blocks,
        "multiplier",
        "optimal_multiplier",
        "predicted_frontier_csv",
    ]


def sweep_table(summary: SweepSummary) -> list[dict[str, Any]]:
    """One dict per job, in job order, with the keys of ``sweep_summary.csv``.

    Keys: ``job``; ``override.<key>`` per swept key (strings); ``status``; ``run_dir`` (relative
    to the sweep folder); ``method``; ``beta``; ``cost_limit``; ``headline``;
    ``<block>_<score>`` for each block of ``trained``/``reference``/``optimum`` and each of
    :data:`SCORE_KEYS`; ``multiplier``; ``optimal_multiplier``; ``predicted_frontier_csv``.
    Numbers are floats; lists of numbers (limits, multipliers) are tuples; absent values are
    ``None``.
    """
    rows = []
    for run in summary.runs:
        row: dict[str, Any] = dict.fromkeys(sweep_columns(summary))
        row["job"] = run.job
        row.update({f"override.{key}": value for key, value in run.swept.items()})
        row["status"] = run.status
        row["run_dir"] = _relative(run.run_dir, summary.folder)
        result = run.summary
        if result is not None:
            row.update(
                method=result.method,
                beta=result.beta,
                cost_limit=result.cost_limit,
                headline=result.headline,
                multiplier=result.multiplier,
                optimal_multiplier=result.optimal_multiplier,
                predicted_frontier_csv=None
                if run.predicted_frontier_path is None
                else _relative(run.predicted_frontier_path, summary.folder),
            )
            for block in SCORE_BLOCKS:
                scores = getattr(result, block)
                if scores is not None:
                    row.update({f"{block}_{name}": getattr(scores, name) for name in SCORE_KEYS})
        rows.append(row)
    return rows


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder)) or "."
    except ValueError:
        return str(path)


def print_sweep_summary(summary: SweepSummary, console: Console | None = None) -> None:
    """Print one row per job, then the sweep's notes.

    Columns: job, each swept key, status, method, headline, the trained policy's reward, cost
    (one value per constraint), KL, safe rate, feasibility (within :data:`~saferl.data.world.exact.FEASIBILITY_TOLERANCE`,
    stated in the header), violation per constraint and normalised Lagrangian gap
    ``G(π)/G(π_ref)`` (docs/algorithms.md §8), final λ, exact λ*, and (when any job has one) the exact
    optimum's reward and cost. ``—`` marks a value the job did not record.

    Args:
        summary: from :func:`load_sweep`.
        console: where to print; by default a console at least 140 columns wide and wide enough
            for the whole table, so no number is cut in a log file or a narrow terminal.
    """
    with_optimum = any(
        run.summary is not None and run.summary.optimum is not None for run in summary.runs
    )
    num_constraints = max([len(run.summary.cost_limit) for run in summary.runs if run.summary is not None] or [1])
    kind = "sweep" if summary.multirun else "run"
    table = Table(
        title=escape(
            f"{kind} {summary.folder}: {len(summary.runs)} job(s), {len(summary.missing)} missing"
        )
    )
    headers = [
        "job",
        *summary.swept_keys,
        "status",
        "method",
        "headline",
        "E reward",
        "E cost" if num_constraints == 1 else "E c (per constraint)",
        "KL",
        "safe rate",
        f"E c ≤ d + {FEASIBILITY_TOLERANCE:g}",
        "violation",
        "norm. Lagr. gap",
        "λ",
        "λ*",
    ]
    if with_optimum:
        headers += ["opt. E reward", "opt. E cost"]
    for header in headers:
        justify = "left" if header in ("status", "method") else "right"
        table.add_column(escape(header), justify=justify, no_wrap=True)
    for run in summary.runs:
        cells = [str(run.job), *(escape(value) for value in run.swept.values()), run.status]
        result = run.summary
        if result is None:
            cells += ["—"] * (len(headers) - len(cells))
            table.add_row(*cells)
            continue
        trained = result.trained
        cells += [
            escape(result.method),
            _fmt(result.headline, 4),
            *_trained_cells(trained),
            _fmt_list(result.multiplier),
            _fmt_list(result.optimal_multiplier),
        ]
        if with_optimum:
            optimum = result.optimum
            cells += (
                [_fmt(optimum.expected_reward, 4), _fmt_list(optimum.expected_cost)]
                if optimum is not None
                else ["—", "—"]
            )
        table.add_row(*cells)
    if console is None:
        terminal = Console()
        # The table's natural width, measured without the terminal's limit.
        natural = terminal.measure(table, options=terminal.options.update_width(100_000)).maximum
        console = Console(width=max(terminal.width, 140, natural))
    console.print(table)
    for note in summary.notes:
        console.print(f"note: {note}", soft_wrap=True, markup=False)


_TABLE_SCORES = (
    ("expected_reward", 4),
    ("expected_cost", 4),
    ("kl", 4),
    ("safe_rate", 3),
)


def _trained_cells(trained: Scores | None) -> list[str]:
    """The trained policy's cells: :data:`_TABLE_SCORES`, the feasible verdict, the violation per
    constraint and the normalised Lagrangian gap."""
    if trained is None:
        return ["—"] * (len(_TABLE_SCORES) + 3)
    return [
        *(_fmt_list(getattr(trained, name)) if isinstance(getattr(trained, name), tuple)
          else _fmt(getattr(trained, name), digits) for name, digits in _TABLE_SCORES),
        "yes" if trained.feasible else "no",
        _fmt_list(trained.violation),
        _fmt(trained.normalised_lagrangian_gap, 3),
    ]


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def _fmt_list(values: tuple[float, ...]) -> str:
    return ", ".join(_fmt(value, 4) for value in values) if values else "—"
