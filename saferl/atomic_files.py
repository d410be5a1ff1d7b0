"""A file written whole or not at all: the run-folder records a kill must not leave half written
(``stages.json``, ``run_metadata.json``, ``metrics.jsonl`` when a resume rewrites it)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_text_atomically"]


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``<path>.tmp`` beside ``path``, then swap it in (``os.replace``): at any
    moment of a kill ``path`` holds either its previous content or ``text``."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
