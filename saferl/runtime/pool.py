"""Rank processes that outlive their groups: start a worker process once, serve many groups.

Starting a rank is mostly not the model: it is a new Python process that imports torch,
transformers and DeepSpeed and joins a torch.distributed world, several seconds each on a small
machine. A run's stages (SFT, score models, PPO, evaluation) start and stop groups of the same
shape one after the other, and a test session starts hundreds. So every rank runs in a
:class:`RankHost`, a Ray actor that holds one worker (a :class:`~saferl.runtime.workers.EngineWorker`
subclass) at a time, and a group that shuts down cleanly hands its hosts to the driver's
:class:`WorkerPool` instead of killing them. The next group of the same shape takes them:

1. **Key.** Hosts are reused only by a group of the same :class:`PoolKey`: ranks, Ray CPUs and
   GPUs per rank, placement strategy, collective backend and timeout, and worker environment. A
   reused set keeps its placement group and its torch.distributed world (same processes, same
   rank order), so nothing is renegotiated; the new worker re-seeds torch before it builds its
   model, exactly as a fresh process would (the same numbers for the same seed).
2. **Release.** On a clean shutdown each host drops its worker (``engine.destroy()``, then
   garbage collection) and goes idle. A group that failed (a rank raised, died or timed out) is
   killed as before: its ranks may be stuck in a collective.
3. **Room.** Idle hosts keep their placement group's resources. A group that finds no idle set
   of its shape first evicts idle sets (oldest first) while the cluster lacks the CPUs or GPUs it
   needs; at most ``max_idle_ranks`` ranks stay idle.
4. **Cluster.** The pool belongs to one Ray cluster: when Ray is shut down or the driver joins
   another cluster, the old hosts are forgotten (Ray has already killed them).

5. **Sharing.** Groups of one rank on CPUs go further: at most
   ``runtime.max_single_rank_processes`` processes serve them (default: the machine's CPU
   count). Once that many serve groups, a new group loads its model into the process serving
   the fewest groups, next to the models already there (:meth:`WorkerPool.lease`); each group's
   worker has its own slot in the :class:`RankHost`, and Ray runs the calls of a process in
   turn. One core runs one model at a time anyway, and every process spared is seconds of
   imports. A failed group kills its processes, so the groups sharing them fail at their next
   call, as if the process had died.

``runtime.reuse_workers=false`` turns this off (every group starts and kills its own
processes). Colocated groups (a shared :class:`~saferl.runtime.cluster.PlacementPlan`) do not use
the pool, since their bundles belong to the plan: a clean one leaves its hosts idle in the plan
(:attr:`PlacementPlan.idle`), for the plan's next group of the same role and shape, and
:meth:`PlacementPlan.remove` kills them.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from saferl.runtime.cluster import (
    PlacementPlan,
    RoleSlot,
    actor_runtime_env,
    bundle_quantity,
    plan_placement,
)
from saferl.runtime.specs import GroupSpec, RuntimeSpec

__all__ = [
    "HostSet",
    "PoolKey",
    "RankHost",
    "WorkerPool",
    "close_worker_pool",
    "prestart_workers",
    "start_hosts",
    "worker_pool",
]

logger = logging.getLogger(__name__)

#: Seconds to wait for an idle set's release (its workers dropping their engines) before it is
#: considered broken and killed.
RELEASE_TIMEOUT_S = 120.0
#: Seconds to wait for Ray to report the resources of an evicted set as available again.
EVICTION_WAIT_S = 10.0


class RankHost:
    """One rank's process: holds its groups' workers, one per slot, and forwards calls to them.

    Plain class; :class:`~saferl.runtime.group.ActorGroup` makes it a Ray actor. A process serves
    one group at a time, except one-rank CPU groups beyond ``runtime.max_single_rank_processes``,
    which share it (each group is a slot; Ray runs the calls of the slots in turn). The worker
    class is passed by reference (Ray pickles classes by module and name), so the host imports
    the heavy modules only when its first worker is built.
    """

    def __init__(self) -> None:
        self.workers: dict[str, Any] = {}

    def start(self, slot: str, worker_class: type, *args: Any, **kwargs: Any) -> None:
        """Construct the worker of ``slot`` (nothing heavy: :meth:`call` ``("setup", ...)`` builds)."""
        from saferl.runtime.serialization import register_tensor_serializer

        register_tensor_serializer()  # for the tensors this process sends back
        if slot in self.workers:
            raise RuntimeError(
                f"this rank already holds a {type(self.workers[slot]).__name__} in slot {slot!r}"
            )
        self.workers[slot] = worker_class(*args, **kwargs)

    def call(self, slot: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``worker.method(*args, **kwargs)`` of ``slot``'s worker."""
        worker = self.workers.get(slot)
        if worker is None:
            raise RuntimeError(f"this rank holds no worker in slot {slot!r}; cannot call {method!r}")
        return getattr(worker, method)(*args, **kwargs)

    def warm(self) -> None:
        """Import what every worker needs (torch, transformers, DeepSpeed), ahead of its first
        group (:func:`prestart_workers`)."""
        import saferl.runtime.workers  # noqa: F401

    def release(self, slot: str | None = None) -> None:
        """Drop ``slot``'s worker and its engine (None: every worker); the process and its
        torch.distributed world stay."""
        slots = list(self.workers) if slot is None else [slot]
        for name in slots:
            worker = self.workers.pop(name, None)
            if worker is not None and hasattr(worker, "close"):
                worker.close()
            del worker
        gc.collect()


@dataclass(frozen=True)
class PoolKey:
    """What a set of hosts must match to serve a group (see the module docstring)."""

    num_ranks: int
    num_cpus: float
    num_gpus: float
    strategy: str
    backend: str
    collective_timeout_s: float
    runtime_env: str  # JSON of the actors' runtime_env ("null": inherited from the cluster)

    @staticmethod
    def of(
        num_ranks: int,
        num_cpus: float,
        num_gpus: float,
        strategy: str,
        backend: str,
        collective_timeout_s: float,
        runtime_env: dict[str, Any] | None,
    ) -> PoolKey:
        return PoolKey(
            num_ranks=int(num_ranks),
            num_cpus=float(num_cpus),
            num_gpus=float(num_gpus),
            strategy=strategy,
            backend=backend,
            collective_timeout_s=float(collective_timeout_s),
            runtime_env=json.dumps(runtime_env, sort_keys=True),
        )

    @staticmethod
    def for_group(group_spec: GroupSpec, runtime_spec: RuntimeSpec) -> PoolKey:
        """The key of a group of ``group_spec`` with its own placement group."""
        return PoolKey.of(
            group_spec.num_ranks,
            group_spec.cpus_per_rank,
            group_spec.gpus_per_rank,
            runtime_spec.placement_strategy,
            runtime_spec.resolve_backend(group_spec.uses_gpus),
            runtime_spec.collective_timeout_s,
            actor_runtime_env(runtime_spec),
        )

    def resources(self) -> dict[str, float]:
        """Ray resources the set reserves (its placement group's bundles, summed)."""
        needed = {"CPU": bundle_quantity(self.num_cpus) * self.num_ranks}
        if self.num_gpus > 0:
            needed["GPU"] = bundle_quantity(self.num_gpus) * self.num_ranks
        return needed


@dataclass
class HostSet:
    """The hosts of one group, in rank order, with the placement group they run in; ``joined``:
    they form a torch.distributed world already (False for processes that never served a group).
    """

    key: PoolKey
    plan: PlacementPlan
    hosts: list[Any]
    pending_release: list[Any] = field(default_factory=list)
    joined: bool = True
    users: set[str] = field(default_factory=set)  # the slots of the groups it serves (shared sets)

    def release(self, slot: str | None = None) -> None:
        """Ask every host to drop ``slot``'s worker (None: all; asynchronously:
        :meth:`wait_released` waits)."""
        self.pending_release += [host.release.remote(slot) for host in self.hosts]

    def wait_released(self) -> bool:
        """Wait for the release (or the warm-up) of every host; False when one failed or died."""
        try:
            ray.get(self.pending_release, timeout=RELEASE_TIMEOUT_S)
        except Exception as error:  # a host died while idle, or its release failed
            logger.warning("pool: an idle set could not be released (%s); killing it", error)
            return False
        self.pending_release = []
        return True

    def kill_hosts(self) -> None:
        """Kill the hosts (their placement group stays)."""
        for host in self.hosts:
            try:
                ray.kill(host, no_restart=True)
            except Exception as error:  # already dead
                logger.debug("pool: ray.kill: %s", error)
        self.hosts = []

    def kill(self) -> None:
        """Kill the hosts and remove their placement group."""
        self.kill_hosts()
        self.plan.remove()


class WorkerPool:
    """Idle :class:`HostSet` s of one Ray cluster, oldest first.

    Args:
        max_idle_ranks: the most ranks kept idle; giving back more evicts the oldest sets.
    """

    def __init__(self, max_idle_ranks: int = 8) -> None:
        self.max_idle_ranks = max_idle_ranks
        self.cluster = ray.get_runtime_context().gcs_address
        self._idle: list[HostSet] = []
        self._shared: list[HostSet] = []  # sets serving one or more groups that share them
        self.reused = 0  # sets handed out again (for logs and tests)

    @property
    def idle_ranks(self) -> int:
        return sum(entry.key.num_ranks for entry in self._idle)

    def take(self, key: PoolKey) -> HostSet | None:
        """An idle set of ``key``'s shape whose release finished, or None."""
        for entry in [e for e in self._idle if e.key == key]:
            self._idle.remove(entry)
            if not entry.wait_released():
                entry.kill()
                continue
            self.reused += 1
            return entry
        return None

    def lease(self, key: PoolKey, limit: int, slot: str) -> HostSet | None:
        """Hosts for a group that shares processes (``limit`` of them at most for ``key``): an
        idle set, else None while fewer than ``limit`` sets serve groups (start new processes and
        :meth:`add_shared` them), else the set serving the fewest groups, which ``slot`` joins."""
        entry = self.take(key)
        if entry is None:
            serving = [e for e in self._shared if e.key == key]
            if len(serving) < limit:
                return None
            entry = min(serving, key=lambda e: len(e.users))  # the first of the least busy
            entry.users.add(slot)
            return entry
        self.add_shared(entry, slot)
        return entry

    def add_shared(self, entry: HostSet, slot: str) -> None:
        """Keep ``entry`` (new processes serving ``slot``'s group) for groups that share them."""
        entry.users = {slot}
        self._shared.append(entry)

    def end_lease(self, entry: HostSet, slot: str, clean: bool) -> None:
        """``slot``'s group is done with ``entry``: a clean one releases its worker and the set
        goes idle once no group uses it; after a failure the processes are killed (the other
        groups in them fail at their next call, as they would if a process died)."""
        entry.users.discard(slot)
        if not clean:
            entry.users.clear()
        else:
            entry.release(slot)
        if entry.users:  # other groups still use it
            return
        if entry in self._shared:
            self._shared.remove(entry)
        if clean:
            self.give_back(entry, released=True)
        else:
            entry.kill()

    def give_back(self, entry: HostSet, released: bool = False) -> None:
        """Release ``entry``'s workers (asynchronously; ``released``: already asked) and keep it
        idle."""
        if not released:
            entry.release()
        self._idle.append(entry)
        while self._idle and self.idle_ranks > self.max_idle_ranks:
            self._idle.pop(0).kill()

    def add_started(self, entry: HostSet) -> None:
        """Keep a set of new processes (``entry.pending_release``: their warm-up) idle."""
        self._idle.append(entry)

    def count(self, key: PoolKey) -> int:
        """Idle sets of ``key``'s shape."""
        return sum(entry.key == key for entry in self._idle)

    def count_shared(self, key: PoolKey) -> int:
        """Sets of ``key``'s shape serving groups that share them."""
        return sum(entry.key == key for entry in self._shared)

    def make_room(self, needed: dict[str, float]) -> None:
        """Evict idle sets, oldest first, until the cluster has ``needed`` resources available."""
        while self._idle and not _available(needed):
            self._idle.pop(0).kill()
            deadline = time.monotonic() + EVICTION_WAIT_S
            while not _available(needed) and time.monotonic() < deadline:
                time.sleep(0.1)

    def close(self) -> None:
        """Kill every idle set and every shared one (their groups fail at their next call)."""
        sets, self._idle, self._shared = self._idle + self._shared, [], []
        for entry in sets:
            entry.kill()


def _available(needed: dict[str, float]) -> bool:
    available = ray.available_resources()
    return all(available.get(name, 0.0) + 1e-9 >= amount for name, amount in needed.items())


_pool: WorkerPool | None = None


def worker_pool() -> WorkerPool:
    """The driver's pool for the Ray cluster it is connected to (a new one after a reconnect)."""
    global _pool
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised; call saferl.runtime.init_ray(runtime_spec)")
    cluster = ray.get_runtime_context().gcs_address
    if _pool is None or _pool.cluster != cluster:
        _pool = WorkerPool()
    return _pool


def close_worker_pool() -> None:
    """Kill the idle hosts of this driver's pool (when Ray is still up) and forget them."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None and ray.is_initialized():
        if pool.cluster == ray.get_runtime_context().gcs_address:
            pool.close()


def start_hosts(slot: RoleSlot, runtime_spec: RuntimeSpec) -> list[Any]:
    """New :class:`RankHost` actors, rank ``i`` in bundle ``i`` of ``slot``'s placement group with
    the slot's CPU (and GPU) request (not waited for)."""
    options: dict[str, Any] = {
        "num_cpus": slot.num_cpus,
        "max_restarts": 0,
        "max_task_retries": 0,
    }
    if slot.num_gpus > 0:
        options["num_gpus"] = slot.num_gpus
    if (runtime_env := actor_runtime_env(runtime_spec)) is not None:
        options["runtime_env"] = runtime_env
    from saferl.runtime.serialization import register_tensor_serializer

    register_tensor_serializer()  # for the tensors the driver sends to its groups
    remote_host = ray.remote(RankHost)
    hosts = []
    for rank in range(slot.num_ranks):
        strategy = PlacementGroupSchedulingStrategy(
            placement_group=slot.placement_group,
            placement_group_bundle_index=rank,
            placement_group_capture_child_tasks=False,
        )
        hosts.append(remote_host.options(scheduling_strategy=strategy, **options).remote())
    return hosts


def shared_process_limit(runtime_spec: RuntimeSpec, group_spec: GroupSpec) -> int:
    """How many rank processes groups of ``group_spec``'s shape share
    (``runtime.max_single_rank_processes``); 0: they do not share (several ranks, GPUs,
    ``reuse_workers`` off, or a limit of 0).

    Unset, the limit is the CPUs that can run the processes at once: this machine's cores on a
    local cluster (whose logical CPUs may be more than its cores), the cluster's Ray CPUs on a
    joined one (so groups spread over nodes keep processes of their own)."""
    if not runtime_spec.reuse_workers or group_spec.num_ranks != 1 or group_spec.uses_gpus:
        return 0
    if runtime_spec.max_single_rank_processes is not None:
        return runtime_spec.max_single_rank_processes
    if runtime_spec.address is None:
        return os.cpu_count() or 1
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def prestart_workers(runtime_spec: RuntimeSpec, group_spec: GroupSpec, count: int) -> int:
    """Start rank processes for ``count`` groups of ``group_spec`` in the background, so that
    groups created later (a learner's, after the setup's stages) find them up and warmed.

    Does nothing with ``runtime.reuse_workers=false``; counts idle sets of that shape already
    there; starts no more than the pool keeps idle. Returns the number of sets started.
    """
    if not runtime_spec.reuse_workers or count <= 0:
        return 0
    pool = worker_pool()
    key = PoolKey.for_group(group_spec, runtime_spec)
    if limit := shared_process_limit(runtime_spec, group_spec):  # groups share this many at most
        count = min(count, limit - pool.count_shared(key))
    room = pool.max_idle_ranks - pool.idle_ranks
    wanted = min(count - pool.count(key), room // max(key.num_ranks, 1))
    own = GroupSpec(
        num_ranks=group_spec.num_ranks,
        cpus_per_rank=group_spec.cpus_per_rank,
        gpus_per_rank=group_spec.gpus_per_rank,
    )
    started = 0
    for _ in range(max(wanted, 0)):
        if not _available(key.resources()):
            break  # prestarting never evicts or waits for resources
        plan = plan_placement(runtime_spec, {"prestarted": own})
        hosts = start_hosts(plan.slot("prestarted"), runtime_spec)
        warm = [host.warm.remote() for host in hosts]
        pool.add_started(HostSet(key, plan, hosts, pending_release=warm, joined=False))
        started += 1
    if started:
        logger.info("pool: starting %d sets of %d rank processes", started, key.num_ranks)
    return started
