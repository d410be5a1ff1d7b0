"""Typed containers between the stages of a learner (frozen dataclasses with documented shapes).

Every batch that is split across ranks keeps its rows on dimension 0; masks are bool, True = valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "Experience",
    "Advantages",
    "PolicyTrainBatch",
    "CriticTrainBatch",
    "PairTrainBatch",
    "SFTTrainBatch",
]


@dataclass(frozen=True)
class Experience:
    """One rollout, scored (the experience maker's output).

    Attributes:
        input_ids: ``(batch, seq_len)`` prompt + response, RIGHT-padded.
        attention_mask: ``(batch, seq_len)`` bool, real tokens.
        response_mask: ``(batch, seq_len)`` bool, generated tokens up to and including EOS.
        old_logprobs: ``(batch, seq_len)`` log-probs under the policy that sampled (no grad).
        ref_logprobs: ``(batch, seq_len)`` log-probs under the reference policy.
        reward_scores: ``(batch,)`` reward at the end of each response.
        cost_scores: ``(batch, m)`` costs at the end of each response (``m = 0`` for plain PPO).
        reward_values: ``(batch, seq_len)`` reward critic's values at rollout time.
        cost_values: ``(batch, seq_len, m)`` cost critics' values at rollout time.
        prompts: the prompt texts, length ``batch``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    reward_scores: torch.Tensor
    cost_scores: torch.Tensor
    reward_values: torch.Tensor
    cost_values: torch.Tensor
    prompts: tuple[str, ...]

    @property
    def num_constraints(self) -> int:
        """``m``."""
        return int(self.cost_scores.shape[-1])

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class Advantages:
    """Per-token advantages and returns of one rollout.

    Attributes:
        reward_advantages, reward_returns: ``(batch, seq_len)``.
        cost_advantages, cost_returns: ``(batch, seq_len, m)``.
        policy_advantages: ``(batch, seq_len)`` what the actor loss uses: the combined advantage
            ``(A_r − Σ λ_j A_cj)/(1 + Σ λ_j)`` (``A_r`` when ``m = 0``).
        reward_stream: ``(batch, seq_len)`` per-token rewards (KL penalty + end score, clipped).
        cost_streams: ``(batch, seq_len, m)`` per-token costs.
    """

    reward_advantages: torch.Tensor
    reward_returns: torch.Tensor
    cost_advantages: torch.Tensor
    cost_returns: torch.Tensor
    policy_advantages: torch.Tensor
    reward_stream: torch.Tensor
    cost_streams: torch.Tensor


@dataclass(frozen=True)
class PolicyTrainBatch:
    """What the PPO actor loss reads (rows split across ranks).

    Attributes:
        input_ids, attention_mask, response_mask: ``(batch, seq_len)``.
        old_logprobs: ``(batch, seq_len)``.
        advantages: ``(batch, seq_len)``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor


@dataclass(frozen=True)
class CriticTrainBatch:
    """What a critic's clipped value loss reads.

    Attributes:
        input_ids, attention_mask, response_mask: ``(batch, seq_len)``.
        old_values: ``(batch, seq_len)`` values at rollout time.
        returns: ``(batch, seq_len)`` GAE returns.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    old_values: torch.Tensor
    returns: torch.Tensor


@dataclass(frozen=True)
class SFTTrainBatch:
    """Supervised fine-tuning rows: prompt tokens are masked out of the loss.

    Attributes:
        input_ids, attention_mask, response_mask: ``(batch, seq_len)``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor


@dataclass(frozen=True)
class PairTrainBatch:
    """Preference pairs, interleaved so that a contiguous split across ranks and micro-batches
    keeps each pair together: row ``2i`` is pair ``i``'s first response, row ``2i + 1`` its second.

    Attributes:
        input_ids, attention_mask, response_mask: ``(2 * pairs, seq_len)``.
        first_is_safe: ``(2 * pairs,)`` bool, safety label of the row's pair's FIRST response
            (repeated on both rows; used by cost models).
        second_is_safe: ``(2 * pairs,)`` bool, safety label of the pair's second response.
        preference_prob: ``(2 * pairs,)`` probability that the first response is preferred.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    first_is_safe: torch.Tensor
    second_is_safe: torch.Tensor
    preference_prob: torch.Tensor
