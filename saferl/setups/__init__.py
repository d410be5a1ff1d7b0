"""Where a run's models, data, scorers and evaluation come from.

* :mod:`saferl.setups.world`: the built-in world (its datasets, SFT and score-model stages,
  calibration, exact evaluation);
* :mod:`saferl.setups.hub`: hub or local checkpoints and PKU-SafeRLHF-format data.

Each provides ``build(settings, resources, output, needs, ...) -> Setup`` (:mod:`saferl.setups.base`).
"""

from saferl.setups.base import CriticStart, Evaluation, Needs, Setup

__all__ = ["CriticStart", "Evaluation", "Needs", "Setup"]
