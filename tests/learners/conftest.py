"""Fixtures shared by the learner tests that run on the runtime (the Ray cluster is the session's,
``tests/conftest.py``): the world's tokenizer, and a tiny SFT reference saved in Hugging Face format.

A module sets ``SFT_REFERENCE`` (a :class:`saferl.data.world.ReferenceConfig`) to choose how much
SFT its reference gets; unit-test modules never request these fixtures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from saferl.data.world import ReferenceConfig, build_world_tokenizer, train_reference_policy
from saferl.models import save_policy


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
