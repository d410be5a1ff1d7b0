"""Supervised fine-tuning of a policy through the runtime (the reference policy of every method).

Each step:

1. draw ``rows_per_step`` demonstrations (seeded, without replacement within a pass);
2. tokenise prompt + response (prompt tokens masked out of the loss);
3. one optimizer step of the policy group on the mean response NLL.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from transformers import PreTrainedTokenizerBase

from saferl.data.collators import collate_sequences
from saferl.data.records import SFTExample
from saferl.learners.ppo_update import sft_loss
from saferl.learners.types import SFTTrainBatch
from saferl.tracking import NullTracker, Tracker

__all__ = ["sft_batch", "PTXBatches", "SFTSchedule", "run_sft"]


def sft_batch(
    examples: Sequence[SFTExample],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    template: str,
) -> SFTTrainBatch:
    """Right-padded prompt + response rows with the response mask (EOS included)."""
    batch = collate_sequences(
        [example.prompt for example in examples],
        [example.response for example in examples],
        tokenizer,
        max_length,
        template=template,
    )
    return SFTTrainBatch(batch.input_ids, batch.attention_mask, batch.response_mask)


class SFTSchedule:
    """Demonstrations per step: seeded permutations of the set, one pass after another.

    Stateless given ``(seed, step)`` (resuming only needs the step number).
    """

    def __init__(self, examples: Sequence[SFTExample], rows_per_step: int, seed: int) -> None:
        if not examples:
            raise ValueError("the SFT data set is empty")
        self.examples = list(examples)
        self.rows_per_step = rows_per_step
        self.seed = seed

    def rows(self, step: int) -> list[SFTExample]:
        picked: list[SFTExample] = []
        start = step * self.rows_per_step
        while len(picked) < self.rows_per_step:
            index, offset = divmod(start + len(picked), len(self.examples))
            order = list(range(len(self.examples)))
            random.Random(self.seed * 1_000_003 + index).shuffle(order)
            take = order[offset : offset + self.rows_per_step - len(picked)]
            picked.extend(self.examples[i] for i in take)
        return picked


class PTXBatches:
    """The PTX rows of a PPO iteration (``iteration -> SFTTrainBatch``): ``rows_per_step``
    demonstrations drawn by :class:`SFTSchedule`, tokenised as the SFT stage does.

    Stateless given ``(seed, iteration)``, so a resumed run trains on the PTX rows the
    uninterrupted run would have.
    """

    def __init__(self, examples: Sequence[SFTExample], rows_per_step: int, seed: int,
                 tokenizer: PreTrainedTokenizerBase, max_length: int, template: str) -> None:
        self.schedule = SFTSchedule(examples, rows_per_step, seed)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.template = template

    def __call__(self, iteration: int) -> SFTTrainBatch:
        return sft_batch(self.schedule.rows(iteration), self.tokenizer, self.max_length, self.template)


def run_sft(
    policy,
    examples: Sequence[SFTExample],
    tokenizer: PreTrainedTokenizerBase,
    *,
    steps: int,
    rows_per_step: int,
    max_length: int,
    template: str,
    seed: int = 0,
    tracker: Tracker | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Run ``steps`` SFT steps on ``policy`` (a ``PolicyGroup``); returns each step's metrics."""
    tracker = tracker or NullTracker()
    schedule = SFTSchedule(examples, rows_per_step, seed)
    history = []
    for step in range(steps):
        # 1–2. Draw and tokenise this step's demonstrations.
        batch = sft_batch(schedule.rows(step), tokenizer, max_length, template)
        # 3. One optimizer step on the response NLL.
        output = policy.train_step(batch, sft_loss)
        metrics = {"sft/loss": output.loss, "sft/learning_rate": output.learning_rate}
        history.append(metrics)
        tracker.log(metrics, step=step + 1)
        if progress is not None:
            progress(step + 1, metrics)
    return history
