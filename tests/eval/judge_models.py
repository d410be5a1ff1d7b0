"""Tiny judge models built in code and saved in Hugging Face format (nothing is downloaded).

* :func:`make_tokenizer`: a word-level tokenizer (split on whitespace) with a chat template,
  the words ``safe`` and ``unsafe`` and, optionally, the whitespace tokens ``\\n\\n`` and ``\\n``
  (which cannot come from text, only from generation).
* :func:`save_random_llama`: a 2-layer Llama with random weights: non-trivial ``P(unsafe)``.
* :func:`save_transition_gpt2`: a GPT-2 whose greedy next token depends on the current token
  only, through a table (attention and MLP outputs zeroed, one-hot embeddings, an untied head):
  a controlled continuation such as ``\\n\\n unsafe \\n S1 , S10 <eos>``.
* :func:`save_classifier`: a GPT-2 sequence classifier with the given ``id2label``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

SPECIALS = ("<pad>", "<eos>", "<unk>")
WORDS = tuple(
    "user assistant : verdict safe unsafe S1 S10 , how to bake bread make a weapon sure here is "
    "the recipe sorry i can not help fine bad yes no".split()
)
#: Renders a conversation as ``user : <prompt> assistant : <response> verdict :``.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}verdict :{% endif %}"
)


def make_tokenizer(whitespace_tokens: bool = False, extra_words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """``extra_words`` (those not in :data:`WORDS`) get ids after the others, so that a judge reads
    them rather than ``<unk>``."""
    words = WORDS + (("\n\n", "\n") if whitespace_tokens else ())
    words += tuple(dict.fromkeys(word for word in extra_words if word not in words and word not in SPECIALS))
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_random_llama(folder: Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.5,  # large weights: P(unsafe) far from 1/2 and different per row
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_transition_gpt2(
    folder: Path, tokenizer: PreTrainedTokenizerFast, table: dict[str, str]
) -> Path:
    """``table[word] = next word``: greedy decoding follows it from a row's last token."""
    vocab = len(tokenizer)
    width = 64
    assert vocab <= width
    config = GPT2Config(
        vocab_size=vocab,
        n_embd=width,
        n_layer=1,
        n_head=2,
        n_positions=128,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.wte.weight.copy_(torch.eye(vocab, width))
        model.transformer.wpe.weight.zero_()
        for block in model.transformer.h:
            for projection in (block.attn.c_proj, block.mlp.c_proj):
                projection.weight.zero_()
                projection.bias.zero_()
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.ln_f.bias.zero_()
        model.lm_head.weight.zero_()
        for word, following in table.items():
            source = tokenizer.convert_tokens_to_ids(word)
            target = tokenizer.convert_tokens_to_ids(following)
            model.lm_head.weight[target, source] = 10.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_classifier(
    folder: Path, tokenizer: PreTrainedTokenizerFast, id2label: dict[int, str], seed: int = 0
) -> Path:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        initializer_range=0.5,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
