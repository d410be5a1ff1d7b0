"""The ``saferl`` entry point: Hydra composition, the default exact-optimum job, the data job."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from saferl.cli import CONFIG_DIR, reference_config, run
from saferl.data import load_preference_dataset, load_sft_dataset
from saferl.data.world import build_exact_world, load_or_train_reference_policy

FAST_REFERENCE = ["world.reference.steps=30", "world.reference.num_examples=500"]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_default_config_composes_to_the_pipeline_and_jobs_switch():
    assert composed().job.name == "pipeline"
    cfg = composed("job=exact_optimum")
    assert cfg.job.name == "exact_optimum"
    assert cfg.world.beta > 0
    # The reference's seed follows the global seed through interpolation.
    assert composed("seed=7").world.reference.seed == 7
    assert reference_config(composed("seed=7")).seed == 7


def test_exact_optimum_job_prints_the_optimum_it_solved(capsys):
    cfg = composed("job=exact_optimum", *FAST_REFERENCE, "world.cost_limit=-0.9")
    objective = run(cfg)
    printed = capsys.readouterr().out
    model, tokenizer = load_or_train_reference_policy(reference_config(cfg))
    world = build_exact_world(model, tokenizer, beta=cfg.world.beta, cost_limit=-0.9)
    solution = world.optimum()
    assert objective == pytest.approx(solution.objective.item(), abs=1e-9)
    assert f"{solution.multiplier.item():.6f}" in printed
    assert "-0.9000" in printed  # the optimum's expected cost sits on the limit


def test_unknown_reference_key_and_unknown_job_are_clear_errors():
    with pytest.raises(ValueError, match=r"world.reference: unknown key\(s\) \['widht'\]"):
        reference_config(composed("+world.reference.widht=3"))
    with pytest.raises(ValueError, match="job.name"):
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
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "saferl.cli",
            "job=exact_optimum",
            f"hydra.run.dir={tmp_path}",
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


TINY_PIPELINE = [
    "job.sft.steps=30",
    "job.reward_model.steps=10",
    "job.cost_model.steps=10",
    "job.ppo.iterations=2",
    "job.ppo.prompts_per_iteration=16",
    "job.data.num_sft=300",
    "job.data.num_pairs_train=200",
    "job.data.num_pairs_test=64",
]


def test_pipeline_settings_name_bad_keys_and_values():
    from saferl.cli import pipeline_settings

    settings = pipeline_settings(composed())
    assert settings.ppo.kl_coeff == settings.world_beta  # interpolated from world.beta
    assert settings.multiplier["kind"] == "log_gradient_ascent"
    with pytest.raises(ValueError, match=r"job.ppo: unknown key\(s\) \['clip'\]"):
        pipeline_settings(composed("+job.ppo.clip=0.3"))
    with pytest.raises(ValueError, match="job.ppo: .*learner.clip_eps must be > 0"):
        pipeline_settings(composed("job.ppo.clip_eps=-0.1"))
    with pytest.raises(ValueError, match="job.scorers"):
        pipeline_settings(composed("job.scorers=magic"))


@pytest.mark.slow
def test_default_pipeline_job_runs_end_to_end(tmp_path):
    import json

    result = subprocess.run(
        [sys.executable, "-m", "saferl.cli", f"hydra.run.dir={tmp_path}", *TINY_PIPELINE],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "result.json").read_text())
    assert len(summary["history"]) == 2
    assert summary["reference"]["normalised_gap"] == pytest.approx(1.0)
    assert summary["optimum"]["normalised_gap"] == pytest.approx(0.0, abs=1e-9)
    assert f"{summary['trained']['normalised_gap']:.3f}" in result.stdout
    assert "PPO-Lagrangian" in result.stdout and "exact optimum" in result.stdout
    for folder in (
        "models/sft",
        "models/reward_model",
        "models/cost_model",
        "models/policy_ppo_lag",
        "checkpoints/ppo_lag",
    ):
        assert (tmp_path / folder).is_dir(), folder
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("multiplier/value_0" in row for row in metrics)


@pytest.mark.slow
def test_mocan_predict_mode_writes_the_frontier(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "saferl.cli",
            "job=mocan",
            f"hydra.run.dir={tmp_path}",
            *TINY_PIPELINE,
            "job.scorers=oracle",
            "job.mocan.num_samples=8",
            "job.mocan.predict_only=true",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    csv = (tmp_path / "mocan" / "frontier.csv").read_text().splitlines()
    assert len(csv) == 1 + 10  # header + the default grid of 10 multipliers
    assert (tmp_path / "mocan" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dual prediction" in result.stdout and "λ* =" in result.stdout


def test_mocan_settings_are_validated():
    from saferl.cli import _section
    from saferl.learners.mocan import MocanSettings

    cfg = composed("job=mocan")
    assert cfg.job.sft.steps == composed().job.sft.steps  # the pipeline's stages are inherited
    with pytest.raises(ValueError, match="job.mocan: .*stage must be 'dpo' or 'ppo'"):
        _section(composed("job=mocan", "job.mocan.stage=sgd").job.mocan, "job.mocan", MocanSettings)


TINY_PECAN = [
    "job.pecan.num_samples=8",
    "job.pecan.dpo_steps=4",
    "job.pecan.dpo_pairs_per_step=16",
]


@pytest.mark.slow
def test_pecan_job_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "saferl.cli",
            "job=pecan",
            f"hydra.run.dir={tmp_path}",
            *TINY_PIPELINE,
            *TINY_PECAN,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PeCAN on the built-in world" in result.stdout
    assert "dual prediction (implicit units)" in result.stdout
    assert "PeCAN-aligned policy" in result.stdout and "exact optimum" in result.stdout
    assert "λ* =" in result.stdout
    csv = (tmp_path / "pecan" / "frontier.csv").read_text().splitlines()
    assert len(csv) == 1 + 10  # header + the default grid of 10 multipliers
    assert (tmp_path / "pecan" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for folder in ("implicit_reward", "implicit_safety", "policy_dpo"):
        assert (tmp_path / "pecan" / "models" / folder).is_dir(), folder


def test_pecan_settings_name_bad_keys_and_values():
    from saferl.cli import pecan_settings

    settings = pecan_settings(composed("job=pecan"))
    assert settings.consistent is True and settings.margin >= 0 and not settings.predict_only
    assert composed("job=pecan").job.sft.steps == composed().job.sft.steps  # pipeline inherited
    for override, message in (
        ("job.pecan.num_samples=7", "job.pecan.num_samples must be an even"),
        ("job.pecan.margin=-0.5", "job.pecan.margin must be a number >= 0"),
        ("job.pecan.margin=null", "job.pecan.margin must be a number >= 0"),
        ("job.pecan.consistent=maybe", "job.pecan.consistent must be true or false"),
        ("job.pecan.dpo_steps=0", "job.pecan.dpo_steps must be an integer >= 1"),
        ("job.pecan.dpo_pairs_per_step=0", "job.pecan.dpo_pairs_per_step must be an integer >= 1"),
        ("job.pecan.dpo_learning_rate=0", "job.pecan.dpo_learning_rate must be > 0"),
        ("job.pecan.frontier_grid=[]", "job.pecan.frontier_grid must be a non-empty"),
    ):
        with pytest.raises(ValueError, match=message):
            pecan_settings(composed("job=pecan", override))
    with pytest.raises(ValueError, match=r"job.pecan: unknown key\(s\) \['beta'\]"):
        pecan_settings(composed("job=pecan", "+job.pecan.beta=0.1"))


@pytest.mark.slow
def test_preference_job_runs_a_registered_loss(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "saferl.cli",
            "job=preference",
            f"hydra.run.dir={tmp_path}",
            *TINY_PIPELINE,
            "job.preference.loss=ipo",
            "job.preference.steps=3",
            "job.preference.pairs_per_step=16",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ipo on the built-in world" in result.stdout and "exact optimum" in result.stdout
    assert (tmp_path / "models" / "policy_ipo" / "config.json").exists()


def test_preference_settings_reject_unknown_losses():
    from saferl.cli import _section
    from saferl.learners.offline import OfflineSettings

    node = composed("job=preference", "job.preference.loss=magic").job.preference
    with pytest.raises(ValueError, match="job.preference.loss: .*dpo"):
        _section(node, "job.preference", OfflineSettings)
