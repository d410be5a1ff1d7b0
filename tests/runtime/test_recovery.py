"""Automatic recovery (saferl.runtime.recovery) without Ray: which errors are a lost rank, how
often a job runs again and with what, and what is said when the restarts are used up. The whole
path (a rank process killed during PPO, the run going on to the uninterrupted run's numbers) is
tests/cli/test_runs.py::test_a_killed_rank_process_is_restarted_and_the_run_ends_as_if_uninterrupted."""

from __future__ import annotations

import pytest

from saferl.runtime import recovery
from saferl.runtime.group import RankLostError
from saferl.runtime.recovery import RestartsExhaustedError, lost_rank, run_with_restarts


def lost(role: str = "policy", rank: int = 0, method: str = "generate") -> RankLostError:
    return RankLostError(f"{role} rank {rank} died during {method!r}", role, rank, method)


def test_a_lost_rank_is_found_through_causes_and_contexts():
    direct = lost()
    assert lost_rank(direct) is direct
    try:
        try:
            raise lost("reward_critic", 1, "train_step")
        except RankLostError as error:
            raise ValueError("the stage failed") from error  # a stage re-raising with a cause
    except ValueError as wrapped:
        assert lost_rank(wrapped).role == "reward_critic" and lost_rank(wrapped).rank == 1
    try:
        try:
            raise lost("cost", 0, "end_scores")
        except RankLostError:
            raise RuntimeError("while shutting down")  # noqa: B904 - an implicit __context__
    except RuntimeError as chained:
        assert lost_rank(chained).role == "cost"
    assert lost_rank(RuntimeError("policy rank 0 raised in 'generate': ValueError")) is None


@pytest.fixture
def pool_closes(monkeypatch) -> list[int]:
    closes: list[int] = []
    monkeypatch.setattr(recovery, "close_worker_pool", lambda: closes.append(1))
    return closes


def test_the_job_runs_again_with_resume_after_each_loss_and_each_restart_is_told(pool_closes):
    calls, restarts = [], []
    losses = [lost("policy", 0, "generate"), lost("cost_critic", 0, "train_step")]

    def attempt(resume: bool) -> str:
        calls.append(resume)
        if losses:
            raise losses.pop(0)
        return "summary"

    saved = iter(["iteration 3 (checkpoint a)", "iteration 5 (checkpoint a)"])
    result = run_with_restarts(attempt, resume=False, max_restarts=2, saved_state=lambda: next(saved),
                               on_restart=restarts.append, restarts_before=1)
    assert result == "summary"
    assert calls == [False, True, True]  # the first attempt as the user asked, then resumed
    assert len(pool_closes) == 2  # no process of a failed attempt is reused
    assert [r.number for r in restarts] == [2, 3]  # numbered after the run's earlier launch's one
    assert [(r.role, r.rank, r.method) for r in restarts] == [("policy", 0, "generate"), ("cost_critic", 0, "train_step")]
    assert [r.resumed_from for r in restarts] == ["iteration 3 (checkpoint a)", "iteration 5 (checkpoint a)"]
    assert set(restarts[0].to_dict()) == {"number", "role", "rank", "method", "error", "resumed_from", "time"}


def test_when_the_restarts_are_used_up_the_error_names_the_lost_rank_and_how_to_resume(pool_closes):
    calls, restarts = [], []

    def attempt(resume: bool) -> None:
        calls.append(resume)
        raise lost("reference", 0, "token_logprobs")

    with pytest.raises(RestartsExhaustedError) as raised:
        run_with_restarts(attempt, resume=True, max_restarts=1, saved_state=lambda: "iteration 2 (checkpoint c)",
                          on_restart=restarts.append)
    message = str(raised.value)
    assert "reference rank 0 was lost during 'token_logprobs'" in message
    assert "runtime.max_restarts" in message and "iteration 2 (checkpoint c)" in message
    assert message.endswith("resume it with resume=auto") and "resume=auto" not in raised.value.reason
    assert isinstance(raised.value.__cause__, RankLostError)
    assert calls == [True, True] and len(restarts) == 1


def test_other_errors_are_not_retried(pool_closes):
    calls = []

    def attempt(resume: bool) -> None:
        calls.append(resume)
        raise RuntimeError("policy rank 0 raised in 'train_step': ValueError: bad batch")

    with pytest.raises(RuntimeError, match="bad batch"):
        run_with_restarts(attempt, resume=False, max_restarts=2, saved_state=lambda: "", on_restart=print)
    assert calls == [False] and pool_closes == []


def test_max_restarts_is_a_checked_runtime_key():
    from saferl.runtime.specs import RuntimeSpec

    assert RuntimeSpec().max_restarts == 2
    for bad in (-1, 1.5, "2"):
        with pytest.raises(ValueError, match="runtime.max_restarts"):
            RuntimeSpec(max_restarts=bad)
