"""Per-token reward and cost streams, GAE per stream, and the actor's advantage (docs/algorithms.md §2).

Shared by PPO (``m = 0``), PPO-Lagrangian (λ from the multiplier) and MoCAN's PPO stage (λ fixed
at the dual's λ*): the only difference between them is the multiplier value passed in.
"""

from __future__ import annotations

import torch

from saferl.core.advantages import combined_advantage, gae, safe_rlhf_token_streams
from saferl.learners.types import Advantages, Experience

__all__ = ["compute_advantages"]


def compute_advantages(
    experience: Experience,
    multiplier: torch.Tensor,
    kl_coeff: float,
    clip_range_score: float,
    gamma: float,
    gae_lambda: float,
    kl_in_cost_stream: bool = True,
) -> Advantages:
    """Streams, GAE and the combined advantage of one rollout.

    Args:
        experience: the scored rollout (``m`` costs).
        multiplier: λ, shape ``(m,)`` (ignored when ``m = 0``), detached.
        kl_coeff: β of the per-token KL penalty ``−β (log π − log π_ref)``.
        clip_range_score: streams are clipped to ``±clip_range_score``.
        gamma, gae_lambda: GAE's discount and λ_GAE.
        kl_in_cost_stream: the published Safe RLHF form adds ``+β kl`` to every cost stream, so
            that after the ``1/(1 + Σλ)`` normalisation the per-token KL weight stays β whatever
            λ is. The stationary policy is then ``π ∝ π_ref exp((r − λ·c) / (β(1 + Σλ)))``:
            the optimum of the constrained problem with KL weight ``β(1 + Σλ)``, not β. With
            ``False`` the cost streams carry no KL, the combined per-token reward is
            ``(r − λ·c − β kl)/(1 + Σλ)`` and the stationary policy is docs/algorithms.md §1's
            ``π_λ`` at KL weight β.
    """
    m = experience.num_constraints
    mask = experience.response_mask
    # With no cost the reward stream alone is built (a dummy zero cost keeps one code path).
    costs = experience.cost_scores if m > 0 else torch.zeros(experience.batch_size, 1)
    reward_stream, cost_streams = safe_rlhf_token_streams(
        experience.reward_scores,
        costs,
        experience.old_logprobs,
        experience.ref_logprobs,
        mask,
        kl_coeff=kl_coeff,
        clip_range_score=clip_range_score,
    )
    if not kl_in_cost_stream:
        _, cost_streams = safe_rlhf_token_streams(
            experience.reward_scores,
            costs,
            experience.old_logprobs,
            experience.ref_logprobs,
            mask,
            kl_coeff=0.0,
            clip_range_score=clip_range_score,
        )
    cost_streams = cost_streams[..., :m]  # (batch, seq_len, m)
    reward_advantages, reward_returns = gae(
        reward_stream, experience.reward_values, mask, gamma, gae_lambda
    )
    cost_advantages, cost_returns = [], []
    for j in range(m):
        advantages_j, returns_j = gae(
            cost_streams[..., j], experience.cost_values[..., j], mask, gamma, gae_lambda
        )
        cost_advantages.append(advantages_j)
        cost_returns.append(returns_j)
    shape = (*mask.shape, 0)
    cost_advantages_t = torch.stack(cost_advantages, dim=-1) if m else torch.zeros(shape)
    cost_returns_t = torch.stack(cost_returns, dim=-1) if m else torch.zeros(shape)
    # The constrained learner differs from the unconstrained one exactly here.
    if m > 0:
        policy_advantages = combined_advantage(
            reward_advantages, cost_advantages_t, multiplier.to(reward_advantages)
        )
    else:
        policy_advantages = reward_advantages
    return Advantages(
        reward_advantages=reward_advantages,
        reward_returns=reward_returns,
        cost_advantages=cost_advantages_t,
        cost_returns=cost_returns_t,
        policy_advantages=policy_advantages * mask,
        reward_stream=reward_stream,
        cost_streams=cost_streams,
    )
