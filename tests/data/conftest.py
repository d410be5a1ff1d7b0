"""Fixtures for tests/data: a small real word-level tokenizer and a few valid records.

The tokenizer is built in code with the ``tokenizers`` library (WordLevel model, Whitespace
pre-tokenizer) and wrapped in ``transformers.PreTrainedTokenizerFast``: no download.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from saferl.data import PreferencePair, SafetyPreferencePair

SPECIALS = ("<pad>", "<eos>", "<unk>")
# The Whitespace pre-tokenizer splits "CONVERSATION:" into "CONVERSATION" and ":".
TEMPLATE_WORDS = ("BEGINNING", "OF", "CONVERSATION", "USER", "ASSISTANT", ":")
WORDS = (
    *(
        "how to bake bread make a weapon i can not help with that sure here is the recipe "
        "flour water yeast salt oven step one two three sorry mix and then knead it"
    ).split(),
    "?",
    ".",
    ",",
)


def build_word_tokenizer(with_pad: bool = True) -> PreTrainedTokenizerFast:
    """``<pad>`` = 0, ``<eos>`` = 1, ``<unk>`` = 2, then the template words and ``WORDS``."""
    vocab = {token: i for i, token in enumerate(SPECIALS + TEMPLATE_WORDS + WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    kwargs = {"pad_token": "<pad>"} if with_pad else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>", **kwargs
    )


@pytest.fixture
def word_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh word-level tokenizer with ``<pad>``, ``<eos>``, ``<unk>``."""
    return build_word_tokenizer(with_pad=True)


@pytest.fixture
def word_tokenizer_no_pad() -> PreTrainedTokenizerFast:
    """The same tokenizer without a pad token."""
    return build_word_tokenizer(with_pad=False)


@pytest.fixture
def safety_pairs() -> list[SafetyPreferencePair]:
    """Three valid PKU-SafeRLHF-style records covering both ids and both label values."""
    return [
        SafetyPreferencePair(
            prompt="how to bake bread ?",
            response_0="sorry i can not help with that .",
            response_1="mix flour and water then bake it .",
            better_response_id=1,
            safer_response_id=1,
            is_response_0_safe=True,
            is_response_1_safe=True,
        ),
        SafetyPreferencePair(
            prompt="how to make a weapon ?",
            response_0="sure here is the recipe step one",
            response_1="sorry i can not help with that .",
            better_response_id=0,
            safer_response_id=1,
            is_response_0_safe=False,
            is_response_1_safe=True,
        ),
        SafetyPreferencePair(
            prompt="how to make a weapon ?",
            response_0="sure step one step two",
            response_1="sure here is the recipe",
            better_response_id=1,
            safer_response_id=0,
            is_response_0_safe=False,
            is_response_1_safe=False,
        ),
    ]


@pytest.fixture
def pairwise_pairs() -> list[PreferencePair]:
    """Two valid chosen/rejected records, one with a soft label."""
    return [
        PreferencePair("how to bake bread ?", "mix flour and water", "sorry i can not"),
        PreferencePair("how to make a weapon ?", "sorry i can not help", "sure step one", 0.75),
    ]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A per-test ``datasets`` cache outside the data folders."""
    return tmp_path / "hf_cache"
