"""Fixtures shared by the learner tests that run on the runtime: one local Ray cluster per module,
the world's tokenizer, and a tiny SFT reference saved in Hugging Face format.

A module sets ``SFT_REFERENCE`` (a :class:`saferl.data.world.ReferenceConfig`) to choose how much
SFT its reference gets; unit-test modules never request these fixtures.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from saferl.data.world import ReferenceConfig, build_world_tokenizer, train_reference_policy
from saferl.models import save_policy
from saferl.runtime import RuntimeSpec, init_ray

#: Local cluster of the learner tests; timeouts turn a hang into a failure.
RUNTIME = RuntimeSpec(local_num_cpus=8, startup_timeout_s=300, call_timeout_s=300)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster for the module, unless one is already running (then it is kept)."""
    started = not ray.is_initialized()
    init_ray(RUNTIME)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def tokenizer():
    return build_world_tokenizer()


@pytest.fixture(scope="module")
def sft_dir(request, tmp_path_factory, tokenizer) -> Path:
    """The module's SFT reference (``SFT_REFERENCE``), trained in-process and saved."""
    config = getattr(request.module, "SFT_REFERENCE", ReferenceConfig())
    model, _ = train_reference_policy(config, tokenizer)
    folder = tmp_path_factory.mktemp("models") / "sft"
    save_policy(model, tokenizer, folder)
    return folder
