"""The plotting and table-file helpers shared by the evaluation layer's plots: the predicted
frontier (:mod:`saferl.eval.frontier`) and the sweep summary (:mod:`saferl.eval.sweep_plot`).

* :func:`agg_figure`: a bare :class:`matplotlib.figure.Figure` with the Agg canvas, never through
  ``pyplot``, so drawing a plot changes no global matplotlib state and needs no display;
* :func:`label_reward_cost`: the reward-against-cost axes (labels, grid);
* :func:`csv_cell`: one CSV cell, numbers written so that they read back exactly;
* :func:`write_csv_and_png`: a table and its plot written side by side, refusing (before anything
  is written) to replace an existing file unless asked.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saferl.eval.outputs import refuse_overwrite

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PNG_DPI", "agg_figure", "label_reward_cost", "csv_cell", "write_csv_and_png"]

#: Resolution of every PNG the evaluation layer writes.
PNG_DPI = 120


def agg_figure(width: float, height: float) -> Figure:
    """An empty ``width × height`` inch figure (constrained layout) on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # attaches the Agg canvas: no pyplot, no display
    return figure


def label_reward_cost(axes: Axes, cost: str = "E[c]") -> None:
    """Expected reward (y) against expected cost (x), with a faint grid.

    Args:
        axes: the axes to label.
        cost: how the cost is written, e.g. ``"E[c$_1$]"`` for the second constraint.
    """
    axes.set_xlabel(f"expected cost {cost}")
    axes.set_ylabel("expected reward E[r]")
    axes.grid(alpha=0.3)


def csv_cell(value: Any) -> str:
    """One CSV cell: floats by ``repr`` (they read back exactly), booleans ``true``/``false``,
    several numbers ``;``-separated (each by ``repr``), an absent value (``None``) empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ";".join(repr(item) for item in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv_and_png(
    csv_path: Path,
    png_path: Path,
    columns: Sequence[str],
    rows: Iterable[Mapping[str, Any]],
    plot: Callable[[], Figure],
    overwrite: bool,
    hint: str,
) -> tuple[Path, Path]:
    """Write ``rows`` (cells by :func:`csv_cell`) to ``csv_path`` and ``plot()`` to ``png_path``.

    Args:
        csv_path, png_path: the two files; their folder is created if missing.
        columns: the CSV header, in order (every row has these keys).
        rows: the table, one mapping per line.
        plot: draws the figure (called only once the CSV is written).
        overwrite: replace existing files; otherwise an existing file raises.
        hint: how to avoid a clash (the end of the FileExistsError's message).

    Returns:
        ``(csv_path, png_path)``.

    Raises:
        FileExistsError: a target file exists and ``overwrite`` is False (nothing is written).
    """
    refuse_overwrite((csv_path, png_path), overwrite, hint)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: csv_cell(value) for key, value in row.items()})
    plot().savefig(png_path, format="png", dpi=PNG_DPI)
    return csv_path, png_path
