"""Calls to different actor groups, issued together so that their ranks work at the same time.

A driver that calls the policy, the reference, the score models and the critics one after the other
leaves every group idle while it waits on the others, and pays each call's round trip in turn. The
calls of a rollout's scoring (log-probs, scores, values) or of an update (the policy and each
critic) need nothing from each other, so :func:`side_by_side` runs each in its own driver thread:
each thread submits its group's remote calls and waits on them, Ray runs the groups' ranks in
parallel, and the results are what the calls return one by one (each group computes the same thing
whenever it is called; each call still goes to one group from one thread).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["side_by_side"]

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None


def side_by_side(calls: Mapping[str, Callable[[], T]]) -> dict[str, T]:
    """Run every call at once and wait for all of them.

    Args:
        calls: name → a call without arguments. Two calls must not use the same group (a group's
            calls go out in order from one thread).

    Returns:
        name → what its call returned, in the order of ``calls``.

    Raises:
        the first failure, in the order of ``calls``, once every call has ended (none is left
        running behind the error).
    """
    if len(calls) <= 1:
        return {name: call() for name, call in calls.items()}
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="saferl-side-by-side")
    futures = {name: _executor.submit(call) for name, call in calls.items()}
    errors = [future.exception() for future in futures.values()]  # waits for every call
    for error in errors:
        if error is not None:
            raise error
    return {name: future.result() for name, future in futures.items()}
