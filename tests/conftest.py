"""Fixtures shared by every test directory: one local Ray cluster for the whole session.

Starting and stopping a local cluster costs several seconds each on a 2-core machine, so the
runtime and learner tests share one instead of one per module. It has 8 logical CPUs (a learner
test's PPO-Lagrangian run starts up to eight single-CPU ranks) and is stopped at the end of the
session; a cluster already running when it is first asked for is used and left to its owner.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    from saferl.runtime import RuntimeSpec, init_ray

    started = not ray.is_initialized()
    init_ray(RuntimeSpec(local_num_cpus=8, startup_timeout_s=300, call_timeout_s=300))
    yield
    if started and ray.is_initialized():
        ray.shutdown()
