"""The errors of the RBR spec and gold-data readers: where the file is wrong and how.

Messages read ``"<file>, key 'completion_classes.ideal.comply': expected ..., found ..."`` for a
spec and ``"<file>, line 12, field 'propositions.apology': expected ..., found ..."`` for gold
data and response types, with the parts that do not apply left out. Both are ``ValueError`` subclasses.
"""

from __future__ import annotations

__all__ = ["SpecError", "GoldDataError", "RecordError", "ResponseTypesError", "describe_value"]


class SpecError(ValueError):
    """A bad spec file (``proposition_prompts.yaml``).

    Attributes:
        path: the file.
        key: the dotted key that is wrong (``None``: the file as a whole).
        expected: what a valid value looks like.
        found: what was found (already shortened for display).
    """

    def __init__(self, path: str, key: str | None, expected: str, found: str) -> None:
        self.path, self.key, self.expected, self.found = str(path), key, expected, found
        where = self.path if key is None else f"{self.path}, key '{key}'"
        super().__init__(f"{where}: expected {expected}, found {found}")

    def __reduce__(self):  # pickles with its attributes (e.g. through Ray)
        return (SpecError, (self.path, self.key, self.expected, self.found))


class RecordError(ValueError):
    """A bad jsonl file or record (the base of :class:`GoldDataError` and
    :class:`ResponseTypesError`).

    Attributes:
        path: the file.
        line: the record's line, counting from 1 as editors do (``None``: the file as a whole).
        field: the dotted field that is wrong (e.g. ``"propositions.apology"``), or ``None``.
        expected: what a valid value looks like.
        found: what was found (already shortened for display).
    """

    def __init__(
        self, path: str, line: int | None, field: str | None, expected: str, found: str
    ) -> None:
        self.path, self.line, self.field = str(path), line, field
        self.expected, self.found = expected, found
        where = [self.path]
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: expected {expected}, found {found}")

    def __reduce__(self):  # pickles with its attributes (e.g. through Ray)
        return (type(self), (self.path, self.line, self.field, self.expected, self.found))


class GoldDataError(RecordError):
    """A bad gold-data jsonl file or record."""


class ResponseTypesError(RecordError):
    """A bad prompt response-types jsonl file or record (``learner.rbr.response_types``)."""


def describe_value(value: object, max_chars: int = 60) -> str:
    """A short display of a found value with its type, e.g. ``int 5`` or ``str 'yes'``."""
    text = repr(value)
    if len(text) > max_chars:
        text = text[: max_chars - 3] + "..."
    return f"{type(value).__name__} {text}"
