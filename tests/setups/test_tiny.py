"""The world's tiny models on a PKU-format data set (``saferl.setups.tiny``): the model source and
the data source are independent. Unit checks of its tokenizer and demonstrations, the config's
refusals, and one ``ppo_lag`` iteration through the ``saferl`` command on local PKU-format files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from saferl.cli import CONFIG_DIR
from saferl.cli import run as run_cli
from saferl.config import ConfigError, validate
from saferl.data import write_records
from saferl.data.records import SafetyPreferencePair
from saferl.data.world import make_preference_pairs
from saferl.setups.tiny import TinySettings, demonstrations, word_tokenizer

# model=world with a hub data group, pointed at local files; stages shrunk to seconds.
SMALL = [
    "model=world", "data=pku_saferlhf", "scorers.calibrate=false", "data.max_length=24",
    "model.sft.steps=5", "model.sft.rows_per_step=16", "scorers.reward_model.steps=3",
    "scorers.cost_model.steps=3", "runtime.local_num_cpus=8", "logger=jsonl",
]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="module")
def pku_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pku")
    write_records(make_preference_pairs(64, seed=0), folder / "train.jsonl")
    write_records(make_preference_pairs(32, seed=1), folder / "test.jsonl")
    return folder


def test_the_word_tokenizer_covers_the_data_and_keeps_pad_apart_from_eos():
    tokenizer = word_tokenizer(["how to bake bread", "sorry I cannot"])
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    ids = tokenizer("how to bake bread")["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) == 4
    assert tokenizer("unseen")["input_ids"] == [tokenizer.unk_token_id]


def test_demonstrations_are_the_helpful_response_when_safe_else_the_safe_one():
    def pair(better, safer, safe0, safe1):
        return SafetyPreferencePair(prompt="p", response_0="a", response_1="b", better_response_id=better,
                                    safer_response_id=safer, is_response_0_safe=safe0, is_response_1_safe=safe1)

    examples = demonstrations([pair(1, 1, True, True), pair(1, 0, True, False), pair(0, 0, False, False)])
    assert [example.response for example in examples] == ["b", "a"]  # the third pair has no safe response


def test_the_config_builds_the_tiny_setup_and_refuses_what_it_cannot_run(pku_folder):
    run = validate(composed(*SMALL, f"data.path={pku_folder}"))
    assert isinstance(run.setup, TinySettings)
    assert run.setup.path == str(pku_folder) and run.setup.template == "safe_rlhf"
    assert run.setup.reference == run.reference  # the world's tiny shape
    weighted = validate(composed(*SMALL, f"data.path={pku_folder}", "scorers.sign_weight=0.25")).setup
    assert weighted.sign_weight == 0.25 and weighted.stage_settings("cost_model")["sign_weight"] == 0.25
    assert weighted.stage_settings("reward_model") == run.setup.stage_settings("reward_model")
    for overrides, fragment in (
        (("scorers=oracle",), "scorers.kind='oracle'"),
        (("scorers.calibrate=true",), "scorers.calibrate=true"),
        ((f"model.from_run={pku_folder}",), "model.from_run"),
        (("data.template=chat",), "data.template"),
    ):
        with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
            validate(composed(*SMALL, f"data.path={pku_folder}", *overrides))


@pytest.mark.slow
def test_ppo_lag_trains_the_world_tiny_models_on_a_pku_format_file(pku_folder, tmp_path):
    headline = run_cli(composed(*SMALL, f"data.path={pku_folder}", "learner.iterations=1",
                                "learner.prompts_per_iteration=16", f"output_dir={tmp_path}"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    result = json.loads((tmp_path / "result.json").read_text())
    assert summary["setup"] == "tiny" and summary["method"] == "ppo_lag"
    assert summary["trained"] is None  # no ground truth: no exact evaluation
    assert headline == pytest.approx(result["history"][-1]["reward/score"])
    assert set(json.loads((tmp_path / "stages.json").read_text())) == {"sft", "reward_model", "cost_model"}
    for name in ("sft", "reward_model", "cost_model", "policy_ppo_lag", "tokenizer"):
        assert (tmp_path / "models" / name).is_dir(), name
    assert {"reward_model", "cost_model"} <= set(result["setup_details"])

