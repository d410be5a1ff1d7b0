"""PPO-Lagrangian on a hub setup (``saferl.learners.hub``), from local folders in the hub's formats.

The setup mirrors ``experiment=beaver_v1`` at toy size, with nothing downloaded:

* the policy: a tiny Llama saved with ``save_pretrained``, with its tokenizer saved in Hugging Face
  format; the tokenizer is the world's word-level vocabulary plus the five words of the Safe RLHF
  template (``BEGINNING OF CONVERSATION: USER: ... ASSISTANT:``), so the run uses the preset's own
  ``safe_rlhf`` template with real token ids (the plain world tokenizer would map those words to
  ``<unk>``). Like many hub tokenizers it has no pad token set, so the hub path must add one;
* the reward and cost models: tiny ``LlamaForSequenceClassification`` checkpoints (one output,
  a trained-head layout) saved with the same tokenizer;
* the data: a folder with ``train.jsonl`` and ``test.jsonl`` of PKU-SafeRLHF records
  (ALGORITHMS.md §7) whose prompts are the world's 16 prompts (repeated: one per pair).

The tiny models are untrained: what is checked is that the loop really runs on these pieces (and
resumes), not what it learns.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from saferl.config import HubSettings
from saferl.data import write_records
from saferl.data.world import EOS, VOCABULARY, make_preference_pairs, world_prompts
from saferl.data.world.vocab import UNK
from saferl.learners.hub import RUN_NAME, run_hub_ppo_lag
from saferl.learners.ppo_lag import PPOSettings
from saferl.learners.run_state import RunFolderInUseError
from saferl.models import (
    ModelSpec,
    TinyModelConfig,
    build_policy,
    build_score_model,
    ensure_pad_token,
    load_policy,
    save_policy,
    save_score_model,
)
from saferl.runtime import DeepSpeedSpec, GenerationSpec, RuntimeSpec

TEMPLATE_WORDS = ("BEGINNING", "OF", "CONVERSATION:", "USER:", "ASSISTANT:")
ROWS = 16  # prompts per iteration: the world's 16 distinct prompts
COST_LIMIT = -1.0  # below every mean cost score of the untrained cost model (|score| ≲ 0.3): λ must rise
MULTIPLIER = {"kind": "log_gradient_ascent", "initial_value": 1.0, "lr": 0.1, "window": ROWS, "max_value": 10.0}
RUNTIME = RuntimeSpec(local_num_cpus=8, startup_timeout_s=300, call_timeout_s=300)


def hub_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the world's words and the Safe RLHF template's; no pad token set."""
    vocabulary = VOCABULARY + TEMPLATE_WORDS
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocabulary)}, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=UNK, eos_token=EOS, clean_up_tokenization_spaces=False
    )


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory) -> Path:
    """``policy/``, ``reward/``, ``cost/`` (Hugging Face folders) and ``pku/{train,test}.jsonl``."""
    root = tmp_path_factory.mktemp("hub")
    tokenizer = hub_tokenizer()
    padded = copy.deepcopy(tokenizer)  # the builders need a pad token; the saved tokenizer has none
    ensure_pad_token(padded)
    assert len(padded) == len(tokenizer)  # "<pad>" is already a word of the vocabulary
    tiny = ModelSpec(tiny=TinyModelConfig(vocab_size=len(tokenizer), max_position_embeddings=32))
    torch.manual_seed(0)
    save_policy(build_policy(tiny, padded), tokenizer, root / "policy")
    for seed, kind in enumerate(("reward", "cost"), start=1):
        torch.manual_seed(seed)
        save_score_model(build_score_model(tiny, padded), tokenizer, root / kind, kind=kind)
    write_records(make_preference_pairs(64, seed=0), root / "pku" / "train.jsonl")
    write_records(make_preference_pairs(16, seed=1), root / "pku" / "test.jsonl")
    return root


def hub_settings(root: Path, **changes) -> HubSettings:
    values = dict(
        policy=str(root / "policy"),
        reward_model=str(root / "reward"),
        cost_model=str(root / "cost"),
        model_revision=None,
        dtype="float32",
        trust_remote_code=False,
        data_path=str(root / "pku"),
        data_revision=None,
        train_split="train",
        test_split="test",
        template="safe_rlhf",
        max_length=12,  # 7 prompt tokens ("BEGINNING OF CONVERSATION: USER: explain bread ASSISTANT:") + 3
    )
    return HubSettings(**{**values, **changes})


def run(root: Path, output: Path, iterations: int, **changes):
    return run_hub_ppo_lag(
        hub_settings(root),
        PPOSettings(iterations=iterations, prompts_per_iteration=ROWS, kl_coeff=0.05, seed=0),
        MULTIPLIER,
        COST_LIMIT,
        policy_learning_rate=1e-3,
        critic_learning_rate=1e-3,
        deepspeed=DeepSpeedSpec(zero_stage=0),
        generation=GenerationSpec(max_new_tokens=3),
        runtime=RUNTIME,
        num_ranks=1,
        cpus_per_rank=0.25,
        gpus_per_rank=0.0,
        output_dir=output,
        **changes,
    )


@pytest.mark.slow
def test_hub_ppo_lag_trains_and_resumes_from_its_checkpoint(ray_cluster, hub_folder, tmp_path):
    output = tmp_path / "run"
    first = run(hub_folder, output, iterations=2, checkpoint_every=1)

    # The loop ran on the hub pieces: 16 distinct prompts, the template's 7 tokens fit 12 − 3.
    assert first.num_prompts == len(world_prompts()) and first.max_prompt_length == 9
    assert len(first.history) == 2
    for metrics in first.history:
        for key in ("policy/loss", "critic/reward_loss", "critic/cost_0_loss", "reward/score",
                    "cost/score_0", "rollout/kl", "multiplier/value_0", "constraint/estimate_0"):
            assert math.isfinite(metrics[key]), key
        assert metrics["rollout/response_length"] > 0
    # Every rollout's cost is above the limit, so λ rises each iteration (log gradient ascent).
    values = [1.0] + [m["multiplier/value_0"] for m in first.history]
    assert all(m["constraint/estimate_0"] > COST_LIMIT for m in first.history)
    assert all(b > a for a, b in zip(values, values[1:], strict=False)), values
    assert first.multiplier == [values[-1]]
    assert first.reward == first.history[-1]["reward/score"] and first.cost == [first.history[-1]["cost/score_0"]]

    # The exported policy is a trained copy of the start.
    start, _ = load_policy(hub_folder / "policy")
    trained, _ = load_policy(first.policy_dir)
    start_weights, trained_weights = start.state_dict(), trained.state_dict()
    assert start_weights.keys() == trained_weights.keys()
    assert any(not torch.equal(start_weights[k], trained_weights[k]) for k in start_weights)

    recorded = json.loads((output / "result.json").read_text())
    assert recorded["multiplier"] == first.multiplier and len(recorded["history"]) == 2
    assert recorded["settings"]["hub"]["template"] == "safe_rlhf"

    # A fresh run refuses the folder; resume continues from the checkpoint to iteration 4.
    with pytest.raises(RunFolderInUseError, match="resume"):
        run(hub_folder, output, iterations=4)
    resumed = run(hub_folder, output, iterations=4, resume=True)
    assert len(resumed.history) == 4
    for before, after in zip(first.history, resumed.history[:2], strict=True):
        assert after == pytest.approx(before)
    values = [m["multiplier/value_0"] for m in resumed.history]
    assert all(b > a for a, b in zip(values, values[1:], strict=False)), values
    assert len(json.loads((output / "result.json").read_text())["history"]) == 4
    assert (output / "checkpoints" / RUN_NAME / "COMPLETE").exists()


def test_missing_local_model_names_model_policy(hub_folder, tmp_path):
    settings = hub_settings(hub_folder, policy=str(tmp_path / "no_such_policy"))
    with pytest.raises(FileNotFoundError, match="model.policy"):
        run_hub_ppo_lag(
            settings, PPOSettings(iterations=1, prompts_per_iteration=ROWS), MULTIPLIER, COST_LIMIT,
            1e-3, 1e-3, DeepSpeedSpec(), GenerationSpec(max_new_tokens=3), RUNTIME, 1, 0.25, 0.0, tmp_path,
        )


@pytest.mark.parametrize(
    ("changes", "max_new_tokens", "error", "pattern"),
    [
        ({"cost_model": "./missing_cost"}, 3, FileNotFoundError, "model.cost_model"),
        ({"data_path": "./missing.jsonl"}, 3, FileNotFoundError, "data.path"),
        ({"reward_model": None}, 3, ValueError, "model.reward_model"),
        ({"max_length": 8}, 8, ValueError, r"data.max_length=8 .* generation.max_new_tokens=8"),
        # A causal LM is not a score model: it would load with a random head.
        ({"reward_model": "POLICY"}, 3, ValueError, "model.reward_model: .* is not a score model"),
    ],
)
def test_settings_that_cannot_run_name_their_key(hub_folder, tmp_path, changes, max_new_tokens, error, pattern):
    changes = {k: (str(hub_folder / "policy") if v == "POLICY" else v) for k, v in changes.items()}
    with pytest.raises(error, match=pattern):
        run_hub_ppo_lag(
            hub_settings(hub_folder, **changes), PPOSettings(iterations=1, prompts_per_iteration=ROWS),
            MULTIPLIER, COST_LIMIT, 1e-3, 1e-3, DeepSpeedSpec(), GenerationSpec(max_new_tokens=max_new_tokens),
            RUNTIME, 1, 0.25, 0.0, tmp_path,
        )


@pytest.mark.slow
def test_the_beaver_v1_preset_trains_through_the_cli_on_hub_format_files(ray_cluster, hub_folder, tmp_path):
    """``saferl experiment=beaver_v1`` with the models and data pointed at local hub-format files
    (and shrunk to a CPU): the published preset's code path, end to end."""
    import json

    from hydra import compose, initialize_config_dir

    from saferl.cli import CONFIG_DIR
    from saferl.cli import run as run_cli

    overrides = [
        "experiment=beaver_v1",
        f"model.policy={hub_folder / 'policy'}",
        f"model.reward_model={hub_folder / 'reward'}",
        f"model.cost_model={hub_folder / 'cost'}",
        "model.dtype=float32",
        f"data.path={hub_folder / 'pku'}",
        "data.max_length=12",
        "generation.max_new_tokens=3",
        "runtime=local",
        "deepspeed.zero_stage=0",
        "deepspeed.precision=fp32",
        "learner.iterations=1",
        f"learner.prompts_per_iteration={ROWS}",
        "logger=jsonl",
        f"output_dir={tmp_path}",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    assert cfg.learner.policy_learning_rate == 1e-5 and cfg.cost_limit == 0.0  # still the preset's
    run_cli(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    result = json.loads((tmp_path / "result.json").read_text())
    assert summary["method"] == "ppo_lag" and summary["cost_limit"] == 0.0 and summary["beta"] == 0.01
    assert len(result["history"]) == 1 and summary["multiplier"] == result["multiplier"]
    assert (tmp_path / summary["policy_dir"] / "config.json").is_file()
