"""Which data sources are local paths, and the error for one that is missing, without importing
``datasets``: the CLI's preflight says a mistyped ``data.path`` before any heavy module loads, and
the loader (:mod:`saferl.data.sources`) applies the same rule and says the same thing."""

from __future__ import annotations

import os
from pathlib import Path

from saferl.data.errors import DataError

__all__ = ["SUPPORTED_EXTENSIONS", "looks_like_local_path", "require_existing"]

SUPPORTED_EXTENSIONS: dict[str, str] = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
"""File extension -> ``datasets`` packaged builder."""


def looks_like_local_path(source: str | os.PathLike) -> bool:
    """Whether a source string names a local file or folder rather than a hub dataset.

    See :mod:`saferl.data.sources` for the rule.
    """
    if isinstance(source, os.PathLike):
        return True
    if os.path.exists(source):
        return True
    if source.lower().endswith(tuple(SUPPORTED_EXTENSIONS)):
        return True
    if source.startswith(("/", ".", "~")):
        return True
    if "\\" in source or (os.altsep is not None and os.altsep in source):
        return True
    return source.count("/") >= 2


def require_existing(path: Path) -> None:
    """Raise the :class:`DataError` for a local source that is not there."""
    if not path.exists():
        raise DataError(
            str(path),
            expected="an existing .json, .jsonl or .parquet file, or a folder of them",
            found="nothing there (file not found)",
        )
