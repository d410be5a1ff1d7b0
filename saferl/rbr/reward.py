"""The rule-based reward of a spec: one linear RBR per response type.

``R_rbr(x, y) = w_t · f_t(φ(x, y))`` for the response type ``t`` of the prompt ``x``, with the
feature map ``f_t`` of :func:`saferl.rbr.rbr_features` and that type's weights (fitted by
:func:`saferl.rbr.fit_rbr_weights`, or fixed for the paper's RBR-Fixed ablation). The total reward
``R_rm + R_rbr`` is used on safety-relevant prompts only; that choice is the learner's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from saferl.core.rbr import linear_rbr_reward
from saferl.rbr.features import RBRFeatures, rbr_features
from saferl.rbr.spec import RBRSpec, response_type_key

__all__ = ["LinearRBR"]


@dataclass(frozen=True)
class LinearRBR:
    """One linear RBR per response type of a spec.

    Attributes:
        feature_maps: response type → its feature map.
        weights: response type → ``(n_features,)`` weights, in its feature map's order.
    """

    feature_maps: Mapping[str, RBRFeatures]
    weights: Mapping[str, torch.Tensor]

    def __post_init__(self) -> None:
        if set(self.weights) != set(self.feature_maps):
            raise ValueError(
                f"weights for the response types {sorted(self.weights)}: expected exactly "
                f"{sorted(self.feature_maps)}."
            )
        for response_type, feature_map in self.feature_maps.items():
            width = len(feature_map.feature_names)
            if tuple(self.weights[response_type].shape) != (width,):
                raise ValueError(
                    f"weights of {response_type!r} have shape "
                    f"{tuple(self.weights[response_type].shape)}: expected ({width},), one per "
                    f"feature ({', '.join(feature_map.feature_names)})."
                )

    @classmethod
    def from_spec(
        cls, spec: RBRSpec, weights: Mapping[str, torch.Tensor] | None = None
    ) -> LinearRBR:
        """The spec's feature maps with the given weights (keys in any spelling of the response
        types), or weights 0 for every response type (the fit's start)."""
        feature_maps = {key: rbr_features(spec, key) for key in spec.response_types}
        if weights is None:
            given = {
                key: torch.zeros(len(feature_map.feature_names), dtype=torch.float64)
                for key, feature_map in feature_maps.items()
            }
        else:
            given = {spec.response_type(key): value for key, value in weights.items()}
        return cls(feature_maps, given)

    def weight_names(self) -> dict[str, dict[str, float]]:
        """Response type → feature name → weight: the JSON form that :meth:`save` writes."""
        return {
            key: dict(zip(feature_map.feature_names, self.weights[key].tolist(), strict=True))
            for key, feature_map in self.feature_maps.items()
        }

    def save(self, path: str | Path) -> None:
        """Write the weights by name as JSON (:meth:`load` checks them against a spec)."""
        Path(path).write_text(json.dumps(self.weight_names(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, spec: RBRSpec) -> LinearRBR:
        """Read weights written by :meth:`save` for ``spec``.

        Raises:
            ValueError: the file's response types or feature names are not the spec's (the
                message names the file and the response type).
        """
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(document, dict) or set(document) != set(spec.response_types):
            found = sorted(document) if isinstance(document, dict) else type(document).__name__
            raise ValueError(
                f"{path}: expected weights for the response types {sorted(spec.response_types)}, "
                f"found {found}."
            )
        weights = {}
        for key in spec.response_types:
            names = rbr_features(spec, key).feature_names
            given = document[key]
            if not isinstance(given, dict) or list(given) != list(names):
                found = list(given) if isinstance(given, dict) else type(given).__name__
                raise ValueError(
                    f"{path}, response type {key!r}: expected the features {list(names)} in this "
                    f"order, found {found}."
                )
            weights[key] = torch.tensor([float(given[name]) for name in names], dtype=torch.float64)
        return cls.from_spec(spec, weights)

    def reward(self, response_type: str, probabilities: torch.Tensor) -> torch.Tensor:
        """``R_rbr`` of completions to prompts of one response type.

        Args:
            response_type: e.g. ``"hard_refuse"`` or ``"Hard Refuse"``.
            probabilities: ``(..., n_simple)`` proposition probabilities, in the spec's order.

        Returns:
            ``(...)``, in ``probabilities``'s dtype.
        """
        key = response_type_key(response_type)
        if key not in self.feature_maps:
            raise ValueError(
                f"unknown response type {response_type!r}: expected one of "
                f"{', '.join(self.feature_maps)} (case, spaces and hyphens aside)."
            )
        features = self.feature_maps[key].features(probabilities)
        weights = self.weights[key].to(probabilities.dtype)
        return linear_rbr_reward(features, weights)
