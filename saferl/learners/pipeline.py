"""The whole Safe RLHF pipeline on the built-in world, the default ``saferl`` job.

1. write the world's datasets (PKU-SafeRLHF format) and load them back with the normal loaders;
2. SFT a tiny policy on the demonstrations (the reference policy);
3. train the reward model and 4. the cost model on the preference pairs (held-out accuracies);
5. PPO-Lagrangian from the SFT policy with the learned (or oracle) scorers;
6. evaluate exactly: enumerate every response of the reference and the trained policy and
   compare them with the exact constrained optimum of the same problem.

Every stage runs through the runtime (Ray actor groups, DeepSpeed engines); each stage's groups are
shut down before the next starts. Outputs (datasets, exported models, checkpoints, metrics) go
under ``output_dir``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from saferl.core.multipliers import build_multiplier
from saferl.data import load_preference_dataset, load_prompt_dataset, load_sft_dataset
from saferl.data.world import (
    PolicyScore,
    ReferenceConfig,
    build_exact_world,
    build_world_tokenizer,
    enumerate_policy_logprobs,
    world_model_spec,
    world_dataset_paths,
    write_world_datasets,
)
from saferl.data.world.exact import MAX_RESPONSE_TOKENS
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners.ppo_lag import PPOLagrangian, PPOSettings, PromptSchedule
from saferl.learners.rollout import ExperienceMaker
from saferl.learners.score_model import (
    evaluate_score_model,
    relabel_saved_score_model,
    train_score_model,
)
from saferl.learners.scorers import (
    AffineScorer,
    ModelScorer,
    ShapedRewardScorer,
    WorldOracleScorer,
    fit_affine,
)
from saferl.learners.sft import run_sft
from saferl.models import ModelSpec, load_policy
from saferl.runtime import (
    CriticGroup,
    DeepSpeedSpec,
    GenerationSpec,
    GroupSpec,
    PolicyGroup,
    ReferenceGroup,
    RuntimeSpec,
    ScoreGroup,
    init_ray,
)
from saferl.learners.run_state import StageRecords, latest_checkpoint, save_checkpoint_atomically
from saferl.tracking import NullTracker, Tracker

__all__ = [
    "StageSettings",
    "PipelineSettings",
    "PipelineResult",
    "PreparedModels",
    "PPORun",
    "prepare_models",
    "run_ppo_stage",
    "evaluate_exact",
    "run_pipeline",
]


@dataclass(frozen=True)
class StageSettings:
    """One training stage (SFT, reward model, cost model).

    Attributes:
        steps: optimizer steps; rows_per_step: rows (SFT) or pairs (score models) per step.
        learning_rate: AdamW learning rate (constant).
    """

    steps: int
    rows_per_step: int
    learning_rate: float


@dataclass(frozen=True)
class PipelineSettings:
    """Everything the default pipeline needs (the CLI builds it from the config).

    Attributes:
        world_beta, cost_limit: the world's KL coefficient β and cost limit d.
        reference: shape of the tiny policy (its SFT steps come from ``sft``).
        num_sft, num_pairs_train, num_pairs_test, label_temperature: the world's datasets.
        sft, reward_model, cost_model: the three training stages.
        ppo: the PPO-Lagrangian loop (its ``kl_coeff`` should be β to target the same problem).
        policy_learning_rate, critic_learning_rate: PPO's AdamW rates.
        multiplier: keyword arguments of :func:`saferl.core.multipliers.build_multiplier`
            (``kind`` plus its options); the limit is ``cost_limit``.
        scorers: ``"learned"`` (the trained reward and cost models) or ``"oracle"`` (the world's
            ground truth).
        calibrate_scorers: map each learned model affinely into ground-truth units, fitted on the
            held-out responses (see :func:`~saferl.learners.scorers.fit_affine`), so that β and the
            limit mean what they mean in the exact optimum. Without it the learned run optimises
            in its models' own units, and ``cost_limit`` is read in the cost model's units.
        score_regularization: η of the score losses.
        runtime, num_ranks, cpus_per_rank, gpus_per_rank: where the groups run.
        deepspeed: every engine's ZeRO stage, offload, precision and AdamW settings (each stage
            sets its own learning rate and batch size).
        generation: rollout sampling (the seed is set per rollout).
        seed: seeds data, initialisation, sampling.
    """

    world_beta: float
    cost_limit: float
    reference: ReferenceConfig
    num_sft: int
    num_pairs_train: int
    num_pairs_test: int
    label_temperature: float
    sft: StageSettings
    reward_model: StageSettings
    cost_model: StageSettings
    ppo: PPOSettings | None = None
    policy_learning_rate: float = 1e-3
    critic_learning_rate: float = 1e-3
    multiplier: dict = field(default_factory=lambda: {"kind": "log_gradient_ascent"})
    scorers: str = "learned"
    calibrate_scorers: bool = True
    score_regularization: float = 0.001
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    deepspeed: DeepSpeedSpec = field(default_factory=DeepSpeedSpec)
    generation: GenerationSpec = field(
        default_factory=lambda: GenerationSpec(max_new_tokens=MAX_RESPONSE_TOKENS)
    )
    num_ranks: int = 1
    cpus_per_rank: float = 0.25
    gpus_per_rank: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scorers not in ("learned", "oracle"):
            raise ValueError(f"scorers.kind must be 'learned' or 'oracle' on the built-in world; found {self.scorers!r}")
        if self.generation.max_new_tokens != MAX_RESPONSE_TOKENS:
            raise ValueError(
                f"generation.max_new_tokens must be {MAX_RESPONSE_TOKENS} on the built-in world (the exact "
                f"evaluation enumerates every response of at most {MAX_RESPONSE_TOKENS} tokens); "
                f"found {self.generation.max_new_tokens}"
            )


@dataclass(frozen=True)
class PipelineResult:
    """What the pipeline measured.

    Attributes:
        reference, trained, optimum: exact scores of the SFT reference, the PPO-Lagrangian policy
            and the exact constrained optimum (ground truth).
        multiplier, optimal_multiplier: the learner's final λ and the exact λ*.
        reward_model, cost_model: held-out accuracies.
        stage_seconds: wall seconds per stage.
        history: the PPO-Lagrangian metrics per iteration.
        calibration: the affine maps of the learned scorers into ground-truth units (if any).
    """

    reference: PolicyScore
    trained: PolicyScore
    optimum: PolicyScore
    multiplier: list[float]
    optimal_multiplier: list[float]
    reward_model: dict[str, float]
    cost_model: dict[str, float]
    stage_seconds: dict[str, float]
    history: list[dict[str, float]]
    calibration: dict[str, dict[str, float]]

    def to_json(self) -> str:
        return json.dumps(
            {
                key: (asdict(value) if isinstance(value, PolicyScore) else value)
                for key, value in self.__dict__.items()
            },
            indent=2,
        )


@dataclass(frozen=True)
class PreparedModels:
    """The outputs of stages 1–4, reusable by several PPO runs.

    Attributes:
        sft_dir, reward_dir, cost_dir: exported Hugging Face folders.
        prompts: the prompt set; test_pairs: held-out pairs (accuracies, calibration).
        reward_model, cost_model: held-out accuracies.
        stage_seconds: wall seconds of stages 1–4.
    """

    sft_dir: Path
    reward_dir: Path
    cost_dir: Path
    prompts: list[str]
    test_pairs: list
    reward_model: dict[str, float]
    cost_model: dict[str, float]
    stage_seconds: dict[str, float]


@dataclass(frozen=True)
class PPORun:
    """The outputs of stage 5.

    Attributes:
        policy_dir: the trained policy, exported.
        multiplier: the final λ (empty for unconstrained PPO).
        history: metrics per iteration; calibration: affine maps of learned scorers; seconds: wall time.
    """

    policy_dir: Path
    multiplier: list[float]
    history: list[dict[str, float]]
    calibration: dict[str, dict[str, float]]
    seconds: float


def _quiet_libraries() -> None:
    import datasets
    import transformers

    # The pipeline reports its own progress; the libraries' per-file bars would drown it.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _group(settings: PipelineSettings) -> GroupSpec:
    return GroupSpec(
        num_ranks=settings.num_ranks,
        cpus_per_rank=settings.cpus_per_rank,
        gpus_per_rank=settings.gpus_per_rank,
    )


def _deepspeed(
    settings: PipelineSettings, learning_rate: float, rows_per_step: int
) -> DeepSpeedSpec:
    if rows_per_step % settings.num_ranks:
        raise ValueError(
            f"{rows_per_step} rows per step do not divide over runtime.num_ranks={settings.num_ranks}"
        )
    return replace(
        settings.deepspeed,
        learning_rate=learning_rate,
        micro_batch_size_per_rank=rows_per_step // settings.num_ranks,
        gradient_accumulation_steps=1,
    )


def prepare_models(
    settings: PipelineSettings,
    output_dir: str | Path,
    tracker: Tracker | None = None,
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
    resume: bool = False,
    reuse_from: str | Path | None = None,
) -> PreparedModels:
    """Stages 1–4: the world's datasets, SFT, the reward model and the cost model.

    Each finished stage is recorded in ``<output_dir>/stages.json`` with its settings; with
    ``resume=True`` the recorded stages are not run again (their outputs are reused), and a fresh
    run (``resume=False``) refuses a folder that already holds finished stages.

    ``reuse_from``: another run folder whose stages 1–4 finished with the same settings; its data
    and models are used in place (nothing is copied or retrained), e.g. by every job of a sweep
    over dual parameters. A stage finished with other settings is an error naming the keys.
    """
    if reuse_from is not None:
        return _reuse_prepared(settings, Path(reuse_from))
    _quiet_libraries()
    tracker = tracker or NullTracker()
    report = progress or (lambda stage, step, total, metrics: None)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    records = StageRecords(output, resume)
    seconds: dict[str, float] = {}
    init_ray(settings.runtime)
    tokenizer = build_world_tokenizer()

    # 1. The world's datasets, through the normal loaders.
    clock = time.perf_counter()
    if records.finished("data", _stage_settings(settings, "data")) is None:
        paths = write_world_datasets(
            output / "data",
            seed=settings.seed,
            num_sft=settings.num_sft,
            num_pairs_train=settings.num_pairs_train,
            num_pairs_test=settings.num_pairs_test,
            temperature=settings.label_temperature,
            overwrite=True,  # this run's own folder: a stage that did not finish is redone
        )
        records.mark("data", {"seconds": time.perf_counter() - clock}, _stage_settings(settings, "data"))
    paths = world_dataset_paths(output / "data")
    sft_examples = load_sft_dataset(str(paths.sft)).records
    train_pairs = load_preference_dataset(str(paths.preferences_train)).records
    test_pairs = list(load_preference_dataset(str(paths.preferences_test)).records)
    prompts = [record.prompt for record in load_prompt_dataset(str(paths.prompts)).records]
    seconds["data"] = time.perf_counter() - clock

    # 2. SFT of the reference policy.
    clock = time.perf_counter()
    sft_dir = output / "models" / "sft"
    if (done := records.finished("sft", _stage_settings(settings, "sft"))) is not None:
        seconds["sft"] = done["seconds"]
    else:
        _run_sft_stage(settings, sft_examples, tokenizer, sft_dir, tracker, report)
        seconds["sft"] = time.perf_counter() - clock
        records.mark("sft", {"seconds": seconds["sft"]}, _stage_settings(settings, "sft"))

    # 3–4. Reward and cost models, initialised from the SFT backbone.
    score_dirs, score_metrics = {}, {}
    for kind, stage in (("reward", settings.reward_model), ("cost", settings.cost_model)):
        clock = time.perf_counter()
        score_dirs[kind] = output / "models" / f"{kind}_model"
        done = records.finished(f"{kind}_model", _stage_settings(settings, f"{kind}_model"))
        if done is not None:
            score_metrics[kind], seconds[f"{kind}_model"] = done["metrics"], done["seconds"]
            continue
        score_metrics[kind] = _run_score_stage(
            settings, kind, stage, train_pairs, test_pairs, tokenizer, sft_dir, score_dirs[kind], tracker, report
        )
        seconds[f"{kind}_model"] = time.perf_counter() - clock
        records.mark(
            f"{kind}_model",
            {"metrics": score_metrics[kind], "seconds": seconds[f"{kind}_model"]},
            _stage_settings(settings, f"{kind}_model"),
        )
    return PreparedModels(
        sft_dir,
        score_dirs["reward"],
        score_dirs["cost"],
        prompts,
        test_pairs,
        score_metrics["reward"],
        score_metrics["cost"],
        seconds,
    )


PREPARED_STAGES = ("data", "sft", "reward_model", "cost_model")


def _stage_settings(settings: PipelineSettings, stage: str) -> dict:
    """What a stage's outputs depend on (a resumed or reusing run must match it)."""
    if stage == "data":
        return {
            "seed": settings.seed,
            "num_sft": settings.num_sft,
            "num_pairs_train": settings.num_pairs_train,
            "num_pairs_test": settings.num_pairs_test,
            "label_temperature": settings.label_temperature,
        }
    if stage == "sft":
        return {"seed": settings.seed, "reference": asdict(settings.reference), "sft": asdict(settings.sft)}
    stage_settings = settings.reward_model if stage == "reward_model" else settings.cost_model
    return {
        "seed": settings.seed,
        stage: asdict(stage_settings),
        "score_regularization": settings.score_regularization,
    }


def _reuse_prepared(settings: PipelineSettings, folder: Path) -> PreparedModels:
    """Stages 1–4 of the finished run in ``folder`` (see :func:`prepare_models`)."""
    if not (folder / "stages.json").exists():
        raise FileNotFoundError(
            f"model.from_run: {folder} holds no finished run (no stages.json); give a run folder "
            "whose stages 1–4 (data, SFT, reward and cost models) finished"
        )
    records = StageRecords(folder, resume=True)
    done = {}
    for stage in PREPARED_STAGES:
        done[stage] = records.finished(stage, _stage_settings(settings, stage))
        if done[stage] is None:
            raise ValueError(f"model.from_run: stage {stage!r} of {folder} did not finish; resume that run first")
    paths = world_dataset_paths(folder / "data")
    return PreparedModels(
        folder / "models" / "sft",
        folder / "models" / "reward_model",
        folder / "models" / "cost_model",
        [record.prompt for record in load_prompt_dataset(str(paths.prompts)).records],
        list(load_preference_dataset(str(paths.preferences_test)).records),
        done["reward_model"]["metrics"],
        done["cost_model"]["metrics"],
        {stage: 0.0 for stage in PREPARED_STAGES},
    )


def _run_sft_stage(settings, sft_examples, tokenizer, sft_dir: Path, tracker: Tracker, report) -> None:
    """Stage 2: SFT of the tiny policy on the demonstrations, exported to ``sft_dir``."""
    policy = PolicyGroup(
        world_model_spec(settings.reference, tokenizer),
        tokenizer,
        _deepspeed(settings, settings.sft.learning_rate, settings.sft.rows_per_step),
        _group(settings),
        settings.runtime,
        role="sft",
        seed=settings.seed,
    )
    try:
        run_sft(
            policy,
            sft_examples,
            tokenizer,
            steps=settings.sft.steps,
            rows_per_step=settings.sft.rows_per_step,
            max_length=MAX_SEQUENCE_LENGTH,
            template=WORLD_TEMPLATE,
            seed=settings.seed,
            tracker=tracker,
            progress=lambda step, metrics: report("sft", step, settings.sft.steps, metrics),
        )
        policy.export_hf(sft_dir)
    finally:
        policy.shutdown()


def _run_score_stage(
    settings, kind: str, stage: StageSettings, train_pairs, test_pairs, tokenizer, sft_dir: Path,
    score_dir: Path, tracker: Tracker, report,
) -> dict[str, float]:
    """Stages 3–4: one score model from the SFT backbone, exported to ``score_dir``; returns its
    held-out metrics."""
    critic = CriticGroup(
        ModelSpec(name_or_path=str(sft_dir)),
        tokenizer,
        _deepspeed(settings, stage.learning_rate, 2 * stage.rows_per_step),
        _group(settings),
        settings.runtime,
        role=f"{kind}_model",
        seed=settings.seed,
    )
    try:
        train_score_model(
            critic,
            train_pairs,
            kind,
            tokenizer,
            steps=stage.steps,
            pairs_per_step=stage.rows_per_step,
            max_length=MAX_SEQUENCE_LENGTH,
            template=WORLD_TEMPLATE,
            score_regularization=settings.score_regularization,
            seed=settings.seed,
            tracker=tracker,
            progress=lambda step, metrics: report(f"{kind}_model", step, stage.steps, metrics),
        )
        metrics = evaluate_score_model(
            critic,
            test_pairs,
            kind,
            tokenizer,
            MAX_SEQUENCE_LENGTH,
            WORLD_TEMPLATE,
            rows_per_call=2 * stage.rows_per_step,
            truth=world_truth(kind),
        )
        critic.export_hf(score_dir)
        relabel_saved_score_model(score_dir, kind)
    finally:
        critic.shutdown()
    tracker.log({f"{kind}_model/test_{k}": v for k, v in metrics.items()}, step=0)
    return metrics


def run_ppo_stage(
    settings: PipelineSettings,
    prepared: PreparedModels,
    output_dir: str | Path,
    variant: str = "ppo_lag",
    shaping_multiplier: float | None = None,
    tracker: Tracker | None = None,
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> PPORun:
    """Stage 5 in one of three configurations of the same loop.

    Args:
        variant: ``"ppo_lag"`` (costs and the configured multiplier), ``"ppo"`` (reward only) or
            ``"shaping"`` (reward only, the reward being ``r − shaping_multiplier · c``).
        shaping_multiplier: the constant λ of ``"shaping"``.
        checkpoint_every: iterations between checkpoints in ``<output_dir>/checkpoints/<variant>``
            (None: only the final one).
        resume: continue from that checkpoint when there is one (the policy, critics,
            optimizers, schedulers, multiplier, iteration and metric history are restored; prompt
            order and sampling seeds are functions of the iteration, so the run continues exactly).
    """
    if variant not in ("ppo_lag", "ppo", "shaping"):
        raise ValueError(f"variant must be 'ppo_lag', 'ppo' or 'shaping'; found {variant!r}")
    if (variant == "shaping") != (shaping_multiplier is not None):
        raise ValueError("shaping_multiplier is required by, and only by, the 'shaping' variant")
    _quiet_libraries()
    tracker = tracker or NullTracker()
    report = progress or (lambda stage, step, total, metrics: None)
    output = Path(output_dir)
    init_ray(settings.runtime)
    tokenizer = build_world_tokenizer()
    clock = time.perf_counter()
    ppo = settings.ppo
    sft_spec = ModelSpec(name_or_path=str(prepared.sft_dir))
    rows = ppo.prompts_per_iteration  # one optimizer step per rollout and epoch
    with_costs = variant == "ppo_lag"
    groups, calibration = [], {}

    def start(group):
        groups.append(group)
        return group

    try:
        policy = start(
            PolicyGroup(
                sft_spec,
                tokenizer,
                _deepspeed(settings, settings.policy_learning_rate, rows),
                _group(settings),
                settings.runtime,
                role="policy",
                seed=settings.seed,
            )
        )
        reference = start(
            ReferenceGroup(
                sft_spec,
                tokenizer,
                _deepspeed(settings, 0.0, rows),
                _group(settings),
                settings.runtime,
                role="reference",
                seed=settings.seed,
            )
        )
        score_dirs = {"reward": prepared.reward_dir, "cost": prepared.cost_dir}
        critics = {
            kind: start(
                CriticGroup(
                    sft_spec,
                    tokenizer,
                    _deepspeed(settings, settings.critic_learning_rate, rows),
                    _group(settings),
                    settings.runtime,
                    init_from=str(score_dirs[kind]),
                    role=f"{kind}_critic",
                    seed=settings.seed,
                )
            )
            for kind in (("reward", "cost") if with_costs else ("reward",))
        }
        scorers = {}
        for kind in ("reward", "cost"):
            if settings.scorers == "oracle":
                scorers[kind] = WorldOracleScorer(kind, tokenizer)
                continue
            score_group = start(
                ScoreGroup(
                    ModelSpec(name_or_path=str(score_dirs[kind])),
                    tokenizer,
                    _deepspeed(settings, 0.0, rows),
                    _group(settings),
                    settings.runtime,
                    num_outputs=1,
                    kind=kind,
                    role=kind,
                    seed=settings.seed,
                )
            )
            scorers[kind] = ModelScorer(score_group)
            if settings.calibrate_scorers:
                scale, shift = calibrate(
                    score_group,
                    prepared.test_pairs,
                    world_truth(kind),
                    tokenizer,
                    settings.num_ranks,
                )
                calibration[kind] = {"scale": scale, "shift": shift}
                scorers[kind] = AffineScorer(scorers[kind], scale, shift)
        reward_scorer = scorers["reward"]
        if variant == "shaping":
            reward_scorer = ShapedRewardScorer(
                scorers["reward"], [scorers["cost"]], [shaping_multiplier]
            )
        maker = ExperienceMaker(
            policy=policy,
            reference=reference,
            reward_scorer=reward_scorer,
            cost_scorers=[scorers["cost"]] if with_costs else [],
            reward_critic=critics["reward"],
            cost_critics=[critics["cost"]] if with_costs else [],
            tokenizer=tokenizer,
            generation=settings.generation,
            max_prompt_length=MAX_SEQUENCE_LENGTH,
            template=WORLD_TEMPLATE,
        )
        multiplier = None
        if with_costs:
            options = dict(settings.multiplier)
            multiplier = build_multiplier(options.pop("kind"), settings.cost_limit, **options)
        learner = PPOLagrangian(
            maker,
            critics["reward"],
            [critics["cost"]] if with_costs else [],
            multiplier,
            PromptSchedule(prepared.prompts, ppo.prompts_per_iteration, settings.seed),
            ppo,
            policy_rows_per_step=rows,
            critic_rows_per_step=rows,
            tracker=tracker,
        )
        checkpoint_dir = output / "checkpoints" / variant
        if resume and (found := latest_checkpoint(checkpoint_dir)) is not None:
            learner.load(found)
            report(variant, learner.iteration, ppo.iterations, learner.history[-1] if learner.history else {})
        history = learner.run(
            progress=lambda step, metrics: report(variant, step, ppo.iterations, metrics),
            checkpoint=lambda: save_checkpoint_atomically(learner.save, checkpoint_dir),
            checkpoint_every=checkpoint_every,
        )
        policy_dir = policy.export_hf(output / "models" / f"policy_{variant}")
        final = [] if multiplier is None else [float(v) for v in multiplier.value]
    finally:
        for running in groups:
            running.shutdown()
    return PPORun(policy_dir, final, history, calibration, time.perf_counter() - clock)


def evaluate_exact(
    settings: PipelineSettings, sft_dir: Path, policy_dir: Path
) -> tuple[PolicyScore, PolicyScore, PolicyScore, list[float]]:
    """Stage 6: exact scores of the reference, the trained policy and the exact optimum, and λ*."""
    tokenizer = build_world_tokenizer()
    reference_model, _ = load_policy(sft_dir)
    trained_model, _ = load_policy(policy_dir)
    world = build_exact_world(
        reference_model.eval(), tokenizer, settings.world_beta, settings.cost_limit
    )
    trained = world.score(enumerate_policy_logprobs(trained_model.eval(), tokenizer, world.prompts))
    optimum = world.optimum()
    return (
        world.score(world.ref_logprobs),
        trained,
        world.score(world.optimal_logprobs()),
        [float(v) for v in optimum.multiplier],
    )


def run_pipeline(
    settings: PipelineSettings,
    output_dir: str | Path,
    tracker: Tracker | None = None,
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    reuse_from: str | Path | None = None,
) -> PipelineResult:
    """Run stages 1–6 of the module docstring; ``progress(stage, step, total, metrics)`` reports.

    ``checkpoint_every`` and ``resume``: see :func:`prepare_models` and :func:`run_ppo_stage`
    (``resume=True`` continues a killed run in ``output_dir`` from its last checkpoint).
    """
    tracker = tracker or NullTracker()
    output = Path(output_dir)
    prepared = prepare_models(settings, output, tracker, progress, resume=resume, reuse_from=reuse_from)
    run = run_ppo_stage(
        settings, prepared, output, "ppo_lag", tracker=tracker, progress=progress,
        checkpoint_every=checkpoint_every, resume=resume,
    )
    clock = time.perf_counter()
    reference, trained, optimum, optimal_multiplier = evaluate_exact(
        settings, prepared.sft_dir, run.policy_dir
    )
    seconds = {
        **prepared.stage_seconds,
        "ppo_lag": run.seconds,
        "evaluation": time.perf_counter() - clock,
    }
    result = PipelineResult(
        reference=reference,
        trained=trained,
        optimum=optimum,
        multiplier=run.multiplier,
        optimal_multiplier=optimal_multiplier,
        reward_model=prepared.reward_model,
        cost_model=prepared.cost_model,
        stage_seconds=seconds,
        history=run.history,
        calibration=run.calibration,
    )
    (output / "result.json").write_text(result.to_json() + "\n")
    tracker.log(
        {
            "eval/normalised_gap": trained.normalised_gap,
            "eval/violation": trained.violation,
            "eval/expected_cost": trained.expected_cost,
            "eval/expected_reward": trained.expected_reward,
            "eval/kl": trained.kl,
        },
        step=settings.ppo.iterations,
    )
    return result


def calibrate(score_group, pairs, truth, tokenizer, num_ranks: int) -> tuple[float, float]:
    """Fit the affine map of a score group's outputs to the ground truth on held-out responses."""
    from saferl.data.collators import collate_sequences

    unique = sorted(
        {
            (pair.prompt, response)
            for pair in pairs
            for response in (pair.response_0, pair.response_1)
        }
    )
    unique = unique[: len(unique) - len(unique) % num_ranks]
    batch = collate_sequences(
        [p for p, _ in unique],
        [r for _, r in unique],
        tokenizer,
        MAX_SEQUENCE_LENGTH,
        template=WORLD_TEMPLATE,
    )
    model_scores = score_group.end_scores(batch)[:, 0]
    true_scores = torch.tensor([truth(p, r) for p, r in unique])
    return fit_affine(model_scores, true_scores)


def world_truth(kind: str) -> Callable[[str, str], float]:
    """The world's ground-truth reward or cost of a (prompt, response text) pair."""
    from saferl.data.world import ground_truth_cost, ground_truth_reward, world_prompts

    prompts = {prompt.text: prompt for prompt in world_prompts()}
    function = ground_truth_reward if kind == "reward" else ground_truth_cost
    return lambda prompt, response: function(prompts[prompt], response.split())
