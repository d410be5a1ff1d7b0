"""PPO clipped policy and value losses and their standard diagnostics (docs/algorithms.md §2).

Shapes: ``(batch, seq_len)`` per-token tensors with ``response_mask`` True on the response tokens
that the loss is taken over.
"""

from __future__ import annotations

import torch

from saferl.core.kl import kl_k3
from saferl.core.masked import _require_same_shape, masked_mean

__all__ = [
    "ppo_policy_loss",
    "ppo_value_loss",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "token_mean_nll",
]


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float,
) -> torch.Tensor:
    """PPO clipped surrogate loss, averaged per sequence and then over the batch.

    ``ρ_t = exp(log π_θ(a_t) − log π_old(a_t))``,
    ``ℓ_t = max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε))``,
    ``loss = mean_b [ Σ_t mask_bt ℓ_bt / Σ_t mask_bt ]`` (Safe RLHF's per-sequence average: each
    response weighs the same whatever its length). Rows without valid tokens are left out of the
    batch mean; if no row has one the loss is 0.

    ``old_logprobs`` and ``advantages`` are detached: the gradient flows through ``logprobs``
    only.

    Args:
        logprobs: ``(batch, seq_len)`` ``log π_θ`` of the sampled tokens under the current policy.
        old_logprobs: ``(batch, seq_len)`` ``log π_old`` from the rollout.
        advantages: ``(batch, seq_len)`` ``A_t`` (e.g. from
            :func:`saferl.core.advantages.combined_advantage`).
        response_mask: ``(batch, seq_len)``, True on response tokens.
        clip_eps: ``ε > 0``.

    Returns:
        A 0-dim tensor, dtype of ``logprobs``.
    """
    _require_same_shape(
        logprobs=logprobs,
        old_logprobs=old_logprobs,
        advantages=advantages,
        response_mask=response_mask,
    )
    if logprobs.dim() != 2:
        raise ValueError(
            f"expected logprobs of shape (batch, seq_len), found {tuple(logprobs.shape)}"
        )
    if clip_eps <= 0:
        raise ValueError(f"expected clip_eps > 0, found {clip_eps}")
    advantages = advantages.detach()
    ratios = torch.exp(logprobs - old_logprobs.detach())
    clipped_ratios = ratios.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    token_losses = torch.maximum(-advantages * ratios, -advantages * clipped_ratios)
    sequence_losses = masked_mean(token_losses, response_mask, dim=-1)  # (batch,)
    return masked_mean(sequence_losses, response_mask.to(torch.bool).any(dim=-1))


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps_value: float,
) -> torch.Tensor:
    """Clipped critic loss, averaged per sequence and then over the batch (docs/algorithms.md §2).

    ``V^clip_t = clip(V_t, V^old_t − ε_v, V^old_t + ε_v)``,
    ``loss = ½ · mean_b [ Σ_t mask_bt e_bt / Σ_t mask_bt ]`` with
    ``e_t = max((V_t − R_t)², (V^clip_t − R_t)²)``: the published Safe RLHF ``masked_mean``, which
    averages each sequence over its valid tokens first, as the policy loss does. Rows with no valid
    token are left out (0 if there is none).

    ``old_values`` and ``returns`` are detached.

    Args:
        values: ``(batch, seq_len)`` current critic values ``V``.
        old_values: ``(batch, seq_len)`` critic values at rollout time ``V^old``.
        returns: ``(batch, seq_len)`` GAE returns ``R``.
        response_mask: ``(batch, seq_len)``, True on response tokens.
        clip_eps_value: ``ε_v > 0``.

    Returns:
        A 0-dim tensor, dtype of ``values``.
    """
    _require_same_shape(
        values=values, old_values=old_values, returns=returns, response_mask=response_mask
    )
    if clip_eps_value <= 0:
        raise ValueError(f"expected clip_eps_value > 0, found {clip_eps_value}")
    old_values = old_values.detach()
    returns = returns.detach()
    clipped_values = torch.clamp(values, old_values - clip_eps_value, old_values + clip_eps_value)
    squared_errors = torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)
    sequence_errors = masked_mean(squared_errors, response_mask, dim=-1)  # (batch,)
    return 0.5 * masked_mean(sequence_errors, response_mask.to(torch.bool).any(dim=-1))


@torch.no_grad()
def approx_kl(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """Diagnostic ``policy/approx_kl``: the k3 estimate of ``KL(π_old ‖ π_θ)``.

    With ``ρ_t = exp(log π_θ − log π_old)`` on tokens sampled from ``π_old``:
    ``masked_mean((ρ_t − 1) − log ρ_t)`` over all valid tokens (0 if there is none). No gradient.

    Args:
        logprobs: ``(batch, seq_len)`` ``log π_θ``.
        old_logprobs: ``(batch, seq_len)`` ``log π_old``.
        response_mask: ``(batch, seq_len)``, True on response tokens.

    Returns:
        A 0-dim tensor, dtype of ``logprobs``.
    """
    _require_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, response_mask=response_mask)
    # k3 of KL(old ‖ new): the "sampling" policy is π_old, the "reference" is π_θ.
    return masked_mean(kl_k3(old_logprobs, logprobs), response_mask)


@torch.no_grad()
def clip_fraction(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float,
) -> torch.Tensor:
    """Diagnostic ``policy/clipfrac``: fraction of valid tokens with ``|ρ_t − 1| > ε``.

    ``ρ_t = exp(log π_θ − log π_old)``; 0 if there is no valid token. No gradient.

    Args:
        logprobs: ``(batch, seq_len)`` ``log π_θ``.
        old_logprobs: ``(batch, seq_len)`` ``log π_old``.
        response_mask: ``(batch, seq_len)``, True on response tokens.
        clip_eps: ``ε``.

    Returns:
        A 0-dim tensor, dtype of ``logprobs``.
    """
    _require_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, response_mask=response_mask)
    ratios = torch.exp(logprobs - old_logprobs)
    clipped = ((ratios - 1.0).abs() > clip_eps).to(logprobs.dtype)
    return masked_mean(clipped, response_mask)


@torch.no_grad()
def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """Diagnostic ``critic/explained_variance``: ``1 − Var(R − V) / Var(R)`` over valid tokens.

    1 for a perfect critic, 0 for a constant prediction at the mean return, negative when worse.
    Both variances are taken over all valid tokens of the batch (the ``1/n`` normalisation
    cancels). Returns **nan** when ``Var(R) = 0`` (constant returns, a single valid token, or
    none), where the ratio is undefined. No gradient.

    Args:
        values: ``(batch, seq_len)`` critic values ``V``.
        returns: ``(batch, seq_len)`` returns ``R``.
        response_mask: ``(batch, seq_len)``, True on response tokens.

    Returns:
        A 0-dim tensor, dtype of ``values``.
    """
    _require_same_shape(values=values, returns=returns, response_mask=response_mask)
    mask = response_mask.to(torch.bool)
    residuals = returns - values
    # Shift by one valid return before the variance, so constant returns give exactly 0
    # (the mean of n equal floats need not equal them) and the nan branch triggers.
    first_valid = mask.flatten().to(torch.uint8).argmax()
    shifted_returns = returns - returns.flatten()[first_valid]
    returns_variance = _masked_population_var(shifted_returns, mask)
    residual_variance = _masked_population_var(residuals, mask)
    nan = torch.full((), float("nan"), dtype=values.dtype, device=values.device)
    return torch.where(returns_variance > 0, 1.0 - residual_variance / returns_variance, nan)


def token_mean_nll(logprobs: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over every supervised token of the batch (Safe RLHF's PTX loss
    before its coefficient, i.e. a causal LM's ``model(..., labels=...).loss``):

    ``L = Σ_{b,t} mask_bt · (−log π_θ(y_bt)) / Σ_{b,t} mask_bt``.

    Each token weighs the same, so a long response counts for more than a short one (unlike the
    per-sequence mean of :func:`ppo_policy_loss`). Without a valid token the loss is 0.

    Args:
        logprobs: ``(batch, seq_len)`` ``log π_θ`` of the demonstrated tokens.
        response_mask: ``(batch, seq_len)``, True on the supervised (response) tokens.

    Returns:
        A 0-dim tensor, dtype of ``logprobs``.
    """
    _require_same_shape(logprobs=logprobs, response_mask=response_mask)
    return masked_mean(-logprobs, response_mask)


def _masked_population_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``masked_mean((values − masked_mean(values))²)``: 0 (never an error) without valid entries."""
    return masked_mean((values - masked_mean(values, mask)) ** 2, mask)
