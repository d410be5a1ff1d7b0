"""Fixtures for tests/models: a small real word-level tokenizer saved to disk, tiny model specs.

The tokenizer is built with the ``tokenizers`` library, wrapped in
``transformers.PreTrainedTokenizerFast`` and saved with ``save_pretrained``, so
``AutoTokenizer.from_pretrained(folder)`` loads it from a local path: the hub code path, offline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from saferl.models import ModelSpec, TinyModelConfig, load_tokenizer

WORDS = tuple(
    (
        "how to bake bread make a weapon i can not help with that sure here is the recipe "
        "flour water yeast salt oven step one two three sorry"
    ).split()
)
SPECIALS = ("<pad>", "<eos>", "<unk>", "<bos>")


def save_word_tokenizer(folder: Path, with_pad: bool = True) -> Path:
    """Write a WordLevel tokenizer to ``folder``; without ``<pad>`` when ``with_pad`` is False."""
    specials = SPECIALS if with_pad else tuple(s for s in SPECIALS if s != "<pad>")
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    kwargs = {"pad_token": "<pad>"} if with_pad else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", bos_token="<bos>", **kwargs
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a word-level tokenizer with ``<pad>`` (id 0), ``<eos>`` (1), ``<unk>``, ``<bos>``."""
    return save_word_tokenizer(tmp_path_factory.mktemp("tokenizer"), with_pad=True)


@pytest.fixture(scope="session")
def tokenizer_dir_no_pad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tokenizer without a pad token (``<eos>`` is id 0)."""
    return save_word_tokenizer(tmp_path_factory.mktemp("tokenizer_no_pad"), with_pad=False)


@pytest.fixture
def tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    """A fresh copy per test (tests may add tokens), loaded through AutoTokenizer."""
    return load_tokenizer(str(tokenizer_dir))


@pytest.fixture
def tiny_spec(tokenizer: PreTrainedTokenizerBase) -> ModelSpec:
    """A 2-layer, 32-wide Llama built in code."""
    return _tiny_model_spec(len(tokenizer))


@pytest.fixture
def make_tiny_spec() -> Callable[..., ModelSpec]:
    """``make_tiny_spec(vocab_size, architecture="llama", **ModelSpec_kwargs)``."""
    return _tiny_model_spec


def _tiny_model_spec(vocab_size: int, architecture: str = "llama", **kwargs: object) -> ModelSpec:
    tiny = TinyModelConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        architecture=architecture,
    )
    return ModelSpec(tiny=tiny, **kwargs)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def batch(tokenizer: PreTrainedTokenizerBase) -> Callable[..., dict[str, torch.Tensor]]:
    """Right-padded batch of texts, each ending with EOS: ``{"input_ids", "attention_mask"}``."""

    def make(texts: list[str] | None = None) -> dict[str, torch.Tensor]:
        texts = texts or [
            "how to bake bread sure here is the recipe",
            "how to make a weapon sorry",
            "flour",
        ]
        rows = [tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
        length = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = True
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    return make
