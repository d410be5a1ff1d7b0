"""The run report prints a dualized learner's prediction as text (no rich markup eats ``E[r]``)."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from rich.console import Console

from saferl.core.dual import DualProblem, predict_frontier
from saferl.core.dualized import mocan_dual
from saferl.eval.run_report import print_run
from saferl.learners.result import DualPrediction, RunResult, RunSummary


def test_the_dual_line_keeps_its_expectation_brackets(tmp_path: Path):
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    costs = (0.5 * rewards + torch.randn(3, 4, generator=generator, dtype=torch.float64)).unsqueeze(-1)
    solution = mocan_dual(rewards, costs, 0.5, margin=0.1)
    problem = DualProblem.from_samples(rewards, costs, 0.5, solution.cost_limit)
    frontier = predict_frontier(problem, torch.tensor([0.0, 1.0], dtype=torch.float64))
    dual = DualPrediction(solution, frontier, "ground-truth units", "title", "heading")
    result = RunResult(method="mocan", headline=float(solution.objective), policy_dir=None, folder=tmp_path,
                       multiplier=solution.multiplier.tolist(), dual=dual)
    console = Console(file=io.StringIO(), width=240)
    print_run(RunSummary(result=result, setup="world", beta=0.5, cost_limit=-0.8), console=console)
    text = console.file.getvalue()
    assert f"predicted E[r] = {solution.expected_reward.item():.4f}" in text
    assert f"E[c] = {solution.expected_cost.item():.4f}" in text


def test_a_preference_run_names_the_pairs_it_trained_on(tmp_path: Path):
    """Safe-NCA trains on safe-versus-unsafe pairs whatever learner.preference.ordering says; the
    other losses on the ordering's pairs."""
    texts = {}
    for loss, ordering in (("safe_nca", "safer"), ("dpo", "better"), ("ipo", "safer")):
        result = RunResult(method=f"preference:{loss}", headline=0.5, policy_dir=tmp_path / "policy",
                           folder=tmp_path, details={"loss": loss, "ordering": ordering})
        console = Console(file=io.StringIO(), width=240)
        print_run(RunSummary(result=result, setup="hub", beta=0.5, cost_limit=-0.8), console=console)
        texts[loss] = console.file.getvalue()
    assert texts["safe_nca"].startswith("safe_nca (safe vs unsafe pairs): final λ")
    assert "better pairs" not in texts["safe_nca"]
    assert texts["dpo"].startswith("dpo (better pairs): final λ")
    assert texts["ipo"].startswith("ipo (safer pairs): final λ")


def test_a_smoke_test_report_says_its_numbers_are_not_results(tmp_path: Path):
    result = RunResult(method="ppo_lag", headline=0.5, policy_dir=tmp_path / "policy", folder=tmp_path)
    details = {"reward_model": {"pairwise_accuracy": 0.6, "num_pairs": 64.0}}
    texts = {}
    for smoke_test in (True, False):
        console = Console(file=io.StringIO(), width=240)
        summary = RunSummary(result=result, setup="world", beta=0.5, cost_limit=-0.8, setup_details=details)
        print_run(summary, console=console, smoke_test=smoke_test)
        texts[smoke_test] = console.file.getvalue()
    assert texts[True].startswith("SMOKE TEST (debug=tiny)") and "not results" in texts[True].splitlines()[0]
    assert "Score models on held-out pairs [SMOKE TEST: not results]" in texts[True]
    assert "SMOKE TEST" not in texts[False] and "Score models on held-out pairs" in texts[False]


def test_a_runaway_multiplier_prints_in_scientific_notation_and_others_to_four_decimals():
    """A near-infeasible sampled dual can put λ̂ near 1e6: printed with four decimals it would widen
    the λ column until rich squeezes the violation columns' headers out of the table."""
    from saferl.eval.run_report import _values

    assert _values([0.65386, 1095379.6081]) == "0.6539, 1.095e+06"
    assert _values([9999.5]) == "9999.5000"
