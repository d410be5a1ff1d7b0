"""Failures surface in the driver as clear errors within a timeout, never as a hang; shutdown
leaves no actor, worker process or placement group behind."""

from __future__ import annotations

import sys
import time

import psutil
import pytest
import ray
import torch

from saferl.data.collators import SequenceBatch
from saferl.runtime import (
    DeepSpeedSpec,
    GenerationSpec,
    GroupSpec,
    PolicyGroup,
    ReferenceGroup,
    RuntimeSpec,
    plan_placement,
)

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

ZERO3 = DeepSpeedSpec(zero_stage=3, micro_batch_size_per_rank=2)


def fails_on_rank_one(logprobs: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    """Raises on rank 1 only: rank 0 goes on into the gradient all-reduce and waits there."""
    if torch.distributed.get_rank() == 1:
        raise ValueError("bad advantages on this shard")
    return -(logprobs * batch.response_mask).sum(dim=-1).mean()


def sleeps(logprobs: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    time.sleep(600)
    return logprobs.sum()


def processes_gone(pids: list[int], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.2)
    return False


def pg_removed(group) -> bool:
    table = ray.util.placement_group_table(group.slot.placement_group)
    return table["state"] == "REMOVED"


def test_a_rank_that_raises_fails_the_call_with_role_and_rank(
    tokenizer, model_spec, runtime_spec, train_batch, shutdown_after
) -> None:
    policy = PolicyGroup(model_spec, tokenizer, ZERO3, GroupSpec(2, 0.5), runtime_spec)
    shutdown_after.append(policy)
    pids = [info.pid for info in policy.rank_infos]
    start = time.monotonic()
    with pytest.raises(
        RuntimeError, match=r"policy rank 1 raised in 'train_step': ValueError: bad advantages"
    ):
        policy.train_step(train_batch, fails_on_rank_one)
    assert time.monotonic() - start < 60  # rank 0 stays blocked in the all-reduce; we do not wait
    assert processes_gone(pids)  # the stuck rank 0 was killed with the group
    assert pg_removed(policy.group)
    with pytest.raises(RuntimeError, match="shut down"):
        policy.token_logprobs(train_batch)


def test_a_killed_rank_fails_the_call_instead_of_hanging(
    tokenizer, model_spec, runtime_spec, train_batch, shutdown_after
) -> None:
    reference = ReferenceGroup(model_spec, tokenizer, ZERO3, GroupSpec(2, 0.5), runtime_spec)
    shutdown_after.append(reference)
    assert reference.token_logprobs(train_batch).shape == train_batch.input_ids.shape
    ray.kill(reference.group.actors[1], no_restart=True)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"reference rank 1 died during 'token_logprobs'"):
        # under ZeRO-3 rank 0 waits for rank 1 in the parameter all-gather
        reference.token_logprobs(train_batch)
    assert time.monotonic() - start < 60
    assert processes_gone([info.pid for info in reference.group._rank_infos])


def test_a_call_past_the_timeout_fails(tokenizer, model_spec, train_batch, shutdown_after) -> None:
    spec = RuntimeSpec(local_num_cpus=4, call_timeout_s=2.0, startup_timeout_s=240.0)
    policy = PolicyGroup(
        model_spec,
        tokenizer,
        DeepSpeedSpec(zero_stage=0, micro_batch_size_per_rank=4),
        GroupSpec(1, 0.5),
        spec,
    )
    shutdown_after.append(policy)
    pid = policy.rank_infos[0].pid
    start = time.monotonic()
    with pytest.raises(
        RuntimeError, match=r"policy ranks \[0\] did not finish 'train_step' within 2s"
    ):
        policy.train_step(train_batch, sleeps)
    assert time.monotonic() - start < 30
    assert processes_gone([pid])


def test_shutdown_leaves_nothing_behind(
    tokenizer, model_spec, runtime_spec, train_batch, prompts
) -> None:
    plan = plan_placement(
        runtime_spec,
        {"policy": GroupSpec(2, 0.25), "reference": GroupSpec(2, 0.25, colocate_with="policy")},
    )
    policy = PolicyGroup(
        model_spec, tokenizer, ZERO3, GroupSpec(2, 0.25), runtime_spec, placement=plan, wait=False
    )
    reference = ReferenceGroup(
        model_spec,
        tokenizer,
        ZERO3,
        GroupSpec(2, 0.25, colocate_with="policy"),
        runtime_spec,
        placement=plan,
        wait=False,
    )
    groups = [policy, reference]
    pids = [info.pid for group in groups for info in group.rank_infos]
    assert len(set(pids)) == 4
    actors = [actor for group in groups for actor in group.group.actors]
    torch.testing.assert_close(
        policy.token_logprobs(train_batch), reference.token_logprobs(train_batch)
    )

    for group in groups:
        group.shutdown()
        group.shutdown()  # idempotent
    plan.remove()
    assert processes_gone(pids)
    for actor in actors:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.__ray_ready__.remote(), timeout=30)
    assert ray.util.placement_group_table(plan.slot("policy").placement_group)["state"] == "REMOVED"
    with pytest.raises(RuntimeError, match="the policy group is shut down"):
        policy.generate(prompts, GenerationSpec(max_new_tokens=2))
