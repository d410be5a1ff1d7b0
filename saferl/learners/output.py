"""Where a learner (and a setup's own stages) write and report: :class:`RunOutput`.

One object carries the run folder, the tracker, the progress callback and the checkpoint policy, so
that every learner logs its training through the tracker and the progress display the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from saferl.tracking import NullTracker, Tracker

__all__ = ["Progress", "RunOutput"]

#: ``progress(stage, step, total, metrics)``, as the CLI's progress display takes it.
Progress = Callable[[str, int, int, dict[str, float]], None]


def _no_progress(stage: str, step: int, total: int, metrics: dict[str, float]) -> None:
    return None


def _no_notice(message: str) -> None:
    return None


@dataclass(frozen=True)
class RunOutput:
    """Where and how a run writes and reports.

    Attributes:
        folder: the run folder (models, checkpoints, results).
        tracker: receives every step's metrics (W&B, jsonl or none).
        progress: ``progress(stage, step, total, metrics)`` after each step of a stage.
        checkpoint_every: RL iterations between checkpoints (None: only the final one).
        resume: continue the folder's finished stages and last checkpoint.
        notice: ``notice(message)`` for a line the user should read (e.g. where a resumed run
            continues from); learners do not print, the CLI shows it.
    """

    folder: Path
    tracker: Tracker = field(default_factory=NullTracker)
    progress: Progress = _no_progress
    checkpoint_every: int | None = None
    resume: bool = False
    notice: Callable[[str], None] = _no_notice

    def under(self, name: str) -> RunOutput:
        """The same reporting, writing into the sub-folder ``name`` (e.g. MoCAN's ``mocan/``)."""
        return replace(self, folder=self.folder / name)

    def stage_progress(self, stage: str, total: int) -> Callable[[int, dict[str, float]], None]:
        """``progress(step, metrics)`` for one stage of ``total`` steps."""
        return lambda step, metrics: self.progress(stage, step, total, metrics)
