"""Per-record validation: raw rows (mappings of column name to value) into typed records.

Every loader goes through :func:`validate_records`. A row is checked field by field in the order
of the record's fields, then across fields; the first problem found is the record's error:

* ``missing_field``: the column is absent from the row, or its value is ``None``.
* ``wrong_type``: a text field that is not a ``str``; a response id that is not an ``int``
  (``bool`` and ``float`` are refused, numpy integers accepted); a safety label that is not
  bool-like (``bool``, ``numpy.bool_``, or the integers 0/1); a probability that is not a number.
* ``empty_text``: a prompt or response that is empty or whitespace only.
* ``invalid_value``: a response id outside {0, 1}; an integer safety label outside {0, 1}; a
  preference probability outside [0, 1] or NaN.
* ``identical_responses``: the two responses of a pair are equal after stripping surrounding
  whitespace (such a pair teaches nothing).
* ``contradictory_safety``: the safer response is labelled unsafe while the other response is
  labelled safe (docs/algorithms.md §3).
* ``duplicate`` (not an error): with ``deduplicate=True``, a record equal to an earlier one (e.g.
  a repeated prompt).

``strict=True`` raises the first :class:`~saferl.data.errors.DataError`; ``strict=False`` skips bad
records and counts them in a :class:`ValidationReport`, so nothing is dropped silently:
``report.num_kept + report.num_skipped == report.num_read`` always holds.

A ``field_map`` maps the record's field names to the source's column names, e.g.
``{"prompt": "question"}``; unmapped fields are read from the column of the same name. Errors name
both the field and the column it was read from.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np

from saferl.data.errors import DataError, ErrorReason, describe_value
from saferl.data.records import PreferencePair, PromptRecord, SafetyPreferencePair, SFTExample

__all__ = [
    "FieldSpec",
    "RecordSchema",
    "ValidationReport",
    "schema_for",
    "resolve_field_map",
    "validate_record",
    "validate_records",
    "log_report",
]

logger = logging.getLogger("saferl.data")

RecordT = TypeVar("RecordT", PromptRecord, SFTExample, PreferencePair, SafetyPreferencePair)

TEXT = "text"
RESPONSE_ID = "response_id"
SAFETY_LABEL = "safety_label"
PROBABILITY = "probability"


@dataclass(frozen=True)
class FieldSpec:
    """One field of a record: its name, kind of value, and default when optional.

    Attributes:
        name: the record's field name (and default column name).
        kind: ``"text"``, ``"response_id"``, ``"safety_label"`` or ``"probability"``.
        required: whether the column must exist; an optional field missing from a row (or
            ``None``) takes ``default``.
        default: the value of an optional field when absent.
    """

    name: str
    kind: str
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class RecordSchema:
    """The fields of one record type, in checking order."""

    record_type: type
    fields: tuple[FieldSpec, ...]

    @property
    def field_names(self) -> tuple[str, ...]:
        """All field names, in order."""
        return tuple(spec.name for spec in self.fields)

    @property
    def required_field_names(self) -> tuple[str, ...]:
        """The fields whose column must exist in the source."""
        return tuple(spec.name for spec in self.fields if spec.required)


_SCHEMAS: dict[type, RecordSchema] = {
    PromptRecord: RecordSchema(PromptRecord, (FieldSpec("prompt", TEXT),)),
    SFTExample: RecordSchema(SFTExample, (FieldSpec("prompt", TEXT), FieldSpec("response", TEXT))),
    PreferencePair: RecordSchema(
        PreferencePair,
        (
            FieldSpec("prompt", TEXT),
            FieldSpec("chosen", TEXT),
            FieldSpec("rejected", TEXT),
            FieldSpec("preference_prob", PROBABILITY, required=False, default=1.0),
        ),
    ),
    SafetyPreferencePair: RecordSchema(
        SafetyPreferencePair,
        (
            FieldSpec("prompt", TEXT),
            FieldSpec("response_0", TEXT),
            FieldSpec("response_1", TEXT),
            FieldSpec("better_response_id", RESPONSE_ID),
            FieldSpec("safer_response_id", RESPONSE_ID),
            FieldSpec("is_response_0_safe", SAFETY_LABEL),
            FieldSpec("is_response_1_safe", SAFETY_LABEL),
        ),
    ),
}


def schema_for(record_type: type) -> RecordSchema:
    """The :class:`RecordSchema` of a record class."""
    try:
        return _SCHEMAS[record_type]
    except KeyError:
        names = ", ".join(t.__name__ for t in _SCHEMAS)
        raise TypeError(f"record_type must be one of {names}, found {record_type!r}") from None


def resolve_field_map(
    record_type: type, field_map: Mapping[str, str] | None, source: str
) -> dict[str, str]:
    """Complete a user ``field_map`` to one source column per record field.

    Args:
        record_type: the record class being built.
        field_map: record field name -> source column name; ``None`` or partial maps are
            completed with identity entries.
        source: the source label for error messages.

    Returns:
        ``{field_name: column_name}`` for every field of the record type.

    Raises:
        DataError: a key is not a field of the record type, or a value is not a string.
    """
    schema = schema_for(record_type)
    resolved = {name: name for name in schema.field_names}
    for key, column in (field_map or {}).items():
        if key not in resolved:
            raise DataError(
                source,
                field="field_map",
                expected=f"keys among the {record_type.__name__} fields {list(schema.field_names)}",
                found=f"key {key!r}",
                reason=ErrorReason.INVALID_VALUE,
            )
        if not isinstance(column, str) or not column:
            raise DataError(
                source,
                field="field_map",
                expected=f"a column name (str) for field {key!r}",
                found=describe_value(column),
                reason=ErrorReason.WRONG_TYPE,
            )
        resolved[key] = column
    return resolved


# ----------------------------------------------------------------------------------------------
# Field checks


@dataclass(frozen=True)
class _Where:
    source: str
    index: int | None
    field: str
    column: str

    def error(self, reason: str, expected: str, found: str) -> DataError:
        return DataError(
            self.source,
            index=self.index,
            field=self.field,
            column=self.column,
            expected=expected,
            found=found,
            reason=reason,
        )


def _check_text(value: Any, where: _Where) -> str:
    if not isinstance(value, str):
        raise where.error(ErrorReason.WRONG_TYPE, "a string", describe_value(value))
    if not value.strip():
        raise where.error(ErrorReason.EMPTY_TEXT, "non-empty text", describe_value(value))
    return value


def _check_response_id(value: Any, where: _Where) -> int:
    # bool is an int subclass; a True/False id usually means a mis-mapped safety column.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise where.error(
            ErrorReason.WRONG_TYPE, "an int response id 0 or 1", describe_value(value)
        )
    if int(value) not in (0, 1):
        raise where.error(ErrorReason.INVALID_VALUE, "a response id 0 or 1", describe_value(value))
    return int(value)


def _check_safety_label(value: Any, where: _Where) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        if int(value) in (0, 1):
            return bool(value)
        raise where.error(
            ErrorReason.INVALID_VALUE, "a safety label True/False or 0/1", describe_value(value)
        )
    raise where.error(
        ErrorReason.WRONG_TYPE,
        "a bool-like safety label (True/False or 0/1)",
        describe_value(value),
    )


def _check_probability(value: Any, where: _Where) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise where.error(ErrorReason.WRONG_TYPE, "a probability (float)", describe_value(value))
    probability = float(value)
    if math.isnan(probability) or not 0.0 <= probability <= 1.0:
        raise where.error(
            ErrorReason.INVALID_VALUE, "a probability in [0, 1]", describe_value(value)
        )
    return probability


_CHECKS = {
    TEXT: _check_text,
    RESPONSE_ID: _check_response_id,
    SAFETY_LABEL: _check_safety_label,
    PROBABILITY: _check_probability,
}


def _same_text(first: str, second: str) -> bool:
    return first.strip() == second.strip()


def _check_across_fields(
    values: dict[str, Any],
    record_type: type,
    columns: Mapping[str, str],
    source: str,
    index: int | None,
) -> None:
    def where(name: str) -> _Where:
        return _Where(source, index, name, columns[name])

    if record_type is PreferencePair and _same_text(values["chosen"], values["rejected"]):
        raise where("rejected").error(
            ErrorReason.IDENTICAL_RESPONSES,
            "a rejected response that differs from the chosen one",
            "the same text in both",
        )
    if record_type is SafetyPreferencePair:
        if _same_text(values["response_0"], values["response_1"]):
            raise where("response_1").error(
                ErrorReason.IDENTICAL_RESPONSES,
                "a response_1 that differs from response_0",
                "the same text in both",
            )
        safer = values["safer_response_id"]
        safer_is_safe = values[f"is_response_{safer}_safe"]
        other_is_safe = values[f"is_response_{1 - safer}_safe"]
        if other_is_safe and not safer_is_safe:
            raise where("safer_response_id").error(
                ErrorReason.CONTRADICTORY_SAFETY,
                "the safer response to be labelled safe whenever the other one is "
                "(docs/algorithms.md §3)",
                f"safer_response_id={safer} with is_response_{safer}_safe=False "
                f"but is_response_{1 - safer}_safe=True",
            )


def validate_record(
    row: Mapping[str, Any],
    record_type: type[RecordT],
    *,
    source: str = "<rows>",
    index: int | None = None,
    field_map: Mapping[str, str] | None = None,
) -> RecordT:
    """Check one raw row and build its record.

    Args:
        row: column name -> value (extra columns are ignored).
        record_type: :class:`PromptRecord`, :class:`SFTExample`, :class:`PreferencePair` or
            :class:`SafetyPreferencePair`.
        source: the source label for error messages.
        index: the row's position in the source, for error messages.
        field_map: record field -> source column (see the module docstring).

    Raises:
        DataError: the first problem in the row (see the module docstring for the reasons).
    """
    schema = schema_for(record_type)
    columns = resolve_field_map(record_type, field_map, source)
    values: dict[str, Any] = {}
    for spec in schema.fields:
        column = columns[spec.name]
        where = _Where(source, index, spec.name, column)
        value = row.get(column)
        if value is None:
            if not spec.required:
                values[spec.name] = spec.default
                continue
            found = "null" if column in row else "no such column"
            raise where.error(ErrorReason.MISSING_FIELD, f"a value in column {column!r}", found)
        values[spec.name] = _CHECKS[spec.kind](value, where)
    _check_across_fields(values, record_type, columns, source, index)
    return record_type(**values)


# ----------------------------------------------------------------------------------------------
# Reports


@dataclass(frozen=True)
class ValidationReport:
    """What validation did to a source: how many rows were read, kept, and skipped, and why.

    Attributes:
        source: the source label.
        num_read: rows read from the source.
        num_kept: records returned.
        skipped_by_reason: number of skipped rows per :class:`~saferl.data.errors.ErrorReason`
            key (read-only mapping; only reasons that occurred appear).
        first_messages: the messages of the first few skipped rows, in order.
    """

    source: str
    num_read: int
    num_kept: int
    skipped_by_reason: Mapping[str, int] = field(default_factory=dict)
    first_messages: tuple[str, ...] = ()

    @property
    def num_skipped(self) -> int:
        """Rows not returned; always ``num_read - num_kept``."""
        return sum(self.skipped_by_reason.values())

    def summary(self) -> str:
        """A one-paragraph human-readable summary (what the loaders log)."""
        text = f"{self.source}: read {self.num_read} records, kept {self.num_kept}"
        if not self.num_skipped:
            return text
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped_by_reason.items()))
        text += f", skipped {self.num_skipped} ({reasons})"
        if self.first_messages:
            text += "; first problems:\n  " + "\n  ".join(self.first_messages)
        return text


def validate_records(
    rows: Iterable[Mapping[str, Any]],
    record_type: type[RecordT],
    *,
    source: str = "<rows>",
    field_map: Mapping[str, str] | None = None,
    strict: bool = True,
    deduplicate: bool = False,
    max_messages: int = 5,
) -> tuple[list[RecordT], ValidationReport]:
    """Check every row and build the records.

    Args:
        rows: raw rows, column name -> value; a row's position in the iterable is its index in
            error messages.
        record_type: the record class to build.
        source: the source label for error messages and the report.
        field_map: record field -> source column (see the module docstring).
        strict: raise on the first bad row (``True``) or skip bad rows and count them (``False``).
        deduplicate: drop rows whose record equals an earlier kept record (counted under
            ``duplicate``; for prompt sets built from preference data, which repeat prompts).
        max_messages: how many skipped-row messages the report keeps.

    Returns:
        ``(records, report)`` with ``len(records) == report.num_kept``.

    Raises:
        DataError: with ``strict=True``, the first bad row.
    """
    resolve_field_map(record_type, field_map, source)  # a bad field map fails before any row
    records: list[RecordT] = []
    seen: set[RecordT] = set()
    skipped: dict[str, int] = {}
    messages: list[str] = []
    num_read = 0
    for index, row in enumerate(rows):
        num_read += 1
        try:
            record = validate_record(
                row, record_type, source=source, index=index, field_map=field_map
            )
        except DataError as error:
            if strict:
                raise
            skipped[error.reason] = skipped.get(error.reason, 0) + 1
            if len(messages) < max_messages:
                messages.append(str(error))
            continue
        if deduplicate:
            if record in seen:
                skipped[ErrorReason.DUPLICATE] = skipped.get(ErrorReason.DUPLICATE, 0) + 1
                continue
            seen.add(record)
        records.append(record)
    report = ValidationReport(
        source=source,
        num_read=num_read,
        num_kept=len(records),
        skipped_by_reason=MappingProxyType(skipped),
        first_messages=tuple(messages),
    )
    return records, report


def log_report(report: ValidationReport) -> None:
    """Log a report's summary on the ``saferl.data`` logger: INFO if all rows were kept, WARNING
    if any were skipped (so skipped data is never silent)."""
    bad = sum(v for k, v in report.skipped_by_reason.items() if k != ErrorReason.DUPLICATE)
    logger.log(logging.WARNING if bad else logging.INFO, "%s", report.summary())
