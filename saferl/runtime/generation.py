"""Seeded, rank-count-independent generation with Hugging Face ``generate``.

``torch.multinomial`` inside ``generate`` draws from one global generator, so a row's sample
depends on which other rows share its batch (and hence on the number of ranks). Here ``generate``
runs in greedy mode with one extra logits processor, :class:`SeededSampler`, placed last: it
applies the temperature, top-k and top-p warpers itself, draws each row's next token with its own
``torch.Generator`` seeded from ``(seed, global row index, step)`` and returns logits that are
``-inf`` except at the drawn token, which greedy selection then picks. A row's response is thus
a function of its prompt, its global index and the seed only: identical for any split of the
batch over ranks, and reproducible.

The draw is an inverse-CDF sample in float64 (``u ~ U[0, 1)`` from the row's generator, the
first token whose cumulative probability exceeds ``u``); the probabilities are those of Hugging
Face's own warpers, in its order (temperature, top-k, top-p).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from saferl.data.batches import PromptBatch
from saferl.runtime.specs import GenerationSpec
from saferl.runtime.types import GenerationOutput, response_mask_from_eos

__all__ = ["SeededSampler", "generate_sequences", "row_seed"]

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def row_seed(seed: int, row: int, step: int) -> int:
    """A 63-bit generator seed for ``(seed, global row index, step)`` (SplitMix64 chain)."""
    mixed = _splitmix64(_splitmix64(_splitmix64(seed) ^ row) ^ step)
    return mixed & ((1 << 63) - 1)


class SeededSampler(LogitsProcessor):
    """Sample each row's next token with a per-row, per-step generator (see module docstring).

    Args:
        spec: temperature, top-k, top-p and seed.
        row_offset: global index of this batch's first row.
        prompt_len: columns of the prompt block (the step is ``cur_len - prompt_len``).
    """

    def __init__(self, spec: GenerationSpec, row_offset: int, prompt_len: int) -> None:
        self.seed = spec.seed
        self.row_offset = row_offset
        self.prompt_len = prompt_len
        warpers = []
        if spec.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(spec.temperature))
        if spec.top_k > 0:
            warpers.append(TopKLogitsWarper(top_k=spec.top_k, min_tokens_to_keep=1))
        if spec.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=spec.top_p, min_tokens_to_keep=1))
        self.warpers = LogitsProcessorList(warpers)

    def uniforms(self, batch: int, step: int) -> torch.Tensor:
        """``(batch,)`` float64 uniforms, row ``i`` from the generator of global row
        ``row_offset + i`` at ``step``."""
        values = torch.empty(batch, dtype=torch.float64)
        generator = torch.Generator()
        for i in range(batch):
            generator.manual_seed(row_seed(self.seed, self.row_offset + i, step))
            values[i] = torch.rand((), generator=generator, dtype=torch.float64)
        return values

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Args: ``input_ids (batch, cur_len)``, ``scores (batch, vocab)``; returns
        ``(batch, vocab)`` logits, 0 at the drawn token and ``-inf`` elsewhere."""
        step = input_ids.shape[1] - self.prompt_len
        warped = self.warpers(input_ids, scores)
        probs = torch.softmax(warped.to(torch.float64), dim=-1)  # (batch, vocab)
        cdf = probs.cumsum(dim=-1)  # (batch, vocab)
        u = self.uniforms(scores.shape[0], step).to(cdf.device)  # (batch,)
        threshold = (u * cdf[:, -1]).unsqueeze(-1)  # (batch, 1)
        # first index whose cumulative probability exceeds u: zero-probability tokens never win
        tokens = torch.searchsorted(cdf, threshold, right=True).clamp_(max=scores.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, tokens, 0.0)
        return out


def generate_sequences(
    model: torch.nn.Module,
    prompts: PromptBatch,
    spec: GenerationSpec,
    *,
    pad_token_id: int,
    eos_token_id: int,
    row_offset: int = 0,
    synced_gpus: bool = False,
) -> GenerationOutput:
    """Generate responses for left-padded prompts.

    Args:
        model: a Hugging Face causal LM (or a peft wrapper around one), on the prompts' device.
        prompts: ``(batch, prompt_len)`` LEFT-padded ids and mask.
        spec: sampling parameters and seed.
        pad_token_id: written after a row's EOS.
        eos_token_id: ends a row.
        row_offset: global index of this batch's first row (a rank's shard offset).
        synced_gpus: keep calling ``forward`` until every rank is done (required under ZeRO-3,
            where each forward gathers parameters collectively).

    Returns:
        A :class:`GenerationOutput`; ``response_len`` is the longest response of this batch
        (at most ``spec.max_new_tokens``).
    """
    input_ids = prompts.input_ids
    attention_mask = prompts.attention_mask.long()
    prompt_len = int(input_ids.shape[1])
    # Every field that changes the sampled distribution is set explicitly, so the checkpoint's
    # own generation_config (repetition penalty, sampling defaults, ...) cannot add to it.
    config = GenerationConfig(
        max_new_tokens=spec.max_new_tokens,
        do_sample=False,
        num_beams=1,
        temperature=1.0,
        top_k=None,
        top_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_length=0,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )
    processors = LogitsProcessorList()
    if spec.do_sample:
        processors.append(SeededSampler(spec, row_offset, prompt_len))
    with torch.no_grad():
        sequences = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            logits_processor=processors,
            synced_gpus=synced_gpus,
        )
    sequences = sequences.cpu()
    response_ids = sequences[:, prompt_len:]  # (batch, response_len)
    valid_response = response_mask_from_eos(response_ids, eos_token_id)
    prompt_mask = prompts.attention_mask.bool().cpu()
    no_prompt = torch.zeros_like(prompt_mask)
    return GenerationOutput(
        prompt_ids=prompts.input_ids.cpu(),
        sequences=sequences,
        attention_mask=torch.cat([prompt_mask, valid_response], dim=1),
        response_mask=torch.cat([no_prompt, valid_response], dim=1),
    )
