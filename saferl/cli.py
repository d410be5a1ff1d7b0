"""The ``saferl`` command: a thin Hydra entry point that dispatches on ``job.name``.

``saferl`` composes ``conf/config.yaml``; every key can be overridden on the command line
(``saferl job.beta=0.05``), and ``saferl -m ...`` sweeps. The function Hydra calls returns the
job's headline metric so that a sweeper can optimise it.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

# The config tree lives at the repository root (``conf/``), beside the package, as the design card
# lays out; the editable install the README uses keeps it there.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

JOBS = ("exact_demo",)


def run(cfg: DictConfig) -> float:
    """Run the job named by ``cfg.job.name`` and return its headline metric."""
    name = cfg.job.name
    if name == "exact_demo":
        from saferl.eval.exact_demo import run_exact_demo

        solution = run_exact_demo(
            beta=float(cfg.job.beta),
            cost_limit=float(cfg.job.cost_limit),
            frontier_limits=[float(limit) for limit in cfg.job.frontier_limits],
        )
        return float(solution.objective)
    raise ValueError(f"job.name: unknown job {name!r}; allowed: {', '.join(JOBS)}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Entry point of the ``saferl`` console script."""
    return run(cfg)


if __name__ == "__main__":
    main()
