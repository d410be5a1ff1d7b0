"""Tokenising collators: text into typed, padded tensor batches.

Conventions (one place, used by every collator):

* **Masks mean "True = real/valid"** and are ``torch.bool``; ids are ``torch.long``.
* **Prompts** are formatted with a template (:func:`saferl.data.format_prompt`) and tokenised with
  the tokenizer's special tokens (e.g. BOS), except for ``template="chat"`` whose rendered text
  already holds them.
* **Responses** are tokenised *separately* as ``response_separator(prompt) + response.lstrip()``
  without special tokens, then EOS is appended (``append_eos=True``), and the two id lists are
  concatenated. Tokenising ``prompt + response`` as one string would let a BPE tokenizer merge
  characters across the boundary, so the first response token could start inside the prompt and
  a mask computed from the prompt's token count would be shifted by one. Concatenating ids makes
  ``response_mask`` exact: True on the response tokens and the appended EOS, nowhere else. The
  leading separator (a space after ``"ASSISTANT:"``) gives the response's first word the
  space-prefixed token a model produces when it generates after the prompt.
* **Generation prompts are LEFT-padded** (:class:`PromptBatch`) so every row's last prompt token
  sits at the same position and generation appends to all rows at once; a prompt longer than
  ``max_prompt_length`` keeps its *last* tokens (the template's ``ASSISTANT:`` end, which the model
  continues from), dropping the beginning (and a leading BOS).
* **Training sequences are RIGHT-padded** (:class:`SequenceBatch`): a row is
  ``prompt ids + response ids (+ EOS) + padding``. Truncation to ``max_length`` keeps the whole
  prompt and cuts the response's end; the EOS survives only if it fits (a cut response did not
  end). A prompt that leaves no room for one response token is an error, not a silent cut.
* The tokenizer must have a pad token: saferl.models adds one when it builds a tokenizer. The
  collators never modify the tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from saferl.data.batches import PairBatch, PromptBatch, SequenceBatch
from saferl.data.errors import DataError
from saferl.data.records import PreferencePair, SafetyPreferencePair
from saferl.data.templates import format_prompt, response_separator

__all__ = [
    "PromptBatch",
    "SequenceBatch",
    "PairBatch",
    "collate_prompts",
    "collate_sequences",
    "collate_preference_pairs",
    "collate_safety_pairs",
]


# ----------------------------------------------------------------------------------------------
# Tokenising


def _pad_token_id(tokenizer: Any) -> int:
    pad_token_id = getattr(tokenizer, "pad_token_id", None)
    if pad_token_id is None:
        raise ValueError(
            f"the tokenizer {type(tokenizer).__name__} (name_or_path="
            f"{getattr(tokenizer, 'name_or_path', '?')!r}) has no pad token; build it with "
            "saferl.models, which adds one (the collators do not modify tokenizers)"
        )
    return int(pad_token_id)


def _eos_token_id(tokenizer: Any) -> int:
    eos_token_id = getattr(tokenizer, "eos_token_id", None)
    if eos_token_id is None:
        raise ValueError(
            f"append_eos=True needs an EOS token, but the tokenizer {type(tokenizer).__name__} "
            "has eos_token_id=None; set one (saferl.models does) or pass append_eos=False"
        )
    return int(eos_token_id)


def _tokenize(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    encoded = tokenizer(texts, add_special_tokens=add_special_tokens, return_attention_mask=False)
    return [list(ids) for ids in encoded["input_ids"]]


def _check_batch(items: Sequence[Any], what: str) -> None:
    if len(items) == 0:
        raise ValueError(f"a batch needs at least one {what}, found an empty sequence")


def _check_texts(texts: Sequence[Any], name: str) -> None:
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"{name} must be strings, found {type(text).__name__} at position {index} "
                "(pass record.prompt / dataset.prompts for records)"
            )


def _tokenize_prompts(
    prompts: Sequence[str], tokenizer: Any, template: str, source: str
) -> tuple[list[list[int]], list[str]]:
    """Formatted prompt texts and their ids (with special tokens unless the template is chat)."""
    _check_texts(prompts, "prompts")
    formatted = [format_prompt(prompt, tokenizer, template) for prompt in prompts]
    ids = _tokenize(tokenizer, formatted, add_special_tokens=template != "chat")
    for index, prompt_ids in enumerate(ids):
        if not prompt_ids:
            raise DataError(
                source,
                index=index,
                field="prompt",
                expected="a prompt that tokenises to at least one token",
                found=f"no tokens for {formatted[index]!r}",
            )
    return ids, formatted


def _tokenize_responses(
    responses: Sequence[str], formatted_prompts: list[str], tokenizer: Any
) -> list[list[int]]:
    _check_texts(responses, "responses")
    texts = [
        response_separator(prompt) + response.lstrip()
        for prompt, response in zip(formatted_prompts, responses, strict=True)
    ]
    return _tokenize(tokenizer, texts, add_special_tokens=False)


def _join(
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    max_length: int,
    eos_token_id: int | None,
    source: str,
) -> list[tuple[list[int], int]]:
    """``(ids, prompt_len)`` per row: prompt ids + response ids (+ EOS), response truncated."""
    rows = []
    for index, (prompt, response) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        if len(prompt) >= max_length:
            raise DataError(
                source,
                index=index,
                field="prompt",
                expected=f"a formatted prompt of fewer than max_length={max_length} tokens "
                "(room for at least one response token); raise max_length or shorten the prompt",
                found=f"{len(prompt)} tokens",
            )
        response = response + ([eos_token_id] if eos_token_id is not None else [])
        if not response:
            raise DataError(
                source,
                index=index,
                field="response",
                expected="a response with at least one token (or append_eos=True)",
                found="no tokens",
            )
        rows.append((prompt + response[: max_length - len(prompt)], len(prompt)))
    return rows


def _pad_right(rows: list[tuple[list[int], int]], pad_token_id: int, seq_len: int) -> SequenceBatch:
    batch = len(rows)
    input_ids = torch.full((batch, seq_len), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, seq_len), dtype=torch.bool)
    response_mask = torch.zeros((batch, seq_len), dtype=torch.bool)
    for row, (ids, prompt_len) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = True
        response_mask[row, prompt_len : len(ids)] = True
    return SequenceBatch(input_ids, attention_mask, response_mask)


# ----------------------------------------------------------------------------------------------
# Collators


def collate_prompts(
    prompts: Sequence[str],
    tokenizer: Any,
    max_prompt_length: int,
    *,
    template: str = "safe_rlhf",
) -> PromptBatch:
    """Format, tokenise and LEFT-pad prompts for generation.

    Args:
        prompts: ``batch`` user requests (not yet formatted).
        tokenizer: a ``transformers`` tokenizer with a pad token.
        max_prompt_length: at most this many tokens per prompt; longer prompts keep their last
            ``max_prompt_length`` tokens (the end of the template, which generation continues).
        template: see :func:`saferl.data.format_prompt`.

    Returns:
        A :class:`PromptBatch` of shape ``(batch, prompt_len)``, ``prompt_len`` = the longest
        (truncated) prompt.
    """
    _check_batch(prompts, "prompt")
    if max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be >= 1, found {max_prompt_length}")
    pad_token_id = _pad_token_id(tokenizer)
    ids, _ = _tokenize_prompts(prompts, tokenizer, template, "collate_prompts")
    ids = [prompt_ids[-max_prompt_length:] for prompt_ids in ids]
    prompt_len = max(len(prompt_ids) for prompt_ids in ids)
    input_ids = torch.full((len(ids), prompt_len), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), prompt_len), dtype=torch.bool)
    for row, prompt_ids in enumerate(ids):
        # left padding: the real tokens fill the row's last len(prompt_ids) positions
        input_ids[row, prompt_len - len(prompt_ids) :] = torch.tensor(prompt_ids, dtype=torch.long)
        attention_mask[row, prompt_len - len(prompt_ids) :] = True
    return PromptBatch(input_ids, attention_mask)


def collate_sequences(
    prompts: Sequence[str],
    responses: Sequence[str],
    tokenizer: Any,
    max_length: int,
    append_eos: bool = True,
    *,
    template: str = "safe_rlhf",
) -> SequenceBatch:
    """Tokenise prompt + response pairs into RIGHT-padded sequences with an exact response mask.

    Args:
        prompts: ``batch`` user requests (not yet formatted).
        responses: ``batch`` responses (without EOS).
        tokenizer: a ``transformers`` tokenizer with a pad token (and EOS if ``append_eos``).
        max_length: at most this many tokens per sequence. The whole prompt is kept and the
            response (with its EOS) is cut to fit; a prompt of ``max_length`` tokens or more is a
            :class:`DataError`.
        append_eos: append the EOS token to every response (it is part of the response mask).
        template: see :func:`saferl.data.format_prompt`.

    Returns:
        A :class:`SequenceBatch` of shape ``(batch, seq_len)``, ``seq_len`` = the longest row.
    """
    _check_batch(prompts, "prompt")
    if len(prompts) != len(responses):
        raise ValueError(
            f"prompts and responses must have one entry each per row, found {len(prompts)} "
            f"prompts and {len(responses)} responses"
        )
    pad_token_id = _pad_token_id(tokenizer)
    eos_token_id = _eos_token_id(tokenizer) if append_eos else None
    prompt_ids, formatted = _tokenize_prompts(prompts, tokenizer, template, "collate_sequences")
    response_ids = _tokenize_responses(responses, formatted, tokenizer)
    rows = _join(prompt_ids, response_ids, max_length, eos_token_id, "collate_sequences")
    return _pad_right(rows, pad_token_id, max(len(ids) for ids, _ in rows))


def _collate_ordered_pairs(
    prompts: list[str],
    chosen: list[str],
    rejected: list[str],
    preference_prob: list[float],
    chosen_is_safe: list[bool] | None,
    rejected_is_safe: list[bool] | None,
    tokenizer: Any,
    max_length: int,
    template: str,
    append_eos: bool,
    source: str,
) -> PairBatch:
    pad_token_id = _pad_token_id(tokenizer)
    eos_token_id = _eos_token_id(tokenizer) if append_eos else None
    prompt_ids, formatted = _tokenize_prompts(prompts, tokenizer, template, source)  # once for both
    chosen_rows = _join(
        prompt_ids,
        _tokenize_responses(chosen, formatted, tokenizer),
        max_length,
        eos_token_id,
        source,
    )
    rejected_rows = _join(
        prompt_ids,
        _tokenize_responses(rejected, formatted, tokenizer),
        max_length,
        eos_token_id,
        source,
    )
    seq_len = max(len(ids) for ids, _ in chosen_rows + rejected_rows)  # common, for stacking
    return PairBatch(
        chosen=_pad_right(chosen_rows, pad_token_id, seq_len),
        rejected=_pad_right(rejected_rows, pad_token_id, seq_len),
        preference_prob=torch.tensor(preference_prob, dtype=torch.float32),
        chosen_is_safe=None
        if chosen_is_safe is None
        else torch.tensor(chosen_is_safe, dtype=torch.bool),
        rejected_is_safe=None
        if rejected_is_safe is None
        else torch.tensor(rejected_is_safe, dtype=torch.bool),
    )


def collate_preference_pairs(
    pairs: Sequence[PreferencePair] | Sequence[SafetyPreferencePair],
    tokenizer: Any,
    max_length: int,
    *,
    template: str = "safe_rlhf",
    append_eos: bool = True,
) -> PairBatch:
    """Collate preference pairs ordered by preference (reward models, DPO family).

    * :class:`PreferencePair`: chosen = ``chosen``, rejected = ``rejected``, ``preference_prob``
      from the record, no safety labels.
    * :class:`SafetyPreferencePair`: chosen = the *better* (more helpful) response, rejected = the
      worse one, ``preference_prob`` = 1, and their safety labels.

    Args:
        pairs: ``batch`` records, all of one of the two types.
        tokenizer: a ``transformers`` tokenizer with a pad token (and EOS if ``append_eos``).
        max_length: at most this many tokens per sequence (see :func:`collate_sequences`).
        template: see :func:`saferl.data.format_prompt`.
        append_eos: append EOS to every response.

    Returns:
        A :class:`PairBatch`; its two sequence batches share one ``seq_len``.
    """
    _check_batch(pairs, "pair")
    if all(isinstance(pair, PreferencePair) for pair in pairs):
        return _collate_ordered_pairs(
            [pair.prompt for pair in pairs],
            [pair.chosen for pair in pairs],
            [pair.rejected for pair in pairs],
            [pair.preference_prob for pair in pairs],
            None,
            None,
            tokenizer,
            max_length,
            template,
            append_eos,
            "collate_preference_pairs",
        )
    if all(isinstance(pair, SafetyPreferencePair) for pair in pairs):
        return _collate_ordered_pairs(
            [pair.prompt for pair in pairs],
            [pair.better for pair in pairs],
            [pair.worse for pair in pairs],
            [1.0] * len(pairs),
            [pair.better_is_safe for pair in pairs],
            [pair.worse_is_safe for pair in pairs],
            tokenizer,
            max_length,
            template,
            append_eos,
            "collate_preference_pairs",
        )
    found = sorted({type(pair).__name__ for pair in pairs})
    raise TypeError(
        f"pairs must all be PreferencePair or all SafetyPreferencePair, found types {found}"
    )


def collate_safety_pairs(
    pairs: Sequence[SafetyPreferencePair],
    tokenizer: Any,
    max_length: int,
    *,
    template: str = "safe_rlhf",
    append_eos: bool = True,
) -> PairBatch:
    """Collate safety pairs ordered by safety (cost models): chosen = the *safer* response,
    rejected = the less safe one, with both safety labels (the signs ``s`` of docs/algorithms.md §3)
    and ``preference_prob`` = 1.

    Args:
        pairs: ``batch`` :class:`SafetyPreferencePair` records.
        tokenizer: a ``transformers`` tokenizer with a pad token (and EOS if ``append_eos``).
        max_length: at most this many tokens per sequence (see :func:`collate_sequences`).
        template: see :func:`saferl.data.format_prompt`.
        append_eos: append EOS to every response.

    Returns:
        A :class:`PairBatch` with ``chosen_is_safe`` and ``rejected_is_safe`` set.
    """
    _check_batch(pairs, "pair")
    if not all(isinstance(pair, SafetyPreferencePair) for pair in pairs):
        found = sorted({type(pair).__name__ for pair in pairs})
        raise TypeError(f"pairs must all be SafetyPreferencePair, found types {found}")
    return _collate_ordered_pairs(
        [pair.prompt for pair in pairs],
        [pair.safer for pair in pairs],
        [pair.unsafer for pair in pairs],
        [1.0] * len(pairs),
        [pair.safer_is_safe for pair in pairs],
        [pair.unsafer_is_safe for pair in pairs],
        tokenizer,
        max_length,
        template,
        append_eos,
        "collate_safety_pairs",
    )
