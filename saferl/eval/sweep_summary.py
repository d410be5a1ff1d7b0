"""Summarise a Hydra sweep of saferl runs: one table row per job and the reward–cost plot.

A sweep such as ``saferl -m cost_limit=-1.2,-1.0,-0.8,-0.6`` leaves a multirun folder
``multirun/<date>/<time>/`` with one folder per job (``0/``, ``1/``, ...). Each job folder holds
``.hydra/overrides.yaml`` (the job's command-line overrides, a YAML list of ``key=value``
strings) and, once the job has finished, the run's ``summary.json`` (the contract written by
:mod:`saferl.cli`). This module

* reads the folder into typed records (:func:`load_sweep`): one :class:`SweepRun` per job, its
  overrides, the swept keys (the override keys whose values differ between jobs) and the
  ``summary.json`` contents; a job without ``summary.json`` (failed or still running) is kept,
  with status ``missing``;
* prints one rich table row per job (:func:`print_sweep_summary`);
* writes ``sweep_summary.csv`` and ``frontier.png`` (:func:`write_sweep_summary`): expected
  reward against expected cost, each job's trained policy annotated with its swept values, the
  exact constrained optimum of each job joined into the exact frontier, each job's cost limit as
  a faint vertical line and each predicted frontier CSV (MoCAN, PeCAN) as a dashed curve;
* is the ``saferl-sweep-summary FOLDER [--out DIR] [--overwrite]`` command (:func:`main`).

``summary.json`` keys: ``method``, ``beta``, ``cost_limit`` and ``trained`` are required;
``headline``, ``reference``, ``optimum``, ``multiplier``, ``optimal_multiplier`` and
``predicted_frontier_csv`` may be absent (read as null / empty) so that summaries from older
runs still load. Score blocks (``trained``, ``reference``, ``optimum``) are null or hold all of
:data:`SCORE_KEYS`. Unknown keys are ignored.

Plots are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, never through
``pyplot``, so writing a plot changes no global matplotlib state and needs no display.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from saferl.data.world.exact import PolicyScore
from saferl.eval.outputs import refuse_overwrite

__all__ = [
    "SCORE_KEYS",
    "SweepInputError",
    "Scores",
    "PredictedFrontier",
    "RunSummary",
    "SweepRun",
    "SweepSummary",
    "load_sweep",
    "sweep_table",
    "print_sweep_summary",
    "write_sweep_summary",
    "main",
]

SUMMARY_FILE = "summary.json"
CSV_FILE = "sweep_summary.csv"
PNG_FILE = "frontier.png"

#: The keys of a score block (``trained``, ``reference``, ``optimum``) of ``summary.json``;
#: the fields of :class:`saferl.data.world.PolicyScore`.
SCORE_KEYS = tuple(field.name for field in fields(PolicyScore))
_REQUIRED_KEYS = ("method", "beta", "cost_limit", "trained")
_SCORE_BLOCKS = ("trained", "reference", "optimum")
_MISSING = "missing"


class SweepInputError(ValueError):
    """A sweep or run folder that cannot be read: the message names the file, what was expected
    and what was found."""


# --------------------------------------------------------------------------------------------
# Typed records
# --------------------------------------------------------------------------------------------
# One score block of ``summary.json`` is a PolicyScore (NaN where the file holds null or NaN).
Scores = PolicyScore


@dataclass(frozen=True)
class PredictedFrontier:
    """A predicted frontier CSV (the format of :func:`saferl.eval.frontier.write_frontier`),
    one constraint only. Every tuple has one entry per grid row, in file order.

    Attributes:
        path: the CSV file.
        multiplier, expected_reward, expected_cost, kl: the columns (NaN where infeasible).
        feasible: the ``feasible`` column.
    """

    path: Path
    multiplier: tuple[float, ...]
    expected_reward: tuple[float, ...]
    expected_cost: tuple[float, ...]
    kl: tuple[float, ...]
    feasible: tuple[bool, ...]


@dataclass(frozen=True)
class RunSummary:
    """The contents of one run's ``summary.json``.

    Attributes:
        path: the ``summary.json`` file.
        method: the learner (``ppo_lag``, ``mocan``, ``pecan``, ``preference:<loss>``).
        beta: the KL coefficient β.
        cost_limit: the limit ``d``, one entry per constraint.
        headline: the job's headline metric, or ``None``.
        trained, reference, optimum: score blocks, or ``None``.
        multiplier: the learner's final λ (may be empty).
        optimal_multiplier: the exact λ* (may be empty).
        predicted_frontier_csv: the predicted frontier file (resolved against the run folder),
            or ``None``.
        predicted_frontier: its contents when the file exists and has one constraint, else
            ``None`` (the sweep's notes say why).
    """

    path: Path
    method: str
    beta: float
    cost_limit: tuple[float, ...]
    headline: float | None
    trained: Scores | None
    reference: Scores | None
    optimum: Scores | None
    multiplier: tuple[float, ...]
    optimal_multiplier: tuple[float, ...]
    predicted_frontier_csv: Path | None
    predicted_frontier: PredictedFrontier | None


@dataclass(frozen=True)
class SweepRun:
    """One job of the sweep.

    Attributes:
        job: the job number (the folder name for Hydra's default sweep subfolders).
        run_dir: the job's folder.
        overrides: ``key → value`` from ``.hydra/overrides.yaml``, values as written (strings);
            ``+key``/``++key`` are stored under ``key``, a deletion ``~key`` under ``~key``.
        swept: ``key → value`` for the sweep's swept keys only (``""`` where this job does not
            override the key).
        summary: the run's ``summary.json``, or ``None`` when the file is missing.
    """

    job: int
    run_dir: Path
    overrides: dict[str, str]
    swept: dict[str, str]
    summary: RunSummary | None

    @property
    def status(self) -> str:
        """``"ok"`` with a summary, ``"missing"`` without (the job failed or is still running)."""
        return "ok" if self.summary is not None else _MISSING

    def label(self) -> str:
        """The swept values as ``key=value, ...``, or ``job N`` when nothing is swept."""
        if not self.swept:
            return f"job {self.job}"
        return ", ".join(f"{key}={value}" for key, value in self.swept.items())


@dataclass(frozen=True)
class SweepSummary:
    """A sweep (or a single run) read from disk.

    Attributes:
        folder: the folder given to :func:`load_sweep`.
        multirun: whether it is a multirun folder (``False``: a single run folder).
        swept_keys: the override keys whose values differ between jobs, in first-seen order.
        runs: one per job, sorted by job number.
        notes: things that were skipped and why (e.g. a predicted frontier with two constraints).
    """

    folder: Path
    multirun: bool
    swept_keys: tuple[str, ...]
    runs: tuple[SweepRun, ...]
    notes: tuple[str, ...]

    @property
    def missing(self) -> tuple[SweepRun, ...]:
        """The jobs without ``summary.json``."""
        return tuple(run for run in self.runs if run.summary is None)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def load_sweep(folder: str | Path) -> SweepSummary:
    """Read a Hydra multirun folder, or a single run folder, into a :class:`SweepSummary`.

    A folder is a single run when it holds ``summary.json`` or ``.hydra/`` itself; otherwise
    its run folders are the subfolders named by a job number or holding ``summary.json`` or
    ``.hydra/``.

    Raises:
        FileNotFoundError: ``folder`` does not exist (NotADirectoryError: it is a file).
        SweepInputError: no run folders; an unreadable ``overrides.yaml``; a ``summary.json`` that
            is not valid JSON, lacks a required key or holds a value of the wrong type; a
            predicted frontier CSV without the expected columns.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(
            f"sweep folder {folder} does not exist; expected a Hydra multirun folder "
            "(multirun/<date>/<time>) or a single run folder"
        )
    if not folder.is_dir():
        raise NotADirectoryError(
            f"{folder} is a file; expected a Hydra multirun folder or a single run folder"
        )
    notes: list[str] = []
    multirun = not _is_run_folder(folder)
    if multirun:
        run_dirs = [
            path
            for path in folder.iterdir()
            if path.is_dir() and (path.name.isdigit() or _is_run_folder(path))
        ]
        if not run_dirs:
            found = sorted(path.name for path in folder.iterdir())
            raise SweepInputError(
                f"{folder} holds no run folders; expected job folders 0/, 1/, ... each with "
                f".hydra/ and {SUMMARY_FILE} (a Hydra multirun folder) or a run folder with "
                f"{SUMMARY_FILE}; found {found or 'an empty folder'}"
            )
        numbered = [(_job_number(path), path) for path in run_dirs]
    else:
        numbered = [(_job_number(folder, default=0), folder)]
    numbered.sort(key=lambda item: item[0])
    jobs = [item[0] for item in numbered]
    if len(set(jobs)) != len(jobs):
        duplicate = next(job for job in jobs if jobs.count(job) > 1)
        folders = [str(path) for job, path in numbered if job == duplicate]
        raise SweepInputError(f"job number {duplicate} appears twice in {folder}: {folders}")

    overrides = [_read_overrides(path) for _, path in numbered]
    swept_keys = _swept_keys(overrides)
    runs = []
    for (job, path), job_overrides in zip(numbered, overrides, strict=True):
        summary_path = path / SUMMARY_FILE
        summary = None
        if summary_path.exists():
            summary = _read_summary(
                summary_path, lambda note, job=job: notes.append(f"job {job}: {note}")
            )
        runs.append(
            SweepRun(
                job=job,
                run_dir=path,
                overrides=job_overrides,
                swept={key: job_overrides.get(key, "") for key in swept_keys},
                summary=summary,
            )
        )
    return SweepSummary(
        folder=folder,
        multirun=multirun,
        swept_keys=swept_keys,
        runs=tuple(runs),
        notes=tuple(notes),
    )


def _is_run_folder(path: Path) -> bool:
    return (path / SUMMARY_FILE).is_file() or (path / ".hydra").is_dir()


def _job_number(path: Path, default: int | None = None) -> int:
    """The folder name when it is a number, else ``hydra.job.num`` from ``.hydra/hydra.yaml``."""
    if path.name.isdigit():
        return int(path.name)
    hydra_yaml = path / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        try:
            number = (
                (yaml.safe_load(hydra_yaml.read_text()) or {})
                .get("hydra", {})
                .get("job", {})
                .get("num")
            )
        except (yaml.YAMLError, AttributeError):
            number = None
        if isinstance(number, int) and not isinstance(number, bool):
            return number
    if default is not None:
        return default
    raise SweepInputError(
        f"cannot tell the job number of run folder {path}: expected a numeric folder name (Hydra's "
        f"default sweep subdir) or hydra.job.num in {hydra_yaml}"
    )


def _read_overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    try:
        items = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SweepInputError(f"{path} is not valid YAML: {error}") from None
    if items is None:
        return {}
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise SweepInputError(
            f"{path}: expected a YAML list of 'key=value' strings; found {items!r}"
        )
    overrides: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key.startswith("~"):
            key = key.lstrip("+")
        overrides[key] = value
    return overrides


def _swept_keys(overrides: Sequence[dict[str, str]]) -> tuple[str, ...]:
    keys: list[str] = []
    for job_overrides in overrides:
        keys += [key for key in job_overrides if key not in keys]
    # A key missing from some jobs differs too: it is "" there.
    return tuple(
        key for key in keys if len({job_overrides.get(key) for job_overrides in overrides}) > 1
    )


def _read_summary(path: Path, note: Callable[[str], None]) -> RunSummary:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SweepInputError(
            f"{path} is not valid JSON ({error}); expected the run summary written by saferl"
        ) from None
    if not isinstance(data, dict):
        raise SweepInputError(f"{path}: expected a JSON object; found {type(data).__name__}")
    for key in _REQUIRED_KEYS:
        if key not in data:
            raise SweepInputError(
                f"{path}: missing required key '{key}' (found keys {sorted(data)})"
            )
    method = data["method"]
    if not isinstance(method, str):
        raise SweepInputError(f"{path}: key 'method' must be a string; found {method!r}")
    frontier_csv = data.get("predicted_frontier_csv")
    if frontier_csv is not None and not isinstance(frontier_csv, str):
        raise SweepInputError(
            f"{path}: key 'predicted_frontier_csv' must be a path string or null; found {frontier_csv!r}"
        )
    frontier_path = None if frontier_csv is None else path.parent / frontier_csv
    predicted = None
    if frontier_path is not None:
        if frontier_path.is_file():
            predicted = _read_frontier_csv(frontier_path, note)
        else:
            note(f"predicted frontier {frontier_path} (from {path}) does not exist; not plotted")
    headline = data.get("headline")
    return RunSummary(
        path=path,
        method=method,
        beta=_number(data["beta"], path, "beta"),
        cost_limit=_numbers(data["cost_limit"], path, "cost_limit"),
        headline=None if headline is None else _number(headline, path, "headline"),
        trained=_scores(data["trained"], path, "trained"),
        reference=_scores(data.get("reference"), path, "reference"),
        optimum=_scores(data.get("optimum"), path, "optimum"),
        multiplier=_numbers(data.get("multiplier", []), path, "multiplier"),
        optimal_multiplier=_numbers(data.get("optimal_multiplier", []), path, "optimal_multiplier"),
        predicted_frontier_csv=frontier_path,
        predicted_frontier=predicted,
    )


def _number(value: Any, path: Path, key: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SweepInputError(f"{path}: key '{key}' must be a number; found {value!r}")
    return float(value)


def _numbers(value: Any, path: Path, key: str) -> tuple[float, ...]:
    if isinstance(value, list):
        return tuple(_number(item, path, f"{key}[{i}]") for i, item in enumerate(value))
    if value is None:
        raise SweepInputError(
            f"{path}: key '{key}' must be a number or a list of numbers; found null"
        )
    return (_number(value, path, key),)


def _scores(block: Any, path: Path, key: str) -> Scores | None:
    if block is None:
        return None
    if not isinstance(block, dict):
        raise SweepInputError(
            f"{path}: key '{key}' must be an object with keys {list(SCORE_KEYS)} or null; found {block!r}"
        )
    for name in SCORE_KEYS:
        if name not in block:
            raise SweepInputError(
                f"{path}: missing required key '{key}.{name}' (found keys {sorted(block)})"
            )
    return Scores(**{name: _number(block[name], path, f"{key}.{name}") for name in SCORE_KEYS})


def _read_frontier_csv(path: Path, note: Callable[[str], None]) -> PredictedFrontier | None:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        rows = list(reader)
    if "multiplier" not in columns and "multiplier_0" in columns:
        count = sum(1 for column in columns if column.startswith("multiplier_"))
        note(f"predicted frontier {path} has m = {count} constraints; only m = 1 is plotted")
        return None
    expected = ("multiplier", "expected_reward", "expected_cost", "kl", "feasible")
    for column in expected:
        if column not in columns:
            raise SweepInputError(
                f"{path}: missing column '{column}'; expected the columns of "
                f"saferl.eval.frontier.write_frontier {list(expected)}, found {columns}"
            )

    def floats(column: str) -> tuple[float, ...]:
        values = []
        for line, row in enumerate(rows, start=2):
            try:
                values.append(float(row[column]))
            except (TypeError, ValueError):
                raise SweepInputError(
                    f"{path}, line {line}: column '{column}' must be a number; found {row[column]!r}"
                ) from None
        return tuple(values)

    return PredictedFrontier(
        path=path,
        multiplier=floats("multiplier"),
        expected_reward=floats("expected_reward"),
        expected_cost=floats("expected_cost"),
        kl=floats("kl"),
        feasible=tuple(row["feasible"].strip().lower() == "true" for row in rows),
    )


# --------------------------------------------------------------------------------------------
# The table (rows of plain values, the rich table, the CSV)
# --------------------------------------------------------------------------------------------
def _columns(summary: SweepSummary) -> list[str]:
    blocks = [f"{block}_{name}" for block in _SCORE_BLOCKS for name in SCORE_KEYS]
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
        row: dict[str, Any] = dict.fromkeys(_columns(summary))
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
                if result.predicted_frontier_csv is None
                else _relative(result.predicted_frontier_csv, summary.folder),
            )
            for block in _SCORE_BLOCKS:
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

    Columns: job, each swept key, status, method, headline, the trained policy's reward, cost,
    KL, safe rate, violation and normalised gap, final λ, exact λ*, and (when any job has one)
    the exact optimum's reward and cost. ``—`` marks a value the job did not record.

    Args:
        summary: from :func:`load_sweep`.
        console: where to print; by default a console at least 140 columns wide and wide enough
            for the whole table, so no number is cut in a log file or a narrow terminal.
    """
    with_optimum = any(
        run.summary is not None and run.summary.optimum is not None for run in summary.runs
    )
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
        "E cost",
        "KL",
        "safe rate",
        "violation",
        "norm. gap",
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
            *(
                [_fmt(getattr(trained, name), digits) for name, digits in _TABLE_SCORES]
                if trained is not None
                else ["—"] * len(_TABLE_SCORES)
            ),
            _fmt_list(result.multiplier),
            _fmt_list(result.optimal_multiplier),
        ]
        if with_optimum:
            optimum = result.optimum
            cells += (
                [_fmt(optimum.expected_reward, 4), _fmt(optimum.expected_cost, 4)]
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
    ("violation", 4),
    ("normalised_gap", 3),
)


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def _fmt_list(values: tuple[float, ...]) -> str:
    return ", ".join(_fmt(value, 4) for value in values) if values else "—"


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):  # several numbers: ';'-separated, each exact
        return ";".join(repr(item) for item in value)
    if isinstance(value, float):
        return repr(value)  # reads back exactly
    return str(value)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def write_sweep_summary(
    summary: SweepSummary, out_dir: str | Path, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``sweep_summary.csv`` (:func:`sweep_table`'s rows) and ``frontier.png`` into
    ``out_dir``.

    The CSV writes floats by ``repr`` (they read back exactly), lists of numbers
    ``;``-separated, absent values as empty cells. The PNG plots expected reward against
    expected cost: each job's trained policy (annotated with its swept values), the reference,
    the exact optimum of each job joined into the exact frontier, each job's cost limit as a
    faint vertical line and each predicted frontier as a dashed curve.

    Args:
        summary: from :func:`load_sweep`.
        out_dir: created if missing.
        overwrite: replace existing files; otherwise an existing file raises.

    Returns:
        ``(csv_path, png_path)``.

    Raises:
        FileExistsError: a target file exists and ``overwrite`` is False (nothing is written).
    """
    out_dir = Path(out_dir)
    csv_path, png_path = _output_paths(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_columns(summary))
        writer.writeheader()
        for row in sweep_table(summary):
            writer.writerow({key: _csv_cell(value) for key, value in row.items()})
    _plot(summary).savefig(png_path, format="png", dpi=120)
    return csv_path, png_path


def _output_paths(out_dir: Path, overwrite: bool) -> tuple[Path, Path]:
    """``(csv_path, png_path)`` in ``out_dir``; raises FileExistsError if one exists and
    ``overwrite`` is False."""
    csv_path, png_path = out_dir / CSV_FILE, out_dir / PNG_FILE
    refuse_overwrite(
        (csv_path, png_path), overwrite,
        "pass overwrite=True (--overwrite) to replace it, or choose another output folder (--out)",
    )
    return csv_path, png_path


_PREDICTED_NAMES = {"mocan": "MoCAN", "pecan": "PeCAN"}


def _plot(summary: SweepSummary):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 6.5), layout="constrained")
    FigureCanvasAgg(figure)  # attaches the Agg canvas: no pyplot, no display
    axes = figure.add_subplot()
    finished = [run for run in summary.runs if run.summary is not None]
    methods = list(dict.fromkeys(run.summary.method for run in finished))
    colours = {method: f"C{i % 10}" for i, method in enumerate(methods)}

    # Each job's cost limit, faint (one legend entry for all of them).
    limits = sorted(
        {run.summary.cost_limit[0] for run in finished if len(run.summary.cost_limit) == 1}
    )
    for i, limit in enumerate(limits):
        axes.axvline(
            limit,
            color="grey",
            alpha=0.3,
            linestyle=":",
            linewidth=1,
            label="cost limits d" if i == 0 else None,
        )

    # The exact optimum at each job's limit, joined left to right: the exact frontier.
    optima = sorted(
        (run.summary.optimum.expected_cost, run.summary.optimum.expected_reward)
        for run in finished
        if run.summary.optimum is not None and _finite(run.summary.optimum)
    )
    if optima:
        axes.plot(
            [c for c, _ in optima],
            [r for _, r in optima],
            color="black",
            marker="*",
            markersize=11,
            linewidth=1,
            label="exact optimum (frontier)",
        )

    # Predicted frontiers (MoCAN, PeCAN): dashed, one per job that wrote one.
    predicted = [run for run in finished if run.summary.predicted_frontier is not None]
    for run in predicted:
        frontier = run.summary.predicted_frontier
        points = sorted(
            (cost, reward)
            for cost, reward, feasible in zip(
                frontier.expected_cost, frontier.expected_reward, frontier.feasible, strict=True
            )
            if feasible and math.isfinite(cost) and math.isfinite(reward)
        )
        name = _PREDICTED_NAMES.get(run.summary.method, run.summary.method)
        label = f"{name} predicted" + (f" ({run.label()})" if len(predicted) > 1 else "")
        axes.plot(
            [c for c, _ in points],
            [r for _, r in points],
            linestyle="--",
            linewidth=1.2,
            color=colours[run.summary.method],
            alpha=0.8,
            label=label,
        )

    # The reference policy (usually one point shared by every job).
    references = sorted(
        {
            (run.summary.reference.expected_cost, run.summary.reference.expected_reward)
            for run in finished
            if run.summary.reference is not None and _finite(run.summary.reference)
        }
    )
    if references:
        axes.plot(
            [c for c, _ in references],
            [r for _, r in references],
            linestyle="none",
            marker="x",
            markersize=8,
            color="grey",
            label="reference π_ref",
        )

    # Each job's trained policy, annotated with its swept values.
    labelled: set[str] = set()
    for run in finished:
        trained = run.summary.trained
        if trained is None or not _finite(trained):
            continue
        method = run.summary.method
        axes.plot(
            [trained.expected_cost],
            [trained.expected_reward],
            linestyle="none",
            marker="o",
            markersize=7,
            color=colours[method],
            label=None if method in labelled else f"{method} trained",
        )
        labelled.add(method)
        axes.annotate(
            run.label(),
            (trained.expected_cost, trained.expected_reward),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize="small",
        )

    if not finished:
        axes.text(
            0.5,
            0.5,
            "no finished runs (no summary.json)",
            transform=axes.transAxes,
            ha="center",
            va="center",
        )
    axes.set_xlabel("expected cost E[c]")
    axes.set_ylabel("expected reward E[r]")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best", fontsize="small")
    missing = len(summary.missing)
    swept = ", ".join(summary.swept_keys) or "nothing swept"
    figure.suptitle(
        f"{summary.folder.name or summary.folder}: reward against cost ({swept}; "
        f"{len(summary.runs)} job(s)" + (f", {missing} missing)" if missing else ")")
    )
    return figure


def _finite(scores: Scores) -> bool:
    return math.isfinite(scores.expected_cost) and math.isfinite(scores.expected_reward)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``saferl-sweep-summary FOLDER [--out DIR] [--overwrite]``: print the table, write the CSV
    and the plot (into FOLDER by default) and print their paths.

    Returns:
        0 on success; 2 on bad input (the message, without a traceback, goes to stderr).
    """
    parser = argparse.ArgumentParser(
        prog="saferl-sweep-summary",
        description="Summarise a Hydra sweep of saferl runs (or one run): a table, "
        f"{CSV_FILE} and {PNG_FILE} (expected reward against expected cost).",
    )
    parser.add_argument(
        "folder",
        type=Path,
        help="a multirun folder (multirun/<date>/<time>) or a single run folder",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the CSV and the plot (default: FOLDER)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help=f"replace an existing {CSV_FILE} / {PNG_FILE}"
    )
    args = parser.parse_args(argv)
    try:
        summary = load_sweep(args.folder)
        out_dir = args.folder if args.out is None else args.out
        _output_paths(out_dir, args.overwrite)  # refuse before printing anything
        print_sweep_summary(summary)
        csv_path, png_path = write_sweep_summary(summary, out_dir, overwrite=args.overwrite)
    except (SweepInputError, OSError) as error:
        print(f"saferl-sweep-summary: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {csv_path}")
    print(f"wrote {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
