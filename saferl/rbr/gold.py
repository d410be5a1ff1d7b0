"""Reading human-labelled RBR gold data (the release's ``data/rbr_gold_data/*.jsonl``), validated.

One JSON object per line::

    {"category": "K-R", "response_type": "Hard Refuse",
     "prompt": [{"role": "user", "content": "..."}, ...],
     "completion": [{"role": "assistant", "content": "..."}],
     "propositions": {"apology": true, "judgement": false, ...}}

``propositions`` holds one boolean per simple proposition (23 in the release). With a spec, the
names must be exactly the spec's simple propositions and the response type one of the spec's;
without one, every record must have the same names as the first. A violation raises
:class:`~saferl.rbr.errors.GoldDataError` naming the file, the line and the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saferl.rbr.errors import GoldDataError, describe_value
from saferl.rbr.spec import RBRSpec, response_type_key

__all__ = ["Message", "GoldRecord", "load_gold"]

FIELDS = ("category", "response_type", "prompt", "completion", "propositions")


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    content: str


@dataclass(frozen=True)
class GoldRecord:
    """One human-labelled completion.

    Attributes:
        category: the prompt's content category as written (e.g. ``"K-R"``, ``"None"``).
        response_type: as written (e.g. ``"Hard Refuse"``); :func:`response_type_key` gives
            the spec's spelling.
        prompt: the conversation before the completion.
        completion: the completion (one assistant message in the release).
        propositions: simple proposition → the human label.
        line: the record's line in its file (from 1).
    """

    category: str
    response_type: str
    prompt: tuple[Message, ...]
    completion: tuple[Message, ...]
    propositions: Mapping[str, bool]
    line: int

    @property
    def response_type_key(self) -> str:
        """The response type in a spec's spelling (``"hard_refuse"``)."""
        return response_type_key(self.response_type)


def load_gold(path: str | Path, spec: RBRSpec | None = None) -> list[GoldRecord]:
    """Read and validate a gold-data jsonl file.

    Args:
        path: the ``.jsonl`` file.
        spec: when given, each record's propositions must be exactly its simple propositions and
            its response type one of its response types.

    Raises:
        GoldDataError: a missing file, an unreadable line, a missing or extra field, or a value
            of the wrong type (the message names the file, the line and the field).
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "no such file"
        raise GoldDataError(source, None, None, "a gold-data .jsonl file", found)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise GoldDataError(
            source, None, None, "UTF-8 text", f"undecodable bytes ({error.reason})"
        ) from None
    expected_names = None if spec is None else tuple(spec.simple_propositions)
    records = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        record = _record(source, line, raw, expected_names, spec)
        if expected_names is None:
            expected_names = tuple(record.propositions)
        records.append(record)
    if not records:
        raise GoldDataError(source, None, None, "at least one record", "an empty file")
    return records


def _record(
    source: str,
    line: int,
    raw: str,
    expected_names: tuple[str, ...] | None,
    spec: RBRSpec | None,
) -> GoldRecord:
    def fail(field: str | None, expected: str, found: str):
        raise GoldDataError(source, line, field, expected, found)

    try:
        document = json.loads(raw)
    except json.JSONDecodeError as error:
        fail(
            None, "one JSON object per line", f"invalid JSON ({error.msg} at column {error.colno})"
        )
    if not isinstance(document, dict):
        fail(None, "one JSON object per line", f"a JSON {type(document).__name__}")
    for field in FIELDS:
        if field not in document:
            fail(field, _EXPECTED[field], "nothing (the field is missing)")
    for field in document:
        if field not in FIELDS:
            fail(field, "only the fields " + ", ".join(FIELDS), "an unknown field")
    for field in ("category", "response_type"):
        if not isinstance(document[field], str) or not document[field].strip():
            fail(field, _EXPECTED[field], describe_value(document[field]))
    if spec is not None and response_type_key(document["response_type"]) not in spec.classes:
        fail(
            "response_type",
            "one of the spec's response types (" + ", ".join(spec.response_types) + ")",
            describe_value(document["response_type"]),
        )
    prompt = _messages(document["prompt"], "prompt", fail)
    completion = _messages(document["completion"], "completion", fail)
    propositions = _propositions(document["propositions"], expected_names, spec is not None, fail)
    return GoldRecord(
        category=document["category"],
        response_type=document["response_type"],
        prompt=prompt,
        completion=completion,
        propositions=propositions,
        line=line,
    )


_EXPECTED = {
    "category": 'a non-empty string (e.g. "K-R", "None")',
    "response_type": 'a non-empty string (e.g. "Hard Refuse", "Comply")',
    "prompt": "a non-empty list of messages {role, content}",
    "completion": "a non-empty list of messages {role, content}",
    "propositions": "a mapping proposition → true/false",
}


def _messages(value: Any, field: str, fail) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        fail(field, _EXPECTED[field], describe_value(value))
    messages = []
    for index, message in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            fail(where, 'a message {"role": ..., "content": ...}', describe_value(message))
        for key in ("role", "content"):
            if not isinstance(message[key], str):
                fail(f"{where}.{key}", "a string", describe_value(message[key]))
        messages.append(Message(role=message["role"], content=message["content"]))
    return tuple(messages)


def _propositions(
    value: Any, expected_names: tuple[str, ...] | None, from_spec: bool, fail
) -> dict[str, bool]:
    field = "propositions"
    if not isinstance(value, dict) or not value:
        fail(field, _EXPECTED[field], describe_value(value))
    for name, label in value.items():
        if not isinstance(label, bool):
            fail(f"{field}.{name}", "true or false", describe_value(label))
    if expected_names is not None:
        missing = [name for name in expected_names if name not in value]
        extra = [name for name in value if name not in expected_names]
        if missing or extra:
            against = "the spec's" if from_spec else "the first record's"
            found = "; ".join(
                part
                for part in (
                    "missing " + ", ".join(missing) if missing else "",
                    "unknown " + ", ".join(extra) if extra else "",
                )
                if part
            )
            fail(field, f"exactly {against} {len(expected_names)} simple propositions", found)
    return dict(value)
