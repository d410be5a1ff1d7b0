"""The default pipeline's final table: reference, trained policy and exact optimum, by ground truth."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from saferl.eval.world_report import exact_comparison_table, report_console
from saferl.learners.pipeline import PipelineResult

__all__ = ["exact_comparison_table", "print_pipeline_result", "print_mocan_result"]


def _multiplier_text(values) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def print_pipeline_result(
    result: PipelineResult, cost_limit: float, beta: float, console: Console | None = None
) -> None:
    """Print the ground-truth comparison, the score models' accuracies and the stage times."""
    console = console or report_console()
    console.print(
        exact_comparison_table(
            f"Built-in world, exact evaluation (ground truth): β = {beta}, cost limit d = {cost_limit}",
            (
                ("reference (SFT)", "—", result.reference),
                ("PPO-Lagrangian", _multiplier_text(result.multiplier), result.trained),
                ("exact optimum π_λ*", _multiplier_text(result.optimal_multiplier), result.optimum),
            ),
        )
    )
    models = Table(title="Score models on held-out pairs")
    for column in ("model", "pairwise accuracy", "ground-truth accuracy", "sign accuracy", "pairs"):
        models.add_column(column, justify="right")
    for name, metrics in (("reward", result.reward_model), ("cost", result.cost_model)):
        models.add_row(
            name,
            f"{metrics['pairwise_accuracy']:.3f}",
            f"{metrics.get('ground_truth_accuracy', float('nan')):.3f}",
            f"{metrics['sign_accuracy']:.3f}" if "sign_accuracy" in metrics else "—",
            f"{int(metrics['num_pairs'])}",
        )
    console.print(models)
    console.print(
        "stage seconds: "
        + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in result.stage_seconds.items()),
        soft_wrap=True,
    )


def print_mocan_result(
    result,
    cost_limit: float,
    beta: float,
    console: Console | None = None,
    method: str = "MoCAN",
    prediction_units: str = "samples",
) -> None:
    """A dualized method's prediction (from reference samples) against the exact optimum and what
    the aligned policy realised.

    MoCAN's prediction is in its scorers' units (ground truth with oracle or calibrated scorers);
    PeCAN's (``method="PeCAN"``, ``prediction_units="implicit units"``) is in the implicit units of
    its DPO policies, so only its exact rows compare with the ground-truth limit ``d``.
    """
    console = console or report_console()
    table = Table(title=f"{method} on the built-in world: β = {beta}, cost limit d = {cost_limit}")
    for column in ("", "λ", "E reward", "E cost", "KL to ref", "normalised gap", "cost ≤ d"):
        table.add_column(column, justify="right")
    dual = result.dual
    table.add_row(
        f"dual prediction ({prediction_units})",
        ", ".join(f"{v:.4f}" for v in dual.multiplier.tolist()),
        f"{dual.expected_reward.item():.4f}",
        ", ".join(f"{v:.4f}" for v in dual.expected_cost.tolist()),
        f"{dual.kl.item():.4f}",
        "—",
        "—",
    )
    if result.trained is not None:
        for name, multiplier, score in (
            ("reference (SFT)", "—", result.reference),
            (
                f"{method}-aligned policy",
                ", ".join(f"{v:.4f}" for v in dual.multiplier.tolist()),
                result.trained,
            ),
            (
                "exact optimum π_λ*",
                ", ".join(f"{v:.4f}" for v in result.optimal_multiplier),
                result.optimum,
            ),
        ):
            table.add_row(
                name,
                multiplier,
                f"{score.expected_reward:.4f}",
                f"{score.expected_cost:.4f}",
                f"{score.kl:.4f}",
                f"{score.normalised_gap:.3f}",
                "yes" if score.violation <= 1e-9 else f"no (+{score.violation:.3f})",
            )
    console.print(table)
