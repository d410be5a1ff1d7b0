"""Two DeepSpeed ranks over gloo train exactly like one: ZeRO-2 and ZeRO-3, policy and critic.

The global batch is the same 4 rows in every run; a rank's loss is a mean over its micro-batch
rows, so DeepSpeed's averaging (over accumulation steps and ranks) yields the gradient of the
global-batch mean. After a few steps the ranks hold identical parameters, equal (float
tolerance) to a one-rank group and to a plain PyTorch AdamW loop on the same global batch.
"""

from __future__ import annotations

import sys

import pytest
import ray
import torch

from saferl.data.collators import SequenceBatch
from saferl.models import build_critic, build_policy
from saferl.runtime import (
    CriticGroup,
    DeepSpeedSpec,
    GroupSpec,
    PolicyGroup,
    lr_scheduler_factory,
    slice_batch,
)
from saferl.runtime.engines import TokenLogprobsModule, ValuesModule, weight_decay_groups

# Ray workers cannot import this test module: ship its functions (the losses) by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

STEPS = 3


def sft_loss(logprobs: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    """Negative log-likelihood of the response, summed per row, mean over rows."""
    return -(logprobs * batch.response_mask).sum(dim=-1).mean()


def value_loss(values: torch.Tensor, batch: SequenceBatch) -> tuple[torch.Tensor, dict]:
    """Per-row mean squared error to the response mask (1 on response tokens), mean over rows."""
    target = batch.response_mask.float()
    mask = batch.attention_mask.float()
    per_row = ((values - target) ** 2 * mask).sum(dim=-1) / mask.sum(dim=-1)
    mean_value = ((values * mask).sum(dim=-1) / mask.sum(dim=-1)).mean()
    return per_row.mean(), {"mean_value": mean_value}


def ds_spec(zero_stage: int, num_ranks: int) -> DeepSpeedSpec:
    """4 rows per step: 2 ranks x 1 row x 2 accumulation steps, or 1 rank x 2 rows x 2."""
    return DeepSpeedSpec(
        zero_stage=zero_stage,
        learning_rate=1e-2,
        weight_decay=0.01,
        gradient_clipping=1.0,
        scheduler="cosine",
        warmup_steps=1,
        total_steps=6,
        micro_batch_size_per_rank=2 // num_ranks,
        gradient_accumulation_steps=2,
    )


def plain_torch_run(
    module: torch.nn.Module, batch: SequenceBatch, loss_fn, spec: DeepSpeedSpec
) -> dict:
    """The same optimisation without DeepSpeed: AdamW, clipping, schedule, 2 micro-batches."""
    optimizer = torch.optim.AdamW(
        weight_decay_groups(module, spec.weight_decay),
        lr=spec.learning_rate,
        betas=spec.adam_betas,
        eps=spec.adam_eps,
    )
    scheduler = lr_scheduler_factory(spec)(optimizer)
    for _ in range(STEPS):
        optimizer.zero_grad()
        for start in (0, 2):
            micro = slice_batch(batch, start, start + 2)
            result = loss_fn(module(micro.input_ids, micro.attention_mask), micro)
            loss = result[0] if isinstance(result, tuple) else result
            (loss / 2).backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), spec.gradient_clipping)
        optimizer.step()
        scheduler.step()
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def assert_state_close(actual: dict, expected: dict, atol: float = 2e-5) -> None:
    assert actual.keys() == expected.keys()
    worst = max((actual[k].float() - expected[k].float()).abs().max().item() for k in actual)
    assert worst < atol, f"largest parameter difference {worst:.3g}"


def assert_ranks_identical(states: list[dict]) -> None:
    for key in states[0]:
        for other in states[1:]:
            assert torch.equal(states[0][key], other[key]), f"ranks differ on {key}"


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_policy_two_ranks_match_one_rank(
    zero_stage, tokenizer, model_spec, runtime_spec, train_batch, shutdown_after
) -> None:
    results = {}
    groups = {
        num_ranks: PolicyGroup(
            model_spec,
            tokenizer,
            ds_spec(zero_stage, num_ranks),
            GroupSpec(num_ranks=num_ranks, cpus_per_rank=0.5),
            runtime_spec,
            wait=False,  # both start at once
        )
        for num_ranks in (2, 1)
    }
    shutdown_after.extend(groups.values())
    for num_ranks, group in groups.items():
        steps = [group.train_step(train_batch, sft_loss) for _ in range(STEPS)]
        states = group.state_dicts()
        assert len(states) == num_ranks
        assert_ranks_identical(states)
        results[num_ranks] = (steps, states[0], group.token_logprobs(train_batch))
        group.shutdown()

    steps_2, state_2, logprobs_2 = results[2]
    steps_1, state_1, logprobs_1 = results[1]
    assert [s.learning_rate for s in steps_2] == pytest.approx([0.0, 1e-2, 1e-2 * 0.9045085])
    for two, one in zip(steps_2, steps_1, strict=True):
        assert two.loss == pytest.approx(one.loss, rel=1e-5)
        assert two.grad_norm == pytest.approx(one.grad_norm, rel=1e-4)
        assert two.num_rows == one.num_rows == 4
    assert steps_2[-1].loss < steps_2[0].loss  # it learns
    assert_state_close(state_2, state_1)
    torch.testing.assert_close(logprobs_2, logprobs_1, atol=1e-4, rtol=1e-4)

    torch.manual_seed(0)  # the groups' build seed
    reference = TokenLogprobsModule(build_policy(model_spec, tokenizer))
    assert_state_close(
        state_2, plain_torch_run(reference, train_batch, sft_loss, ds_spec(zero_stage, 1))
    )


def test_critic_two_ranks_zero3_match_one_rank(
    tokenizer, model_spec, runtime_spec, train_batch, shutdown_after
) -> None:
    results = {}
    groups = {
        num_ranks: CriticGroup(
            model_spec,
            tokenizer,
            ds_spec(3, num_ranks),
            GroupSpec(num_ranks=num_ranks, cpus_per_rank=0.5),
            runtime_spec,
            wait=False,
        )
        for num_ranks in (2, 1)
    }
    shutdown_after.extend(groups.values())
    for num_ranks, group in groups.items():
        steps = [group.train_step(train_batch, value_loss) for _ in range(STEPS)]
        states = group.state_dicts()
        assert_ranks_identical(states)
        values = group.values(train_batch)
        assert values.shape == train_batch.input_ids.shape
        results[num_ranks] = (steps, states[0], values)
        group.shutdown()
    (steps_2, state_2, values_2), (steps_1, state_1, values_1) = results[2], results[1]
    assert [s.loss for s in steps_2] == pytest.approx([s.loss for s in steps_1], rel=1e-5)
    assert "mean_value" in steps_2[0].metrics
    assert steps_2[0].metrics["mean_value"] == pytest.approx(
        steps_1[0].metrics["mean_value"], rel=1e-4
    )
    assert_state_close(state_2, state_1)
    torch.testing.assert_close(values_2, values_1, atol=1e-4, rtol=1e-4)

    torch.manual_seed(0)
    reference = ValuesModule(build_critic(model_spec, tokenizer))
    assert_state_close(state_2, plain_torch_run(reference, train_batch, value_loss, ds_spec(3, 1)))
