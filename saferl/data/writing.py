"""Write records to a file the loaders read back unchanged.

The columns are the record's field names (:meth:`to_dict`), so
``load_preference_dataset(write_records(pairs, "pairs.jsonl"))`` returns ``pairs``. The format
follows the extension: ``.jsonl`` (one JSON object a line), ``.json`` (one JSON array) or
``.parquet``. An existing file is never overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from saferl.data.errors import DataError
from saferl.data.records import RECORD_TYPES, Record

__all__ = ["write_records"]

_FORMATS = (".jsonl", ".json", ".parquet")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):  # numpy scalars in directly-built records
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as JSON")


def _encode(rows: list[dict[str, Any]], suffix: str) -> bytes:
    if suffix == ".jsonl":
        lines = (json.dumps(row, ensure_ascii=False, default=_json_default) for row in rows)
        return ("\n".join(lines) + "\n").encode("utf-8")
    if suffix == ".json":
        return json.dumps(rows, ensure_ascii=False, indent=1, default=_json_default).encode("utf-8")
    buffer = io.BytesIO()
    datasets.Dataset.from_list(rows).to_parquet(buffer)
    return buffer.getvalue()


def write_records(
    records: Iterable[Record], path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write records of one type to ``path`` (format by extension).

    The whole file is encoded before the file is opened, so a failure leaves no partial file;
    the parent folder is created if needed.

    Args:
        records: records of one type (:class:`PromptRecord`, :class:`SFTExample`,
            :class:`PreferencePair` or :class:`SafetyPreferencePair`); at least one.
        path: a ``.jsonl``, ``.json`` or ``.parquet`` path.
        overwrite: replace an existing file (otherwise an existing file is an error).

    Returns:
        The path written.

    Raises:
        DataError: an unsupported extension, no records, mixed record types, or an existing file
            without ``overwrite=True``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    label = str(path)
    if suffix not in _FORMATS:
        raise DataError(
            label,
            field="path",
            expected=f"a file name ending in one of {list(_FORMATS)}",
            found=f"extension {path.suffix or '(none)'!r}",
        )
    records = list(records)
    if not records:
        raise DataError(label, field="records", expected="at least one record", found="none")
    record_type = type(records[0])
    for index, record in enumerate(records):
        if type(record) is not record_type or record_type not in RECORD_TYPES:
            raise DataError(
                label,
                index=index,
                field="records",
                expected=f"records of one type among {[t.__name__ for t in RECORD_TYPES]} "
                f"(the first is {record_type.__name__})",
                found=type(record).__name__,
            )
    if path.exists() and not overwrite:
        raise DataError(
            label,
            field="path",
            expected="a path that does not exist yet (or overwrite=True)",
            found="an existing file",
        )
    payload = _encode([record.to_dict() for record in records], suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "wb" if overwrite else "xb") as handle:  # "x": never clobber a racer
            handle.write(payload)
    except FileExistsError as error:
        raise DataError(
            label,
            field="path",
            expected="a path that does not exist yet (or overwrite=True)",
            found="an existing file",
        ) from error
    return path
