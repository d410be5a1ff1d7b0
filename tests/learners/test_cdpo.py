"""C-DPO (``saferl.learners.cdpo``): its relabelling is MoCAN's, a round at λ = 0 is DPO on the
reward, its settings name their keys, and one small end-to-end run on the world (oracle scorers,
the world's exact evaluator) whose λ history, summary.json and scoreboard row are checked.

Exact references in float64 where the math allows; the end-to-end run is the smallest that still
moves λ (two rounds, 4 samples per prompt, 3 DPO steps each).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from saferl.core.dualized import composite_score, pseudo_preference_prob
from saferl.core.targets import TiltTarget, target_logprobs
from saferl.data.world import ReferenceConfig, world_prompts
from saferl.data.world.exact import MAX_RESPONSE_TOKENS
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners import cdpo, mocan
from saferl.learners.cdpo import CDPOSettings
from saferl.learners.output import RunOutput
from saferl.learners.result import RunSummary, SummaryRecord
from saferl.models import ModelSpec
from saferl.runtime import DeepSpeedSpec, GenerationSpec, GroupSpec, RuntimeSpec
from saferl.runtime.resources import Resources
from saferl.setups.base import Setup
from saferl.setups.world import WorldEvaluator, WorldScorerSource

RUNTIME = RuntimeSpec(local_num_cpus=8, startup_timeout_s=300, call_timeout_s=300)
RESOURCES = Resources(
    GroupSpec(num_ranks=1, cpus_per_rank=0.25), RUNTIME, DeepSpeedSpec(zero_stage=2), seed=0
)
SFT_REFERENCE = ReferenceConfig(steps=30, num_examples=300)  # read by conftest.sft_dir
BETA, LIMIT = 0.5, -0.8


def scored_samples(seed: int = 0, prompts: int = 3, k: int = 4, m: int = 1) -> mocan.ScoredSamples:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (prompts * k, 5), generator=generator)
    mask = torch.ones_like(ids, dtype=torch.bool)
    rewards = torch.randn(prompts, k, generator=generator, dtype=torch.float64)
    costs = torch.randn(prompts, k, m, generator=generator, dtype=torch.float64)
    return mocan.ScoredSamples(ids, mask, mask, rewards, costs)


def test_the_relabelling_is_mocans():
    # C-DPO imports MoCAN's relabelling (not a copy): the same function, so the same labels.
    assert cdpo.anchored_pairs is mocan.anchored_pairs
    samples = scored_samples(m=2)
    multiplier = torch.tensor([0.7, 0.2], dtype=torch.float64)
    batch, weights = cdpo.anchored_pairs(samples, multiplier, soft_labels=True, seed=0, beta=BETA, anchor_weight=0.0)
    assert weights is None  # C-DPO's default: DPO alone
    scores = composite_score(samples.rewards, samples.costs, multiplier).reshape(-1)
    expected = pseudo_preference_prob(scores[0::2], scores[1::2]).float().repeat_interleave(2)
    assert torch.equal(batch.preference_prob, expected)


def test_a_round_at_zero_multiplier_is_dpo_on_the_reward():
    # λ = 0: the labels are σ(r_0 − r_1) whatever the costs ...
    samples = scored_samples(seed=1)
    batch, _ = cdpo.anchored_pairs(
        samples, torch.zeros(1, dtype=torch.float64), soft_labels=True, seed=0, beta=BETA, anchor_weight=0.0
    )
    rewards = samples.rewards.reshape(-1)
    expected = torch.sigmoid(rewards[0::2] - rewards[1::2]).float().repeat_interleave(2)
    assert torch.allclose(batch.preference_prob, expected, atol=1e-7, rtol=0)
    # ... and the target is plain DPO's on helpfulness labels of temperature 1 (π_ref exp(r/β)).
    generator = torch.Generator().manual_seed(2)
    ref = torch.log_softmax(torch.randn(4, 6, generator=generator, dtype=torch.float64), dim=1)
    rewards, costs = torch.randn(2, 4, 6, generator=generator, dtype=torch.float64)
    settings = CDPOSettings(beta=BETA, cost_limit=LIMIT)
    _, ours = target_logprobs(ref, rewards, costs, cdpo.target(settings, (0.0,)), LIMIT)
    _, dpo = target_logprobs(ref, rewards, costs, TiltTarget("dpo", BETA, multiplier=0.0), LIMIT)
    assert torch.allclose(ours, dpo, atol=1e-14, rtol=0)
    assert torch.allclose(ours, torch.log_softmax(ref + rewards / BETA, dim=1), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"rounds": 0}, "learner.cdpo.rounds"),
        ({"num_samples": 3}, "learner.cdpo.num_samples"),
        ({"multiplier_step_size": 0.0}, "learner.cdpo.multiplier_step_size"),
        ({"multiplier_step_size": [1.0, 1.0]}, "learner.cdpo.multiplier_step_size"),
        ({"initial_multiplier": -0.5}, "learner.cdpo.initial_multiplier"),
        ({"dpo_learning_rate": 0}, "learner.cdpo.dpo_learning_rate"),
        ({"anchor_weight": -1.0}, "learner.cdpo.anchor_weight"),
        ({"num_prompts": 0}, "learner.cdpo.num_prompts"),
        ({"soft_labels": "yes"}, "learner.cdpo.soft_labels"),
    ],
)
def test_settings_name_their_keys(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        CDPOSettings(**kwargs)


def world_setup(sft_dir, tokenizer) -> Setup:
    """The world with oracle scorers and its exact evaluator."""
    return Setup(
        name="world",
        policy=ModelSpec(name_or_path=str(sft_dir)),
        tokenizer=tokenizer,
        template=WORLD_TEMPLATE,
        max_length=MAX_SEQUENCE_LENGTH,
        max_prompt_length=MAX_SEQUENCE_LENGTH,
        generation=GenerationSpec(max_new_tokens=MAX_RESPONSE_TOKENS),
        prompts=[prompt.text for prompt in world_prompts()],
        reward=WorldScorerSource.oracle("reward", tokenizer),
        costs=(WorldScorerSource.oracle("cost", tokenizer),),
        evaluator=WorldEvaluator(sft_dir, BETA, (LIMIT,)),
        score_units="ground-truth units",
    )


#: The end-to-end run's settings. A large initial λ and a large step: round 1 must move it (down
#: when the reference is safe enough, up otherwise), and the recorded E[c] must give exactly the
#: recorded λ.
SETTINGS = CDPOSettings(
    beta=BETA,
    cost_limit=LIMIT,
    rounds=2,
    num_samples=4,
    multiplier_step_size=2.0,
    initial_multiplier=0.5,
    dpo_steps=3,
    dpo_pairs_per_step=8,
    evaluate_rounds=True,
)


@pytest.fixture(scope="module")
def whole_run(ray_cluster, sft_dir, tokenizer, tmp_path_factory):
    """One uninterrupted two-round run (the end-to-end test's, and the resume test's reference)."""
    setup = world_setup(sft_dir, tokenizer)
    folder = tmp_path_factory.mktemp("whole")
    return setup, folder, cdpo.run(setup, SETTINGS, RESOURCES, RunOutput(folder))


@pytest.mark.slow
def test_cdpo_on_the_world_end_to_end(whole_run):
    setup, tmp_path, result = whole_run
    rounds = result.details["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and len(result.details["multiplier_history"]) == 2
    multiplier = 0.5
    for record in rounds:
        assert record["multiplier_before"] == [pytest.approx(multiplier, abs=1e-12)]
        multiplier = max(0.0, multiplier + 2.0 * (record["expected_cost"][0] - LIMIT))
        assert record["multiplier"] == [pytest.approx(multiplier, abs=1e-12)]
        assert record["samples"] == 16 * 4 and math.isfinite(record["normalised_lagrangian_gap"])
    assert (
        rounds[-1]["cumulative_samples"] == 2 * 64
        and rounds[0]["multiplier"] != rounds[0]["multiplier_before"]
    )
    assert result.multiplier == rounds[-1]["multiplier"] and len(result.history) == 2 * 3
    assert result.policy_dir == tmp_path / "cdpo" / "models" / "policy_round2"

    # summary.json as the CLI writes it, with the exact evaluation and the target at the final λ.
    evaluation = setup.evaluator.evaluate(result.policy_dir, result.target)
    RunSummary(
        result=result, setup="world", beta=BETA, cost_limit=LIMIT, evaluation=evaluation
    ).write(tmp_path)
    record = SummaryRecord.read(tmp_path / "summary.json")
    assert record.method == "cdpo" and record.multiplier == tuple(result.multiplier)
    assert record.target_multiplier == pytest.approx(tuple(result.multiplier), abs=1e-12)
    for block in (record.trained, record.target, record.reference, record.optimum):
        assert all(
            math.isfinite(v)
            for v in (block.normalised_lagrangian_gap, block.kl_to_optimum, *block.violation)
        )
    # The last round's evaluation is the trained policy's.
    assert rounds[-1]["normalised_lagrangian_gap"] == pytest.approx(
        record.trained.normalised_lagrangian_gap
    )
    full = json.loads((tmp_path / "result.json").read_text())
    assert len(full["details"]["multiplier_history"]) == 2


@pytest.mark.slow
def test_an_interrupted_run_resumes_after_its_last_round_as_if_never_stopped(
    whole_run, tmp_path, monkeypatch
):
    """Round 2's DPO fails once; resume=auto continues from round 1's checkpoint and ends where
    an uninterrupted run ends: the same λ, round records, metrics and final weights, bit for bit."""
    from safetensors.torch import load_file

    from saferl.learners.run_state import RunFolderInUseError, latest_checkpoint

    setup, _, whole = whole_run
    settings = SETTINGS

    real_train, calls = cdpo.train_policy_on_pairs, []

    def fails_in_round_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("lost in round 2")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(cdpo, "train_policy_on_pairs", fails_in_round_two)
    with pytest.raises(RuntimeError, match="lost in round 2"):
        cdpo.run(setup, settings, RESOURCES, RunOutput(tmp_path / "stopped"))
    monkeypatch.setattr(cdpo, "train_policy_on_pairs", real_train)
    # A fresh run into that folder is refused; other settings cannot continue its checkpoint.
    with pytest.raises(RunFolderInUseError, match="resume=auto"):
        cdpo.run(setup, settings, RESOURCES, RunOutput(tmp_path / "stopped"))
    # (Refused before the checkpoint's policy is read: no group is needed to check it.)
    with pytest.raises(ValueError, match="dpo_steps: recorded 3, now 4"):
        cdpo._load_round(latest_checkpoint(tmp_path / "stopped" / "checkpoints" / "cdpo"), None,
                         replace(settings, dpo_steps=4))

    notices = []
    resumed = cdpo.run(setup, settings, RESOURCES, RunOutput(tmp_path / "stopped", resume=True, notice=notices.append))
    assert notices == [f"resuming from round 1 of 2 (checkpoint {tmp_path / 'stopped' / 'checkpoints' / 'cdpo'})"]
    assert resumed.multiplier == whole.multiplier and resumed.history == whole.history

    def without_times(records):
        return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in records]

    assert without_times(resumed.details["rounds"]) == without_times(whole.details["rounds"])
    weights = [load_file(next(Path(result.policy_dir).glob("*.safetensors"))) for result in (whole, resumed)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_resumes_from_the_previous_round_and_says_so(whole_run, tmp_path):
    """The whole run's checkpoints (round 2, and round 1 kept as ``cdpo.previous``) with one byte
    of round 2's policy checkpoint flipped: resume=auto names that file, continues from round 1's
    checkpoint and ends where the uninterrupted run ends."""
    import shutil

    setup, folder, whole = whole_run
    checkpoints = tmp_path / "damaged" / "checkpoints"
    shutil.copytree(folder / "checkpoints", checkpoints)
    newest, previous = checkpoints / "cdpo", checkpoints / "cdpo.previous"
    assert json.loads((previous / "state.json").read_text())["round"] == 1
    damaged = max((path for path in (newest / "policy").rglob("*") if path.is_file()), key=lambda path: path.stat().st_size)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))

    notices = []
    resumed = cdpo.run(setup, SETTINGS, RESOURCES, RunOutput(tmp_path / "damaged", resume=True, notice=notices.append))
    assert len(notices) == 2, notices
    assert notices[0].startswith(f"the checkpoint {newest} is damaged ({damaged}: expected sha256 ")
    assert f"resuming from the previous checkpoint {previous} instead" in notices[0]
    assert notices[1] == f"resuming from round 1 of 2 (checkpoint {previous})"
    assert resumed.multiplier == whole.multiplier and resumed.history == whole.history
    # Round 2 saved anew; round 1's good checkpoint stays the previous one.
    assert json.loads((newest / "state.json").read_text())["round"] == 2
    assert json.loads((previous / "state.json").read_text())["round"] == 1
