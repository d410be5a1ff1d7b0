"""load_tokenizer from a local folder and ensure_pad_token."""

from __future__ import annotations

import pytest

from saferl.models import (
    PAD_TOKEN,
    build_policy,
    build_score_model,
    ensure_pad_token,
    load_tokenizer,
)


def test_load_tokenizer_from_local_path(tokenizer_dir) -> None:
    tokenizer = load_tokenizer(str(tokenizer_dir))
    assert tokenizer.padding_side == "right"
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1
    assert tokenizer("bake bread")["input_ids"] == tokenizer.convert_tokens_to_ids(
        ["bake", "bread"]
    )
    assert load_tokenizer(str(tokenizer_dir), padding_side="left").padding_side == "left"
    with pytest.raises(ValueError, match="padding_side"):
        load_tokenizer(str(tokenizer_dir), padding_side="middle")


def test_ensure_pad_token_keeps_existing(tokenizer) -> None:
    size = len(tokenizer)
    assert ensure_pad_token(tokenizer) is False
    assert len(tokenizer) == size and tokenizer.pad_token_id == 0


def test_ensure_pad_token_adds_distinct_pad(tokenizer_dir_no_pad) -> None:
    tokenizer = load_tokenizer(str(tokenizer_dir_no_pad))
    size = len(tokenizer)
    assert tokenizer.pad_token is None
    assert ensure_pad_token(tokenizer) is True
    assert tokenizer.pad_token == PAD_TOKEN
    assert len(tokenizer) == size + 1
    assert tokenizer.pad_token_id == size  # a new id, not EOS
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert ensure_pad_token(tokenizer) is False


def test_ensure_pad_token_replaces_pad_equal_to_eos(tokenizer_dir_no_pad) -> None:
    tokenizer = load_tokenizer(str(tokenizer_dir_no_pad))
    tokenizer.pad_token = tokenizer.eos_token  # the common shortcut this project refuses
    assert ensure_pad_token(tokenizer) is True
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_builders_require_distinct_pad(tokenizer_dir_no_pad, make_tiny_spec) -> None:
    tokenizer = load_tokenizer(str(tokenizer_dir_no_pad))
    spec = make_tiny_spec(len(tokenizer))
    with pytest.raises(ValueError, match="ensure_pad_token"):
        build_policy(spec, tokenizer)
    with pytest.raises(ValueError, match="ensure_pad_token"):
        build_score_model(spec, tokenizer)


@pytest.mark.parametrize("kind", ["policy", "score"])
def test_embeddings_resized_after_pad_added(tokenizer_dir_no_pad, make_tiny_spec, kind) -> None:
    tokenizer = load_tokenizer(str(tokenizer_dir_no_pad))
    spec = make_tiny_spec(len(tokenizer))  # sized before <pad> is added
    ensure_pad_token(tokenizer)
    builder = build_policy if kind == "policy" else build_score_model
    model = builder(spec, tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    if kind == "policy":
        assert model.get_output_embeddings().out_features == len(tokenizer)
        assert model.generation_config.pad_token_id == tokenizer.pad_token_id
