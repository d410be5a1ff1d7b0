"""The arena through the real runtime (Ray actors, DeepSpeed engines over gloo) on the world.

Two tiny world policies: the module's SFT reference (``SFT_REFERENCE``, via ``conftest.sft_dir``)
and a barely-trained one (fewer SFT steps, another seed) as "the policy". The scorers are the
world's oracles (they read the tokens, so a response cut by the length limit is penalised), except
the self-arena's reward, an untrained score model given as a folder (so the arena starts a
``ScoreGroup``); the second judge is the world's ground-truth functions on the response texts.

* The reference against itself: same per-row seeds, so identical responses, KL exactly 0,
  identical rows, transitions only on the diagonal, win rates ½; the score model's scores equal
  its end scores computed in this process.
* The other policy, on two ranks (exercising the split and the padded last call): every score is
  recomputed here from the returned texts with the world's ground truth, every row from the
  samples, the KL of every sample with the two models loaded in this process, and the reference's
  responses must equal the one-rank self-arena's (the samples depend on the seed, not the ranks).
* Safety judges in that run: the world's ground truth (unsafe exactly when the true cost is > 0)
  and a tiny sequence classifier saved in Hugging Face format, served by a two-rank JudgeGroup
  that the arena starts and stops; its P(unsafe) equals the classifier run in this process, and
  the report's safe shares and agreement follow from the verdicts."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from saferl.data.world import (
    MAX_RESPONSE_TOKENS,
    ReferenceConfig,
    ground_truth_cost,
    ground_truth_reward,
    train_reference_policy,
    world_prompts,
)
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.eval.arena import SCORERS_JUDGE, TRUTH_JUDGE, ArenaResult
from saferl.eval.arena_run import ArenaSettings, run_arena, world_arena_prompts
from saferl.eval.judge_report import cohens_kappa
from saferl.eval.judge_settings import JudgeSettings
from saferl.eval.judges import build_judge
from saferl.learners.scorers import WorldOracleScorer
from saferl.models import (
    ModelSpec,
    build_score_model,
    end_scores,
    load_policy,
    load_score_model,
    policy_token_logprobs,
    save_policy,
    save_score_model,
)
from saferl.runtime import GenerationSpec, GroupSpec, RuntimeSpec
from saferl.setups.world import world_truth

pytestmark = pytest.mark.slow

RUNTIME = RuntimeSpec(local_num_cpus=8, startup_timeout_s=300, call_timeout_s=300)
SFT_REFERENCE = ReferenceConfig(steps=80, num_examples=1000)  # read by conftest.sft_dir
OTHER_POLICY = ReferenceConfig(steps=15, num_examples=500, seed=1)
# 5 prompts (3 benign, 2 harmful) × K = 3 = 15 rows in calls of 4: 4, 4, 4 and 3 (padded to 4
# on two ranks).
PROMPTS = world_arena_prompts()[1::3]
SETTINGS = ArenaSettings(
    responses_per_prompt=3,
    generation=GenerationSpec(max_new_tokens=MAX_RESPONSE_TOKENS),
    seed=7,
    rows_per_call=4,
)
BY_TEXT = {prompt.text: prompt for prompt in world_prompts()}


@pytest.fixture(scope="module")
def other_policy_dir(tmp_path_factory, tokenizer) -> Path:
    model, _ = train_reference_policy(OTHER_POLICY, tokenizer)
    folder = tmp_path_factory.mktemp("models") / "other"
    save_policy(model, tokenizer, folder)
    return folder


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, sft_dir, tokenizer) -> Path:
    """An untrained reward model (the SFT backbone and a random head): any fixed scores do."""
    torch.manual_seed(0)
    model = build_score_model(ModelSpec(name_or_path=str(sft_dir)), tokenizer)
    return save_score_model(model, tokenizer, tmp_path_factory.mktemp("models") / "rm", "reward")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, tokenizer) -> Path:
    """A random two-label GPT-2 classifier over the world's tokenizer (safe, unsafe)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=64,
        num_labels=2, id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1},
        initializer_range=0.5, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("models") / "judge"
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(
    policy: Path,
    reference: Path,
    tokenizer,
    num_ranks: int,
    reward_model: Path | None = None,
    judges: tuple = (),
) -> ArenaResult:
    scorers: dict[str, object] = {
        kind: WorldOracleScorer(kind, tokenizer) for kind in ("reward", "cost")
    }
    if reward_model is not None:
        scorers["reward"] = reward_model  # a folder: the arena starts a ScoreGroup for it
    return run_arena(
        policy,
        reference,
        PROMPTS,
        tokenizer,
        scorers,
        SETTINGS,
        template=WORLD_TEMPLATE,
        max_prompt_length=MAX_SEQUENCE_LENGTH,
        truth={kind: world_truth(kind) for kind in ("reward", "cost")},
        runtime=RUNTIME,
        group=GroupSpec(num_ranks=num_ranks, cpus_per_rank=0.25),
        judges=judges,
    )


@pytest.fixture(scope="module")
def self_arena(ray_cluster, sft_dir, reward_model_dir, tokenizer) -> ArenaResult:
    return run(sft_dir, sft_dir, tokenizer, num_ranks=1, reward_model=reward_model_dir)


@pytest.fixture(scope="module")
def other_arena(ray_cluster, sft_dir, other_policy_dir, tokenizer, classifier_dir) -> ArenaResult:
    judges = (
        JudgeSettings(kind="ground_truth"),
        JudgeSettings(kind="classifier", path=str(classifier_dir), micro_batch_size=4),
    )
    return run(other_policy_dir, sft_dir, tokenizer, num_ranks=2, judges=judges)


def test_the_reference_against_itself(self_arena: ArenaResult) -> None:
    result = self_arena
    assert (result.num_prompts, result.responses_per_prompt) == (5, 3)
    assert [(s.prompt, s.sample_index) for s in result.samples] == [
        (prompt, k) for prompt in PROMPTS for k in range(3)
    ]
    for sample in result.samples:
        assert sample.policy_response == sample.reference_response
        assert sample.policy_finished == sample.reference_finished
        assert sample.policy_kl == 0.0
    assert [j.judge for j in result.judgements] == [SCORERS_JUDGE, TRUTH_JUDGE]
    for judgement in result.judgements:
        reference, policy = asdict(judgement.reference), asdict(judgement.policy)
        assert reference.pop("model") == "reference" and policy.pop("model") == "policy"
        assert policy == reference  # KL 0 and win rates ½ included
        assert (policy["kl"], policy["reward_win_rate"], policy["cost_win_rate"]) == (0.0, 0.5, 0.5)
        transitions = judgement.transitions
        assert transitions.safe_to_unsafe == transitions.unsafe_to_safe == 0
        assert transitions.total == 15


def sequence(tokenizer, prompt: str, response: str, finished: bool) -> tuple[torch.Tensor, int]:
    """``(1, length)`` ids of prompt + response (+ EOS when finished), and the prompt's length."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(response)["input_ids"] + ([tokenizer.eos_token_id] if finished else [])
    return torch.tensor([prompt_ids + response_ids]), len(prompt_ids)


def test_a_score_model_folder_is_served_and_read_at_the_last_token(
    self_arena, reward_model_dir, tokenizer
) -> None:
    model, _ = load_score_model(reward_model_dir)
    for sample in self_arena.samples:
        input_ids, _ = sequence(
            tokenizer, sample.prompt, sample.policy_response, sample.policy_finished
        )
        with torch.no_grad():
            expected = end_scores(
                model.eval(), input_ids, torch.ones_like(input_ids, dtype=torch.bool)
            )
        assert sample.policy_reward == pytest.approx(float(expected[0, 0]), abs=1e-5)
        # the second judge is the ground truth, not the score model
        assert sample.true_policy_reward == world_truth("reward")(
            sample.prompt, sample.policy_response
        )


def scores_by_ground_truth(prompt: str, response: str, finished: bool) -> dict[str, float]:
    world_prompt, words = BY_TEXT[prompt], response.split()
    return {
        # the oracle scorers read the tokens: a cut response is unfinished
        "reward": ground_truth_reward(world_prompt, words, finished),
        "cost": ground_truth_cost(world_prompt, words, finished),
        # the text functions cannot see the cut: scored as finished
        "true_reward": ground_truth_reward(world_prompt, words),
        "true_cost": ground_truth_cost(world_prompt, words),
    }


def test_every_score_is_the_ground_truth_of_the_returned_response(other_arena) -> None:
    for sample in other_arena.samples:
        for model in ("reference", "policy"):
            response = getattr(sample, f"{model}_response")
            finished = getattr(sample, f"{model}_finished")
            if not finished:
                assert len(response.split()) == MAX_RESPONSE_TOKENS
            expected = scores_by_ground_truth(sample.prompt, response, finished)
            assert getattr(sample, f"{model}_reward") == pytest.approx(expected["reward"])
            assert getattr(sample, f"{model}_cost") == pytest.approx(expected["cost"])
            assert getattr(sample, f"true_{model}_reward") == expected["true_reward"]
            assert getattr(sample, f"true_{model}_cost") == expected["true_cost"]


def expected_rows(samples, prefix: str) -> dict[str, float]:
    """The policy row and transitions recomputed from the samples in plain Python."""
    ref_r = [getattr(s, f"{prefix}reference_reward") for s in samples]
    ref_c = [getattr(s, f"{prefix}reference_cost") for s in samples]
    pol_r = [getattr(s, f"{prefix}policy_reward") for s in samples]
    pol_c = [getattr(s, f"{prefix}policy_cost") for s in samples]
    n = len(samples)
    ref_safe = [c <= 0 for c in ref_c]
    pol_safe = [c <= 0 for c in pol_c]
    return {
        "reference_mean_reward": sum(ref_r) / n,
        "reference_mean_cost": sum(ref_c) / n,
        "reference_safe_rate": sum(ref_safe) / n,
        "mean_reward": sum(pol_r) / n,
        "mean_cost": sum(pol_c) / n,
        "safe_rate": sum(pol_safe) / n,
        "kl": sum(s.policy_kl for s in samples) / n,
        "reward_win_rate": sum((p > r) + 0.5 * (p == r) for p, r in zip(pol_r, ref_r, strict=True))
        / n,
        "cost_win_rate": sum((p < r) + 0.5 * (p == r) for p, r in zip(pol_c, ref_c, strict=True))
        / n,
        "transitions": (
            sum(r and p for r, p in zip(ref_safe, pol_safe, strict=True)),
            sum(r and not p for r, p in zip(ref_safe, pol_safe, strict=True)),
            sum(not r and p for r, p in zip(ref_safe, pol_safe, strict=True)),
            sum(not r and not p for r, p in zip(ref_safe, pol_safe, strict=True)),
        ),
    }


@pytest.mark.parametrize(("judge", "prefix"), [(SCORERS_JUDGE, ""), (TRUTH_JUDGE, "true_")])
def test_rows_agree_with_the_samples(other_arena, judge: str, prefix: str) -> None:
    judgement = other_arena.judgement(judge)
    expected = expected_rows(other_arena.samples, prefix)
    reference, policy, transitions = judgement.reference, judgement.policy, judgement.transitions
    assert reference.mean_reward == pytest.approx(expected["reference_mean_reward"], abs=1e-12)
    assert reference.mean_cost == pytest.approx(expected["reference_mean_cost"], abs=1e-12)
    assert reference.safe_rate == pytest.approx(expected["reference_safe_rate"], abs=1e-12)
    assert (reference.kl, reference.reward_win_rate, reference.cost_win_rate) == (0.0, 0.5, 0.5)
    for key in ("mean_reward", "mean_cost", "safe_rate", "kl", "reward_win_rate", "cost_win_rate"):
        assert getattr(policy, key) == pytest.approx(expected[key], abs=1e-12), key
    assert (
        transitions.safe_to_safe,
        transitions.safe_to_unsafe,
        transitions.unsafe_to_safe,
        transitions.unsafe_to_unsafe,
    ) == expected["transitions"]


def test_kl_of_every_sample_recomputed_in_process(
    other_arena, other_policy_dir, sft_dir, tokenizer
):
    policy, _ = load_policy(other_policy_dir)
    reference, _ = load_policy(sft_dir)
    differs = False
    for sample in other_arena.samples:
        input_ids, start = sequence(
            tokenizer, sample.prompt, sample.policy_response, sample.policy_finished
        )
        mask = torch.ones_like(input_ids, dtype=torch.bool)
        with torch.no_grad():
            logprobs = policy_token_logprobs(policy.eval(), input_ids, mask)[0]
            ref_logprobs = policy_token_logprobs(reference.eval(), input_ids, mask)[0]
        expected = float((logprobs[start:] - ref_logprobs[start:]).double().sum())
        assert sample.policy_kl == pytest.approx(expected, abs=1e-4)
        differs |= sample.policy_response != sample.reference_response
    assert differs  # a different policy answers differently somewhere
    assert other_arena.judgement(SCORERS_JUDGE).policy.kl > 0.1


def test_samples_depend_on_the_seed_not_on_the_policy_or_the_ranks(self_arena, other_arena):
    # The reference side of the two-rank run against another policy is the one-rank self-arena's.
    assert [(s.reference_response, s.reference_finished) for s in other_arena.samples] == [
        (s.reference_response, s.reference_finished) for s in self_arena.samples
    ]
    ref_self = self_arena.judgement(TRUTH_JUDGE).reference
    assert other_arena.judgement(TRUTH_JUDGE).reference == ref_self


def test_safety_judges_in_the_arena(other_arena, classifier_dir) -> None:
    samples = other_arena.samples
    prompts = [s.prompt for s in samples]
    local = build_judge(JudgeSettings(kind="classifier", path=str(classifier_dir)), local=True)
    spread = 0.0
    for model in ("reference", "policy"):
        truth, classifier = other_arena.judge_verdicts[model]
        assert (truth.judge, classifier.judge) == ("ground_truth", "classifier:judge")
        true_costs = [getattr(s, f"true_{model}_cost") for s in samples]
        assert truth.p_unsafe == tuple(1.0 if c > 0 else 0.0 for c in true_costs)
        expected = local.judge(prompts, [getattr(s, f"{model}_response") for s in samples])
        assert classifier.p_unsafe == pytest.approx(expected.p_unsafe, abs=1e-6)
        spread = max(spread, max(expected.p_unsafe) - min(expected.p_unsafe))
        report = other_arena.safety_judges[model]
        truth_row = getattr(other_arena.judgement(TRUTH_JUDGE), model)
        assert report.summaries[0].safe_share == pytest.approx(truth_row.safe_rate, abs=1e-12)
        assert report.summaries[1].safe_share == pytest.approx(
            sum(p <= 0.5 for p in expected.p_unsafe) / len(samples), abs=1e-12
        )
        agreement, kappa = cohens_kappa(truth.unsafe(), classifier.unsafe())
        (pair,) = report.agreements
        assert (pair.agreement, pair.kappa) == (agreement, kappa)
    assert spread > 0.01  # the classifier tells the responses apart
    written = other_arena.to_dict()
    assert written["safety_judges"]["policy"]["summaries"][0]["judge"] == "ground_truth"
    assert len(written["judge_verdicts"]["reference"][1]["p_unsafe"]) == len(samples)


# -- errors before anything starts (no Ray) --------------------------------------------------


class TwoColumnScorer:
    num_outputs = 2

    def score(self, batch, prompts):
        raise AssertionError("never called")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompts": []}, "no prompts"),
        ({"scorers": {"reward": "rm"}}, r"scorers must have exactly the keys 'reward' and 'cost'"),
        ({"scorers": {"reward": "rm", "cost": 3}}, r"scorers\['cost'\] must be a score-model"),
        ({"scorers": {"reward": "rm", "cost": TwoColumnScorer()}}, "one cost column"),
        ({"truth": {"reward": len}}, r"truth must have exactly the keys"),
        ({"truth": {"reward": len, "cost": 1.0}}, r"truth\['cost'\] must be fn"),
        (
            {"group": GroupSpec(num_ranks=3)},
            r"rows_per_call=4 must be a multiple of group.num_ranks=3",
        ),
    ],
)
def test_run_arena_errors_name_what_to_change(tokenizer, changes: dict, message: str) -> None:
    arguments = {
        "policy": "policy",
        "reference": "reference",
        "prompts": PROMPTS,
        "tokenizer": tokenizer,
        "scorers": {"reward": "rm", "cost": "cm"},
        "settings": SETTINGS,
        **changes,
    }
    with pytest.raises(ValueError, match=message):
        run_arena(**arguments)


@pytest.mark.parametrize(
    ("key", "value"), [("responses_per_prompt", 0), ("rows_per_call", 1.5), ("seed", -1)]
)
def test_arena_settings_errors_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"arena.{key} must be"):
        ArenaSettings(**{key: value})
