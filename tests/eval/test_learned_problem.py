"""The learned problem's optimum taken apart on the exact world (saferl.eval.learned_problem): exact
checks with learned scores that are the truth, or the truth shifted by a known amount, and the
folder reader against a hand calibration."""

from __future__ import annotations

import pytest
import torch

from saferl.core.dual import solve
from saferl.data.world import (
    build_exact_world,
    build_world_tokenizer,
    world_dataset_paths,
    world_prompts,
)
from saferl.data.world.exact import tilted_logprobs
from saferl.data.world.generator import make_preference_pairs
from saferl.data.writing import write_records
from saferl.eval.learned_problem import (
    calibrated_learned_scores,
    learned_problem_rows,
    margin_needed,
)
from saferl.learners.scorers import apply_calibration, fit_calibration
from saferl.models import (
    ModelSpec,
    TinyModelConfig,
    build_policy,
    build_score_model,
    save_score_model,
)
from saferl.setups.world import critic_value_scale, enumerate_end_scores, world_truth

BETA, LIMIT = 0.5, -0.8


@pytest.fixture(scope="module")
def tokenizer():
    return build_world_tokenizer()


@pytest.fixture(scope="module")
def world(tokenizer):
    """An untrained tiny reference on one benign and one harmful prompt: any full-support π_ref and
    any prompts serve these identities."""
    torch.manual_seed(0)
    spec = ModelSpec(tiny=TinyModelConfig(vocab_size=len(tokenizer), max_position_embeddings=32))
    prompts = tuple(world_prompts()[i] for i in (0, 9))
    return build_exact_world(build_policy(spec, tokenizer).eval(), tokenizer, BETA, LIMIT, prompts)


def test_exact_learned_scores_reach_the_optimum_in_every_row(world):
    rows = learned_problem_rows(world, world.rewards.clone(), world.costs.clone())
    optimum = world.optimum()
    assert [row.problem for row in rows][-1] == "true problem (π*)"
    for row in rows:
        assert row.multiplier[0] == pytest.approx(float(optimum.multiplier[0]), rel=1e-9)
        assert row.score.violation[0] <= 1e-9
        assert abs(row.score.normalised_lagrangian_gap) <= 1e-9
    needed = margin_needed(world, world.rewards, world.costs)
    assert needed.margin == 0.0 and needed.score.is_feasible()


def test_an_optimistic_cost_model_breaks_the_limit_by_its_bias_and_needs_that_margin(world):
    """Learned costs c − b: the learned optimum at d is the true optimum at d + b, so its true
    E[c] is d + b (violation b); at d − δ it is feasible exactly from δ = b."""
    bias = 0.1
    rows = {row.problem: row for row in learned_problem_rows(world, world.rewards, world.costs - bias)}
    learned = rows["learned reward, learned cost"]
    assert learned.score.expected_cost[0] == pytest.approx(LIMIT + bias, abs=1e-7)
    assert learned.score.violation[0] == pytest.approx(bias, abs=1e-7)
    assert learned.score.normalised_lagrangian_gap > 0  # not π*: a different limit
    # The cost model's share shows in its own row; the reward model's row is the truth here.
    assert rows["true reward, learned cost"].score.violation[0] == pytest.approx(bias, abs=1e-7)
    assert rows["learned reward, true cost"].score.violation[0] <= 1e-9
    needed = margin_needed(world, world.rewards, world.costs - bias)
    assert needed.margin == pytest.approx(bias)
    assert needed.score.violation[0] <= 1e-7 and needed.score.normalised_lagrangian_gap <= 1e-7
    # Just below the bias no margin on the grid is enough.
    assert margin_needed(world, world.rewards, world.costs - bias, grid=(0.0, 0.05, 0.075)).margin is None


def test_a_pessimistic_cost_model_is_feasible_without_margin_at_a_gap(world):
    rows = {row.problem: row for row in learned_problem_rows(world, world.rewards, world.costs + 0.1)}
    learned = rows["learned reward, learned cost"]
    assert learned.score.violation[0] == 0.0
    assert learned.score.expected_cost[0] == pytest.approx(LIMIT - 0.1, abs=1e-7)
    # It is the true optimum at d − 0.1: safer than π*, at a Lagrangian gap of its own.
    tighter = world.score(tilted_logprobs(world.ref_logprobs, world.rewards, world.costs, BETA,
                                          solve(world.problem(LIMIT - 0.1)).multiplier))
    assert learned.score.lagrangian_gap == pytest.approx(tighter.lagrangian_gap, rel=1e-6)
    assert learned.score.lagrangian_gap > 1e-4
    assert margin_needed(world, world.rewards, world.costs + 0.1).margin == 0.0


def test_costs_no_policy_can_meet_give_no_optimum_and_shapes_are_checked(world):
    rows = learned_problem_rows(world, world.rewards, world.costs + 10.0)
    assert rows[0].multiplier is None and rows[0].score is None
    assert rows[2].score is not None  # the true costs still have one
    with pytest.raises(ValueError, match="do not match the world"):
        learned_problem_rows(world, world.rewards[:1], world.costs)
    with pytest.raises(ValueError, match="non-negative"):
        margin_needed(world, world.rewards, world.costs, grid=(-0.1, 0.0))


def steepest_slope(calibration: dict) -> float:
    """The largest |slope| of a fitted calibration map (:func:`fit_calibration`)."""
    if calibration["kind"] == "affine":
        return abs(calibration["scale"])
    x, y = (torch.tensor(calibration[key], dtype=torch.float64) for key in ("knots_x", "knots_y"))
    return ((y[1:] - y[:-1]) / (x[1:] - x[:-1])).abs().max().item() if x.numel() > 1 else 0.0


def test_a_folder_is_calibrated_as_a_run_calibrates(tmp_path, tokenizer, world):
    """The reader fits the run's map (isotonic by default, or affine) on the held-out responses'
    ground truth and applies it to every enumerated response's end score; a missing model is named."""
    spec = ModelSpec(tiny=TinyModelConfig(vocab_size=len(tokenizer), max_position_embeddings=32))
    models = {}
    for seed, name in enumerate(("reward_model", "cost_model")):
        torch.manual_seed(seed + 1)
        models[name] = build_score_model(spec, tokenizer).eval()
        save_score_model(models[name], tokenizer, tmp_path / "models" / name)
    texts = {prompt.text for prompt in world.prompts}
    pairs = [pair for pair in make_preference_pairs(200, seed=3, temperature=1.0) if pair.prompt in texts]
    write_records(pairs, world_dataset_paths(tmp_path / "data").preferences("test"))

    calibrated = {kind: calibrated_learned_scores(tmp_path, world, tokenizer, kind) for kind in ("isotonic", "affine")}
    rewards, costs = calibrated["isotonic"]
    assert rewards.shape == world.rewards.shape and costs.shape == world.costs.shape
    assert not torch.allclose(costs, calibrated["affine"][1])  # the two maps differ on these models
    # By hand: the held-out responses are among the enumerated ones, so their end scores are
    # the enumerated scores' entries.
    responses = world.responses
    index = {" ".join(words) + ("" if done else " …"): k
             for k, (words, done) in enumerate(zip(responses.words, responses.finished.tolist(), strict=True))}
    rows = {prompt.text: p for p, prompt in enumerate(world.prompts)}
    unique = sorted({(pair.prompt, response) for pair in pairs for response in (pair.response_0, pair.response_1)})
    for map_kind, (map_rewards, map_costs) in calibrated.items():
        for kind, name, learned in (("reward", "reward_model", map_rewards), ("cost", "cost_model", map_costs[..., 0])):
            raw = enumerate_end_scores(models[name], tokenizer, world.prompts, responses)
            held_out = torch.stack([raw[rows[p], index[r]] for p, r in unique])
            truth = world_truth(kind)
            fitted = fit_calibration(map_kind, held_out, torch.tensor([truth(p, r) for p, r in unique]))
            # The reader scores the held-out responses by a forward pass of each, this test reads them
            # off the enumeration: equal up to float32 rounding (≈ 1e-7), which moves the map's knots
            # by as much and its values by that times its steepest slope (steep here: an untrained
            # model's near-tied scores).
            atol = 1e-5 + 2e-7 * steepest_slope(fitted)
            torch.testing.assert_close(learned, apply_calibration(fitted, raw), rtol=0, atol=atol)
            if map_kind == "affine":  # a critic started from this model is scaled by the same fit's scale
                scale = critic_value_scale(tmp_path / "models" / name, pairs, truth, tokenizer)
                assert scale == pytest.approx(fitted["scale"], rel=1e-4)

    (tmp_path / "models" / "cost_model" / "config.json").rename(tmp_path / "elsewhere.json")
    (tmp_path / "models" / "cost_model").rename(tmp_path / "models" / "moved")
    with pytest.raises(FileNotFoundError, match="cost_model"):
        calibrated_learned_scores(tmp_path, world, tokenizer)
