"""The ``saferl`` command: a thin Hydra entry point that dispatches on ``job.name``.

``job=train`` is: validate the config → build the setup (only what the learner needs) → run the
learner (``saferl.learners.<name>.run``) → evaluate where the setup can → write the summary.

``saferl`` composes ``conf/config.yaml``; every key can be overridden on the command line
(``saferl cost_limit=-1.0``), and ``saferl -m ...`` sweeps. Before Hydra makes a run folder the
command checks it (:mod:`saferl.cli_preflight`: composition, validation, data files); a mistake is
printed alone with exit status 2 (its traceback with ``--verbose`` or ``HYDRA_FULL_ERROR=1``).
``saferl --help`` prints the config groups and root keys with their comments
(:mod:`saferl.cli_help`). The function Hydra calls returns the job's headline metric so that a
sweeper can optimise it.

This module imports only Hydra and omegaconf at the top: the libraries the jobs need (torch,
Ray, DeepSpeed, ...) load after the command line has been checked.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from saferl.cli_errors import UsageError
from saferl.conf_tree import CONFIG_DIR

if TYPE_CHECKING:
    from saferl.config import RunConfig

# The exit status of a mistake in the command line, the config or the data (argparse's).
USAGE_EXIT = 2
# The exit status of a run stopped by Ctrl-C (SIGINT): 128 + the signal's number, as shells use.
INTERRUPTED_EXIT = 130
# Set by main() from --verbose, which it takes off the command line before Hydra reads it.
_verbose = False
# The line a run prints when Ctrl-C stops it (set while a job runs, see _hydra_task); a first
# Ctrl-C raises KeyboardInterrupt and lets the run shut its actors down, a second one exits at once.
_interrupt_line: Callable[[], str] | None = None
_interrupted = False


def _quiet_libraries() -> None:
    """The run reports its own progress; the libraries' per-file bars would drown it."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def build_setup(config: RunConfig, needs, output):
    """The run's setup: the built-in world's stages, the hub's models and data, or the world's tiny
    models trained on a PKU-format data set."""
    from saferl.setups import hub, tiny, world

    if isinstance(config.setup, world.WorldSettings):
        return world.build(config.setup, config.resources, output, needs)
    if isinstance(config.setup, tiny.TinySettings):
        return tiny.build(config.setup, config.resources, output, needs)
    return hub.build(config.setup, config.resources, output, needs, config.learner)


def learner_module(name: str):
    """The learner's module: ``needs(settings)`` and ``run(setup, settings, resources, output)``."""
    import importlib

    return importlib.import_module(f"saferl.learners.{name}")


def train(config: RunConfig, folder: Path, tracker):
    """``job=train``: build the setup, run the learner, evaluate (where the setup can), report;
    returns the run's :class:`~saferl.learners.result.RunSummary`."""
    from saferl.cli_progress import progress_display
    from saferl.eval.run_report import print_run, write_dual_prediction
    from saferl.learners.output import RunOutput
    from saferl.learners.result import RunSummary

    learner = learner_module(config.learner)
    _quiet_libraries()
    display = progress_display()
    output = RunOutput(folder=folder, tracker=tracker, progress=display, notice=display.notice,
                       checkpoint_every=config.checkpoint_every, resume=config.resume)
    if config.resume:  # a learner with a checkpoint says from which iteration it continues
        from saferl.learners.run_state import finished_stages

        if stages := finished_stages(folder):
            display.notice(f"resuming: the finished stages {', '.join(stages)} are reused")
    with display:
        setup = build_setup(config, learner.needs(config.settings), output)
        if setup.evaluator is not None:  # evaluated below: its training-independent part runs meanwhile
            setup.evaluator.prefetch()
        result = learner.run(setup, config.settings, config.resources, output)
    clock = time.perf_counter()
    evaluation = None
    if setup.evaluator is not None and result.policy_dir is not None:
        evaluation = setup.evaluator.evaluate(result.policy_dir, result.target)
    seconds = {**setup.seconds, **result.seconds}
    if evaluation is not None:
        seconds["evaluation"] = time.perf_counter() - clock
    files = write_dual_prediction(result)
    summary = RunSummary(
        result=result,
        setup=setup.name,
        beta=config.beta,
        cost_limit=config.cost_limit,
        evaluation=evaluation,
        setup_details=setup.details,
        seconds=seconds,
        # Only ground-truth or cost-model units go on a sweep's plot (PeCAN's are implicit).
        predicted_frontier_csv=files[0] if files and result.dual.units != "implicit units" else None,
    )
    print_run(summary, smoke_test=_debug_option() == "tiny")
    if files:
        print(f"predicted frontier: {files[0]} and {files[1]}")
    metrics = {f"perf/stage_{stage}_s": value for stage, value in seconds.items()}
    if evaluation is not None:
        trained = evaluation.trained
        metrics.update({"eval/normalised_lagrangian_gap": trained.normalised_lagrangian_gap,
                        "eval/kl_to_optimum": trained.kl_to_optimum,
                        **{f"eval/violation_{j}": value for j, value in enumerate(trained.violation)},
                        **{f"eval/expected_cost_{j}": value for j, value in enumerate(trained.expected_cost)},
                        "eval/expected_reward": trained.expected_reward,
                        "eval/kl": trained.kl})
    tracker.log(metrics, step=len(result.history))
    return summary


def train_with_restarts(config: RunConfig, folder: Path, tracker):
    """:func:`train`, started again by itself from the run folder's saved state when a rank
    process or a node is lost (at most ``runtime.max_restarts`` times, :mod:`saferl.runtime.recovery`).
    Each restart is said on the console and recorded under ``perf/restarts`` and in
    ``run_metadata.json``."""
    from dataclasses import replace

    from saferl.learners.run_state import saved_state
    from saferl.runtime.recovery import run_with_restarts
    from saferl.tracking import record_restart, recorded_restarts

    max_restarts = config.resources.runtime.max_restarts

    def on_restart(restart) -> None:
        print(f"saferl: {restart.role} rank {restart.rank} was lost during {restart.method!r}; automatic "
              f"restart {restart.number} (runtime.max_restarts={max_restarts} per launch): going on from "
              f"{restart.resumed_from}", file=sys.stderr, flush=True)
        record_restart(folder, restart.to_dict())
        tracker.log({"perf/restarts": restart.number}, step=restart.number)

    return run_with_restarts(
        lambda resume: train(replace(config, resume=resume), folder, tracker),
        resume=config.resume, max_restarts=max_restarts, saved_state=lambda: saved_state(folder),
        on_restart=on_restart, restarts_before=len(recorded_restarts(folder)),
    )


def _debug_option() -> str | None:
    """The ``debug`` option the run was started with (``tiny``), when Hydra started it."""
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("debug")


def exact_optimum(cfg: DictConfig, config: RunConfig, folder: Path) -> float:
    """``job=exact_optimum``: the world's exact constrained optimum and predicted frontier, with the
    reference it was solved for said, and written to ``exact_optimum.json``.

    The reference is a training run's SFT policy with ``job.run_dir=<run>`` (the very problem that
    run's exact evaluation scores), else an in-process SFT with the same keys a training run's SFT
    stage reads (``world.reference`` shape, ``model.sft``, ``data.num_sft``, ``seed``): the same
    recipe, not the same weights.
    """
    import json

    from saferl.data.world import (
        build_exact_world,
        build_world_tokenizer,
        load_or_train_reference_policy,
    )
    from saferl.eval.world_report import print_exact_optimum
    from saferl.models import load_policy

    run_dir = cfg.job.get("run_dir")
    if run_dir is not None:
        sft_dir = Path(str(run_dir)) / "models" / "sft"
        if not (sft_dir / "config.json").is_file():
            from saferl.config import ConfigError

            raise ConfigError(f"job.run_dir: {str(run_dir)!r} holds no world run's SFT policy (no {sft_dir}/config.json)")
        model, _ = load_policy(sft_dir)
        model, tokenizer = model.eval(), build_world_tokenizer()
        source = f"the SFT policy of the run in {run_dir}"
    else:
        model, tokenizer = load_or_train_reference_policy(config.reference, cfg.world.cache_dir)
        reference = config.reference
        source = (f"an in-process SFT ({reference.steps} steps × {reference.batch_size} of {reference.num_examples} "
                  f"demonstrations, seed {reference.seed}): the training run's recipe, not its weights; "
                  "give job.run_dir=<run> to solve a run's own problem")
    world = build_exact_world(model, tokenizer, beta=config.beta, cost_limit=config.cost_limit,
                              cost_names=config.costs)
    print(f"reference: {source}")
    print_exact_optimum(world, [float(limit) for limit in cfg.job.frontier_limits], int(cfg.job.top_responses))
    solution = world.optimum()
    record = {
        "beta": config.beta,
        "cost_limit": config.cost_limit,
        "reference": source,
        "run_dir": None if run_dir is None else str(run_dir),
        "optimal_multiplier": solution.multiplier.tolist(),
        "objective": float(solution.objective),
        "expected_reward": float(solution.expected_reward),
        "expected_cost": solution.expected_cost.tolist(),
        "kl": float(solution.kl),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "exact_optimum.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {folder / 'exact_optimum.json'}")
    return float(solution.objective)


def world_data(cfg: DictConfig, folder: Path) -> float:
    """``job=world_data``: write the world's datasets and print their statistics."""
    import json

    from saferl.data.world import write_world_datasets
    from saferl.eval.world_report import print_statistics

    target = Path(cfg.job.output_dir) if cfg.job.output_dir is not None else folder / "world_data"
    paths = write_world_datasets(
        target,
        seed=int(cfg.seed),
        num_sft=int(cfg.job.num_sft),
        num_pairs_train=int(cfg.job.num_pairs_train),
        num_pairs_test=int(cfg.job.num_pairs_test),
        temperature=float(cfg.job.temperature),
        overwrite=bool(cfg.job.overwrite),
    )
    statistics = json.loads(paths.statistics.read_text())
    print_statistics(f"Built-in world preference data (train split) in {paths.folder}", statistics)
    for path in (paths.prompts, paths.sft, paths.preferences_train, paths.preferences_test):
        print(f"wrote {path}")
    return float(statistics["harmful_reward_cost_correlation"])


def run(cfg: DictConfig, output_dir: Path | None = None) -> float:
    """Validate the composed config, run its job and return the job's headline metric.

    Args:
        cfg: the composed config.
        output_dir: where the job may write files (Hydra's run folder under ``saferl``).
    """
    import json

    from saferl.config import validate

    config = validate(cfg)  # every mistake surfaces here, before any actor starts
    folder = config.output_dir or output_dir or Path.cwd()
    if config.job == "exact_optimum":
        return exact_optimum(cfg, config, folder)
    if config.job == "world_data":
        return world_data(cfg, folder)
    from saferl.learners.run_state import claim_run_folder

    claim_run_folder(folder, config.resume)  # a fresh run never overwrites another run's outputs
    folder.mkdir(parents=True, exist_ok=True)
    if config.job == "train":
        _start_rank_processes(config)
    tracker = _tracker(cfg, config, folder)
    try:
        if config.job == "evaluate":
            summary = evaluate(cfg, config, folder)
            (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            headline = float(summary["headline"])
        else:
            run_summary = train_with_restarts(config, folder, tracker)
            run_summary.write(folder)
            headline = run_summary.headline
    finally:
        tracker.finish()
    print(f"outputs in {folder}")
    from saferl.tracking import offline_run_folders

    for offline in offline_run_folders(tracker):
        print(f"W&B offline run: {offline} (upload it with `wandb sync {offline}`)")
    return headline


#: SFT steps that hide a second rank process's start (its imports: about 5 s of a CPU core) on a
#: 2-core machine: the default job's 300 steps take 7 s there. Measured side by side, one
#: process prestarted instead of two: the default job 58.1 and 64.9 s against 62.6 and 69.5 s;
#: ``debug=tiny`` (30 steps, 1 s) 25.6 / 26.5 / 23.6 s against 21.9 / 22.1 / 25.7 s.
LONG_SFT_STEPS = 100


def _start_rank_processes(config: RunConfig) -> None:
    """Start Ray and the rank processes that one-rank CPU groups share, before the driver's own
    start-up (the tracker, torch, transformers and DeepSpeed imports: seconds): each rank process
    spends seconds importing the same libraries, and started here it does so alongside the driver
    instead of after it. Only for the world and tiny setups, which start Ray and prestart their
    learner's processes themselves a little later (finding these); the hub's setup loads its
    models onto whatever ranks its groups ask for.

    Two at most: every learner runs a policy and a reference group (the learner's module, which
    says how many groups it needs, is one of the imports this overlaps). One for a fresh world run
    whose SFT is long (:data:`LONG_SFT_STEPS`): the SFT needs one, and the setup starts the rest as
    it begins, on the core it leaves idle; started here, the second would only slow the first
    one's start (the driver's imports and both processes' share the machine's cores). A short SFT
    would end before the second one is up, and the score models would wait for it."""
    from saferl.runtime.cluster import init_ray
    from saferl.runtime.pool import prestart_workers, shared_process_limit
    from saferl.setups.settings import TinySettings, WorldSettings

    resources = config.resources
    if not isinstance(config.setup, WorldSettings | TinySettings):
        return
    init_ray(resources.runtime)
    long_sft_first = (isinstance(config.setup, WorldSettings) and config.setup.from_run is None and not config.resume
                      and config.setup.sft.steps >= LONG_SFT_STEPS)
    if count := min(shared_process_limit(resources.runtime, resources.group), 1 if long_sft_first else 2):
        prestart_workers(resources.runtime, resources.group, count)


def _tracker(cfg: DictConfig, config: RunConfig, folder: Path):
    """The run's tracker from the ``logger`` section (W&B offline by default)."""
    from saferl import tracking

    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger = dict(config.logger)
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        # A sweep's runs share a W&B group (the multirun folder) and are named by their overrides.
        if logger.get("group") is None and str(hydra_cfg.mode) == "RunMode.MULTIRUN":
            logger["group"] = Path(hydra_cfg.sweep.dir).name
        if logger.get("name") is None and hydra_cfg.job.override_dirname:
            logger["name"] = hydra_cfg.job.override_dirname
    resolved["logger"] = logger  # the effective settings (with the sweep's group and run name)
    return tracking.build_tracker(logger, folder, resolved, tracking.run_metadata(), resume=config.resume)


def evaluate(cfg: DictConfig, config: RunConfig, folder: Path) -> dict:
    """``job=evaluate``: the arena of a trained policy against its reference (see
    ``conf/job/evaluate.yaml``); returns the summary (headline: the policy's reward win rate)."""

    from saferl.config import ConfigError
    from saferl.data.local_paths import looks_like_local_path
    from saferl.eval.arena import TRUTH_JUDGE, print_arena, write_arena
    from saferl.eval.arena_run import ArenaSettings, run_arena, world_arena_prompts
    from saferl.eval.judge_settings import parse_judges
    from saferl.learners.result import SummaryRecord

    job = cfg.job
    run_dir = Path(job.run_dir) if job.run_dir is not None else None
    if run_dir is not None and not (run_dir / "summary.json").is_file():
        raise ConfigError(f"job.run_dir: {str(run_dir)!r} holds no finished saferl run (no summary.json)")

    def pick(key: str, from_run: str | None, from_model: str | None) -> str:
        value = job.get(key)
        if value is None and run_dir is not None and from_run is not None:
            value = str(run_dir / from_run)
        if value is None:
            value = from_model
        if value is None:
            raise ConfigError(f"job.{key}: required (give job.{key}=<folder or hub name>, or job.run_dir=<run folder>)")
        if looks_like_local_path(str(value)) and not Path(value).expanduser().exists():
            # Said here, before any model loads, rather than by a rank's hub client after start-up.
            raise ConfigError(f"job.{key}: the local path {str(value)!r} does not exist; give a model folder "
                              "written by save_pretrained, or a hub name (owner/name)")
        return str(value)

    policy_dir = None
    if run_dir is not None:
        policy_dir = SummaryRecord.read(run_dir / "summary.json").policy_dir
    settings = ArenaSettings(
        responses_per_prompt=int(job.responses_per_prompt),
        generation=config.generation,
        seed=int(cfg.seed),
        rows_per_call=int(job.rows_per_call),
    )
    from saferl.setups.tiny import TinySettings
    from saferl.setups.world import WorldSettings

    resources = config.resources
    entries = job.get("judges")
    judges = parse_judges(OmegaConf.to_container(entries, resolve=True) if OmegaConf.is_config(entries) else entries)
    for index, entry in enumerate(judges):
        if entry.kind == "ground_truth" and not isinstance(config.setup, WorldSettings):
            raise ConfigError(f"job.judges[{index}]: ground_truth exists on the built-in world only (this run's setup "
                              "has no ground truth); judge with a llamaguard or classifier model instead")
    if isinstance(config.setup, WorldSettings):  # the built-in world: its tokenizer, prompts and ground truth
        from saferl.data.world import build_world_tokenizer
        from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
        from saferl.setups.world import world_truth

        result = run_arena(
            pick("policy", policy_dir, None),
            pick("reference", "models/sft", None),
            world_arena_prompts(),
            build_world_tokenizer(),
            {"reward": pick("reward_model", "models/reward_model", None),
             "cost": pick("cost_model", "models/cost_model", None)},
            settings,
            template=WORLD_TEMPLATE,
            max_prompt_length=MAX_SEQUENCE_LENGTH,
            truth={"reward": world_truth("reward"), "cost": world_truth("cost")},
            runtime=resources.runtime,
            group=resources.group,
            judges=judges,
            deepspeed=resources.deepspeed,
        )
    elif isinstance(config.setup, TinySettings):  # the world's tiny models on a data set: the run's own
        from saferl.data import load_prompt_dataset
        from saferl.models import load_tokenizer
        from saferl.setups.hub import max_prompt_length

        data = config.setup
        reference = pick("reference", "models/sft", None)
        prompts = [record.prompt for record in load_prompt_dataset(
            data.path, split=data.test_split, revision=data.data_revision, deduplicate=True).records]
        result = run_arena(
            pick("policy", policy_dir, None),
            reference,
            prompts,
            load_tokenizer(reference),
            {"reward": pick("reward_model", "models/reward_model", None),
             "cost": pick("cost_model", "models/cost_model", None)},
            settings,
            template=data.template,
            max_prompt_length=max_prompt_length(data.max_length, data.generation.max_new_tokens),
            runtime=resources.runtime,
            group=resources.group,
            judges=judges,
        )
    else:  # a hub setup: the data's test split, the model group's score models
        from saferl.data import load_prompt_dataset
        from saferl.models import load_tokenizer

        hub = config.setup
        reference = pick("reference", None, hub.policy)
        prompts = [record.prompt for record in load_prompt_dataset(
            hub.path, split=hub.test_split, revision=hub.data_revision).records]
        spec = hub.model_spec(reference)
        result = run_arena(
            pick("policy", policy_dir, None),
            spec,
            prompts,
            load_tokenizer(reference, revision=hub.revision, trust_remote_code=hub.trust_remote_code),
            {"reward": pick("reward_model", None, hub.reward_model), "cost": pick("cost_model", None, hub.cost_model)},
            settings,
            template=hub.template,
            max_prompt_length=hub.max_length,
            runtime=resources.runtime,
            group=resources.group,
            judges=judges,
        )
    print_arena(result)
    for path in write_arena(result, folder):
        print(f"wrote {path}")
    judge = result.judgement(TRUTH_JUDGE) if any(j.judge == TRUTH_JUDGE for j in result.judgements) else result.judgements[0]
    arena = result.to_dict()
    record = SummaryRecord(method="arena", beta=config.beta, cost_limit=config.cost_limits, trained=None,
                           headline=float(judge.policy.reward_win_rate))
    return {**record.to_dict(), "arena": {"rows": arena["rows"], "transitions": arena["transitions"],
                                          "safety_judges": arena["safety_judges"]}}


def _wants_traceback() -> bool:
    return _verbose or os.environ.get("HYDRA_FULL_ERROR") == "1"


def _fail(error: BaseException, verbose: bool) -> None:
    """Print a usage error's message alone (its traceback too when asked) and exit with 2."""
    from saferl.tracking import redact_secrets

    if verbose:
        traceback.print_exception(error)
    print(f"saferl: error: {redact_secrets(str(error))}", file=sys.stderr)  # an override may hold a key
    sys.exit(USAGE_EXIT)


def _usage_errors() -> tuple[type[BaseException], ...]:
    """The exceptions whose message says all: config, data and command-line mistakes."""
    from saferl.config import ConfigError
    from saferl.data.errors import DataError
    from saferl.learners.run_state import CorruptCheckpointError, RunFolderInUseError

    return (UsageError, ConfigError, DataError, RunFolderInUseError, CorruptCheckpointError)


def resume_command(task_overrides: list[str], run_folder: Path, hydra_folder: Path, multirun: bool) -> str:
    """The command that continues an interrupted job: its own overrides, the run folder and
    ``resume=auto``.

    Args:
        task_overrides: the job's overrides (``hydra.overrides.task``: for a sweep's job, its
            own values).
        run_folder: where the job writes its run (``output_dir``, else Hydra's run folder).
        hydra_folder: Hydra's folder for the job.
        multirun: the job is one of a sweep's (the command runs it alone: the ``sweep`` preset,
            which would make it a sweep again, is left out).
    """
    kept = [o for o in task_overrides
            if o.split("=", 1)[0].lstrip("+~") not in ("resume", "hydra.run.dir")
            and not (multirun and o.split("=", 1)[0] == "sweep")]
    words = ["saferl", *kept]
    if run_folder.resolve() == hydra_folder.resolve():  # not output_dir=...: the folder is Hydra's
        words.append(f"hydra.run.dir={_shown_path(hydra_folder)}")
    words.append("resume=auto")
    return shlex.join(words)


def _shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it, else absolute."""
    path = path.resolve()
    here = Path.cwd().resolve()
    return str(path.relative_to(here)) if path.is_relative_to(here) else str(path)


def interrupted_line(run_folder: Path, command: str) -> str:
    """The one line an interrupted run prints: what was saved and how to continue."""
    from saferl.learners.run_state import saved_state

    saved = saved_state(run_folder)
    return f"saferl: interrupted; saved: {saved}; continue with: {command}"


def _on_interrupt(signum, frame) -> None:
    """SIGINT while a job runs: the first stops the run (its cleanup still runs); a second one,
    during that cleanup, exits at once."""
    global _interrupted
    if _interrupted:
        if _interrupt_line is not None:
            print(_interrupt_line() + " (stopped without cleaning up)", file=sys.stderr, flush=True)
        os._exit(INTERRUPTED_EXIT)
    _interrupted = True
    raise KeyboardInterrupt


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_task(cfg: DictConfig) -> float:
    """The function Hydra calls once per job; returns the job's headline metric."""
    global _interrupt_line, _interrupted
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    run_folder = Path(str(cfg.output_dir)) if cfg.get("output_dir") is not None else folder
    multirun = str(hydra_cfg.mode) == "RunMode.MULTIRUN"
    _redact_hydra_files(hydra_cfg)
    from saferl.tracking import redact_secrets

    command = redact_secrets(resume_command(list(hydra_cfg.overrides.task), run_folder, folder, multirun))
    _interrupt_line = lambda: interrupted_line(run_folder, command)  # noqa: E731
    _interrupted = False
    try:
        previous = signal.signal(signal.SIGINT, _on_interrupt)
    except ValueError:  # not the main thread (a launcher's worker): Ctrl-C is not ours to handle
        previous = None
    try:
        if OmegaConf.select(cfg, "job.name") in ("train", "evaluate"):  # the jobs that start Ray
            from saferl.cli_quiet import quiet_console

            quiet_console()  # expected library warnings go to cli.log only
        return run(cfg, output_dir=folder)
    except BaseException as error:
        # Ctrl-C: whatever the run raised while it stopped (KeyboardInterrupt, or an actor that
        # went down with it) is the interruption, said in one line without a traceback.
        if _interrupted or isinstance(error, KeyboardInterrupt):
            if _wants_traceback():
                traceback.print_exception(error)
            print(_interrupt_line(), file=sys.stderr, flush=True)
            sys.exit(INTERRUPTED_EXIT)
        from saferl.runtime.recovery import RestartsExhaustedError

        if isinstance(error, RestartsExhaustedError):  # said in one line, with the command that goes on
            if _wants_traceback():
                traceback.print_exception(error)
            print(f"saferl: error: {error.reason}; continue with: {command}", file=sys.stderr, flush=True)
            sys.exit(1)
        # A mistake found only now (a job.run_dir without a run, a data file read by the job):
        # said as the preflight says it, not as a crash, and without the folder Hydra made for it.
        if isinstance(error, _usage_errors()):
            _remove_if_only_hydra(folder)
            _fail(error, _wants_traceback())
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        _interrupt_line = None


def _redact_hydra_files(hydra_cfg) -> None:
    """Hydra writes the job's config and overrides (``.hydra/*.yaml``, a sweep's
    ``multirun.yaml``) before the job starts: a credential given on the command line (e.g.
    ``hydra.job.env_set.WANDB_API_KEY=...``) is taken out of them at once
    (:func:`saferl.tracking.redact_secrets`)."""
    from saferl.tracking import redact_secrets

    files: list[Path] = []
    if hydra_cfg.output_subdir is not None:
        files += (Path(hydra_cfg.runtime.output_dir) / str(hydra_cfg.output_subdir)).glob("*.yaml")
    if str(hydra_cfg.mode) == "RunMode.MULTIRUN":
        files.append(Path(str(hydra_cfg.sweep.dir)) / "multirun.yaml")
    for path in files:
        if path.is_file() and (text := path.read_text()) != (redacted := redact_secrets(text)):
            path.write_text(redacted)


def _remove_if_only_hydra(folder: Path) -> None:
    """Remove a run folder that holds nothing but what Hydra wrote (``.hydra/``, the job's log):
    a job that stopped on a usage error leaves no empty ``outputs/<date>/<time>/`` behind. A folder
    with anything else in it (a resumed run's outputs) is left alone."""
    import shutil

    entries = list(folder.iterdir()) if folder.is_dir() else []
    if entries and all(entry.name == ".hydra" or entry.suffix == ".log" for entry in entries):
        shutil.rmtree(folder)
        # Hydra's default layout, outputs/<date>/<time>: the date and outputs/ folders too, if now empty.
        outputs = Path.cwd() / "outputs"
        for parent in folder.resolve().parents:
            if not parent.is_relative_to(outputs) or any(parent.iterdir()):
                break
            parent.rmdir()


def main() -> None:
    """Entry point of the ``saferl`` console script: ``--help``, then the preflight checks, then
    Hydra (which makes the run folder and calls :func:`run`)."""
    from hydra._internal.utils import get_args_parser

    from saferl.cli_help import render_help

    global _verbose
    argv = sys.argv[1:]
    _verbose = "--verbose" in argv
    argv = [arg for arg in argv if arg != "--verbose"]  # ours, not Hydra's
    if "--help" in argv or "-h" in argv:
        print(render_help())
        return
    args = get_args_parser().parse_args(argv)
    # Hydra's own requests (print the config, shell completion, ...) and other config trees go
    # straight to Hydra.
    hydra_request = (args.cfg or args.info or args.hydra_help or args.shell_completion or args.resolve
                     or args.experimental_rerun or args.config_path or args.config_name or args.config_dir)
    try:
        if not hydra_request:
            try:
                from saferl.cli_preflight import preflight, resumed_hydra_subdir

                preflight(args.overrides, multirun=args.multirun)
                subdir = None if args.multirun else resumed_hydra_subdir(args.overrides)
            except UsageError as error:
                _fail(error, _wants_traceback())
            if subdir is not None:  # the original run's .hydra/ files stay as they were
                argv.append(f"hydra.output_subdir={subdir}")
        sys.argv = [sys.argv[0], *argv]
        _hydra_task()
    except KeyboardInterrupt:  # Ctrl-C before a job started (a job says what it saved itself)
        print("saferl: interrupted before the run started; nothing was saved", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)


def console_main() -> None:
    """The ``saferl`` console script (and ``python -m saferl.cli``): :func:`main`, then the end of
    the process. ``main`` itself returns, for callers in a process that goes on."""
    main()
    _exit_after_cleanup()


def _exit_after_cleanup() -> None:
    """End the process once its jobs are done: run every exit handler as a normal exit does
    (Ray's shutdown of the local cluster, W&B's, logging's, temporary folders'), flush the
    console, then leave without the interpreter's teardown of its modules. With torch,
    transformers and Ray loaded that teardown takes about 1.6 s on a 2-core machine and saves
    nothing: every output is written and closed by then. Only a process that ends here may call
    it: it never returns."""
    import atexit

    atexit._run_exitfuncs()  # CPython's normal-exit handlers, in their usual (reverse) order
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    console_main()
