"""Predict mode: the reward–cost frontier of ``π_λ`` as a table, a CSV file and a PNG plot.

The cheap way to choose a cost limit before any training (docs/algorithms.md §1, "predicted safety
curve"): from reference samples scored by the reward and cost models (or from an enumerable
world), :func:`saferl.core.dual.predict_frontier` (a grid of multipliers) or
:func:`saferl.core.dual.predict_frontier_at_limits` (a grid of limits) gives the expected reward,
cost and KL of ``π_λ``. This module turns that :class:`~saferl.core.dual.Frontier` into

* rows of plain numbers (:func:`frontier_table`),
* a CSV table and a PNG plot in a folder (:func:`write_frontier`): expected reward against
  expected cost along the grid, the chosen ``λ*`` marked, the limit as a vertical line, and
  beside it the multiplier needed for each cost,
* a rich table on the console (:func:`print_frontier`).

Column names: ``multiplier``, ``expected_reward``, ``expected_cost``, ``kl``, ``cost_limit`` (only
for a grid of limits) and ``feasible``; with ``m ≥ 2`` constraints the per-constraint columns are
``multiplier_0 … multiplier_{m−1}``, ``expected_cost_0 …``, ``cost_limit_0 …``. Infeasible rows
hold NaN.

Plots are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas
(:mod:`saferl.eval.plotting`, shared with the sweep summary's plot), never through ``pyplot``, so
writing a plot changes no global matplotlib state and needs no display.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from saferl.core.dual import DualSolution, Frontier
from saferl.eval.plotting import agg_figure, label_reward_cost, write_csv_and_png

__all__ = ["frontier_table", "write_frontier", "print_frontier"]


def _columns(frontier: Frontier) -> list[str]:
    m = frontier.multipliers.shape[1]
    per_constraint = (
        (lambda name: [name]) if m == 1 else (lambda name: [f"{name}_{j}" for j in range(m)])
    )
    columns = [
        *per_constraint("multiplier"),
        "expected_reward",
        *per_constraint("expected_cost"),
        "kl",
    ]
    if frontier.cost_limits is not None:
        columns += per_constraint("cost_limit")
    return [*columns, "feasible"]


def frontier_table(frontier: Frontier) -> list[dict]:
    """One dict per grid point, in grid order, with Python floats (NaN when infeasible) and bools.

    Args:
        frontier: multipliers ``(grid, m)``, expected reward ``(grid,)``, expected cost
            ``(grid, m)``, KL ``(grid,)``, cost limits ``(grid, m)`` or ``None``, feasible
            ``(grid,)``.

    Returns:
        ``grid`` dicts with the keys listed in the module docstring, in that order.
    """
    m = frontier.multipliers.shape[1]
    rows = []
    for i in range(frontier.multipliers.shape[0]):
        row: dict = {}
        values = {
            "multiplier": frontier.multipliers[i].tolist(),
            "expected_reward": [frontier.expected_reward[i].item()],
            "expected_cost": frontier.expected_cost[i].tolist(),
            "kl": [frontier.kl[i].item()],
        }
        if frontier.cost_limits is not None:
            values["cost_limit"] = frontier.cost_limits[i].tolist()
        for name, items in values.items():
            if len(items) == 1 and (m == 1 or name in ("expected_reward", "kl")):
                row[name] = float(items[0])
            else:
                row.update({f"{name}_{j}": float(value) for j, value in enumerate(items)})
        row["feasible"] = bool(frontier.feasible[i])
        rows.append(row)
    return rows


def write_frontier(
    frontier: Frontier,
    folder: str | Path,
    title: str,
    solution: DualSolution | None = None,
    overwrite: bool = False,
    stem: str = "frontier",
) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` (the table) and ``<stem>.png`` (the plot) into ``folder``.

    The CSV holds :func:`frontier_table`'s rows with floats written by ``repr`` (they read back
    exactly) and ``feasible`` as ``true``/``false``. The PNG has, per constraint ``j``, expected
    reward against expected cost ``c_j`` of ``π_λ`` along the grid (the frontier) and the
    multiplier ``λ_j`` against the same cost (what a limit costs in λ); ``solution``'s ``λ*`` is
    marked on both and its limit ``d_j`` drawn as a vertical line.

    Args:
        frontier: the predicted frontier (see :func:`frontier_table` for shapes).
        folder: created if missing.
        title: the plot's title (e.g. the model names, β and the sample counts).
        solution: the dual solution at the chosen limit, or ``None`` for no marker and line.
        overwrite: replace existing files; otherwise an existing file raises.
        stem: the files' base name.

    Returns:
        ``(csv_path, png_path)``.

    Raises:
        FileExistsError: a target file exists and ``overwrite`` is False (nothing is written).
    """
    folder = Path(folder)
    return write_csv_and_png(
        folder / f"{stem}.csv",
        folder / f"{stem}.png",
        _columns(frontier),
        frontier_table(frontier),
        lambda: _plot(frontier, title, solution),
        overwrite,
        "pass overwrite=True to replace it, or choose another folder or stem",
    )


def _plot(frontier: Frontier, title: str, solution: DualSolution | None):
    m = frontier.multipliers.shape[1]
    figure = agg_figure(10, 4 * m)
    axes = figure.subplots(m, 2, squeeze=False)
    feasible = frontier.feasible
    # Sort along the cost axis so the curve is drawn left to right whatever the grid order.
    for j in range(m):
        costs = frontier.expected_cost[feasible, j]
        order = costs.argsort()
        costs = costs[order].tolist()
        rewards = frontier.expected_reward[feasible][order].tolist()
        multipliers = frontier.multipliers[feasible, j][order].tolist()
        suffix = "" if m == 1 else f"$_{j}$"
        reward_axes, multiplier_axes = axes[j]
        reward_axes.plot(costs, rewards, marker="o", markersize=3, label="π_λ over the grid")
        label_reward_cost(reward_axes, f"E[c{suffix}]")
        multiplier_axes.plot(costs, multipliers, marker="o", markersize=3, color="tab:green")
        multiplier_axes.set_xlabel(f"expected cost E[c{suffix}]")
        multiplier_axes.set_ylabel(f"multiplier λ{suffix}")
        multiplier_axes.grid(alpha=0.3)
        if solution is not None:
            limit = solution.cost_limit[j].item()
            cost_star = solution.expected_cost[j].item()
            lambda_star = solution.multiplier[j].item()
            for ax in (reward_axes, multiplier_axes):
                ax.axvline(limit, color="tab:red", linestyle="--", label=f"limit d = {limit:.4g}")
            reward_axes.plot(
                [cost_star],
                [solution.expected_reward.item()],
                marker="*",
                markersize=14,
                color="tab:red",
                linestyle="none",
                label=f"λ* = {lambda_star:.4g}",
            )
            multiplier_axes.plot(
                [cost_star], [lambda_star], marker="*", markersize=14, color="tab:red"
            )
        reward_axes.legend(loc="best", fontsize="small")
    infeasible = int((~feasible).sum())
    figure.suptitle(
        title + (f" ({infeasible} infeasible grid points omitted)" if infeasible else "")
    )
    return figure


def print_frontier(
    frontier: Frontier,
    title: str,
    solution: DualSolution | None = None,
    console: Console | None = None,
) -> None:
    """Print the frontier as a rich table, then ``λ*`` and its predicted statistics if given.

    Args:
        frontier: the predicted frontier.
        title: the table's title.
        solution: the dual solution at the chosen limit, or ``None``.
        console: where to print; by default a console at least 120 columns wide (tables of
            numbers are never cut in a log file).
    """
    console = console or Console(width=max(Console().width, 120))
    columns = _columns(frontier)
    table = Table(title=escape(title))
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for row in frontier_table(frontier):
        if not row["feasible"]:
            cells = [f"{row[c]:.4g}" if c.startswith("cost_limit") else "—" for c in columns[:-1]]
            table.add_row(*cells, "infeasible")
            continue
        table.add_row(*(_cell(row[c]) for c in columns[:-1]), "yes")
    console.print(table)
    if solution is not None:
        console.print(
            f"λ* = {', '.join(f'{v:.6g}' for v in solution.multiplier.tolist())} at limit "
            f"d = {', '.join(f'{v:.6g}' for v in solution.cost_limit.tolist())}: predicted "
            f"E[r] = {solution.expected_reward.item():.6g}, "
            f"E[c] = {', '.join(f'{v:.6g}' for v in solution.expected_cost.tolist())}, "
            f"KL = {solution.kl.item():.6g} ({solution.method}, {solution.iterations} iterations)",
            soft_wrap=True,
            markup=False,  # E[r], E[c] are text, not rich markup tags
        )


def _cell(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"
