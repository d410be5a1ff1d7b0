"""MoCAN (``saferl.learners.mocan``): its steps on a world setup built in the test, and its PPO stage
as exactly the ``ppo_lag`` learner with the multiplier fixed at λ̂.

The setup is the built-in world's pieces without its score-model stages: a tiny SFT reference
(conftest ``sft_dir``), the world's tokenizer, template and prompts, and the ground-truth (oracle)
scorers; the critics start from the reference's backbone.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from saferl.core.dual import solve_from_samples
from saferl.data.world import ReferenceConfig, world_prompts
from saferl.data.world.exact import MAX_RESPONSE_TOKENS
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners import mocan, ppo_lag
from saferl.learners.mocan import MocanSettings, choose_prompts, pseudo_preference_batch
from saferl.learners.output import RunOutput
from saferl.learners.ppo_lag import PPOLagSettings, PPOSettings
from saferl.models import ModelSpec
from saferl.runtime import DeepSpeedSpec, GenerationSpec, GroupSpec, RuntimeSpec
from saferl.runtime.resources import Resources
from saferl.setups.base import CriticStart, Setup
from saferl.setups.world import WorldScorerSource

RUNTIME = RuntimeSpec(local_num_cpus=8, startup_timeout_s=300, call_timeout_s=300)
RESOURCES = Resources(GroupSpec(num_ranks=1, cpus_per_rank=0.25), RUNTIME, DeepSpeedSpec(zero_stage=2), seed=0)
SFT_REFERENCE = ReferenceConfig(steps=60, num_examples=500)  # read by conftest.sft_dir
ROWS = 16  # the world's 16 prompts, one rollout


def oracle_setup(sft_dir, tokenizer) -> Setup:
    spec = ModelSpec(name_or_path=str(sft_dir))

    return Setup(
        name="world", policy=spec, tokenizer=tokenizer, template=WORLD_TEMPLATE, max_length=MAX_SEQUENCE_LENGTH,
        max_prompt_length=MAX_SEQUENCE_LENGTH, generation=GenerationSpec(max_new_tokens=MAX_RESPONSE_TOKENS),
        prompts=[prompt.text for prompt in world_prompts()], reward=WorldScorerSource.oracle("reward", tokenizer),
        costs=(WorldScorerSource.oracle("cost", tokenizer),),
        reward_critic=CriticStart(spec), cost_critics=(CriticStart(spec),), score_units="ground-truth units",
    )


def ppo_settings() -> PPOLagSettings:
    loop = PPOSettings(iterations=1, prompts_per_iteration=ROWS, kl_coeff=0.5, kl_in_cost_stream=False, seed=0)
    return PPOLagSettings(loop, {"kind": "log_gradient_ascent"}, -0.8)


def without_timings(metrics: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if not key.startswith("perf/")}


@pytest.mark.slow
def test_mocan_ppo_stage_is_ppo_lag_with_the_multiplier_fixed_at_the_dual_solution(
    ray_cluster, sft_dir, tokenizer, tmp_path
):
    setup = oracle_setup(sft_dir, tokenizer)
    settings = MocanSettings(beta=0.5, cost_limit=-0.8, num_samples=4, stage="ppo", ppo=ppo_settings(), seed=0)
    result = mocan.run(setup, settings, RESOURCES, RunOutput(tmp_path / "mocan_run"))

    # Steps 1–2: λ̂ is the plug-in solve on the saved reference samples (ground-truth units).
    saved = torch.load(tmp_path / "mocan_run" / "mocan" / "scores.pt")
    assert saved["rewards"].shape == (16, 4) and saved["costs"].shape == (16, 4, 1)
    expected = solve_from_samples(saved["rewards"], saved["costs"], 0.5, torch.tensor([-0.8], dtype=torch.float64))
    assert torch.allclose(result.dual.solution.multiplier, expected.multiplier, atol=1e-12, rtol=0)
    assert result.multiplier == result.dual.solution.multiplier.tolist()
    assert result.dual.units == "ground-truth units"

    # Step 3b: the same seeded iteration as the ppo_lag learner with λ fixed at λ̂.
    fixed = replace(ppo_settings(), multiplier={"kind": "fixed", "value": result.multiplier}, cost_limit=(-0.8,))
    direct = ppo_lag.run(setup, fixed, RESOURCES, RunOutput(tmp_path / "ppo_lag_run"))
    assert len(result.history) == len(direct.history) == 1
    assert without_timings(result.history[0]) == without_timings(direct.history[0])
    assert result.history[0]["multiplier/value_0"] == pytest.approx(result.multiplier[0])
    assert math.isfinite(result.history[0]["policy/loss"])
    assert result.policy_dir == tmp_path / "mocan_run" / "mocan" / "models" / "policy_ppo_lag"


@pytest.mark.slow
def test_mocan_predict_only_stops_after_the_dual_and_needs_no_critics(ray_cluster, sft_dir, tokenizer, tmp_path):
    settings = MocanSettings(beta=0.5, cost_limit=-0.8, num_samples=4, predict_only=True, num_prompts=8, seed=1)
    assert not mocan.needs(settings).critics
    setup = replace(oracle_setup(sft_dir, tokenizer), reward_critic=None, cost_critics=())
    result = mocan.run(setup, settings, RESOURCES, RunOutput(tmp_path))
    assert result.policy_dir is None and result.history == []
    assert result.details["num_prompts"] == 8 and result.headline == pytest.approx(float(result.dual.solution.objective))
    # The predicted frontier is non-increasing in cost along the λ grid.
    costs = result.dual.frontier.expected_cost[:, 0]
    assert bool((costs[1:] <= costs[:-1] + 1e-12).all())


def test_choose_prompts_is_a_seeded_subset_in_data_order():
    prompts = [f"p{i}" for i in range(10)]
    chosen = choose_prompts(prompts, 4, seed=3)
    assert len(chosen) == 4 and chosen == [p for p in prompts if p in chosen]
    assert chosen == choose_prompts(prompts, 4, seed=3) and choose_prompts(prompts, None, 0) == prompts
    assert choose_prompts(prompts, 20, seed=0) == prompts


def test_pseudo_preference_labels_are_the_composite_score_sigmoid():
    # Two prompts, K = 2: s = r − λ·c, labels σ(s_0 − s_1) per pair (no β inside σ, docs/algorithms.md §4).
    rewards = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    costs = torch.tensor([[[1.0], [0.0]], [[0.0], [0.0]]], dtype=torch.float64)
    ids = torch.tensor([[1, 2], [1, 3], [4, 5], [4, 6]])
    samples = mocan.ScoredSamples(ids, torch.ones_like(ids, dtype=torch.bool), torch.ones_like(ids, dtype=torch.bool),
                                  rewards, costs)
    batch = pseudo_preference_batch(samples, torch.tensor([2.0], dtype=torch.float64), soft_labels=True, seed=0)
    # Pair 0: s = (1 − 2, 0) → σ(−1); pair 1: s = (0.5, 0.5) → σ(0) = ½.
    expected = torch.tensor([1 / (1 + math.e), 1 / (1 + math.e), 0.5, 0.5])
    assert torch.allclose(batch.preference_prob, expected.float(), atol=1e-7)
    assert batch.input_ids.tolist() == ids.tolist()


def test_anchor_keeps_every_sample_and_weighs_it_by_the_tilt_on_its_prompts_distinct_samples():
    # Two prompts, K = 4. Prompt 0 sampled y_a twice (rows 0 and 1, an identical pair kept for the
    # anchor), prompt 1 four distinct responses. Weights: α · (number of pairs) · q/(n·P).
    rewards = torch.tensor([[1.0, 1.0, 0.0, 2.0], [0.0, 0.5, 1.0, -1.0]], dtype=torch.float64)
    costs = torch.tensor([[[1.0], [1.0], [0.0], [2.0]], [[0.0], [0.0], [1.0], [0.0]]], dtype=torch.float64)
    ids = torch.tensor([[1, 2], [1, 2], [1, 3], [1, 4], [5, 2], [5, 3], [5, 4], [5, 6]])
    samples = mocan.ScoredSamples(ids, torch.ones_like(ids, dtype=torch.bool), torch.ones_like(ids, dtype=torch.bool),
                                  rewards, costs)
    multiplier = torch.tensor([0.5], dtype=torch.float64)
    dropped = pseudo_preference_batch(samples, multiplier, soft_labels=True, seed=0)
    assert dropped.num_pairs == 3  # the identical pair (rows 0, 1) carries no DPO signal
    batch = pseudo_preference_batch(samples, multiplier, soft_labels=True, seed=0, keep_identical=True)
    assert batch.input_ids.tolist() == ids.tolist() and batch.num_pairs == 4
    ref_logps = torch.tensor([-1.0, -1.0, -2.0, -0.5, -1.5, -1.0, -2.5, -3.0])
    weights = mocan.anchor_weights(samples, multiplier, 0.5, 2.0)(replace(batch, ref_logps=ref_logps))
    s = (rewards - 0.5 * costs[..., 0]).reshape(-1)
    logits = ref_logps.double() + s / 0.5
    q0 = torch.softmax(logits[[0, 2, 3]], 0)  # prompt 0's distinct responses y_a, y_b, y_c
    q1 = torch.softmax(logits[4:], 0)
    expected = 2.0 * 4 * torch.cat([q0[:1] / 2 / 2, q0[:1] / 2 / 2, q0[1:] / 2, q1 / 2])
    assert torch.allclose(weights, expected, atol=1e-12)
    with pytest.raises(ValueError, match="reference log-probs of all 8 samples"):
        mocan.anchor_weights(samples, multiplier, 0.5, 2.0)(batch)


def test_mocan_settings_name_their_keys():
    for bad in (-1.0, True, "x"):
        with pytest.raises(ValueError, match="learner.mocan.anchor_weight"):
            MocanSettings(anchor_weight=bad)
    with pytest.raises(ValueError, match="learner.mocan.stage"):
        MocanSettings(stage="foo")
    with pytest.raises(ValueError, match="learner.mocan.stage=ppo needs"):
        MocanSettings(stage="ppo")
    with pytest.raises(ValueError, match="learner.mocan.margin"):
        MocanSettings(margin=-1.0)
