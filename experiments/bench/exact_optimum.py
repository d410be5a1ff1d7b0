"""Benchmark: how close each learner gets to the exact constrained optimum of the built-in world.

On the world in exact mode (every response enumerated, so every number below is exact under the
ground truth, not sampled), for each seed: the datasets, the SFT reference and the reward and
cost models are trained once (stages 1–4 of the default pipeline), then these learners start from
the same SFT policy:

* ``ppo_lag (oracle)``  — PPO-Lagrangian with the ground-truth reward and cost;
* ``ppo_lag (learned)`` — PPO-Lagrangian with the trained reward and cost models (mapped affinely to
  ground-truth units on held-out responses, so β and d mean the same thing);
* ``ppo_lag (oracle, published streams)`` — oracle PPO-Lagrangian with the published ``+β kl`` in
  the cost stream (its fixed point is the optimum at KL weight β(1+λ), not π*); the other PPO rows
  use the default §1 streams, whose stationary point is docs/algorithms.md §1's ``π_λ``;

Each row is the learner's own module (``saferl.learners.<name>.run``) on the world setup
(``saferl.setups.world``), scored by the setup's exact evaluator.
* ``ppo (oracle)``      — unconstrained RLHF on the reward alone;
* ``shaping λ* (oracle)`` — PPO on ``r − λ* c`` with λ fixed at the exact λ*;

and with ``--group dualized`` (or ``all``) the one-shot and preference learners, from the same SFT
policy and the same training pairs:

* ``mocan dpo`` / ``mocan ppo`` — MoCAN with the learned (calibrated) scorers: K = 64 reference
  samples per prompt, the dual's λ̂, then pseudo-preference DPO or PPO with λ fixed at λ̂; the
  dual's predicted (reward, cost) is printed beside the realised one;
* ``pecan (consistent)`` / ``pecan (published)`` — PeCAN with both labellings (margin 0.1 in
  implicit safety units; its λ lives in implicit units too);
* ``dpo (helpful)``, ``ipo (helpful)``, ``bfpo`` on the helpfulness pairs, ``safe_nca`` on the
  safe-vs-unsafe pairs (their λ column is empty: they have no multiplier).

``--learners NAME ...`` keeps only the named rows of the dualized group.

Columns: the normalised Lagrangian gap ``G(π) / G(π_ref)`` with
``G(π) = J* − [J(π) − λ*(E[c] − d)] = β E_x KL(π‖π*)`` and ``J = E[r] − β KL`` under the ground
truth (docs/algorithms.md §8: never negative, so a policy that breaks the limit gets no credit for its
higher ``J``), the constraint violation ``max(0, E[c] − d)`` (and as a share of the cost range), the final λ against λ*, iterations and wall seconds of the PPO stage; then the mean over
seeds. Run: ``python experiments/bench/exact_optimum.py [--seeds 0 1 2] [--iterations 300]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from saferl.data.world import ReferenceConfig
from saferl.learners import mocan, pecan, ppo_lag, preference
from saferl.learners.mocan import MocanSettings
from saferl.learners.output import RunOutput
from saferl.learners.pecan import PecanSettings
from saferl.learners.ppo_lag import PPOLagSettings, PPOSettings
from saferl.learners.preference import PreferenceSettings
from saferl.runtime import DeepSpeedSpec, GenerationSpec, GroupSpec, RuntimeSpec
from saferl.runtime.resources import Resources
from saferl.setups import world
from saferl.setups.base import Needs, Setup, ShapedScorerSource
from saferl.setups.world import StageSettings, WorldScorerSource, WorldSettings

COST_RANGE = 2.8 - (-2.2)  # the ground-truth cost's range over exact mode's responses
MULTIPLIER = {"kind": "log_gradient_ascent", "initial_value": 1.0, "lr": 0.1, "window": 128, "max_value": 5.0}


def default_settings(seed: int) -> WorldSettings:
    """The default job's world (conf/data/world.yaml, conf/model/world.yaml, conf/scorers) for one seed."""
    return WorldSettings(
        beta=0.5,
        cost_limit=-0.8,
        reference=ReferenceConfig(seed=seed),
        num_sft=2000,
        num_pairs_train=2000,
        num_pairs_test=512,
        label_temperature=0.5,
        sft=StageSettings(300, 64, 3e-3),
        reward_model=StageSettings(150, 32, 1e-3),
        cost_model=StageSettings(300, 32, 1e-3),
        generation=GenerationSpec(max_new_tokens=3, seed=seed),
        seed=seed,
    )


def ppo_settings(seed: int, iterations: int, multiplier=MULTIPLIER, **changes) -> PPOLagSettings:
    """The default job's PPO stage (conf/learner/ppo_lag.yaml: the §1 streams unless changed)."""
    changes = {"kl_in_cost_stream": False, **changes}
    loop = PPOSettings(iterations=iterations, prompts_per_iteration=64, kl_coeff=0.5, seed=seed, **changes)
    return PPOLagSettings(loop, multiplier, -0.8)


def oracle(setup: Setup) -> Setup:
    """The same setup with the ground-truth reward and cost."""
    return replace(setup, reward=WorldScorerSource.oracle("reward", setup.tokenizer),
                   costs=(WorldScorerSource.oracle("cost", setup.tokenizer),), score_units="ground-truth units")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument(
        "--output", type=Path, default=None, help="keep the runs here (default: a temp folder)"
    )
    parser.add_argument(
        "--group",
        choices=("ppo", "dualized", "all"),
        default="ppo",
        help="ppo: the PPO-family rows (issue 5); dualized: MoCAN and the preference losses",
    )
    parser.add_argument(
        "--learners",
        nargs="+",
        default=None,
        help="rows of the dualized group to run (default: all)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the data, SFT and score models already in --output/seed<k> when present",
    )
    args = parser.parse_args()
    root = args.output or Path(tempfile.mkdtemp(prefix="saferl-bench-"))
    rows, predictions = [], []
    for seed in args.seeds:
        resources = Resources(GroupSpec(num_ranks=1, cpus_per_rank=0.25), RuntimeSpec(local_num_cpus=8),
                              DeepSpeedSpec(), seed=seed)
        # Stages 1–4 once per seed (--reuse: finished stages in --output/seed<k> are skipped).
        setup = world.build(default_settings(seed), resources,
                            RunOutput(root / f"seed{seed}", resume=args.reuse),
                            Needs(scorers=True, critics=True, pairs=True))
        optimal_multiplier = setup.evaluator.evaluate(setup.policy.name_or_path).optimal_multiplier
        if args.group in ("dualized", "all"):
            run_dualized(setup, resources, root / f"seed{seed}", seed, optimal_multiplier, rows, predictions,
                         args.learners, args.iterations)
        if args.group == "dualized":
            continue
        truth = oracle(setup)
        shaped = replace(truth, reward=ShapedScorerSource(truth.reward, tuple(truth.costs), tuple(optimal_multiplier)))
        runs = {
            "ppo_lag (oracle)": (truth, ppo_settings(seed, args.iterations), None),
            "ppo_lag (learned)": (setup, ppo_settings(seed, args.iterations), None),
            "ppo_lag (oracle, published streams)": (
                truth, ppo_settings(seed, args.iterations, kl_in_cost_stream=True), None),
            "ppo (oracle)": (truth, ppo_settings(seed, args.iterations, multiplier=None), None),
            "shaping λ* (oracle)": (shaped, ppo_settings(seed, args.iterations, multiplier=None), optimal_multiplier[0]),
        }
        for name, (learner_setup, settings, shaping) in runs.items():
            folder = (
                root
                / f"seed{seed}"
                / name.replace(" ", "_").replace("(", "").replace(")", "").replace("§", "s")
            )
            run = ppo_lag.run(learner_setup, settings, resources, RunOutput(folder))
            trained = setup.evaluator.evaluate(run.policy_dir).trained
            rows.append(
                {
                    "learner": name,
                    "seed": seed,
                    "gap": trained.normalised_lagrangian_gap,
                    "violation": trained.violation[0],
                    "multiplier": run.multiplier[0]
                    if run.multiplier
                    else (shaping if shaping is not None else 0.0),
                    "optimal": optimal_multiplier[0],
                    "iterations": settings.ppo.iterations,
                    "seconds": sum(run.seconds.values()),
                    "reward": trained.expected_reward,
                    "cost": trained.expected_cost[0],
                    "kl": trained.kl,
                }
            )
            print(
                f"done: {name}, seed {seed}: gap {trained.normalised_lagrangian_gap:.4f}, violation {trained.violation[0]:.4f}",
                flush=True,
            )
    print_table(rows)
    if predictions:
        print()
        print(
            f"{'MoCAN stage':<12} {'seed':>4} {'λ̂':>7} {'λ*':>7} {'predicted E r':>13} {'realised E r':>12} "
            f"{'predicted E c':>13} {'realised E c':>12}"
        )
        for p in predictions:
            print(
                f"{p['stage']:<12} {p['seed']:>4} {p['multiplier']:>7.4f} {p['optimal']:>7.4f} {p['predicted_reward']:>13.4f} "
                f"{p['reward']:>12.4f} {p['predicted_cost']:>13.4f} {p['cost']:>12.4f}"
            )


def run_dualized(
    setup: Setup,
    resources: Resources,
    folder: Path,
    seed: int,
    optimal_multiplier,
    rows: list,
    predictions: list,
    only: list[str] | None = None,
    iterations: int = 300,
) -> None:
    """MoCAN (both stages), PeCAN (both labellings) and the preference losses, appended to ``rows``
    (MoCAN's PPO stage runs ``iterations`` iterations, like the PPO rows)."""

    def wanted(name: str) -> bool:
        return only is None or name in only

    for stage in ("dpo", "ppo"):
        if not wanted(f"mocan {stage}"):
            continue
        settings = MocanSettings(beta=0.5, cost_limit=-0.8, stage=stage, ppo=ppo_settings(seed, iterations), seed=seed)
        result = mocan.run(setup, settings, resources, RunOutput(folder / f"mocan_{stage}"))
        seconds = sum(result.seconds.values())
        trained = setup.evaluator.evaluate(result.policy_dir).trained
        rows.append(
            {
                "learner": f"mocan {stage}",
                "seed": seed,
                "gap": trained.normalised_lagrangian_gap,
                "violation": trained.violation[0],
                "multiplier": result.multiplier[0],
                "optimal": optimal_multiplier[0],
                "iterations": settings.ppo.ppo.iterations if stage == "ppo" else settings.dpo_steps,
                "seconds": seconds,
                "reward": trained.expected_reward,
                "cost": trained.expected_cost[0],
                "kl": trained.kl,
            }
        )
        predictions.append(
            {
                "stage": f"mocan {stage}",
                "seed": seed,
                "multiplier": result.multiplier[0],
                "optimal": optimal_multiplier[0],
                "predicted_reward": result.dual.solution.expected_reward.item(),
                "predicted_cost": result.dual.solution.expected_cost[0].item(),
                "reward": trained.expected_reward,
                "cost": trained.expected_cost[0],
            }
        )
        print(f"done: mocan {stage}, seed {seed}: gap {trained.normalised_lagrangian_gap:.4f}", flush=True)
    for consistent in (True, False):
        name = f"pecan ({'consistent' if consistent else 'published'})"
        if not wanted(name):
            continue
        result = pecan.run(setup, PecanSettings(beta=0.5, consistent=consistent, seed=seed), resources,
                           RunOutput(folder / ("pecan_consistent" if consistent else "pecan_published")))
        trained = setup.evaluator.evaluate(result.policy_dir).trained
        rows.append(
            {
                "learner": name,
                "seed": seed,
                "gap": trained.normalised_lagrangian_gap,
                "violation": trained.violation[0],
                "multiplier": result.multiplier[0],
                "optimal": optimal_multiplier[0],
                "iterations": PecanSettings().dpo_steps,
                "seconds": sum(result.seconds.values()),
                "reward": trained.expected_reward,
                "cost": trained.expected_cost[0],
                "kl": trained.kl,
            }
        )
        print(f"done: {name}, seed {seed}: gap {trained.normalised_lagrangian_gap:.4f}", flush=True)
    for name, offline in (
        ("dpo (helpful)", PreferenceSettings(loss="dpo", beta=0.5, seed=seed)),
        ("ipo (helpful)", PreferenceSettings(loss="ipo", beta=0.5, seed=seed)),
        ("bfpo", PreferenceSettings(loss="bfpo", beta=0.5, seed=seed)),
        ("safe_nca", PreferenceSettings(loss="safe_nca", ordering="safer", beta=0.5, seed=seed)),
    ):
        if not wanted(name):
            continue
        result = preference.run(setup, offline, resources, RunOutput(folder / f"offline_{offline.loss}"))
        trained = setup.evaluator.evaluate(result.policy_dir).trained
        seconds = sum(result.seconds.values())
        rows.append(
            {
                "learner": name,
                "seed": seed,
                "gap": trained.normalised_lagrangian_gap,
                "violation": trained.violation[0],
                "multiplier": float("nan"),
                "optimal": optimal_multiplier[0],
                "iterations": offline.steps,
                "seconds": seconds,
                "reward": trained.expected_reward,
                "cost": trained.expected_cost[0],
                "kl": trained.kl,
            }
        )
        print(f"done: {name}, seed {seed}: gap {trained.normalised_lagrangian_gap:.4f}", flush=True)


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'learner':<36} {'seed':>4} {'norm. Lagr. gap':>15} {'violation':>9} {'% range':>7} {'λ':>7} {'λ*':>7} "
        f"{'E r':>7} {'E c':>7} {'KL':>6} {'iters':>5} {'seconds':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['learner']:<36} {row['seed']:>4} {row['gap']:>15.4f} {row['violation']:>9.4f} "
            f"{100 * row['violation'] / COST_RANGE:>6.2f}% {row['multiplier']:>7.4f} {row['optimal']:>7.4f} "
            f"{row['reward']:>7.4f} {row['cost']:>7.4f} {row['kl']:>6.3f} {row['iterations']:>5} {row['seconds']:>7.1f}"
        )
    print("-" * len(header))
    for name in dict.fromkeys(row["learner"] for row in rows):
        group = [row for row in rows if row["learner"] == name]
        mean = {
            key: statistics.fmean(row[key] for row in group)
            for key in (
                "gap",
                "violation",
                "multiplier",
                "optimal",
                "reward",
                "cost",
                "kl",
                "seconds",
            )
        }
        print(
            f"{name:<36} {'mean':>4} {mean['gap']:>15.4f} {mean['violation']:>9.4f} "
            f"{100 * mean['violation'] / COST_RANGE:>6.2f}% {mean['multiplier']:>7.4f} {mean['optimal']:>7.4f} "
            f"{mean['reward']:>7.4f} {mean['cost']:>7.4f} {mean['kl']:>6.3f} {group[0]['iterations']:>5} "
            f"{mean['seconds']:>7.1f}"
        )


if __name__ == "__main__":
    main()
