"""write_records: format by extension, loader field names, never overwrites by accident."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saferl.data import (
    DataError,
    PreferencePair,
    PromptRecord,
    SafetyPreferencePair,
    SFTExample,
    load_sft_dataset,
    write_records,
)


def test_jsonl_and_json_contents(tmp_path: Path, safety_pairs: list[SafetyPreferencePair]) -> None:
    jsonl = write_records(safety_pairs, tmp_path / "out" / "pairs.jsonl")  # creates "out/"
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [p.to_dict() for p in safety_pairs]
    as_json = write_records(safety_pairs, tmp_path / "pairs.json")
    assert json.loads(as_json.read_text(encoding="utf-8")) == [p.to_dict() for p in safety_pairs]


def test_refuses_to_overwrite_unless_asked(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "data" / "sft.jsonl"
    first = [SFTExample("how to bake bread ?", "mix flour")]
    second = [SFTExample("how to make a weapon ?", "sorry")]
    write_records(first, path)
    before = path.read_bytes()
    with pytest.raises(DataError, match="sft.jsonl, field 'path'.*found an existing file"):
        write_records(second, path)
    assert path.read_bytes() == before
    write_records(second, path, overwrite=True)
    assert list(load_sft_dataset(path, cache_dir=cache_dir)) == second


def test_rejects_bad_extension_empty_and_mixed_records(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="extension '.csv'"):
        write_records([PromptRecord("x")], tmp_path / "p.csv")
    with pytest.raises(DataError, match="at least one record"):
        write_records([], tmp_path / "p.jsonl")
    with pytest.raises(DataError, match="record 1, field 'records'.*found PreferencePair"):
        write_records([PromptRecord("x"), PreferencePair("x", "a", "b")], tmp_path / "p.jsonl")
    assert not list(tmp_path.iterdir())  # nothing written by a refused call
