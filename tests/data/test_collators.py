"""Collators: left-padded prompts, right-padded sequences, exact response masks (checked by
decoding), pair batches, truncation rules, tokenizer requirements."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from saferl.data import (
    DataError,
    PreferencePair,
    PromptRecord,
    SafetyPreferencePair,
    collate_preference_pairs,
    collate_prompts,
    collate_safety_pairs,
    collate_sequences,
    format_prompt,
)

PAD, EOS = 0, 1  # ids in the word tokenizer of conftest.py


def tokens(tokenizer: PreTrainedTokenizerFast, ids: torch.Tensor) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids.tolist())


def template_tokens(prompt: str) -> list[str]:
    """What the word tokenizer makes of the Safe RLHF template around a prompt."""
    return ["BEGINNING", "OF", "CONVERSATION", ":", "USER", ":", *prompt.split(), "ASSISTANT", ":"]


def test_prompts_are_left_padded(word_tokenizer: PreTrainedTokenizerFast) -> None:
    prompts = ["how to bake bread ?", "how to make a weapon with flour ?"]
    batch = collate_prompts(prompts, word_tokenizer, max_prompt_length=64)
    # 8 template tokens + 5 and + 8 prompt words
    assert batch.input_ids.shape == (2, 16) and batch.attention_mask.shape == (2, 16)
    assert batch.input_ids.dtype == torch.long and batch.attention_mask.dtype == torch.bool
    assert batch.attention_mask[0].tolist() == [False] * 3 + [True] * 13
    assert batch.attention_mask[1].all()
    assert batch.input_ids[0, :3].tolist() == [PAD] * 3
    for row, prompt in enumerate(prompts):
        real = batch.input_ids[row][batch.attention_mask[row]]
        assert tokens(word_tokenizer, real) == template_tokens(prompt)


def test_long_prompts_keep_their_end(word_tokenizer: PreTrainedTokenizerFast) -> None:
    batch = collate_prompts(["how to bake bread ?", "sure"], word_tokenizer, max_prompt_length=5)
    assert batch.input_ids.shape == (2, 5) and batch.attention_mask.all()
    assert tokens(word_tokenizer, batch.input_ids[0]) == ["bake", "bread", "?", "ASSISTANT", ":"]
    assert tokens(word_tokenizer, batch.input_ids[1]) == ["USER", ":", "sure", "ASSISTANT", ":"]


def test_sequences_are_right_padded_with_exact_response_mask(
    word_tokenizer: PreTrainedTokenizerFast,
) -> None:
    prompts = ["how to bake bread ?", "how to make a weapon ?"]
    responses = ["mix flour and water then bake it .", "sorry"]
    batch = collate_sequences(prompts, responses, word_tokenizer, max_length=64)
    # row 0: 13 prompt + 8 response + EOS = 22; row 1: 14 prompt + 1 response + EOS = 16
    assert batch.input_ids.shape == (2, 22)
    lengths = batch.attention_mask.sum(dim=1).tolist()
    assert lengths == [22, 16]
    assert batch.input_ids[1, 16:].tolist() == [PAD] * 6
    assert not batch.attention_mask[1, 16:].any() and not batch.response_mask[1, 16:].any()
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ids = batch.input_ids[row]
        assert tokens(word_tokenizer, ids[batch.response_mask[row]]) == [
            *response.split(),
            "<eos>",
        ]
        prompt_mask = batch.attention_mask[row] & ~batch.response_mask[row]
        assert tokens(word_tokenizer, ids[prompt_mask]) == template_tokens(prompt)
        # the response mask is one contiguous block ending at the last real token (EOS)
        positions = batch.response_mask[row].nonzero().flatten()
        assert positions.tolist() == list(range(len(template_tokens(prompt)), lengths[row]))
        assert ids[lengths[row] - 1].item() == EOS
    assert not (batch.response_mask & ~batch.attention_mask).any()


def test_sequence_truncation_keeps_prompt_and_cuts_response(
    word_tokenizer: PreTrainedTokenizerFast,
) -> None:
    # prompt = 13 tokens; room for 3 response tokens: EOS does not fit, the response was cut
    batch = collate_sequences(
        ["how to bake bread ?"], ["mix flour and water"], word_tokenizer, max_length=16
    )
    assert batch.input_ids.shape == (1, 16)
    assert tokens(word_tokenizer, batch.input_ids[0][batch.response_mask[0]]) == [
        "mix",
        "flour",
        "and",
    ]
    # exactly enough room: the EOS fits
    batch = collate_sequences(["how to bake bread ?"], ["mix"], word_tokenizer, max_length=15)
    assert tokens(word_tokenizer, batch.input_ids[0][batch.response_mask[0]]) == ["mix", "<eos>"]


@pytest.mark.parametrize("max_length", [12, 13])
def test_prompt_without_room_for_a_response_is_an_error(
    word_tokenizer: PreTrainedTokenizerFast, max_length: int
) -> None:
    with pytest.raises(DataError, match="record 1, field 'prompt'.*found 13 tokens"):
        collate_sequences(
            ["sure", "how to bake bread ?"], ["a", "b"], word_tokenizer, max_length=max_length
        )


def test_append_eos_false(word_tokenizer: PreTrainedTokenizerFast) -> None:
    batch = collate_sequences(["sure"], ["mix flour"], word_tokenizer, 64, append_eos=False)
    assert tokens(word_tokenizer, batch.input_ids[0][batch.response_mask[0]]) == ["mix", "flour"]


def test_tokenizer_without_pad_token(word_tokenizer_no_pad: PreTrainedTokenizerFast) -> None:
    for call in (
        lambda: collate_prompts(["x"], word_tokenizer_no_pad, 8),
        lambda: collate_sequences(["x"], ["y"], word_tokenizer_no_pad, 32),
    ):
        with pytest.raises(ValueError, match="no pad token.*saferl.models"):
            call()
    assert word_tokenizer_no_pad.pad_token is None  # not modified


def test_chat_template_sequences(word_tokenizer: PreTrainedTokenizerFast) -> None:
    word_tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT :\n{% endif %}"
    )
    batch = collate_sequences(
        ["how to bake bread ?"], ["mix it"], word_tokenizer, 32, template="chat"
    )
    ids = batch.input_ids[0][batch.attention_mask[0]]
    assert tokens(word_tokenizer, ids) == [
        *"how to bake bread ? ASSISTANT :".split(),
        "mix",
        "it",
        "<eos>",
    ]
    assert tokens(word_tokenizer, batch.input_ids[0][batch.response_mask[0]]) == [
        "mix",
        "it",
        "<eos>",
    ]


def test_preference_pairs(
    word_tokenizer: PreTrainedTokenizerFast, pairwise_pairs: list[PreferencePair]
) -> None:
    batch = collate_preference_pairs(pairwise_pairs, word_tokenizer, max_length=64)
    assert batch.chosen.input_ids.shape == batch.rejected.input_ids.shape  # common seq_len
    assert batch.preference_prob.tolist() == [1.0, 0.75]
    assert batch.chosen_is_safe is None and batch.rejected_is_safe is None
    for row, pair in enumerate(pairwise_pairs):
        chosen = batch.chosen.input_ids[row][batch.chosen.response_mask[row]]
        rejected = batch.rejected.input_ids[row][batch.rejected.response_mask[row]]
        assert tokens(word_tokenizer, chosen) == [*pair.chosen.split(), "<eos>"]
        assert tokens(word_tokenizer, rejected) == [*pair.rejected.split(), "<eos>"]
    stacked = batch.concatenated()
    assert stacked.input_ids.shape == (4, batch.chosen.input_ids.shape[1])
    assert torch.equal(stacked.response_mask[2:], batch.rejected.response_mask)


def _response_tokens(tokenizer: PreTrainedTokenizerFast, batch, row: int) -> list[str]:  # noqa: ANN001
    return tokens(tokenizer, batch.input_ids[row][batch.response_mask[row]])[:-1]  # drop EOS


def test_safety_pairs_by_helpfulness_and_by_safety(
    word_tokenizer: PreTrainedTokenizerFast, safety_pairs: list[SafetyPreferencePair]
) -> None:
    by_better = collate_preference_pairs(safety_pairs, word_tokenizer, max_length=64)
    by_safer = collate_safety_pairs(safety_pairs, word_tokenizer, max_length=64)
    for row, pair in enumerate(safety_pairs):
        assert _response_tokens(word_tokenizer, by_better.chosen, row) == pair.better.split()
        assert _response_tokens(word_tokenizer, by_better.rejected, row) == pair.worse.split()
        assert _response_tokens(word_tokenizer, by_safer.chosen, row) == pair.safer.split()
        assert _response_tokens(word_tokenizer, by_safer.rejected, row) == pair.unsafer.split()
    # conftest pairs: (better, safer, safe0, safe1) = (1, 1, T, T), (0, 1, F, T), (1, 0, F, F)
    assert by_better.chosen_is_safe.tolist() == [True, False, False]
    assert by_better.rejected_is_safe.tolist() == [True, True, False]
    assert by_safer.chosen_is_safe.tolist() == [True, True, False]
    assert by_safer.rejected_is_safe.tolist() == [True, False, False]
    assert by_safer.preference_prob.tolist() == [1.0, 1.0, 1.0]


def test_mixed_or_wrong_pair_types(
    word_tokenizer: PreTrainedTokenizerFast,
    safety_pairs: list[SafetyPreferencePair],
    pairwise_pairs: list[PreferencePair],
) -> None:
    with pytest.raises(TypeError, match="all be PreferencePair or all SafetyPreferencePair"):
        collate_preference_pairs([safety_pairs[0], pairwise_pairs[0]], word_tokenizer, 64)
    with pytest.raises(TypeError, match="SafetyPreferencePair"):
        collate_safety_pairs(pairwise_pairs, word_tokenizer, 64)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        collate_preference_pairs([], word_tokenizer, 64)
    with pytest.raises(TypeError):
        collate_prompts([PromptRecord("x")], word_tokenizer, 8)  # type: ignore[list-item]


def _byte_level_bpe() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE, where tokenising prompt + response as one string would merge
    characters across the boundary."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["ASSISTANT: sure, here is bread. USER: bake bread?"] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


def test_response_mask_exact_with_byte_level_bpe() -> None:
    tokenizer = _byte_level_bpe()
    prompt, response = "bake bread?", "sure, here is bread."
    batch = collate_sequences([prompt], [response], tokenizer, max_length=128)
    ids = batch.input_ids[0]
    response_ids = ids[batch.response_mask[0]].tolist()
    assert response_ids[-1] == tokenizer.eos_token_id
    # the response tokens decode to exactly the separator space + the response
    assert tokenizer.decode(response_ids[:-1]) == " " + response
    prompt_ids = ids[batch.attention_mask[0] & ~batch.response_mask[0]].tolist()
    assert tokenizer.decode(prompt_ids) == format_prompt(prompt)
