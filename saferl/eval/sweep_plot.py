"""The sweep's plot: expected reward against expected cost, one point per job (one panel per
constraint when the runs have several).

Each job's trained policy annotated with its swept values (and, when it breaks a limit by more
than :data:`~saferl.data.world.exact.FEASIBILITY_TOLERANCE`, its violation, drawn hollow), the
reference, the exact constrained
optimum of each job joined into the exact frontier, each job's cost limit as a faint vertical line
and each predicted frontier CSV (MoCAN, PeCAN) as a dashed curve. Drawn with the evaluation
layer's shared helpers (:mod:`saferl.eval.plotting`: Agg canvas, no ``pyplot``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from saferl.data.world.exact import FEASIBILITY_TOLERANCE
from saferl.eval.plotting import agg_figure, label_reward_cost
from saferl.eval.sweep_load import Scores, SweepSummary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_sweep"]

_PREDICTED_NAMES = {"mocan": "MoCAN", "pecan": "PeCAN"}
# How each layer is drawn (matplotlib keyword arguments; labels and colours are set per job).
_LIMIT_STYLE = {"color": "grey", "alpha": 0.3, "linestyle": ":", "linewidth": 1}
_OPTIMUM_STYLE = {"color": "black", "marker": "*", "markersize": 11, "linewidth": 1}
_PREDICTED_STYLE = {"linestyle": "--", "linewidth": 1.2, "alpha": 0.8}
_REFERENCE_STYLE = {"linestyle": "none", "marker": "x", "markersize": 8, "color": "grey"}
_TRAINED_STYLE = {"linestyle": "none", "marker": "o", "markersize": 7}
_INFEASIBLE_STYLE = {"markerfacecolor": "none"}  # a trained policy that breaks its limit


def plot_sweep(summary: SweepSummary) -> Figure:
    """The sweep's reward–cost figure (module docstring), ready to save: one panel per constraint
    (expected reward against ``E c_j``; with m = 2 the harm panel and the refusal panel side by side).

    Args:
        summary: from :func:`saferl.eval.sweep_load.load_sweep`; jobs without ``summary.json``
            are counted in the title, not drawn.
    """
    finished = [run for run in summary.runs if run.summary is not None]
    num_constraints = max([len(run.summary.cost_limit) for run in finished] or [1])
    figure = agg_figure(10 if num_constraints == 1 else 8 * num_constraints, 6.5)
    panels = figure.subplots(1, num_constraints, squeeze=False)[0]
    names = next((run.summary.cost_names for run in finished if len(run.summary.cost_names) == num_constraints), ())
    for j, axes in enumerate(panels):
        _plot_constraint(axes, finished, j, num_constraints)
        if num_constraints > 1:
            axes.set_title(f"constraint {j + 1}" + (f": {names[j]}" if names else ""))
    missing = len(summary.missing)
    swept = ", ".join(summary.swept_keys) or "nothing swept"
    figure.suptitle(
        f"{summary.folder.name or summary.folder}: reward against cost ({swept}; "
        f"{len(summary.runs)} job(s)" + (f", {missing} missing)" if missing else ")")
    )
    return figure


def _plot_constraint(axes: Axes, finished: list, j: int, num_constraints: int) -> None:
    """One panel: expected reward against ``E c_j`` for every finished job that has constraint j."""
    runs = [run for run in finished if len(run.summary.cost_limit) > j]
    methods = list(dict.fromkeys(run.summary.method for run in finished))
    colours = {method: f"C{i % 10}" for i, method in enumerate(methods)}

    # Each job's cost limit, faint (one legend entry for all of them).
    limits = sorted({run.summary.cost_limit[j] for run in runs})
    for i, limit in enumerate(limits):
        axes.axvline(limit, label="cost limits d" if i == 0 else None, **_LIMIT_STYLE)

    # The exact optimum at each job's limit, joined left to right: the exact frontier.
    optima = sorted(_points((run.summary.optimum for run in runs), j))
    if optima:
        _plot_points(axes, optima, label="exact optimum (frontier)", **_OPTIMUM_STYLE)

    # Predicted frontiers (MoCAN, PeCAN): dashed, one per job that wrote one (m = 1 only).
    predicted = [run for run in runs if run.predicted_frontier is not None] if num_constraints == 1 else []
    for run in predicted:
        frontier = run.predicted_frontier
        points = sorted(
            (cost, reward)
            for cost, reward, feasible in zip(
                frontier.expected_cost, frontier.expected_reward, frontier.feasible, strict=True
            )
            if feasible and math.isfinite(cost) and math.isfinite(reward)
        )
        name = _PREDICTED_NAMES.get(run.summary.method, run.summary.method)
        label = f"{name} predicted" + (f" ({run.label()})" if len(predicted) > 1 else "")
        colour = colours[run.summary.method]
        _plot_points(axes, points, color=colour, label=label, **_PREDICTED_STYLE)

    # The reference policy (usually one point shared by every job).
    references = sorted(set(_points((run.summary.reference for run in runs), j)))
    if references:
        _plot_points(axes, references, label="reference π_ref", **_REFERENCE_STYLE)

    # Each job's trained policy, annotated with its swept values.
    labelled: set[str] = set()
    for run in runs:
        trained = run.summary.trained
        if trained is None or not _finite(trained, j):
            continue
        method = run.summary.method
        label = None if method in labelled else f"{method} trained"
        point = (trained.expected_cost[j], trained.expected_reward)
        # Hollow when the policy breaks any of its limits (this panel's or another's).
        breaks_limit = any(value > FEASIBILITY_TOLERANCE for value in trained.violation)
        style = {**_TRAINED_STYLE, **(_INFEASIBLE_STYLE if breaks_limit else {})}
        _plot_points(axes, [point], color=colours[method], label=label, **style)
        labelled.add(method)
        violation = ", ".join(f"{value:.3f}" for value in trained.violation)
        axes.annotate(
            run.label() + (f" (violation {violation})" if breaks_limit else ""),
            point,
            textcoords="offset points",
            xytext=(6, 6),
            fontsize="small",
        )

    if not finished:
        axes.text(
            0.5,
            0.5,
            "no finished runs (no summary.json)",
            transform=axes.transAxes,
            ha="center",
            va="center",
        )
    label_reward_cost(axes, "E[c]" if num_constraints == 1 else f"E[c$_{j + 1}$]")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best", fontsize="small")


def _finite(scores: Scores, j: int = 0) -> bool:
    return (len(scores.expected_cost) > j and math.isfinite(scores.expected_cost[j])
            and math.isfinite(scores.expected_reward))


def _points(blocks: Iterable[Scores | None], j: int = 0) -> list[tuple[float, float]]:
    """``(expected cost j, expected reward)`` of each present block with both numbers finite."""
    return [
        (block.expected_cost[j], block.expected_reward)
        for block in blocks
        if block is not None and _finite(block, j)
    ]


def _plot_points(axes: Axes, points: Iterable[tuple[float, float]], **style: Any) -> None:
    """Draw ``(cost, reward)`` pairs, in their order, cost on x and reward on y."""
    points = list(points)
    axes.plot([cost for cost, _ in points], [reward for _, reward in points], **style)
