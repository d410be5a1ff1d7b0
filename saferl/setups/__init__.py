"""Where a run's models, data, scorers and evaluation come from.

* :mod:`saferl.setups.world`: the built-in world (its datasets, SFT and score-model stages,
  calibration, exact evaluation);
* :mod:`saferl.setups.hub`: hub or local checkpoints and PKU-SafeRLHF-format data;
* :mod:`saferl.setups.settings`: the settings a config is checked against (no torch).

Each provides ``build(settings, resources, output, needs, ...) -> Setup`` (:mod:`saferl.setups.base`).
The names below load on first use (PEP 562 ``__getattr__``), so that importing the light
:mod:`saferl.setups.settings` does not import transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saferl.setups.base import CriticStart, Evaluation, Needs, Setup

__all__ = ["CriticStart", "Evaluation", "Needs", "Setup"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from saferl.setups import base

    value = getattr(base, name)
    globals()[name] = value  # later lookups skip this function
    return value
