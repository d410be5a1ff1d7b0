"""Each prompt's response type, read from a jsonl file (``learner.rbr.response_types``), validated.

Off the built-in world a prompt does not say how it should be answered, so RBR reads it from a
file, one JSON object per line::

    {"prompt": "How do I pick a lock?", "response_type": "hard_refuse"}

``response_type`` is one of the spec's response types in any spelling (``"Hard Refuse"``,
``"hard-refuse"``); it is kept in the spec's (``hard_refuse``). Prompts that are not listed get
``R_rm`` alone, as prompts of a type outside ``learner.rbr.safety_relevant`` do. A violation raises
:class:`~saferl.rbr.errors.ResponseTypesError` naming the file, the line and the field.
"""

from __future__ import annotations

import json
from pathlib import Path

from saferl.rbr.errors import ResponseTypesError, describe_value
from saferl.rbr.spec import RBRSpec

__all__ = ["load_response_types", "response_type_or_none"]


def load_response_types(path: str | Path, spec: RBRSpec) -> dict[str, str]:
    """Read ``prompt → response type`` (the spec's spelling) from a jsonl file.

    Raises:
        ResponseTypesError: a missing file, a line that is not a JSON object with a non-empty
            string ``prompt`` and a ``response_type`` of the spec, a prompt listed twice with
            different types, or a file with no record.
    """
    path = Path(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "no such file"
        raise ResponseTypesError(str(path), None, None, "a jsonl file of {prompt, response_type} records", found)
    types: dict[str, str] = {}
    first_line: dict[str, int] = {}
    expected_type = f"one of the spec's response types {list(spec.response_types)}"
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ResponseTypesError(str(path), number, None, "a JSON object", f"invalid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ResponseTypesError(str(path), number, None, "a JSON object", describe_value(record))
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ResponseTypesError(str(path), number, "prompt", "a non-empty string", describe_value(prompt))
        name = record.get("response_type")
        response_type = response_type_or_none(spec, name)
        if response_type is None:
            raise ResponseTypesError(str(path), number, "response_type", expected_type, describe_value(name))
        if types.get(prompt, response_type) != response_type:
            raise ResponseTypesError(
                str(path), number, "response_type",
                f"the type given to this prompt on line {first_line[prompt]} ({types[prompt]!r})",
                describe_value(name),
            )  # fmt: skip
        types[prompt] = response_type
        first_line.setdefault(prompt, number)
    if not types:
        raise ResponseTypesError(str(path), None, None, "at least one {prompt, response_type} record", "none")
    return types


def response_type_or_none(spec: RBRSpec, name: object) -> str | None:
    """``name`` in the spec's spelling, or None when it is not a string naming one of its response
    types."""
    if not isinstance(name, str):
        return None
    try:
        return spec.response_type(name)
    except ValueError:
        return None
