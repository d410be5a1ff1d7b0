"""The console report and the files of a finished run, for every learner on every setup.

* :func:`write_dual_prediction`: a dualized learner's predicted frontier (CSV and PNG) in its
  folder;
* :func:`print_run`: the dual's prediction, the exact comparison of the reference, the trained
  policy and the optimum (on a setup with an evaluator), the setup's score models, and seconds; a
  smoke test's (``debug=tiny``) report says that its numbers are not results.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from saferl.eval.frontier import print_frontier, write_frontier
from saferl.eval.world_report import exact_comparison_table, report_console
from saferl.learners.result import RunResult, RunSummary

__all__ = ["print_run", "write_dual_prediction"]

#: How each method is named in the tables.
METHOD_NAMES = {"ppo_lag": "PPO-Lagrangian", "mocan": "MoCAN", "pecan": "PeCAN"}


def _values(values) -> str:
    # A multiplier that ran away (a near-infeasible sampled dual reaches 1e6) stays readable and
    # keeps the table's other columns from being squeezed out of their headers.
    return ", ".join(f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}" for v in values)


def write_dual_prediction(result: RunResult) -> tuple[Path, Path] | None:
    """The predicted frontier's CSV and PNG in ``result.folder`` (None without a dual)."""
    if result.dual is None:
        return None
    dual = result.dual
    return write_frontier(dual.frontier, result.folder, dual.title, dual.solution, overwrite=True)


#: What a smoke test's (``debug=tiny``) report says first, and its tables' titles end with.
SMOKE_TEST_LINE = ("SMOKE TEST (debug=tiny): a few steps per stage, to check that the pipeline runs; "
                   "the numbers below are not results")
SMOKE_TEST_TITLE = " [SMOKE TEST: not results]"

#: Which pairs a preference loss trained on (``RunResult.details["ordering"]``), said in its name.
PAIRS = {"better": "better pairs", "safer": "safer pairs"}


def _method_name(result: RunResult) -> str:
    name = METHOD_NAMES.get(result.method, result.method.removeprefix("preference:"))
    if result.method == "preference:safe_nca":  # NCA on the pairs with one safe and one unsafe response
        return f"{name} (safe vs unsafe pairs)"
    ordering = result.details.get("ordering") if result.method.startswith("preference:") else None
    return f"{name} ({PAIRS[ordering]})" if ordering in PAIRS else name


def print_run(summary: RunSummary, console: Console | None = None, smoke_test: bool = False) -> None:
    """Print what the run found (see the module docstring); ``smoke_test``: the run is a
    ``debug=tiny`` one, and its report says so first and in every table's title."""
    console = console or report_console()
    result, evaluation = summary.result, summary.evaluation
    name = _method_name(result)
    mark = SMOKE_TEST_TITLE if smoke_test else ""
    if smoke_test:
        console.print(SMOKE_TEST_LINE, soft_wrap=True, markup=False, highlight=False)
    if result.dual is not None:
        dual = result.dual
        print_frontier(dual.frontier, dual.heading, dual.solution, console=console)
        solution = dual.solution
        console.print(
            f"{name} dual ({dual.units}): λ̂ = {_values(solution.multiplier.tolist())} at limit d = "
            f"{_values(solution.cost_limit.tolist())}; predicted E[r] = {solution.expected_reward.item():.4f}, "
            f"E[c] = {_values(solution.expected_cost.tolist())}, KL = {solution.kl.item():.4f}",
            soft_wrap=True,
            markup=False,  # "E[r]" is text, not a rich tag
        )
    if evaluation is not None:
        rows = [("reference (SFT)", "—", evaluation.reference)]
        rows.append(
            (
                name if result.dual is None else f"{name}-aligned policy",
                _values(result.multiplier) or "—",
                evaluation.trained,
            )
        )
        if evaluation.target is not None:  # what the learner aims at under its settings
            rows.append(("learner's target", _values(evaluation.target_multiplier or ()), evaluation.target))
        if evaluation.learned_optimum is not None:  # score-model error, apart from the optimiser's
            rows.append(("optimum of the learned problem", _values(evaluation.learned_optimal_multiplier),
                         evaluation.learned_optimum))
        rows.append(
            ("exact optimum π_λ*", _values(evaluation.optimal_multiplier), evaluation.optimum)
        )
        limits = summary.cost_limit if isinstance(summary.cost_limit, (list, tuple)) else (summary.cost_limit,)
        names = evaluation.cost_names or None
        console.print(
            exact_comparison_table(
                f"{name} on the built-in world, exact evaluation (ground truth): β = {summary.beta}, "
                f"cost limit d = {', '.join(f'{v:g}' for v in limits)}"
                + (f" ({', '.join(names)})" if names and len(names) > 1 else "")
                + mark,
                rows,
                names,
            )
        )
        if evaluation.target is not None:
            console.print(f"learner's target: {evaluation.target_label}", soft_wrap=True)
    elif result.policy_dir is not None:
        console.print(
            f"{name}: final λ {_values(result.multiplier) or '—'}; headline {result.headline:.4f} "
            f"({len(result.history)} steps); aligned policy in {result.policy_dir}",
            soft_wrap=True,
        )
    _print_score_models(summary.setup_details, console, mark)
    seconds = summary.seconds
    if seconds:
        console.print(
            "stage seconds: "
            + ", ".join(f"{stage} {value:.1f}" for stage, value in seconds.items()),
            soft_wrap=True,
        )


def _print_score_models(details: dict, console: Console, mark: str = "") -> None:
    # The reward model, then one model per cost (``cost_model``, ``cost_<name>_model``).
    models = {
        key.removesuffix("_model"): value for key, value in details.items()
        if key.endswith("_model") and isinstance(value, dict) and "pairwise_accuracy" in value
    }
    if not models:
        return
    table = Table(title="Score models on held-out pairs" + mark)
    for column in ("model", "pairwise accuracy", "ground-truth accuracy", "sign accuracy", "pairs"):
        table.add_column(column, justify="right")
    for kind, metrics in models.items():
        table.add_row(
            kind,
            f"{metrics['pairwise_accuracy']:.3f}",
            f"{metrics.get('ground_truth_accuracy', float('nan')):.3f}",
            f"{metrics['sign_accuracy']:.3f}" if "sign_accuracy" in metrics else "—",
            f"{int(metrics['num_pairs'])}",
        )
    console.print(table)
