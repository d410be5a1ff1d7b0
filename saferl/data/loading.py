"""Loaders: a source (local file/folder, hub name, in-memory dataset) into validated records.

One loader per record type, all with the same signature and behaviour:

* :func:`load_preference_dataset` -> :class:`SafetyPreferencePair` from the PKU-SafeRLHF
  columns ``prompt, response_0, response_1, better_response_id, safer_response_id,
  is_response_0_safe, is_response_1_safe`` (docs/algorithms.md §7);
* :func:`load_pairwise_dataset` -> :class:`PreferencePair` from ``prompt, chosen, rejected`` and,
  when present, ``preference_prob`` (else 1.0);
* :func:`load_sft_dataset` -> :class:`SFTExample` from ``prompt, response``;
* :func:`load_prompt_dataset` -> :class:`PromptRecord` from ``prompt``.

* Extra columns are ignored, so any preference or SFT set is also a prompt set
  (``load_prompt_dataset(pku_source, deduplicate=True)``), and a chosen/rejected set is an SFT
  set with ``field_map={"response": "chosen"}``.
* ``field_map`` maps record field names to source column names, e.g.
  ``{"prompt": "question", "response_0": "answer_a"}``; unmapped fields use their own name.
* A safety set used where generic pairs are needed: load it with
  :func:`load_preference_dataset` and convert with
  :meth:`SafetyPreferencePair.to_preference_pair` (``by="better"`` or ``by="safer"``) — the
  ordering is then an explicit choice. Loading a chosen/rejected source with
  :func:`load_preference_dataset` (or the reverse) fails with a message pointing at the right
  loader.
* A required column missing from the whole source is always an error (even with
  ``strict=False``): every record would fail.
* ``strict=True`` raises on the first bad record; ``strict=False`` skips bad records. Either
  way the :class:`ValidationReport` travels with the records and its summary is logged on the
  ``saferl.data`` logger (WARNING when records were skipped).

Loading never writes to the input files or their folder (see :mod:`saferl.data.sources`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, overload

import datasets

from saferl.data.errors import DataError, ErrorReason
from saferl.data.records import PreferencePair, PromptRecord, SafetyPreferencePair, SFTExample
from saferl.data.sources import SourceLike, open_source
from saferl.data.validation import (
    RecordT,
    ValidationReport,
    log_report,
    resolve_field_map,
    schema_for,
    validate_records,
)

__all__ = [
    "LoadedDataset",
    "PreferenceDataset",
    "PairwiseDataset",
    "SFTDataset",
    "PromptDataset",
    "load_preference_dataset",
    "load_pairwise_dataset",
    "load_sft_dataset",
    "load_prompt_dataset",
    "load_records",
]

_ROW_BATCH = 1024


@dataclass(frozen=True)
class LoadedDataset(Sequence, Generic[RecordT]):
    """Validated records of one source split, with the validation report.

    Sequence-like: ``len(ds)``, ``ds[i]`` (a record), ``ds[i:j]`` (a tuple of records),
    ``for record in ds``.

    Attributes:
        records: the kept records, in source order.
        report: what validation read, kept and skipped.
        source: the source label (path or hub name).
    """

    records: tuple[RecordT, ...]
    report: ValidationReport
    source: str

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> RecordT: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[RecordT, ...]: ...

    def __getitem__(self, index: int | slice) -> RecordT | tuple[RecordT, ...]:
        return self.records[index]

    def __iter__(self) -> Iterator[RecordT]:
        return iter(self.records)

    @property
    def prompts(self) -> list[str]:
        """The prompt of every record, in order (repeats kept)."""
        return [record.prompt for record in self.records]


PreferenceDataset = LoadedDataset[SafetyPreferencePair]
"""Safety preference records (PKU-SafeRLHF fields)."""
PairwiseDataset = LoadedDataset[PreferencePair]
"""Generic chosen/rejected records."""
SFTDataset = LoadedDataset[SFTExample]
"""Prompt/response demonstrations."""
PromptDataset = LoadedDataset[PromptRecord]
"""Prompts."""

_PAIRWISE_COLUMNS = ("chosen", "rejected")
_SAFETY_COLUMNS = ("response_0", "response_1", "safer_response_id")


def _missing_columns_hint(record_type: type, column_names: Sequence[str]) -> str:
    present = set(column_names)
    if record_type is SafetyPreferencePair and present.issuperset(_PAIRWISE_COLUMNS):
        return (
            "; the source has chosen/rejected columns: load it with load_pairwise_dataset, or "
            "map the safety fields with field_map"
        )
    if record_type is PreferencePair and present.issuperset(_SAFETY_COLUMNS):
        return (
            "; the source has PKU-SafeRLHF safety columns: load it with load_preference_dataset "
            "and convert with SafetyPreferencePair.to_preference_pair(by='better' or 'safer')"
        )
    return "; map fields to columns with field_map={field: column}"


def _check_columns(
    dataset: datasets.Dataset, record_type: type, columns: Mapping[str, str], source: str
) -> list[str]:
    """The source columns to read; raises if a required one is absent from the source."""
    schema = schema_for(record_type)
    available = list(dataset.column_names)
    for spec in schema.fields:
        column = columns[spec.name]
        if spec.required and column not in available:
            raise DataError(
                source,
                field=spec.name,
                column=column,
                expected=f"a column {column!r} for the {record_type.__name__} field {spec.name!r}",
                found=f"columns {available}" + _missing_columns_hint(record_type, available),
                reason=ErrorReason.MISSING_FIELD,
            )
    return list(dict.fromkeys(c for c in columns.values() if c in available))


def _iter_rows(dataset: datasets.Dataset, column_names: list[str]) -> Iterator[dict[str, Any]]:
    """Rows as plain Python dicts, read in column batches (much faster than row access)."""
    table = dataset.select_columns(column_names).with_format(None)
    for batch in table.iter(batch_size=_ROW_BATCH):
        size = len(batch[column_names[0]])
        for i in range(size):
            yield {column: batch[column][i] for column in column_names}


def load_records(
    record_type: type[RecordT],
    source: SourceLike,
    split: str = "train",
    revision: str | None = None,
    field_map: Mapping[str, str] | None = None,
    strict: bool = True,
    *,
    name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    deduplicate: bool = False,
) -> LoadedDataset[RecordT]:
    """Load and validate records of any type (the typed loaders below call this).

    Args:
        record_type: :class:`PromptRecord`, :class:`SFTExample`, :class:`PreferencePair` or
            :class:`SafetyPreferencePair`.
        source: a local ``.json``/``.jsonl``/``.parquet`` file, a folder of them, a hub dataset
            name, or a ``datasets.Dataset``/``DatasetDict`` (see :mod:`saferl.data.sources`).
        split: the split; slice syntax such as ``"train[:1000]"`` works.
        revision: hub only: the revision to pin (commit sha, tag, branch).
        field_map: record field -> source column, e.g. ``{"prompt": "question"}``.
        strict: raise on the first bad record, or skip bad records and count them in the report.
        name: hub only: the dataset configuration.
        cache_dir: the ``datasets`` Arrow cache (``None``: its default cache); never the
            source's folder.
        deduplicate: drop records equal to an earlier one (counted in the report as
            ``duplicate``).

    Returns:
        The records with their :class:`ValidationReport`.

    Raises:
        DataError: a bad source, a bad field map, a missing column, or (``strict``) a bad record.
    """
    dataset, label = open_source(
        source, split=split, revision=revision, name=name, cache_dir=cache_dir
    )
    return _validated(record_type, dataset, label, field_map, strict, deduplicate)


def _validated(
    record_type: type[RecordT],
    dataset: datasets.Dataset,
    label: str,
    field_map: Mapping[str, str] | None,
    strict: bool,
    deduplicate: bool = False,
) -> LoadedDataset[RecordT]:
    """The records of an opened split (see :func:`load_records`)."""
    columns = resolve_field_map(record_type, field_map, label)
    column_names = _check_columns(dataset, record_type, columns, label)
    records, report = validate_records(
        _iter_rows(dataset, column_names),
        record_type,
        source=label,
        field_map=columns,
        strict=strict,
        deduplicate=deduplicate,
    )
    log_report(report)
    return LoadedDataset(records=tuple(records), report=report, source=label)


def load_preference_dataset(
    source: SourceLike,
    split: str = "train",
    revision: str | None = None,
    field_map: Mapping[str, str] | None = None,
    strict: bool = True,
    *,
    name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> PreferenceDataset:
    """Load safety preference pairs (PKU-SafeRLHF fields, docs/algorithms.md §7) for reward and cost
    models, PeCAN and the safety-aware preference losses.

    Pin hub sources with ``revision``: newer PKU-SafeRLHF revisions add columns (harm categories,
    severity), which are ignored here. See :func:`load_records` for the arguments.
    """
    return load_records(
        SafetyPreferencePair,
        source,
        split,
        revision,
        field_map,
        strict,
        name=name,
        cache_dir=cache_dir,
    )


def load_pairwise_dataset(
    source: SourceLike,
    split: str = "train",
    revision: str | None = None,
    field_map: Mapping[str, str] | None = None,
    strict: bool = True,
    *,
    name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> PairwiseDataset:
    """Load generic chosen/rejected pairs (DPO-family data) without safety labels.

    ``preference_prob`` is read when its column exists (or is mapped) and is ``1.0`` otherwise.
    See :func:`load_records` for the arguments.
    """
    return load_records(
        PreferencePair,
        source,
        split,
        revision,
        field_map,
        strict,
        name=name,
        cache_dir=cache_dir,
    )


def load_sft_dataset(
    source: SourceLike,
    split: str = "train",
    revision: str | None = None,
    field_map: Mapping[str, str] | None = None,
    strict: bool = True,
    *,
    name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> SFTDataset:
    """Load (prompt, response) demonstrations for SFT.

    A chosen/rejected set serves with ``field_map={"response": "chosen"}``. A set in Alpaca's
    format (columns ``instruction``, ``input``, ``output`` and no ``prompt`` or ``response``, e.g.
    ``tatsu-lab/alpaca``, Safe RLHF's PTX set) is read as Safe RLHF's Alpaca reader reads it:
    the prompt is the instruction, followed by a space and the input when the input is not empty,
    and the response is the output. See :func:`load_records` for the arguments.
    """
    dataset, label = open_source(source, split=split, revision=revision, name=name, cache_dir=cache_dir)
    if field_map is None and _is_alpaca(dataset.column_names):
        dataset = _alpaca_as_sft(dataset)
    return _validated(SFTExample, dataset, label, field_map, strict)


_ALPACA_COLUMNS = ("instruction", "input", "output")


def _is_alpaca(column_names: Sequence[str]) -> bool:
    present = set(column_names)
    return present.issuperset(_ALPACA_COLUMNS) and not present & {"prompt", "response"}


def _alpaca_as_sft(dataset: datasets.Dataset) -> datasets.Dataset:
    """Alpaca's rows as ``prompt``/``response`` columns (safe_rlhf/datasets/raw/alpaca.py). A
    non-string instruction or output is left as it is for validation to name."""
    table = dataset.select_columns(list(_ALPACA_COLUMNS)).with_format(None)
    prompts = [
        " ".join((instruction, extra)) if isinstance(instruction, str) and isinstance(extra, str) and extra
        else instruction
        for instruction, extra in zip(table["instruction"], table["input"], strict=True)
    ]
    return datasets.Dataset.from_dict({"prompt": prompts, "response": list(table["output"])})


def load_prompt_dataset(
    source: SourceLike,
    split: str = "train",
    revision: str | None = None,
    field_map: Mapping[str, str] | None = None,
    strict: bool = True,
    *,
    name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    deduplicate: bool = False,
) -> PromptDataset:
    """Load prompts for rollouts and evaluation.

    Any source with a prompt column serves, preference and SFT sets included (only the prompt
    is read). Preference sets repeat prompts; ``deduplicate=True`` keeps the first occurrence and
    counts the rest in the report. See :func:`load_records` for the other arguments.
    """
    return load_records(
        PromptRecord,
        source,
        split,
        revision,
        field_map,
        strict,
        name=name,
        cache_dir=cache_dir,
        deduplicate=deduplicate,
    )
