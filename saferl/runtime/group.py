"""A generic group of rank actors: creation, rendezvous, calls with timeouts, shutdown.

:class:`ActorGroup` is the one place that talks to Ray about a role's actors. The typed role
groups (:mod:`saferl.runtime.roles`) hold one and add their role's methods.

1. **Placement**: the group takes its :class:`~saferl.runtime.cluster.RoleSlot` from a shared
   :class:`~saferl.runtime.cluster.PlacementPlan` (colocated roles; with the rank processes the
   plan's last group of its role left idle there, if any), or reuses idle rank
   processes of its shape from the driver's :class:`~saferl.runtime.pool.WorkerPool` (with their
   placement group), or plans and owns a placement group of its own. A one-rank CPU group may
   instead share processes that serve other groups (``runtime.max_single_rank_processes``).
2. **Actors**: rank ``i`` is a :class:`~saferl.runtime.pool.RankHost` in bundle ``i`` with the
   slot's CPU (and GPU) request; it constructs the group's worker class in the group's own slot
   and forwards calls to it.
3. **World**: for new processes, rank 0 reports its node address and a free port and every
   rank joins; reused processes are already in their world. Every rank then seeds torch and
   builds its engine (``setup``), all at once. The start-up is submitted without blocking;
   :meth:`ActorGroup.wait_ready` (or the first call) waits for it.
4. **Calls**: :meth:`call` sends the same arguments to every rank, :meth:`call_per_rank` one
   argument tuple per rank; results come back in rank order. A rank that raises, dies or runs
   past the timeout raises a ``RuntimeError`` that names the role, the rank and the method (a
   lost process: :class:`RankLostError`, which the CLI recovers from);
   the group then shuts itself down and kills its processes, since its other ranks may be stuck
   in a collective waiting for the failed one.
5. **Shutdown**: after a clean run the processes go back to the pool, or stay idle in their shared
   plan (``runtime.reuse_workers``); otherwise kill every actor, wait until Ray reports them dead,
   remove an owned placement group.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import ray

from saferl.runtime.cluster import PlacementPlan, RoleSlot, plan_placement
from saferl.runtime.pool import HostSet, PoolKey, shared_process_limit, start_hosts, worker_pool
from saferl.runtime.specs import GroupSpec, RuntimeSpec
from saferl.runtime.types import RankInfo
from saferl.runtime.workers import RankSetup

__all__ = ["ActorGroup", "RankLostError"]

logger = logging.getLogger(__name__)


class RankLostError(RuntimeError):
    """A rank's process (or its node) went away mid-call: the run can go on from its last
    checkpoint once the group is started again (:mod:`saferl.runtime.recovery`), unlike a rank
    that raised, whose error would come back.

    Attributes:
        role: the group's role (``policy``, ``reward_critic``, ...); rank: the lost rank;
        method: the call it was serving.
    """

    def __init__(self, message: str, role: str, rank: int, method: str) -> None:
        super().__init__(message)
        self.role, self.rank, self.method = role, rank, method


#: Numbers the groups' worker slots (a rank process may hold the workers of several groups).
_SLOT_NUMBERS = itertools.count()


class ActorGroup:
    """``num_ranks`` Ray actors of one worker class forming one torch.distributed world.

    Args:
        role: the role's name (messages, placement-group names).
        worker_class: the plain worker class (e.g. ``PolicyWorker``); its constructor takes a
            :class:`~saferl.runtime.workers.RankSetup` and then ``worker_kwargs``.
        group_spec: ranks and per-rank resources.
        runtime_spec: backend, placement strategy, timeouts, worker environment.
        worker_kwargs: the worker's remaining constructor arguments (sent to every rank).
        placement: a shared plan holding this role (colocation); None plans and owns one.
        seed: torch seed of every rank before its model is built.
        wait: wait for the start-up here (default). With False the ranks start in the background
            and the first call (or :meth:`wait_ready`) waits, so several groups start at once.

    Raises:
        RuntimeError: placement, actor start, rendezvous or engine build failed or timed out.
    """

    def __init__(
        self,
        role: str,
        worker_class: type,
        group_spec: GroupSpec,
        runtime_spec: RuntimeSpec,
        worker_kwargs: dict[str, Any],
        placement: PlacementPlan | None = None,
        seed: int = 0,
        wait: bool = True,
    ) -> None:
        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised; call saferl.runtime.init_ray(runtime_spec)")
        self.role = role
        self.group_spec = group_spec
        self.runtime_spec = runtime_spec
        self.backend = runtime_spec.resolve_backend(group_spec.uses_gpus)
        self._owned_plan: PlacementPlan | None = None
        if placement is None and group_spec.colocate_with is not None:
            raise ValueError(
                f"group.colocate_with={group_spec.colocate_with!r} for {role!r} needs the shared "
                "placement: build one with saferl.runtime.plan_placement(runtime_spec, {role: "
                "group_spec, ...}) and pass it as placement="
            )
        self.actors: list[Any] = []
        self._closed = False
        self._failed = False
        self._rank_infos: list[RankInfo] = []
        self._pending_start: list[Any] = []
        # A group with its own placement group reuses rank processes through the driver's pool; a
        # group in a shared plan (colocated roles) through the plan, whose bundles its processes
        # stay in: only the plan's next group of the same role takes them.
        self._pool_key: PoolKey | None = None
        self._shared_plan: PlacementPlan | None = None
        # This group's worker slot in its processes (unique: processes may serve several groups).
        self._slot = f"{role}#{next(_SLOT_NUMBERS)}"
        # One-rank CPU groups share at most this many processes (the pool's leases); 0: not.
        self._share_limit = 0 if placement is not None else shared_process_limit(runtime_spec, group_spec)
        self._lease: HostSet | None = None
        if runtime_spec.reuse_workers:
            self._pool_key = PoolKey.for_group(group_spec, runtime_spec)
            self._shared_plan = placement
        try:
            reused = self._take_from_pool()
            if reused is not None:
                self.slot: RoleSlot = reused[0]
            else:
                self.slot = (placement if placement is not None else self._plan_own()).slot(role)
            if self.slot.num_ranks != group_spec.num_ranks:
                raise ValueError(
                    f"the placement plan reserved {self.slot.num_ranks} ranks for {role!r}, but "
                    f"its group spec asks for {group_spec.num_ranks}"
                )
            self._launch(worker_class, worker_kwargs, seed, joined=reused is not None and reused[1])
            if wait:
                self.wait_ready()
        except BaseException:
            self._failed = True
            self.shutdown()
            raise

    @property
    def num_ranks(self) -> int:
        """Ranks of the group."""
        return self.group_spec.num_ranks

    # -- start -------------------------------------------------------------------------------

    def _plan_own(self) -> PlacementPlan:
        """A placement group for this group alone (after making room in the pool)."""
        own = GroupSpec(
            num_ranks=self.group_spec.num_ranks,
            cpus_per_rank=self.group_spec.cpus_per_rank,
            gpus_per_rank=self.group_spec.gpus_per_rank,
        )
        if self._pool_key is not None:
            worker_pool().make_room(self._pool_key.resources())
        self._owned_plan = plan_placement(self.runtime_spec, {self.role: own})
        return self._owned_plan

    def _take_from_pool(self) -> tuple[RoleSlot, bool] | None:
        """Idle hosts of this group's shape (their slot, and whether they are in a world
        already), or None to start new ones."""
        if self._pool_key is None:
            return None
        if self._shared_plan is not None:
            return self._take_from_plan(self._shared_plan)
        if self._share_limit:
            return self._lease_from_pool()
        entry = worker_pool().take(self._pool_key)
        if entry is None:
            return None
        self._owned_plan = entry.plan
        self.actors = list(entry.hosts)
        (slot,) = entry.plan.slots.values()
        logger.info("%s: reusing %d idle rank processes", self.role, len(entry.hosts))
        return slot, entry.joined

    def _lease_from_pool(self) -> tuple[RoleSlot, bool] | None:
        """Processes shared with other one-rank groups (:meth:`WorkerPool.lease`), or None to
        start new ones (which :meth:`_launch` then offers to later groups)."""
        entry = worker_pool().lease(self._pool_key, self._share_limit, self._slot)
        if entry is None:
            return None
        self._lease = entry
        self.actors = list(entry.hosts)
        (slot,) = entry.plan.slots.values()
        others = len(entry.users) - 1
        logger.info(
            "%s: %s", self.role,
            f"loading its model into a rank process serving {others} other group(s)" if others
            else f"reusing {len(entry.hosts)} idle rank processes",
        )
        return slot, entry.joined

    def _take_from_plan(self, plan: PlacementPlan) -> tuple[RoleSlot, bool] | None:
        """The hosts a previous group of this role left idle in ``plan``, or None."""
        entry = plan.idle.pop(self.role, None)
        if entry is None:
            return None
        if entry.key != self._pool_key:  # another shape in the same slot: start afresh
            entry.kill_hosts()
            return None
        if not entry.wait_released():
            entry.kill_hosts()
            return None
        self.actors = list(entry.hosts)
        logger.info("%s: reusing %d idle rank processes of its plan", self.role, len(entry.hosts))
        return plan.slot(self.role), entry.joined

    def _launch(
        self, worker_class: type, worker_kwargs: dict[str, Any], seed: int, joined: bool
    ) -> None:
        """Start a worker of ``worker_class`` on every rank (in new processes unless the pool gave
        some); ``joined``: the hosts already form this group's torch.distributed world."""
        if not self.actors:
            self.actors = start_hosts(self.slot, self.runtime_spec)
            if self._share_limit and self._pool_key is not None and self._owned_plan is not None:
                # New processes: the pool offers them to the next groups of this shape, and
                # removes their placement group when it kills them.
                self._lease = HostSet(self._pool_key, self._owned_plan, list(self.actors))
                worker_pool().add_shared(self._lease, self._slot)
                self._owned_plan = None
        start_refs = []
        for rank, actor in enumerate(self.actors):
            setup = RankSetup(
                role=self.role,
                rank=rank,
                world_size=self.num_ranks,
                uses_gpus=self.group_spec.uses_gpus,
                backend=self.backend,
                collective_timeout_s=self.runtime_spec.collective_timeout_s,
                seed=seed,
            )
            start_refs.append(actor.start.remote(self._slot, worker_class, setup, **worker_kwargs))
        # Submitted without waiting (Ray passes rank 0's result to every setup), so several
        # groups created with wait=False start at the same time. Reused hosts are already in
        # their world: no rendezvous (master None).
        master = None if joined else self.actors[0].call.remote(self._slot, "master_address")
        info_refs = [actor.call.remote(self._slot, "rank_info") for actor in self.actors]
        setup_refs = [actor.call.remote(self._slot, "setup", master) for actor in self.actors]
        self._pending_start = start_refs + info_refs + setup_refs
        if self._lease is not None:
            # A process runs its calls in order, so a group joining these processes later finds
            # them in their world (this setup joins it first).
            self._lease.joined = True

    def wait_ready(self) -> None:
        """Wait until every rank has joined the world and built its engine (idempotent).

        Raises:
            RuntimeError: a rank failed to start or ``runtime.startup_timeout_s`` passed; the
                group is shut down.
        """
        if not self._pending_start:
            return
        refs, self._pending_start = self._pending_start, []
        ranks = list(range(self.num_ranks)) * 3
        results = self._gather(refs, ranks, "start-up", self.runtime_spec.startup_timeout_s)
        self._rank_infos = results[self.num_ranks : 2 * self.num_ranks]
        logger.info("%s: %d ranks up (%s)", self.role, self.num_ranks, self.backend)

    @property
    def rank_infos(self) -> list[RankInfo]:
        """Where each rank runs (waits for the start-up)."""
        self.wait_ready()
        return self._rank_infos

    # -- calls -------------------------------------------------------------------------------

    def _check_open(self, method: str) -> None:
        if self._closed:
            raise RuntimeError(
                f"the {self.role} group is shut down (after shutdown() or a failed call); cannot "
                f"call {method!r}. Create a new group (and load the last checkpoint)"
            )
        self.wait_ready()

    def _gather(
        self, refs: Sequence[Any], ranks: Sequence[int], method: str, timeout_s: float
    ) -> list[Any]:
        """Results of ``refs`` in order; the first failure or the deadline raises."""
        deadline = time.monotonic() + timeout_s
        index_of = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        while pending:
            remaining = deadline - time.monotonic()
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(remaining, 0.0))
            if not ready:
                late = sorted(ranks[index_of[ref]] for ref in pending)
                self._fail()
                raise RuntimeError(
                    f"{self.role} ranks {late} did not finish {method!r} within {timeout_s:.0f}s "
                    "(runtime.call_timeout_s / startup_timeout_s); the group was shut down"
                )
            for ref in ready:
                rank = ranks[index_of[ref]]
                try:
                    results[index_of[ref]] = ray.get(ref)
                except ray.exceptions.RayTaskError as error:
                    self._fail()
                    cause = error.cause if getattr(error, "cause", None) is not None else error
                    raise RuntimeError(
                        f"{self.role} rank {rank} raised in {method!r}: "
                        f"{type(cause).__name__}: {cause}; the group was shut down"
                    ) from error
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as error:
                    # The process, or the node holding it or its result, is gone.
                    self._fail()
                    raise RankLostError(
                        f"{self.role} rank {rank} died during {method!r} (its actor process "
                        f"exited or was killed, or its node was lost): {error}; the group was shut down",
                        self.role, rank, method,
                    ) from error
        return results

    def _fail(self) -> None:
        self._failed = True
        try:
            self.shutdown()
        except Exception as error:  # the original failure matters more
            logger.warning("%s: shutdown after a failure raised %s", self.role, error)

    def call(
        self, method: str, *args: Any, timeout_s: float | None = None, **kwargs: Any
    ) -> list[Any]:
        """``method(*args, **kwargs)`` on every rank; results in rank order."""
        self._check_open(method)
        refs = [actor.call.remote(self._slot, method, *args, **kwargs) for actor in self.actors]
        return self._gather(refs, list(range(self.num_ranks)), method, self._timeout(timeout_s))

    def call_rank(self, rank: int, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """``method(*args)`` on one rank (not for methods holding a collective)."""
        self._check_open(method)
        ref = self.actors[rank].call.remote(self._slot, method, *args)
        return self._gather([ref], [rank], method, self._timeout(timeout_s))[0]

    def call_per_rank(
        self,
        method: str,
        per_rank_args: Sequence[tuple[Any, ...]],
        timeout_s: float | None = None,
        label: str | None = None,
    ) -> list[Any]:
        """``method(*per_rank_args[r])`` on rank ``r``; results in rank order.

        ``label`` is the name messages give the call (default ``method``): a role group calls a
        rank's ``forward`` as its own ``token_logprobs``, ``end_scores`` or ``values``.
        """
        label = method if label is None else label
        self._check_open(label)
        if len(per_rank_args) != self.num_ranks:
            raise ValueError(
                f"{len(per_rank_args)} argument tuples for the {self.num_ranks} ranks of {self.role}"
            )
        refs = [
            actor.call.remote(self._slot, method, *args)
            for actor, args in zip(self.actors, per_rank_args, strict=True)
        ]
        return self._gather(refs, list(range(self.num_ranks)), label, self._timeout(timeout_s))

    def _timeout(self, timeout_s: float | None) -> float:
        return self.runtime_spec.call_timeout_s if timeout_s is None else timeout_s

    # -- shutdown ----------------------------------------------------------------------------

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """End the group (idempotent).

        After a clean run (every call returned) with ``runtime.reuse_workers``, the rank
        processes go back to the driver's :class:`~saferl.runtime.pool.WorkerPool`, which releases
        their workers and hands them to the next group of the same shape. Otherwise (a failed
        call, a start-up not waited for, reuse off): kill every actor, wait until Ray reports them
        dead, remove an owned placement group. Colocated groups' shared plan is removed by its
        owner (:meth:`PlacementPlan.remove`).
        """
        if self._closed and not self.actors:
            return
        self._closed = True
        unfinished_start = bool(self._pending_start)
        self._pending_start = []
        actors, self.actors = self.actors, []
        clean = self._pool_key is not None and actors and not self._failed and not unfinished_start
        if self._lease is not None:
            lease, self._lease = self._lease, None
            if ray.is_initialized():
                worker_pool().end_lease(lease, self._slot, clean=bool(clean))
            if clean:
                return
        if clean and self._shared_plan is not None and self._shared_plan.placement_groups:
            entry = HostSet(self._pool_key, self._shared_plan, actors)
            entry.release()
            if (previous := self._shared_plan.idle.pop(self.role, None)) is not None:
                previous.kill_hosts()
            self._shared_plan.idle[self.role] = entry
            return
        if clean and self._owned_plan is not None:
            worker_pool().give_back(HostSet(self._pool_key, self._owned_plan, actors))
            self._owned_plan = None
            return
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as error:  # already dead
                logger.debug("%s: ray.kill: %s", self.role, error)
        deadline = time.monotonic() + timeout_s
        for actor in actors:
            # A call on a killed actor fails with RayActorError once Ray has reaped it.
            while time.monotonic() < deadline:
                try:
                    ray.get(
                        actor.__ray_ready__.remote(), timeout=max(deadline - time.monotonic(), 0.1)
                    )
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError):
                    break
                except ray.exceptions.GetTimeoutError:
                    break
                time.sleep(0.05)
        if self._owned_plan is not None:
            self._owned_plan.remove()
            self._owned_plan = None

    def __repr__(self) -> str:
        state = "shut down" if self._closed else f"{self.num_ranks} ranks"
        return f"ActorGroup(role={self.role!r}, {state}, backend={self.backend!r})"
