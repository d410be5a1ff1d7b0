"""The run's progress display: what ``saferl`` shows while stages and learners run.

The learners call ``progress(stage, step, total, metrics)`` after each step (see
:class:`~saferl.learners.output.RunOutput`); this module turns those calls into

* on a terminal, one rich bar per stage with the step count, the elapsed time and the headline
  metrics: for an RL stage the reward score, λ and the constraint estimate against its limit d;
* when stdout is not a terminal (nohup, SLURM, a pipe), plain lines with the counts, written as
  the run goes (the first step, the last step, and every :data:`PLAIN_INTERVAL_S` seconds between):
  ``ppo_lag: iteration 12/40, score 0.970, λ 0.61, E[c] -0.78 (limit -0.80), 34 s`` (the
  limit the learner aims at: ``d`` less ``scorers.cost_margin``).

It imports only the standard library at module level (rich loads when a terminal display starts).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = [
    "PLAIN_INTERVAL_S",
    "PlainProgress",
    "ProgressDisplay",
    "headline_metrics",
    "progress_display",
]

#: Seconds between two plain progress lines of one stage (the first and last steps always print).
PLAIN_INTERVAL_S = 30.0

# The metrics an SFT or score-model stage shows, by the last part of their name.
_STAGE_SUFFIXES = ("loss", "accuracy")


def _joined(values: list[float], digits: int) -> str:
    return "/".join(f"{value:.{digits}f}" for value in values)


def _indexed(metrics: dict[str, float], prefix: str) -> list[float]:
    """``metrics[prefix + "0"], metrics[prefix + "1"], ...`` while present (one per constraint)."""
    values = []
    while f"{prefix}{len(values)}" in metrics:
        values.append(float(metrics[f"{prefix}{len(values)}"]))
    return values


def headline_metrics(metrics: dict[str, float]) -> list[str]:
    """The few metrics a progress line shows, formatted: an RL iteration's reward score, λ and
    constraint estimate against its limit (one value per constraint, joined by ``/``) and policy
    loss; another stage's losses and accuracies (at most four)."""
    if "reward/score" in metrics:
        shown = [f"score {metrics['reward/score']:.3f}"]
        multipliers = _indexed(metrics, "multiplier/value_")
        if multipliers:
            shown.append(f"λ {_joined(multipliers, 3)}")
        estimates, limits = (
            _indexed(metrics, "constraint/estimate_"),
            _indexed(metrics, "constraint/limit_"),
        )
        if estimates:
            # The learner's own limit: d less scorers.cost_margin with learned scorers.
            limit = f" (limit {_joined(limits, 2)})" if limits else ""
            shown.append(f"E[c] {_joined(estimates, 3)}{limit}")
        if "policy/loss" in metrics:
            shown.append(f"loss {metrics['policy/loss']:.3f}")
        return shown
    picked = [
        (key.split("/")[-1], value)
        for key, value in metrics.items()
        if key.endswith(_STAGE_SUFFIXES)
    ]
    return [f"{name} {value:.3f}" for name, value in picked[:4]]


def _unit(metrics: dict[str, float]) -> str:
    return "iteration" if "reward/score" in metrics else "step"


class PlainProgress:
    """Progress as plain lines on ``stream``, for output that is not a terminal.

    Args:
        stream: where the lines go (stdout).
        interval_s: seconds between two lines of one stage; its first and last steps always print.
        clock: seconds, monotonic (a test passes its own).
    """

    def __init__(
        self,
        stream: TextIO,
        interval_s: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream, self.interval_s, self.clock = stream, interval_s, clock
        self._started: dict[str, float] = {}
        self._last_line: dict[str, float] = {}
        self._last_call = clock()  # a stage's clock starts when the previous stage last reported

    def __call__(self, stage: str, step: int, total: int, metrics: dict[str, float]) -> None:
        now = self.clock()
        started = self._started.setdefault(stage, self._last_call)
        self._last_call = now
        last = self._last_line.get(stage)
        if last is not None and step < total and now - last < self.interval_s:
            return
        self._last_line[stage] = now
        parts = [
            f"{_unit(metrics)} {step}/{total}",
            *headline_metrics(metrics),
            f"{now - started:.0f} s",
        ]
        print(f"{stage}: {', '.join(parts)}", file=self.stream, flush=True)

    def notice(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None


class _RichProgress:
    """One rich bar per stage (for a terminal)."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
        )
        self.bar = Progress(*columns, transient=False)
        self._tasks: dict[str, int] = {}

    def __call__(self, stage: str, step: int, total: int, metrics: dict[str, float]) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self.bar.add_task(stage, total=total, status="")
        self.bar.update(
            self._tasks[stage], completed=step, status=", ".join(headline_metrics(metrics))
        )

    def notice(self, message: str) -> None:
        self.bar.console.print(message, highlight=False, markup=False)

    def __enter__(self) -> _RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)


#: What :func:`progress_display` returns: a context manager that is also the
#: ``progress(stage, step, total, metrics)`` callback, with ``notice(message)``.
ProgressDisplay = PlainProgress | _RichProgress


def progress_display(stream: TextIO | None = None) -> ProgressDisplay:
    """Bars when ``stream`` (default stdout) is a terminal, else plain lines on it."""
    stream = sys.stdout if stream is None else stream
    if stream.isatty():
        return _RichProgress()
    return PlainProgress(stream)
