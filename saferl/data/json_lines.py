"""Where a JSON or JSON-lines file stops being readable.

``datasets`` reads JSON through pyarrow and, when a line is malformed, raises
``DatasetGenerationError: An error occurred while generating the dataset`` — the file, the line
and the parse error are lost (pyarrow's "row" counts from its block, not the file). This module
re-reads the file with the standard library to say which line is wrong and how.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["first_json_problem"]


def first_json_problem(path: str | Path) -> tuple[int, str] | None:
    """``(line number, what is wrong)`` for the first unreadable record of a ``.jsonl`` file (or
    of a ``.json`` file: one JSON document, or one object per line), else None.

    Line numbers count from 1, as editors show them. A record must be a JSON object.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            if "\n{" not in text.strip():  # one document, not JSON lines: its own error
                return error.lineno, f"invalid JSON ({error.msg} at column {error.colno})"
        else:
            if isinstance(document, (list, dict)):
                return None
            return 1, f"a JSON {type(document).__name__}, not a list of objects or one object per line"
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            return number, f"invalid JSON ({error.msg} at column {error.colno})"
        if not isinstance(record, dict):
            return number, f"a JSON {type(record).__name__}, not an object"
    return None
