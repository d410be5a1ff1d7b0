"""The learners on a hub setup (``saferl.setups.hub``), from local folders in the hub's formats.

The setup mirrors ``experiment=beaver_v1`` at toy size, with nothing downloaded:

* the policy: a tiny Llama saved with ``save_pretrained``, with its tokenizer saved in Hugging Face
  format; the tokenizer is the world's word-level vocabulary plus the five words of the Safe RLHF
  template (``BEGINNING OF CONVERSATION: USER: ... ASSISTANT:``), so the run uses the preset's own
  ``safe_rlhf`` template with real token ids (the plain world tokenizer would map those words to
  ``<unk>``). Like many hub tokenizers it has no pad token set, so the hub path must add one;
* the reward and cost models: tiny ``LlamaForSequenceClassification`` checkpoints (one output,
  a trained-head layout) saved with the same tokenizer;
* the data: a folder with ``train.jsonl`` and ``test.jsonl`` of PKU-SafeRLHF records
  (docs/algorithms.md §7) whose prompts are the world's 16 prompts (repeated: one per pair).

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

from saferl.data import write_records
from saferl.data.world import EOS, VOCABULARY, make_preference_pairs, world_prompts
from saferl.data.world.vocab import UNK
from saferl.learners import mocan, pecan, ppo_lag, preference
from saferl.learners.output import RunOutput
from saferl.learners.ppo_lag import PPOLagSettings, PPOSettings
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
from saferl.runtime import DeepSpeedSpec, GenerationSpec, GroupSpec, RuntimeSpec
from saferl.runtime.resources import Resources
from saferl.setups import hub as hub_setup
from saferl.setups.hub import HubSettings

TEMPLATE_WORDS = ("BEGINNING", "OF", "CONVERSATION:", "USER:", "ASSISTANT:")
ROWS = 16  # prompts per iteration: the world's 16 distinct prompts
COST_LIMIT = -1.0  # below every mean cost score of the untrained cost model (|score| ≲ 0.3): λ must rise
MULTIPLIER = {"kind": "log_gradient_ascent", "initial_value": 1.0, "lr": 0.1, "window": ROWS, "max_value": 10.0}
RUNTIME = RuntimeSpec(local_num_cpus=8, startup_timeout_s=300, call_timeout_s=300)
RESOURCES = Resources(GroupSpec(num_ranks=1, cpus_per_rank=0.25), RUNTIME, DeepSpeedSpec(zero_stage=0), seed=0)


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


def hub_settings(root: Path, max_new_tokens: int = 3, **changes) -> HubSettings:
    values = dict(
        policy=str(root / "policy"),
        reward_model=str(root / "reward"),
        cost_model=str(root / "cost"),
        revision=None,
        dtype="float32",
        trust_remote_code=False,
        path=str(root / "pku"),
        data_revision=None,
        train_split="train",
        test_split="test",
        template="safe_rlhf",
        max_length=12,  # 7 prompt tokens ("BEGINNING OF CONVERSATION: USER: explain bread ASSISTANT:") + 3
        generation=GenerationSpec(max_new_tokens=max_new_tokens),
    )
    return HubSettings(**{**values, **changes})


def ppo_lag_settings(iterations: int) -> PPOLagSettings:
    return PPOLagSettings(PPOSettings(iterations=iterations, prompts_per_iteration=ROWS, kl_coeff=0.05, seed=0),
                          MULTIPLIER, COST_LIMIT)


def train(learner, hub: HubSettings, settings, output: RunOutput):
    """The CLI's train path without the CLI: the hub setup for the learner's needs, then its run."""
    setup = hub_setup.build(hub, RESOURCES, output, learner.needs(settings), learner.__name__.rsplit(".", 1)[-1])
    return learner.run(setup, settings, RESOURCES, output)


def run(root: Path, output: Path, iterations: int, **changes):
    return train(ppo_lag, hub_settings(root), ppo_lag_settings(iterations), RunOutput(output, **changes))


@pytest.mark.slow
def test_hub_ppo_lag_trains_and_checkpoints(ray_cluster, hub_folder, tmp_path):
    output = tmp_path / "run"
    first = run(hub_folder, output, iterations=2, checkpoint_every=1)

    # The loop ran on the hub pieces: 16 distinct prompts, the template's 7 tokens fit 12 − 3.
    assert first.details["num_prompts"] == len(world_prompts()) and first.details["max_prompt_length"] == 9
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
    assert first.headline == first.history[-1]["reward/score"]
    assert first.details["last_cost_scores"] == [first.history[-1]["cost/score_0"]]

    # The exported policy is a trained copy of the start.
    start, _ = load_policy(hub_folder / "policy")
    trained, _ = load_policy(first.policy_dir)
    start_weights, trained_weights = start.state_dict(), trained.state_dict()
    assert start_weights.keys() == trained_weights.keys()
    assert any(not torch.equal(start_weights[k], trained_weights[k]) for k in start_weights)

    # A fresh run refuses the folder's checkpoint (resume itself is tested through the CLI with
    # SIGKILL in tests/cli/test_runs.py).
    with pytest.raises(RunFolderInUseError, match="resume"):
        run(hub_folder, output, iterations=4)
    assert (output / "checkpoints" / "ppo_lag" / "COMPLETE").exists()


def test_missing_local_model_names_model_policy(hub_folder, tmp_path):
    settings = hub_settings(hub_folder, policy=str(tmp_path / "no_such_policy"))
    with pytest.raises(FileNotFoundError, match="model.policy"):
        train(ppo_lag, settings, ppo_lag_settings(1), RunOutput(tmp_path))


@pytest.mark.parametrize(
    ("changes", "max_new_tokens", "error", "pattern"),
    [
        ({"cost_model": "./missing_cost"}, 3, FileNotFoundError, "model.cost_model"),
        ({"path": "./missing.jsonl"}, 3, FileNotFoundError, "data.path"),
        ({"reward_model": None}, 3, ValueError, "model.reward_model"),
        ({"max_length": 8}, 8, ValueError, r"data.max_length=8 .* generation.max_new_tokens=8"),
        # A causal LM is not a score model: it would load with a random head.
        ({"reward_model": "POLICY"}, 3, ValueError, "model.reward_model: .* is not a score model"),
    ],
)
def test_settings_that_cannot_run_name_their_key(hub_folder, tmp_path, changes, max_new_tokens, error, pattern):
    changes = {k: (str(hub_folder / "policy") if v == "POLICY" else v) for k, v in changes.items()}
    with pytest.raises(error, match=pattern):
        train(ppo_lag, hub_settings(hub_folder, max_new_tokens, **changes), ppo_lag_settings(1), RunOutput(tmp_path))


@pytest.mark.slow
def test_the_beaver_v1_preset_trains_through_the_cli_on_hub_format_files(ray_cluster, hub_folder, tmp_path):
    """``saferl experiment=beaver_v1`` with the models and data pointed at local hub-format files
    (and shrunk to a CPU): the published preset's code path, end to end, its PTX term (16) on a
    local file in Alpaca's format (instruction, input, output) instead of tatsu-lab/alpaca."""
    import json

    from hydra import compose, initialize_config_dir

    from saferl.cli import CONFIG_DIR
    from saferl.cli import run as run_cli

    # Alpaca's columns, on the world's words (the pairs' prompts and preferred responses).
    pairs = [json.loads(line) for line in (hub_folder / "pku" / "train.jsonl").read_text().splitlines()][:16]
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text("".join(json.dumps({"instruction": pair["prompt"], "input": "", "output": pair["response_0"]}) + "\n"
                              for pair in pairs))
    output_dir = tmp_path / "run"
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
        f"data.ptx_path={alpaca}",
        "logger=jsonl",
        f"output_dir={output_dir}",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    assert cfg.learner.policy_learning_rate == 1e-5 and cfg.cost_limit == 0.0  # still the preset's
    assert cfg.learner.ptx_coeff == 16 and cfg.learner.policy_lr_schedule == "cosine"
    run_cli(cfg)
    summary = json.loads((output_dir / "summary.json").read_text())
    result = json.loads((output_dir / "result.json").read_text())
    assert summary["method"] == "ppo_lag" and summary["cost_limit"] == 0.0 and summary["beta"] == 0.01
    assert len(result["history"]) == 1 and summary["multiplier"] == result["multiplier"]
    assert result["history"][0]["policy/ptx_loss"] > 0  # the PTX step ran on the demonstrations
    assert (output_dir / summary["policy_dir"] / "config.json").is_file()


# ---------------------------------------------------------------------------------------------
# The other learners on hub-format files: preference losses, MoCAN, PeCAN (and their presets)
# ---------------------------------------------------------------------------------------------


class RecordingTracker:
    """Keeps every ``log`` call (the tracker interface the learners take)."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log(self, metrics, step: int) -> None:
        self.logged.append((step, dict(metrics)))

    def finish(self) -> None:
        pass


def weights_changed(start_dir: Path, trained_dir: Path) -> bool:
    """The exported policy has the start's parameters, and at least one of them moved."""
    start, _ = load_policy(start_dir)
    trained, _ = load_policy(trained_dir)
    start_weights, trained_weights = start.state_dict(), trained.state_dict()
    assert start_weights.keys() == trained_weights.keys()
    return any(not torch.equal(start_weights[k], trained_weights[k]) for k in start_weights)


@pytest.fixture(scope="module")
def correlated_cost(hub_folder) -> Path:
    """A cost model that partly agrees with the reward model: the reward model with half of another
    random head added to its score head, ``c = r + n/2``. Tilting towards reward then raises the
    cost, so at margin 0 (d = the reference's mean cost) MoCAN's constraint binds (λ* > 0), while
    ``r − λ*·c`` still ranks the samples (a cost equal to the reward would make it 0 at λ* = 1)."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = hub_folder / "correlated_cost"
    if not folder.exists():
        shutil.copytree(hub_folder / "reward", folder)
        weights = load_file(folder / "model.safetensors")
        generator = torch.Generator().manual_seed(7)
        other = torch.randn(weights["score.weight"].shape, generator=generator) * weights["score.weight"].std()
        weights["score.weight"] = weights["score.weight"] + 0.5 * other
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_pairs_whose_prompt_fills_max_length_are_dropped_and_counted(hub_folder, tmp_path):
    from saferl.data.records import SafetyPreferencePair

    pairs = make_preference_pairs(8, seed=2)
    long = SafetyPreferencePair(prompt="explain bread explain bread", response_0="sorry", response_1="steps",
                                better_response_id=1, safer_response_id=0, is_response_0_safe=True,
                                is_response_1_safe=True)
    write_records([*pairs, long], tmp_path / "pku" / "train.jsonl")
    tokenizer = hub_tokenizer()
    ensure_pad_token(tokenizer)
    # The template's 5 words + 2 prompt words = 7 tokens fit 9; the long prompt's 9 tokens do not.
    kept, dropped = hub_setup.training_pairs(hub_settings(hub_folder, path=str(tmp_path / "pku"), max_length=9),
                                             tokenizer)
    assert dropped == 1 and kept == pairs
    with pytest.raises(ValueError, match="data.max_length=7"):
        hub_setup.training_pairs(hub_settings(hub_folder, path=str(tmp_path / "pku"), max_length=7), tokenizer)


def test_sampling_and_scoring_calls_cover_every_row_once_on_any_number_of_ranks():
    """MoCAN's calls on a hub setup: chunks of ``rows_per_call`` rows, the last padded with copies
    of its first row to a multiple of the ranks; kept rows are every row once, in order."""
    from saferl.data.collators import SequenceBatch
    from saferl.learners.mocan import _concat_sequences, _row_chunks

    assert [c.tolist() for c in _row_chunks(5, None, 1)] == [[0, 1, 2, 3, 4]]  # the world: one call
    chunks = _row_chunks(11, 4, 2)
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 8]]
    kept = [i for c in chunks for i in c.tolist()[: len(set(c.tolist()))]]
    assert kept == list(range(11))
    with pytest.raises(ValueError, match="multiple of the 2 ranks"):
        _row_chunks(11, 3, 2)
    # Right-padded pieces of different widths join right-padded to the widest.
    a = SequenceBatch(torch.tensor([[1, 2]]), torch.tensor([[True, True]]), torch.tensor([[False, True]]))
    b = SequenceBatch(torch.tensor([[3, 4, 5]]), torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool))
    joined = _concat_sequences([a, b], pad_token_id=0)
    assert joined.input_ids.tolist() == [[1, 2, 0], [3, 4, 5]]
    assert joined.attention_mask.tolist() == [[True, True, False], [True, True, True]]
    assert joined.response_mask.tolist() == [[False, True, False], [True, True, True]]


@pytest.mark.slow
def test_hub_preference_trains_bfpo_on_the_hub_policy(ray_cluster, hub_folder, tmp_path):
    tracker = RecordingTracker()
    settings = preference.PreferenceSettings(loss="bfpo", ordering="better", steps=3, pairs_per_step=8,
                                             learning_rate=1e-3, beta=0.1)
    run = train(preference, hub_settings(hub_folder), settings, RunOutput(tmp_path, tracker=tracker))

    # Every pair of train.jsonl (BFPO keeps all four safety cases), helpfulness order, no β (BFPO has τ).
    details = run.details
    assert (details["loss"], details["ordering"], details["num_pairs"], details["num_dropped_pairs"]) == (
        "bfpo", "better", 64, 0)
    assert details["hyperparameters"] == {}
    assert len(run.history) == 3 and [step for step, _ in tracker.logged] == [1, 2, 3]
    losses = [metrics["preference/loss"] for metrics in run.history]
    assert all(math.isfinite(loss) and loss > 0 for loss in losses), losses
    assert run.headline == losses[-1] and run.method == "preference:bfpo"
    # BFPO's targets are ±50 or ±100 on h at τ = 0.01: the untrained policy's h ≈ 0 is far off.
    assert losses[0] > 1000
    assert weights_changed(hub_folder / "policy", run.policy_dir)
    assert run.policy_dir == tmp_path / "models" / "policy_bfpo"


@pytest.mark.slow
def test_hub_mocan_solves_the_dual_on_its_samples_and_trains_dpo(ray_cluster, hub_folder, correlated_cost, tmp_path):
    from saferl.core.dual import solve_from_samples
    from saferl.eval.run_report import write_dual_prediction

    # The dualized learners sample and score in calls of 2 × dpo_pairs_per_step = 16 rows.
    hub = hub_settings(hub_folder, cost_model=str(correlated_cost), rows_per_call=16)
    settings = mocan.MocanSettings(beta=0.1, num_samples=4, margin=0.0, stage="dpo", dpo_steps=3,
                                   dpo_pairs_per_step=8, frontier_grid=(0.0, 0.5, 1.0), num_prompts=12, seed=3)
    tracker = RecordingTracker()
    run = train(mocan, hub, settings, RunOutput(tmp_path, tracker=tracker))

    # Step 1: 12 of the 16 distinct prompts (seeded choice), K = 4 samples each, scored by the two
    # models; the scores are saved.
    saved = torch.load(tmp_path / "mocan" / "scores.pt")
    prompts, rewards, costs = saved["prompts"], saved["rewards"], saved["costs"]
    assert len(prompts) == 12 and set(prompts) < {p.text for p in world_prompts()}
    assert rewards.shape == (12, 4) and costs.shape == (12, 4, 1)
    assert rewards.std() > 0 and not torch.allclose(costs[..., 0], rewards)
    # The same samples scored by both: c − r = n/2 is the extra head alone, so c and r correlate.
    assert torch.corrcoef(torch.stack([rewards.flatten(), costs.flatten()]))[0, 1] > 0
    # Step 2: the dual's λ* is the plug-in solve on the saved samples at d = E_ref c − 0.
    dual = run.dual.solution
    assert torch.allclose(dual.cost_limit, costs.mean().reshape(1), atol=1e-12)
    expected = solve_from_samples(rewards, costs, 0.1, dual.cost_limit)
    assert torch.allclose(dual.multiplier, expected.multiplier, atol=1e-12, rtol=0)
    assert dual.multiplier.item() > 0 and run.multiplier == dual.multiplier.tolist()
    assert run.headline == pytest.approx(float(dual.objective)) and run.dual.units == "cost-model units"
    csv_path, png_path = write_dual_prediction(run)  # the CLI writes the prediction; the learner never plots
    assert csv_path == tmp_path / "mocan" / "frontier.csv" and png_path.stat().st_size > 0
    assert len(csv_path.read_text().strip().splitlines()) == 1 + 3  # header + the grid
    # Step 3: DPO on the relabelled samples, from the hub policy; its steps reach the tracker.
    losses = [metrics["preference/loss"] for _, metrics in tracker.logged]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses), losses
    assert [m["preference/loss"] for m in run.history] == losses
    assert run.policy_dir == tmp_path / "mocan" / "models" / "policy_dpo"
    assert weights_changed(hub_folder / "policy", run.policy_dir)
    assert run.details["num_samples"] == 4


def test_hub_mocan_and_pecan_name_their_missing_pieces(hub_folder, tmp_path):
    with pytest.raises(ValueError, match="model.cost_model: mocan on a hub setup needs"):
        train(mocan, hub_settings(hub_folder, cost_model=None), mocan.MocanSettings(beta=0.1), RunOutput(tmp_path))
    with pytest.raises(FileNotFoundError, match="data.path"):
        train(pecan, hub_settings(hub_folder, path="./missing.jsonl"), pecan.PecanSettings(beta=0.1),
              RunOutput(tmp_path))


HUB_PRESETS = {
    "bfpo": ["learner.preference.steps=2", "learner.preference.pairs_per_step=8"],
    "safe_nca": ["learner.preference.steps=2", "learner.preference.pairs_per_step=8"],
    # MoCAN's PPO stage (the hub PPO-Lagrangian recipe with λ fixed at λ*), one rollout.
    "mocan": ["learner.mocan.num_samples=4", "learner.mocan.margin=0.0", "learner.mocan.stage=ppo",
              "learner.mocan.dpo_pairs_per_step=8", "learner.mocan.num_prompts=8", "learner.iterations=1",
              f"learner.prompts_per_iteration={ROWS}"],
    "pecan": ["learner.pecan.num_samples=4", "learner.pecan.margin=0.0", "learner.pecan.dpo_steps=2",
              "learner.pecan.dpo_pairs_per_step=8", "learner.pecan.num_prompts=8"],
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(HUB_PRESETS))
def test_hub_presets_train_through_the_cli_on_hub_format_files(preset, ray_cluster, hub_folder, correlated_cost,
                                                               tmp_path):
    """``saferl experiment=<preset>`` with the models and data pointed at local hub-format files
    (shrunk to a CPU): each published preset's code path, end to end."""
    from hydra import compose, initialize_config_dir

    from saferl.cli import CONFIG_DIR
    from saferl.cli import run as run_cli
    from saferl.core.dual import solve_from_samples

    models = [f"model.policy={hub_folder / 'policy'}"]
    if preset == "mocan":  # a cost model that partly agrees with the reward: λ* > 0 at margin 0
        models += [f"model.reward_model={hub_folder / 'reward'}", f"model.cost_model={correlated_cost}"]
    overrides = [
        f"experiment={preset}", *models, "model.dtype=float32", f"data.path={hub_folder / 'pku'}",
        "data.max_length=12", "generation.max_new_tokens=3", "runtime=local", "deepspeed.zero_stage=0",
        "deepspeed.precision=fp32", *HUB_PRESETS[preset], "logger=jsonl", f"output_dir={tmp_path}",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    headline = run_cli(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    result = json.loads((tmp_path / "result.json").read_text())
    assert summary["headline"] == pytest.approx(headline) and math.isfinite(headline)
    assert summary["beta"] == cfg.beta and summary["cost_limit"] == cfg.cost_limit
    policy_dir = tmp_path / summary["policy_dir"]
    assert (policy_dir / "config.json").is_file() and weights_changed(hub_folder / "policy", policy_dir)

    if preset in ("bfpo", "safe_nca"):
        assert summary["method"] == f"preference:{preset}" and summary["policy_dir"] == f"models/policy_{preset}"
        details = result["details"]
        assert headline == result["history"][-1]["preference/loss"] and len(result["history"]) == 2
        if preset == "safe_nca":  # NCA on the safe-vs-unsafe pairs at the preset's β
            assert details["ordering"] == "safer" and details["hyperparameters"] == {"beta": 0.1}
            assert details["num_pairs"] == sum(p.is_response_0_safe != p.is_response_1_safe
                                               for p in make_preference_pairs(64, seed=0))
        else:  # the preset's τ, B1, α
            assert details["hyperparameters"] == {"tau": 0.01, "b1": 3.0, "alpha": 0.5}
        return

    # MoCAN and PeCAN: λ* is the plug-in solve on the saved scores at d = E_ref c − margin (0).
    scores = torch.load(tmp_path / preset / "scores.pt")
    assert len(scores["prompts"]) == 8 and scores["rewards"].shape == (8, 4)
    limit = scores["costs"].mean().reshape(1)
    assert result["dual"]["cost_limit"] == pytest.approx(limit.tolist(), abs=1e-12)
    expected = solve_from_samples(scores["rewards"], scores["costs"], cfg.beta, limit)
    assert summary["multiplier"] == pytest.approx(expected.multiplier.tolist(), abs=1e-9)
    assert headline == pytest.approx(result["dual"]["objective"])
    assert summary["method"] == preset
    if preset == "mocan":
        assert summary["multiplier"][0] > 0
        assert (tmp_path / summary["predicted_frontier_csv"]).is_file()
        assert summary["policy_dir"] == "mocan/models/policy_ppo_lag"
        # The PPO stage (ppo_lag.run) ran with λ fixed at λ*.
        assert result["history"][0]["multiplier/value_0"] == pytest.approx(summary["multiplier"][0])
        assert (tmp_path / "mocan" / "checkpoints" / "ppo_lag" / "COMPLETE").exists()
    else:
        assert summary["predicted_frontier_csv"] is None  # implicit units
        assert summary["policy_dir"] == "pecan/models/policy_dpo"
        for kind in ("implicit_reward", "implicit_safety"):
            assert weights_changed(hub_folder / "policy", tmp_path / "pecan" / "models" / kind)
