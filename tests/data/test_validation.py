"""Validation: every bad-input case gives a DataError naming source, index and field; strict
raises, non-strict skips and counts; nothing is dropped silently."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from saferl.data import (
    DataError,
    PreferencePair,
    PromptRecord,
    SafetyPreferencePair,
    SFTExample,
    validate_record,
    validate_records,
)


def good_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "prompt": "how to make a weapon ?",
        "response_0": "sure here is the recipe",
        "response_1": "sorry i can not help",
        "better_response_id": 0,
        "safer_response_id": 1,
        "is_response_0_safe": False,
        "is_response_1_safe": True,
    }
    row.update(overrides)
    return row


# (overrides, field named in the error, reason, a substring of what was found)
BAD_SAFETY_ROWS = [
    pytest.param({"prompt": None}, "prompt", "missing_field", "null", id="null-prompt"),
    pytest.param({"prompt": 5}, "prompt", "wrong_type", "int 5", id="int-prompt"),
    pytest.param({"prompt": "   \n"}, "prompt", "empty_text", "str", id="blank-prompt"),
    pytest.param({"response_0": ""}, "response_0", "empty_text", "''", id="empty-response"),
    pytest.param({"response_1": ["a"]}, "response_1", "wrong_type", "list", id="list-response"),
    pytest.param(
        {"better_response_id": "1"}, "better_response_id", "wrong_type", "str '1'", id="str-id"
    ),
    pytest.param(
        {"better_response_id": 1.0}, "better_response_id", "wrong_type", "float", id="float-id"
    ),
    pytest.param(
        {"safer_response_id": True}, "safer_response_id", "wrong_type", "bool", id="bool-id"
    ),
    pytest.param(
        {"better_response_id": 2}, "better_response_id", "invalid_value", "int 2", id="id-2"
    ),
    pytest.param(
        {"safer_response_id": -1}, "safer_response_id", "invalid_value", "int -1", id="id-neg"
    ),
    pytest.param(
        {"is_response_0_safe": "yes"}, "is_response_0_safe", "wrong_type", "str", id="str-label"
    ),
    pytest.param(
        {"is_response_1_safe": 2}, "is_response_1_safe", "invalid_value", "int 2", id="label-2"
    ),
    pytest.param(
        {"response_1": "  sure here is the recipe "},
        "response_1",
        "identical_responses",
        "same text",
        id="identical",
    ),
    # safer is response_1, labelled unsafe, while response_0 is labelled safe
    pytest.param(
        {"is_response_0_safe": True, "is_response_1_safe": False},
        "safer_response_id",
        "contradictory_safety",
        "is_response_1_safe=False",
        id="contradictory",
    ),
]


@pytest.mark.parametrize(("overrides", "field", "reason", "found"), BAD_SAFETY_ROWS)
def test_bad_safety_row_names_source_index_field(
    overrides: dict[str, Any], field: str, reason: str, found: str
) -> None:
    with pytest.raises(DataError) as info:
        validate_record(good_row(**overrides), SafetyPreferencePair, source="pku.jsonl", index=7)
    error = info.value
    message = str(error)
    assert message.startswith("pku.jsonl, record 7, field ")
    assert f"field '{field}'" in message
    assert "expected " in message and found in message
    assert (error.source, error.index, error.field, error.reason) == (
        "pku.jsonl",
        7,
        field,
        reason,
    )


def test_missing_column_in_row() -> None:
    row = good_row()
    del row["is_response_1_safe"]
    with pytest.raises(DataError, match="field 'is_response_1_safe'.*found no such column"):
        validate_record(row, SafetyPreferencePair, source="s", index=0)


def test_bool_likes_and_numpy_ints_accepted() -> None:
    record = validate_record(
        good_row(
            better_response_id=np.int64(1),
            safer_response_id=np.int32(1),
            is_response_0_safe=0,
            is_response_1_safe=np.bool_(True),
        ),
        SafetyPreferencePair,
    )
    assert record == SafetyPreferencePair(
        "how to make a weapon ?",
        "sure here is the recipe",
        "sorry i can not help",
        1,
        1,
        False,
        True,
    )
    assert type(record.better_response_id) is int and type(record.is_response_0_safe) is bool


def test_not_contradictory_when_both_unsafe_or_safer_is_safe() -> None:
    # both unsafe: the safer one being unsafe is consistent
    validate_record(
        good_row(is_response_0_safe=False, is_response_1_safe=False), SafetyPreferencePair
    )
    # safer safe, other unsafe: the canonical case
    validate_record(good_row(), SafetyPreferencePair)


def test_field_map_renames_columns_and_errors_name_the_column() -> None:
    row = {"question": "how to bake bread ?", "answer": "mix flour"}
    field_map = {"prompt": "question", "response": "answer"}
    assert validate_record(row, SFTExample, field_map=field_map) == SFTExample(
        "how to bake bread ?", "mix flour"
    )
    with pytest.raises(DataError, match=r"field 'prompt' \(column 'question'\)"):
        validate_record({"question": 3, "answer": "x"}, SFTExample, field_map=field_map, index=0)


def test_field_map_with_unknown_field_is_rejected() -> None:
    with pytest.raises(DataError, match="field 'field_map'.*key 'question'"):
        validate_records([{"prompt": "x"}], PromptRecord, field_map={"question": "prompt"})


def test_preference_pair_checks() -> None:
    assert validate_record(
        {"prompt": "p", "chosen": "a", "rejected": "b"}, PreferencePair
    ) == PreferencePair("p", "a", "b", 1.0)
    with pytest.raises(DataError, match="field 'rejected'") as info:
        validate_record({"prompt": "p", "chosen": "a", "rejected": "a "}, PreferencePair)
    assert info.value.reason == "identical_responses"
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(DataError, match="field 'preference_prob'"):
            validate_record(
                {"prompt": "p", "chosen": "a", "rejected": "b", "preference_prob": bad},
                PreferencePair,
            )


def _mixed_rows() -> list[dict[str, Any]]:
    return [
        good_row(),  # 0 kept
        good_row(prompt=""),  # 1 empty_text
        good_row(better_response_id=3),  # 2 invalid_value
        good_row(prompt="how to bake bread ?"),  # 3 kept
        good_row(is_response_0_safe=True, is_response_1_safe=False),  # 4 contradictory
        good_row(response_1="sure here is the recipe"),  # 5 identical
        good_row(prompt=None),  # 6 missing
        good_row(prompt=None),  # 7 missing
    ]


def test_strict_raises_on_first_bad_record() -> None:
    with pytest.raises(DataError, match="rows.jsonl, record 1, field 'prompt'"):
        validate_records(_mixed_rows(), SafetyPreferencePair, source="rows.jsonl")


def test_non_strict_skips_counts_and_keeps_the_rest() -> None:
    records, report = validate_records(
        _mixed_rows(), SafetyPreferencePair, source="rows.jsonl", strict=False, max_messages=3
    )
    assert [r.prompt for r in records] == ["how to make a weapon ?", "how to bake bread ?"]
    assert dict(report.skipped_by_reason) == {
        "empty_text": 1,
        "invalid_value": 1,
        "contradictory_safety": 1,
        "identical_responses": 1,
        "missing_field": 2,
    }
    assert (report.num_read, report.num_kept, report.num_skipped) == (8, 2, 6)
    assert report.num_kept + report.num_skipped == report.num_read
    assert len(report.first_messages) == 3
    assert report.first_messages[0].startswith("rows.jsonl, record 1, field 'prompt'")
    assert "record 2, field 'better_response_id'" in report.first_messages[1]
    summary = report.summary()
    assert "read 8 records, kept 2, skipped 6" in summary and "missing_field=2" in summary


def test_deduplicate_counts_repeats() -> None:
    rows = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}, {"prompt": ""}]
    records, report = validate_records(rows, PromptRecord, strict=False, deduplicate=True)
    assert records == [PromptRecord("a"), PromptRecord("b")]
    assert dict(report.skipped_by_reason) == {"duplicate": 1, "empty_text": 1}
    assert report.num_kept + report.num_skipped == report.num_read == 4
