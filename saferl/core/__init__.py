"""Pure tensor math of saferl: losses, GAE, KL, multipliers, the dual solver, exact optima.

Sign convention (docs/algorithms.md §0), stated once in :mod:`saferl.core.conventions`: reward higher is
better; costs lower is safer; constraints ``E[c_j] ≤ d_j``; multipliers ``λ_j ≥ 0``. Masks are
``True = valid``.

No module here imports torch.distributed, ray, deepspeed, hydra, omegaconf or wandb (a test
enforces it). Functions take tensors and numbers, never config objects.
"""

from saferl.core import (
    advantages,
    conventions,
    dual,
    dual_ascent,
    dualized,
    kl,
    logprobs,
    masked,
    multipliers,
    ppo,
    preference_losses,
    rbr,
    score_losses,
)

__all__ = [
    "advantages",
    "conventions",
    "dual",
    "dual_ascent",
    "dualized",
    "kl",
    "logprobs",
    "masked",
    "multipliers",
    "ppo",
    "preference_losses",
    "rbr",
    "score_losses",
]
