"""Reading a Hydra sweep of saferl runs from disk: one typed record per job.

A sweep such as ``saferl -m cost_limit=-1.2,-1.0,-0.8,-0.6`` leaves a multirun folder
``multirun/<date>/<time>/`` with one folder per job (``0/``, ``1/``, ...). Each job folder holds
``.hydra/overrides.yaml`` (the job's command-line overrides, a YAML list of ``key=value``
strings) and, once the job has finished, the run's ``summary.json`` (the one typed record,
:class:`saferl.learners.result.SummaryRecord`, that :mod:`saferl.cli` writes and this reads). :func:`load_sweep` reads the folder into one :class:`SweepRun` per job: its
overrides, the swept keys (the override keys whose values differ between jobs) and the
``summary.json`` contents; a job without ``summary.json`` (failed or still running) is kept, with
status ``missing``. The table is :mod:`saferl.eval.sweep_table`, the plot
:mod:`saferl.eval.sweep_plot`, the command :mod:`saferl.eval.sweep_summary`.

``summary.json`` keys: ``method``, ``beta``, ``cost_limit`` and ``trained`` are required;
``headline``, ``reference``, ``optimum``, ``multiplier``, ``optimal_multiplier`` and
``predicted_frontier_csv`` may be absent (read as null / empty) so that summaries from older
runs still load. Score blocks (``trained``, ``reference``, ``optimum``) are null or hold all of
:data:`SCORE_KEYS` (the yardsticks of docs/algorithms.md §8: ``kl_to_optimum``, ``lagrangian_gap``,
``normalised_lagrangian_gap`` and ``violation``, a list with one entry per constraint); a block
without one of them is an error that names the file and the key. Unknown keys are ignored.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from saferl.data.world.exact import PolicyScore
from saferl.learners.result import (
    PER_CONSTRAINT_SCORE_KEYS,
    SCORE_KEYS,
    SummaryFileError,
    SummaryRecord,
)

__all__ = [
    "SUMMARY_FILE",
    "SCORE_KEYS",
    "PER_CONSTRAINT_SCORE_KEYS",
    "SCORE_BLOCKS",
    "SweepInputError",
    "Scores",
    "PredictedFrontier",
    "SweepRun",
    "SweepSummary",
    "load_sweep",
]

SUMMARY_FILE = "summary.json"

#: The score blocks of ``summary.json``, in table order.
SCORE_BLOCKS = ("trained", "reference", "optimum")
_MISSING = "missing"


#: A sweep or run folder that cannot be read (the message names the file, what was expected and
#: what was found); a bad ``summary.json`` raises the same error from its one reader.
SweepInputError = SummaryFileError


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
class SweepRun:
    """One job of the sweep.

    Attributes:
        job: the job number (the folder name for Hydra's default sweep subfolders).
        run_dir: the job's folder.
        overrides: ``key → value`` from ``.hydra/overrides.yaml``, values as written (strings);
            ``+key``/``++key`` are stored under ``key``, a deletion ``~key`` under ``~key``.
        swept: ``key → value`` for the sweep's swept keys only (``""`` where this job does not
            override the key).
        summary: the run's ``summary.json`` (the one typed record the CLI writes), or ``None``
            when the file is missing.
        predicted_frontier: the predicted frontier the summary names, when that file exists and
            has one constraint, else ``None`` (the sweep's notes say why).
    """

    job: int
    run_dir: Path
    overrides: dict[str, str]
    swept: dict[str, str]
    summary: SummaryRecord | None
    predicted_frontier: PredictedFrontier | None = None

    @property
    def predicted_frontier_path(self) -> Path | None:
        """The predicted frontier file the summary names, resolved against the run folder."""
        if self.summary is None or self.summary.predicted_frontier_csv is None:
            return None
        return self.run_dir / self.summary.predicted_frontier_csv

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
        summary = SummaryRecord.read(summary_path) if summary_path.exists() else None
        run = SweepRun(job=job, run_dir=path, overrides=job_overrides,
                       swept={key: job_overrides.get(key, "") for key in swept_keys}, summary=summary)
        frontier_path = run.predicted_frontier_path
        if frontier_path is not None:
            if frontier_path.is_file():
                frontier = _read_frontier_csv(frontier_path, lambda note, job=job: notes.append(f"job {job}: {note}"))
                run = replace(run, predicted_frontier=frontier)
            else:
                notes.append(f"job {job}: predicted frontier {frontier_path} (from {summary_path}) does not exist; "
                             "not plotted")
        runs.append(run)
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
