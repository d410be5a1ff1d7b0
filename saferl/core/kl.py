"""Per-token estimators of ``KL(π ‖ π_ref)`` on tokens sampled from ``π`` (Schulman, 2020).

With ``a ~ π`` and the log-ratio ``log r = log π_ref(a) − log π(a)``:

* ``k1 = −log r``             unbiased, high variance, can be negative;
* ``k2 = ½ (log r)²``         biased (exact to second order for nearby π, π_ref), non-negative;
* ``k3 = (r − 1) − log r``    unbiased and non-negative.

docs/algorithms.md §2 (Safe RLHF) uses ``k1`` in the per-token reward and cost streams.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch

__all__ = [
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "KL_ESTIMATORS",
    "kl_estimator",
]


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``k1 = log π(a) − log π_ref(a)``, an unbiased estimate of ``KL(π‖π_ref)`` for ``a ~ π``.

    Args:
        logprobs: ``log π(a_t)`` of the sampled tokens, any shape, e.g. ``(batch, seq_len)``.
        ref_logprobs: ``log π_ref(a_t)``, same shape.

    Returns:
        Same shape and dtype as ``logprobs``.
    """
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``k2 = ½ (log π(a) − log π_ref(a))²``, a biased, non-negative estimate for ``a ~ π``.

    Args:
        logprobs: ``log π(a_t)`` of the sampled tokens, any shape, e.g. ``(batch, seq_len)``.
        ref_logprobs: ``log π_ref(a_t)``, same shape.

    Returns:
        Same shape and dtype as ``logprobs``.
    """
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``k3 = exp(log π_ref(a) − log π(a)) − (log π_ref(a) − log π(a)) − 1``, unbiased and ≥ 0.

    Computed as ``expm1(d) − d`` with ``d = log π_ref − log π``, which is exact near ``d = 0``
    where the naive form cancels.

    Args:
        logprobs: ``log π(a_t)`` of the sampled tokens, any shape, e.g. ``(batch, seq_len)``.
        ref_logprobs: ``log π_ref(a_t)``, same shape.

    Returns:
        Same shape and dtype as ``logprobs``.
    """
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: Mapping[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = (
    MappingProxyType({"k1": kl_k1, "k2": kl_k2, "k3": kl_k3})
)
"""Read-only map from estimator name to ``f(logprobs, ref_logprobs) -> per-token KL``."""


def kl_estimator(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The per-token KL estimator called ``name`` (``"k1"``, ``"k2"`` or ``"k3"``).

    Raises:
        ValueError: for any other name; the message lists the allowed names.
    """
    try:
        return KL_ESTIMATORS[name]
    except KeyError:
        allowed = ", ".join(repr(key) for key in KL_ESTIMATORS)
        raise ValueError(f"unknown KL estimator {name!r}; expected one of {allowed}") from None
