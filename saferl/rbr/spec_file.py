"""Reading an RBR spec from the release's ``proposition_prompts.yaml`` format, with clear errors.

The format (the public release of Mu et al. 2024, ``config/proposition_prompts.yaml``)::

    prompt_template: "... {question} ... {response} ..."
    completion_class_order: [ideal, minimum_acceptable_style, ...]   # best first
    completion_classes:
      ideal:                                 # one entry per class of the order
        hard_refuse: {correct_refusal: true} # per response type: required truth values
        comply: {meta_commentary: false, ...}
      ...
    derived_propositions:
      acceptable_refusal: {apology: true, disallowed_content: false, ...}
    simple_propositions:
      apology: {prompt: "Does the assistant's last response include ...?"}

Every class must give requirements for every response type; requirements name simple or derived
propositions with ``true``/``false``; derived propositions may name each other but not in a cycle.
A violation raises :class:`~saferl.rbr.errors.SpecError` naming the file, the dotted key, what was
expected and what was found.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from saferl.rbr.errors import SpecError, describe_value
from saferl.rbr.spec import RBRSpec, Requirements, response_type_key

__all__ = ["load_spec", "spec_from_mapping"]

TOP_LEVEL_KEYS = (
    "prompt_template",
    "completion_class_order",
    "completion_classes",
    "derived_propositions",
    "simple_propositions",
)
PLACEHOLDERS = ("{question}", "{response}")


def load_spec(path: str | Path) -> RBRSpec:
    """Read and validate a spec in the release's ``proposition_prompts.yaml`` format.

    Raises:
        SpecError: a missing or unreadable file, invalid YAML, or content that does not follow
            the format (the message names the key).
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "no such file"
        raise SpecError(source, None, "an RBR spec YAML file (proposition_prompts.yaml)", found)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise SpecError(source, None, "UTF-8 text", f"undecodable bytes ({error.reason})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError(source, None, "valid YAML", f"a syntax error{where}: {problem}") from None
    return spec_from_mapping(document, source=source)


def spec_from_mapping(document: Any, source: str = "<spec>") -> RBRSpec:
    """Validate an already-parsed spec document (what :func:`load_spec` does after reading)."""
    reader = _Reader(source)
    top = reader.mapping(document, None, "a mapping with the keys " + ", ".join(TOP_LEVEL_KEYS))
    for key in top:
        if key not in TOP_LEVEL_KEYS:
            reader.fail(key, "only the keys " + ", ".join(TOP_LEVEL_KEYS), "an unknown key")
    for key in TOP_LEVEL_KEYS:
        if key not in top:
            reader.fail(key, _EXPECTED[key], "nothing (the key is missing)")

    template = top["prompt_template"]
    if not isinstance(template, str) or not all(mark in template for mark in PLACEHOLDERS):
        reader.fail("prompt_template", _EXPECTED["prompt_template"], describe_value(template))

    simple = _simple_propositions(reader, top["simple_propositions"])
    derived = _derived_propositions(reader, top["derived_propositions"], simple)
    order = _class_order(reader, top["completion_class_order"])
    classes = _completion_classes(reader, top["completion_classes"], order, simple, derived)
    return RBRSpec(
        prompt_template=template,
        class_order=order,
        classes=classes,
        derived_propositions=derived,
        simple_propositions=simple,
        source=source,
    )


_EXPECTED = {
    "prompt_template": "a string with the placeholders {question} and {response}",
    "completion_class_order": "a list of two or more distinct class names, best first",
    "completion_classes": "a mapping class → response type → required proposition values",
    "derived_propositions": "a mapping name → required proposition values (may be empty: {})",
    "simple_propositions": "a non-empty mapping name → {prompt: <the grader's question>}",
}


class _Reader:
    """Raises :class:`SpecError` for one source; small checks shared by the sections."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str | None, expected: str, found: str):
        raise SpecError(self.source, key, expected, found)

    def mapping(self, value: Any, key: str | None, expected: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(key, expected, describe_value(value))
        for name in value:
            if not isinstance(name, str) or not name.strip():
                where = name if key is None else f"{key}.{name}"
                self.fail(str(where), "names that are non-empty strings", describe_value(name))
        return value

    def requirements(self, value: Any, key: str, known: Mapping[str, str]) -> dict[str, bool]:
        """A non-empty mapping proposition → bool, every name in ``known`` (name → its kind)."""
        expected = "a non-empty mapping proposition → true/false"
        rules = self.mapping(value, key, expected)
        if not rules:
            self.fail(key, expected, "an empty mapping")
        for name, required in rules.items():
            if name not in known:
                self.fail(
                    f"{key}.{name}",
                    "a simple or derived proposition of this spec",
                    f"an unknown proposition {name!r}",
                )
            if not isinstance(required, bool):
                self.fail(f"{key}.{name}", "true or false", describe_value(required))
        return dict(rules)


def _simple_propositions(reader: _Reader, value: Any) -> dict[str, str]:
    key = "simple_propositions"
    propositions = reader.mapping(value, key, _EXPECTED[key])
    if not propositions:
        reader.fail(key, _EXPECTED[key], "an empty mapping")
    questions = {}
    for name, entry in propositions.items():
        where = f"{key}.{name}"
        entry = reader.mapping(entry, where, "a mapping {prompt: <the grader's question>}")
        for extra in entry:
            if extra != "prompt":
                reader.fail(f"{where}.{extra}", "only the key 'prompt'", "an unknown key")
        question = entry.get("prompt")
        if not isinstance(question, str) or not question.strip():
            found = (
                "nothing (the key is missing)"
                if "prompt" not in entry
                else describe_value(question)
            )
            reader.fail(f"{where}.prompt", "the grader's question, a non-empty string", found)
        questions[name] = question
    return questions


def _derived_propositions(
    reader: _Reader, value: Any, simple: Mapping[str, str]
) -> dict[str, Requirements]:
    key = "derived_propositions"
    if value is None:  # `derived_propositions:` with nothing after it
        value = {}
    derived = reader.mapping(value, key, _EXPECTED[key])
    known = {name: "simple" for name in simple}
    for name in derived:
        if name in simple:
            reader.fail(
                f"{key}.{name}",
                "a name that is not also a simple proposition",
                "a derived proposition with a simple proposition's name",
            )
        known[name] = "derived"
    rules = {name: reader.requirements(derived[name], f"{key}.{name}", known) for name in derived}
    return {name: rules[name] for name in _inputs_first(reader, rules)}


def _inputs_first(reader: _Reader, rules: Mapping[str, Requirements]) -> list[str]:
    """The derived propositions in an order where each comes after those it names."""
    ordered: list[str] = []
    state: dict[str, str] = {}  # name → "visiting" | "done"

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name) :] + [name]
            reader.fail(
                f"derived_propositions.{name}",
                "derived propositions that do not depend on themselves",
                "the cycle " + " → ".join(cycle),
            )
        state[name] = "visiting"
        for input_name in rules[name]:
            if input_name in rules:
                visit(input_name, path + [name])
        state[name] = "done"
        ordered.append(name)

    for name in rules:
        visit(name, [])
    return ordered


def _class_order(reader: _Reader, value: Any) -> tuple[str, ...]:
    key = "completion_class_order"
    if (
        not isinstance(value, list)
        or len(value) < 2
        or not all(isinstance(name, str) and name.strip() for name in value)
    ):
        reader.fail(key, _EXPECTED[key], describe_value(value))
    repeated = sorted({name for name in value if value.count(name) > 1})
    if repeated:
        reader.fail(key, _EXPECTED[key], "repeated names: " + ", ".join(repeated))
    return tuple(value)


def _completion_classes(
    reader: _Reader,
    value: Any,
    order: tuple[str, ...],
    simple: Mapping[str, str],
    derived: Mapping[str, Requirements],
) -> dict[str, dict[str, Requirements]]:
    key = "completion_classes"
    classes = reader.mapping(value, key, _EXPECTED[key])
    for class_name in classes:
        if class_name not in order:
            reader.fail(
                f"{key}.{class_name}",
                "a class named in completion_class_order (" + ", ".join(order) + ")",
                "a class that is not in the order",
            )
    for class_name in order:
        if class_name not in classes:
            reader.fail(
                f"{key}.{class_name}",
                "requirements for every class of completion_class_order",
                "nothing (the class is missing)",
            )
    per_class = {
        class_name: reader.mapping(
            classes[class_name], f"{key}.{class_name}", "a mapping response type → requirements"
        )
        for class_name in order
    }
    response_types: list[str] = []
    for class_name in order:
        for response_type in per_class[class_name]:
            if response_type_key(response_type) != response_type:
                reader.fail(
                    f"{key}.{class_name}.{response_type}",
                    "a response type in lower case with underscores (e.g. hard_refuse)",
                    describe_value(response_type),
                )
            if response_type not in response_types:
                response_types.append(response_type)
    known = {name: "simple" for name in simple} | {name: "derived" for name in derived}
    by_type: dict[str, dict[str, Requirements]] = {}
    for response_type in response_types:
        rules = {}
        for class_name in order:
            where = f"{key}.{class_name}.{response_type}"
            if response_type not in per_class[class_name]:
                reader.fail(
                    where,
                    "requirements for every response type that another class has",
                    "nothing (the response type is missing from this class)",
                )
            rules[class_name] = reader.requirements(
                per_class[class_name][response_type], where, known
            )
        by_type[response_type] = rules
    return by_type
