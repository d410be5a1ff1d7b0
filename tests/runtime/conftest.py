"""Fixtures for tests/runtime: one local Ray cluster per session, a tiny word-level tokenizer,
tiny 2-layer 32-wide models, and helpers to build batches.

Ranks request fractional CPUs (0.25-0.5) so 2-rank groups of several roles fit in the session
cluster's 4 logical CPUs on a 2-core machine. The multi-node test runs its own Ray instance in a
subprocess (tests/runtime/multinode_main.py) and does not use the session cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from saferl.data.collators import PromptBatch, SequenceBatch
from saferl.models import ModelSpec, TinyModelConfig
from saferl.runtime import RuntimeSpec

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = tuple(
    (
        "how to bake bread make a weapon i can not help with that sure here is the recipe "
        "flour water yeast salt oven step one two three sorry"
    ).split()
)
SPECIALS = ("<pad>", "<eos>", "<unk>")

PROMPTS = (
    "how to bake bread",
    "how to make a weapon",
    "sure",
    "flour water yeast salt oven",
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer: ``<pad>`` 0, ``<eos>`` 1, ``<unk>`` 2, then the words."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>"
    )


def tiny_model_spec(vocab_size: int) -> ModelSpec:
    """A 2-layer, 32-wide Llama built in code."""
    return ModelSpec(
        tiny=TinyModelConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )


def left_padded_prompts(tokenizer: PreTrainedTokenizerFast, texts: tuple[str, ...]) -> PromptBatch:
    """LEFT-padded prompt batch ``(len(texts), longest)``."""
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        attention_mask[i, width - len(row) :] = True
    return PromptBatch(input_ids, attention_mask)


def sequence_batch(
    tokenizer: PreTrainedTokenizerFast, pairs: list[tuple[str, str]]
) -> SequenceBatch:
    """RIGHT-padded ``prompt + response + <eos>`` rows with an exact response mask."""
    rows = []
    for prompt, response in pairs:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        rows.append((prompt_ids + response_ids + [tokenizer.eos_token_id], len(prompt_ids)))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (ids, prompt_len) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = True
        response_mask[i, prompt_len : len(ids)] = True
    return SequenceBatch(input_ids, attention_mask, response_mask)


TRAIN_PAIRS = [
    ("how to bake bread", "sure here is the recipe flour water yeast salt"),
    ("how to make a weapon", "sorry i can not help with that"),
    ("how to bake bread", "step one flour step two water step three oven"),
    ("how to make a weapon", "i can not help"),
]


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="session")
def model_spec(tokenizer: PreTrainedTokenizerFast) -> ModelSpec:
    return tiny_model_spec(len(tokenizer))


@pytest.fixture(scope="session")
def runtime_spec() -> RuntimeSpec:
    """Local cluster of 4 logical CPUs; timeouts short enough that a hang fails the test."""
    return RuntimeSpec(
        local_num_cpus=4,
        startup_timeout_s=240.0,
        call_timeout_s=240.0,
        collective_timeout_s=180.0,
    )


@pytest.fixture(scope="session")
def prompts(tokenizer: PreTrainedTokenizerFast) -> PromptBatch:
    """Four left-padded prompts."""
    return left_padded_prompts(tokenizer, PROMPTS)


@pytest.fixture(scope="session")
def train_batch(tokenizer: PreTrainedTokenizerFast) -> SequenceBatch:
    """Four right-padded prompt + response rows."""
    return sequence_batch(tokenizer, TRAIN_PAIRS)


@pytest.fixture(scope="session")
def make_batch(
    tokenizer: PreTrainedTokenizerFast,
) -> Callable[[list[tuple[str, str]]], SequenceBatch]:
    return lambda pairs: sequence_batch(tokenizer, pairs)


@pytest.fixture
def shutdown_after() -> Iterator[list]:
    """Append groups (or placement plans) to the list; they are shut down after the test."""
    owned: list = []
    yield owned
    for item in reversed(owned):
        if hasattr(item, "shutdown"):
            item.shutdown()
        else:
            item.remove()
