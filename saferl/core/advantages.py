"""Per-token reward/cost streams, GAE and the Lagrangian combined advantage (docs/algorithms.md §2).

Shapes: ``batch`` sequences of ``seq_len`` positions; ``response_mask`` (True = valid) marks the
response tokens. A row may start with invalid (prompt) positions and end with invalid (padding)
positions; ``m`` is the number of cost models.
"""

from __future__ import annotations

import torch

from saferl.core.kl import kl_k1
from saferl.core.masked import _require_same_shape

__all__ = [
    "gae",
    "safe_rlhf_token_streams",
    "combined_advantage",
]


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the valid positions of each row.

    ``δ_t = r_t + γ V_{t+1} − V_t``, ``A_t = δ_t + γ λ_GAE A_{t+1}``, ``returns_t = A_t + V_t``.

    Rewards and values at invalid positions are taken as 0, so the position after the last valid
    one bootstraps with ``V = 0`` (the response is a finished episode). Outputs are 0 at invalid
    positions. The mask is meant to be one contiguous block per row (prompt prefix and padding
    suffix invalid); an invalid gap inside a row would end the episode there (``A`` restarts
    from 0 and ``V`` after the gap is not used before it).

    Nothing is detached: pass detached ``values`` (the learners call this under
    ``torch.no_grad()``).

    Args:
        rewards: ``(batch, seq_len)`` per-token rewards ``r_t`` (e.g. a stream from
            :func:`safe_rlhf_token_streams`).
        values: ``(batch, seq_len)`` critic values ``V_t``.
        response_mask: ``(batch, seq_len)``, True on response positions.
        gamma: discount ``γ`` in ``[0, 1]``.
        gae_lambda: GAE ``λ_GAE`` in ``[0, 1]``.

    Returns:
        ``(advantages, returns)``, each ``(batch, seq_len)``, 0 at invalid positions.
    """
    _require_same_shape(rewards=rewards, values=values, response_mask=response_mask)
    if rewards.dim() != 2:
        raise ValueError(
            f"expected rewards of shape (batch, seq_len), found {tuple(rewards.shape)}"
        )
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"expected gamma in [0, 1], found {gamma}")
    if not 0.0 <= gae_lambda <= 1.0:
        raise ValueError(f"expected gae_lambda in [0, 1], found {gae_lambda}")
    mask = response_mask.to(torch.bool)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    rewards = torch.where(mask, rewards, zero)
    values = torch.where(mask, values, zero)

    batch, seq_len = rewards.shape
    next_values = rewards.new_zeros(batch)  # V_{t+1}; 0 after the last position
    next_advantages = rewards.new_zeros(batch)  # A_{t+1}
    advantages_reversed = []
    for t in reversed(range(seq_len)):
        deltas = rewards[:, t] + gamma * next_values - values[:, t]
        next_advantages = torch.where(
            mask[:, t], deltas + gamma * gae_lambda * next_advantages, zero
        )
        next_values = values[:, t]
        advantages_reversed.append(next_advantages)
    if seq_len == 0:
        advantages = rewards.new_zeros(batch, 0)
    else:
        advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (batch, seq_len)
    returns = torch.where(mask, advantages + values, zero)
    return advantages, returns


def safe_rlhf_token_streams(
    reward_scores: torch.Tensor,
    cost_scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coeff: float,
    clip_range_score: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Safe RLHF's per-token reward and cost streams (docs/algorithms.md §2).

    With ``kl_t = log π_θ(a_t) − log π_ref(a_t)`` (the k1 estimator) and ``T`` the last valid
    position of the row:

    * reward stream ``r_t = clip(−β kl_t + [t = T] · R, −c, c)``;
    * cost stream ``j``: ``c_{j,t} = clip(+β kl_t + [t = T] · C_j, −c, c)``;

    with ``β = kl_coeff`` and ``c = clip_range_score``. The clip is applied to the whole stream
    after the score is added, as in the published Safe RLHF code (it clamps after scatter-adding
    the score). Putting ``+β kl`` into the cost stream makes the KL strength independent of λ once
    the advantages are combined by :func:`combined_advantage`.

    Args:
        reward_scores: ``(batch,)`` reward-model scores ``R`` of the responses.
        cost_scores: ``(batch,)`` or ``(batch, m)`` cost-model scores ``C_j``.
        logprobs: ``(batch, seq_len)`` ``log π_θ`` of the sampled tokens (the rollout policy).
        ref_logprobs: ``(batch, seq_len)`` ``log π_ref`` of the same tokens.
        response_mask: ``(batch, seq_len)``, True on response tokens.
        kl_coeff: ``β ≥ 0``.
        clip_range_score: ``c > 0``.

    Returns:
        ``(reward_stream, cost_streams)``: ``(batch, seq_len)`` and ``(batch, seq_len)`` when
        ``cost_scores`` is ``(batch,)``, else ``(batch, seq_len, m)``; dtype of ``logprobs``;
        0 at invalid positions.

    Raises:
        ValueError: on mismatched shapes, ``kl_coeff < 0``, ``clip_range_score <= 0``, or a row
            without any valid position (it has no last token to carry the score).
    """
    _require_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, response_mask=response_mask)
    if logprobs.dim() != 2:
        raise ValueError(
            f"expected logprobs of shape (batch, seq_len), found {tuple(logprobs.shape)}"
        )
    batch, seq_len = logprobs.shape
    if tuple(reward_scores.shape) != (batch,):
        raise ValueError(
            f"expected reward_scores of shape ({batch},), found {tuple(reward_scores.shape)}"
        )
    if cost_scores.dim() not in (1, 2) or cost_scores.shape[0] != batch:
        raise ValueError(
            f"expected cost_scores of shape ({batch},) or ({batch}, m), found "
            f"{tuple(cost_scores.shape)}"
        )
    if kl_coeff < 0:
        raise ValueError(f"expected kl_coeff >= 0, found {kl_coeff}")
    if clip_range_score <= 0:
        raise ValueError(f"expected clip_range_score > 0, found {clip_range_score}")
    mask = response_mask.to(torch.bool)
    empty_rows = (~mask.any(dim=-1)).nonzero().flatten().tolist()
    if empty_rows:
        raise ValueError(
            f"rows {empty_rows} of response_mask have no valid position, so there is no last "
            "response token to carry the reward and cost scores; drop empty responses before "
            "computing the streams"
        )

    dtype = logprobs.dtype
    zero = torch.zeros((), dtype=dtype, device=logprobs.device)
    positions = torch.arange(seq_len, device=logprobs.device)
    last_positions = torch.where(mask, positions, -1).amax(dim=-1)  # (batch,)
    end_mask = (positions == last_positions.unsqueeze(-1)).to(dtype)  # (batch, seq_len) one-hot
    kl = torch.where(mask, kl_k1(logprobs, ref_logprobs), zero)  # (batch, seq_len)

    reward_stream = -kl_coeff * kl + end_mask * reward_scores.to(dtype).unsqueeze(-1)
    reward_stream = reward_stream.clamp(-clip_range_score, clip_range_score)
    reward_stream = torch.where(mask, reward_stream, zero)

    if cost_scores.dim() == 1:
        cost_streams = kl_coeff * kl + end_mask * cost_scores.to(dtype).unsqueeze(-1)
        stream_mask = mask
    else:
        # (batch, seq_len, 1) + (batch, seq_len, 1) * (batch, 1, m) -> (batch, seq_len, m)
        kl_costs = (kl_coeff * kl).unsqueeze(-1)
        end_costs = end_mask.unsqueeze(-1) * cost_scores.to(dtype).unsqueeze(1)
        cost_streams = kl_costs + end_costs
        stream_mask = mask.unsqueeze(-1)
    cost_streams = cost_streams.clamp(-clip_range_score, clip_range_score)
    cost_streams = torch.where(stream_mask, cost_streams, zero)
    return reward_stream, cost_streams


def combined_advantage(
    reward_advantages: torch.Tensor,
    cost_advantages: torch.Tensor,
    multiplier: float | torch.Tensor,
) -> torch.Tensor:
    """Lagrangian advantage ``Â = (A_r − Σ_j λ_j A_{c_j}) / (1 + Σ_j λ_j)`` (docs/algorithms.md §2).

    The multiplier is detached: no gradient flows into ``λ`` through the actor loss. The
    ``1 / (1 + Σ λ)`` normalisation keeps the advantage scale bounded as ``λ`` grows.

    Args:
        reward_advantages: ``(batch, seq_len)`` ``A_r``.
        cost_advantages: ``(batch, seq_len)`` (one cost, ``m = 1``) or ``(batch, seq_len, m)``.
        multiplier: ``λ ≥ 0``: a float or 0-dim tensor for ``m = 1``, or a tensor of shape
            ``(m,)``.

    Returns:
        ``(batch, seq_len)``, dtype of ``reward_advantages``.

    Raises:
        ValueError: on mismatched shapes, a number of multipliers different from ``m``, or a
            negative or non-finite multiplier.
    """
    if reward_advantages.dim() != 2:
        raise ValueError(
            "expected reward_advantages of shape (batch, seq_len), found "
            f"{tuple(reward_advantages.shape)}"
        )
    if cost_advantages.shape == reward_advantages.shape:
        cost_advantages = cost_advantages.unsqueeze(-1)  # (batch, seq_len, 1)
    elif cost_advantages.dim() != 3 or cost_advantages.shape[:2] != reward_advantages.shape:
        raise ValueError(
            f"expected cost_advantages of shape {tuple(reward_advantages.shape)} or "
            f"{tuple(reward_advantages.shape)} + (m,), found {tuple(cost_advantages.shape)}"
        )
    num_costs = cost_advantages.shape[-1]
    multiplier = torch.as_tensor(multiplier).detach()
    if multiplier.dim() > 1:
        raise ValueError(
            f"expected a multiplier of shape (m,) or a scalar, found {tuple(multiplier.shape)}"
        )
    multiplier = multiplier.reshape(-1).to(
        dtype=reward_advantages.dtype, device=reward_advantages.device
    )
    if multiplier.numel() != num_costs:
        raise ValueError(
            f"cost_advantages has m = {num_costs} cost streams but multiplier has "
            f"{multiplier.numel()} entries; pass one multiplier per cost"
        )
    if not bool(torch.isfinite(multiplier).all()) or bool((multiplier < 0).any()):
        raise ValueError(f"expected finite, non-negative multipliers, found {multiplier.tolist()}")
    weighted_cost_advantages = (cost_advantages * multiplier).sum(dim=-1)  # (batch, seq_len)
    return (reward_advantages - weighted_cost_advantages) / (1.0 + multiplier.sum())
