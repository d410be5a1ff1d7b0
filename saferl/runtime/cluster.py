"""Connecting to Ray and reserving resources for the role groups.

* :func:`init_ray`: join the cluster named by ``runtime.address`` or start a local one.
* :func:`plan_placement`: one Ray placement group per *root* role (a role with
  ``colocate_with=None``) and the roles colocated with it. Bundle ``i`` of a root role's
  placement group holds rank ``i`` of the root role and rank ``i`` of every role colocated with
  it, so its resources are the sum of theirs. A CPU-only plan requests no GPUs.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from saferl.runtime.specs import GroupSpec, RuntimeSpec

__all__ = [
    "PlacementPlan",
    "RoleSlot",
    "colocation_sets",
    "actor_runtime_env",
    "init_ray",
    "plan_placement",
    "worker_env_vars",
]

logger = logging.getLogger(__name__)

#: The folder that holds the ``saferl`` package (the repository root for an editable install).
_CODE_ROOT = Path(__file__).resolve().parents[2]
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def worker_env_vars(runtime_spec: RuntimeSpec) -> dict[str, str]:
    """Environment of every rank: quiet tokenizers, no Ray usage stats, ``runtime.env_vars``, and,
    unless the code is shipped with the job (``runtime.address`` set and ``runtime.ship_code``),
    this tree first on ``PYTHONPATH`` so the workers import the driver's ``saferl``."""
    env = {"TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
    if runtime_spec.address is None or not runtime_spec.ship_code:
        python_path = [str(_CODE_ROOT)]
        if os.environ.get("PYTHONPATH"):
            python_path.append(os.environ["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(python_path)
    env.update(runtime_spec.env_vars)
    return env


def init_ray(runtime_spec: RuntimeSpec) -> None:
    """Connect this driver to Ray (idempotent: does nothing when Ray is already initialised).

    * ``runtime.address=None``: start a local cluster with ``runtime.local_num_cpus`` CPUs (the
      machine's count by default) and no dashboard;
    * ``"auto"``, ``"host:port"``, ``"ray://host:port"``: join that cluster. With
      ``runtime.ship_code`` the ``saferl`` package of this tree is uploaded with the job
      (``runtime_env.py_modules``) so nodes without this checkout import the same code.

    Every rank runs with :func:`worker_env_vars`: a local cluster's workers inherit them from
    the start-up; on a joined cluster each group passes them as its actors' runtime_env
    (:func:`actor_runtime_env`).
    """
    global _local_cluster
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    runtime_env: dict[str, object] = {"env_vars": worker_env_vars(runtime_spec)}
    if runtime_spec.address is None:
        num_cpus = runtime_spec.local_num_cpus or os.cpu_count() or 1
        # The local raylet, and so every worker it starts, inherits this process's environment
        # at start-up: set the workers' variables for the call instead of as a runtime_env. A
        # runtime_env (even of env_vars alone) makes Ray start every worker through its
        # runtime-env agent and an extra setup process. (Its cost was not established on the
        # shared 2-core machine: 4 actors importing torch took 20-22 s a round with it and
        # 14-15 s without when run one after the other, but about the same when run side by side.)
        with _environment(runtime_env["env_vars"]):
            ray.init(
                # "local" always starts a new cluster: without it Ray joins any cluster already
                # running on this machine (another user's job, or another test session).
                address="local",
                num_cpus=num_cpus,
                num_gpus=runtime_spec.local_num_gpus,
                include_dashboard=False,
                log_to_driver=True,
            )
        _local_cluster = (ray.get_runtime_context().gcs_address, dict(runtime_env["env_vars"]))
        return
    if runtime_spec.ship_code:
        # Uploaded once per job and put on every worker's path, on every node.
        runtime_env["py_modules"] = [str(_PACKAGE_DIR)]
    ray.init(address=runtime_spec.address, runtime_env=runtime_env)


#: ``(GCS address, worker environment)`` of the local cluster :func:`init_ray` started last: its
#: workers already run with that environment.
_local_cluster: tuple[str, dict[str, str]] | None = None


@contextmanager
def _environment(variables: Mapping[str, str]) -> Iterator[None]:
    """Set ``variables`` in ``os.environ`` for the block, then restore what was there."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def actor_runtime_env(runtime_spec: RuntimeSpec) -> dict[str, object] | None:
    """The ``runtime_env`` option of a rank's actor: None when the running cluster is the local
    one :func:`init_ray` started with the same worker environment (its workers inherit it, so a
    runtime_env would only add Ray's setup process to every start); ``{"env_vars": ...}``
    otherwise."""
    variables = worker_env_vars(runtime_spec)
    if (
        _local_cluster is not None
        and ray.is_initialized()
        and _local_cluster == (ray.get_runtime_context().gcs_address, variables)
    ):
        return None
    return {"env_vars": variables}


def bundle_quantity(total: float) -> float:
    """Ray bundle quantities: fractions up to 1, whole numbers above."""
    return total if total <= 1 else float(math.ceil(total - 1e-9))


@dataclass(frozen=True)
class RoleSlot:
    """Where one role's ranks go: bundle ``i`` of ``placement_group`` holds rank ``i``.

    Attributes:
        role: the role's name.
        placement_group: the Ray placement group (shared with colocated roles).
        num_cpus: Ray CPUs each rank requests inside its bundle.
        num_gpus: Ray GPUs each rank requests inside its bundle.
        num_ranks: ranks of the role.
        root_role: the role that owns the placement group.
    """

    role: str
    placement_group: PlacementGroup
    num_cpus: float
    num_gpus: float
    num_ranks: int
    root_role: str


@dataclass
class PlacementPlan:
    """Placement groups of several roles; :meth:`slot` gives each role's share.

    Remove it with :meth:`remove` once the groups using it are shut down (removing a placement
    group kills the actors still running in it).
    """

    slots: dict[str, RoleSlot] = field(default_factory=dict)
    placement_groups: dict[str, PlacementGroup] = field(default_factory=dict)
    #: role -> the rank processes (a :class:`saferl.runtime.pool.HostSet`) its last group left
    #: idle in the plan's bundles, for the plan's next group of that role.
    idle: dict[str, Any] = field(default_factory=dict)

    def slot(self, role: str) -> RoleSlot:
        """The slot of ``role``.

        Raises:
            KeyError: the plan has no such role.
        """
        if role not in self.slots:
            raise KeyError(f"the placement plan has no role {role!r}; it has {sorted(self.slots)}")
        return self.slots[role]

    def remove(self) -> None:
        """Kill the idle rank processes and remove every placement group of the plan (idempotent)."""
        idle, self.idle = list(self.idle.values()), {}
        for entry in idle:
            entry.kill_hosts()
        for group in self.placement_groups.values():
            try:
                remove_placement_group(group)
            except Exception as error:  # already removed, or Ray shut down
                logger.debug("placement group removal: %s", error)
        self.placement_groups.clear()


def _root_of(role: str, groups: Mapping[str, GroupSpec]) -> str:
    seen = [role]
    current = role
    while groups[current].colocate_with is not None:
        target = groups[current].colocate_with
        assert target is not None
        if target not in groups:
            raise ValueError(
                f"groups.{current}.colocate_with={target!r} names no role of this run; roles are "
                f"{sorted(groups)}"
            )
        if target in seen:
            cycle = " -> ".join([*seen, target])
            raise ValueError(f"groups.{role}.colocate_with forms a cycle: {cycle}")
        seen.append(target)
        current = target
    return current


def colocation_sets(groups: Mapping[str, GroupSpec]) -> dict[str, list[str]]:
    """Root role -> the roles sharing its bundles (itself first), after validating
    ``colocate_with``.

    Raises:
        ValueError: an unknown or cyclic ``colocate_with``, or a colocated role with more ranks
            than its root.
    """
    members: dict[str, list[str]] = {}
    for role in groups:
        members.setdefault(_root_of(role, groups), []).append(role)
    for root, roles in members.items():
        root_ranks = groups[root].num_ranks
        for role in roles:
            if groups[role].num_ranks > root_ranks:
                raise ValueError(
                    f"groups.{role}.num_ranks={groups[role].num_ranks} exceeds the "
                    f"{root_ranks} ranks of {root!r} it is colocated with"
                )
        roles.sort(key=lambda r: r != root)
    return members


def plan_placement(
    runtime_spec: RuntimeSpec,
    groups: Mapping[str, GroupSpec],
    *,
    name_prefix: str = "saferl",
) -> PlacementPlan:
    """Create the placement groups of ``groups`` and wait until Ray has reserved them.

    Args:
        runtime_spec: ``placement_strategy`` and ``startup_timeout_s`` are used.
        groups: role name -> its group spec. A role with ``colocate_with`` shares the bundles of
            that role (chains resolve to their root) and may have at most as many ranks.
        name_prefix: prefix of the placement groups' names (``<prefix>-<root role>-<random>``).

    Returns:
        The plan; ``plan.slot(role)`` for each role.

    Raises:
        ValueError: an unknown or cyclic ``colocate_with``, or a colocated role with more ranks
            than its root.
        RuntimeError: Ray could not reserve the bundles within ``runtime.startup_timeout_s``
            (the message names the bundles and the cluster's resources).
    """
    members = colocation_sets(groups)
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised; call saferl.runtime.init_ray(runtime_spec)")
    plan = PlacementPlan()
    pending: list[tuple[str, PlacementGroup, list[dict[str, float]]]] = []
    for root, roles in members.items():
        root_ranks = groups[root].num_ranks
        bundles = []
        for index in range(root_ranks):
            on_bundle = [groups[r] for r in roles if groups[r].num_ranks > index]
            cpus = sum(g.cpus_per_rank for g in on_bundle)
            gpus = sum(g.gpus_per_rank for g in on_bundle)
            bundle = {"CPU": bundle_quantity(cpus)} if cpus > 0 else {}
            if gpus > 0:
                bundle["GPU"] = bundle_quantity(gpus)
            bundles.append(bundle)
        group = placement_group(
            bundles,
            strategy=runtime_spec.placement_strategy,
            name=f"{name_prefix}-{root}-{uuid.uuid4().hex[:8]}",  # Ray needs unique names
        )
        plan.placement_groups[root] = group
        pending.append((root, group, bundles))
        for role in roles:
            spec = groups[role]
            plan.slots[role] = RoleSlot(
                role=role,
                placement_group=group,
                num_cpus=spec.cpus_per_rank,
                num_gpus=spec.gpus_per_rank,
                num_ranks=spec.num_ranks,
                root_role=root,
            )
    for root, group, bundles in pending:
        try:
            ray.get(group.ready(), timeout=runtime_spec.startup_timeout_s)
        except ray.exceptions.GetTimeoutError as error:
            plan.remove()
            raise RuntimeError(
                f"Ray could not reserve the placement group of {root!r} (bundles {bundles}, "
                f"strategy {runtime_spec.placement_strategy}) within "
                f"runtime.startup_timeout_s={runtime_spec.startup_timeout_s}s; cluster resources: "
                f"{ray.cluster_resources()}, available: {ray.available_resources()}. Lower "
                "group.cpus_per_rank / gpus_per_rank / num_ranks or add nodes"
            ) from error
    return plan
