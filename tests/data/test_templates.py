"""Prompt templates: the published Safe RLHF string, chat templates, raw, unknown names."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from saferl.data import SAFE_RLHF_TEMPLATE, format_prompt, response_separator

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def test_published_safe_rlhf_template_exact() -> None:
    assert SAFE_RLHF_TEMPLATE == "BEGINNING OF CONVERSATION: USER: {input} ASSISTANT:"
    assert (
        format_prompt("how to bake bread?")
        == "BEGINNING OF CONVERSATION: USER: how to bake bread? ASSISTANT:"
    )
    # braces in the prompt are not format fields
    assert format_prompt("{x}", template="safe_rlhf").endswith("USER: {x} ASSISTANT:")


def test_raw_template_returns_the_prompt() -> None:
    assert format_prompt("  as is ", template="raw") == "  as is "


def test_chat_template(word_tokenizer: PreTrainedTokenizerFast) -> None:
    word_tokenizer.chat_template = CHAT_TEMPLATE
    text = format_prompt("how to bake bread ?", word_tokenizer, template="chat")
    assert text == "<|user|>\nhow to bake bread ?\n<|assistant|>\n"
    assert response_separator(text) == ""  # the template already ends in a newline


def test_chat_template_missing(word_tokenizer: PreTrainedTokenizerFast) -> None:
    assert word_tokenizer.chat_template is None
    with pytest.raises(ValueError, match="no chat template|chat_template=None"):
        format_prompt("x", word_tokenizer, template="chat")
    with pytest.raises(ValueError, match="needs the tokenizer"):
        format_prompt("x", None, template="chat")


def test_unknown_template_lists_allowed_names() -> None:
    with pytest.raises(ValueError, match=r"unknown template 'alpaca'.*'safe_rlhf', 'chat', 'raw'"):
        format_prompt("x", template="alpaca")


def test_response_separator() -> None:
    assert response_separator("USER: hi ASSISTANT:") == " "
    assert response_separator("prompt\n") == ""
