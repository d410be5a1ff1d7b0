"""side_by_side: the calls run at the same time, their results come back by name, and a failure is
raised only once every call has ended."""

from __future__ import annotations

import threading
import time

import pytest

from saferl.runtime.side_by_side import side_by_side


def test_the_calls_run_at_the_same_time_and_return_by_name():
    # Each call waits for the other at a barrier: one after the other, the first would time out.
    barrier = threading.Barrier(2, timeout=10)

    def meet(value):
        barrier.wait()
        return value

    assert side_by_side({"b": lambda: meet(2), "a": lambda: meet(1)}) == {"b": 2, "a": 1}
    assert list(side_by_side({"b": lambda: meet(2), "a": lambda: meet(1)})) == ["b", "a"]


def test_a_failure_is_raised_after_every_call_has_ended():
    ended = threading.Event()

    def slow():
        time.sleep(0.3)
        ended.set()
        return "done"

    def broken():
        raise RuntimeError("reward rank 0 raised")

    with pytest.raises(RuntimeError, match="reward rank 0 raised"):
        side_by_side({"policy": slow, "reward": broken})
    assert ended.is_set()  # nothing was left running behind the error


def test_the_first_failure_in_the_order_of_the_calls_is_the_one_raised():
    def fails(message):
        def call():
            raise ValueError(message)

        return call

    with pytest.raises(ValueError, match="first"):
        side_by_side({"a": fails("first"), "b": fails("second")})


def test_one_call_runs_in_the_callers_thread():
    assert side_by_side({"only": threading.get_ident}) == {"only": threading.get_ident()}
    assert side_by_side({}) == {}
