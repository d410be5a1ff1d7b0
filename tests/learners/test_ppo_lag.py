"""The learners through the real runtime (Ray actors, DeepSpeed engines over gloo) on the world.

One set of groups serves the module: a tiny reference policy SFT-ed in-process on the world's
demonstrations, its reference copy, and reward and cost critics; scorers are the world's ground
truth (oracle), so these tests judge the optimiser apart from score models.
"""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from saferl.core.multipliers import LogGradientAscentMultiplier, PIDMultiplier
from saferl.data.world import (
    ReferenceConfig,
    make_preference_pairs,
    make_sft_examples,
    world_model_spec,
    world_prompts,
)
from saferl.data.world.exact import MAX_RESPONSE_TOKENS
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners.ppo_lag import PPOLagrangian, PPOSettings, PromptSchedule
from saferl.learners.rollout import ExperienceMaker
from saferl.learners.score_model import evaluate_score_model, train_score_model
from saferl.learners.scorers import ShapedRewardScorer, WorldOracleScorer
from saferl.learners.sft import run_sft
from saferl.models import ModelSpec
from saferl.runtime import (
    CriticGroup,
    DeepSpeedSpec,
    GenerationSpec,
    GroupSpec,
    PolicyGroup,
    ReferenceGroup,
    RuntimeSpec,
)
from saferl.setups.world import world_truth

pytestmark = pytest.mark.slow

ROWS = 32  # prompts per rollout = rows per optimizer step
RUNTIME = RuntimeSpec(local_num_cpus=8, startup_timeout_s=300, call_timeout_s=300)
SFT_REFERENCE = ReferenceConfig(steps=120, num_examples=1000)  # read by conftest.sft_dir


def deepspeed(
    learning_rate: float, rows: int, num_ranks: int = 1, zero_stage: int = 2
) -> DeepSpeedSpec:
    return DeepSpeedSpec(
        zero_stage=zero_stage,
        learning_rate=learning_rate,
        micro_batch_size_per_rank=rows // num_ranks,
    )


class Groups:
    """Policy, reference and the two critics, started once per module."""

    def __init__(self, sft_dir: Path, tokenizer, num_ranks: int, zero_stage: int = 2) -> None:
        spec = ModelSpec(name_or_path=str(sft_dir))
        group = GroupSpec(num_ranks=num_ranks, cpus_per_rank=0.25)
        self.policy = PolicyGroup(
            spec,
            tokenizer,
            deepspeed(1e-3, ROWS, num_ranks, zero_stage),
            group,
            RUNTIME,
            role=f"policy{num_ranks}",
        )
        self.reference = ReferenceGroup(
            spec,
            tokenizer,
            deepspeed(0.0, ROWS, num_ranks, zero_stage),
            group,
            RUNTIME,
            role=f"reference{num_ranks}",
        )
        self.reward_critic = CriticGroup(
            spec,
            tokenizer,
            deepspeed(1e-3, ROWS, num_ranks, zero_stage),
            group,
            RUNTIME,
            role=f"reward_critic{num_ranks}",
        )
        self.cost_critic = CriticGroup(
            spec,
            tokenizer,
            deepspeed(1e-3, ROWS, num_ranks, zero_stage),
            group,
            RUNTIME,
            role=f"cost_critic{num_ranks}",
        )
        self.tokenizer = tokenizer

    def learner(
        self,
        multiplier,
        settings: PPOSettings,
        reward_scorer=None,
        with_cost: bool = True,
        ptx_batches=None,
        generate_ahead: bool = True,
        rollout_engine=None,
    ) -> PPOLagrangian:
        reward_scorer = reward_scorer or WorldOracleScorer("reward", self.tokenizer)
        cost_scorers = [WorldOracleScorer("cost", self.tokenizer)] if with_cost else []
        maker = ExperienceMaker(
            policy=self.policy,
            reference=self.reference,
            reward_scorer=reward_scorer,
            cost_scorers=cost_scorers,
            reward_critic=self.reward_critic,
            cost_critics=[self.cost_critic] if with_cost else [],
            tokenizer=self.tokenizer,
            generation=GenerationSpec(max_new_tokens=MAX_RESPONSE_TOKENS),
            max_prompt_length=MAX_SEQUENCE_LENGTH,
            template=WORLD_TEMPLATE,
            rollout_engine=rollout_engine,
        )
        prompts = [prompt.text for prompt in world_prompts()]
        return PPOLagrangian(
            maker,
            self.reward_critic,
            [self.cost_critic] if with_cost else [],
            multiplier,
            PromptSchedule(prompts, settings.prompts_per_iteration, settings.seed),
            settings,
            policy_rows_per_step=ROWS,
            critic_rows_per_step=ROWS,
            ptx_batches=ptx_batches,
            generate_ahead=generate_ahead,
        )

    def save(self, folder: Path) -> None:
        self.policy.save_checkpoint(folder / "policy")
        self.reward_critic.save_checkpoint(folder / "reward_critic")
        self.cost_critic.save_checkpoint(folder / "cost_critic_0")

    def restore(self, folder: Path) -> None:
        self.policy.load_checkpoint(folder / "policy")
        self.reward_critic.load_checkpoint(folder / "reward_critic")
        self.cost_critic.load_checkpoint(folder / "cost_critic_0")

    def shutdown(self) -> None:
        for group in (self.policy, self.reference, self.reward_critic, self.cost_critic):
            group.shutdown()


@pytest.fixture(scope="module")
def groups(ray_cluster, sft_dir, tokenizer, tmp_path_factory):
    running = Groups(sft_dir, tokenizer, num_ranks=1)
    running.initial = tmp_path_factory.mktemp("initial")
    running.save(running.initial)
    yield running
    running.shutdown()


def settings(**changes) -> PPOSettings:
    base = PPOSettings(iterations=3, prompts_per_iteration=ROWS, kl_coeff=0.5, seed=1)
    return replace(base, **changes)


# ---------------------------------------------------------------------------------------------
def test_multiplier_rises_to_its_cap_above_the_limit_and_falls_below(groups):
    # Every world cost is ≥ −2.2, so a limit of −5 is always violated: λ must rise every
    # iteration until it sits exactly on its cap. A limit of +5 is always met: λ must fall.
    groups.restore(groups.initial)
    rising = LogGradientAscentMultiplier(
        cost_limit=-5.0, initial_value=1.0, lr=0.2, window=ROWS, max_value=2.0
    )
    values = [
        float(v["multiplier/value_0"]) for v in groups.learner(rising, settings(iterations=4)).run()
    ]
    assert values[0] > 1.0 and all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == 2.0  # the cap holds exactly

    groups.restore(groups.initial)
    falling = LogGradientAscentMultiplier(cost_limit=5.0, initial_value=1.0, lr=0.2, window=ROWS)
    values = [
        float(v["multiplier/value_0"])
        for v in groups.learner(falling, settings(iterations=3)).run()
    ]
    assert all(b < a for a, b in zip([1.0, *values], values, strict=False))

    # PID reaches exactly 0 below the limit (its integral is clamped at 0).
    groups.restore(groups.initial)
    pid = PIDMultiplier(cost_limit=5.0, kp=0.1, ki=0.5, kd=0.0, max_value=5.0, initial_integral=1.0)
    values = [
        float(v["multiplier/value_0"]) for v in groups.learner(pid, settings(iterations=2)).run()
    ]
    assert values[-1] == 0.0


def test_stop_and_resume_reproduces_the_next_iteration(groups, tmp_path):
    # Uninterrupted: 3 iterations from the initial state.
    groups.restore(groups.initial)
    uninterrupted = groups.learner(
        LogGradientAscentMultiplier(-0.8, lr=0.5, window=ROWS), settings(iterations=3)
    )
    expected = uninterrupted.run()[-1]

    # Interrupted: 2 iterations, checkpoint, scramble the groups with another iteration, then a
    # fresh learner object loads the checkpoint and runs iteration 3.
    groups.restore(groups.initial)
    first = groups.learner(
        LogGradientAscentMultiplier(-0.8, lr=0.5, window=ROWS), settings(iterations=2)
    )
    first.run()
    first.save(tmp_path / "checkpoint")
    first.settings = settings(iterations=3)
    first.run()  # moves the groups past the checkpoint
    resumed = groups.learner(
        LogGradientAscentMultiplier(-0.8, lr=0.5, window=ROWS), settings(iterations=3)
    )
    resumed.load(tmp_path / "checkpoint")
    assert resumed.iteration == 2
    got = resumed.run()[-1]
    for key in (
        "policy/loss",
        "critic/reward_loss",
        "critic/cost_0_loss",
        "multiplier/value_0",
        "multiplier/used_0",
        "constraint/estimate_0",
        "reward/score",
    ):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


def test_generating_ahead_gives_the_numbers_of_generating_in_turn(groups, monkeypatch):
    """The next rollout sampled and scored while the critics train (the default) is the rollout the
    next iteration would sample and score itself: the same history to the last bit, whatever the
    timings."""

    def history(generate_ahead: bool) -> tuple[list[dict], list, list]:
        groups.restore(groups.initial)
        learner = groups.learner(
            LogGradientAscentMultiplier(-0.8, lr=0.5, window=ROWS), settings(iterations=3),
            generate_ahead=generate_ahead,
        )
        calls, events = [], []
        sample = learner.maker.generate
        monkeypatch.setattr(
            learner.maker, "generate",
            lambda *args: calls.append((args[1], threading.current_thread() is threading.main_thread()))
            or sample(*args),
        )
        # Each scoring call to a group, as it is made, between the iterations' ends.
        scoring = (
            ("policy", groups.policy, "token_logprobs"),
            ("reference", groups.reference, "token_logprobs"),
            ("reward critic", groups.reward_critic, "values"),
            ("cost critic", groups.cost_critic, "values"),
        )
        for name, group, method in scoring:
            call = getattr(group, method)
            setattr(group, method, lambda batch, call=call, name=name: events.append(name) or call(batch))
        try:
            rows = learner.run(progress=lambda iteration, metrics: events.append(f"end {iteration}"))
        finally:
            for _, group, method in scoring:
                delattr(group, method)  # the class's method again
        return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows], calls, events

    in_turn, in_turn_seeds, in_turn_events = history(False)
    ahead, ahead_seeds, ahead_events = history(True)
    assert ahead == in_turn
    # One rollout per iteration, none after the last; ahead, the second and third are sampled in
    # the policy update's thread (side by side with the critics'), in turn all in the loop's.
    assert [seed for seed, _ in ahead_seeds] == [seed for seed, _ in in_turn_seeds]
    assert [in_loop for _, in_loop in in_turn_seeds] == [True, True, True]
    assert [in_loop for _, in_loop in ahead_seeds] == [True, False, False]
    # Every rollout is scored once by each group; ahead, rollouts 2 and 3 are scored before the
    # iteration before theirs ends, in turn after it.
    groups_named = ("policy", "reference", "reward critic", "cost critic")

    def scored_before_each_end(events: list[str]) -> list[dict[str, int]]:
        counts, before = dict.fromkeys(groups_named, 0), []
        for event in events:
            if event.startswith("end"):
                before.append(dict(counts))
            else:
                counts[event] += 1
        return before

    assert scored_before_each_end(in_turn_events) == [dict.fromkeys(groups_named, n) for n in (1, 2, 3)]
    assert scored_before_each_end(ahead_events) == [dict.fromkeys(groups_named, n) for n in (2, 3, 3)]


class DriverRolloutEngine:
    """Stands in for vLLM engines in this test of the loop (no GPU here): a copy of the policy's
    model in the driver, built with other weights, that samples with the runtime's seeded sampler
    and loads the policy's weights when the loop syncs it. It logs what it was asked, in order."""

    def __init__(self, sft_dir: Path, tokenizer) -> None:
        from saferl.models import load_policy

        self.model, _ = load_policy(sft_dir)
        with torch.no_grad():
            for parameter in self.model.parameters():
                parameter.add_(1.0)  # not the policy's weights until the loop syncs them
        self.tokenizer = tokenizer
        self.log: list[str] = []

    def sync_weights_from(self, policy) -> None:
        self.model.load_state_dict(policy.full_state_dict())
        self.log.append("sync")

    def generate(self, prompts, spec):
        from saferl.runtime.generation import generate_sequences

        self.log.append("generate")
        return generate_sequences(self.model.eval(), prompts, spec, pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=self.tokenizer.eos_token_id)


def test_a_rollout_engine_generates_with_the_policys_weights_synced_before_each_rollout(groups, sft_dir):
    """With a rollout engine (vLLM's place), the loop syncs the policy's weights into it before the
    first rollout and after each update a next rollout follows, and it samples every rollout: the
    responses of the policy's own generation (same weights, same seeded sampler), so the history of
    the run without an engine."""
    groups.restore(groups.initial)
    expected = groups.learner(LogGradientAscentMultiplier(-0.8, lr=0.5, window=ROWS), settings(iterations=3)).run()
    engine = DriverRolloutEngine(sft_dir, groups.tokenizer)
    groups.restore(groups.initial)
    found = groups.learner(LogGradientAscentMultiplier(-0.8, lr=0.5, window=ROWS), settings(iterations=3),
                           rollout_engine=engine).run()
    assert engine.log == ["sync", "generate"] * 3
    for found_row, expected_row in zip(found, expected, strict=True):
        for key, value in expected_row.items():
            if not key.startswith("perf/"):
                assert found_row[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # The engine holds the final policy's weights only after a sync the loop no longer needs:
    # after the last update there is no rollout left, so it was not synced.
    final = groups.policy.full_state_dict()
    assert any(not torch.equal(final[name], tensor) for name, tensor in engine.model.state_dict().items())


def test_ppo_and_the_fixed_multiplier_shaping_baseline_reuse_the_loop(groups):
    groups.restore(groups.initial)
    plain = groups.learner(None, settings(iterations=1), with_cost=False).run()[0]
    assert "multiplier/value_0" not in plain and math.isfinite(plain["policy/loss"])

    groups.restore(groups.initial)
    reward = WorldOracleScorer("reward", groups.tokenizer)
    cost = WorldOracleScorer("cost", groups.tokenizer)
    shaped = ShapedRewardScorer(reward, [cost], [0.7])
    learner = groups.learner(None, settings(iterations=1), reward_scorer=shaped, with_cost=False)
    experience = learner.maker.make(learner.schedule.batch(0), seed=5)
    batch_view = experience  # the scored rollout: its reward is r − 0.7 c of each response
    from saferl.data.collators import SequenceBatch

    sequences = SequenceBatch(
        batch_view.input_ids, batch_view.attention_mask, batch_view.response_mask
    )
    expected = (
        reward.score(sequences, experience.prompts)[:, 0]
        - 0.7 * cost.score(sequences, experience.prompts)[:, 0]
    )
    torch.testing.assert_close(experience.reward_scores, expected)
    with pytest.raises(ValueError, match="no multiplier"):
        groups.learner(None, settings())


def test_the_experience_maker_makes_only_the_calls_not_made_ahead(groups):
    """``make`` with some scoring calls already made gives the experience it makes from scratch,
    and uses the results handed to it (here doubled reference log-probs show up as given)."""
    groups.restore(groups.initial)
    maker = groups.learner(LogGradientAscentMultiplier(-0.8, window=ROWS), settings()).maker
    prompts = [prompt.text for prompt in world_prompts()][:ROWS]
    responses = maker.generate(prompts, 11)
    whole = maker.make(prompts, 11, responses)
    calls = maker.scoring_calls(responses, prompts)
    assert list(calls)[-2:] == maker.critic_call_names() == ["reward_values", "cost_values_0"]
    ready = {name: calls[name]() for name in ("old_logprobs", "reward_scores", "cost_values_0")}
    partly = maker.make(prompts, 11, responses, ready)
    for field in ("input_ids", "old_logprobs", "ref_logprobs", "reward_scores", "cost_scores",
                  "reward_values", "cost_values"):
        assert torch.equal(getattr(partly, field), getattr(whole, field)), field
    given = maker.make(prompts, 11, responses, {"ref_logprobs": 2 * whole.ref_logprobs})
    assert torch.equal(given.ref_logprobs, 2 * whole.ref_logprobs)
    with pytest.raises(ValueError, match=r"\['values'\] are none of the calls"):
        maker.make(prompts, 11, responses, {"values": whole.ref_logprobs})
    with pytest.raises(ValueError, match="need the responses they scored"):
        maker.make(prompts, 11, None, ready)


def test_two_rank_ppo_lag_logs_finite_diagnostics(ray_cluster, sft_dir, tokenizer):
    two = Groups(sft_dir, tokenizer, num_ranks=2, zero_stage=3)
    try:
        learner = two.learner(
            LogGradientAscentMultiplier(-0.8, window=ROWS), settings(iterations=2, ppo_epochs=2)
        )
        history = learner.run()
    finally:
        two.shutdown()
    for metrics in history:
        for key in (
            "policy/loss",
            "policy/approx_kl",
            "policy/clipfrac",
            "critic/reward_loss",
            "critic/cost_0_loss",
            "critic/reward_explained_variance",
            "critic/cost_0_explained_variance",
            "multiplier/value_0",
            "constraint/estimate_0",
            "perf/samples_per_s",
        ):
            assert key in metrics and math.isfinite(metrics[key]), key
    # With two epochs the second pass sees a moved policy: the ratio departs from 1.
    assert history[-1]["policy/approx_kl"] > 0


def test_sft_lowers_the_loss_through_the_policy_group(ray_cluster, tokenizer):
    config = ReferenceConfig()
    policy = PolicyGroup(
        world_model_spec(config, tokenizer),
        tokenizer,
        deepspeed(3e-3, 64),
        GroupSpec(cpus_per_rank=0.25),
        RUNTIME,
        role="sft_test",
    )
    try:
        history = run_sft(
            policy,
            make_sft_examples(500, seed=0),
            tokenizer,
            steps=40,
            rows_per_step=64,
            max_length=MAX_SEQUENCE_LENGTH,
            template=WORLD_TEMPLATE,
        )
    finally:
        policy.shutdown()
    assert history[-1]["sft/loss"] < 0.6 * history[0]["sft/loss"]


@pytest.mark.parametrize("kind", ["reward", "cost"])
def test_score_models_reach_ninety_percent_on_held_out_pairs(ray_cluster, sft_dir, tokenizer, kind):
    critic = CriticGroup(
        ModelSpec(name_or_path=str(sft_dir)),
        tokenizer,
        deepspeed(1e-3, 64),
        GroupSpec(cpus_per_rank=0.25),
        RUNTIME,
        role=f"{kind}_model_test",
    )
    try:
        train_score_model(
            critic,
            make_preference_pairs(2000, seed=1),
            kind,
            tokenizer,
            steps=250 if kind == "cost" else 150,
            pairs_per_step=32,
            max_length=MAX_SEQUENCE_LENGTH,
            template=WORLD_TEMPLATE,
        )
        metrics = evaluate_score_model(
            critic,
            make_preference_pairs(256, seed=2),
            kind,
            tokenizer,
            MAX_SEQUENCE_LENGTH,
            WORLD_TEMPLATE,
            rows_per_call=64,
            truth=world_truth(kind),
        )
    finally:
        critic.shutdown()
    # The labels carry Bradley–Terry noise (and coin flips on ties), so the label accuracy is
    # capped below 1; the true order of the pairs whose ground truth differs is what a model can
    # learn.
    assert metrics["ground_truth_accuracy"] >= 0.9
    assert metrics["num_decisive_pairs"] >= 100
    if kind == "cost":
        assert metrics["sign_accuracy"] >= 0.9


def test_ptx_runs_every_iteration_on_rows_fixed_by_seed_and_iteration(ray_cluster, sft_dir, tokenizer, tmp_path,
                                                                     monkeypatch):
    """``ppo_lag.run`` on a world setup (oracle scorers) whose PTX set is the world's demonstrations:
    each iteration logs a finite PTX loss, and trains on the rows that (seed, iteration) fix."""
    from saferl.learners import ppo_lag
    from saferl.learners.output import RunOutput
    from saferl.learners.sft import PTXBatches
    from saferl.runtime.resources import Resources
    from saferl.setups.base import CriticStart, Setup
    from saferl.setups.world import WorldScorerSource

    spec = ModelSpec(name_or_path=str(sft_dir))
    demonstrations = make_sft_examples(64, seed=3)
    setup = Setup(
        name="world", policy=spec, tokenizer=tokenizer, template=WORLD_TEMPLATE, max_length=MAX_SEQUENCE_LENGTH,
        max_prompt_length=MAX_SEQUENCE_LENGTH, generation=GenerationSpec(max_new_tokens=MAX_RESPONSE_TOKENS),
        prompts=[prompt.text for prompt in world_prompts()], reward=WorldScorerSource.oracle("reward", tokenizer),
        costs=(WorldScorerSource.oracle("cost", tokenizer),), reward_critic=CriticStart(spec),
        cost_critics=(CriticStart(spec),), ptx=demonstrations,
    )
    seen: dict[int, list[list[int]]] = {}

    class RecordedPTXBatches(PTXBatches):
        def __call__(self, iteration):
            batch = super().__call__(iteration)
            seen[iteration] = batch.input_ids.tolist()
            return batch

    monkeypatch.setattr(ppo_lag, "PTXBatches", RecordedPTXBatches)
    resources = Resources(GroupSpec(num_ranks=1, cpus_per_rank=0.25), RUNTIME, DeepSpeedSpec(zero_stage=2), seed=5)
    loop = PPOSettings(iterations=2, prompts_per_iteration=16, kl_coeff=0.5, kl_in_cost_stream=False, ptx_coeff=2.0,
                       seed=5)
    result = ppo_lag.run(setup, ppo_lag.PPOLagSettings(loop, {"kind": "log_gradient_ascent"}, -0.8), resources,
                         RunOutput(tmp_path))
    # ptx_coeff × a token-mean NLL: finite and positive, every iteration.
    assert [math.isfinite(m["policy/ptx_loss"]) and m["policy/ptx_loss"] > 0 for m in result.history] == [True, True]
    # The rows of iteration k are those a fresh schedule of the same seed gives (a resumed run's).
    fresh = PTXBatches(demonstrations, 16, 5, tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE)
    assert sorted(seen) == [0, 1] and all(seen[k] == fresh(k).input_ids.tolist() for k in seen)
    assert seen[0] != seen[1]
    with pytest.raises(ValueError, match="ptx_coeff > 0 needs a PTX data set"):
        ppo_lag.PPOLagrangian(SimpleNamespace(cost_scorers=[]), None, [], None, None, settings(ptx_coeff=1.0), ROWS,
                              ROWS)


# --------------------------------------------------------------------------- numerical guards
class NaNAtIteration:
    """The world's reward, but NaN for every response of the ``bad``-th rollout (1-based)."""

    num_outputs = 1

    def __init__(self, tokenizer, bad: int) -> None:
        self.oracle = WorldOracleScorer("reward", tokenizer)
        self.bad = bad
        self.calls = 0

    def score(self, batch, prompts):
        self.calls += 1
        scores = self.oracle.score(batch, prompts)
        return torch.full_like(scores, math.nan) if self.calls == self.bad else scores


def policy_weights(groups) -> dict[str, torch.Tensor]:
    return groups.policy.state_dicts()[0]


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_a_nan_score_stops_the_run_and_keeps_the_last_good_checkpoint(groups, tmp_path):
    from saferl.core.finite import NonFiniteError
    from saferl.learners.run_state import latest_checkpoint, save_checkpoint_atomically

    groups.restore(groups.initial)
    learner = groups.learner(
        LogGradientAscentMultiplier(-0.8, lr=0.5, window=ROWS), settings(iterations=3),
        reward_scorer=NaNAtIteration(groups.tokenizer, bad=2),
    )
    folder = tmp_path / "checkpoints"
    good: list[dict[str, torch.Tensor]] = []
    with pytest.raises(NonFiniteError, match=r"non-finite reward scores at iteration 2 on the driver: 32 NaN"):
        learner.run(
            progress=lambda iteration, metrics: good.append(policy_weights(groups)),
            checkpoint=lambda: save_checkpoint_atomically(learner.save, folder),
            checkpoint_every=1,
        )
    # Iteration 1 completed and was checkpointed; iteration 2 raised before any update.
    assert len(good) == 1 and learner.iteration == 1
    assert_same_weights(policy_weights(groups), good[0])
    checkpoint = latest_checkpoint(folder)
    assert torch.load(checkpoint / "learner_state.pt", weights_only=True)["iteration"] == 1
    groups.restore(checkpoint)
    assert_same_weights(policy_weights(groups), good[0])


def test_skip_nonfinite_batches_drops_the_rollout_and_counts_it(groups):
    class Recorder:
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []

        def log(self, metrics, step):
            self.rows.append(dict(metrics))

    groups.restore(groups.initial)
    initial = policy_weights(groups)
    multiplier = LogGradientAscentMultiplier(-0.8, lr=0.5, window=ROWS)
    learner = groups.learner(
        multiplier, settings(iterations=2, skip_nonfinite_batches=True),
        reward_scorer=NaNAtIteration(groups.tokenizer, bad=1),
    )
    learner.tracker = recorder = Recorder()
    after: list[dict[str, torch.Tensor]] = []
    history = learner.run(progress=lambda iteration, metrics: after.append(policy_weights(groups)))
    assert learner.iteration == 2
    # Iteration 1 (NaN rewards) changed neither the weights nor the multiplier; iteration 2 trained.
    assert_same_weights(after[0], initial)
    assert not all(torch.equal(after[1][key], initial[key]) for key in initial)
    assert multiplier.state_dict()["num_updates"] == 1
    assert [row["perf/skipped_batches"] for row in recorder.rows] == [1.0, 1.0]
    assert "reward/score" not in history[0] and math.isfinite(history[1]["policy/loss"])


def test_a_nan_loss_in_the_rank_is_refused_before_backward(groups):
    from functools import partial

    from saferl.core.finite import NonFiniteError
    from saferl.learners.nonfinite import NonFiniteGuard
    from saferl.learners.ppo_update import actor_loss
    from saferl.learners.types import PolicyTrainBatch

    groups.restore(groups.initial)
    before = policy_weights(groups)
    learner = groups.learner(None, settings(iterations=1), with_cost=False)
    experience = learner.maker.make(learner.schedule.batch(0), seed=3)
    advantages = torch.zeros_like(experience.old_logprobs)
    advantages[5, :] = math.nan  # one row: the mean loss is NaN (the driver's own check is bypassed)
    batch = PolicyTrainBatch(experience.input_ids, experience.attention_mask, experience.response_mask,
                             experience.old_logprobs, advantages)
    loss_fn = partial(actor_loss, clip_eps=0.2)
    with pytest.raises(NonFiniteError, match=r"non-finite policy1 loss on policy1 rank 0: 1 NaN and 0 inf among 1"):
        groups.policy.train_step(batch, loss_fn)
    output = groups.policy.train_step(batch, loss_fn, report_nonfinite=True)
    assert output.refused is not None and math.isnan(output.loss)
    with pytest.raises(NonFiniteError, match="non-finite policy loss at iteration 4 on policy1 rank 0"):
        NonFiniteGuard(skip=False).step_taken(output, "policy loss", 4)
    assert_same_weights(policy_weights(groups), before)  # no step, and the group still serves
