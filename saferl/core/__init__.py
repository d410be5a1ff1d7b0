"""Pure tensor math of saferl: losses, GAE, KL, multipliers, the dual solver, exact optima.

Sign convention (docs/algorithms.md §0), stated once in :mod:`saferl.core.conventions`: reward higher is
better; costs lower is safer; constraints ``E[c_j] ≤ d_j``; multipliers ``λ_j ≥ 0``. Masks are
``True = valid``.

No module here imports torch.distributed, ray, deepspeed, hydra, omegaconf or wandb (a test
enforces it). Functions take tensors and numbers, never config objects.
"""

import importlib

__all__ = [
    "advantages",
    "conventions",
    "dual",
    "dual_ascent",
    "dualized",
    "finite",
    "kl",
    "logprobs",
    "masked",
    "multiplier_options",
    "multipliers",
    "ppo",
    "preference_losses",
    "rbr",
    "score_losses",
]


def __getattr__(name: str):
    """``saferl.core.<module>`` on first use (PEP 562): the package itself loads nothing, so that
    the torch-free modules (``multiplier_options``, which config validation reads) stay light."""
    if name in __all__:
        return importlib.import_module(f"saferl.core.{name}")
    raise AttributeError(f"module 'saferl.core' has no attribute {name!r}")
