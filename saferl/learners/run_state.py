"""What a run folder remembers so that ``resume=auto`` can continue a killed run.

Two pieces:

* :class:`StageRecords`: ``stages.json`` in the run folder, one entry per finished stage (its
  metrics and seconds). A stage is written to the file only after its outputs are complete, so a
  stage that was killed half-way is simply run again.
* :func:`save_checkpoint_atomically`: a learner checkpoint is written to a sibling folder and then
  swapped in, so a kill during saving leaves the previous checkpoint intact.

A fresh run refuses a folder that already holds a run (nothing is overwritten); ``resume=auto``
accepts it and skips the finished stages.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "StageRecords",
    "RunFolderInUseError",
    "claim_run_folder",
    "save_checkpoint_atomically",
    "latest_checkpoint",
    "finished_stages",
    "saved_state",
]

RECORDS_FILE = "stages.json"


class RunFolderInUseError(RuntimeError):
    """A fresh run was pointed at a folder that holds another run's stages."""


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
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self._records, indent=2) + "\n")
        os.replace(temporary, self.path)


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
    """Call ``save(staging_folder)`` and swap the result in at ``folder``.

    The previous checkpoint stays in place until the new one is complete; at any moment of a kill
    either ``folder`` or ``folder.previous`` holds a whole checkpoint (:func:`latest_checkpoint`
    finds it).
    """
    target = Path(folder)
    staging = target.with_name(target.name + ".staging")
    previous = target.with_name(target.name + ".previous")
    shutil.rmtree(staging, ignore_errors=True)
    save(staging)
    (staging / "COMPLETE").write_text("")
    if target.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(target, previous)
    os.replace(staging, target)
    shutil.rmtree(previous, ignore_errors=True)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint at ``folder`` (or the one being replaced), or ``None``."""
    target = Path(folder)
    for candidate in (target, target.with_name(target.name + ".previous")):
        if (candidate / "COMPLETE").exists():
            return candidate
    return None


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
                   if not candidate.name.endswith((".staging", ".previous"))
                   and (found := latest_checkpoint(candidate)) is not None]
    if checkpoints:
        newest = max(checkpoints, key=lambda path: (path / "COMPLETE").stat().st_mtime)
        try:
            iteration = len(json.loads((newest / "history.json").read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return f"the checkpoint {newest}"
        return f"iteration {iteration} (checkpoint {newest})"
    stages = finished_stages(folder)
    if stages:
        return f"the finished stages {', '.join(stages)} ({folder / RECORDS_FILE})"
    return "nothing saved yet"
