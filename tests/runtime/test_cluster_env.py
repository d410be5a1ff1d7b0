"""The ranks' environment: inherited from a local cluster's start-up, or passed as a runtime_env."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import ray

from saferl.runtime.cluster import _CODE_ROOT, _environment, actor_runtime_env, worker_env_vars

pytestmark = pytest.mark.slow


@ray.remote(num_cpus=0)
def _read_environment(names: list[str]) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


def test_local_workers_inherit_the_environment_without_a_runtime_env(ray_cluster, runtime_spec):
    # The session's cluster was started by init_ray with this spec: no runtime_env is needed...
    assert actor_runtime_env(runtime_spec) is None
    seen = ray.get(_read_environment.remote(["TOKENIZERS_PARALLELISM", "PYTHONPATH"]), timeout=120)
    # ...because a worker started without one already has the ranks' variables.
    assert seen["TOKENIZERS_PARALLELISM"] == "false"
    assert seen["PYTHONPATH"].split(os.pathsep)[0] == str(_CODE_ROOT)


def test_other_variables_travel_as_a_runtime_env(ray_cluster, runtime_spec):
    probe = replace(runtime_spec, env_vars={"SAFERL_PROBE": "on"})
    runtime_env = actor_runtime_env(probe)
    assert runtime_env == {"env_vars": worker_env_vars(probe)}
    seen = ray.get(_read_environment.options(runtime_env=runtime_env).remote(["SAFERL_PROBE"]), timeout=240)
    assert seen == {"SAFERL_PROBE": "on"}
    assert "SAFERL_PROBE" not in os.environ  # the driver's own environment is left alone


def test_the_start_up_environment_is_restored(monkeypatch):
    monkeypatch.setenv("SAFERL_KEEP", "before")
    monkeypatch.delenv("SAFERL_NEW", raising=False)
    with _environment({"SAFERL_KEEP": "during", "SAFERL_NEW": "during"}):
        assert os.environ["SAFERL_KEEP"] == os.environ["SAFERL_NEW"] == "during"
    assert os.environ["SAFERL_KEEP"] == "before" and "SAFERL_NEW" not in os.environ
