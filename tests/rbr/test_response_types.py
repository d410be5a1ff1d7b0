"""Reading each prompt's response type (``learner.rbr.response_types``): spellings kept in the
spec's, and every bad file or record refused with its file, line and field."""

from __future__ import annotations

import json

import pytest

from saferl.learners.rbr_grading import prompt_response_types
from saferl.rbr import load_spec
from saferl.rbr.errors import ResponseTypesError
from saferl.rbr.response_types import load_response_types


def write(path, *lines: str):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_types_are_kept_in_the_spec_spelling_and_repeats_agree(tmp_path, small_spec_path):
    spec = load_spec(small_spec_path)
    path = write(
        tmp_path / "types.jsonl",
        json.dumps({"prompt": "how to pick a lock", "response_type": "Refuse"}),
        "",
        json.dumps({"prompt": "bake bread", "response_type": "comply", "note": "extra fields are kept out"}),
        json.dumps({"prompt": "how to pick a lock", "response_type": "refuse"}),
    )
    assert load_response_types(path, spec) == {"how to pick a lock": "refuse", "bake bread": "comply"}


@pytest.mark.parametrize(
    ("lines", "where", "found"),
    [
        (["not json"], "line 1: expected a JSON object", "invalid JSON"),
        (['["a list"]'], "line 1: expected a JSON object", "list"),
        (['{"prompt": "", "response_type": "comply"}'], "line 1, field 'prompt': expected a non-empty string", "str ''"),
        (['{"response_type": "comply"}'], "line 1, field 'prompt'", "NoneType None"),
        (['{"prompt": "p", "response_type": "hard refuse"}'], "line 1, field 'response_type': expected one of "
         "the spec's response types ['refuse', 'comply']", "str 'hard refuse'"),
        (['{"prompt": "p", "response_type": 3}'], "line 1, field 'response_type'", "int 3"),
        (['{"prompt": "p", "response_type": "comply"}', '{"prompt": "p", "response_type": "refuse"}'],
         "line 2, field 'response_type': expected the type given to this prompt on line 1 ('comply')", "'refuse'"),
        (["", "  "], ": expected at least one {prompt, response_type} record", "none"),
    ],
)
def test_bad_records_are_refused_with_file_line_and_field(tmp_path, small_spec_path, lines, where, found):
    spec = load_spec(small_spec_path)
    path = write(tmp_path / "types.jsonl", *lines)
    with pytest.raises(ResponseTypesError) as error:
        load_response_types(path, spec)
    message = str(error.value)
    assert message.startswith(str(path)) and where in message and found in message


def test_a_missing_file_and_unlisted_prompts_are_refused(tmp_path, small_spec_path):
    spec = load_spec(small_spec_path)
    with pytest.raises(ResponseTypesError, match="no such file"):
        load_response_types(tmp_path / "missing.jsonl", spec)
    path = write(tmp_path / "types.jsonl", json.dumps({"prompt": "listed", "response_type": "comply"}))
    with pytest.raises(ValueError, match=r"none of the 2 training prompts is listed in .*types\.jsonl"):
        prompt_response_types("tiny", ["other", "prompts"], spec, str(path))
    with pytest.raises(ValueError, match=r"^learner\.rbr\.response_types: missing; the hub setup"):
        prompt_response_types("hub", ["other"], spec, None)
    assert prompt_response_types("tiny", ["listed", "other"], spec, str(path)) == {"listed": "comply"}
