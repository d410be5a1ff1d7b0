"""load_gold on the release's gold data and on small hand-written files with mistakes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from saferl.rbr import GoldDataError, load_gold, load_spec


def test_the_release_gold_data_reads_with_its_published_counts(gold_train, gold_test):
    # docs: 351 / 167 completions; Comply 196/72, Hard Refuse 88/44, Safe Refuse 2 58/44,
    # Safe Refuse 1 9/7 (ALGORITHMS.md §6).
    assert len(gold_train) == 351 and len(gold_test) == 167
    assert Counter(r.response_type for r in gold_train) == {
        "Comply": 196,
        "Hard Refuse": 88,
        "Safe Refuse 2": 58,
        "Safe Refuse 1": 9,
    }
    assert Counter(r.response_type for r in gold_test) == {
        "Comply": 72,
        "Hard Refuse": 44,
        "Safe Refuse 2": 44,
        "Safe Refuse 1": 7,
    }
    record = gold_train[0]
    assert len(record.propositions) == 23
    assert all(isinstance(value, bool) for value in record.propositions.values())
    assert record.completion[-1].role == "assistant"
    assert record.line == 1 and gold_train[-1].line == 351


def test_gold_records_are_the_files_lines(release, gold_test):
    lines = (release / "data" / "rbr_gold_data" / "test.jsonl").read_text().splitlines()
    raw = json.loads(lines[41])
    record = gold_test[41]
    assert record.line == 42
    assert record.category == raw["category"]
    assert dict(record.propositions) == raw["propositions"]
    assert [m.content for m in record.prompt] == [m["content"] for m in raw["prompt"]]
    assert record.response_type_key == raw["response_type"].lower().replace(" ", "_")


# --------------------------------------------------------------------------------------------
# Hand-written files


def good_record(**changes) -> dict:
    record = {
        "category": "K-R",
        "response_type": "Refuse",
        "prompt": [{"role": "user", "content": "hello"}],
        "completion": [{"role": "assistant", "content": "sorry"}],
        "propositions": {"polite": True, "harmful": False},
    }
    record.update(changes)
    return record


def write_lines(tmp_path: Path, lines: list) -> Path:
    path = tmp_path / "gold.jsonl"
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    )
    return path


def test_a_valid_hand_written_file_reads_with_and_without_a_spec(tmp_path, small_spec_path):
    spec = load_spec(small_spec_path)
    path = write_lines(tmp_path, [good_record(), "", good_record(response_type="Comply")])
    for records in (load_gold(path), load_gold(path, spec)):
        assert [r.line for r in records] == [1, 3]  # the blank line is skipped, lines still count
        assert records[0].response_type_key == "refuse"
        assert spec.completion_class(records[0].response_type, records[0].propositions) == "good"


@pytest.mark.parametrize(
    ("lines", "line", "field", "fragments"),
    [
        ([good_record(), "{not json"], 2, None, ["one JSON object per line", "invalid JSON"]),
        ([good_record(), "[1, 2]"], 2, None, ["a JSON list"]),
        ([{k: v for k, v in good_record().items() if k != "prompt"}], 1, "prompt", ["missing"]),
        ([good_record(score=1.0)], 1, "score", ["only the fields", "an unknown field"]),
        ([good_record(category="")], 1, "category", ["non-empty string", "str ''"]),
        ([good_record(prompt="hello")], 1, "prompt", ["list of messages", "str 'hello'"]),
        ([good_record(completion=[])], 1, "completion", ["non-empty list", "list []"]),
        (
            [good_record(completion=[{"role": "assistant"}])],
            1,
            "completion[0]",
            ['{"role": ..., "content": ...}'],
        ),
        (
            [good_record(prompt=[{"role": "user", "content": 3}])],
            1,
            "prompt[0].content",
            ["a string", "int 3"],
        ),
        (
            [good_record(), good_record(propositions={"polite": "yes", "harmful": False})],
            2,
            "propositions.polite",
            ["true or false", "str 'yes'"],
        ),
        (
            [good_record(), good_record(propositions={"polite": True, "rude": False})],
            2,
            "propositions",
            ["exactly the first record's 2 simple propositions", "missing harmful; unknown rude"],
        ),
    ],
)
def test_each_mistake_names_the_file_the_line_and_the_field(
    tmp_path, lines, line, field, fragments
):
    path = write_lines(tmp_path, lines)
    with pytest.raises(GoldDataError) as caught:
        load_gold(path)
    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), line, field)
    message = str(error)
    where = f"{path}, line {line}" + (f", field '{field}'" if field else "")
    assert message.startswith(where + ": expected "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_with_a_spec_the_names_and_the_response_type_must_be_the_specs(tmp_path, small_spec_path):
    spec = load_spec(small_spec_path)
    path = write_lines(tmp_path, [good_record(propositions={"polite": True})])
    with pytest.raises(
        GoldDataError, match="line 1, field 'propositions'.*the spec's 2.*missing harmful"
    ):
        load_gold(path, spec)
    path = write_lines(tmp_path, [good_record(response_type="Hard Refuse")])
    with pytest.raises(GoldDataError, match="field 'response_type'.*refuse, comply.*'Hard Refuse'"):
        load_gold(path, spec)


def test_a_missing_or_empty_file(tmp_path):
    with pytest.raises(GoldDataError, match="no such file"):
        load_gold(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(GoldDataError, match="at least one record, found an empty file"):
        load_gold(tmp_path / "empty.jsonl")
