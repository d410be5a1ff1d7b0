"""Records: PKU-SafeRLHF field names, the better/worse/safer/unsafer views, conversions."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from saferl.data import (
    DataError,
    PreferencePair,
    PromptRecord,
    SafetyPreferencePair,
    SFTExample,
)

PKU_FIELDS = [
    "prompt",
    "response_0",
    "response_1",
    "better_response_id",
    "safer_response_id",
    "is_response_0_safe",
    "is_response_1_safe",
]


def _pair(better: int, safer: int, safe0: bool, safe1: bool) -> SafetyPreferencePair:
    return SafetyPreferencePair("p", "r0", "r1", better, safer, safe0, safe1)


def test_safety_pair_to_dict_uses_exact_pku_field_names() -> None:
    record = _pair(1, 0, True, False)
    assert list(record.to_dict()) == PKU_FIELDS
    assert record.to_dict() == {
        "prompt": "p",
        "response_0": "r0",
        "response_1": "r1",
        "better_response_id": 1,
        "safer_response_id": 0,
        "is_response_0_safe": True,
        "is_response_1_safe": False,
    }


@pytest.mark.parametrize(
    ("better", "safer", "safe0", "safe1", "expected"),
    [
        # better=1 -> better "r1", worse "r0"; safer=0 -> safer "r0" (safe), unsafer "r1" (unsafe)
        (1, 0, True, False, ("r1", "r0", "r0", "r1", True, False, False, True)),
        # better=0, safer=1 -> safer "r1" (unsafe), unsafer "r0" (unsafe)
        (0, 1, False, False, ("r0", "r1", "r1", "r0", False, False, False, False)),
    ],
)
def test_safety_pair_views(
    better: int, safer: int, safe0: bool, safe1: bool, expected: tuple[object, ...]
) -> None:
    record = _pair(better, safer, safe0, safe1)
    views = (
        record.better,
        record.worse,
        record.safer,
        record.unsafer,
        record.safer_is_safe,
        record.unsafer_is_safe,
        record.better_is_safe,
        record.worse_is_safe,
    )
    assert views == expected


def test_safety_pair_to_preference_pair_orders_by_choice() -> None:
    record = _pair(better=1, safer=0, safe0=True, safe1=False)
    assert record.to_preference_pair() == PreferencePair("p", "r1", "r0", 1.0)
    assert record.to_preference_pair(by="safer") == PreferencePair("p", "r0", "r1", 1.0)
    with pytest.raises(ValueError, match="'better' or 'safer'"):
        record.to_preference_pair(by="cost")  # type: ignore[arg-type]


def test_records_are_frozen_and_hashable() -> None:
    record = PromptRecord("x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.prompt = "y"  # type: ignore[misc]
    assert len({PromptRecord("x"), PromptRecord("x")}) == 1


def test_other_records_to_dict() -> None:
    assert PromptRecord("x").to_dict() == {"prompt": "x"}
    assert SFTExample("x", "y").to_dict() == {"prompt": "x", "response": "y"}
    assert PreferencePair("x", "a", "b").to_dict() == {
        "prompt": "x",
        "chosen": "a",
        "rejected": "b",
        "preference_prob": 1.0,
    }


def test_data_error_message_and_attributes_survive_pickling() -> None:
    error = DataError(
        "pairs.jsonl",
        index=3,
        field="prompt",
        column="question",
        expected="a string",
        found="int 5",
        reason="wrong_type",
    )
    text = str(error)
    assert text == (
        "pairs.jsonl, record 3, field 'prompt' (column 'question'): expected a string, found int 5"
    )
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.source, copy.index, copy.field, copy.column, copy.reason) == (
        "pairs.jsonl",
        3,
        "prompt",
        "question",
        "wrong_type",
    )
    assert str(copy) == text
