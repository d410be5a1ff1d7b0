"""The world's reference policy: a tiny causal LM SFT-ed on the demonstrator's answers.

This is the one place the data layer builds a model (through :mod:`saferl.models`): the world ships
its own reference policy so that every learner can run on it without a download. The training is
a plain single-process loop (a few hundred AdamW steps on a 2-layer, 64-wide Llama; seconds on a
CPU), deterministic for a seed. Prompt tokens are masked out of the loss.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from saferl.data.collators import collate_sequences
from saferl.data.world.generator import make_sft_examples
from saferl.data.world.settings import ReferenceConfig
from saferl.data.world.vocab import build_world_tokenizer

__all__ = [
    "ReferenceConfig",
    "train_reference_policy",
    "load_or_train_reference_policy",
    "world_model_spec",
]

# The world's prompts and responses are plain words: no chat template, no Safe RLHF preamble.
WORLD_TEMPLATE = "raw"
MAX_SEQUENCE_LENGTH = 16


def world_model_spec(config: ReferenceConfig, tokenizer: PreTrainedTokenizerFast):
    """The :class:`saferl.models.ModelSpec` of the world's tiny LM."""
    from saferl.models import ModelSpec, TinyModelConfig

    return ModelSpec(
        tiny=TinyModelConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            max_position_embeddings=32,
        )
    )


def train_reference_policy(
    config: ReferenceConfig, tokenizer: PreTrainedTokenizerFast | None = None
) -> tuple[PreTrainedModel, list[float]]:
    """SFT a fresh tiny LM on demonstrations; returns the model (eval mode) and the loss curve."""
    from saferl.models import build_policy, policy_token_logprobs

    tokenizer = tokenizer or build_world_tokenizer()
    torch.manual_seed(config.seed)
    model = build_policy(world_model_spec(config, tokenizer), tokenizer)
    examples = make_sft_examples(config.num_examples, config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    order = random.Random(config.seed)
    losses = []
    model.train()
    for _ in range(config.steps):
        batch_examples = order.sample(examples, config.batch_size)
        batch = collate_sequences(
            [example.prompt for example in batch_examples],
            [example.response for example in batch_examples],
            tokenizer,
            MAX_SEQUENCE_LENGTH,
            template=WORLD_TEMPLATE,
        )
        token_logprobs = policy_token_logprobs(model, batch.input_ids, batch.attention_mask)
        mask = batch.response_mask.to(token_logprobs.dtype)
        loss = -(token_logprobs * mask).sum() / mask.sum()  # mean NLL per response token
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return model, losses


def load_or_train_reference_policy(
    config: ReferenceConfig, cache_dir: str | Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The reference policy for ``config``, trained once and then loaded from ``cache_dir``.

    Without ``cache_dir`` it is trained in memory every call. The cache folder is named by the
    config's fingerprint, so a changed config never loads a stale model.
    """
    from saferl.models import load_policy, save_policy

    tokenizer = build_world_tokenizer()
    if cache_dir is None:
        return train_reference_policy(config, tokenizer)[0], tokenizer
    folder = Path(cache_dir) / f"reference-{config.fingerprint()}"
    if (folder / "config.json").exists():
        model, saved_tokenizer = load_policy(folder)
        model.eval()
        return model, saved_tokenizer
    model, _ = train_reference_policy(config, tokenizer)
    save_policy(model, tokenizer, folder)
    return model, tokenizer
