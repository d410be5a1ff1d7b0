"""The RBR spec: propositions, derived propositions and the ordered completion classes per response
type (Mu et al. 2024; docs/algorithms.md §6), and the exact class of a labelled completion.

An :class:`RBRSpec` is read from a file by :func:`saferl.rbr.load_spec`; this module holds what it
means. Truth values are booleans here; probabilities go through :mod:`saferl.rbr.features`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["RBRSpec", "Requirements", "response_type_key"]

Requirements = Mapping[str, bool]
"""A conjunction: proposition name → the truth value it must have."""


def response_type_key(name: str) -> str:
    """The spec's spelling of a response type: ``"Hard Refuse"`` → ``"hard_refuse"``.

    The release's gold data writes ``"Hard Refuse"``, ``"Safe Refuse 2"``, ``"Comply"``; its spec
    writes ``hard_refuse``, ``safe_refuse_2``, ``comply``.
    """
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


@dataclass(frozen=True)
class RBRSpec:
    """A rule-based-reward spec, validated (see :func:`saferl.rbr.load_spec`).

    Attributes:
        prompt_template: the grader prompt, with ``{question}`` and ``{response}`` placeholders.
        class_order: the completion classes, best first (e.g. ``ideal``, ...,
            ``disallowed_completion``).
        classes: response type → class → the requirements of that class, the classes in
            ``class_order``.
        derived_propositions: name → requirements over simple and other derived propositions,
            in an order where each names only simple and earlier derived ones.
        simple_propositions: name → the grader's question for it, in the file's order (the
            column order of proposition tensors).
        source: where the spec was read from, for messages.
    """

    prompt_template: str
    class_order: tuple[str, ...]
    classes: Mapping[str, Mapping[str, Requirements]]
    derived_propositions: Mapping[str, Requirements]
    simple_propositions: Mapping[str, str]
    source: str = "<spec>"

    @property
    def response_types(self) -> tuple[str, ...]:
        """The response types, in the spec's spelling (e.g. ``hard_refuse``)."""
        return tuple(self.classes)

    @property
    def proposition_names(self) -> tuple[str, ...]:
        """The simple propositions, in the file's order."""
        return tuple(self.simple_propositions)

    def response_type(self, name: str) -> str:
        """``name`` in the spec's spelling (``"Hard Refuse"`` → ``"hard_refuse"``), checked."""
        key = response_type_key(name)
        if key not in self.classes:
            raise ValueError(
                f"unknown response type {name!r} for the RBR spec {self.source}: expected one of "
                f"{', '.join(self.response_types)} (case, spaces and hyphens aside)."
            )
        return key

    def relevant_propositions(self, response_type: str) -> tuple[str, ...]:
        """The simple propositions that a response type's classes depend on, directly or through
        derived propositions, in the file's order: the propositions of its linear RBR."""
        key = self.response_type(response_type)
        needed: set[str] = set()
        pending = [name for rules in self.classes[key].values() for name in rules]
        while pending:
            name = pending.pop()
            if name in needed:
                continue
            needed.add(name)
            pending.extend(self.derived_propositions.get(name, {}))
        return tuple(name for name in self.simple_propositions if name in needed)

    def truth_values(self, propositions: Mapping[str, bool]) -> dict[str, bool]:
        """The simple propositions given, plus every derived proposition whose inputs are given.

        Raises:
            ValueError: a name that is not a simple proposition of the spec, or a value that is
                not a bool.
        """
        for name, value in propositions.items():
            if name not in self.simple_propositions:
                hint = (
                    " (a derived proposition: give its inputs)"
                    if name in self.derived_propositions
                    else ""
                )
                raise ValueError(
                    f"{name!r} is not a simple proposition of the RBR spec {self.source}{hint}: "
                    f"expected names among {', '.join(self.simple_propositions)}."
                )
            if not isinstance(value, bool):
                raise ValueError(
                    f"proposition {name!r}: expected a bool, found {type(value).__name__} {value!r}."
                )
        values = dict(propositions)
        for name, rules in self.derived_propositions.items():  # inputs come first (topological)
            if all(input_name in values for input_name in rules):
                values[name] = _holds(rules, values)
        return values

    def completion_class(self, response_type: str, propositions: Mapping[str, bool]) -> str:
        """The completion class of a completion with these truth values, for this response type.

        Derived propositions are evaluated from the simple ones. The classes are tried in
        ``class_order``; the first whose requirements all hold is returned (the release's classes
        partition the assignments, so exactly one holds).

        Args:
            response_type: e.g. ``"hard_refuse"`` or ``"Hard Refuse"``.
            propositions: simple proposition → truth value; at least
                :meth:`relevant_propositions` of the response type.

        Raises:
            ValueError: an unknown response type or proposition, a missing relevant proposition,
                a non-bool value, or an assignment that no class accepts.
        """
        key = self.response_type(response_type)
        values = self.truth_values(propositions)
        missing = [name for name in self.relevant_propositions(key) if name not in values]
        if missing:
            raise ValueError(
                f"the class of a {key!r} completion depends on propositions that were not given: "
                f"{', '.join(missing)}."
            )
        for class_name, rules in self.classes[key].items():
            if _holds(rules, values):
                return class_name
        raise ValueError(
            f"no completion class of {key!r} in the RBR spec {self.source} accepts these "
            f"propositions ({_describe_true(propositions)}): its classes do not cover every case."
        )

    def class_rank(self, class_name: str) -> int:
        """The position of a class in ``class_order`` (0 = the best)."""
        if class_name not in self.class_order:
            raise ValueError(
                f"unknown completion class {class_name!r}: expected one of "
                f"{', '.join(self.class_order)}."
            )
        return self.class_order.index(class_name)

    def grader_prompt(self, proposition: str, response: str) -> str:
        """The grader's prompt for one simple proposition about one response: the template with
        the proposition's question and the response filled in (braces in either are kept)."""
        if proposition not in self.simple_propositions:
            raise ValueError(
                f"{proposition!r} is not a simple proposition of the RBR spec {self.source}."
            )
        question = self.simple_propositions[proposition]
        # One pass over the placeholders, so a "{response}" inside the question stays as it is.
        return re.sub(
            r"\{(question|response)\}",
            lambda match: question if match.group(1) == "question" else response,
            self.prompt_template,
        )


def _holds(rules: Requirements, values: Mapping[str, bool]) -> bool:
    return all(values[name] == required for name, required in rules.items())


def _describe_true(propositions: Mapping[str, bool]) -> str:
    true = [name for name, value in propositions.items() if value]
    return "true: " + ", ".join(true) if true else "all false"
