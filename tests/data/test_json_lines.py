"""A malformed JSON-lines file is reported with its file, line and parse error (``datasets`` alone
says only ``DatasetGenerationError: An error occurred while generating the dataset``)."""

from __future__ import annotations

import json

import pytest

from saferl.data import DataError, load_preference_dataset
from saferl.data.json_lines import first_json_problem


def pair(index: int) -> dict:
    return {"prompt": f"how do I bake bread {index}", "response_0": "knead it", "response_1": "no",
            "better_response_id": 0, "safer_response_id": 0,
            "is_response_0_safe": True, "is_response_1_safe": True}


def write_lines(path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def test_a_malformed_line_is_named_with_its_file_line_and_problem(tmp_path):
    lines = [json.dumps(pair(i)) for i in range(8)]
    lines[4] = lines[4][:-1] + ', "note" 1}'  # line 5: a missing colon
    path = tmp_path / "pairs.jsonl"
    write_lines(path, lines)
    with pytest.raises(DataError) as caught:
        load_preference_dataset(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}, line 5: expected one JSON object per line")
    assert "invalid JSON (Expecting ':' delimiter at column" in message
    assert "DatasetGenerationError" not in message


def test_a_line_that_is_not_an_object_and_a_folder_of_files(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_lines(folder / "train.jsonl", [json.dumps(pair(i)) for i in range(3)])
    write_lines(folder / "test.jsonl", [json.dumps(pair(0)), "[1, 2]"])
    assert first_json_problem(folder / "train.jsonl") is None
    assert first_json_problem(folder / "test.jsonl") == (2, "a JSON list, not an object")
    with pytest.raises(DataError, match=r"test\.jsonl, line 2: expected one JSON object per line .*found a JSON list, not an object"):
        load_preference_dataset(str(folder), split="test")


def test_a_json_document_reports_its_own_line(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text('[\n  {"prompt": "a"},\n  {"prompt": "b",}\n]\n')
    line, what = first_json_problem(path)
    assert line == 3 and what.startswith("invalid JSON (")
    good = tmp_path / "good.json"
    good.write_text(json.dumps([pair(0), pair(1)]))
    assert first_json_problem(good) is None
