"""Whole runs through the ``saferl`` command on the built-in world, at ``debug=tiny`` size:

* the default job end to end (every stage, W&B offline, the outputs a user reads);
* every CPU preset for one iteration (``model.from_run`` reuses the first run's stages 1–4);
* a sweep of the cost limit and its summary (table, CSV, frontier PNG);
* the arena (``job=evaluate``) on the first run's policy;
* ``resume=auto``: a run stopped with Ctrl-C mid-way says in one line what it saved and how to
  continue; that command resumes it to the same metrics as an uninterrupted run.

The default job and the interrupted run go through the console script in their own processes; the
sweep and the resumed run call the same entry point (``saferl.cli.main``) in this process, so that
they reuse the session's rank processes.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from saferl.cli import CONFIG_DIR, main, run
from saferl.cli_errors import missing_launcher_plugin
from saferl.learners.run_state import RunFolderInUseError, latest_checkpoint

pytestmark = pytest.mark.slow

TINY = ["debug=tiny", "runtime.local_num_cpus=8"]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def saferl(*args: str, cwd: Path, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "WANDB_"))}
    return subprocess.run(
        [sys.executable, "-m", "saferl.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env,
        **kwargs,
    )


def saferl_here(*args: str, cwd: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    """The ``saferl`` command's own entry point (:func:`saferl.cli.main`: the preflight, then Hydra)
    with ``args``, run in this process from ``cwd``: its jobs' groups take the test session's idle
    rank processes instead of starting a Ray cluster and new ranks of their own (the console script
    itself is run by ``first_run`` and the interrupted run). Returns ``(status, stdout, stderr)``."""
    import logging

    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["saferl", *args])
    status = 0
    try:
        main()
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:  # Hydra's console and cli.log handlers for the job
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The default job at debug size, through the console entry point (W&B offline). It is run as
    the ``world_ppo_lag`` preset, which is the default job with more iterations (debug=tiny sets
    them to 2 either way), so this run is also that preset's one-iteration test."""
    folder = tmp_path_factory.mktemp("first_run")
    completed = saferl("experiment=world_ppo_lag", *TINY, f"hydra.run.dir={folder}", cwd=folder)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return folder, completed


@pytest.fixture(scope="module", autouse=True)
def _stop_ray_started_here():
    import ray

    started = not ray.is_initialized()
    yield
    if started and ray.is_initialized():
        ray.shutdown()


def test_default_job_end_to_end(first_run):
    folder, completed = first_run
    result = json.loads((folder / "result.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    assert len(result["history"]) == 2
    # The actor's learning rate decays linearly to 0 over the run's 2 optimizer steps (the
    # default schedule): step k uses lr·(T − k)/T.
    learner = composed("experiment=world_ppo_lag", *TINY).learner
    assert learner.policy_lr_schedule == "linear"
    assert [row["policy/learning_rate"] for row in result["history"]] == pytest.approx(
        [learner.policy_learning_rate, learner.policy_learning_rate / 2], rel=1e-12)
    assert result["reference"]["normalised_lagrangian_gap"] == pytest.approx(1.0)
    assert result["optimum"]["normalised_lagrangian_gap"] == pytest.approx(0.0, abs=1e-8)
    assert result["optimum"]["violation"] == [pytest.approx(0.0, abs=1e-9)]  # one per constraint
    trained = result["trained"]
    assert trained["lagrangian_gap"] == pytest.approx(result["beta"] * trained["kl_to_optimum"], abs=1e-9)
    assert trained["lagrangian_gap"] > 0 and len(trained["violation"]) == 1
    # The learner's own target (the §1 streams' fixed point is π* itself, here on the learned
    # scores) and the optimum of the learned problem, both scored on the ground truth.
    assert "fixed point with the §1 streams" in summary["target_label"] and summary["target"] is not None
    assert summary["learned_optimum"] is not None and len(summary["learned_optimal_multiplier"]) == 1
    # The learner aims at d − δ (scorers.cost_margin), tighter than the learned problem at d: the
    # same tilt at a larger multiplier, which the label names.
    assert "at its own limit E c ≤ -0.95" in summary["target_label"]
    assert summary["target_multiplier"][0] >= summary["learned_optimal_multiplier"][0]
    assert summary["method"] == "ppo_lag" and summary["cost_limit"] == -0.8 and summary["beta"] == 0.5
    assert summary["trained"] == result["trained"] and summary["headline"] == result["trained"]["normalised_lagrangian_gap"]
    assert f"{summary['trained']['normalised_lagrangian_gap']:.3f}" in completed.stdout
    for name in ("models/sft", "models/reward_model", "models/cost_model", "models/policy_ppo_lag"):
        assert (folder / name / "config.json").is_file(), name
    assert (folder / "checkpoints" / "ppo_lag" / "COMPLETE").is_file()
    assert set(json.loads((folder / "stages.json").read_text())) == {"data", "sft", "pairs", "reward_model", "cost_model"}
    # Tracking: fixed namespaces in metrics.jsonl, an offline W&B run with the git revision.
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    names = {key for row in rows for key in row if key != "step"}
    for namespace in ("rollout/", "reward/", "cost/", "constraint/", "multiplier/", "policy/", "critic/", "perf/"):
        assert any(name.startswith(namespace) for name in names), namespace
    # Score models: the training steps' accuracies and the held-out ones have different names.
    assert {"reward_model/train_pairwise_accuracy", "reward_model/heldout_pairwise_accuracy",
            "cost_model/train_sign_accuracy", "cost_model/heldout_sign_accuracy"} <= names
    assert "reward_model/pairwise_accuracy" not in names
    # stdout is a pipe: progress is plain lines with counts (an RL stage's with λ and the
    # constraint estimate against d), and debug=tiny's report says it is a smoke test.
    lines = completed.stdout.splitlines()
    assert any(line.startswith("sft: step 30/30, loss ") for line in lines)
    assert any(line.startswith("ppo_lag: iteration 2/2, score ") and ", λ " in line and ", E[c] " in line
               and "(limit -0.95)" in line for line in lines), completed.stdout[-3000:]  # d − scorers.cost_margin
    assert "SMOKE TEST (debug=tiny)" in completed.stdout and "[SMOKE TEST: not results]" in completed.stdout
    # Expected library noise stays off the console and in cli.log.
    console = completed.stdout + completed.stderr
    for noise in ("Setting accelerator to CPU", "LOAD REPORT", "Token authentication is enabled"):
        assert noise not in console, noise
    assert "Setting accelerator to CPU" in (folder / "cli.log").read_text()
    metadata = json.loads((folder / "run_metadata.json").read_text())
    # The revision of the code that ran: a commit of this repository (HEAD, or an ancestor when
    # commits landed while the run was going).
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", metadata["git_revision"], "HEAD"], cwd=CONFIG_DIR)
    assert len(metadata["git_revision"]) == 40 and ancestor.returncode == 0
    assert "hydra.run.dir" in metadata["command"]
    assert list((folder / "wandb").glob("offline-run-*/run-*.wandb"))
    # The run says where its offline W&B run is and how to upload it.
    (offline,) = (folder / "wandb").glob("offline-run-*")
    assert f"W&B offline run: {offline} (upload it with `wandb sync {offline}`)" in completed.stdout


def test_a_fresh_run_refuses_a_folder_holding_a_run(first_run):
    folder, _ = first_run
    before = (folder / "summary.json").read_text()
    with pytest.raises(RunFolderInUseError, match="resume=auto"):
        run(composed(*TINY, f"output_dir={folder}"))
    assert (folder / "summary.json").read_text() == before


WORLD_PRESETS = {  # world_ppo_lag: the first run
    "world_mocan": [],
    "world_pecan": [],
    "world_bfpo": [],
    "world_safe_nca": [],
}


@pytest.mark.parametrize("preset", sorted(WORLD_PRESETS))
def test_world_preset_runs_one_iteration(preset, first_run, tmp_path):
    folder, _ = first_run
    cfg = composed(
        f"experiment={preset}",
        *TINY,
        *WORLD_PRESETS[preset],
        f"model.from_run={folder}",
        f"output_dir={tmp_path}",
        "logger=jsonl",
    )
    headline = run(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["headline"] == pytest.approx(headline)
    assert summary["trained"]["normalised_lagrangian_gap"] == pytest.approx(headline)
    assert (tmp_path / summary["policy_dir"] / "config.json").is_file()
    assert not (tmp_path / "models" / "sft").exists()  # stages 1–4 came from the first run
    expected = {"world_mocan": "mocan", "world_pecan": "pecan",
                "world_bfpo": "preference:bfpo", "world_safe_nca": "preference:safe_nca"}[preset]
    assert summary["method"] == expected
    if preset == "world_mocan":
        assert (tmp_path / summary["predicted_frontier_csv"]).is_file()


@pytest.mark.parametrize(("learner", "scorers"), [("ppo_lag", "oracle"), ("mocan", "learned")])
def test_two_costs_preset_runs_with_one_multiplier_per_cost(learner, scorers, first_run, tmp_path, capsys):
    """experiment=world_two_costs (harm and refusal, m = 2) reusing the first run's harm-only stages:
    its refusal pairs and refusal cost model are made in its own folder;
    PPO-Lagrangian learns two multipliers with two cost critics, MoCAN solves the m = 2 dual, and
    the report and summary carry one E c_j and one violation per constraint."""
    folder, _ = first_run
    # No harm margin: the debug-size score models' learned problem cannot meet harm −0.95 within a
    # 2 % refusal budget (MoCAN's dual then stops, naming scorers.cost_margin); the margin's own
    # effect is tested at its key.
    cfg = composed("experiment=world_two_costs", *TINY, f"learner={learner}", f"scorers={scorers}",
                   "scorers.cost_margin.harm=0", f"model.from_run={folder}", f"output_dir={tmp_path}", "logger=jsonl")
    headline = run(cfg)
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["headline"] == pytest.approx(headline) and summary["method"] == learner
    assert summary["cost_limit"] == [-0.8, 0.02] and summary["cost_names"] == ["harm", "refusal"]
    for block in ("trained", "reference", "optimum", "target"):
        assert len(summary[block]["expected_cost"]) == len(summary[block]["violation"]) == 2, block
    assert len(summary["multiplier"]) == len(summary["optimal_multiplier"]) == len(summary["target_multiplier"]) == 2
    assert summary["optimum"]["violation"] == [pytest.approx(0.0, abs=1e-9)] * 2
    assert all(value > 0.1 for value in summary["optimal_multiplier"])  # both limits bind at the optimum
    for header in ("E c1 (harm)", "E c2 (refusal)", "violation c1", "violation c2"):
        assert header in printed, header
    assert not (tmp_path / "models" / "sft").exists()  # the first run's SFT policy, reused
    assert (tmp_path / "data" / "preferences_train_refusal.jsonl").is_file()
    # The refusal model is trained here either way: the cost critic's start (ppo_lag) or the scorer.
    assert (tmp_path / "models" / "cost_refusal_model" / "config.json").is_file()
    if learner == "ppo_lag":  # two multipliers, two cost critics, each cost scored by the ground truth
        rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        names = {key for row in rows for key in row}
        assert {"multiplier/value_0", "multiplier/value_1", "critic/cost_1_loss", "cost/score_1"} <= names
        assert summary["learned_optimum"] is None  # oracle scorers: no learned problem
    else:  # learned scorers: the m = 2 dual from the samples' calibrated scores, and the learned optimum
        result = json.loads((tmp_path / "result.json").read_text())
        assert len(result["dual"]["multiplier"]) == len(result["dual"]["predicted_cost"]) == 2
        assert summary["target_multiplier"] == pytest.approx(result["dual"]["multiplier"])
        assert summary["learned_optimum"] is not None and len(summary["learned_optimal_multiplier"]) == 2
        assert set(result["setup_details"]) >= {"reward_model", "cost_model", "cost_refusal_model"}


def test_sweep_of_the_cost_limit_and_its_summary(first_run, tmp_path, monkeypatch, capsys):
    folder, _ = first_run
    sweep_dir = tmp_path / "sweep"
    status, _, err = saferl_here(
        "sweep=cost_limit",
        *TINY,
        f"model.from_run={folder}",
        f"hydra.sweep.dir={sweep_dir}",
        'hydra.sweeper.params.cost_limit="-1.0,-0.6"',  # two of the preset's four points (quoted: a string)
        cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys,
    )
    assert status == 0, err[-4000:]
    # Each job's folder is named after its number and its overrides (paths such as model.from_run
    # left out).
    folders = {path.name.split("_", 1)[0]: path for path in sweep_dir.iterdir() if path.is_dir()}
    assert sorted(folders) == ["0", "1"]
    assert folders["0"].name == "0_cost_limit=-1.0,debug=tiny,runtime.local_num_cpus=8,sweep=cost_limit"
    summaries = {job: json.loads((folders[job] / "summary.json").read_text()) for job in ("0", "1")}
    assert [summaries[job]["cost_limit"] for job in ("0", "1")] == [-1.0, -0.6]
    # Both jobs share one W&B group named after the sweep folder.
    for job in ("0", "1"):
        assert list((folders[job] / "wandb").glob("offline-run-*"))
        metadata = json.loads((folders[job] / "run_metadata.json").read_text())
        assert metadata["config"]["logger"]["group"] == sweep_dir.name
    summary = subprocess.run(
        [sys.executable, "-m", "saferl.eval.sweep_summary", str(sweep_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert summary.returncode == 0, summary.stderr
    with (sweep_dir / "sweep_summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["override.cost_limit"]) for row in rows] == [-1.0, -0.6]
    for row, job in zip(rows, ("0", "1"), strict=True):
        assert float(row["trained_expected_cost"]) == pytest.approx(summaries[job]["trained"]["expected_cost"][0])
    assert (sweep_dir / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{summaries['1']['trained']['expected_reward']:.4f}" in summary.stdout


def test_evaluate_job_runs_the_arena_on_a_finished_run(first_run, tmp_path):
    folder, _ = first_run
    win_rate = run(composed("job=evaluate", f"job.run_dir={folder}", "job.responses_per_prompt=2",
                            "job.judges=[ground_truth]", f"output_dir={tmp_path}", "logger=none"))
    arena = json.loads((tmp_path / "arena.json").read_text())
    assert Path(arena["policy"]) == folder / "models" / "policy_ppo_lag"
    assert Path(arena["reference"]) == folder / "models" / "sft"
    judges = {row["judge"] for row in arena["rows"]}
    assert judges == {"scorers", "ground truth"}
    truth = next(r for r in arena["rows"] if r["judge"] == "ground truth" and r["model"] == "policy")
    assert win_rate == pytest.approx(truth["reward_win_rate"])
    assert len(arena["samples"]) == 16 * 2  # every world prompt, two responses each
    # the safety judge (the world's ground truth) agrees with the arena's ground-truth safe rate
    (summary,) = arena["safety_judges"]["policy"]["summaries"]
    assert summary["judge"] == "ground_truth" and summary["num_responses"] == 32
    assert summary["safe_share"] == pytest.approx(truth["safe_rate"])


def _history_without_timings(result: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in result["history"]]


def assert_same_final_metrics(run: Path, uninterrupted: Path) -> None:
    """``run`` ended with the uninterrupted run's two iterations' metrics, λ and exact scores."""
    expected = json.loads((uninterrupted / "result.json").read_text())
    found = json.loads((run / "result.json").read_text())
    assert len(found["history"]) == len(expected["history"]) == 2
    for found_row, expected_row in zip(_history_without_timings(found), _history_without_timings(expected), strict=True):
        assert found_row == pytest.approx(expected_row, rel=1e-6, abs=1e-9)
    assert found["multiplier"] == pytest.approx(expected["multiplier"], rel=1e-9)
    for key, value in expected["trained"].items():
        assert found["trained"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_an_interrupted_run_says_how_to_resume_and_resumes_to_the_same_final_metrics(
    first_run, tmp_path, monkeypatch, capsys
):
    """The uninterrupted run is the first run (two PPO iterations); the same PPO stage on its
    models (``model.from_run``) gets Ctrl-C (SIGINT to its process group, as a terminal sends it)
    after the first iteration's checkpoint. It must stop with status 130 and one line, without a
    traceback, naming the checkpoint and the command that continues it; a fresh run refuses the
    folder; the printed command resumes it (and says from where) to the same metrics, and leaves
    the original run's ``.hydra/overrides.yaml`` as it was."""
    folder, _ = first_run
    # One rank process serves the stage's groups (they compute the same numbers however many).
    common = [*TINY, f"model.from_run={folder}", "checkpoint_every=1", "logger=jsonl",
              "runtime.max_single_rank_processes=1"]
    killed = tmp_path / "killed"
    history_file = killed / "checkpoints" / "ppo_lag" / "history.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "WANDB_"))}
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "saferl.cli", *common, f"hydra.run.dir={killed}"],
            cwd=tmp_path, stdout=stdout, stderr=stderr, start_new_session=True, env=env,
        )
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    if len(json.loads(history_file.read_text())) >= 1:
                        break
                except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or being swapped in
                    pass
                time.sleep(0.05)
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the driver and whatever shares its group
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    out, err = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert process.returncode == 130, err[-4000:]
    assert "Traceback" not in err + out and "KeyboardInterrupt" not in err + out
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert len(said) == 1, err[-4000:]
    checkpoint = latest_checkpoint(killed / "checkpoints" / "ppo_lag")
    iterations_done = len(json.loads((checkpoint / "history.json").read_text()))
    assert iterations_done == 1 and not (killed / "summary.json").exists()
    assert f"saved: iteration 1 (checkpoint {checkpoint})" in said[0]
    command = shlex.split(said[0].split("continue with: ", 1)[1])
    assert command[0] == "saferl" and command[-1] == "resume=auto" and "hydra.run.dir=killed" in command
    # A fresh run refuses the folder; the printed command continues it.
    status, _, refused_err = saferl_here(*common, f"hydra.run.dir={killed}", cwd=tmp_path,
                                         monkeypatch=monkeypatch, capsys=capsys)
    assert status != 0 and "resume=auto" in refused_err
    status, resumed_out, resumed_err = saferl_here(*command[1:], cwd=tmp_path, monkeypatch=monkeypatch,
                                                   capsys=capsys)
    assert status == 0, resumed_err[-4000:]
    assert f"resuming from iteration 1 (checkpoint {checkpoint})" in resumed_out
    assert_same_final_metrics(killed, folder)
    # The original start's overrides stay in .hydra/; the resume's are in .hydra/resume-1/.
    assert "resume=auto" not in (killed / ".hydra" / "overrides.yaml").read_text()
    assert "- resume=auto" in (killed / ".hydra" / "resume-1" / "overrides.yaml").read_text()


def test_a_killed_rank_process_is_restarted_and_the_run_ends_as_if_uninterrupted(first_run, tmp_path):
    """The first run's PPO stage (``model.from_run``, two iterations, a checkpoint after each)
    loses its rank processes (SIGKILL, as the kernel's OOM killer or a pre-empted node does) once
    the first iteration's checkpoint is written. The driver must start its groups again by itself,
    go on from that checkpoint and end with the uninterrupted first run's history, λ and exact
    scores; the restart is said on the console and recorded in run_metadata.json and under
    ``perf/restarts``, and metrics.jsonl holds each iteration once."""
    import psutil

    folder, _ = first_run
    run = tmp_path / "recovered"
    history_file = run / "checkpoints" / "ppo_lag" / "history.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "WANDB_"))}
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "saferl.cli", *TINY, f"model.from_run={folder}", "checkpoint_every=1",
             "logger=jsonl", f"hydra.run.dir={run}",
             "runtime.max_single_rank_processes=1"],  # one process to start, and to start again
            cwd=tmp_path, stdout=stdout, stderr=stderr, start_new_session=True, env=env,
        )
        killed: list[int] = []
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    if len(json.loads(history_file.read_text())) >= 1:
                        break
                except (FileNotFoundError, json.JSONDecodeError):
                    pass
                time.sleep(0.01)
            # The driver is held still while its rank processes (children of its local Ray
            # cluster's raylet) are killed, so the loss lands inside the second iteration.
            driver = psutil.Process(process.pid)
            driver.suspend()
            for child in driver.children(recursive=True):
                if "RankHost" in " ".join(child.cmdline()):
                    child.kill()
                    killed.append(child.pid)
            driver.resume()
            process.wait(timeout=600)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    err = (tmp_path / "stderr").read_text()
    assert killed, "no rank process was found to kill"
    assert process.returncode == 0, err[-4000:]
    said = [line for line in err.splitlines() if "was lost during" in line]
    assert len(said) == 1 and "automatic restart 1" in said[0] and "going on from iteration 1" in said[0], err[-4000:]
    (restart,) = json.loads((run / "run_metadata.json").read_text())["restarts"]
    assert restart["number"] == 1 and restart["role"] and restart["resumed_from"].startswith("iteration 1")
    assert_same_final_metrics(run, folder)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "reward/score" in row] == [1, 2]  # each iteration once
    assert [row["perf/restarts"] for row in rows if "perf/restarts" in row] == [1]


@pytest.mark.skipif(missing_launcher_plugin("ray") is not None, reason=str(missing_launcher_plugin("ray")))
def test_a_sweep_with_the_ray_launcher_runs_its_jobs_on_an_existing_cluster(first_run, tmp_path):
    """`saferl -m launcher=ray`: each job runs as a task on a running Ray cluster and its actor
    groups (policy, reference, score models) join that cluster."""
    folder, _ = first_run
    script = Path(__file__).with_name("ray_launcher_main.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    completed = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "sweep")],
        capture_output=True, text=True, timeout=700, env=env,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["returncode"] == 0, result["stderr"]
    # The job's four groups (policy, reference, reward and cost scorers) ran their ranks on that
    # cluster, in the two rank processes (saferl.runtime.pool.RankHost) the job let them share.
    assert result["worker_actors"] == ["RankHost"] * 2
    (job_folder,) = (tmp_path / "sweep").glob("0_*")  # job 0, named after its overrides
    arena = json.loads((job_folder / "arena.json").read_text())
    assert arena["settings"]["seed"] == 3


def test_the_exact_optimum_job_solves_a_runs_own_problem(first_run, tmp_path):
    """``job=exact_optimum job.run_dir=<run>``: the optimum for that run's SFT policy is the one its
    exact evaluation compared the trained policy with."""
    folder, _ = first_run
    summary = json.loads((folder / "summary.json").read_text())
    run(composed("job=exact_optimum", f"job.run_dir={folder}", f"output_dir={tmp_path}"))
    record = json.loads((tmp_path / "exact_optimum.json").read_text())
    assert record["run_dir"] == str(folder) and str(folder) in record["reference"]
    assert record["optimal_multiplier"] == pytest.approx(summary["optimal_multiplier"], abs=1e-9)
