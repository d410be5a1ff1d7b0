"""What a run folder remembers so that ``resume=auto`` can continue a killed run.

Two pieces:

* :class:`StageRecords`: ``stages.json`` in the run folder, one entry per finished stage (its
  metrics and seconds). A stage is written to the file only after its outputs are complete, so a
  stage that was killed half-way is simply run again.
* :func:`save_checkpoint_atomically`: a learner checkpoint is written to a sibling folder, its
  manifest (every file's size and sha256) last, and then swapped in; the checkpoint it replaces is
  kept beside it as ``<folder>.previous``. A kill or a failed write (disk full, permissions) during
  saving leaves the last good checkpoint intact. :func:`resume_checkpoint` checks the manifest at
  resume and falls back to the previous checkpoint when the newest one is damaged, saying so.

A fresh run refuses a folder that already holds a run (nothing is overwritten); ``resume=auto``
accepts it and skips the finished stages.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saferl.atomic_files import write_text_atomically

__all__ = [
    "StageRecords",
    "RunFolderInUseError",
    "claim_run_folder",
    "save_checkpoint_atomically",
    "latest_checkpoint",
    "resume_checkpoint",
    "verify_checkpoint",
    "CorruptCheckpointError",
    "finished_stages",
    "saved_state",
]

RECORDS_FILE = "stages.json"
# A checkpoint's manifest: {"format": 1, "files": {relative path: {"size": bytes, "sha256": hex}}}.
# It keeps the name of the empty marker it replaced: written last, its presence still means
# "complete" (saved_state, the CLI and the tests look for it).
MANIFEST_FILE = "COMPLETE"
MANIFEST_FORMAT = 1
_HASH_CHUNK_BYTES = 1 << 20  # 1 MiB: a real checkpoint is GBs, read it in pieces


class RunFolderInUseError(RuntimeError):
    """A fresh run was pointed at a folder that holds another run's stages."""


class CorruptCheckpointError(RuntimeError):
    """No checkpoint of a learner passes its manifest's check (the message names every bad file)."""


# What a run leaves in its folder; a fresh run refuses a folder holding any of them. ``mocan`` is
# MoCAN's own sub-folder (its dual's samples, then its PPO stage's checkpoints): a MoCAN run on
# reused stages (model.from_run) leaves nothing else before it ends.
RUN_MARKERS = (RECORDS_FILE, "checkpoints", "summary.json", "result.json", "mocan")


def claim_run_folder(folder: str | Path, resume: bool) -> None:
    """Refuse to start a fresh run (``resume=False``) in a folder that holds another run's outputs.

    Raises:
        RunFolderInUseError: naming the folder and what is there.
    """
    folder = Path(folder)
    found = [name for name in RUN_MARKERS if (folder / name).exists()]
    if found and not resume:
        raise RunFolderInUseError(
            f"{folder} already holds a run ({', '.join(found)}); pass resume=auto to continue it, or "
            "choose another folder (nothing was changed)"
        )


class StageRecords:
    """``<run folder>/stages.json``: the finished stages of a run.

    Args:
        folder: the run folder.
        resume: continue the run in ``folder`` (True) or start a fresh one (False: the folder must
            not hold another run, see :func:`claim_run_folder`).

    Raises:
        RunFolderInUseError: a fresh run in a folder holding a run.
    """

    def __init__(self, folder: str | Path, resume: bool) -> None:
        claim_run_folder(folder, resume)  # a fresh run: no stages.json (nor any other run's outputs)
        self.path = Path(folder) / RECORDS_FILE
        self.resume = resume
        self._records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                self._records = json.loads(self.path.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.path}: not valid JSON ({error}); delete it to start over") from error

    def finished(self, stage: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The record of ``stage`` when resuming and it finished, else ``None`` (run it).

        Raises:
            ValueError: the stage finished with other settings than ``settings`` (the message
                names each differing key), so its outputs cannot be reused.
        """
        record = self._records.get(stage) if self.resume else None
        if record is not None:
            _require_same_settings(stage, record.get("settings"), settings, self.path)
        return record

    def recorded_settings(self, stage: str) -> dict[str, Any] | None:
        """The settings ``stage`` finished with (None: not finished), read without checking them."""
        record = self._records.get(stage)
        return None if record is None else record.get("settings")

    def mark(self, stage: str, record: dict[str, Any], settings: dict[str, Any]) -> None:
        """Record ``stage`` as finished with ``settings`` (written atomically)."""
        self._records[stage] = {**record, "settings": settings}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.path, json.dumps(self._records, indent=2) + "\n")


def _require_same_settings(stage: str, recorded: Any, wanted: dict[str, Any], path: Path) -> None:
    recorded = json.loads(json.dumps(recorded))
    wanted = json.loads(json.dumps(wanted))  # the same JSON round trip as the recorded values
    if recorded == wanted:
        return
    recorded = recorded or {}
    differing = sorted(key for key in set(recorded) | set(wanted) if recorded.get(key) != wanted.get(key))
    details = "; ".join(f"{key}: recorded {recorded.get(key)!r}, now {wanted.get(key)!r}" for key in differing)
    raise ValueError(
        f"{path}: stage {stage!r} finished with other settings ({details}); its outputs cannot be "
        "reused: start a fresh run folder, or restore those settings"
    )


def save_checkpoint_atomically(save: Callable[[Path], None], folder: str | Path) -> None:
    """Call ``save(staging_folder)``, write its manifest and swap the result in at ``folder``.

    The checkpoint it replaces is kept as ``folder.previous`` (and the one before that deleted), so
    that :func:`resume_checkpoint` has a good checkpoint to fall back to when the newest one is
    damaged. At any moment of a kill either ``folder`` or ``folder.previous`` holds a whole
    checkpoint (:func:`latest_checkpoint` finds it).

    Raises:
        OSError: ``save`` or the manifest failed to write (disk full, permissions); same errno,
            with a message naming ``folder``. The staging folder is removed, ``folder`` and
            ``folder.previous`` are as they were.
    """
    target = Path(folder)
    staging = target.with_name(target.name + ".staging")
    previous = target.with_name(target.name + ".previous")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        save(staging)
        _write_manifest(staging)
        if target.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(target, previous)
        os.replace(staging, target)  # nothing after this can fail: `staging` is gone only on success
    except BaseException as error:
        # A half-written staging folder is never swapped in; removing it also frees the space a
        # disk-full error needs back. The checkpoints in place were not touched (a failed second
        # rename leaves the last one at `previous`, where latest_checkpoint finds it).
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            message = (f"could not save the checkpoint {target} ({error}); its staging folder {staging} was "
                       f"removed; the last good checkpoint is {latest_checkpoint(target) or 'none yet'}")
            # OSError(errno, ...) gives the same subclass (PermissionError for EACCES, ...).
            raise (OSError(message) if error.errno is None else OSError(error.errno, message)) from error
        raise


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(checkpoint: Path) -> None:
    """Write ``checkpoint/COMPLETE``: the size and sha256 of every file under ``checkpoint``."""
    files = {
        path.relative_to(checkpoint).as_posix(): {"size": path.stat().st_size, "sha256": _file_sha256(path)}
        for path in sorted(checkpoint.rglob("*"))
        if path.is_file() and path.relative_to(checkpoint).as_posix() != MANIFEST_FILE
    }
    manifest = json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1) + "\n"
    (checkpoint / MANIFEST_FILE).write_text(manifest)


def verify_checkpoint(checkpoint: str | Path) -> list[str]:
    """What is wrong with ``checkpoint`` against its manifest, one line per bad file (each naming
    the file, what the manifest expects and what was found); ``[]``: every file is intact.

    Sizes are compared first, and only files of the right size are hashed (1 MiB at a time).
    """
    checkpoint = Path(checkpoint)
    manifest_path = checkpoint / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}")
        expected = {name: (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
    except FileNotFoundError:
        return [f"{manifest_path}: missing (the manifest, written last, marks a complete checkpoint)"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        # An empty file is also what saferl wrote before checkpoints had checksums.
        return [f"{manifest_path}: not a readable checkpoint manifest ({type(error).__name__}: {error})"]
    problems = []
    for name, (size, sha256) in sorted(expected.items()):
        path = checkpoint / name
        try:
            found_size = path.stat().st_size
            if found_size != size:
                problems.append(f"{path}: expected {size} bytes, found {found_size} (truncated or overwritten)")
            elif (found_sha256 := _file_sha256(path)) != sha256:
                problems.append(f"{path}: expected sha256 {sha256}, found {found_sha256} (corrupted)")
        except FileNotFoundError:
            problems.append(f"{path}: missing (expected {size} bytes)")
        except OSError as error:
            problems.append(f"{path}: unreadable ({error})")
    return problems


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint at ``folder`` (or the previous one), or ``None``.

    "Complete" means its manifest is there (cheap: nothing is hashed); :func:`resume_checkpoint`
    also checks its files.
    """
    target = Path(folder)
    for candidate in (target, target.with_name(target.name + ".previous")):
        if (candidate / MANIFEST_FILE).exists():
            return candidate
    return None


def resume_checkpoint(folder: str | Path, notice: Callable[[str], None]) -> Path | None:
    """The newest checkpoint of ``folder`` whose files match its manifest, for a resumed run.

    ``folder`` is checked first, then ``folder.previous``. When ``folder`` is damaged and the
    previous checkpoint is good, ``notice`` says which files are bad and which checkpoint is used,
    and the damaged one is moved to ``folder.damaged`` (kept for a look; the next save then keeps
    the good one as ``folder.previous`` instead of the damaged one).

    Returns:
        The checkpoint to load, or ``None`` when neither folder exists (nothing was ever saved).

    Raises:
        CorruptCheckpointError: every checkpoint that exists is damaged; the message names every
            bad file and how to start over (it never starts from scratch on its own).
    """
    target = Path(folder)
    previous = target.with_name(target.name + ".previous")
    damaged: list[tuple[Path, list[str]]] = []
    for candidate in (target, previous):
        if not candidate.exists():  # a kill between the two renames of a save leaves no `target`
            continue
        marker = candidate / MANIFEST_FILE
        if not damaged and marker.is_file() and marker.stat().st_size == 0:
            # saferl wrote an empty marker, last, before checkpoints had checksums: complete, but
            # there is nothing to check its files against. A run saved then still resumes.
            notice(f"the checkpoint {candidate} was written before checkpoints had checksums: its files "
                   "are not verified")
            return candidate
        problems = verify_checkpoint(candidate)
        if not problems:
            if candidate == previous and damaged:
                kept = target.with_name(target.name + ".damaged")
                shutil.rmtree(kept, ignore_errors=True)
                os.replace(target, kept)
                notice(
                    f"the checkpoint {target} is damaged ({'; '.join(damaged[0][1])}); resuming from the "
                    f"previous checkpoint {previous} instead (the damaged one is kept at {kept})"
                )
            return candidate
        damaged.append((candidate, problems))
    if not damaged:
        return None
    listing = "\n".join(f"  {problem}" for _, problems in damaged for problem in problems)
    raise CorruptCheckpointError(
        f"no good checkpoint to resume from in {target.parent}: "
        + " and ".join(str(candidate) for candidate, _ in damaged)
        + f" failed their manifest check:\n{listing}\n"
        f"To start this learner over, delete {target} and {previous} and run again with resume=auto "
        "(the run's finished stages are kept), or start a fresh run folder."
    )


def finished_stages(folder: str | Path) -> list[str]:
    """The stages ``stages.json`` in run ``folder`` records as finished, in order (none: [])."""
    try:
        return list(json.loads((Path(folder) / RECORDS_FILE).read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def saved_state(folder: str | Path) -> str:
    """What ``resume=auto`` would continue from in run ``folder``, in words: the newest complete
    learner checkpoint (its iteration and folder), else the finished stages, else "nothing saved
    yet". Reads only the folder (no torch): the CLI says it when a run is interrupted."""
    folder = Path(folder)
    checkpoints = [found for candidate in sorted(folder.glob("**/checkpoints/*"))
                   if not candidate.name.endswith((".staging", ".previous", ".damaged"))
                   and (found := latest_checkpoint(candidate)) is not None]
    if checkpoints:
        newest = max(checkpoints, key=lambda path: (path / MANIFEST_FILE).stat().st_mtime)
        try:
            iteration = len(json.loads((newest / "history.json").read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return f"the checkpoint {newest}"
        return f"iteration {iteration} (checkpoint {newest})"
    stages = finished_stages(folder)
    if stages:
        return f"the finished stages {', '.join(stages)} ({folder / RECORDS_FILE})"
    return "nothing saved yet"
