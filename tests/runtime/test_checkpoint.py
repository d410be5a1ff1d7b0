"""Checkpoints and Hugging Face exports of every role, through colocated placement.

Policy (ZeRO-2, two ranks), reference (ZeRO-3 inference, two ranks), reward model (one rank)
and critic (ZeRO-3 training, two ranks); the reference and the reward model share the policy's
bundles. Save -> fresh groups
built with another seed -> load gives identical outputs, and one more train step after loading
equals the step the original groups took after saving (optimizer and scheduler state restored).
Exports load in plain transformers with identical outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from saferl.data.collators import SequenceBatch
from saferl.models import critic_values, end_scores, policy_token_logprobs
from saferl.runtime import (
    CriticGroup,
    DeepSpeedSpec,
    GroupSpec,
    PolicyGroup,
    ReferenceGroup,
    ScoreGroup,
    plan_placement,
)

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

GROUPS = {
    "policy": GroupSpec(num_ranks=2, cpus_per_rank=0.25),
    "reference": GroupSpec(num_ranks=2, cpus_per_rank=0.25, colocate_with="policy"),
    "reward": GroupSpec(num_ranks=1, cpus_per_rank=0.25, colocate_with="policy"),
    "critic": GroupSpec(num_ranks=2, cpus_per_rank=0.25),
}


def sft_loss(logprobs: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    return -(logprobs * batch.response_mask).sum(dim=-1).mean()


def value_loss(values: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    mask = batch.attention_mask.float()
    return ((((values - 1.0) ** 2) * mask).sum(dim=-1) / mask.sum(dim=-1)).mean()


def train_spec(stage: int) -> DeepSpeedSpec:
    return DeepSpeedSpec(
        zero_stage=stage,
        learning_rate=1e-2,
        scheduler="linear",
        warmup_steps=2,
        total_steps=10,
        micro_batch_size_per_rank=2,
    )


def start_groups(plan, tokenizer, model_spec, runtime_spec, seed: int) -> dict:
    frozen = DeepSpeedSpec(zero_stage=3, micro_batch_size_per_rank=2)
    kwargs = {"placement": plan, "seed": seed, "wait": False}  # the four start at once
    return {
        "policy": PolicyGroup(
            model_spec, tokenizer, train_spec(2), GROUPS["policy"], runtime_spec, **kwargs
        ),
        "reference": ReferenceGroup(
            model_spec, tokenizer, frozen, GROUPS["reference"], runtime_spec, **kwargs
        ),
        "reward": ScoreGroup(
            model_spec, tokenizer, frozen, GROUPS["reward"], runtime_spec, kind="reward", **kwargs
        ),
        "critic": CriticGroup(
            model_spec,
            tokenizer,
            train_spec(3),
            GROUPS["critic"],
            runtime_spec,
            role="critic",
            **kwargs,
        ),
    }


def outputs(groups: dict, batch: SequenceBatch) -> dict[str, torch.Tensor]:
    return {
        "policy": groups["policy"].token_logprobs(batch),
        "reference": groups["reference"].token_logprobs(batch),
        "reward": groups["reward"].end_scores(batch),
        "critic": groups["critic"].values(batch),
    }


def test_save_fresh_groups_load_and_export(
    tokenizer, model_spec, runtime_spec, train_batch, tmp_path: Path, shutdown_after
) -> None:
    plan = plan_placement(runtime_spec, GROUPS)
    shutdown_after.append(plan)
    table = ray.util.placement_group_table(plan.slot("reference").placement_group)
    assert plan.slot("reference").placement_group == plan.slot("policy").placement_group
    # bundle 0 holds rank 0 of policy, reference and reward; bundle 1 rank 1 of the first two
    assert [b["CPU"] for b in table["bundles"].values()] == [0.75, 0.5]

    groups = start_groups(plan, tokenizer, model_spec, runtime_spec, seed=0)
    shutdown_after.extend(groups.values())
    for role, group in groups.items():
        assert [info.rank for info in group.rank_infos] == list(range(GROUPS[role].num_ranks))
    for _ in range(2):
        groups["policy"].train_step(train_batch, sft_loss)
        groups["critic"].train_step(train_batch, value_loss)
    saved = outputs(groups, train_batch)
    assert saved["reward"].shape == (4, 1)
    tags = {role: group.save_checkpoint(tmp_path / "ckpt" / role) for role, group in groups.items()}
    assert tags["policy"] == tags["critic"] == "global_step2"
    exports = {
        role: groups[role].export_hf(tmp_path / "hf" / role)
        for role in ("policy", "reward", "critic")
    }
    # the step the original groups take after the checkpoint
    next_policy = groups["policy"].train_step(train_batch, sft_loss)
    next_critic = groups["critic"].train_step(train_batch, value_loss)
    next_states = {role: groups[role].state_dicts()[0] for role in ("policy", "critic")}
    pids = {role: [info.pid for info in group.rank_infos] for role, group in groups.items()}
    for group in groups.values():
        group.shutdown()

    # New groups in the same plan: each role's rank processes, left idle in the plan, build new
    # engines from seed 1 (reused processes compute what fresh ones do: tests/runtime/test_pool.py).
    fresh = start_groups(plan, tokenizer, model_spec, runtime_spec, seed=1)
    shutdown_after.extend(fresh.values())
    assert {role: [info.pid for info in group.rank_infos] for role, group in fresh.items()} == pids
    before = outputs(fresh, train_batch)
    for role in saved:
        assert not torch.allclose(before[role], saved[role]), (
            f"{role} started from the saved weights"
        )
    for role, group in fresh.items():
        group.load_checkpoint(tmp_path / "ckpt" / role)
    loaded = outputs(fresh, train_batch)
    for role in saved:
        assert torch.equal(loaded[role], saved[role]), role

    again_policy = fresh["policy"].train_step(train_batch, sft_loss)
    again_critic = fresh["critic"].train_step(train_batch, value_loss)
    assert again_policy.learning_rate == next_policy.learning_rate
    assert again_policy.loss == pytest.approx(next_policy.loss, rel=1e-6)
    assert again_critic.loss == pytest.approx(next_critic.loss, rel=1e-6)
    for role in ("policy", "critic"):
        state = fresh[role].state_dicts()[0]
        for key, value in next_states[role].items():
            torch.testing.assert_close(state[key], value, atol=1e-6, rtol=1e-6)

    # Hugging Face exports load in plain transformers with the same outputs
    ids, mask = train_batch.input_ids, train_batch.attention_mask
    policy = AutoModelForCausalLM.from_pretrained(exports["policy"])
    torch.testing.assert_close(
        policy_token_logprobs(policy, ids, mask), saved["policy"], atol=1e-5, rtol=1e-5
    )
    reward = AutoModelForSequenceClassification.from_pretrained(exports["reward"])
    assert reward.config.saferl["kind"] == "reward"
    plain_scores = reward(input_ids=ids, attention_mask=mask.long()).logits
    torch.testing.assert_close(plain_scores, saved["reward"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(end_scores(reward, ids, mask), saved["reward"], atol=1e-5, rtol=1e-5)
    critic = AutoModelForSequenceClassification.from_pretrained(exports["critic"])
    torch.testing.assert_close(
        critic_values(critic, ids, mask), saved["critic"], atol=1e-5, rtol=1e-5
    )
