"""Experiment tracking with one interface: W&B (offline by default), a JSONL file, or nothing.

A learner calls ``tracker.log(metrics, step)`` and never branches on whether logging is on: the
:class:`NullTracker` has the same interface. Metric names live in fixed namespaces
(``rollout/``, ``reward/``, ``cost/``, ``constraint/``, ``multiplier/``, ``policy/``,
``critic/``, ``perf/``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Tracker", "NullTracker", "JsonlTracker", "WandbTracker", "MultiTracker"]


class Tracker(Protocol):
    """What every tracker offers."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def finish(self) -> None: ...


class NullTracker:
    """Logs nothing."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        return None

    def finish(self) -> None:
        return None


class JsonlTracker:
    """One JSON object per ``log`` call, appended to ``path`` (``{"step": ..., **metrics}``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        row = {"step": step, **{key: _plain(value) for key, value in metrics.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def finish(self) -> None:
        return None

    def read(self) -> list[dict[str, Any]]:
        """Every logged row, in order."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class WandbTracker:
    """A W&B run; ``mode="offline"`` (the default) needs no account and no network.

    Args:
        project: W&B project.
        config: the run's resolved config (recorded with the run).
        directory: where W&B writes its files.
        mode: ``"offline"``, ``"online"`` or ``"disabled"``.
        name: run name; tags: run tags.
    """

    def __init__(
        self,
        project: str,
        config: Mapping[str, Any],
        directory: str | Path,
        mode: str = "offline",
        name: str | None = None,
        tags: Sequence[str] = (),
    ) -> None:
        import wandb

        if mode not in ("offline", "online", "disabled"):
            raise ValueError(
                f"logger.wandb.mode must be 'offline', 'online' or 'disabled'; found {mode!r}"
            )
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            config=dict(config),
            dir=str(directory),
            mode=mode,
            name=name,
            tags=list(tags),
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            reinit="create_new",
        )

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log({key: _plain(value) for key, value in metrics.items()}, step=step)

    def finish(self) -> None:
        self.run.finish()


class MultiTracker:
    """Sends every call to several trackers."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
