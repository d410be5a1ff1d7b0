"""The ``saferl`` command: a thin Hydra entry point that dispatches on ``job.name``.

``saferl`` composes ``conf/config.yaml``; every key can be overridden on the command line
(``saferl world.cost_limit=-1.0``), and ``saferl -m ...`` sweeps. The function Hydra calls returns
the job's headline metric so that a sweeper can optimise it.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

# The config tree lives at the repository root (``conf/``), beside the package, as the design card
# lays out; the editable install the README uses keeps it there.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

JOBS = ("exact_optimum", "world_data")


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


def run(cfg: DictConfig, output_dir: Path | None = None) -> float:
    """Run the job named by ``cfg.job.name`` and return its headline metric.

    Args:
        cfg: the composed config.
        output_dir: where the job may write files (Hydra's run folder under ``saferl``).
    """
    name = cfg.job.name
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
