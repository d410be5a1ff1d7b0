"""Reward and cost models (docs/algorithms.md §3) trained through the runtime.

The model is a one-output score model hosted by a critic group (a training engine whose forward
gives a score at every position); the sequence score is the output at the last real token. Each
step:

1. draw ``pairs_per_step`` preference pairs (seeded);
2. order them — reward: (better, worse); cost: (safer, unsafer) with both safety labels — and
   interleave the two responses of each pair, so any contiguous split keeps pairs together;
3. one optimizer step on the Bradley–Terry loss (reward) or Bradley–Terry plus the safety-sign
   terms (cost), with the score regulariser.

Held-out metrics: pairwise accuracy, and for costs the sign accuracy (``score ≤ 0`` ⇔ safe).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from transformers import AutoConfig, PreTrainedTokenizerBase

from saferl.core.score_losses import (
    cost_model_loss,
    pairwise_accuracy,
    reward_model_loss,
    sign_accuracy,
)
from saferl.data.collators import collate_sequences
from saferl.data.records import SafetyPreferencePair
from saferl.learners.types import PairTrainBatch
from saferl.models import last_token_index
from saferl.models.metadata import set_config_score_metadata
from saferl.tracking import NullTracker, Tracker

__all__ = [
    "SCORE_MODEL_KINDS",
    "pair_train_batch",
    "end_values",
    "score_pair_loss",
    "evaluate_score_model",
    "train_score_model",
    "relabel_saved_score_model",
]

SCORE_MODEL_KINDS = ("reward", "cost")


def pair_train_batch(
    pairs: Sequence[SafetyPreferencePair],
    kind: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    template: str,
) -> PairTrainBatch:
    """Interleaved rows ``first_0, second_0, first_1, second_1, …``.

    Reward: first = better, second = worse. Cost: first = safer, second = unsafer.
    """
    _check_kind(kind)
    if kind == "reward":
        firsts = [(pair.better, pair.better_is_safe) for pair in pairs]
        seconds = [(pair.worse, pair.worse_is_safe) for pair in pairs]
    else:
        firsts = [(pair.safer, pair.safer_is_safe) for pair in pairs]
        seconds = [(pair.unsafer, pair.unsafer_is_safe) for pair in pairs]
    prompts = [pair.prompt for pair in pairs for _ in range(2)]
    responses = [
        text
        for first, second in zip(firsts, seconds, strict=True)
        for text in (first[0], second[0])
    ]
    batch = collate_sequences(prompts, responses, tokenizer, max_length, template=template)
    first_safe = torch.tensor([safe for _, safe in firsts], dtype=torch.bool).repeat_interleave(2)
    second_safe = torch.tensor([safe for _, safe in seconds], dtype=torch.bool).repeat_interleave(2)
    return PairTrainBatch(
        batch.input_ids,
        batch.attention_mask,
        batch.response_mask,
        first_safe,
        second_safe,
        torch.ones(2 * len(pairs)),
    )


def end_values(raw_values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Score at each row's last real token: ``(rows, seq_len) → (rows,)``."""
    index = last_token_index(attention_mask)
    return raw_values.gather(1, index.unsqueeze(1)).squeeze(1)


def score_pair_loss(
    raw_values: torch.Tensor, batch: PairTrainBatch, kind: str, score_regularization: float,
    sign_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reward or cost loss of an interleaved pair batch, with its accuracies as metrics
    (``sign_weight``: the cost loss's safety-sign terms, :func:`cost_model_loss`)."""
    scores = end_values(raw_values, batch.attention_mask)
    first, second = scores[0::2], scores[1::2]
    if kind == "reward":
        loss = reward_model_loss(first, second, score_regularization)
        return loss, {"pairwise_accuracy": pairwise_accuracy(first, second)}
    loss = cost_model_loss(
        first, second, batch.first_is_safe[0::2], batch.second_is_safe[0::2], score_regularization, sign_weight
    )
    # For costs, "better" means safer: the safer response should score lower.
    return loss, {
        "pairwise_accuracy": pairwise_accuracy(second, first),
        "sign_accuracy": sign_accuracy(
            torch.cat([first, second]),
            torch.cat([batch.first_is_safe[0::2], batch.second_is_safe[0::2]]),
        ),
    }


@torch.no_grad()
def evaluate_score_model(
    group,
    pairs: Sequence[SafetyPreferencePair],
    kind: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    template: str,
    rows_per_call: int,
    truth: Callable[[str, str], float] | None = None,
) -> dict[str, float]:
    """Held-out pairwise accuracy (and sign accuracy for costs) of a critic-hosted score model.

    Args:
        rows_per_call: rows per ``values`` call; a multiple of twice the group's ranks (pairs stay
            together). Pairs past the last full call are not scored (``num_pairs`` says how many were).
        truth: optional ground truth ``(prompt, response) -> reward or cost`` (the built-in world's).
            Then ``ground_truth_accuracy`` is the fraction of pairs whose two responses differ in
            ground truth that the model orders correctly: a label drawn from a tie or flipped by
            Bradley–Terry noise can not be predicted by any model, the true order can.
    """
    pairs = list(pairs)
    pairs_per_call = rows_per_call // 2
    usable = len(pairs) - len(pairs) % pairs_per_call
    if usable == 0:
        raise ValueError(f"need at least {pairs_per_call} held-out pairs; found {len(pairs)}")
    firsts, seconds, first_safe, second_safe = [], [], [], []
    for start in range(0, usable, pairs_per_call):
        batch = pair_train_batch(
            pairs[start : start + pairs_per_call], kind, tokenizer, max_length, template
        )
        scores = end_values(group.values(batch), batch.attention_mask)
        firsts.append(scores[0::2])
        seconds.append(scores[1::2])
        first_safe.append(batch.first_is_safe[0::2])
        second_safe.append(batch.second_is_safe[0::2])
    first, second = torch.cat(firsts), torch.cat(seconds)
    # "Better" for a cost model means safer, i.e. a LOWER score.
    better, worse = (first, second) if kind == "reward" else (second, first)
    metrics = {
        "pairwise_accuracy": pairwise_accuracy(better, worse).item(),
        "num_pairs": float(usable),
    }
    if kind == "cost":
        metrics["sign_accuracy"] = sign_accuracy(
            torch.cat([first, second]), torch.cat(first_safe + second_safe)
        ).item()
    if truth is not None:
        ordered = [
            (p.better, p.worse) if kind == "reward" else (p.safer, p.unsafer)
            for p in pairs[:usable]
        ]
        true_first = torch.tensor(
            [truth(p.prompt, a) for p, (a, _) in zip(pairs[:usable], ordered, strict=True)], dtype=torch.float64
        )
        true_second = torch.tensor(
            [truth(p.prompt, b) for p, (_, b) in zip(pairs[:usable], ordered, strict=True)], dtype=torch.float64
        )
        decisive = true_first != true_second
        model_says_first_higher = first > second
        truth_says_first_higher = true_first > true_second
        correct = (model_says_first_higher == truth_says_first_higher) & (first != second)
        metrics["ground_truth_accuracy"] = (
            correct[decisive].double().mean().item() if decisive.any() else float("nan")
        )
        metrics["num_decisive_pairs"] = float(decisive.sum())
    return metrics


def train_score_model(
    group,
    train_pairs: Sequence[SafetyPreferencePair],
    kind: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    steps: int,
    pairs_per_step: int,
    max_length: int,
    template: str,
    score_regularization: float = 0.001,
    sign_weight: float = 1.0,
    seed: int = 0,
    tracker: Tracker | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train a reward (``kind="reward"``) or cost model on safety preference pairs; per-step metrics."""
    _check_kind(kind)
    tracker = tracker or NullTracker()
    pairs = list(train_pairs)
    if not pairs:
        raise ValueError(f"{kind} model: the training pair set is empty")
    rng = random.Random(seed)
    loss_fn = partial(score_pair_loss, kind=kind, score_regularization=score_regularization,
                      sign_weight=sign_weight)
    history = []
    for step in range(steps):
        # 1–2. This step's pairs, ordered and interleaved.
        batch = pair_train_batch(
            rng.sample(pairs, pairs_per_step), kind, tokenizer, max_length, template
        )
        # 3. One optimizer step.
        output = group.train_step(batch, loss_fn)
        # Accuracies on this step's training pairs: ``train_`` (the held-out ones are ``heldout_``).
        metrics = {
            f"{kind}_model/loss": output.loss,
            **{f"{kind}_model/train_{k}": v for k, v in output.metrics.items()},
        }
        history.append(metrics)
        tracker.log(metrics, step=step + 1)
        if progress is not None:
            progress(step + 1, metrics)
    return history


def relabel_saved_score_model(path: str | Path, kind: str) -> None:
    """Record ``kind`` (``"reward"`` or ``"cost"``) in a saved one-output score model's config
    (a critic group exports its model labelled ``"critic"``)."""
    config = AutoConfig.from_pretrained(path)
    set_config_score_metadata(config, kind, 1)
    config.save_pretrained(path)


def _check_kind(kind: str) -> None:
    if kind not in SCORE_MODEL_KINDS:
        raise ValueError(
            f"score model kind must be one of {list(SCORE_MODEL_KINDS)}; found {kind!r}"
        )
