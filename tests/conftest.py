"""Fixtures shared by every test directory: one local Ray cluster for the whole session, and the
tiny judge models of ``tests/eval/judge_models.py`` (the eval and learner tests both use them).

Starting and stopping a local cluster costs several seconds each on a 2-core machine, so the
runtime and learner tests share one instead of one per module. It has 8 logical CPUs (a learner
test's PPO-Lagrangian run starts up to eight single-CPU ranks) and is stopped at the end of the
session; a cluster already running when it is first asked for is used and left to its owner.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

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


@pytest.fixture(scope="session")
def judge_models() -> ModuleType:
    """``tests/eval/judge_models.py``, loaded by path: the suite imports test modules with
    ``--import-mode=importlib``, so helpers are not importable."""
    path = Path(__file__).parent / "eval" / "judge_models.py"
    spec = importlib.util.spec_from_file_location("saferl_tests_judge_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
