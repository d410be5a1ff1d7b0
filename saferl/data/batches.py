"""The typed batches the collators build and the runtime consumes (a leaf module: torch only).

Conventions: masks are ``torch.bool``, True = real/valid; ids are ``torch.long``. Generation
prompts are LEFT-padded (:class:`PromptBatch`), training sequences RIGHT-padded
(:class:`SequenceBatch`); :mod:`saferl.data.collators` explains how text becomes these tensors.
Kept apart from the collators so that the runtime (and its Ray workers) can use the batch types
without importing the tokenising code and the prompt templates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PairBatch", "PromptBatch", "SequenceBatch"]


@dataclass(frozen=True)
class PromptBatch:
    """Formatted, tokenised prompts for generation.

    Attributes:
        input_ids: ``(batch, prompt_len)`` long, LEFT-padded with the pad token id.
        attention_mask: ``(batch, prompt_len)`` bool, True = real token.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> PromptBatch:
        """The batch on ``device``."""
        return PromptBatch(self.input_ids.to(device), self.attention_mask.to(device))


@dataclass(frozen=True)
class SequenceBatch:
    """Prompt + response sequences for scoring, log-probabilities and training.

    Attributes:
        input_ids: ``(batch, seq_len)`` long, prompt ids then response ids (then EOS), RIGHT-padded
            with the pad token id.
        attention_mask: ``(batch, seq_len)`` bool, True = real token (prompt, response, EOS).
        response_mask: ``(batch, seq_len)`` bool, True exactly on the response tokens and the
            appended EOS; False on the prompt and the padding. ``log π(y|x)`` is the masked sum
            over it (docs/algorithms.md §0).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    def to(self, device: torch.device | str) -> SequenceBatch:
        """The batch on ``device``."""
        return SequenceBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.response_mask.to(device),
        )


@dataclass(frozen=True)
class PairBatch:
    """Chosen and rejected sequences of a batch of preference pairs.

    ``chosen`` and ``rejected`` are padded to one common ``seq_len`` so they can be stacked into a
    single forward pass (:meth:`concatenated`).

    Attributes:
        chosen: the preferred responses (``y_w``; for cost models, the safer ones).
        rejected: the dispreferred responses (``y_l``).
        preference_prob: ``(batch,)`` float32, probability that chosen is preferred (1.0 for
            hard labels).
        chosen_is_safe: ``(batch,)`` bool safety labels of the chosen responses, or ``None`` for
            pairs without safety labels.
        rejected_is_safe: ``(batch,)`` bool, or ``None``, likewise for the rejected responses.
    """

    chosen: SequenceBatch
    rejected: SequenceBatch
    preference_prob: torch.Tensor
    chosen_is_safe: torch.Tensor | None = None
    rejected_is_safe: torch.Tensor | None = None

    def concatenated(self) -> SequenceBatch:
        """Chosen rows then rejected rows: ``(2 * batch, seq_len)`` tensors."""
        return SequenceBatch(
            torch.cat([self.chosen.input_ids, self.rejected.input_ids]),
            torch.cat([self.chosen.attention_mask, self.rejected.attention_mask]),
            torch.cat([self.chosen.response_mask, self.rejected.response_mask]),
        )

    def to(self, device: torch.device | str) -> PairBatch:
        """The batch on ``device``."""

        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)

        return PairBatch(
            self.chosen.to(device),
            self.rejected.to(device),
            self.preference_prob.to(device),
            move(self.chosen_is_safe),
            move(self.rejected_is_safe),
        )
