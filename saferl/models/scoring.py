"""Pure forward helpers: score-model outputs, critic values and policy token log-probs.

Masks follow the project convention: ``attention_mask`` is True (or 1) on real tokens and False
(0) on padding. Batches are right-padded (:class:`saferl.data` ``SequenceBatch``), so a row reads
``prompt tokens, response tokens (ending with EOS), padding``.

A score model here is a Hugging Face ``*ForSequenceClassification`` model of a causal-LM family
(docs/algorithms.md §3): a backbone without the LM head, reached through ``model.base_model``, and a
bias-free linear head ``model.score`` (``hidden -> m``). The helpers also accept the model wrapped
in peft LoRA adapters.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from transformers import PreTrainedModel

__all__ = [
    "critic_values",
    "end_scores",
    "last_token_index",
    "policy_token_logprobs",
    "score_all_positions",
    "score_backbone",
    "score_head",
    "unwrap_model",
]

#: Attribute names of the linear head on Hugging Face sequence-classification models of
#: causal-LM families (Llama, Mistral, Qwen2, Gemma, GPT-2, GPT-NeoX, ... all use ``score``).
_HEAD_NAMES: tuple[str, ...] = ("score",)


def unwrap_model(model: nn.Module) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (the model itself when not wrapped).

    LoRA layers are injected in place, so the unwrapped model still runs the active adapters.
    """
    if is_peft_model(model):
        return model.get_base_model()
    return model


def is_peft_model(model: object) -> bool:
    """Whether ``model`` is a peft ``PeftModel`` (peft is imported only by code that uses LoRA,
    so a model cannot be one while peft is not loaded)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def score_head(model: nn.Module) -> nn.Module:
    """The linear head ``hidden -> m`` of a score model (peft wrappers looked through).

    Raises:
        TypeError: when the model has no known head attribute.
    """
    base = unwrap_model(model)
    for name in _HEAD_NAMES:
        head = getattr(base, name, None)
        if head is not None:
            return head
    raise TypeError(
        f"{type(base).__name__} has no score head (looked for attributes {list(_HEAD_NAMES)}); "
        "expected a Hugging Face *ForSequenceClassification model of a causal-LM family"
    )


def score_backbone(model: nn.Module) -> nn.Module:
    """The backbone (transformer without the LM head) of a score model, via ``base_model``.

    ``PreTrainedModel.base_model`` resolves the architecture's own attribute (``model`` for
    Llama, ``transformer`` for GPT-2) through ``base_model_prefix``.

    Raises:
        TypeError: when the model has no separate backbone.
    """
    base = unwrap_model(model)
    backbone = getattr(base, "base_model", None)
    if backbone is None or backbone is base:
        raise TypeError(
            f"{type(base).__name__} has no backbone attribute "
            f"(base_model_prefix={getattr(base, 'base_model_prefix', None)!r})"
        )
    return backbone


def _hidden_states(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Last hidden states of the backbone, ``(batch, seq_len, hidden)``."""
    backbone = score_backbone(model)
    outputs = backbone(input_ids=input_ids, attention_mask=attention_mask.long(), use_cache=False)
    return outputs.last_hidden_state


def score_all_positions(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Score-model outputs at every position: backbone hidden states through the head.

    Position ``t`` holds the score of the prefix ``input_ids[:, :t+1]`` (causal attention).
    Padding positions hold meaningless values.

    Args:
        model: a score model (see the module docstring), optionally LoRA-wrapped.
        input_ids: ``(batch, seq_len)`` token ids.
        attention_mask: ``(batch, seq_len)``, True/1 on real tokens.

    Returns:
        ``(batch, seq_len, m)`` scores, float32 (or float64 if the model is float64).
    """
    hidden = _hidden_states(model, input_ids, attention_mask)  # (batch, seq_len, hidden)
    scores = score_head(model)(hidden)  # (batch, seq_len, m)
    return scores.to(torch.promote_types(scores.dtype, torch.float32))


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token in each row: the rightmost position where the mask is set.

    Computed from the mask, not from pad-token ids, so a pad id that also occurs in the text
    cannot move it. For right-padded rows this is ``length - 1``.

    Args:
        attention_mask: ``(batch, seq_len)``, True/1 on real tokens.

    Returns:
        ``(batch,)`` long indices.

    Raises:
        ValueError: when a row has no real token.
    """
    valid_mask = attention_mask.bool()
    if not bool(valid_mask.any(dim=-1).all()):
        empty = (~valid_mask.any(dim=-1)).nonzero().flatten().tolist()
        raise ValueError(f"attention_mask has rows with no real token: rows {empty}")
    positions = torch.arange(valid_mask.shape[-1], device=valid_mask.device)
    # (batch, seq_len) -> (batch,): position of the largest valid index per row.
    return (positions * valid_mask).argmax(dim=-1)


def end_scores(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Sequence scores read at the last real token of each row (docs/algorithms.md §3).

    For right-padded batches with ``config.pad_token_id`` set and not occurring in the text this
    equals plain transformers' ``model(input_ids, attention_mask=...).logits``.

    Args:
        model: a score model, optionally LoRA-wrapped.
        input_ids: ``(batch, seq_len)`` token ids.
        attention_mask: ``(batch, seq_len)``, True/1 on real tokens.

    Returns:
        ``(batch, m)`` scores, float32 (or float64 for a float64 model).
    """
    hidden = _hidden_states(model, input_ids, attention_mask)  # (batch, seq_len, hidden)
    last = last_token_index(attention_mask).to(hidden.device)  # (batch,)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    end_hidden = hidden[rows, last]  # (batch, hidden)
    scores = score_head(model)(end_hidden)  # (batch, m)
    return scores.to(torch.promote_types(scores.dtype, torch.float32))


def critic_values(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Per-position values ``V_t`` of a critic (a one-output score model).

    Args:
        model: a critic from :func:`saferl.models.build_critic`.
        input_ids: ``(batch, seq_len)`` token ids.
        attention_mask: ``(batch, seq_len)``, True/1 on real tokens.

    Returns:
        ``(batch, seq_len)`` values; ``V_t`` is the value of the prefix ending at ``t``.
    """
    scores = score_all_positions(model, input_ids, attention_mask)  # (batch, seq_len, 1)
    if scores.shape[-1] != 1:
        raise ValueError(f"a critic has one output, this model has {scores.shape[-1]}")
    return scores[..., 0]


def policy_token_logprobs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Log-probability of each token given the tokens before it.

    Alignment: position ``t`` holds ``log p(input_ids[:, t] | input_ids[:, :t])``; position 0
    (no context) holds 0, and so do padding positions. The log-prob therefore sits at the
    token's own position, so the ``response_mask`` of a right-padded ``SequenceBatch`` selects
    the response tokens' log-probs directly:
    ``log π(y|x) = (policy_token_logprobs(...) * response_mask).sum(-1)``.

    Computed as ``logits[:, :-1]`` gathered at ``input_ids[:, 1:]`` minus the log-sum-exp over the
    vocabulary, in float32 at least (bf16 logits lose the small differences PPO ratios need).

    Args:
        model: a causal LM (optionally LoRA-wrapped) returning ``logits``.
        input_ids: ``(batch, seq_len)`` token ids.
        attention_mask: ``(batch, seq_len)``, True/1 on real tokens.

    Returns:
        ``(batch, seq_len)`` log-probs, float32 (float64 for a float64 model).
    """
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask.long(), use_cache=False
    ).logits
    # (batch, seq_len - 1, vocab): logits at t - 1 predict the token at t.
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    targets = input_ids[:, 1:].unsqueeze(-1)  # (batch, seq_len - 1, 1)
    target_logits = logits.gather(-1, targets).squeeze(-1)  # (batch, seq_len - 1)
    logprobs = target_logits - logits.logsumexp(dim=-1)  # (batch, seq_len - 1)
    logprobs = logprobs * attention_mask[:, 1:].to(logprobs.dtype)
    # Shift right by one so each log-prob sits at its token's position; position 0 gets 0.
    return torch.nn.functional.pad(logprobs, (1, 0), value=0.0)  # (batch, seq_len)
