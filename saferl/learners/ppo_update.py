"""The PPO update shared by every on-policy learner: actor and critic steps through the runtime.

The loss functions are module-level (they travel to the ranks by pickle) and return a mean over
the micro-batch's rows, so DeepSpeed's averaging over micro-batches and ranks gives the global
batch's loss. Diagnostics are averaged over all minibatches of the update, not the last one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from saferl.core.masked import masked_mean
from saferl.core.ppo import (
    approx_kl,
    clip_fraction,
    ppo_policy_loss,
    ppo_value_loss,
    token_mean_nll,
)
from saferl.learners.rollout import values_before_tokens
from saferl.learners.types import (
    Advantages,
    CriticTrainBatch,
    Experience,
    PolicyTrainBatch,
    SFTTrainBatch,
)
from saferl.runtime.batching import batch_rows, slice_batch
from saferl.runtime.types import TrainStepOutput

#: Asked after each optimizer step whether it was taken (e.g. ``NonFiniteGuard.step_taken`` bound
#: to a loss name and an iteration): False stops the update (a refused step, batch skipped).
StepTaken = Callable[[TrainStepOutput], bool]

__all__ = [
    "actor_loss",
    "critic_loss",
    "sft_loss",
    "ptx_loss",
    "minibatch_steps",
    "update_policy",
    "update_critic",
]


def actor_loss(
    logprobs: torch.Tensor, batch: PolicyTrainBatch, clip_eps: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (per sequence, then batch) with approx-KL and clip-fraction."""
    loss = ppo_policy_loss(
        logprobs, batch.old_logprobs, batch.advantages, batch.response_mask, clip_eps
    )
    return loss, {
        "approx_kl": approx_kl(logprobs, batch.old_logprobs, batch.response_mask),
        "clipfrac": clip_fraction(logprobs, batch.old_logprobs, batch.response_mask, clip_eps),
    }


def critic_loss(
    raw_values: torch.Tensor, batch: CriticTrainBatch, clip_eps_value: float
) -> torch.Tensor:
    """Clipped value loss on the values of each action (see ``values_before_tokens``)."""
    values = values_before_tokens(raw_values)
    return ppo_value_loss(
        values, batch.old_values, batch.returns, batch.response_mask, clip_eps_value
    )


def sft_loss(
    logprobs: torch.Tensor, batch: SFTTrainBatch, coefficient: float = 1.0
) -> torch.Tensor:
    """Negative log-likelihood of the response tokens, a per-sequence mean then a batch mean
    (prompt tokens masked out); scaled by ``coefficient`` (the PTX coefficient in PPO)."""
    per_sequence = masked_mean(-logprobs, batch.response_mask, dim=-1)  # (batch,)
    return coefficient * per_sequence.mean()


def ptx_loss(logprobs: torch.Tensor, batch: SFTTrainBatch, coefficient: float) -> torch.Tensor:
    """Safe RLHF's PTX loss: ``coefficient`` × the mean NLL over every response token of the
    micro-batch (:func:`saferl.core.ppo.token_mean_nll`), as the published code's
    ``ptx_coeff * actor(..., labels=...).loss``. Like the published code, DeepSpeed then averages
    the micro-batches' token means over micro-batches and ranks (equal to the global token mean
    when every micro-batch holds as many response tokens)."""
    return coefficient * token_mean_nll(logprobs, batch.response_mask)


def minibatch_steps(
    group, batch, loss_fn: Callable, rows_per_step: int, epochs: int = 1, step_taken: StepTaken | None = None
) -> dict[str, float] | None:
    """``epochs`` passes over ``batch`` in contiguous minibatches of ``rows_per_step`` rows, one
    optimizer step each; returns the loss and metrics averaged over every step.

    With ``step_taken`` each step is asked for with ``report_nonfinite=True`` (a non-finite loss
    comes back refused instead of raising) and handed to it; when it says False no further step
    runs and None is returned. Without it a refused step raises in ``train_step``."""
    rows = batch_rows(batch)
    if rows % rows_per_step:
        raise ValueError(
            f"the rollout's {rows} rows do not divide into optimizer steps of {rows_per_step} rows; "
            "make the rollout batch a multiple of the train batch size"
        )
    totals: dict[str, float] = {}
    steps = 0
    for _ in range(epochs):
        for start in range(0, rows, rows_per_step):
            minibatch = slice_batch(batch, start, start + rows_per_step)
            if step_taken is None:
                output = group.train_step(minibatch, loss_fn)
            else:
                output = group.train_step(minibatch, loss_fn, report_nonfinite=True)
                if not step_taken(output):
                    return None
            values = {"loss": output.loss, "learning_rate": output.learning_rate, **output.metrics}
            if output.grad_norm is not None:
                values["grad_norm"] = output.grad_norm
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value
            steps += 1
    return {key: value / steps for key, value in totals.items()}


def update_policy(
    policy,
    experience: Experience,
    advantages: Advantages,
    clip_eps: float,
    rows_per_step: int,
    epochs: int = 1,
    step_taken: StepTaken | None = None,
) -> dict[str, float] | None:
    """PPO actor update on one rollout (None: a step was refused, see :func:`minibatch_steps`)."""
    batch = PolicyTrainBatch(
        input_ids=experience.input_ids,
        attention_mask=experience.attention_mask,
        response_mask=experience.response_mask,
        old_logprobs=experience.old_logprobs,
        advantages=advantages.policy_advantages,
    )
    return minibatch_steps(
        policy, batch, partial(actor_loss, clip_eps=clip_eps), rows_per_step, epochs, step_taken
    )


def update_critic(
    critic,
    experience: Experience,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_eps_value: float,
    rows_per_step: int,
    epochs: int = 1,
    step_taken: StepTaken | None = None,
) -> dict[str, float] | None:
    """Clipped value update of one critic on one rollout (``old_values``/``returns`` ``(batch, seq_len)``;
    None: a step was refused, see :func:`minibatch_steps`)."""
    batch = CriticTrainBatch(
        input_ids=experience.input_ids,
        attention_mask=experience.attention_mask,
        response_mask=experience.response_mask,
        old_values=old_values,
        returns=returns,
    )
    return minibatch_steps(
        critic, batch, partial(critic_loss, clip_eps_value=clip_eps_value), rows_per_step, epochs, step_taken
    )
