"""The sweep's plot: expected reward against expected cost, one point per job (one panel per
constraint when the runs have several).

Each job has its own colour, named in the legend by its swept values: its trained policy (drawn
hollow, with its violation in the legend, when it breaks a limit by more than
:data:`~saferl.data.world.exact.FEASIBILITY_TOLERANCE`; one marker shape per method), the exact
constrained optimum at its limits (a star of the same colour) and a dotted line from one to the
other. The optima are joined into the exact frontier (black), each job's cost limit is a faint
vertical line, the reference a grey cross, and each predicted frontier CSV (MoCAN, PeCAN) a dashed
curve in its job's colour. Jobs are named in the legend, outside the axes, so no label is printed
over another or over a point. Drawn with the evaluation layer's shared helpers
(:mod:`saferl.eval.plotting`: Agg canvas, no ``pyplot``).
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

__all__ = ["job_colours", "plot_sweep"]

_PREDICTED_NAMES = {"mocan": "MoCAN", "pecan": "PeCAN"}
# How each layer is drawn (matplotlib keyword arguments; colours are set per job).
_LIMIT_STYLE = {"color": "grey", "alpha": 0.3, "linestyle": ":", "linewidth": 1}
_FRONTIER_STYLE = {"color": "black", "linewidth": 1, "alpha": 0.7}
_OPTIMUM_STYLE = {"linestyle": "none", "marker": "*", "markersize": 13, "markeredgecolor": "black",
                  "markeredgewidth": 0.6}
_LINK_STYLE = {"linestyle": ":", "linewidth": 1.2}
_PREDICTED_STYLE = {"linestyle": "--", "linewidth": 1.2, "alpha": 0.8}
_REFERENCE_STYLE = {"linestyle": "none", "marker": "x", "markersize": 8, "color": "grey"}
_TRAINED_STYLE = {"linestyle": "none", "markersize": 8}
_INFEASIBLE_STYLE = {"markerfacecolor": "none", "markeredgewidth": 1.5}  # breaks its limit
_METHOD_MARKERS = "osD^v<>ph"


def job_colours(labels: list[str]) -> dict[str, Any]:
    """One colour per job label, in order: matplotlib's ten distinct colours, or evenly spaced
    viridis colours for more than ten jobs."""
    from matplotlib import colormaps

    if len(labels) <= 10:
        return {label: f"C{i}" for i, label in enumerate(labels)}
    cmap = colormaps["viridis"]
    return {label: cmap(i / (len(labels) - 1)) for i, label in enumerate(labels)}


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
    """One panel: expected reward against ``E c_j`` for every finished job that has constraint j.
    Each job's artists carry ``gid`` ``trained:<job>``, ``optimum:<job>`` and ``link:<job>``."""
    runs = [run for run in finished if len(run.summary.cost_limit) > j]
    methods = list(dict.fromkeys(run.summary.method for run in finished))
    markers = {method: _METHOD_MARKERS[i % len(_METHOD_MARKERS)] for i, method in enumerate(methods)}
    colours = job_colours(list(dict.fromkeys(run.label() for run in runs)))

    # Each job's cost limit, faint (one legend entry for all of them).
    limits = sorted({run.summary.cost_limit[j] for run in runs})
    for i, limit in enumerate(limits):
        axes.axvline(limit, label="cost limits d" if i == 0 else None, **_LIMIT_STYLE)

    # The exact optima joined left to right: the exact frontier.
    optima = sorted(set(_points((run.summary.optimum for run in runs), j)))
    if len(optima) > 1:
        _plot_points(axes, optima, label="exact frontier", **_FRONTIER_STYLE)

    # Predicted frontiers (MoCAN, PeCAN): dashed, in their job's colour (m = 1 only).
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
        label = f"{name} predicted" + (f" ({run.label()})" if len(runs) > 1 else "")
        _plot_points(axes, points, color=colours[run.label()], label=label, **_PREDICTED_STYLE)

    # The reference policy (usually one point shared by every job).
    references = sorted(set(_points((run.summary.reference for run in runs), j)))
    if references:
        _plot_points(axes, references, label="reference π_ref", **_REFERENCE_STYLE)

    # Each job: its trained policy, its exact optimum and the line between them, in its colour.
    starred = False
    for run in runs:
        colour = colours[run.label()]
        optimum = run.summary.optimum
        optimum_point = (optimum.expected_cost[j], optimum.expected_reward) if optimum is not None and _finite(
            optimum, j) else None
        if optimum_point is not None:
            if not starred:  # one legend entry for every job's star, drawn in no job's colour
                axes.plot([], [], color="white", label="exact optimum of each job (★, its colour)", **_OPTIMUM_STYLE)
                starred = True
            _plot_points(axes, [optimum_point], color=colour, gid=f"optimum:{run.job}", **_OPTIMUM_STYLE)
        trained = run.summary.trained
        if trained is None or not _finite(trained, j):
            continue
        point = (trained.expected_cost[j], trained.expected_reward)
        # Hollow when the policy breaks any of its limits (this panel's or another's).
        breaks_limit = any(value > FEASIBILITY_TOLERANCE for value in trained.violation)
        violation = ", ".join(f"{value:.3f}" for value in trained.violation)
        method = run.summary.method
        label = (f"{method} " if len(methods) > 1 and method not in run.label() else "") + run.label()
        if breaks_limit:
            label += f" (violation {violation})"
        if optimum_point is not None:
            _plot_points(axes, [point, optimum_point], color=colour, gid=f"link:{run.job}", **_LINK_STYLE)
        style = {**_TRAINED_STYLE, **(_INFEASIBLE_STYLE if breaks_limit else {})}
        _plot_points(axes, [point], color=colour, marker=markers[run.summary.method], label=label,
                     gid=f"trained:{run.job}", **style)

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
    if axes.get_legend_handles_labels()[0] and j == num_constraints - 1:  # one legend, right of the panels
        # Outside the axes (constrained layout makes room): the jobs' names never cover a point.
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0.0)


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
