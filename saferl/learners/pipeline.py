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

Stage 5 is :func:`run_ppo_loop` with the world's pieces; the same function, with a hub setup's
models, tokenizer and prompts, is the PPO-Lagrangian of :mod:`saferl.learners.hub`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from saferl.core.multipliers import build_multiplier
from saferl.data import load_preference_dataset, load_prompt_dataset, load_sft_dataset
from saferl.data.world import (
    PolicyScore,
    ReferenceConfig,
    build_exact_world,
    build_world_tokenizer,
    enumerate_policy_logprobs,
    world_dataset_paths,
    world_model_spec,
    write_world_datasets,
)
from saferl.data.world.exact import MAX_RESPONSE_TOKENS
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners.ppo_lag import PPOLagrangian, PPOSettings, PromptSchedule
from saferl.learners.rollout import ExperienceMaker
from saferl.learners.run_state import StageRecords, latest_checkpoint, save_checkpoint_atomically
from saferl.learners.score_model import (
    evaluate_score_model,
    relabel_saved_score_model,
    train_score_model,
)
from saferl.learners.scorers import (
    AffineScorer,
    ModelScorer,
    Scorer,
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
from saferl.tracking import NullTracker, Tracker

__all__ = [
    "StageSettings",
    "PipelineSettings",
    "PipelineResult",
    "PreparedModels",
    "PPORun",
    "CriticStart",
    "ScoreGroupStarter",
    "ScorerFactory",
    "prepare_models",
    "run_ppo_stage",
    "run_ppo_loop",
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
        history: metrics per iteration; calibration: affine maps of learned scorers (the world's
            calibrated scorers only); seconds: wall time.
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
    return _engine_spec(settings.deepspeed, settings.num_ranks, learning_rate, rows_per_step)


def _engine_spec(
    deepspeed: DeepSpeedSpec, num_ranks: int, learning_rate: float, rows_per_step: int
) -> DeepSpeedSpec:
    """``deepspeed`` for one engine: its learning rate, and one optimizer step per
    ``rows_per_step`` rows split evenly over the ranks (no gradient accumulation)."""
    if rows_per_step % num_ranks:
        raise ValueError(
            f"{rows_per_step} rows per step do not divide over runtime.num_ranks={num_ranks}"
        )
    return replace(
        deepspeed,
        learning_rate=learning_rate,
        micro_batch_size_per_rank=rows_per_step // num_ranks,
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


@dataclass(frozen=True)
class CriticStart:
    """Where one critic's weights come from (ALGORITHMS.md §2: the reward critic starts from the
    reward model, each cost critic from its cost model).

    Attributes:
        spec: the critic's dtype, ``trust_remote_code``, LoRA and revision; also its weights
            (a score model's backbone and head) when ``init_from`` is None.
        init_from: a saved score model (folder) whose backbone and head replace ``spec``'s
            weights; it must have a trained head (see :func:`saferl.models.build_critic`).
    """

    spec: ModelSpec
    init_from: str | None = None


#: Starts a registered ``ScoreGroup`` for ``(model spec, kind)``; the loop shuts it down at the end.
ScoreGroupStarter = Callable[[ModelSpec, str], ScoreGroup]
#: Builds a scorer, starting the score groups it needs through the starter it is given.
ScorerFactory = Callable[[ScoreGroupStarter], Scorer]


def run_ppo_loop(
    *,
    policy: ModelSpec,
    reward_critic: CriticStart,
    cost_critics: Sequence[CriticStart],
    reward_scorer: ModelSpec | ScorerFactory,
    cost_scorers: Sequence[ModelSpec | ScorerFactory],
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    template: str,
    max_prompt_length: int,
    generation: GenerationSpec,
    multiplier: Mapping[str, Any] | None,
    cost_limit: float | Sequence[float],
    ppo: PPOSettings,
    policy_learning_rate: float,
    critic_learning_rate: float,
    deepspeed: DeepSpeedSpec,
    group: GroupSpec,
    runtime: RuntimeSpec,
    output_dir: str | Path,
    name: str = "ppo_lag",
    tracker: Tracker | None = None,
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    seed: int = 0,
) -> PPORun:
    """The PPO(-Lagrangian) stage on any models: the one place the PPO loop is built and run.

    1. start the policy and the reference (both from ``policy``) and one critic per stream;
    2. build the scorers (a ``ModelSpec`` is served by a ``ScoreGroup`` as a :class:`ModelScorer`;
       a factory starts its own groups through the starter it is given); every group starts in
       the background and all are awaited before the loop;
    3. the experience maker, the multiplier (``multiplier`` options with ``kind``, limit
       ``cost_limit``; None without costs) and the :class:`PPOLagrangian` loop;
    4. with ``resume``, restore ``<output_dir>/checkpoints/<name>`` when it holds a checkpoint;
    5. run ``ppo.iterations`` iterations, checkpointing atomically every ``checkpoint_every``
       iterations and after the last;
    6. export the policy to ``<output_dir>/models/policy_<name>``; every group is shut down.

    Args:
        policy: the policy's start, also the frozen reference.
        reward_critic, cost_critics: where each critic starts (one per cost column).
        reward_scorer, cost_scorers: a score model's spec or a scorer factory each.
        tokenizer: the policy's tokenizer, with a pad token distinct from EOS.
        prompts: the prompt set (untemplated); template, max_prompt_length: how prompts are
            formatted and cut (from the left).
        generation: rollout sampling (its seed is replaced per rollout).
        ppo: the loop's hyper-parameters; one optimizer step per rollout and epoch, so every
            engine's batch is ``ppo.prompts_per_iteration`` rows split over ``group.num_ranks``.
        policy_learning_rate, critic_learning_rate: AdamW rates (the scorers and the reference
            never step).
        deepspeed: every engine's ZeRO stage, precision and AdamW settings.
        group, runtime: where the groups run.
        name: names the checkpoint and policy folders and the progress stage.
        progress: ``progress(name, iteration, ppo.iterations, metrics)`` after each iteration
            (and once after a resume, with the restored iteration).
        seed: seeds every group's model build and the prompt order.

    Returns:
        The exported policy, the final λ (empty without costs), every iteration's metrics and the
        wall time (``calibration`` empty: callers that calibrate scorers fill it).
    """
    _quiet_libraries()
    tracker = tracker or NullTracker()
    report = progress or (lambda stage, step, total, metrics: None)
    output = Path(output_dir)
    init_ray(runtime)
    clock = time.perf_counter()
    rows = ppo.prompts_per_iteration  # one optimizer step per rollout and epoch
    groups: list = []

    def start(started):
        groups.append(started)
        return started

    def engine(learning_rate: float) -> DeepSpeedSpec:
        return _engine_spec(deepspeed, group.num_ranks, learning_rate, rows)

    roles: set[str] = set()

    def role(base: str) -> str:
        """``base``, or ``base_<k>`` when a group of that name already runs (several costs)."""
        candidate, k = base, 0
        while candidate in roles:
            k += 1
            candidate = f"{base}_{k}"
        roles.add(candidate)
        return candidate

    def start_score_group(spec: ModelSpec, kind: str) -> ScoreGroup:
        return start(
            ScoreGroup(
                spec, tokenizer, engine(0.0), group, runtime,
                num_outputs=1, kind=kind, role=role(kind), seed=seed, wait=False,
            )
        )

    def scorer(source: ModelSpec | ScorerFactory, kind: str) -> Scorer:
        if isinstance(source, ModelSpec):
            return ModelScorer(start_score_group(source, kind))
        return source(start_score_group)

    def start_critic(critic: CriticStart, kind: str) -> CriticGroup:
        return start(
            CriticGroup(
                critic.spec, tokenizer, engine(critic_learning_rate), group, runtime,
                init_from=critic.init_from, role=role(f"{kind}_critic"), seed=seed, wait=False,
            )
        )

    try:
        # 1. Policy, reference and critics.
        policy_group = start(
            PolicyGroup(
                policy, tokenizer, engine(policy_learning_rate), group, runtime,
                role=role("policy"), seed=seed, wait=False,
            )
        )
        reference = start(
            ReferenceGroup(
                policy, tokenizer, engine(0.0), group, runtime,
                role=role("reference"), seed=seed, wait=False,
            )
        )
        reward_critic_group = start_critic(reward_critic, "reward")
        cost_critic_groups = [start_critic(critic, "cost") for critic in cost_critics]
        # 2. Scorers.
        reward = scorer(reward_scorer, "reward")
        costs = [scorer(source, "cost") for source in cost_scorers]
        for started in groups:  # they start side by side; a start-up failure surfaces here
            started.wait_ready()
        # 3. Experience maker, multiplier, loop.
        maker = ExperienceMaker(
            policy=policy_group,
            reference=reference,
            reward_scorer=reward,
            cost_scorers=costs,
            reward_critic=reward_critic_group,
            cost_critics=cost_critic_groups,
            tokenizer=tokenizer,
            generation=generation,
            max_prompt_length=max_prompt_length,
            template=template,
        )
        lagrange = None
        if multiplier is not None:
            options = dict(multiplier)
            lagrange = build_multiplier(options.pop("kind"), cost_limit, **options)
        learner = PPOLagrangian(
            maker,
            reward_critic_group,
            cost_critic_groups,
            lagrange,
            PromptSchedule(list(prompts), ppo.prompts_per_iteration, seed),
            ppo,
            policy_rows_per_step=rows,
            critic_rows_per_step=rows,
            tracker=tracker,
        )
        # 4. Resume.
        checkpoint_dir = output / "checkpoints" / name
        if resume and (found := latest_checkpoint(checkpoint_dir)) is not None:
            learner.load(found)
            report(name, learner.iteration, ppo.iterations, learner.history[-1] if learner.history else {})
        # 5. Iterate, with atomic checkpoints.
        history = learner.run(
            progress=lambda step, metrics: report(name, step, ppo.iterations, metrics),
            checkpoint=lambda: save_checkpoint_atomically(learner.save, checkpoint_dir),
            checkpoint_every=checkpoint_every,
        )
        # 6. Export.
        policy_dir = policy_group.export_hf(output / "models" / f"policy_{name}")
        final = [] if lagrange is None else [float(v) for v in lagrange.value]
    finally:
        for running in groups:
            running.shutdown()
    return PPORun(policy_dir, final, history, {}, time.perf_counter() - clock)


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
    """Stage 5 in one of three configurations of the same loop (:func:`run_ppo_loop` with the
    world's pieces: its tokenizer, template and lengths, the SFT policy as policy, reference and
    critic backbone, the critics initialised from the score models, learned or oracle scorers).

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
    tokenizer = build_world_tokenizer()
    sft_spec = ModelSpec(name_or_path=str(prepared.sft_dir))
    score_dirs = {"reward": prepared.reward_dir, "cost": prepared.cost_dir}
    calibration: dict[str, dict[str, float]] = {}

    def world_scorer(kind: str) -> ScorerFactory:
        """The oracle, or the learned model (mapped into ground-truth units when calibrating)."""

        def build(start_score_group: ScoreGroupStarter) -> Scorer:
            if settings.scorers == "oracle":
                return WorldOracleScorer(kind, tokenizer)
            score_group = start_score_group(ModelSpec(name_or_path=str(score_dirs[kind])), kind)
            if not settings.calibrate_scorers:
                return ModelScorer(score_group)
            scale, shift = calibrate(
                score_group, prepared.test_pairs, world_truth(kind), tokenizer, settings.num_ranks
            )
            calibration[kind] = {"scale": scale, "shift": shift}
            return AffineScorer(ModelScorer(score_group), scale, shift)

        return build

    def shaped_reward(start_score_group: ScoreGroupStarter) -> Scorer:
        """``r − λ·c`` with the constant λ of the shaping baseline."""
        reward = world_scorer("reward")(start_score_group)
        cost = world_scorer("cost")(start_score_group)
        return ShapedRewardScorer(reward, [cost], [shaping_multiplier])

    with_costs = variant == "ppo_lag"
    run = run_ppo_loop(
        policy=sft_spec,
        reward_critic=CriticStart(sft_spec, init_from=str(prepared.reward_dir)),
        cost_critics=[CriticStart(sft_spec, init_from=str(prepared.cost_dir))] if with_costs else [],
        reward_scorer=shaped_reward if variant == "shaping" else world_scorer("reward"),
        cost_scorers=[world_scorer("cost")] if with_costs else [],
        tokenizer=tokenizer,
        prompts=prepared.prompts,
        template=WORLD_TEMPLATE,
        max_prompt_length=MAX_SEQUENCE_LENGTH,
        generation=settings.generation,
        multiplier=settings.multiplier if with_costs else None,
        cost_limit=settings.cost_limit,
        ppo=settings.ppo,
        policy_learning_rate=settings.policy_learning_rate,
        critic_learning_rate=settings.critic_learning_rate,
        deepspeed=settings.deepspeed,
        group=_group(settings),
        runtime=settings.runtime,
        output_dir=output_dir,
        name=variant,
        tracker=tracker,
        progress=progress,
        checkpoint_every=checkpoint_every,
        resume=resume,
        seed=settings.seed,
    )
    return replace(run, calibration=calibration)


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
            # Per-stage wall seconds (the PPO iterations' own timers are logged per iteration).
            **{f"perf/stage_{stage}_s": value for stage, value in seconds.items()},
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
