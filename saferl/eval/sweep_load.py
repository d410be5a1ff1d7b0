"""Reading a Hydra sweep of saferl runs from disk: one typed record per job.

A sweep such as ``saferl -m cost_limit=-1.2,-1.0,-0.8,-0.6`` leaves a multirun folder
``multirun/<date>/<time>/`` with one folder per job (``0/``, ``1/``, ...). Each job folder holds
``.hydra/overrides.yaml`` (the job's command-line overrides, a YAML list of ``key=value``
strings) and, once the job has finished, the run's ``summary.json`` (the contract written by
:mod:`saferl.cli`). :func:`load_sweep` reads the folder into one :class:`SweepRun` per job: its
overrides, the swept keys (the override keys whose values differ between jobs) and the
``summary.json`` contents; a job without ``summary.json`` (failed or still running) is kept, with
status ``missing``. The table is :mod:`saferl.eval.sweep_table`, the plot
:mod:`saferl.eval.sweep_plot`, the command :mod:`saferl.eval.sweep_summary`.

``summary.json`` keys: ``method``, ``beta``, ``cost_limit`` and ``trained`` are required;
``headline``, ``reference``, ``optimum``, ``multiplier``, ``optimal_multiplier`` and
``predicted_frontier_csv`` may be absent (read as null / empty) so that summaries from older
runs still load. Score blocks (``trained``, ``reference``, ``optimum``) are null or hold all of
:data:`SCORE_KEYS` (the yardsticks of ALGORITHMS.md §8: ``kl_to_optimum``, ``lagrangian_gap``,
``normalised_lagrangian_gap`` and ``violation``, a list with one entry per constraint); a block
without one of them is an error that names the file and the key. Unknown keys are ignored.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from saferl.data.world.exact import PolicyScore

__all__ = [
    "SUMMARY_FILE",
    "SCORE_KEYS",
    "PER_CONSTRAINT_SCORE_KEYS",
    "SCORE_BLOCKS",
    "SweepInputError",
    "Scores",
    "PredictedFrontier",
    "RunSummary",
    "SweepRun",
    "SweepSummary",
    "load_sweep",
]

SUMMARY_FILE = "summary.json"

#: The keys of a score block (``trained``, ``reference``, ``optimum``) of ``summary.json``;
#: the fields of :class:`saferl.data.world.PolicyScore`.
SCORE_KEYS = tuple(field.name for field in fields(PolicyScore))
#: The keys of a score block that hold one number per constraint (a JSON list).
PER_CONSTRAINT_SCORE_KEYS = tuple(
    field.name for field in fields(PolicyScore) if str(field.type).startswith("tuple")
)
#: The score blocks of ``summary.json``, in table order.
SCORE_BLOCKS = ("trained", "reference", "optimum")
_REQUIRED_KEYS = ("method", "beta", "cost_limit", "trained")
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
            older = (
                "; a block with 'normalised_gap' was written by a saferl from before the Lagrangian "
                "yardsticks (ALGORITHMS.md §8): evaluate the run again"
                if "normalised_gap" in block
                else ""
            )
            raise SweepInputError(
                f"{path}: missing required key '{key}.{name}' (found keys {sorted(block)}){older}"
            )
    return Scores(
        **{
            name: (_numbers if name in PER_CONSTRAINT_SCORE_KEYS else _number)(
                block[name], path, f"{key}.{name}"
            )
            for name in SCORE_KEYS
        }
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
