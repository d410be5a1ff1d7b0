"""Prompt templates: a user request into the text the policy continues.

Three templates:

* ``"safe_rlhf"``: the published Safe RLHF / PKU-SafeRLHF template
  ``"BEGINNING OF CONVERSATION: USER: {input} ASSISTANT:"``;
* ``"chat"``: the tokenizer's own chat template, one user turn, with the generation prompt;
* ``"raw"``: the prompt unchanged (already formatted, or a base model without a template).

The response follows the formatted prompt after :func:`response_separator` (a single space unless
the formatted prompt already ends in whitespace, as chat templates usually do).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "SAFE_RLHF_TEMPLATE",
    "TEMPLATE_NAMES",
    "format_prompt",
    "response_separator",
]

SAFE_RLHF_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {input} ASSISTANT:"
"""The prompt template of Safe RLHF (Dai et al., 2024) and the PKU-SafeRLHF models."""

TEMPLATE_NAMES: tuple[str, ...] = ("safe_rlhf", "chat", "raw")
"""The allowed ``template`` values."""


def format_prompt(prompt: str, tokenizer: Any | None = None, template: str = "safe_rlhf") -> str:
    """Format a user request with a template.

    Args:
        prompt: the user's request.
        tokenizer: a ``transformers`` tokenizer; needed only for ``template="chat"``.
        template: one of :data:`TEMPLATE_NAMES`.

    Returns:
        The formatted prompt text (the response is appended after it).

    Raises:
        ValueError: an unknown template name, or ``"chat"`` without a tokenizer that has a chat
            template.
    """
    if template == "safe_rlhf":
        return SAFE_RLHF_TEMPLATE.format(input=prompt)
    if template == "raw":
        return prompt
    if template == "chat":
        if tokenizer is None:
            raise ValueError(
                "template='chat' needs the tokenizer (its chat template formats the prompt); "
                "pass tokenizer=..., or use template='safe_rlhf' or 'raw'"
            )
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"template='chat' needs a tokenizer with a chat template, but "
                f"{type(tokenizer).__name__} (name_or_path="
                f"{getattr(tokenizer, 'name_or_path', '?')!r}) has tokenizer.chat_template=None; "
                "use a chat model's tokenizer, set tokenizer.chat_template, or use "
                "template='safe_rlhf' or 'raw'"
            )
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    raise ValueError(f"unknown template {template!r}; allowed: {list(TEMPLATE_NAMES)}")


def response_separator(formatted_prompt: str) -> str:
    """The text between a formatted prompt and its response: ``" "``, or ``""`` when the
    prompt already ends in whitespace (e.g. a chat template's trailing newline).

    The separator belongs to the response when tokenising (``separator + response.lstrip()``),
    so a BPE tokenizer sees the response's first word with its leading space, as the policy
    produces it when it generates after the prompt.
    """
    if not formatted_prompt or formatted_prompt[-1].isspace():
        return ""
    return " "
