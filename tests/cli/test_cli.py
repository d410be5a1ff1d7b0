"""The ``saferl`` entry point composes the Hydra config and prints the exact optimum it solved."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from rich.console import Console

from saferl.cli import CONFIG_DIR, run
from saferl.core.dual import solve_exact
from saferl.eval.exact_demo import demo_problem, run_exact_demo


def test_default_config_composes_to_the_exact_demo():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config")
    assert cfg.job.name == "exact_demo"
    assert cfg.job.beta > 0


def test_demo_prints_the_solved_optimum(capsys):
    console = Console(width=120, force_terminal=False)
    solution = run_exact_demo(beta=0.1, cost_limit=0.0, frontier_limits=[-10.0, 0.0], console=console)
    printed = capsys.readouterr().out
    tables = demo_problem()
    expected = solve_exact(torch.log(tables.ref_probs), tables.rewards, tables.costs, 0.1, 0.0)
    assert solution.multiplier.item() == pytest.approx(expected.multiplier.item(), abs=1e-12)
    assert f"{expected.multiplier.item():.6f}" in printed
    assert f"{expected.expected_reward.item():.4f}" in printed
    assert "infeasible" in printed  # the limit −10 is below the smallest achievable cost


def test_overrides_reach_the_job():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["job.beta=0.5", "job.cost_limit=0.2"])
    objective = run(cfg)
    tables = demo_problem()
    expected = solve_exact(torch.log(tables.ref_probs), tables.rewards, tables.costs, 0.5, 0.2)
    assert objective == pytest.approx(expected.objective.item(), abs=1e-12)


def test_unknown_job_is_a_clear_error():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["job.name=nope"])
    with pytest.raises(ValueError, match="job.name"):
        run(cfg)


def test_console_script_runs_the_default_job(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "saferl.cli", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "optimum" in result.stdout and "strong duality" in result.stdout
    assert (tmp_path / ".hydra" / "config.yaml").exists()
