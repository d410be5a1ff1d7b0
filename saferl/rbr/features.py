"""The features of one response type's linear RBR: its propositions and its class features.

A spec's rules become the boolean matrices of :mod:`saferl.core.rbr` once per response type;
:meth:`RBRFeatures.features` then maps graded proposition probabilities to the feature vector

    [φ_k for k in the response type's relevant propositions] + [f_c for c in the class order]

where ``f_c`` are the class features (class probabilities as products of proposition
probabilities, recursing through derived propositions, normalised over the classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saferl.core.rbr import class_features, rule_probabilities, with_derived_probabilities
from saferl.rbr.spec import RBRSpec, Requirements

__all__ = ["RBRFeatures", "rbr_features", "CLASS_FEATURE_PREFIX"]

CLASS_FEATURE_PREFIX = "class/"
"""Class features are named ``class/<class name>`` among the feature names."""


@dataclass(frozen=True)
class RBRFeatures:
    """A response type's rules as tensors, and the feature map of its linear RBR.

    Attributes:
        response_type: in the spec's spelling.
        proposition_names: the input columns: every simple proposition of the spec, in order.
        relevant_propositions: the simple propositions its classes depend on (the first features).
        class_names: the class order.
        derived_mask, derived_true: ``(n_derived, n_simple + n_derived)`` bool, the derived
            propositions in dependency order (see :func:`saferl.core.rbr.with_derived_probabilities`).
        class_mask, class_true: ``(n_classes, n_simple + n_derived)`` bool, one rule per class.
    """

    response_type: str
    proposition_names: tuple[str, ...]
    relevant_propositions: tuple[str, ...]
    class_names: tuple[str, ...]
    derived_mask: torch.Tensor
    derived_true: torch.Tensor
    class_mask: torch.Tensor
    class_true: torch.Tensor

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The names of the feature columns: the relevant propositions, then ``class/<name>``."""
        return self.relevant_propositions + tuple(
            CLASS_FEATURE_PREFIX + name for name in self.class_names
        )

    def class_features(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Class features from proposition probabilities.

        Args:
            probabilities: ``(..., n_simple)``, columns in :attr:`proposition_names` order.

        Returns:
            ``(..., n_classes)``, rows summing to 1.
        """
        self._check_columns(probabilities)
        columns = with_derived_probabilities(probabilities, self.derived_mask, self.derived_true)
        return class_features(rule_probabilities(columns, self.class_mask, self.class_true))

    def features(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The linear RBR's features.

        Args:
            probabilities: ``(..., n_simple)``, columns in :attr:`proposition_names` order.

        Returns:
            ``(..., n_relevant + n_classes)``, columns in :attr:`feature_names` order.
        """
        self._check_columns(probabilities)
        relevant = [self.proposition_names.index(name) for name in self.relevant_propositions]
        return torch.cat([probabilities[..., relevant], self.class_features(probabilities)], dim=-1)

    def _check_columns(self, probabilities: torch.Tensor) -> None:
        if probabilities.shape[-1] != len(self.proposition_names):
            raise ValueError(
                f"proposition probabilities of shape {tuple(probabilities.shape)}: expected the "
                f"last dimension to hold the spec's {len(self.proposition_names)} simple "
                "propositions in order."
            )


def rbr_features(spec: RBRSpec, response_type: str) -> RBRFeatures:
    """Compile one response type of a spec into its feature map."""
    key = spec.response_type(response_type)
    simple = tuple(spec.simple_propositions)
    columns = simple + tuple(spec.derived_propositions)  # derived ones in dependency order
    derived_mask, derived_true = _rule_matrices(spec.derived_propositions.values(), columns)
    class_mask, class_true = _rule_matrices(spec.classes[key].values(), columns)
    return RBRFeatures(
        response_type=key,
        proposition_names=simple,
        relevant_propositions=spec.relevant_propositions(key),
        class_names=tuple(spec.classes[key]),
        derived_mask=derived_mask,
        derived_true=derived_true,
        class_mask=class_mask,
        class_true=class_true,
    )


def _rule_matrices(rules, columns: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    rules: list[Requirements] = list(rules)
    mask = torch.zeros(len(rules), len(columns), dtype=torch.bool)
    true = torch.zeros(len(rules), len(columns), dtype=torch.bool)
    for row, requirements in enumerate(rules):
        for name, required in requirements.items():
            mask[row, columns.index(name)] = True
            true[row, columns.index(name)] = required
    return mask, true
