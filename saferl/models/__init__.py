"""saferl.models: policies, score models (reward, cost), critics and tokenizers.

Build from a :class:`ModelSpec` (hub name, local folder, or a tiny in-code config), read outputs
with the pure forward helpers of :mod:`saferl.models.scoring`, save and load in the standard
Hugging Face format with :mod:`saferl.models.io`. Imports torch, transformers, peft and tokenizers
only (no ray, deepspeed, hydra or wandb).
"""

from __future__ import annotations

from saferl.models.builders import (
    build_critic,
    build_policy,
    build_score_model,
    default_head_init_std,
    init_score_head_,
    tiny_transformers_config,
)
from saferl.models.io import load_policy, load_score_model, save_policy, save_score_model
from saferl.models.metadata import SCORE_KINDS, score_model_kind, set_score_metadata
from saferl.models.safe_rlhf_format import (
    check_safe_rlhf_score_config,
    convert_safe_rlhf_score_model,
    is_safe_rlhf_score_config,
    load_safe_rlhf_score_model,
    safe_rlhf_score_dim,
)
from saferl.models.scoring import (
    critic_values,
    end_scores,
    last_token_index,
    policy_token_logprobs,
    score_all_positions,
    score_backbone,
    score_head,
    unwrap_model,
)
from saferl.models.spec import DTYPES, LoraSpec, ModelSpec, TinyModelConfig, torch_dtype
from saferl.models.tokenizers import PAD_TOKEN, ensure_pad_token, load_tokenizer

__all__ = [
    "DTYPES",
    "PAD_TOKEN",
    "SCORE_KINDS",
    "LoraSpec",
    "ModelSpec",
    "TinyModelConfig",
    "build_critic",
    "build_policy",
    "build_score_model",
    "check_safe_rlhf_score_config",
    "convert_safe_rlhf_score_model",
    "critic_values",
    "default_head_init_std",
    "end_scores",
    "ensure_pad_token",
    "init_score_head_",
    "is_safe_rlhf_score_config",
    "last_token_index",
    "load_policy",
    "load_safe_rlhf_score_model",
    "load_score_model",
    "load_tokenizer",
    "policy_token_logprobs",
    "safe_rlhf_score_dim",
    "save_policy",
    "save_score_model",
    "score_all_positions",
    "score_backbone",
    "score_head",
    "score_model_kind",
    "set_score_metadata",
    "tiny_transformers_config",
    "torch_dtype",
    "unwrap_model",
]
