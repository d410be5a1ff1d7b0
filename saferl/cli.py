"""The ``saferl`` command: a thin Hydra entry point that dispatches on ``job.name``.

``saferl`` composes ``conf/config.yaml``; every key can be overridden on the command line
(``saferl world.cost_limit=-1.0``), and ``saferl -m ...`` sweeps. The function Hydra calls returns
the job's headline metric so that a sweeper can optimise it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from saferl.config import ConfigError, RunConfig, validate

# The config tree lives at the repository root (``conf/``), beside the package, as the design card
# lays out; the editable install the README uses keeps it there.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")



def _progress_bar():
    """A rich progress display and the ``progress(stage, step, total, metrics)`` callback the
    learners call."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    bar = Progress(*columns, transient=False)
    tasks: dict[str, int] = {}

    def progress(stage: str, step: int, total: int, metrics: dict[str, float]) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, status="")
        shown = {
            k.split("/")[-1]: v
            for k, v in metrics.items()
            if k.endswith(("loss", "accuracy", "value_0", "estimate_0", "score"))
        }
        bar.update(
            tasks[stage],
            completed=step,
            status=" ".join(f"{key}={value:.3f}" for key, value in list(shown.items())[:4]),
        )

    return bar, progress


def _score(value) -> dict | None:
    return None if value is None else asdict(value)


def _summary(config: RunConfig, method: str, headline: float, trained=None, reference=None, optimum=None,
             multiplier=(), optimal_multiplier=(), frontier_csv: Path | None = None, folder: Path | None = None,
             policy_dir: Path | None = None) -> dict:
    """The run's ``summary.json`` (what ``saferl-sweep-summary`` reads)."""
    pipeline = config.pipeline
    return {
        "method": method,
        "beta": pipeline.world_beta if pipeline else None,
        "cost_limit": pipeline.cost_limit if pipeline else None,
        "headline": float(headline),
        "trained": _score(trained),
        "reference": _score(reference),
        "optimum": _score(optimum),
        "multiplier": [float(v) for v in multiplier],
        "optimal_multiplier": [float(v) for v in (optimal_multiplier or ())],
        "predicted_frontier_csv": _relative(frontier_csv, folder),
        "policy_dir": _relative(policy_dir, folder),  # the trained policy (what job=evaluate job.run_dir=... reads)
    }


def _relative(path: Path | None, folder: Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve().relative_to(folder.resolve()))


def train(config: RunConfig, folder: Path, tracker) -> dict:
    """``job=train``: the learner's whole pipeline on the built-in world; returns the summary."""
    from saferl.eval.pipeline_report import (
        exact_comparison_table,
        print_mocan_result,
        print_pipeline_result,
    )
    from saferl.eval.world_report import report_console
    from saferl.learners.pipeline import evaluate_exact, prepare_models, run_pipeline

    if config.pipeline is None:
        return train_hub(config, folder, tracker)
    settings = config.pipeline
    bar, progress = _progress_bar()
    with bar:
        if config.learner == "ppo_lag":
            result = run_pipeline(
                settings, folder, tracker=tracker, progress=progress,
                checkpoint_every=config.checkpoint_every, resume=config.resume, reuse_from=config.reuse_from,
            )
        else:
            prepared = prepare_models(
                settings, folder, tracker, progress, resume=config.resume, reuse_from=config.reuse_from
            )
    if config.learner == "ppo_lag":
        print_pipeline_result(result, settings.cost_limit, settings.world_beta)
        return _summary(config, "ppo_lag", result.trained.normalised_gap, result.trained, result.reference,
                        result.optimum, result.multiplier, result.optimal_multiplier, folder=folder,
                        policy_dir=folder / "models" / "policy_ppo_lag")
    if config.learner in ("mocan", "pecan"):
        from saferl.learners.mocan import run_mocan
        from saferl.learners.pecan import run_pecan

        if config.learner == "mocan":
            result = run_mocan(settings, config.mocan, prepared, folder)
            print_mocan_result(result, settings.cost_limit, settings.world_beta)
        else:
            result = run_pecan(settings, config.pecan, prepared, folder)
            print_mocan_result(result, settings.cost_limit, settings.world_beta, method="PeCAN",
                               prediction_units="implicit units")
            print(f"implicit safety cost of the reference samples: {result.reference_implicit_cost:.4f}; "
                  f"dual limit: {', '.join(f'{v:.4f}' for v in result.dual.cost_limit.tolist())} "
                  f"(margin {config.pecan.margin}, {'consistent' if config.pecan.consistent else 'published'} labelling)")
        print(f"predicted frontier: {result.frontier_files[0]} and {result.frontier_files[1]}")
        headline = result.trained.normalised_gap if result.trained is not None else float(result.dual.objective)
        # PeCAN's prediction is in implicit units: the sweep plot shows only ground-truth-unit curves.
        frontier = result.frontier_files[0] if config.learner == "mocan" else None
        if result.trained is None:
            policy_dir = None
        elif config.learner == "mocan":
            policy_dir = folder / "mocan" / "models" / f"policy_{'dpo' if config.mocan.stage == 'dpo' else 'ppo_lag'}"
        else:
            policy_dir = folder / "pecan" / "models" / "policy_dpo"
        return _summary(config, config.learner, headline, result.trained, result.reference, result.optimum,
                        result.dual.multiplier.tolist(), result.optimal_multiplier, frontier, folder, policy_dir)
    from saferl.learners.offline import run_offline_preference

    offline = config.preference
    policy_dir, _ = run_offline_preference(settings, offline, prepared, folder)
    reference, trained, optimum, optimal_multiplier = evaluate_exact(settings, prepared.sft_dir, policy_dir)
    report_console().print(exact_comparison_table(
        f"{offline.loss} on the built-in world ({offline.ordering} pairs), exact evaluation: "
        f"β = {settings.world_beta}, cost limit d = {settings.cost_limit}",
        (
            ("reference (SFT)", "—", reference),
            (offline.loss, "—", trained),
            ("exact optimum π_λ*", ", ".join(f"{v:.4f}" for v in optimal_multiplier), optimum),
        ),
    ))
    return _summary(config, f"preference:{offline.loss}", trained.normalised_gap, trained, reference, optimum,
                    (), optimal_multiplier, folder=folder, policy_dir=policy_dir)


def train_hub(config: RunConfig, folder: Path, tracker) -> dict:
    """``job=train`` on a published setup's hub models and data (``model.source=hub``): the
    learner's hub recipe (:mod:`saferl.learners.hub`); returns the summary. A hub setup has no
    ground truth, so the headline is the learner's own: the last rollout's reward (ppo_lag), the
    last step's loss (preference losses), or the dual's predicted objective (mocan, pecan)."""
    from saferl.learners import hub as recipes

    hub = config.hub
    bar, progress = _progress_bar()
    ranks = (config.num_ranks, config.cpus_per_rank, config.gpus_per_rank)  # every role's group shape
    if config.learner == "preference":
        offline = config.preference
        with bar:
            run = recipes.run_hub_preference(hub, offline, config.beta, config.deepspeed, config.runtime, *ranks,
                                             folder, tracker=tracker, progress=progress, seed=config.seed)
        dropped = f"; {run.num_dropped_pairs} dropped (prompt fills data.max_length)" if run.num_dropped_pairs else ""
        print(f"{offline.loss} ({run.ordering} pairs): {run.num_pairs} pairs{dropped}, {len(run.history)} steps, "
              f"final loss {run.final_loss:.4f}")
        summary = _summary(config, f"preference:{offline.loss}", run.final_loss, folder=folder,
                           policy_dir=run.policy_dir)
    elif config.learner in ("mocan", "pecan"):
        with bar:
            if config.learner == "mocan":
                run = recipes.run_hub_mocan(
                    hub, config.mocan, config.beta, config.cost_limit, config.ppo, config.policy_learning_rate,
                    config.critic_learning_rate, config.deepspeed, config.generation, config.runtime, *ranks, folder,
                    tracker=tracker, progress=progress, seed=config.seed,
                )
            else:
                run = recipes.run_hub_pecan(
                    hub, config.pecan, config.beta, config.deepspeed, config.generation, config.runtime, *ranks, folder,
                    tracker=tracker, progress=progress, seed=config.seed,
                )
        dual = run.dual
        units = "cost-model units" if config.learner == "mocan" else "implicit units"
        print(f"λ* = {', '.join(f'{v:.4f}' for v in dual.multiplier.tolist())} at limit d = "
              f"{', '.join(f'{v:.4f}' for v in dual.cost_limit.tolist())} ({units}; {len(run.prompts)} prompts × "
              f"{run.rewards.shape[1]} samples): predicted E[r] = {dual.expected_reward.item():.4f}, "
              f"E[c] = {', '.join(f'{v:.4f}' for v in dual.expected_cost.tolist())}, KL = {dual.kl.item():.4f}")
        print(f"predicted frontier: {run.frontier_files[0]} and {run.frontier_files[1]}")
        if run.policy_dir is not None:
            print(f"aligned policy: {run.policy_dir}")
        # PeCAN's prediction is in implicit units: the sweep plot shows only cost-model-unit curves.
        frontier = run.frontier_files[0] if config.learner == "mocan" else None
        summary = _summary(config, config.learner, float(dual.objective), multiplier=dual.multiplier.tolist(),
                           frontier_csv=frontier, folder=folder, policy_dir=run.policy_dir)
    else:
        with bar:
            run = recipes.run_hub_ppo_lag(
                hub, config.ppo, config.multiplier, config.cost_limit,
                config.policy_learning_rate, config.critic_learning_rate, config.deepspeed,
                config.generation, config.runtime, config.num_ranks, config.cpus_per_rank,
                config.gpus_per_rank, folder, tracker=tracker, progress=progress,
                checkpoint_every=config.checkpoint_every, resume=config.resume, seed=config.seed,
            )
        print(f"final λ: {', '.join(f'{v:.4f}' for v in run.multiplier)}; last rollout: reward {run.reward:.4f}, "
              f"cost {', '.join(f'{v:.4f}' for v in run.cost)} (limit {config.cost_limit}); "
              f"{run.num_prompts} prompts, {len(run.history)} iterations")
        summary = _summary(config, "ppo_lag", run.reward, multiplier=run.multiplier, folder=folder,
                           policy_dir=run.policy_dir)
    summary.update(beta=config.beta, cost_limit=config.cost_limit)
    return summary


def exact_optimum(cfg: DictConfig, config: RunConfig) -> float:
    """``job=exact_optimum``: the world's exact constrained optimum and predicted frontier."""
    from saferl.data.world import build_exact_world, load_or_train_reference_policy
    from saferl.eval.world_report import print_exact_optimum

    model, tokenizer = load_or_train_reference_policy(config.pipeline.reference, cfg.world.cache_dir)
    world = build_exact_world(model, tokenizer, beta=config.pipeline.world_beta, cost_limit=config.pipeline.cost_limit)
    print_exact_optimum(world, [float(limit) for limit in cfg.job.frontier_limits], int(cfg.job.top_responses))
    return float(world.optimum().objective)


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

    config = validate(cfg)  # every mistake surfaces here, before any actor starts
    folder = config.output_dir or output_dir or Path.cwd()
    if config.job == "exact_optimum":
        return exact_optimum(cfg, config)
    if config.job == "world_data":
        return world_data(cfg, folder)
    from saferl.learners.run_state import claim_run_folder

    claim_run_folder(folder, config.resume)  # a fresh run never overwrites another run's outputs
    folder.mkdir(parents=True, exist_ok=True)
    tracker = _tracker(cfg, config, folder)
    try:
        if config.job == "evaluate":
            summary = evaluate(cfg, config, folder)
        else:
            summary = train(config, folder, tracker)
    finally:
        tracker.finish()
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"outputs in {folder}")
    return float(summary["headline"])


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
    return tracking.build_tracker(logger, folder, resolved, tracking.run_metadata())


def evaluate(cfg: DictConfig, config: RunConfig, folder: Path) -> dict:
    """``job=evaluate``: the arena of a trained policy against its reference (see
    ``conf/job/evaluate.yaml``); returns the summary (headline: the policy's reward win rate)."""
    import json

    from saferl.eval.arena import TRUTH_JUDGE, print_arena, write_arena
    from saferl.eval.arena_run import ArenaSettings, run_arena, world_arena_prompts

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
        return str(value)

    policy_dir = None
    if run_dir is not None:
        policy_dir = json.loads((run_dir / "summary.json").read_text()).get("policy_dir")
    settings = ArenaSettings(
        responses_per_prompt=int(job.responses_per_prompt),
        generation=config.generation,
        seed=int(cfg.seed),
        rows_per_call=int(job.rows_per_call),
    )
    if config.pipeline is not None:  # the built-in world: its tokenizer, prompts and ground truth
        from saferl.data.world import build_world_tokenizer
        from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
        from saferl.learners.pipeline import _group, world_truth

        pipeline = config.pipeline
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
            runtime=pipeline.runtime,
            group=_group(pipeline),
            deepspeed=pipeline.deepspeed,
        )
    else:  # a hub setup: the data's test split, the model group's score models
        from saferl.data import load_prompt_dataset
        from saferl.models import ModelSpec, load_tokenizer
        from saferl.runtime import GroupSpec

        hub = config.hub
        reference = pick("reference", None, hub.policy)
        prompts = [record.prompt for record in load_prompt_dataset(
            hub.data_path, split=hub.test_split, revision=hub.data_revision).records]
        spec = ModelSpec(name_or_path=reference, revision=hub.model_revision, dtype=hub.dtype,
                         trust_remote_code=hub.trust_remote_code)
        result = run_arena(
            pick("policy", policy_dir, None),
            spec,
            prompts,
            load_tokenizer(reference, revision=hub.model_revision, trust_remote_code=hub.trust_remote_code),
            {"reward": pick("reward_model", None, hub.reward_model), "cost": pick("cost_model", None, hub.cost_model)},
            settings,
            template=hub.template,
            max_prompt_length=hub.max_length,
            runtime=config.runtime,
            group=GroupSpec(num_ranks=config.num_ranks, cpus_per_rank=config.cpus_per_rank,
                            gpus_per_rank=config.gpus_per_rank),
        )
    print_arena(result)
    for path in write_arena(result, folder):
        print(f"wrote {path}")
    judge = result.judgement(TRUTH_JUDGE) if any(j.judge == TRUTH_JUDGE for j in result.judgements) else result.judgements[0]
    summary = _summary(config, "arena", judge.policy.reward_win_rate)
    arena = result.to_dict()
    summary["arena"] = {"rows": arena["rows"], "transitions": arena["transitions"]}
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Entry point of the ``saferl`` console script."""
    return run(cfg, output_dir=Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
