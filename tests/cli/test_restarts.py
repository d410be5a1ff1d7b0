"""The CLI's automatic restarts (``saferl.cli.train_with_restarts``) through the real entry point
(:func:`saferl.cli.main`: preflight, Hydra, the tracker), with the job itself replaced by one that
loses a rank: what the user reads, the exit status, the resume command, and what the run folder
records. The real loss (rank processes killed mid-PPO, a node removed) is
tests/cli/test_runs.py and tests/runtime/test_multinode.py."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

import saferl.cli as cli
from saferl.runtime.group import RankLostError


@pytest.fixture
def losing_job(monkeypatch) -> list:
    """``train`` loses reward_critic rank 0 at every attempt; records each attempt's ``resume`` and
    each closing of the worker pool, in order."""
    attempts: list = []

    def train(config, folder, tracker):
        attempts.append(config.resume)
        tracker.log({"reward/score": 1.0}, step=1)  # logged again by every attempt
        raise RankLostError("reward_critic rank 0 died during 'train_step'", "reward_critic", 0, "train_step")

    monkeypatch.setattr(cli, "train", train)
    monkeypatch.setattr(cli, "_start_rank_processes", lambda config: None)  # no Ray for a stub job
    # The pool is the test session's: its idle rank processes serve the next tests.
    monkeypatch.setattr("saferl.runtime.recovery.close_worker_pool", lambda: attempts.append("pool closed"))
    return attempts


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setattr(sys, "argv", ["saferl", *args])
    try:
        cli.main()
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    return status, capsys.readouterr().err


def test_used_up_restarts_stop_in_one_line_naming_the_lost_rank_and_the_resume_command(
    losing_job, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    status, err = run_main(monkeypatch, capsys, "debug=tiny", "runtime.max_restarts=2", "logger=jsonl",
                           "hydra.run.dir=lost")
    assert status == 1 and "Traceback" not in err
    # The first attempt as asked; after each loss the rank processes go, then a resumed attempt.
    assert losing_job == [False, "pool closed", True, "pool closed", True, "pool closed"]
    restarts = [line for line in err.splitlines() if line.startswith("saferl: reward_critic rank 0 was lost")]
    assert len(restarts) == 2 and "automatic restart 1 " in restarts[0] and "automatic restart 2 " in restarts[1]
    (final,) = [line for line in err.splitlines() if line.startswith("saferl: error:")]
    assert "reward_critic rank 0 was lost during 'train_step'" in final and "runtime.max_restarts" in final
    command = shlex.split(final.split("continue with: ", 1)[1])
    assert command[0] == "saferl" and command[-1] == "resume=auto" and "hydra.run.dir=lost" in command
    folder = tmp_path / "lost"
    recorded = json.loads((folder / "run_metadata.json").read_text())["restarts"]
    assert [(r["number"], r["role"], r["rank"], r["method"]) for r in recorded] == [
        (1, "reward_critic", 0, "train_step"), (2, "reward_critic", 0, "train_step")]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row["perf/restarts"] for row in rows if "perf/restarts" in row] == [1, 2]
    assert sum("reward/score" in row for row in rows) == 1  # logged by three attempts, kept once


def test_no_restart_allowed_stops_at_the_first_loss(losing_job, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, err = run_main(monkeypatch, capsys, "debug=tiny", "runtime.max_restarts=0", "logger=jsonl",
                           "hydra.run.dir=lost")
    assert status == 1 and losing_job == [False, "pool closed"]
    assert not any(line.startswith("saferl: reward_critic") for line in err.splitlines())  # no restart said
    assert "used its 0 automatic restart(s)" in err
