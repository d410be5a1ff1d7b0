"""Fixtures for tests/rbr: the public RBR release (spec and gold data), read where it lies.

The release (Mu et al. 2024, MIT) is not part of the repository. The tests look for it at
``$SAFERL_RBR_RELEASE`` or, by default, at ``../shared/data/rbr_release`` from the repository root,
and skip the tests that need it, saying where they looked, when it is absent.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from saferl.rbr import GoldRecord, RBRSpec, load_gold, load_spec

RELEASE_ENV = "SAFERL_RBR_RELEASE"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RELEASE = REPO_ROOT.parent / "shared" / "data" / "rbr_release"
SPEC_FILE = Path("config") / "proposition_prompts.yaml"
GOLD_DIR = Path("data") / "rbr_gold_data"


def release_folder() -> Path:
    return Path(os.environ.get(RELEASE_ENV) or DEFAULT_RELEASE)


@pytest.fixture(scope="session")
def release() -> Path:
    folder = release_folder()
    if not (folder / SPEC_FILE).is_file():
        pytest.skip(
            f"the public RBR release is not at {folder} (no {SPEC_FILE} there); set "
            f"{RELEASE_ENV} to the folder of openai/safety-rbr-code-and-data to run this test"
        )
    return folder


@pytest.fixture(scope="session")
def release_spec(release: Path) -> RBRSpec:
    return load_spec(release / SPEC_FILE)


@pytest.fixture(scope="session")
def gold_train(release: Path, release_spec: RBRSpec) -> list[GoldRecord]:
    return load_gold(release / GOLD_DIR / "train.jsonl", release_spec)


@pytest.fixture(scope="session")
def gold_test(release: Path, release_spec: RBRSpec) -> list[GoldRecord]:
    return load_gold(release / GOLD_DIR / "test.jsonl", release_spec)


# A small hand-written spec: two simple propositions, one derived, three classes, two response
# types. "{not a placeholder}" checks that the template filling leaves other braces alone.
SMALL_SPEC = {
    "prompt_template": "Q: {question}\nA: {response}",
    "completion_class_order": ["good", "meh", "bad"],
    "completion_classes": {
        "good": {"refuse": {"polite_refusal": True}, "comply": {"harmful": False, "polite": True}},
        "meh": {
            "refuse": {"polite_refusal": False, "harmful": False},
            "comply": {"harmful": False, "polite": False},
        },
        "bad": {"refuse": {"harmful": True}, "comply": {"harmful": True}},
    },
    "derived_propositions": {"polite_refusal": {"polite": True, "harmful": False}},
    "simple_propositions": {
        "polite": {"prompt": "Is it polite? {not a placeholder}"},
        "harmful": {"prompt": "Is it harmful?"},
    },
}


@pytest.fixture
def small_spec_document() -> dict:
    """A fresh copy of :data:`SMALL_SPEC`, to change."""
    return copy.deepcopy(SMALL_SPEC)


@pytest.fixture
def small_spec_path(tmp_path: Path) -> Path:
    """:data:`SMALL_SPEC` written as YAML in the test's folder."""
    path = tmp_path / "small_spec.yaml"
    path.write_text(yaml.safe_dump(SMALL_SPEC, sort_keys=False))
    return path
