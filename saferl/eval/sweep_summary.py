"""Summarise a Hydra sweep of saferl runs: one table row per job and the reward–cost plot.

The ``saferl-sweep-summary FOLDER [--out DIR] [--overwrite]`` command (:func:`main`) and the two
files it writes (:func:`write_sweep_summary`). Each step has its own module:

* :mod:`saferl.eval.sweep_load`: the multirun folder's ``summary.json`` files into typed records
  (:func:`load_sweep`, :class:`SweepSummary`);
* :mod:`saferl.eval.sweep_table`: one row per job (:func:`sweep_table`, the CSV's rows) and the
  console table (:func:`print_sweep_summary`);
* :mod:`saferl.eval.sweep_plot`: expected reward against expected cost (:func:`plot_sweep`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from saferl.eval.outputs import refuse_overwrite
from saferl.eval.plotting import write_csv_and_png
from saferl.eval.sweep_load import SweepInputError, SweepSummary, load_sweep
from saferl.eval.sweep_plot import plot_sweep
from saferl.eval.sweep_table import print_sweep_summary, sweep_columns, sweep_table

__all__ = ["CSV_FILE", "PNG_FILE", "write_sweep_summary", "main"]

CSV_FILE = "sweep_summary.csv"
PNG_FILE = "frontier.png"
_OVERWRITE_HINT = (
    "pass overwrite=True (--overwrite) to replace it, or choose another output folder (--out)"
)


def write_sweep_summary(
    summary: SweepSummary, out_dir: str | Path, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``sweep_summary.csv`` (:func:`~saferl.eval.sweep_table.sweep_table`'s rows) and ``frontier.png`` into
    ``out_dir``.

    The CSV writes floats by ``repr`` (they read back exactly), lists of numbers
    ``;``-separated, absent values as empty cells. The PNG plots expected reward against
    expected cost: each job's trained policy (annotated with its swept values; hollow, with its
    violation, when it breaks its limit beyond the feasibility tolerance), the reference,
    the exact optimum of each job joined into the exact frontier, each job's cost limit as a
    faint vertical line and each predicted frontier as a dashed curve.

    Args:
        summary: from :func:`~saferl.eval.sweep_load.load_sweep`.
        out_dir: created if missing.
        overwrite: replace existing files; otherwise an existing file raises.

    Returns:
        ``(csv_path, png_path)``.

    Raises:
        FileExistsError: a target file exists and ``overwrite`` is False (nothing is written).
    """
    out_dir = Path(out_dir)
    return write_csv_and_png(
        out_dir / CSV_FILE,
        out_dir / PNG_FILE,
        sweep_columns(summary),
        sweep_table(summary),
        lambda: plot_sweep(summary),
        overwrite,
        _OVERWRITE_HINT,
    )


def _refuse_existing_outputs(out_dir: Path, overwrite: bool) -> None:
    """Raise FileExistsError before anything is printed or written (see :func:`main`)."""
    refuse_overwrite((out_dir / CSV_FILE, out_dir / PNG_FILE), overwrite, _OVERWRITE_HINT)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``saferl-sweep-summary FOLDER [--out DIR] [--overwrite]``: print the table, write the CSV
    and the plot (into FOLDER by default) and print their paths.

    Returns:
        0 on success; 2 on bad input (the message, without a traceback, goes to stderr).
    """
    parser = argparse.ArgumentParser(
        prog="saferl-sweep-summary",
        description="Summarise a Hydra sweep of saferl runs (or one run): a table, "
        f"{CSV_FILE} and {PNG_FILE} (expected reward against expected cost).",
    )
    parser.add_argument(
        "folder",
        type=Path,
        help="a multirun folder (multirun/<date>/<time>) or a single run folder",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the CSV and the plot (default: FOLDER)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help=f"replace an existing {CSV_FILE} / {PNG_FILE}"
    )
    args = parser.parse_args(argv)
    try:
        summary = load_sweep(args.folder)
        out_dir = args.folder if args.out is None else args.out
        _refuse_existing_outputs(out_dir, args.overwrite)  # before printing anything
        print_sweep_summary(summary)
        csv_path, png_path = write_sweep_summary(summary, out_dir, overwrite=args.overwrite)
    except (SweepInputError, OSError) as error:
        print(f"saferl-sweep-summary: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {csv_path}")
    print(f"wrote {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
