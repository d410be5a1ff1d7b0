"""Writing result files without losing earlier ones: one refusal shared by every writer in
``saferl.eval`` (arena tables, sweep summaries, frontier plots)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["refuse_overwrite"]


def refuse_overwrite(paths: Iterable[Path], overwrite: bool, hint: str) -> None:
    """Raise before anything is written when one of ``paths`` exists and ``overwrite`` is False.

    Args:
        paths: the files a writer is about to create.
        overwrite: replacing them was asked for.
        hint: how to avoid the clash, e.g. ``"pass overwrite=True, or choose another folder"``.

    Raises:
        FileExistsError: naming the first existing file.
    """
    if overwrite:
        return
    for path in paths:
        if Path(path).exists():
            raise FileExistsError(f"{path} already exists; {hint}")
