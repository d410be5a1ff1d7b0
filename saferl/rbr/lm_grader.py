"""The LM grader of a spec's propositions, in one process: any causal LM through transformers.

For each (response, proposition) it fills the spec's prompt template with the proposition's
question and the response, runs the model once over the prompt, and reads
``φ = P(yes) / (P(yes) + P(no))`` from the next-token distribution
(:func:`saferl.core.rbr.yes_probability`). Prompts are batched with right padding; each row's
logits are read at its own last token.

:func:`grade_with_lm` runs the model in this process; :func:`grade_with_group` sends the same
prompts to a :class:`~saferl.runtime.judging.JudgeGroup` (a Ray actor group of DeepSpeed
inference engines, sharded over its ranks, batched on each) and reads the same probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from saferl.core.rbr import yes_probability
from saferl.rbr.spec import RBRSpec

__all__ = [
    "YES_SPELLINGS",
    "NO_SPELLINGS",
    "answer_token_ids",
    "grade_with_group",
    "grade_with_lm",
]

YES_SPELLINGS = ("yes", " yes", "Yes", " Yes")
NO_SPELLINGS = ("no", " no", "No", " No")


def answer_token_ids(tokenizer, spellings: Sequence[str]) -> torch.Tensor:
    """The ids of the spellings that ``tokenizer`` encodes as one known token (e.g. ``yes`` and
    `` yes`` for a BPE vocabulary), without repeats.

    Raises:
        ValueError: no spelling is a single known token.
    """
    ids: list[int] = []
    for spelling in spellings:
        encoded = tokenizer.encode(spelling, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] != tokenizer.unk_token_id and encoded[0] not in ids:
            ids.append(encoded[0])
    if not ids:
        raise ValueError(
            f"the grader's tokenizer has no single token for any of {list(spellings)}: expected "
            "at least one, to read the answer's probability from the next-token distribution."
        )
    return torch.tensor(ids, dtype=torch.int64)


@torch.no_grad()
def grade_with_lm(
    model: torch.nn.Module,
    tokenizer,
    spec: RBRSpec,
    responses: Sequence[str],
    propositions: Sequence[str] | None = None,
    *,
    batch_size: int = 16,
    use_chat_template: bool = False,
) -> torch.Tensor:
    """The LM grader's proposition probabilities for each response.

    Args:
        model: a causal LM returning ``logits`` ``(batch, seq, vocab)`` (a Hugging Face model).
        tokenizer: its tokenizer.
        spec: the spec whose template and questions to use.
        responses: the assistant messages to grade.
        propositions: the simple propositions to grade (default: all, in the spec's order).
        batch_size: prompts per forward pass.
        use_chat_template: wrap each filled prompt as a user turn of the tokenizer's chat
            template (with the generation prompt), for chat-tuned graders.

    Returns:
        ``(num_responses, num_propositions)`` float32 probabilities in ``[0, 1]``.
    """
    names = list(spec.simple_propositions) if propositions is None else list(propositions)
    yes_ids = answer_token_ids(tokenizer, YES_SPELLINGS)
    no_ids = answer_token_ids(tokenizer, NO_SPELLINGS)
    if set(yes_ids.tolist()) & set(no_ids.tolist()):
        raise ValueError("the grader's tokenizer maps a 'yes' and a 'no' spelling to one token.")
    prompts = [spec.grader_prompt(name, response) for response in responses for name in names]
    token_lists = [_encode(tokenizer, prompt, use_chat_template) for prompt in prompts]
    device = next(model.parameters()).device
    probabilities = []
    for start in range(0, len(token_lists), batch_size):
        batch = token_lists[start : start + batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.zeros(len(batch), width, dtype=torch.int64)  # right padding (id 0)
        attention_mask = torch.zeros(len(batch), width, dtype=torch.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        logits = model(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)
        ).logits  # (batch, width, vocab)
        last = torch.tensor([len(ids) - 1 for ids in batch], device=device)
        next_token = logits[torch.arange(len(batch), device=device), last].float()  # (batch, vocab)
        probabilities.append(yes_probability(next_token, yes_ids.to(device), no_ids.to(device)))
    if not probabilities:
        return torch.zeros(len(responses), len(names))
    return torch.cat(probabilities).cpu().reshape(len(responses), len(names))


def grade_with_group(
    group,
    spec: RBRSpec,
    responses: Sequence[str],
    propositions: Sequence[str] | None = None,
    *,
    use_chat_template: bool = False,
) -> torch.Tensor:
    """:func:`grade_with_lm` on a :class:`~saferl.runtime.judging.JudgeGroup` (a causal-LM judge
    group; its tokenizer is the grader's): the same prompts, the same reading, in float64 on the
    ranks.

    Returns:
        ``(num_responses, num_propositions)`` float32 probabilities in ``[0, 1]``.
    """
    tokenizer = group.tokenizer
    names = list(spec.simple_propositions) if propositions is None else list(propositions)
    yes_ids = answer_token_ids(tokenizer, YES_SPELLINGS)
    no_ids = answer_token_ids(tokenizer, NO_SPELLINGS)
    if set(yes_ids.tolist()) & set(no_ids.tolist()):
        raise ValueError("the grader's tokenizer maps a 'yes' and a 'no' spelling to one token.")
    if not responses or not names:
        return torch.zeros(len(responses), len(names))
    prompts = [spec.grader_prompt(name, response) for response in responses for name in names]
    rows = [_encode(tokenizer, prompt, use_chat_template) for prompt in prompts]
    readings = group.next_token_readings(rows, [yes_ids.tolist(), no_ids.tolist()])
    return readings.share(0, 1).float().reshape(len(responses), len(names))


def _encode(tokenizer, prompt: str, use_chat_template: bool) -> list[int]:
    if use_chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError(f"the grader's tokenizer encodes the prompt {prompt[:60]!r} as nothing.")
    return list(ids)
