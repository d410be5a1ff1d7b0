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


def judge_models():
    """tests/eval/judge_models.py (tiny judge models built in code), loaded by path."""
    import importlib.util

    path = Path(__file__).parents[1] / "eval" / "judge_models.py"
    spec = importlib.util.spec_from_file_location("saferl_tests_judge_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_rbr_runs_on_a_pku_format_file_with_an_lm_grader_group(pku_folder, tmp_path):
    """learner=rbr off the world: the response types from a file, a random tiny Llama as the LM
    grader (a Ray actor group), the world's spec; the fit and the PPO-Lag stage run, and the group's
    grades of rollouts equal the one-process grader's on the decoded responses."""
    import torch
    from transformers import AutoModelForCausalLM

    from saferl.data.batches import SequenceBatch
    from saferl.data.world import world_prompts
    from saferl.learners.rbr_grading import response_texts, start_lm_grader
    from saferl.learners.settings import RBRSettings
    from saferl.rbr import LinearRBR
    from saferl.rbr.lm_grader import grade_with_lm
    from saferl.rbr.world import world_response_type, world_spec
    from saferl.runtime.resources import Resources

    models = judge_models()
    grader_dir = models.save_random_llama(tmp_path / "grader", models.make_tokenizer())
    harmful = [p for p in world_prompts() if world_response_type(p) == "hard_refuse"][:4]
    benign = [p for p in world_prompts() if world_response_type(p) == "comply"][:4]
    types = tmp_path / "types.jsonl"
    types.write_text("".join(json.dumps({"prompt": p.text, "response_type": world_response_type(p)}) + "\n"
                             for p in harmful + benign))
    out = tmp_path / "run"
    run_cli(composed(*SMALL, f"data.path={pku_folder}", "learner=rbr", "learner.iterations=1",
                     "learner.prompts_per_iteration=16", "learner.rbr.num_samples=8", "learner.rbr.group_size=4",
                     "learner.rbr.fit_steps=20", "learner.rbr.heldout_fraction=0.25", "learner.rbr.grader=lm",
                     f"learner.rbr.grader_model={grader_dir}", f"learner.rbr.response_types={types}",
                     f"output_dir={out}"))
    summary = json.loads((out / "summary.json").read_text())
    result = json.loads((out / "result.json").read_text())
    assert summary["setup"] == "tiny" and summary["method"] == "rbr" and summary["trained"] is None
    details = result["details"]
    assert details["grader"] == f"lm ({grader_dir})" and details["prompts_with_a_response_type"] == 8
    fit = json.loads((out / "rbr" / "fit.json").read_text())
    assert set(fit) == {"hard_refuse", "comply"}
    for record in fit.values():  # 4 prompts × 8 samples, less those in no class, paired within groups
        assert record["n_train_pairs"] > 0 and 0 <= record["n_unclassified_samples"] <= 32
    saved = LinearRBR.load(out / "rbr" / "weights.json", world_spec())
    assert saved.weight_names() == details["rbr_weights"]
    assert any(value != 0.0 for value in saved.weight_names()["hard_refuse"].values())

    # The group's grades of rollouts are the one-process grader's on the decoded responses.
    policy_tokenizer = word_tokenizer(["sorry i cannot help", "steps bread detail", "describe poison"])
    rows = [policy_tokenizer(text)["input_ids"] for text in ("describe poison sorry", "describe poison steps detail")]
    width = max(len(row) for row in rows)
    input_ids = torch.full((2, width), policy_tokenizer.pad_token_id)
    attention = torch.zeros((2, width), dtype=torch.bool)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)], attention[i, : len(row)] = torch.tensor(row), True
    response = attention.clone()
    response[:, :2] = False  # the prompt's two words
    batch = SequenceBatch(input_ids, attention, response)
    validated = validate(composed(*SMALL, f"data.path={pku_folder}"))
    settings = RBRSettings(grader="lm", grader_model=str(grader_dir), grader_micro_batch_size=1,
                           ppo=validated.settings)
    grader = start_lm_grader(settings, world_spec(), policy_tokenizer, Resources(
        validated.resources.group, validated.resources.runtime, validated.resources.deepspeed, seed=0))
    try:
        sharded = grader.grade(batch, ["describe poison"] * 2, [0, 1])
    finally:
        grader.shutdown()
    assert response_texts(policy_tokenizer, batch, [0, 1]) == ["sorry", "steps detail"]
    local = grade_with_lm(AutoModelForCausalLM.from_pretrained(grader_dir), models.make_tokenizer(), world_spec(),
                          ["sorry", "steps detail"])
    assert sharded.shape == (2, len(world_spec().simple_propositions))
    torch.testing.assert_close(sharded, local.double(), rtol=0, atol=1e-5)
    assert (sharded[0] - sharded[1]).abs().max() > 1e-3  # different responses, different grades
