"""What ``saferl`` writes to the console while a run goes and when it is interrupted, in process
(the whole run with Ctrl-C is in ``tests/cli/test_runs.py``):

* progress when stdout is not a terminal: plain lines with counts, λ and the constraint estimate
  against d, written as the run goes (not bars at exit);
* the interrupted run's line: what was saved (checkpoint and iteration, finished stages, nothing)
  and the ``resume=auto`` command with the job's own overrides;
* a resumed start's Hydra files go to ``.hydra/resume-<k>/``, not over the original's;
* expected library noise from the ranks (DeepSpeed's accelerator warning, transformers' LOAD
  REPORT of a new score head, per-file bars) goes to the log file, anything else to the console.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from saferl.cli import interrupted_line, resume_command
from saferl.cli_preflight import resumed_hydra_subdir
from saferl.cli_progress import PlainProgress, headline_metrics, progress_display
from saferl.cli_quiet import WorkerLines, to_log_files
from saferl.learners.run_state import StageRecords, save_checkpoint_atomically, saved_state

PPO_METRICS = {
    "reward/score": 0.97,
    "policy/loss": -0.539,
    "multiplier/value_0": 0.61,
    "constraint/estimate_0": -0.78,
    "constraint/limit_0": -0.8,
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_writes_counts_multiplier_and_constraint_as_the_run_goes():
    stream, clock = io.StringIO(), FakeClock()
    progress = PlainProgress(stream, interval_s=30.0, clock=clock)
    clock.now += 4
    progress("sft", 1, 60, {"sft/loss": 2.5})
    clock.now += 5
    progress("sft", 2, 60, {"sft/loss": 2.0})  # 5 s after the last line: not written
    clock.now += 31
    progress("sft", 30, 60, {"sft/loss": 1.2})  # 31 s after: written
    progress("sft", 60, 60, {"sft/loss": 0.96})  # the last step: always written
    clock.now += 10
    progress("ppo_lag", 1, 40, PPO_METRICS)  # a new stage: its first step, its own clock
    assert stream.getvalue().splitlines() == [
        "sft: step 1/60, loss 2.500, 4 s",
        "sft: step 30/60, loss 1.200, 40 s",
        "sft: step 60/60, loss 0.960, 40 s",
        "ppo_lag: iteration 1/40, score 0.970, λ 0.610, E[c] -0.780 (limit -0.80), loss -0.539, 10 s",
    ]


def test_headline_metrics_show_one_multiplier_and_estimate_per_constraint():
    two = {**PPO_METRICS, "multiplier/value_1": 0.28, "constraint/estimate_1": 0.01, "constraint/limit_1": 0.02}
    assert headline_metrics(two)[1:3] == ["λ 0.610/0.280", "E[c] -0.780/0.010 (limit -0.80/0.02)"]
    plain_ppo = {"reward/score": 0.5, "policy/loss": 0.1}  # no costs: no λ, no estimate
    assert headline_metrics(plain_ppo) == ["score 0.500", "loss 0.100"]


def test_a_display_on_a_pipe_is_plain_and_its_notice_is_a_line():
    stream = io.StringIO()  # not a terminal
    display = progress_display(stream)
    with display:
        display.notice("resuming from iteration 3 (checkpoint runs/a/checkpoints/ppo_lag)")
        display("ppo_lag", 4, 4, PPO_METRICS)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "resuming from iteration 3 (checkpoint runs/a/checkpoints/ppo_lag)"
    assert lines[1].startswith("ppo_lag: iteration 4/4, score 0.970")


def _checkpoint(folder: Path, iterations: int) -> None:
    def save(staging: Path) -> None:
        staging.mkdir(parents=True)
        (staging / "history.json").write_text(json.dumps([{}] * iterations))

    save_checkpoint_atomically(save, folder)


def test_saved_state_names_the_newest_checkpoint_else_the_finished_stages(tmp_path):
    assert saved_state(tmp_path) == "nothing saved yet"
    StageRecords(tmp_path, resume=False).mark("sft", {"seconds": 1.0}, {"steps": 3})
    assert saved_state(tmp_path) == f"the finished stages sft ({tmp_path / 'stages.json'})"
    _checkpoint(tmp_path / "checkpoints" / "ppo_lag", 2)
    _checkpoint(tmp_path / "checkpoints" / "ppo_lag", 3)  # swapped in over the first
    assert saved_state(tmp_path) == f"iteration 3 (checkpoint {tmp_path / 'checkpoints' / 'ppo_lag'})"


def test_the_resume_command_keeps_the_jobs_overrides_and_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "2026-01-01" / "10-00-00"
    command = resume_command(["learner=mocan", "cost_limit=-1.0", "resume=auto", "logger.tags=[a b]"],
                             run, run, multirun=False)
    assert command == ("saferl learner=mocan cost_limit=-1.0 'logger.tags=[a b]' "
                       "hydra.run.dir=outputs/2026-01-01/10-00-00 resume=auto")
    # A sweep's job is continued alone (without the sweep preset); output_dir= names its own folder.
    elsewhere = tmp_path.parent / "elsewhere"
    command = resume_command(["sweep=cost_limit", "cost_limit=-1.0", f"output_dir={elsewhere}"], elsewhere,
                             run, multirun=True)
    assert command == f"saferl cost_limit=-1.0 output_dir={elsewhere} resume=auto"
    _checkpoint(run / "checkpoints" / "ppo_lag", 1)
    assert interrupted_line(run, "saferl x=1 resume=auto") == (
        f"saferl: interrupted; saved: iteration 1 (checkpoint {run / 'checkpoints' / 'ppo_lag'}); "
        "continue with: saferl x=1 resume=auto")


def test_a_resumed_start_writes_its_hydra_files_beside_the_originals(tmp_path):
    folder = tmp_path / "run"
    assert resumed_hydra_subdir([f"hydra.run.dir={folder}", "resume=auto"]) is None  # nothing to keep
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("- cost_limit=-1.0\n")
    assert resumed_hydra_subdir([f"hydra.run.dir={folder}"]) is None  # a fresh run: Hydra's own files
    assert resumed_hydra_subdir([f"hydra.run.dir={folder}", "resume=auto"]) == ".hydra/resume-1"
    (folder / ".hydra" / "resume-1").mkdir()
    assert resumed_hydra_subdir([f"hydra.run.dir={folder}", "resume=auto"]) == ".hydra/resume-2"


REPORT = [
    "[transformers] \x1b[1mLlamaForSequenceClassification LOAD REPORT\x1b[0m from: runs/a/models/sft",
    "Key            | Status     | ",
    "---------------+------------+-",
    "lm_head.weight | UNEXPECTED | ",
    "score.weight   | MISSING    | ",
    "",
    "Notes:",
    "- UNEXPECTED:\tcan be ignored when loading from different task/architecture.",
    "- MISSING:\tthose params were newly initialized because missing from the checkpoint.",
]
ACCELERATOR = ("[2026-12-05 07:54:41,450] [WARNING] [real_accelerator.py:213:get_accelerator] Setting accelerator "
               "to CPU. If you have GPU or other accelerator, we were unable to detect it.")


def test_expected_worker_noise_is_logged_and_everything_else_shown():
    lines = WorkerLines()
    shown, logged = lines.split(1, ["step 1", ACCELERATOR, *REPORT, "Loading weights: 100%|██| 21/21 [00:00<00:00]",
                                    "a real warning"])
    assert shown == ["step 1", "a real warning"]
    assert logged == [ACCELERATOR, *REPORT, "Loading weights: 100%|██| 21/21 [00:00<00:00]"]
    # A report that names another key may be a real problem: shown whole.
    other = [*REPORT[:4], "model.layers.0.mlp.weight | MISSING | ", *REPORT[4:]]
    shown, logged = lines.split(2, other)
    assert shown == other and logged == []
    # A report split over two batches: its tail follows the verdict on its head.
    shown, logged = lines.split(3, REPORT[:5])
    assert (shown, logged) == ([], REPORT[:5])
    shown, logged = lines.split(3, [*REPORT[5:], "after"])
    assert (shown, logged) == (["after"], REPORT[5:])


def test_noise_goes_to_the_log_files_not_the_console(tmp_path):
    import logging

    root = logging.getLogger()
    file_handler = logging.FileHandler(tmp_path / "cli.log")
    root.addHandler(file_handler)
    try:
        to_log_files("Token authentication is enabled for this Ray cluster.")
    finally:
        root.removeHandler(file_handler)
        file_handler.close()
    assert "Token authentication is enabled" in (tmp_path / "cli.log").read_text()


def test_a_display_on_a_terminal_shows_bars_with_the_same_metrics(capsys):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    display = progress_display(Terminal())
    assert not isinstance(display, PlainProgress)
    with display:
        display("ppo_lag", 1, 4, PPO_METRICS)
        display.notice("resuming from iteration 1 (checkpoint c)")
    task = display.bar.tasks[0]
    assert (task.description, task.completed, task.total) == ("ppo_lag", 1, 4)
    assert task.fields["status"] == "score 0.970, λ 0.610, E[c] -0.780 (limit -0.80), loss -0.539"
    assert "resuming from iteration 1 (checkpoint c)" in capsys.readouterr().out
