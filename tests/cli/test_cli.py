"""The ``saferl`` entry point: Hydra composition, the default exact-optimum job, the data job."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from saferl.cli import CONFIG_DIR, run
from saferl.cli_errors import missing_launcher_plugin
from saferl.config import ConfigError, validate
from saferl.data import load_preference_dataset, load_sft_dataset
from saferl.data.world import build_exact_world, load_or_train_reference_policy

FAST_REFERENCE = ["model.sft.steps=30", "data.num_sft=500"]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_default_config_composes_to_training_ppo_lag_and_jobs_switch():
    cfg = composed()
    assert (cfg.job.name, cfg.learner.name) == ("train", "ppo_lag")
    assert cfg.learner.kl_coeff == cfg.beta  # the learner's KL weight is the problem's β
    assert composed("job=exact_optimum").job.name == "exact_optimum"
    # The reference is SFT-ed with the keys a training run's SFT stage reads, seeded by the root seed.
    run = validate(composed("seed=7", "model.sft.steps=30", "data.num_sft=500"))
    assert (run.reference.seed, run.reference.steps, run.reference.num_examples) == (7, 30, 500)
    assert run.setup.reference == run.reference


def test_exact_optimum_job_prints_the_optimum_it_solved(capsys, tmp_path):
    cfg = composed("job=exact_optimum", *FAST_REFERENCE, "cost_limit=-0.9", f"output_dir={tmp_path}")
    objective = run(cfg)
    printed = capsys.readouterr().out
    model, tokenizer = load_or_train_reference_policy(validate(cfg).reference)
    world = build_exact_world(model, tokenizer, beta=cfg.beta, cost_limit=-0.9)
    solution = world.optimum()
    assert objective == pytest.approx(solution.objective.item(), abs=1e-9)
    assert f"{solution.multiplier.item():.6f}" in printed
    assert "-0.9000" in printed  # the optimum's expected cost sits on the limit
    # It says which reference it solved for, and writes what it solved.
    assert "reference: an in-process SFT (30 steps × 64 of 500 demonstrations, seed 0)" in printed
    record = json.loads((tmp_path / "exact_optimum.json").read_text())
    assert record["optimal_multiplier"] == pytest.approx(solution.multiplier.tolist(), abs=1e-12)
    assert record["cost_limit"] == -0.9 and record["run_dir"] is None


def test_unknown_reference_key_and_unknown_job_are_clear_errors():
    with pytest.raises(ConfigError, match=r"world.reference: unknown key\(s\) \['widht'\]"):
        run(composed("+world.reference.widht=3"))
    with pytest.raises(ConfigError, match="job.name: unknown value 'nope'"):
        run(composed("job.name=nope"))


def test_world_data_job_writes_loadable_datasets(tmp_path, capsys):
    cfg = composed(
        "job=world_data",
        f"job.output_dir={tmp_path}",
        "job.num_sft=50",
        "job.num_pairs_train=80",
        "job.num_pairs_test=20",
    )
    correlation = run(cfg)
    assert correlation > 0  # the tension: on harmful prompts reward and cost rise together
    pairs = load_preference_dataset(str(tmp_path / "preferences_train.jsonl"))
    assert len(pairs) == 80 and pairs.report.num_skipped == 0
    assert len(load_sft_dataset(str(tmp_path / "sft.jsonl"))) == 50
    assert "harmful_reward_cost_correlation" in capsys.readouterr().out
    with pytest.raises(ValueError, match="overwrite"):
        run(cfg)


def test_console_script_runs_the_exact_optimum_job(tmp_path):
    """...and a W&B key given on the command line (Hydra's ``env_set``) is in none of the files
    Hydra wrote for the job."""
    api_key = "0123456789abcdef" * 2 + "89abcdef"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "saferl.cli",
            "job=exact_optimum",
            f"hydra.run.dir={tmp_path}",
            f"+hydra.job.env_set.WANDB_API_KEY={api_key}",
            *FAST_REFERENCE,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "constrained optimum" in result.stdout and "strong duality" in result.stdout
    assert (tmp_path / ".hydra" / "config.yaml").exists()
    hydra_file = (tmp_path / ".hydra" / "hydra.yaml").read_text()
    assert "+hydra.job.env_set.WANDB_API_KEY=<redacted>" in hydra_file and "WANDB_API_KEY: <redacted>" in hydra_file
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or api_key.encode() not in path.read_bytes(), path


def test_a_usage_error_never_prints_a_key_given_on_the_command_line(tmp_path):
    api_key = "fedcba9876543210" * 2 + "76543210"
    result = subprocess.run(  # without "+", env_set has no such key: refused, the override quoted
        [sys.executable, "-m", "saferl.cli", f"hydra.job.env_set.WANDB_API_KEY={api_key}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 2 and "hydra.job.env_set.WANDB_API_KEY=<redacted>" in result.stderr
    assert api_key not in result.stderr + result.stdout


def test_a_bad_config_fails_before_any_actor_starts(tmp_path):
    """validate() runs first: a sign mistake stops the run with the key named (the message alone,
    exit status 2), Ray is never started and Hydra makes no run folder."""
    result = subprocess.run(
        [sys.executable, "-m", "saferl.cli", f"hydra.run.dir={tmp_path}", "learner.kl_coeff=-0.5"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**__import__("os").environ, "HYDRA_FULL_ERROR": "0"},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("saferl: error: learner.kl_coeff: must be > 0") and "Traceback" not in result.stderr
    assert "ray" not in result.stderr.lower().replace("array", "")
    assert list(tmp_path.iterdir()) == []




@pytest.mark.skipif(missing_launcher_plugin("submitit_local") is not None,
                    reason=str(missing_launcher_plugin("submitit_local")))
def test_a_sweep_job_runs_through_submitit(tmp_path):
    """The submitit launcher path (what `launcher=slurm` uses on a cluster) with its local
    executor: the job is pickled, run in a submitit worker process, and completes."""
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "saferl.cli", "-m", "hydra/launcher=submitit_local", "job=exact_optimum",
         *FAST_REFERENCE, "cost_limit=-0.9", f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.timeout_min=10"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (log,) = list((sweep_dir / ".submitit").glob("*/*_log.out"))
    text = log.read_text()
    assert "strong duality" in text and "-0.9000" in text and "Job completed successfully" in text


def test_evaluate_names_a_model_path_that_does_not_exist_before_anything_loads(tmp_path):
    missing = tmp_path / "no_policy"
    with pytest.raises(ConfigError, match=rf"job.policy: the local path '{missing}' does not exist"):
        run(composed("job=evaluate", f"job.policy={missing}", f"job.reference={tmp_path}",
                     f"output_dir={tmp_path / 'out'}", "logger=none"))
