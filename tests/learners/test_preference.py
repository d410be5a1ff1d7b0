"""The preference learner (``saferl.learners.preference``): its settings, the loss's β, and what it
refuses before any group starts. Training through the runtime is covered on the world presets
(tests/cli/test_runs.py), on hub-format files (tests/learners/test_hub.py) and per loss in
tests/learners/test_preference_update.py."""

from __future__ import annotations

import pytest

from saferl.data.records import SafetyPreferencePair
from saferl.data.world import build_world_tokenizer, world_prompts
from saferl.data.world.exact import MAX_RESPONSE_TOKENS
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners import preference
from saferl.learners.output import RunOutput
from saferl.learners.preference import PreferenceSettings
from saferl.models import ModelSpec
from saferl.runtime import GenerationSpec
from saferl.runtime.resources import Resources
from saferl.setups.base import Setup


@pytest.mark.parametrize(
    ("loss", "hyperparameters", "expected"),
    [
        ("dpo", None, {"beta": 0.3}),  # β defaults to the root β
        ("dpo", {"beta": 0.1}, {"beta": 0.1}),  # unless the loss's own is given
        ("ipo", None, {"beta": 0.3}),
        ("simpo", None, {}),  # SimPO's β is its own length-normalised scale
        ("bfpo", {"tau": 0.01}, {"tau": 0.01}),  # BFPO has τ, no β
    ],
)
def test_the_loss_beta_defaults_to_the_root_beta(loss, hyperparameters, expected):
    settings = PreferenceSettings(loss=loss, hyperparameters=hyperparameters, beta=0.3)
    assert settings.loss_hyperparameters() == expected


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"loss": "foo"}, r"learner\.preference\.loss"),
        ({"ordering": "worse"}, r"learner\.preference\.ordering"),
        ({"hyperparameters": {"gamma": 1.0}}, r"learner\.preference\.hyperparameters: unknown key\(s\) \['gamma'\]"),
        ({"loss": "bfpo", "hyperparameters": {"tau": 0}}, r"learner\.preference\.hyperparameters\.tau: must be > 0"),
        ({"learning_rate": -1e-3}, r"learner\.preference\.learning_rate: must be > 0"),
    ],
)
def test_settings_that_cannot_run_name_their_key(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        PreferenceSettings(**changes)


def world_setup(pairs) -> Setup:
    return Setup(name="world", policy=ModelSpec(name_or_path="unused"), tokenizer=build_world_tokenizer(),
                 template=WORLD_TEMPLATE, max_length=MAX_SEQUENCE_LENGTH, max_prompt_length=MAX_SEQUENCE_LENGTH,
                 generation=GenerationSpec(max_new_tokens=MAX_RESPONSE_TOKENS), prompts=[], pairs=pairs,
                 pairs_source="pairs.jsonl")


def test_safe_nca_refuses_pairs_without_a_safe_and_an_unsafe_response_before_starting_groups(tmp_path):
    prompt = world_prompts()[0].text
    both_safe = SafetyPreferencePair(prompt=prompt, response_0="sorry", response_1="no", better_response_id=0,
                                     safer_response_id=0, is_response_0_safe=True, is_response_1_safe=True)
    with pytest.raises(ValueError, match="safe_nca .* pairs.jsonl has none"):
        preference.run(world_setup([both_safe]), PreferenceSettings(loss="safe_nca"), Resources(), RunOutput(tmp_path))
    with pytest.raises(ValueError, match="trains on preference pairs; pairs.jsonl holds none"):
        preference.run(world_setup([]), PreferenceSettings(loss="dpo"), Resources(), RunOutput(tmp_path))
    assert not (tmp_path / "models").exists()
