"""Loaders: round trips through .json, .jsonl, .parquet and folders; field maps; error cases;
the input files are never written; hub names go to datasets.load_dataset with the revision."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest

from saferl.data import (
    DataError,
    LoadedDataset,
    PreferencePair,
    PromptRecord,
    SafetyPreferencePair,
    SFTExample,
    load_pairwise_dataset,
    load_preference_dataset,
    load_prompt_dataset,
    load_sft_dataset,
    write_records,
)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_round_trip_through_write_records(
    tmp_path: Path, cache_dir: Path, safety_pairs: list[SafetyPreferencePair], suffix: str
) -> None:
    path = write_records(safety_pairs, tmp_path / "data" / f"pairs{suffix}")
    loaded = load_preference_dataset(path, cache_dir=cache_dir)
    assert isinstance(loaded, LoadedDataset)
    assert list(loaded.records) == safety_pairs
    assert loaded.source == str(path)
    assert (loaded.report.num_read, loaded.report.num_kept, loaded.report.num_skipped) == (3, 3, 0)


def test_parquet_written_by_pandas(
    tmp_path: Path, cache_dir: Path, safety_pairs: list[SafetyPreferencePair]
) -> None:
    path = tmp_path / "data" / "pairs.parquet"
    path.parent.mkdir()
    pd.DataFrame([p.to_dict() for p in safety_pairs]).to_parquet(path)
    assert list(load_preference_dataset(str(path), cache_dir=cache_dir)) == safety_pairs


def test_folder_of_jsonl_files_is_one_train_split(
    tmp_path: Path, cache_dir: Path, safety_pairs: list[SafetyPreferencePair]
) -> None:
    folder = tmp_path / "data"
    write_records(safety_pairs[:2], folder / "part-0.jsonl")
    write_records(safety_pairs[2:], folder / "part-1.jsonl")
    (folder / "README.md").write_text("# pairs\n")  # documentation is ignored
    loaded = load_preference_dataset(folder, cache_dir=cache_dir)
    assert sorted(loaded, key=lambda p: p.response_0) == sorted(
        safety_pairs, key=lambda p: p.response_0
    )


def test_folder_of_parquet_files_with_splits(
    tmp_path: Path, cache_dir: Path, safety_pairs: list[SafetyPreferencePair]
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    datasets.Dataset.from_list([p.to_dict() for p in safety_pairs[:2]]).to_parquet(
        str(folder / "train.parquet")
    )
    datasets.Dataset.from_list([p.to_dict() for p in safety_pairs[2:]]).to_parquet(
        str(folder / "test.parquet")
    )
    assert list(load_preference_dataset(folder, cache_dir=cache_dir)) == safety_pairs[:2]
    assert list(load_preference_dataset(folder, "test", cache_dir=cache_dir)) == safety_pairs[2:]
    with pytest.raises(DataError, match="field 'split'.*'validation'"):
        load_preference_dataset(folder, "validation", cache_dir=cache_dir)


@pytest.mark.parametrize(
    ("files", "found"),
    [
        (["a.jsonl", "b.parquet"], ".jsonl, .parquet"),
        (["a.jsonl", "b.csv"], ".csv, .jsonl"),
        ([], "no data files"),
    ],
)
def test_folder_with_mixed_or_no_supported_files(
    tmp_path: Path, cache_dir: Path, files: list[str], found: str
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    for name in files:
        (folder / name).write_text("{}\n")
    with pytest.raises(DataError) as info:
        load_preference_dataset(folder, cache_dir=cache_dir)
    message = str(info.value)
    assert message.startswith(str(folder)) and found in message


def test_loading_never_writes_to_the_input(
    tmp_path: Path, cache_dir: Path, safety_pairs: list[SafetyPreferencePair]
) -> None:
    folder = tmp_path / "data"
    path = write_records(safety_pairs, folder / "pairs.jsonl")
    old_time = 1_600_000_000
    os.utime(path, (old_time, old_time))
    before = path.read_bytes()
    listing = sorted(p.name for p in folder.iterdir())
    for loader in (load_preference_dataset, load_prompt_dataset):
        loader(path, cache_dir=cache_dir)
    loader(folder, cache_dir=cache_dir)
    assert path.read_bytes() == before
    assert path.stat().st_mtime == old_time
    assert sorted(p.name for p in folder.iterdir()) == listing
    with pytest.raises(DataError, match="field 'cache_dir'"):
        load_preference_dataset(path, cache_dir=folder / "cache")


@pytest.mark.parametrize("name", ["missing.jsonl", "sub/dir/missing", "./missing"])
def test_missing_local_path_is_file_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    def no_hub(*args: object, **kwargs: object) -> None:
        raise AssertionError("a local-looking path must not reach the hub")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(DataError, match="file not found") as info:
        load_preference_dataset(name)
    assert info.value.source == str(Path(name))


def test_single_file_is_the_train_split(
    tmp_path: Path, cache_dir: Path, safety_pairs: list[SafetyPreferencePair]
) -> None:
    path = write_records(safety_pairs, tmp_path / "data" / "pairs.jsonl")
    assert list(load_preference_dataset(path, "train[:2]", cache_dir=cache_dir)) == safety_pairs[:2]
    with pytest.raises(DataError, match="field 'split'"):
        load_preference_dataset(path, "test", cache_dir=cache_dir)
    with pytest.raises(DataError, match="field 'revision'"):
        load_preference_dataset(path, revision="abc123", cache_dir=cache_dir)


def test_unsupported_file_extension(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text("prompt\nx\n")
    with pytest.raises(DataError, match="extension '.csv'"):
        load_prompt_dataset(path)


def test_field_map_renamed_columns(tmp_path: Path, cache_dir: Path) -> None:
    path = _write_jsonl(
        tmp_path / "data" / "renamed.jsonl",
        [
            {
                "question": "how to make a weapon ?",
                "answer_a": "sure here is the recipe",
                "answer_b": "sorry i can not help",
                "helpful_id": 0,
                "safe_id": 1,
                "a_safe": 0,  # bool-like ints
                "b_safe": 1,
                "harm_category": "weapons",  # extra columns are ignored
            }
        ],
    )
    field_map = {
        "prompt": "question",
        "response_0": "answer_a",
        "response_1": "answer_b",
        "better_response_id": "helpful_id",
        "safer_response_id": "safe_id",
        "is_response_0_safe": "a_safe",
        "is_response_1_safe": "b_safe",
    }
    (record,) = load_preference_dataset(path, field_map=field_map, cache_dir=cache_dir)
    assert record == SafetyPreferencePair(
        "how to make a weapon ?",
        "sure here is the recipe",
        "sorry i can not help",
        0,
        1,
        False,
        True,
    )
    # without the map the missing column is named, with the columns found
    with pytest.raises(DataError, match="field 'prompt'.*columns \\['question'"):
        load_preference_dataset(path, cache_dir=cache_dir)


def test_chosen_rejected_source(
    tmp_path: Path, cache_dir: Path, pairwise_pairs: list[PreferencePair]
) -> None:
    path = write_records(pairwise_pairs, tmp_path / "data" / "pairs.jsonl")
    assert list(load_pairwise_dataset(path, cache_dir=cache_dir)) == pairwise_pairs
    # the safety loader points at the pairwise one
    with pytest.raises(DataError, match="load_pairwise_dataset"):
        load_preference_dataset(path, cache_dir=cache_dir)
    # renamed chosen/rejected columns, no preference_prob column: hard labels
    renamed = _write_jsonl(
        tmp_path / "data2" / "hh.jsonl",
        [{"instruction": "how to bake bread ?", "good": "mix flour", "bad": "sorry"}],
    )
    field_map = {"prompt": "instruction", "chosen": "good", "rejected": "bad"}
    loaded = load_pairwise_dataset(renamed, field_map=field_map, cache_dir=cache_dir)
    assert list(loaded) == [PreferencePair("how to bake bread ?", "mix flour", "sorry", 1.0)]
    # a chosen/rejected set is also an SFT set
    sft = load_sft_dataset(
        renamed, field_map={"prompt": "instruction", "response": "good"}, cache_dir=cache_dir
    )
    assert list(sft) == [SFTExample("how to bake bread ?", "mix flour")]


def test_safety_source_for_pairwise_loader_points_at_conversion(
    tmp_path: Path, cache_dir: Path, safety_pairs: list[SafetyPreferencePair]
) -> None:
    path = write_records(safety_pairs, tmp_path / "data" / "pairs.jsonl")
    with pytest.raises(DataError, match="to_preference_pair"):
        load_pairwise_dataset(path, cache_dir=cache_dir)


def test_preference_set_as_prompt_set(
    tmp_path: Path, cache_dir: Path, safety_pairs: list[SafetyPreferencePair]
) -> None:
    path = write_records(safety_pairs, tmp_path / "data" / "pairs.parquet")
    prompts = load_prompt_dataset(path, cache_dir=cache_dir)
    assert prompts.prompts == [p.prompt for p in safety_pairs]
    unique = load_prompt_dataset(path, cache_dir=cache_dir, deduplicate=True)
    assert list(unique) == [
        PromptRecord("how to bake bread ?"),
        PromptRecord("how to make a weapon ?"),
    ]
    assert dict(unique.report.skipped_by_reason) == {"duplicate": 1}


def test_bad_records_strict_and_non_strict_through_a_file(
    tmp_path: Path,
    cache_dir: Path,
    safety_pairs: list[SafetyPreferencePair],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = [p.to_dict() for p in safety_pairs]
    rows.insert(1, {**rows[0], "better_response_id": 2})  # record 1: invalid id
    rows.append({**rows[0], "prompt": " "})  # record 4: empty prompt
    rows.append({**rows[0], "is_response_1_safe": None})  # record 5: missing label
    path = _write_jsonl(tmp_path / "data" / "bad.jsonl", rows)

    with pytest.raises(DataError) as info:
        load_preference_dataset(path, cache_dir=cache_dir)
    assert str(info.value).startswith(f"{path}, record 1, field 'better_response_id'")

    with caplog.at_level(logging.INFO, logger="saferl.data"):
        loaded = load_preference_dataset(path, strict=False, cache_dir=cache_dir)
    assert list(loaded) == safety_pairs
    report = loaded.report
    assert dict(report.skipped_by_reason) == {
        "invalid_value": 1,
        "empty_text": 1,
        "missing_field": 1,
    }
    assert report.num_read == 6 and report.num_kept + report.num_skipped == report.num_read
    warnings = [
        r for r in caplog.records if r.name == "saferl.data" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1 and "skipped 3" in warnings[0].getMessage()


def test_non_string_prompt_column_through_a_file(tmp_path: Path, cache_dir: Path) -> None:
    path = _write_jsonl(tmp_path / "data" / "prompts.jsonl", [{"prompt": 1}, {"prompt": 2}])
    with pytest.raises(DataError, match="record 0, field 'prompt': expected a string, found int 1"):
        load_prompt_dataset(path, cache_dir=cache_dir)


def test_missing_column_fails_even_when_not_strict(tmp_path: Path, cache_dir: Path) -> None:
    path = _write_jsonl(tmp_path / "data" / "p.jsonl", [{"question": "x"}])
    with pytest.raises(DataError, match="field 'prompt'"):
        load_prompt_dataset(path, strict=False, cache_dir=cache_dir)


def test_loaded_dataset_is_sequence_like(safety_pairs: list[SafetyPreferencePair]) -> None:
    in_memory = datasets.Dataset.from_list([p.to_dict() for p in safety_pairs])
    loaded = load_preference_dataset(in_memory)
    assert len(loaded) == 3
    assert loaded[0] == safety_pairs[0] and loaded[-1] == safety_pairs[-1]
    assert loaded[1:] == tuple(safety_pairs[1:])
    assert list(iter(loaded)) == safety_pairs
    assert safety_pairs[1] in loaded
    dataset_dict = datasets.DatasetDict({"test": in_memory})
    assert len(load_preference_dataset(dataset_dict, split="test")) == 3


def test_hub_name_goes_to_load_dataset_with_revision(
    monkeypatch: pytest.MonkeyPatch, safety_pairs: list[SafetyPreferencePair]
) -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def fake_load_dataset(*args: Any, **kwargs: Any) -> datasets.Dataset:
        calls.append((args, kwargs))
        return datasets.Dataset.from_list([p.to_dict() for p in safety_pairs])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_preference_dataset(
        "PKU-Alignment/PKU-SafeRLHF", split="test", revision="abc123", name="default"
    )
    assert calls == [
        (
            ("PKU-Alignment/PKU-SafeRLHF",),
            {"split": "test", "revision": "abc123", "name": "default"},
        )
    ]
    assert list(loaded) == safety_pairs and loaded.source == "PKU-Alignment/PKU-SafeRLHF"


def test_hub_failure_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> datasets.Dataset:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="PKU-Alignment/PKU-SafeRLHF.*ConnectionError: no network"):
        load_preference_dataset("PKU-Alignment/PKU-SafeRLHF", revision="abc123")
