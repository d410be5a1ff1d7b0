"""Rank processes that outlive their groups (saferl.runtime.pool): a group of the same shape
reuses them and computes exactly what fresh processes compute; other shapes, failed groups and
``reuse_workers=False`` do not; idle processes make room for groups that need their resources."""

from __future__ import annotations

import dataclasses
import sys
import time

import psutil
import pytest
import ray
import torch

from saferl.data.collators import SequenceBatch
from saferl.runtime import (
    CriticGroup,
    DeepSpeedSpec,
    GroupSpec,
    PolicyGroup,
    ReferenceGroup,
    RuntimeSpec,
)
from saferl.runtime.pool import close_worker_pool, worker_pool

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

ZERO3 = DeepSpeedSpec(zero_stage=3, micro_batch_size_per_rank=2)
TWO_RANKS = GroupSpec(2, 0.25)
ONE_RANK = DeepSpeedSpec(zero_stage=2, micro_batch_size_per_rank=4)  # one rank takes the 4-row batch


def response_loss(logprobs: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    return -(logprobs * batch.response_mask).sum(dim=-1).mean()


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def alive(pids: list[int]) -> bool:
    return all(running(pid) for pid in pids)


def gone(pids: list[int], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(running(pid) for pid in pids):
            return True
        time.sleep(0.2)
    return False


def train_then_score(group_factory, train_batch: SequenceBatch):
    """One train step of a fresh policy group, then its log-probs; the group's pids."""
    policy = group_factory()
    try:
        step = policy.train_step(train_batch, response_loss)
        return (
            step.loss,
            step.grad_norm,
            policy.token_logprobs(train_batch),
            [info.pid for info in policy.rank_infos],
        )
    finally:
        policy.shutdown()


def test_a_group_of_the_same_shape_reuses_the_processes_and_computes_the_same_numbers(
    tokenizer, model_spec, runtime_spec, train_batch
) -> None:
    close_worker_pool()
    fresh_spec = dataclasses.replace(runtime_spec, reuse_workers=False)

    # 1. A two-rank ZeRO-3 critic, then a policy of the same shape in the same processes.
    critic = CriticGroup(model_spec, tokenizer, ZERO3, TWO_RANKS, runtime_spec, seed=3)
    critic_pids = [info.pid for info in critic.rank_infos]
    critic.values(train_batch)
    critic.shutdown()
    assert alive(critic_pids)
    assert worker_pool().idle_ranks >= 2

    def pooled() -> PolicyGroup:
        return PolicyGroup(model_spec, tokenizer, ZERO3, TWO_RANKS, runtime_spec, seed=5)

    def fresh() -> PolicyGroup:
        return PolicyGroup(model_spec, tokenizer, ZERO3, TWO_RANKS, fresh_spec, seed=5)

    reused_before = worker_pool().reused
    loss, grad_norm, logprobs, pids = train_then_score(pooled, train_batch)
    assert pids == critic_pids  # the same processes, in the same rank order
    assert worker_pool().reused == reused_before + 1

    # 2. Fresh processes (reuse off) with the same seed: the same step, bit for bit.
    fresh_loss, fresh_grad_norm, fresh_logprobs, fresh_pids = train_then_score(fresh, train_batch)
    assert set(fresh_pids).isdisjoint(pids)
    assert gone(fresh_pids)  # reuse off: killed at shutdown
    assert loss == fresh_loss
    assert grad_norm == fresh_grad_norm
    torch.testing.assert_close(logprobs, fresh_logprobs, rtol=0, atol=0)


def test_other_shapes_and_failed_groups_do_not_reuse(
    tokenizer, model_spec, runtime_spec, train_batch
) -> None:
    close_worker_pool()
    one_rank = GroupSpec(1, 0.25)
    reference = ReferenceGroup(model_spec, tokenizer, ZERO3, one_rank, runtime_spec)
    first = [info.pid for info in reference.rank_infos]
    reference.shutdown()

    # Another CPU request is another shape: new processes, the idle one stays idle.
    other = ReferenceGroup(model_spec, tokenizer, ZERO3, GroupSpec(1, 0.5), runtime_spec)
    other_pids = [info.pid for info in other.rank_infos]
    assert set(other_pids).isdisjoint(first)

    # A group whose call failed kills its processes rather than handing them on.
    with pytest.raises(RuntimeError, match="reference rank 0 raised"):
        other.group.call("train_step", train_batch, response_loss)
    assert gone(other_pids)

    # The idle process is still there for its own shape, and close_worker_pool kills it.
    again = ReferenceGroup(model_spec, tokenizer, ZERO3, one_rank, runtime_spec)
    assert [info.pid for info in again.rank_infos] == first
    again.shutdown()
    close_worker_pool()
    assert gone(first)


def test_idle_processes_make_room_for_a_group_that_needs_their_cpus(
    tokenizer, model_spec, train_batch
) -> None:
    close_worker_pool()
    spec = RuntimeSpec(startup_timeout_s=60.0, call_timeout_s=120.0)
    half = int(ray.cluster_resources()["CPU"]) // 2
    # Idle: one rank holding more than half of the cluster's CPUs.
    big = ReferenceGroup(model_spec, tokenizer, ZERO3, GroupSpec(1, half + 1), spec)
    big_pids = [info.pid for info in big.rank_infos]
    big.shutdown()
    assert alive(big_pids)
    # A group of another shape needing more than what is left: the idle rank is evicted (and
    # its CPUs freed) instead of the placement waiting out its timeout.
    start = time.monotonic()
    other = ReferenceGroup(model_spec, tokenizer, ZERO3, GroupSpec(1, half), spec)
    assert other.token_logprobs(train_batch).shape == train_batch.input_ids.shape
    assert time.monotonic() - start < 60
    assert gone(big_pids)
    other.shutdown()
    close_worker_pool()


def test_prestarted_processes_serve_the_next_groups(
    tokenizer, model_spec, runtime_spec, train_batch
) -> None:
    from saferl.runtime.pool import prestart_workers

    close_worker_pool()
    assert prestart_workers(runtime_spec, TWO_RANKS, count=1) == 1
    assert prestart_workers(runtime_spec, TWO_RANKS, count=1) == 0  # already there
    assert (
        prestart_workers(dataclasses.replace(runtime_spec, reuse_workers=False), TWO_RANKS, 1) == 0
    )
    prestarted = {tuple(entry.hosts) for entry in worker_pool()._idle}
    reference = ReferenceGroup(model_spec, tokenizer, ZERO3, TWO_RANKS, runtime_spec, seed=2)
    fresh = ReferenceGroup(
        model_spec,
        tokenizer,
        ZERO3,
        TWO_RANKS,
        dataclasses.replace(runtime_spec, reuse_workers=False),
        seed=2,
    )
    try:
        assert tuple(reference.group.actors) in prestarted  # their first group joins a world
        torch.testing.assert_close(
            reference.token_logprobs(train_batch), fresh.token_logprobs(train_batch), rtol=0, atol=0
        )
    finally:
        reference.shutdown()
        fresh.shutdown()
        close_worker_pool()


def test_one_rank_groups_beyond_the_limit_share_a_process_and_compute_what_a_limit_of_zero_computes(
    tokenizer, model_spec, runtime_spec, train_batch
) -> None:
    close_worker_pool()
    one_rank = GroupSpec(1, 0.25)
    shared_spec = dataclasses.replace(runtime_spec, max_single_rank_processes=1)
    # A limit of zero: every one-rank group gets a process of its own (none is shared).
    fresh_spec = dataclasses.replace(runtime_spec, max_single_rank_processes=0)

    def policy_and_reference(spec: RuntimeSpec):
        return (
            PolicyGroup(model_spec, tokenizer, ONE_RANK, one_rank, spec, seed=5),
            ReferenceGroup(model_spec, tokenizer, ONE_RANK, one_rank, spec, seed=2),
        )

    def step_then_score(policy: PolicyGroup, reference: ReferenceGroup):
        # Interleaved calls: each model's state must stay its own in a shared process.
        reference_before = reference.token_logprobs(train_batch)
        step = policy.train_step(train_batch, response_loss)
        return (
            step.loss,
            step.grad_norm,
            policy.token_logprobs(train_batch),
            reference_before,
            reference.token_logprobs(train_batch),
        )

    # 1. Two groups, a limit of one process: the second loads its model into the first's.
    policy, reference = policy_and_reference(shared_spec)
    (pid,) = [info.pid for info in policy.rank_infos]
    assert [info.pid for info in reference.rank_infos] == [pid]
    shared = step_then_score(policy, reference)

    # 2. One group ending cleanly leaves the other working in the same process; when both
    #    have ended the process is idle, and the next group of the shape takes it.
    reference.shutdown()
    torch.testing.assert_close(policy.token_logprobs(train_batch), shared[2], rtol=0, atol=0)
    policy.shutdown()
    assert alive([pid]) and worker_pool().idle_ranks >= 1
    again = ReferenceGroup(model_spec, tokenizer, ONE_RANK, one_rank, shared_spec, seed=2)
    assert [info.pid for info in again.rank_infos] == [pid]

    # 3. A failed group kills the process it shares: the other group fails at its next call,
    #    naming its role, as if the process had died.
    other = PolicyGroup(model_spec, tokenizer, ONE_RANK, one_rank, shared_spec, seed=5)
    assert [info.pid for info in other.rank_infos] == [pid]
    with pytest.raises(RuntimeError, match="reference rank 0 raised"):
        again.group.call("train_step", train_batch, response_loss)
    assert gone([pid])
    with pytest.raises(RuntimeError, match="policy rank 0 died"):
        other.token_logprobs(train_batch)

    # 4. The same seeds in processes of their own (a limit of zero): the same numbers, bit for bit
    #    (the shared process is gone, so both start new ones).
    fresh_policy, fresh_reference = policy_and_reference(fresh_spec)
    try:
        (policy_pid,), (reference_pid,) = ([info.pid for info in group.rank_infos]
                                           for group in (fresh_policy, fresh_reference))
        assert len({pid, policy_pid, reference_pid}) == 3
        fresh = step_then_score(fresh_policy, fresh_reference)
    finally:
        fresh_policy.shutdown()
        fresh_reference.shutdown()
    assert shared[:2] == fresh[:2]
    for got, expected in zip(shared[2:], fresh[2:], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    close_worker_pool()
