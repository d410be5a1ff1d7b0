"""Experiment tracking with one interface: W&B (offline by default), a JSONL file, or nothing.

A learner calls ``tracker.log(metrics, step)`` and never branches on whether logging is on: the
:class:`NullTracker` has the same interface. Every metric name is ``<namespace>/<name>`` with a
namespace of :data:`METRIC_NAMESPACES`; every tracker (the null one included) rejects any other
name, so a typo fails in the laptop run rather than vanishing from a cluster run's dashboard.

The CLI builds the tracker from the ``logger`` config section with :func:`build_tracker`::

    tracker = build_tracker(cfg.logger, run_dir, resolved_config, run_metadata())

W&B runs are offline unless ``logger.mode: online``: an offline run needs no account and never
touches the network; ``wandb sync <run_dir>/wandb/offline-run-*`` uploads it later.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from saferl.atomic_files import write_text_atomically

__all__ = [
    "METRIC_NAMESPACES",
    "LOGGER_DEFAULTS",
    "Tracker",
    "NullTracker",
    "JsonlTracker",
    "WandbTracker",
    "MultiTracker",
    "check_metric_names",
    "run_metadata",
    "build_tracker",
    "record_restart",
    "recorded_restarts",
    "redact_secrets",
]

#: The namespaces a metric name may start with (``<namespace>/<name>``).
METRIC_NAMESPACES: tuple[str, ...] = (
    # The on-policy loop (ppo_lag; MoCAN's PPO with λ fixed).
    "rollout",  # the rollout batch: response length, sampled KL to the reference
    "reward",  # reward scores of the rollout
    "cost",  # cost scores of the rollout, one per constraint
    "constraint",  # constraint estimate, limit and violation per constraint
    "multiplier",  # Lagrange multiplier values
    "policy",  # actor update: loss, approx_kl, clipfrac, grad_norm, ptx_loss
    "critic",  # critic updates: losses, explained variance
    "perf",  # timings and throughput
    # The other stages (learners/sft.py, score_model.py, preference.py, pipeline.py).
    "sft",  # supervised fine-tuning of the reference
    "reward_model",  # reward model training and its held-out metrics
    "cost_model",  # cost model training and its held-out metrics
    "preference",  # preference learners (DPO family; MoCAN/PeCAN alignment)
    "eval",  # evaluation of the trained policy
)

#: The ``logger`` config section's keys and their defaults (see :func:`build_tracker`).
LOGGER_DEFAULTS: Mapping[str, Any] = {
    "kind": "wandb",  # wandb | jsonl | none
    "jsonl": True,  # with kind=wandb, also append metrics to <run_dir>/metrics.jsonl
    "project": "saferl",  # W&B project
    "entity": None,  # W&B entity (team/user); None: the account's default
    "mode": "offline",  # offline (no account, no network) | online
    "name": None,  # run name; None: W&B's
    "group": None,  # W&B group (a sweep's runs share one); None: none
    "tags": [],  # W&B tags
}

_KINDS = ("wandb", "jsonl", "none")
_MODES = ("offline", "online")
_GIT_TIMEOUT_S = 5.0


class Tracker(Protocol):
    """What every tracker offers."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def finish(self) -> None: ...


def check_metric_names(metrics: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless every name is ``<namespace>/<name>`` with a namespace of
    :data:`METRIC_NAMESPACES` and a non-empty ``<name>`` other than ``step`` (reserved for the
    step :class:`WandbTracker` records with each namespace). Every tracker's ``log`` calls this."""
    for name in metrics:
        namespace, slash, leaf = name.partition("/") if isinstance(name, str) else ("", "", "")
        if not slash or not leaf or namespace not in METRIC_NAMESPACES:
            raise ValueError(
                f"metric {name!r} is outside the fixed namespaces: a name must be "
                f"'<namespace>/<name>' with <namespace> one of {', '.join(METRIC_NAMESPACES)} "
                "(saferl.tracking.METRIC_NAMESPACES)"
            )
        if leaf == "step":
            raise ValueError(
                f"metric {name!r}: '<namespace>/step' is reserved for the step that every "
                "tracker records with the namespace's metrics; pick another name"
            )


class NullTracker:
    """Logs nothing (but rejects metric names outside the namespaces, like every tracker)."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        check_metric_names(metrics)

    def finish(self) -> None:
        return None


class JsonlTracker:
    """One JSON object per ``log`` call, appended to ``path`` (``{"step": ..., **metrics}``).

    Non-finite floats are written as strings (``"nan"``, ``"inf"``) so each line is strict JSON.

    A resumed run logs again what its killed predecessor logged after the checkpoint it goes on
    from (the iterations after it, or a whole stage that had not finished). A row of ``step`` s
    therefore supersedes the file's earlier rows that hold any of its metrics at a step ≥ s: they
    are dropped (the file is rewritten once, atomically), so the file never holds an iteration
    twice and its last rows are the ones the finished run computed.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # stages that run side by side log from their own threads
        # The last step each metric was written at (the file may hold an earlier launch's rows).
        self._last_step: dict[str, int] = {}
        for row in self.read():
            self._note(row)

    def _note(self, row: Mapping[str, Any]) -> None:
        for key in row:
            if key != "step":
                self._last_step[key] = max(self._last_step.get(key, row["step"]), row["step"])

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        check_metric_names(metrics)
        row = {"step": step, **{key: _json_value(value) for key, value in metrics.items()}}
        with self._lock:
            if any(self._last_step.get(key, step - 1) >= step for key in metrics):
                self._drop_superseded(set(metrics), step)
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            self._note(row)

    def _drop_superseded(self, keys: set[str], step: int) -> None:
        """Rewrite the file without its rows holding one of ``keys`` at a step ≥ ``step``."""
        kept = [row for row in self.read() if row["step"] < step or not keys.intersection(row)]
        write_text_atomically(self.path, "".join(json.dumps(row) + "\n" for row in kept))
        self._last_step = {}
        for row in kept:
            self._note(row)

    def finish(self) -> None:
        return None

    def read(self) -> list[dict[str, Any]]:
        """Every logged row, in order."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class WandbTracker:
    """A W&B run; ``mode="offline"`` (the default) needs no account and no network.

    Each namespace gets its own step metric ``<namespace>/step`` (W&B's ``define_metric``):
    the stages of one run restart their step counts (SFT steps 1..N, then reward-model steps
    1..M, ...) and W&B drops a ``log`` whose global step goes backwards, so the tracker lets W&B
    count its own global step and charts each namespace against the step it was logged with.

    Args:
        project: W&B project.
        config: the run's resolved config (recorded with the run; mappings and sequences are
            copied into plain dicts and lists, e.g. an OmegaConf ``DictConfig``).
        directory: W&B writes its files under ``<directory>/wandb``.
        mode: ``"offline"``, ``"online"`` or ``"disabled"``.
        name: run name; tags: run tags; entity: W&B entity; group: W&B group.
        run_id: continue the W&B run of this id (a resumed run); None: a new run.
    """

    def __init__(
        self,
        project: str,
        config: Mapping[str, Any],
        directory: str | Path,
        mode: str = "offline",
        name: str | None = None,
        tags: Sequence[str] = (),
        entity: str | None = None,
        group: str | None = None,
        run_id: str | None = None,
    ) -> None:
        import wandb

        if mode not in ("offline", "online", "disabled"):
            raise ValueError(
                f"logger.mode must be 'offline', 'online' or 'disabled'; found {mode!r}"
            )
        Path(directory).mkdir(parents=True, exist_ok=True)
        # An offline run never logs in (wandb.init skips the login step for offline and disabled
        # runs), so no prompt can appear; silent=True is WANDB_SILENT without touching os.environ.
        self.run = wandb.init(
            project=project,
            entity=entity,
            config=_plain_container(config),
            dir=str(directory),
            mode=mode,  # explicit: overrides WANDB_MODE and the user's saved settings
            name=name,
            group=group,
            tags=list(tags),
            # A resumed run continues its W&B run: the same id (an offline launch writes a new
            # offline-run folder under it, and `wandb sync` uploads every folder into that run).
            id=run_id,
            resume="allow" if run_id is not None else None,
            settings=wandb.Settings(
                silent=True,
                console="off",  # no stdout capture: the run's terminal output stays the user's
                x_disable_stats=True,  # no system-metrics sampler thread
                # No W&B-collected metadata: it holds the raw command line, where a credential
                # may have been given; the run's own metadata (config key "run") is redacted.
                x_disable_meta=True,
                save_code=False,
            ),
            reinit="create_new",
        )
        self._namespaces: set[str] = set()
        self._lock = threading.Lock()  # stages that run side by side log from their own threads
        #: The offline run's folder (``wandb sync <folder>`` uploads it); None when not offline.
        self.offline_folder = Path(self.run.settings.sync_dir) if mode == "offline" else None

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        check_metric_names(metrics)
        row: dict[str, Any] = {}
        with self._lock:
            for key, value in metrics.items():
                namespace = key.partition("/")[0]
                if namespace not in self._namespaces:
                    self.run.define_metric(f"{namespace}/step", hidden=True)
                    self.run.define_metric(f"{namespace}/*", step_metric=f"{namespace}/step")
                    self._namespaces.add(namespace)
                row[f"{namespace}/step"] = step
                row[key] = _number(value)
            self.run.log(row)

    def finish(self) -> None:
        self.run.finish()


class MultiTracker:
    """Sends every call to several trackers."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        check_metric_names(metrics)
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def offline_run_folders(tracker: Tracker) -> list[Path]:
    """The offline W&B run folders ``tracker`` writes (through a :class:`MultiTracker` too), so a
    run can say where they are and how to upload them (``wandb sync <folder>``)."""
    if isinstance(tracker, MultiTracker):
        return [folder for inner in tracker.trackers for folder in offline_run_folders(inner)]
    folder = getattr(tracker, "offline_folder", None)
    return [folder] if folder is not None else []


# ------------------------------------------------------------------------------------------
# Run metadata and the tracker factory.


def run_metadata(cwd: str | Path | None = None) -> dict[str, Any]:
    """What identifies this run's code and launch, recorded with every tracked run.

    Args:
        cwd: where to ask git (None: the folder of the ``saferl`` package, i.e. the revision of
            the code that runs, wherever it was launched from).

    Returns:
        ``git_revision`` (full sha), ``git_dirty`` (uncommitted changes to tracked files),
        ``git_branch`` (None when detached), ``command`` (the launch command line as typed,
        e.g. ``python -m saferl.cli job=mocan``, shell-quoted), ``executable``, ``cwd``,
        ``hostname``, ``python``, ``torch`` and ``saferl`` versions, ``start_time`` (UTC ISO
        8601). The git values are None outside a git work tree or without git; this never
        raises and never waits more than a few seconds on git.
    """
    folder = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    revision = _git(folder, "rev-parse", "--verify", "HEAD")
    branch = _git(folder, "symbolic-ref", "--quiet", "--short", "HEAD") if revision else None
    status = _git(folder, "status", "--porcelain", "--untracked-files=no") if revision else None
    # sys.orig_argv keeps "python -m saferl.cli ..." as typed; sys.argv[0] would be cli.py's path.
    argv = list(getattr(sys, "orig_argv", None) or [Path(sys.executable).name, *sys.argv])
    return {
        "git_revision": revision,
        "git_dirty": None if status is None else bool(status),
        "git_branch": branch,
        "command": shlex.join(argv),
        "executable": sys.executable,
        "cwd": str(Path.cwd()),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "saferl": _saferl_version(),
        "start_time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }


METADATA_FILE = "run_metadata.json"


def _read_metadata(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / METADATA_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); move it away to write a new one") from error


def _write_metadata(run_dir: Path, record: Mapping[str, Any]) -> None:
    """``run_metadata.json``, swapped in whole (a kill mid-write leaves the previous file)."""
    write_text_atomically(run_dir / METADATA_FILE, json.dumps(record, indent=2, default=str) + "\n")


def recorded_restarts(run_dir: str | Path) -> list[dict[str, Any]]:
    """The automatic restarts ``run_metadata.json`` records (every launch of the run; none: [])."""
    record = _read_metadata(Path(run_dir)) or {}
    return list(record.get("restarts", []))


def record_restart(run_dir: str | Path, restart: Mapping[str, Any]) -> None:
    """Append one automatic restart (:class:`saferl.runtime.recovery.Restart` as a dict) to
    ``run_metadata.json``'s ``restarts``; nothing when the run writes no metadata
    (``logger.kind: none``)."""
    run_dir = Path(run_dir)
    record = _read_metadata(run_dir)
    if record is not None:
        _write_metadata(run_dir, {**record, "restarts": [*record.get("restarts", []), dict(restart)]})


def build_tracker(
    logger: Mapping[str, Any],
    run_dir: str | Path,
    config: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    resume: bool = False,
) -> Tracker:
    """The tracker that the ``logger`` config section asks for.

    ``logger`` keys (all optional; defaults in :data:`LOGGER_DEFAULTS`)::

        kind: wandb        # wandb | jsonl | none
        jsonl: true        # with kind=wandb, also append metrics to <run_dir>/metrics.jsonl
        project: saferl    # W&B project
        entity: null       # W&B entity (team/user); null: the account default
        mode: offline      # offline (no account, no network) | online
        name: null         # run name; null: W&B's
        group: null        # W&B group (a sweep's runs share one); null: none
        tags: []           # W&B tags

    - ``kind: wandb``: a W&B run under ``<run_dir>/wandb`` whose config is ``config`` plus
      ``metadata`` under the key ``run``; with ``jsonl: true`` also a :class:`JsonlTracker`.
    - ``kind: jsonl``: ``<run_dir>/metrics.jsonl`` only.
    - ``kind: none``: a :class:`NullTracker`; nothing is written.

    Every kind but ``none`` writes ``<run_dir>/run_metadata.json`` (``metadata`` and, under
    ``config``, the resolved config; with W&B, ``wandb_run_id``). A resumed run (``resume``)
    keeps the file's first launch as it is and appends its own ``metadata`` to ``resumes``; its
    W&B run continues the recorded ``wandb_run_id``, and ``metrics.jsonl`` drops the rows it logs
    again (:class:`JsonlTracker`).

    Args:
        logger: the ``logger`` section (a mapping; an OmegaConf ``DictConfig`` works).
        run_dir: the run's output folder.
        config: the run's resolved config (nested mappings/sequences).
        metadata: :func:`run_metadata` (None: computed here).
        resume: the run continues the one in ``run_dir``.

    Raises:
        ValueError: an unknown key or a bad value, naming ``logger.<key>``, the value and what
            is allowed; or ``config`` already has a top-level ``run`` key.
    """
    settings = validate_logger(logger)
    if settings["kind"] == "none":
        return NullTracker()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plain_config = redact_secrets(_plain_container(config))
    if not isinstance(plain_config, dict):
        raise ValueError(f"config must be a mapping, got {type(config).__name__}")
    if "run" in plain_config:
        raise ValueError(
            "config has a top-level 'run' key, which build_tracker reserves for the run metadata "
            "(git revision, command, ...); rename that config section"
        )
    meta = redact_secrets(_plain_container(dict(metadata) if metadata is not None else run_metadata()))
    first_launch = _read_metadata(run_dir) if resume else None
    if first_launch is None:
        record = {**meta, "config": plain_config}
    else:  # what the first launch recorded stays; this launch is one more entry
        record = {**first_launch, "resumes": [*first_launch.get("resumes", []), meta]}
    _write_metadata(run_dir, record)
    if settings["kind"] == "jsonl":
        return JsonlTracker(run_dir / "metrics.jsonl")
    wandb_tracker = WandbTracker(
        project=settings["project"],
        config={**plain_config, "run": meta},
        directory=run_dir,
        mode=settings["mode"],
        name=settings["name"],
        tags=settings["tags"],
        entity=settings["entity"],
        group=settings["group"],
        run_id=record.get("wandb_run_id"),
    )
    if record.get("wandb_run_id") != wandb_tracker.run.id:
        _write_metadata(run_dir, {**record, "wandb_run_id": wandb_tracker.run.id})
    if not settings["jsonl"]:
        return wandb_tracker
    return MultiTracker([wandb_tracker, JsonlTracker(run_dir / "metrics.jsonl")])


def validate_logger(logger: Mapping[str, Any]) -> dict[str, Any]:
    """``LOGGER_DEFAULTS`` updated with ``logger``, each value checked."""
    if not isinstance(logger, Mapping):
        raise ValueError(f"logger must be a mapping of settings, got {type(logger).__name__}")
    unknown = sorted(str(key) for key in logger if key not in LOGGER_DEFAULTS)
    if unknown:
        raise ValueError(
            f"logger.{unknown[0]} is not a logger setting; allowed keys: "
            f"{', '.join(LOGGER_DEFAULTS)}"
        )
    settings = {**LOGGER_DEFAULTS, **logger}

    def fail(key: str, allowed: str) -> None:
        raise ValueError(f"logger.{key} must be {allowed}; found {settings[key]!r}")

    if settings["kind"] not in _KINDS:
        fail("kind", " | ".join(_KINDS))
    if settings["mode"] not in _MODES:
        hint = " (for no tracking use logger.kind: none)" if settings["mode"] == "disabled" else ""
        fail("mode", " | ".join(_MODES) + hint)
    if not isinstance(settings["jsonl"], bool):
        fail("jsonl", "true or false")
    if settings["kind"] == "jsonl" and not settings["jsonl"]:
        fail("jsonl", "true with logger.kind: jsonl (for no tracking use logger.kind: none)")
    if not isinstance(settings["project"], str) or not settings["project"]:
        fail("project", "a non-empty string")
    for key in ("entity", "name", "group"):
        if settings[key] is not None and (not isinstance(settings[key], str) or not settings[key]):
            fail(key, "a non-empty string or null")
    tags = settings["tags"]
    if isinstance(tags, str | bytes) or not isinstance(tags, Sequence):
        fail("tags", "a list of strings")
    if not all(isinstance(tag, str) and tag for tag in tags):
        fail("tags", "a list of non-empty strings")
    settings["tags"] = list(tags)
    return settings


def _git(folder: Path, *args: str) -> str | None:
    """``git -C folder args`` stdout stripped, or None on any failure (no git, not a repo,
    a timeout). ``GIT_OPTIONAL_LOCKS=0``: ``git status`` must not take the index lock of a
    tree that others are working in."""
    try:
        result = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"},
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _saferl_version() -> str | None:
    try:
        from saferl import __version__
    except ImportError:  # pragma: no cover - this module is part of saferl
        return _version("saferl")
    return __version__


#: The last part of a setting's or environment variable's name that holds a credential
#: (``WANDB_API_KEY``, ``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``, ``password``); a tokenizer's
#: ``pad_token`` or ``max_new_tokens`` is not one.
_SECRET_NAME = re.compile(r"(?:^|_)(?:api_?key|token|secret|secret_access_key|password)$", re.IGNORECASE)
_SPECIAL_TOKEN = re.compile(r"(?:^|_)(?:pad|eos|bos|unk|sep|cls|mask)_token$", re.IGNORECASE)
#: ``name=value`` in a command line or an override (``hydra.job.env_set.WANDB_API_KEY=...``).
_ASSIGNMENT = re.compile(r"([\w.+~-]+)=([^\s'\"]+)")
#: ``name: value`` in a YAML file (Hydra's ``.hydra/*.yaml``).
_YAML_ENTRY = re.compile(r"^(\s*-?\s*[\w.+~-]+):[ \t]+(\S.*)$", re.MULTILINE)
REDACTED = "<redacted>"


def _is_secret_name(name: str) -> bool:
    last = name.rsplit(".", 1)[-1].lstrip("+~")
    return bool(_SECRET_NAME.search(last)) and not _SPECIAL_TOKEN.search(last)


def redact_secrets(value: Any) -> Any:
    """``value`` (a string, or nested mappings and sequences) with every credential replaced by
    ``<redacted>``: the value of any environment variable named like one (``WANDB_API_KEY``,
    ``HF_TOKEN``, ...) wherever it appears, a mapping entry whose key is named like one, and
    ``name=value`` with such a name (e.g. ``hydra.job.env_set.WANDB_API_KEY=...`` on a command
    line). What a run writes (``run_metadata.json``, the W&B config, Hydra's ``.hydra`` files, the
    resume command it prints) goes through this, so a key given to the run is never stored."""
    secrets = sorted((v for k, v in os.environ.items() if _is_secret_name(k) and len(v) >= 8), key=len, reverse=True)
    return _redact(value, secrets)


def _redact(value: Any, secrets: Sequence[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        value = _YAML_ENTRY.sub(
            lambda match: f"{match.group(1)}: {REDACTED}" if _is_secret_name(match.group(1).strip(" -")) else match.group(0),
            value,
        )
        return _ASSIGNMENT.sub(
            lambda match: f"{match.group(1)}={REDACTED}" if _is_secret_name(match.group(1)) else match.group(0), value
        )
    if isinstance(value, Mapping):
        return {key: REDACTED if isinstance(key, str) and _is_secret_name(key) and isinstance(item, str)
                else _redact(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item, secrets) for item in value]
    return value


def _plain_container(value: Any) -> Any:
    """Nested mappings and sequences (e.g. OmegaConf containers) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(key): _plain_container(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain_container(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _number(value: Any) -> Any:
    """A tensor or numpy scalar as a Python number (non-finite floats kept for W&B)."""
    return value.item() if hasattr(value, "item") else value


def _json_value(value: Any) -> Any:
    value = _number(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
