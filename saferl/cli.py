"""The ``saferl`` command: a thin Hydra entry point that dispatches on ``job.name``.

``saferl`` composes ``conf/config.yaml``; every key can be overridden on the command line
(``saferl world.cost_limit=-1.0``), and ``saferl -m ...`` sweeps. The function Hydra calls returns
the job's headline metric so that a sweeper can optimise it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

# The config tree lives at the repository root (``conf/``), beside the package, as the design card
# lays out; the editable install the README uses keeps it there.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

JOBS = ("pipeline", "mocan", "pecan", "preference", "exact_optimum", "world_data")


def reference_config(cfg: DictConfig):
    """``world.reference`` as a :class:`saferl.data.world.ReferenceConfig`; unknown keys are errors."""
    from dataclasses import fields

    from saferl.data.world import ReferenceConfig

    values = OmegaConf.to_container(cfg.world.reference, resolve=True)
    allowed = {field.name for field in fields(ReferenceConfig)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"world.reference: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return ReferenceConfig(**values)


def _section(node: DictConfig, key: str, cls, drop: tuple[str, ...] = (), **extra):
    """Build dataclass ``cls`` from config section ``key`` (less the ``drop`` keys); unknown keys
    and bad values raise a ValueError naming the dotted key."""
    from dataclasses import fields

    values = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in drop}
    allowed = {field.name for field in fields(cls)} - set(extra)
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"{key}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    try:
        return cls(**values, **extra)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{key}: {error}") from error


def pipeline_settings(cfg: DictConfig):
    """The typed :class:`saferl.learners.pipeline.PipelineSettings` of a composed config."""
    from saferl.learners.pipeline import PipelineSettings, StageSettings
    from saferl.learners.ppo_lag import PPOSettings
    from saferl.runtime import RuntimeSpec

    job, runtime = cfg.job, cfg.runtime
    return PipelineSettings(
        world_beta=float(cfg.world.beta),
        cost_limit=float(cfg.world.cost_limit),
        reference=reference_config(cfg),
        num_sft=int(job.data.num_sft),
        num_pairs_train=int(job.data.num_pairs_train),
        num_pairs_test=int(job.data.num_pairs_test),
        label_temperature=float(job.data.label_temperature),
        sft=_section(job.sft, "job.sft", StageSettings),
        reward_model=_section(job.reward_model, "job.reward_model", StageSettings),
        cost_model=_section(job.cost_model, "job.cost_model", StageSettings),
        ppo=_section(
            job.ppo,
            "job.ppo",
            PPOSettings,
            ("policy_learning_rate", "critic_learning_rate"),
            seed=int(cfg.seed),
        ),
        policy_learning_rate=float(job.ppo.policy_learning_rate),
        critic_learning_rate=float(job.ppo.critic_learning_rate),
        multiplier=OmegaConf.to_container(job.multiplier, resolve=True),
        scorers=str(job.scorers),
        calibrate_scorers=bool(job.calibrate_scorers),
        score_regularization=float(job.score_regularization),
        runtime=_section(
            runtime, "runtime", RuntimeSpec, ("num_ranks", "cpus_per_rank", "zero_stage")
        ),
        zero_stage=int(runtime.zero_stage),
        num_ranks=int(runtime.num_ranks),
        cpus_per_rank=float(runtime.cpus_per_rank),
        seed=int(cfg.seed),
    )


def run_pipeline_job(cfg: DictConfig, output_dir: Path) -> float:
    """The default job: the whole pipeline with progress bars and the final table."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from saferl.eval.pipeline_report import print_pipeline_result
    from saferl.learners.pipeline import run_pipeline
    from saferl.tracking import JsonlTracker

    settings = pipeline_settings(cfg)
    folder = Path(cfg.job.output_dir) if cfg.job.output_dir is not None else output_dir
    tracker = JsonlTracker(folder / "metrics.jsonl")
    columns = (
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    tasks: dict[str, int] = {}
    with Progress(*columns, transient=False) as bar:

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

        result = run_pipeline(settings, folder, tracker=tracker, progress=progress)
    print_pipeline_result(result, settings.cost_limit, settings.world_beta)
    print(f"outputs in {folder}")
    return float(result.trained.normalised_gap)


def run_mocan_job(cfg: DictConfig, output_dir: Path) -> float:
    """MoCAN on the world: the pipeline's stages 1–4, then the dual and one alignment (or only the
    predicted frontier with ``job.mocan.predict_only=true``)."""
    from saferl.eval.pipeline_report import print_mocan_result
    from saferl.learners.mocan import MocanSettings, run_mocan
    from saferl.learners.pipeline import prepare_models

    settings = pipeline_settings(cfg)
    mocan = _section(cfg.job.mocan, "job.mocan", MocanSettings, seed=int(cfg.seed))
    mocan = replace(mocan, frontier_grid=tuple(float(v) for v in mocan.frontier_grid))
    folder = Path(cfg.job.output_dir) if cfg.job.output_dir is not None else output_dir
    prepared = prepare_models(settings, folder)
    result = run_mocan(settings, mocan, prepared, folder)
    print_mocan_result(result, settings.cost_limit, settings.world_beta)
    print(f"predicted frontier: {result.frontier_files[0]} and {result.frontier_files[1]}")
    return float(result.trained.normalised_gap) if result.trained is not None else float(result.dual.objective)


def run_pecan_job(cfg: DictConfig, output_dir: Path) -> float:
    """PeCAN on the world: the pipeline's stages 1–4 (data and SFT are what PeCAN uses), then the
    implicit DPO models, the dual in their units and one alignment (or only the predicted frontier
    with ``job.pecan.predict_only=true``)."""
    from saferl.eval.pipeline_report import print_mocan_result
    from saferl.learners.pecan import run_pecan
    from saferl.learners.pipeline import prepare_models

    settings = pipeline_settings(cfg)
    pecan = pecan_settings(cfg)
    folder = Path(cfg.job.output_dir) if cfg.job.output_dir is not None else output_dir
    prepared = prepare_models(settings, folder)
    result = run_pecan(settings, pecan, prepared, folder)
    print_mocan_result(result, settings.cost_limit, settings.world_beta, method="PeCAN",
                       prediction_units="implicit units")
    print(f"implicit safety cost of the reference samples: {result.reference_implicit_cost:.4f}; "
          f"dual limit: {', '.join(f'{v:.4f}' for v in result.dual.cost_limit.tolist())} "
          f"(margin {pecan.margin}, {'consistent' if pecan.consistent else 'published'} labelling)")
    print(f"predicted frontier: {result.frontier_files[0]} and {result.frontier_files[1]}")
    return float(result.trained.normalised_gap) if result.trained is not None else float(result.dual.objective)


def pecan_settings(cfg: DictConfig):
    """The typed :class:`saferl.learners.pecan.PecanSettings` of ``job.pecan`` (ValueError naming
    the key on unknown keys or bad values)."""
    from saferl.learners.pecan import PecanSettings

    pecan = _section(cfg.job.pecan, "job.pecan", PecanSettings, seed=int(cfg.seed))
    return replace(pecan, frontier_grid=tuple(float(v) for v in pecan.frontier_grid))


def run_preference_job(cfg: DictConfig, output_dir: Path) -> float:
    """One preference loss on the world: the pipeline's stages 1–4, the loss, the exact evaluation."""
    from saferl.eval.pipeline_report import exact_comparison_table
    from saferl.eval.world_report import report_console
    from saferl.learners.offline import OfflineSettings, run_offline_preference
    from saferl.learners.pipeline import evaluate_exact, prepare_models

    settings = pipeline_settings(cfg)
    offline = _section(cfg.job.preference, "job.preference", OfflineSettings, seed=int(cfg.seed))
    folder = Path(cfg.job.output_dir) if cfg.job.output_dir is not None else output_dir
    prepared = prepare_models(settings, folder)
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
    return float(trained.normalised_gap)


def run(cfg: DictConfig, output_dir: Path | None = None) -> float:
    """Run the job named by ``cfg.job.name`` and return its headline metric.

    Args:
        cfg: the composed config.
        output_dir: where the job may write files (Hydra's run folder under ``saferl``).
    """
    name = cfg.job.name
    if name == "pipeline":
        return run_pipeline_job(cfg, output_dir or Path.cwd())
    if name == "mocan":
        return run_mocan_job(cfg, output_dir or Path.cwd())
    if name == "preference":
        return run_preference_job(cfg, output_dir or Path.cwd())
    if name == "pecan":
        return run_pecan_job(cfg, output_dir or Path.cwd())
    if name == "exact_optimum":
        from saferl.data.world import build_exact_world, load_or_train_reference_policy
        from saferl.eval.world_report import print_exact_optimum

        model, tokenizer = load_or_train_reference_policy(
            reference_config(cfg), cfg.world.cache_dir
        )
        world = build_exact_world(
            model, tokenizer, beta=float(cfg.world.beta), cost_limit=float(cfg.world.cost_limit)
        )
        print_exact_optimum(
            world, [float(limit) for limit in cfg.job.frontier_limits], int(cfg.job.top_responses)
        )
        return float(world.optimum().objective)
    if name == "world_data":
        import json

        from saferl.data.world import write_world_datasets
        from saferl.eval.world_report import print_statistics

        folder = (
            Path(cfg.job.output_dir)
            if cfg.job.output_dir is not None
            else (output_dir or Path.cwd()) / "world_data"
        )
        paths = write_world_datasets(
            folder,
            seed=int(cfg.seed),
            num_sft=int(cfg.job.num_sft),
            num_pairs_train=int(cfg.job.num_pairs_train),
            num_pairs_test=int(cfg.job.num_pairs_test),
            temperature=float(cfg.job.temperature),
            overwrite=bool(cfg.job.overwrite),
        )
        statistics = json.loads(paths.statistics.read_text())
        print_statistics(
            f"Built-in world preference data (train split) in {paths.folder}", statistics
        )
        for path in (paths.prompts, paths.sft, paths.preferences_train, paths.preferences_test):
            print(f"wrote {path}")
        return float(statistics["harmful_reward_cost_correlation"])
    raise ValueError(f"job.name: unknown job {name!r}; allowed: {', '.join(JOBS)}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Entry point of the ``saferl`` console script."""
    return run(cfg, output_dir=Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
