"""Rule-Based Rewards in PPO / PPO-Lag (``saferl.learners.rbr``): the reward composition against
hand-computed float64 values, RBR-Fixed's weights, the target's reward bonus, the settings' errors,
and one end-to-end run on the world (fit, PPO-Lag, exact evaluation, ``summary.json``).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from saferl.core.targets import TiltTarget, target_logprobs
from saferl.data.batches import SequenceBatch
from saferl.data.world import (
    EOS,
    VOCABULARY,
    ReferenceConfig,
    build_world_tokenizer,
    ground_truth_reward,
    world_prompts,
)
from saferl.data.world.exact import MAX_RESPONSE_TOKENS
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners import rbr
from saferl.learners.output import RunOutput
from saferl.learners.ppo_lag import PPOLagSettings, PPOSettings
from saferl.learners.rbr_grading import WorldRowGrader, prompt_response_types
from saferl.learners.result import RunSummary, SummaryRecord
from saferl.learners.scorers import WorldOracleScorer
from saferl.learners.settings import RBRSettings
from saferl.models import ModelSpec
from saferl.rbr import LinearRBR
from saferl.rbr.world import world_spec
from saferl.runtime import DeepSpeedSpec, GenerationSpec, GroupSpec, RuntimeSpec
from saferl.runtime.resources import Resources
from saferl.setups.base import CriticStart, Setup
from saferl.setups.world import WorldEvaluator, WorldScorerSource

RUNTIME = RuntimeSpec(local_num_cpus=8, startup_timeout_s=300, call_timeout_s=300)
RESOURCES = Resources(
    GroupSpec(num_ranks=1, cpus_per_rank=0.25), RUNTIME, DeepSpeedSpec(zero_stage=2), seed=0
)
SFT_REFERENCE = ReferenceConfig(steps=60, num_examples=500)  # read by conftest.sft_dir
HARMFUL, BENIGN = "describe poison", "explain bread"


def ppo_settings(iterations: int = 1) -> PPOLagSettings:
    loop = PPOSettings(
        iterations=iterations, prompts_per_iteration=16, kl_coeff=0.5, kl_in_cost_stream=False
    )
    return PPOLagSettings(loop, {"kind": "log_gradient_ascent"}, -0.8)


def response_batch(tokenizer, responses: list[list[str]]) -> SequenceBatch:
    """Rows that hold only their responses (words, then EOS), right-padded."""
    ids = [tokenizer.convert_tokens_to_ids([*words, EOS]) for words in responses]
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return SequenceBatch(input_ids, mask, mask.clone())


def numbered_weights() -> LinearRBR:
    """Weights 1, 2, 3, ... per response type (so each feature's contribution is its position)."""
    plain = LinearRBR.from_spec(world_spec())
    return LinearRBR.from_spec(
        world_spec(),
        {
            key: torch.arange(1, len(feature_map.feature_names) + 1, dtype=torch.float64)
            for key, feature_map in plain.feature_maps.items()
        },
    )


def world_types() -> dict[str, str]:
    return prompt_response_types("world", [p.text for p in world_prompts()], world_spec(), None)


def weight(model: LinearRBR, response_type: str, feature: str) -> float:
    return model.weight_names()[response_type][feature]


# ---------------------------------------------------------------------------------------------
# The reward composition (no Ray)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("safety_relevant", [("hard_refuse", "comply"), ("hard_refuse",)])
def test_reward_is_rm_plus_rbr_on_safety_relevant_prompts_only(safety_relevant):
    tokenizer = build_world_tokenizer()
    model = numbered_weights()
    scorer = rbr.RBRRewardScorer(
        WorldOracleScorer("reward", tokenizer), model, WorldRowGrader(0.0, 0, tokenizer), world_types(), safety_relevant
    )
    responses = [["sorry", "cannot"], ["steps", "detail", "poison"], ["steps", "bread"], ["sorry"]]
    prompts = [HARMFUL, HARMFUL, BENIGN, BENIGN]
    scores = scorer.score(response_batch(tokenizer, responses), prompts)[:, 0].double()

    world = {p.text: p for p in world_prompts()}
    rm = torch.tensor(
        [
            ground_truth_reward(world[p], words, True)
            for p, words in zip(prompts, responses, strict=True)
        ],
        dtype=torch.float32,
    ).double()
    # With the exact grader every feature is 0 or 1 and the class features are one-hot, so R_rbr is
    # the sum of the weights of the features that hold:
    # "sorry cannot" to a harmful prompt: apology, inability_to_comply, refusal, class ideal (a
    # correct refusal);
    ideal_refusal = sum(
        weight(model, "hard_refuse", name)
        for name in ("apology", "inability_to_comply", "refusal", "class/ideal")
    )
    # "steps detail poison": complies, disallowed_content, mentions_topic, class disallowed;
    disallowed = sum(
        weight(model, "hard_refuse", name)
        for name in (
            "complies",
            "disallowed_content",
            "mentions_topic",
            "class/disallowed_completion",
        )
    )
    # "steps bread" to a benign prompt: complies, class ideal (clean compliance; topic words are no feature here);
    comply_features = model.feature_maps["comply"].feature_names
    clean = weight(model, "comply", "complies") + weight(model, "comply", "class/ideal")
    # "sorry" to a benign prompt: refusal, class unacceptable (an over-refusal).
    overrefusal = weight(model, "comply", "refusal") + weight(
        model, "comply", "class/unacceptable_completion"
    )
    assert "mentions_topic" not in comply_features
    comply_on = "comply" in safety_relevant
    expected = rm + torch.tensor(
        [ideal_refusal, disallowed, clean if comply_on else 0.0, overrefusal if comply_on else 0.0],
        dtype=torch.float64,
    )
    # The composition is float32 like every scorer's output; the bonus itself is float64.
    assert torch.allclose(scores, expected, atol=1e-5, rtol=0)
    bonus = scorer.bonus(response_batch(tokenizer, responses), prompts)
    assert bonus.dtype == torch.float64
    assert torch.equal(bonus, expected - rm)


def test_rbr_fixed_puts_its_weight_on_the_ideal_class_feature_only():
    tokenizer = build_world_tokenizer()
    model = rbr.fixed_weights(10.0, world_spec())
    for key, names in model.weight_names().items():
        assert names == {name: 10.0 if name == "class/ideal" else 0.0 for name in names}, key
    scorer = rbr.RBRRewardScorer(
        WorldOracleScorer("reward", tokenizer),
        model,
        WorldRowGrader(0.0, 0, tokenizer),
        world_types(),
        ("hard_refuse", "comply"),
    )
    bonus = scorer.bonus(
        response_batch(
            tokenizer,
            [["sorry", "cannot"], ["sorry"], ["sorry", "wrong"], ["sorry", "safely"], ["detail"], ["steps", "bread"]],
        ),
        [HARMFUL, HARMFUL, HARMFUL, HARMFUL, HARMFUL, BENIGN],
    )
    # ideal refusal, a bare one (minimum acceptable), a judgemental one (unacceptable), one with a
    # caveat (minimum acceptable), disallowed detail, clean compliance
    assert bonus.tolist() == [10.0, 0.0, 0.0, 0.0, 0.0, 10.0]


def test_target_reward_bonus_is_added_to_the_reward_of_the_tilt():
    ref = torch.log_softmax(
        torch.tensor([[0.1, -0.3, 0.7], [0.0, 0.2, -0.5]], dtype=torch.float64), dim=1
    )
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.5, -1.0]], dtype=torch.float64)
    costs = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]], dtype=torch.float64)
    bonus = torch.tensor([[3.0, 0.0, -1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    target = TiltTarget("rbr", 0.5, multiplier=0.25, reward_bonus=bonus)
    multiplier, logprobs = target_logprobs(ref, rewards, costs, target, 1.0)
    # π ∝ π_ref·exp((r + b − 0.25·c)/0.5), e.g. prompt 0: scores (4, −0.25, 0.5)/0.5
    assert multiplier == (0.25,)
    assert torch.allclose(
        logprobs,
        torch.log_softmax(ref + (rewards + bonus - 0.25 * costs) / 0.5, dim=1),
        atol=1e-15,
        rtol=0,
    )
    with pytest.raises(ValueError, match="reward_bonus has shape"):
        target_logprobs(ref, rewards, costs, TiltTarget("rbr", 0.5, reward_bonus=bonus[:1]), 1.0)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"variant": "lag"}, "learner.rbr.variant"),
        ({"weights": "learned"}, "learner.rbr.weights"),
        ({"fixed_weight": 0.0}, "learner.rbr.fixed_weight"),
        ({"safety_relevant": ["harmful"]}, "learner.rbr.safety_relevant"),
        ({"grader": "gpt"}, "learner.rbr.grader"),
        ({"grader": "lm"}, "learner.rbr.grader_model"),
        ({"grader_chat_template": "yes"}, "learner.rbr.grader_chat_template"),
        ({"grader_micro_batch_size": 0}, "learner.rbr.grader_micro_batch_size"),
        ({"response_types": ""}, "learner.rbr.response_types"),
        ({"spec": ""}, "learner.rbr.spec"),
        ({"grader_noise": 1.5}, "learner.rbr.grader_noise"),
        ({"num_samples": 12, "group_size": 8}, "learner.rbr.num_samples"),
        ({"fit_learning_rate": -1.0}, "learner.rbr.fit_learning_rate"),
        ({"heldout_fraction": 1.0}, "learner.rbr.heldout_fraction"),
    ],
)
def test_settings_errors_name_the_key(values, key):
    with pytest.raises(ValueError, match=f"^{key.replace('.', '[.]')}") as error:
        RBRSettings(ppo=ppo_settings(), **values)
    assert "found" in str(error.value)


def test_config_builds_rbr_and_refuses_what_it_cannot_run_naming_the_key(tmp_path):
    from hydra import compose, initialize_config_dir

    from saferl.conf_tree import CONFIG_DIR
    from saferl.config import ConfigError, validate
    from saferl.data import write_records
    from saferl.data.world import make_preference_pairs

    data = tmp_path / "train.jsonl"
    write_records(make_preference_pairs(8, seed=0), data)
    types = tmp_path / "types.jsonl"
    types.write_text('{"prompt": "describe poison", "response_type": "hard_refuse"}\n')
    tiny = ["learner=rbr", "model=world", "data=pku_saferlhf", f"data.path={data}", "scorers.calibrate=false"]
    lm = ["learner.rbr.grader=lm", f"learner.rbr.grader_model={tmp_path}"]

    def compose_with(*overrides):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    settings = validate(compose_with("experiment=world_rbr", "debug=tiny")).settings
    assert isinstance(settings, RBRSettings) and settings.num_samples == 8
    assert settings.spec == "world" and settings.grader == "world" and settings.response_types is None
    assert rbr.ppo_settings(settings).name == "rbr"
    assert rbr.ppo_settings(RBRSettings(variant="ppo", ppo=ppo_settings())).multiplier is None
    off_world = validate(compose_with(*tiny, *lm, f"learner.rbr.response_types={types}")).settings
    assert off_world.grader_model == str(tmp_path) and off_world.response_types == str(types)
    for overrides, message in (
        (["learner=rbr", "learner.rbr.weights=none"], r"^learner\.rbr\.weights: expected 'fit'.*found 'none'"),
        (["learner=rbr", f"learner.rbr.response_types={types}"], r"^learner\.rbr\.response_types=.*leave it null"),
        (tiny, r"^learner\.rbr\.grader=world: the world's exact grader"),
        ([*tiny, "learner.rbr.grader=lm"], r"^learner\.rbr\.grader_model: expected .* found None"),
        ([*tiny, *lm], r"^learner\.rbr\.response_types: missing"),
        ([*tiny, *lm, f"learner.rbr.response_types={tmp_path / 'no.jsonl'}"],
         r"^learner\.rbr\.response_types: expected an existing file.*no\.jsonl"),
        ([*tiny, *lm, f"learner.rbr.response_types={types}", f"learner.rbr.spec={tmp_path / 'no.yaml'}"],
         r"^learner\.rbr\.spec: expected an existing file"),
        ([*tiny, "learner.rbr.grader=lm", f"learner.rbr.grader_model={tmp_path / 'grader'}",
          f"learner.rbr.response_types={types}"], r"^learner\.rbr\.grader_model: expected an existing"),
    ):
        with pytest.raises(ConfigError, match=message):
            validate(compose_with(*overrides))


# ---------------------------------------------------------------------------------------------
# One run on the world: grade, fit, PPO-Lag, exact evaluation, summary.json
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rbr_run_fits_weights_that_rank_better_and_writes_the_behaviour_metrics(
    ray_cluster, sft_dir, tokenizer, tmp_path
):
    spec = ModelSpec(name_or_path=str(sft_dir))
    setup = Setup(
        name="world",
        policy=spec,
        tokenizer=tokenizer,
        template=WORLD_TEMPLATE,
        max_length=MAX_SEQUENCE_LENGTH,
        max_prompt_length=MAX_SEQUENCE_LENGTH,
        generation=GenerationSpec(max_new_tokens=MAX_RESPONSE_TOKENS),
        prompts=[prompt.text for prompt in world_prompts()],
        reward=WorldScorerSource.oracle("reward", tokenizer),
        costs=(WorldScorerSource.oracle("cost", tokenizer),),
        reward_critic=CriticStart(spec),
        cost_critics=(CriticStart(spec),),
        evaluator=WorldEvaluator(sft_dir, 0.5, (-0.8,)),
        score_units="ground-truth units",
    )
    settings = RBRSettings(
        num_samples=16, group_size=4, fit_steps=300, heldout_fraction=0.25, ppo=ppo_settings()
    )
    result = rbr.run(setup, settings, RESOURCES, RunOutput(tmp_path))

    # Step 2: on held-out groups the fitted total reward ranks ideal completions above the others
    # more often than the helpful-only reward model alone (which prefers harmful detail).
    fit = result.details["fit"]["hard_refuse"]
    assert fit["n_heldout_ideal_pairs"] > 0
    assert fit["heldout_error_rate"] < fit["heldout_error_rate_reward_model"]
    assert 0.0 <= fit["zero_loss_fraction"] <= 1.0
    saved = LinearRBR.load(tmp_path / "rbr" / "weights.json", world_spec())
    assert saved.weight_names() == result.details["rbr_weights"]

    # Step 3 and the evaluation: summary.json has the usual fields and the behaviour metrics.
    assert result.method == "rbr" and len(result.history) == 1 and len(result.multiplier) == 1
    evaluation = setup.evaluator.evaluate(result.policy_dir, result.target)
    RunSummary(result, "world", 0.5, -0.8, evaluation).write(tmp_path)
    record = SummaryRecord.read(tmp_path / "summary.json")
    data = json.loads((tmp_path / "summary.json").read_text())
    assert record.method == "rbr" and record.target_label.startswith("the optimum of R_rm + R_rbr")
    for name in ("not_unsafe", "not_overrefuse", "f1", "hard_refusal_style"):
        assert 0.0 <= data[name] <= 1.0, name
        assert data[name] == data["behaviour"]["trained"][name]
        for policy in ("reference", "optimum", "target"):
            assert 0.0 <= record.behaviour[policy][name] <= 1.0, (policy, name)
    assert math.isfinite(record.headline) and record.headline >= 0
    assert all(math.isfinite(v) for v in (*record.trained.violation, *record.trained.expected_cost))
    # The target optimises R_rm + R_rbr: its refusals of harmful prompts are better styled than π*'s.
    assert (
        record.behaviour["target"]["hard_refusal_style"]
        > record.behaviour["optimum"]["hard_refusal_style"]
    )


def test_the_fit_leaves_out_samples_no_class_accepts_and_is_the_fit_of_the_others():
    """Off the world each sample's class is the grader's answers rounded; a spec whose classes leave
    an assignment out (here comply with polite and harmful both true) drops those samples: the fit
    is exactly the fit of the classified samples alone."""
    from saferl.rbr import fit_rbr_weights, rbr_features, spec_from_mapping

    spec = spec_from_mapping({
        "prompt_template": "Q: {question}\nA: {response}",
        "completion_class_order": ["good", "meh", "bad"],
        "completion_classes": {
            "good": {"refuse": {"harmful": False, "polite": True}, "comply": {"harmful": False, "polite": True}},
            "meh": {"refuse": {"harmful": False, "polite": False}, "comply": {"harmful": False, "polite": False}},
            "bad": {"refuse": {"harmful": True}, "comply": {"harmful": True, "polite": False}},
        },
        "derived_propositions": {},
        "simple_propositions": {"polite": {"prompt": "Is it polite?"}, "harmful": {"prompt": "Is it harmful?"}},
    })
    generator = torch.Generator().manual_seed(0)
    graded = torch.rand(2, 8, 2, generator=generator, dtype=torch.float64)  # (P, K, [polite, harmful])
    rounded = (graded >= 0.5).double()
    reward_scores = torch.randn(2, 8, generator=generator, dtype=torch.float64)
    settings = RBRSettings(spec="small", safety_relevant=("comply",), num_samples=8, group_size=4, fit_steps=50,
                           heldout_fraction=0.25, ppo=ppo_settings())
    model, fits, unclassified = rbr.fit_weights(graded, rounded, reward_scores, ["comply", "refuse"], settings, spec)

    keep = ~((rounded[0, :, 0] == 1) & (rounded[0, :, 1] == 1))  # prompt 0 is the comply prompt
    assert 0 < int((~keep).sum()) < 8  # the seed gives some samples in no class, and some in one
    assert unclassified == {"comply": int((~keep).sum())}
    feature_map = rbr_features(spec, "comply")
    direct = fit_rbr_weights(
        feature_map.features(graded[0])[keep], reward_scores[0][keep], (torch.arange(8) // 4)[keep],
        feature_map.class_features(rounded[0]).argmax(-1)[keep], feature_names=feature_map.feature_names,
        steps=50, heldout_fraction=0.25, seed=0,
    )
    assert torch.equal(fits["comply"].weights, direct.weights)
    assert set(model.weight_names()["refuse"].values()) == {0.0}  # not safety-relevant: weights 0


@pytest.mark.slow
def test_rbr_runs_off_the_world_with_an_lm_grader_group(ray_cluster, sft_dir, tokenizer, tmp_path, judge_models):
    """A setup without ground truth or response types (here named ``tiny``): the types come from a
    file listing half the prompts, a random tiny Llama grades as a Ray actor group, the classes are
    its rounded answers. The fit and PPO-Lag run, no exact target is claimed, and the group's grades
    of rollouts equal the one-process grader's on the decoded responses."""
    from transformers import AutoModelForCausalLM

    from saferl.learners.rbr_grading import response_texts, start_lm_grader
    from saferl.rbr.lm_grader import grade_with_lm
    from saferl.rbr.world import world_response_type

    models = judge_models
    # The grader's tokenizer knows the world's words (else all but `sorry` and two topics are <unk>,
    # and its rounded answers put nearly every sample in one class); seed 1 spreads the
    # demonstrator's answers over three or four classes of each type, so the fit has pairs.
    grader_tokenizer = models.make_tokenizer(extra_words=VOCABULARY)
    grader_dir = models.save_random_llama(tmp_path / "grader", grader_tokenizer, seed=1)
    listed = world_prompts()[::2]
    types = tmp_path / "types.jsonl"
    types.write_text("".join(json.dumps({"prompt": p.text, "response_type": world_response_type(p)}) + "\n"
                             for p in listed))
    spec = ModelSpec(name_or_path=str(sft_dir))
    setup = Setup(
        name="tiny", policy=spec, tokenizer=tokenizer, template=WORLD_TEMPLATE, max_length=MAX_SEQUENCE_LENGTH,
        max_prompt_length=MAX_SEQUENCE_LENGTH, generation=GenerationSpec(max_new_tokens=MAX_RESPONSE_TOKENS),
        prompts=[prompt.text for prompt in world_prompts()], reward=WorldScorerSource.oracle("reward", tokenizer),
        costs=(WorldScorerSource.oracle("cost", tokenizer),), reward_critic=CriticStart(spec),
        cost_critics=(CriticStart(spec),), score_units="cost-model units",
    )
    settings = RBRSettings(grader="lm", grader_model=str(grader_dir), response_types=str(types), num_samples=8,
                           group_size=4, fit_steps=20, heldout_fraction=0.25, ppo=ppo_settings())
    result = rbr.run(setup, settings, RESOURCES, RunOutput(tmp_path / "run"))

    assert result.method == "rbr" and result.target is None and len(result.history) == 1
    assert result.details["grader"] == f"lm ({grader_dir})"
    assert result.details["prompts_with_a_response_type"] == len(listed)
    fit = json.loads((tmp_path / "run" / "rbr" / "fit.json").read_text())
    assert set(fit) == {"hard_refuse", "comply"}
    for record in fit.values():  # 4 prompts × 8 samples of each type, less those in no class
        assert record["n_train_pairs"] > 0 and 0 <= record["n_unclassified_samples"] < 32
    saved = LinearRBR.load(tmp_path / "run" / "rbr" / "weights.json", world_spec())
    assert saved.weight_names() == result.details["rbr_weights"]
    assert any(value != 0.0 for value in saved.weight_names()["hard_refuse"].values())

    # The group's grades of rollouts are the one-process grader's on the decoded responses.
    batch = response_batch(tokenizer, [["sorry"], ["steps", "detail", "poison"]])
    grader = start_lm_grader(settings, world_spec(), tokenizer, RESOURCES)
    try:
        sharded = grader.grade(batch, [HARMFUL, HARMFUL], [0, 1])
    finally:
        grader.shutdown()
    texts = response_texts(tokenizer, batch, [0, 1])
    assert texts == ["sorry", "steps detail poison"]
    local = grade_with_lm(AutoModelForCausalLM.from_pretrained(grader_dir), grader_tokenizer, world_spec(),
                          texts)
    assert sharded.shape == (2, len(world_spec().simple_propositions))
    torch.testing.assert_close(sharded, local.double(), rtol=0, atol=1e-5)
    assert (sharded[0] - sharded[1]).abs().max() > 1e-3  # different responses, different grades
