"""load_spec on small hand-written specs: a valid one is read and classes as written; each kind of
mistake raises a SpecError naming the file, the key, what was expected and what was found."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from saferl.rbr import LinearRBR, SpecError, load_spec


def write(tmp_path: Path, document, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False)
    )
    return path


def test_a_valid_hand_written_spec_is_read_and_classes_as_written(small_spec_path):
    spec = load_spec(small_spec_path)
    assert spec.class_order == ("good", "meh", "bad")
    assert spec.response_types == ("refuse", "comply")
    assert spec.proposition_names == ("polite", "harmful")
    cases = {
        ("refuse", True, False): "good",
        ("refuse", False, False): "meh",
        ("refuse", True, True): "bad",
        ("comply", True, False): "good",
        ("comply", False, False): "meh",
        ("comply", False, True): "bad",
    }
    for (response_type, polite, harmful), expected in cases.items():
        got = spec.completion_class(response_type, {"polite": polite, "harmful": harmful})
        assert got == expected, (response_type, polite, harmful)
    assert spec.grader_prompt("polite", "ok {response}") == (
        "Q: Is it polite? {not a placeholder}\nA: ok {response}"
    )


def test_a_spec_whose_classes_leave_a_gap_says_so_when_classing(tmp_path, small_spec_document):
    document = small_spec_document
    document["completion_classes"]["meh"]["refuse"] = {"polite": True}
    spec = load_spec(write(tmp_path, document))
    with pytest.raises(ValueError, match="no completion class of 'refuse'.*do not cover"):
        spec.completion_class("refuse", {"polite": False, "harmful": False})


def _del(path: tuple[str, ...]):
    def change(document):
        for key in path[:-1]:
            document = document[key]
        del document[path[-1]]

    return change


def _set(path: tuple[str, ...], value):
    def change(document):
        for key in path[:-1]:
            document = document[key]
        document[path[-1]] = value

    return change


CASES = [
    # (change, key named, fragments of the message)
    (_del(("simple_propositions",)), "simple_propositions", ["the key is missing"]),
    (_set(("prompt_templates",), "x"), "prompt_templates", ["only the keys", "an unknown key"]),
    (
        _set(("prompt_template",), "Q: {question}"),
        "prompt_template",
        ["{question} and {response}", "str 'Q: {question}'"],
    ),
    (
        _set(("completion_class_order",), ["good", "meh", "good"]),
        "completion_class_order",
        ["distinct", "repeated names: good"],
    ),
    (
        _set(
            ("completion_classes", "great"),
            {"refuse": {"polite": True}, "comply": {"polite": True}},
        ),
        "completion_classes.great",
        ["named in completion_class_order", "not in the order"],
    ),
    (_del(("completion_classes", "meh")), "completion_classes.meh", ["the class is missing"]),
    (
        _del(("completion_classes", "meh", "comply")),
        "completion_classes.meh.comply",
        ["every response type", "missing from this class"],
    ),
    (
        _set(("completion_classes", "bad", "Hard Refuse"), {"harmful": True}),
        "completion_classes.bad.Hard Refuse",
        ["lower case with underscores", "'Hard Refuse'"],
    ),
    (
        _set(("completion_classes", "good", "comply", "helpful"), True),
        "completion_classes.good.comply.helpful",
        ["simple or derived proposition", "unknown proposition 'helpful'"],
    ),
    (
        _set(("completion_classes", "good", "comply", "polite"), 1),
        "completion_classes.good.comply.polite",
        ["true or false", "int 1"],
    ),
    (
        _set(("completion_classes", "bad", "refuse"), {}),
        "completion_classes.bad.refuse",
        ["non-empty mapping", "an empty mapping"],
    ),
    (
        _set(("derived_propositions", "polite"), {"harmful": False}),
        "derived_propositions.polite",
        ["not also a simple proposition", "a simple proposition's name"],
    ),
    (
        _set(("derived_propositions", "loop_a"), {"loop_b": True}),
        None,  # checked below: the cycle's first member
        ["do not depend on themselves", "loop_a → loop_b → loop_a"],
    ),
    (
        _set(("simple_propositions", "polite"), {"question": "Is it polite?"}),
        "simple_propositions.polite.question",
        ["only the key 'prompt'", "an unknown key"],
    ),
    (
        _set(("simple_propositions", "polite"), {"prompt": "  "}),
        "simple_propositions.polite.prompt",
        ["non-empty string", "str '  '"],
    ),
    (
        _set(("simple_propositions",), {}),
        "simple_propositions",
        ["non-empty mapping", "an empty mapping"],
    ),
    (
        _set(("completion_classes",), ["good"]),
        "completion_classes",
        ["a mapping class", "list ['good']"],
    ),
]


@pytest.mark.parametrize(("change", "key", "fragments"), CASES)
def test_each_mistake_names_the_file_the_key_and_what_was_found(
    tmp_path, small_spec_document, change, key, fragments
):
    document = small_spec_document
    change(document)
    if key is None:  # the cycle case needs its other half
        document["derived_propositions"]["loop_b"] = {"loop_a": True}
        key = "derived_propositions.loop_a"
    path = write(tmp_path, document)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    error = caught.value
    assert error.path == str(path)
    assert error.key == key
    message = str(error)
    assert message.startswith(f"{path}, key '{key}': expected ")
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_a_missing_file_an_invalid_yaml_and_a_non_mapping(tmp_path):
    with pytest.raises(SpecError, match="no such file") as caught:
        load_spec(tmp_path / "absent.yaml")
    assert caught.value.key is None and str(tmp_path / "absent.yaml") in str(caught.value)
    bad = write(tmp_path, "prompt_template: 'x\ncompletion_class_order: [a, b\n", "bad.yaml")
    with pytest.raises(
        SpecError, match=r"bad.yaml: expected valid YAML, found a syntax error at line \d+"
    ):
        load_spec(bad)
    listed = write(tmp_path, "- a\n- b\n", "list.yaml")
    with pytest.raises(SpecError, match="expected a mapping with the keys prompt_template"):
        load_spec(listed)


def test_spec_errors_survive_pickling(tmp_path):
    error = SpecError("spec.yaml", "a.b", "true or false", "int 1")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.key, str(copy)) == ("spec.yaml", "a.b", str(error))


def test_linear_rbr_weights_round_trip_through_json_and_are_checked_on_load(
    tmp_path, small_spec_path
):
    spec = load_spec(small_spec_path)
    weights = {
        "refuse": torch.tensor([0.5, -1.0, 2.0, 0.0, -3.0], dtype=torch.float64),
        "comply": torch.tensor([1.0, 0.25, 1.5, -0.5, 0.0], dtype=torch.float64),
    }
    rbr = LinearRBR.from_spec(spec, weights)
    assert rbr.weight_names()["refuse"] == {
        "polite": 0.5,
        "harmful": -1.0,
        "class/good": 2.0,
        "class/meh": 0.0,
        "class/bad": -3.0,
    }
    path = tmp_path / "weights.json"
    rbr.save(path)
    loaded = LinearRBR.load(path, spec)
    for key in ("refuse", "comply"):
        assert torch.equal(loaded.weights[key], weights[key])
    document = json.loads(path.read_text())
    document["comply"] = dict(reversed(document["comply"].items()))
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="response type 'comply': expected the features"):
        LinearRBR.load(path, spec)
    path.write_text(json.dumps({"refuse": document["refuse"]}))
    with pytest.raises(
        ValueError, match=r"expected weights for the response types \['comply', 'refuse'\]"
    ):
        LinearRBR.load(path, spec)
