"""The one exception type of the data layer.

A :class:`DataError` says which source, which record and which field is wrong, what was expected
and what was found, so the user knows what to change (the data, or the ``field_map``). It is a
``ValueError`` so callers that already catch bad values keep working.
"""

from __future__ import annotations

__all__ = ["DataError", "ErrorReason"]


class ErrorReason:
    """Short, stable keys for the kinds of bad record; they are the keys of
    :attr:`saferl.data.ValidationReport.skipped_by_reason`."""

    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    EMPTY_TEXT = "empty_text"
    INVALID_VALUE = "invalid_value"
    IDENTICAL_RESPONSES = "identical_responses"
    CONTRADICTORY_SAFETY = "contradictory_safety"
    DUPLICATE = "duplicate"
    """Not an error: a repeated record (e.g. a repeated prompt) removed on request
    (``deduplicate=True``)."""
    SOURCE = "source"
    """The source as a whole (missing file, unreadable folder, missing column)."""


class DataError(ValueError):
    """Bad input data, with where it is and what is wrong.

    The message reads
    ``"<source>: record <index>, field '<field>' (column '<column>'): expected <expected>, found <found>"``
    with the parts that do not apply left out (a missing file has no record index).

    Attributes:
        source: the dataset source (a path, a hub name, or a label such as ``"<rows>"``).
        index: 0-based position of the record in the source split, or ``None``.
        field: the record field (e.g. ``"prompt"``), or ``None``.
        column: the source column the field was read from when it differs from ``field`` (a
            ``field_map`` renamed it), else ``None``.
        expected: what a valid value looks like.
        found: what was found (already shortened for display).
        reason: one of the :class:`ErrorReason` keys.
    """

    def __init__(
        self,
        source: str,
        *,
        expected: str,
        found: str,
        index: int | None = None,
        field: str | None = None,
        column: str | None = None,
        reason: str = ErrorReason.SOURCE,
    ) -> None:
        self.source = source
        self.index = index
        self.field = field
        self.column = column if column != field else None
        self.expected = expected
        self.found = found
        self.reason = reason
        super().__init__(self._format())

    def _format(self) -> str:
        where = [str(self.source)]
        if self.index is not None:
            where.append(f"record {self.index}")
        if self.field is not None:
            field = f"field '{self.field}'"
            if self.column is not None:
                field += f" (column '{self.column}')"
            where.append(field)
        return f"{', '.join(where)}: expected {self.expected}, found {self.found}"

    def __reduce__(self):  # keep the keyword-only attributes through pickling (Ray workers)
        return (
            _rebuild_data_error,
            (
                self.source,
                self.expected,
                self.found,
                self.index,
                self.field,
                self.column,
                self.reason,
            ),
        )


def _rebuild_data_error(
    source: str,
    expected: str,
    found: str,
    index: int | None,
    field: str | None,
    column: str | None,
    reason: str,
) -> DataError:
    return DataError(
        source,
        expected=expected,
        found=found,
        index=index,
        field=field,
        column=column,
        reason=reason,
    )


def describe_value(value: object, max_chars: int = 60) -> str:
    """A short display of a found value with its type, e.g. ``int 5`` or ``str ''``."""
    text = repr(value)
    if len(text) > max_chars:
        text = text[: max_chars - 3] + "..."
    return f"{type(value).__name__} {text}"
