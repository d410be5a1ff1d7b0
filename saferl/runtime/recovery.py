"""Automatic recovery: a run that loses a rank process, or a whole node, goes on by itself.

The driver runs its job as ``attempt(resume)``. When an attempt fails because a rank was lost (a
:class:`~saferl.runtime.group.RankLostError` anywhere in the exception's chain: a stage that ran
side by side, or a learner that re-raised, keeps it as the cause), the driver

1. kills every rank process it holds (:func:`~saferl.runtime.pool.close_worker_pool`): the
   survivors may be waiting in a collective on the lost peer, and their weights are the lost
   iteration's half-updated ones;
2. says so, with what the run goes on from (``on_restart``: the console, ``perf/restarts`` and
   ``run_metadata.json`` in the CLI);
3. runs the job again with ``resume=True``: finished stages are read back from ``stages.json``,
   a learner continues from its last complete checkpoint, a stage that had not finished runs
   again from its start. The seeds are functions of the iteration, so the history, λ and
   scores equal an uninterrupted run's.

At most ``runtime.max_restarts`` times per run; the next loss raises
:class:`RestartsExhaustedError`, which names the lost role and rank and says how to resume by
hand. Any other error (a rank that raised, a timeout, a mistake in the data) is not retried:
running again would meet it again.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from saferl.runtime.group import RankLostError
from saferl.runtime.pool import close_worker_pool

__all__ = ["Restart", "RestartsExhaustedError", "lost_rank", "run_with_restarts"]

T = TypeVar("T")


@dataclass(frozen=True)
class Restart:
    """One automatic restart of a run.

    Attributes:
        number: 1 for the run's first restart (counting those of earlier launches of the run).
        role, rank, method: the lost rank and the call it was serving.
        error: the loss, in words.
        resumed_from: what the run went on from (``saved_state`` of the run folder).
        time: UTC, ISO 8601.
    """

    number: int
    role: str
    rank: int
    method: str
    error: str
    resumed_from: str
    time: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RestartsExhaustedError(RuntimeError):
    """A rank was lost after ``runtime.max_restarts`` restarts were used.

    Attributes:
        reason: what was lost and what the run folder holds, without the advice to resume.
        lost: the loss.
    """

    def __init__(self, reason: str, lost: RankLostError) -> None:
        super().__init__(f"{reason}; resume it with resume=auto")
        self.reason, self.lost = reason, lost


def lost_rank(error: BaseException) -> RankLostError | None:
    """The :class:`RankLostError` that ``error`` is, or was caused by (``__cause__`` or
    ``__context__``, any depth), else None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, RankLostError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def run_with_restarts(
    attempt: Callable[[bool], T],
    resume: bool,
    max_restarts: int,
    saved_state: Callable[[], str],
    on_restart: Callable[[Restart], None],
    restarts_before: int = 0,
) -> T:
    """``attempt(resume)``, run again with ``resume=True`` after each lost rank, at most
    ``max_restarts`` times.

    Args:
        attempt: the job; its argument says whether to go on from the run folder's saved state.
        resume: the first attempt's argument (the user's ``resume``).
        max_restarts: ``runtime.max_restarts``.
        saved_state: what a resumed attempt would go on from, in words (read after a loss).
        on_restart: told of each restart before the next attempt starts.
        restarts_before: restarts recorded by earlier launches of this run (they number the new
            ones; the limit counts this launch's only).

    Raises:
        RestartsExhaustedError: a rank was lost with no restart left (its cause is the loss).
        Whatever ``attempt`` raised for any other reason.
    """
    restarts = 0
    while True:
        try:
            return attempt(resume)
        except Exception as error:
            lost = lost_rank(error)
            if lost is None:
                raise
            close_worker_pool()  # 1. no process of the lost attempt is reused
            saved = saved_state()
            if restarts >= max_restarts:
                raise RestartsExhaustedError(
                    f"{lost.role} rank {lost.rank} was lost during {lost.method!r} and the run has "
                    f"used its {max_restarts} automatic restart(s) (runtime.max_restarts); saved: "
                    f"{saved}",
                    lost,
                ) from error
            restarts += 1
            on_restart(Restart(  # 2. say so
                number=restarts_before + restarts, role=lost.role, rank=lost.rank, method=lost.method,
                error=str(lost), resumed_from=saved,
                time=datetime.datetime.now(datetime.timezone.utc).isoformat(),
            ))
            resume = True  # 3. go on from the saved state
