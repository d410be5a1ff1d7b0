"""Experiment: does pessimism from a cost-model ensemble make the learned optimum feasible?

On the built-in world the exact optimum of the *learned* problem (calibrated reward and cost models,
every response enumerated) breaks the cost limit on the ground truth: the calibrated cost model
underestimates the cost of the helpful answers to harmful prompts, which the tilt then picks
(README, "What learned scorers cost"). This script tries the ensemble remedy of Coste et al. (2023,
"Reward model ensembles help mitigate overoptimization"), applied to the cost: for each stage folder

1. train ``--members`` extra cost models with the project's own stage runner
   (:func:`saferl.setups.stages.run_score_stage`, one Ray rank, DeepSpeed on CPU) on the folder's
   training pairs, at the defaults of ``saferl/conf/scorers/learned.yaml`` (steps, pairs per step,
   learning rate, η, ``sign_weight``). Member k is seeded ``seed + 1000 k`` (the score head's
   initialisation and the pair order); so member 0 of ``seeds`` is the default job's cost model.
   Two ensembles: ``seeds`` (different seeds only) and ``seeds+bootstrap`` (the same seeds, each
   member on a bootstrap resample of the training pairs);
2. calibrate every member as a run does (affine, least squares on the held-out pairs' responses,
   :func:`saferl.setups.world.calibrate`) and score every enumerated response;
3. combine the members' calibrated costs per response: ``mean + κ·sd`` (sd over members, Bessel
   corrected) for each ``--kappas``, and the max over members (a per-response worst case);
4. solve the learned problem exactly at ``d`` with the folder's calibrated reward model
   (``models/reward_model``) and each combined cost (:func:`learned_problem_rows`' first row).

Each optimum is scored on the ground truth and compared against the exact optimum π* of
max E[r] − β KL(π‖π_ref) s.t. E[c] ≤ d on the ground truth, with each folder's SFT policy as π_ref:
its violation max(0, E c − d), its normalised Lagrangian gap G(π)/G(π_ref), and whether it is less
safe than π_ref (true E c above the reference's by more than 1e-3). The folder's own
``models/cost_model`` (whatever it was trained with) is scored alone for comparison. No
setting is chosen on the ground truth: κ's grid is fixed in advance. A diagnostic table then
says, per folder and ensemble, how far the members' disagreement covers the ensemble mean's
error on harmful prompts, and the smallest κ that would have been feasible (read on the ground
truth, so a diagnostic only, like ``experiments/learned_problem.py``'s δ).

Run: ``WANDB_MODE=offline PYTHONPATH=. python experiments/cost_ensemble.py
/work/board/seed{0,1,2}/stages --out /work/ens/members``. Trained members are kept under ``--out``
and reused by a later run with the same settings (so ``--members 8`` after ``--members 4`` trains
members 4–7 only; the training seconds printed are the recorded ones of every member used).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

CONF = Path(__file__).resolve().parents[1] / "saferl" / "conf"
#: The ensembles: name → whether each member trains on a bootstrap resample of the pairs.
ENSEMBLES = {"seeds": False, "seeds+bootstrap": True}
#: True E c above the reference's by more than this: "less safe than π_ref".
LESS_SAFE_TOLERANCE = 1e-3
#: Seed offset between members.
MEMBER_SEED_STRIDE = 1000
#: The κ grid of the diagnostic "κ needed" column (chosen on the ground truth: a diagnostic, not a setting).
KAPPA_GRID = tuple(0.25 * k for k in range(0, 41))  # 0, 0.25, …, 10


@dataclass(frozen=True)
class CostStage:
    """The cost-model stage's defaults (``saferl/conf/scorers/learned.yaml``)."""

    steps: int
    rows_per_step: int
    learning_rate: float
    regularization: float
    sign_weight: float

    @classmethod
    def from_conf(cls) -> CostStage:
        import yaml

        scorers = yaml.safe_load((CONF / "scorers" / "learned.yaml").read_text())
        stage = scorers["cost_model"]
        return cls(int(stage["steps"]), int(stage["rows_per_step"]), float(stage["learning_rate"]),
                   float(scorers["regularization"]), float(scorers["sign_weight"]))


def _resources(seed: int):
    """One CPU rank, the default job's runtime and DeepSpeed settings (``conf/runtime/local.yaml``,
    ``conf/deepspeed/zero2.yaml``), seeded ``seed``."""
    import yaml

    from saferl.runtime.resources import Resources
    from saferl.runtime.specs import DeepSpeedSpec, GroupSpec, RuntimeSpec

    runtime = yaml.safe_load((CONF / "runtime" / "local.yaml").read_text())
    deepspeed = yaml.safe_load((CONF / "deepspeed" / "zero2.yaml").read_text())
    deepspeed["adam_betas"] = tuple(deepspeed["adam_betas"])
    group = GroupSpec(num_ranks=1, cpus_per_rank=float(runtime.pop("cpus_per_rank")),
                      gpus_per_rank=float(runtime.pop("gpus_per_rank")))
    runtime.pop("num_ranks")
    return Resources(group=group, runtime=RuntimeSpec(**runtime), deepspeed=DeepSpeedSpec(**deepspeed), seed=seed)


def _folder_seed(folder: Path) -> int:
    """The root seed the folder's stages ran with."""
    return int(json.loads((folder / "stages.json").read_text())["data"]["settings"]["seed"])


def train_member(folder: Path, member_dir: Path, seed: int, bootstrap: bool, stage: CostStage) -> dict:
    """One cost model on ``folder``'s training pairs (a bootstrap resample of them with
    ``bootstrap``), exported to ``member_dir``; reused when ``member_dir`` already holds one of the
    same settings. Returns its record (settings, held-out metrics, seconds)."""
    from saferl.data import load_preference_dataset
    from saferl.data.world import build_world_tokenizer, world_dataset_paths
    from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
    from saferl.learners.output import RunOutput
    from saferl.setups.settings import StageSettings
    from saferl.setups.stages import run_score_stage
    from saferl.setups.world import world_truth

    settings = {"folder": str(folder.resolve()), "seed": seed, "bootstrap": bootstrap, "stage": asdict(stage)}
    record_path = member_dir / "member.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record["settings"] == settings:
            return record
    paths = world_dataset_paths(folder / "data")
    pairs = list(load_preference_dataset(str(paths.preferences("train"))).records)
    if bootstrap:
        rng = random.Random(seed)
        pairs = [pairs[rng.randrange(len(pairs))] for _ in pairs]
    test_pairs = list(load_preference_dataset(str(paths.preferences("test"))).records)
    member_dir.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    metrics = run_score_stage(
        "cost", StageSettings(stage.steps, stage.rows_per_step, stage.learning_rate), folder / "models" / "sft",
        pairs, test_pairs, build_world_tokenizer(), template=WORLD_TEMPLATE, max_length=MAX_SEQUENCE_LENGTH,
        regularization=stage.regularization, seed=seed, resources=_resources(seed),
        output=RunOutput(folder=member_dir), export_dir=member_dir / "model", truth=world_truth("cost"),
        name="cost_model", sign_weight=stage.sign_weight,
    )
    record = {"settings": settings, "metrics": metrics, "seconds": time.perf_counter() - clock}
    record_path.write_text(json.dumps(record, indent=2))
    return record


def calibrated_scores(model_dir: Path, kind: str, test_pairs: list, world, tokenizer,
                      calibration: str = "isotonic") -> torch.Tensor:
    """One score model's calibrated score of every enumerated response ``(N, K)``, calibrated as a
    run calibrates it (:func:`saferl.eval.learned_problem.calibrated_model_scores`)."""
    from saferl.eval.learned_problem import calibrated_model_scores
    from saferl.setups.world import world_truth

    return calibrated_model_scores(model_dir, test_pairs, world_truth(kind), world, tokenizer, calibration)


def combinations(members: torch.Tensor, kappas: Sequence[float]) -> dict[str, torch.Tensor]:
    """``(M, N, K)`` member costs → the combined ``(N, K)`` cost by name."""
    mean, sd = members.mean(0), members.std(0, correction=1)
    combined = {f"mean + {kappa:g}·sd": mean + kappa * sd for kappa in kappas}
    combined["max over members"] = members.max(0).values
    return combined


@dataclass(frozen=True)
class Outcome:
    """One learned optimum on the ground truth (None fields: the learned costs cannot meet d)."""

    violation: float | None
    gap: float | None
    expected_cost: float | None
    less_safe: bool | None


def solve_learned(world, rewards: torch.Tensor, costs: torch.Tensor, reference_cost: float) -> Outcome:
    """The learned problem's exact optimum at ``d`` (the solver of :func:`learned_problem_rows`'
    first row), scored on the ground truth; ``reference_cost``: π_ref's true E c."""
    from saferl.eval.learned_problem import _optimum

    found = _optimum(world, rewards.double(), costs.double().unsqueeze(-1), world.cost_limit)
    if found is None:  # the learned costs cannot meet d
        return Outcome(None, None, None, None)
    score = found[1]
    cost = score.expected_cost[0]
    return Outcome(score.violation[0], score.normalised_lagrangian_gap, cost, cost > reference_cost + LESS_SAFE_TOLERANCE)


def harmful_diagnostics(world, rewards: torch.Tensor, members: torch.Tensor) -> tuple[float, float]:
    """At the mean ensemble's learned optimum (κ = 0), the harmful prompts' mean of
    E[c_true − c̄] (the ensemble mean's underestimate) and of E[sd] (its disagreement)."""
    from saferl.core.dual import DualProblem, solve
    from saferl.data.world.exact import tilted_logprobs

    mean, sd = members.mean(0), members.std(0, correction=1)
    costs = mean.unsqueeze(-1).double()
    solution = solve(DualProblem.exact(world.ref_logprobs, rewards.double(), costs, world.beta, world.cost_limit))
    probs = tilted_logprobs(world.ref_logprobs, rewards.double(), costs, world.beta, solution.multiplier).exp()
    harmful = torch.tensor([prompt.harmful for prompt in world.prompts])
    error = (probs * (world.costs[..., 0] - mean)).sum(1)[harmful].mean().item()
    spread = (probs * sd).sum(1)[harmful].mean().item()
    return error, spread


def kappa_needed(world, rewards: torch.Tensor, members: torch.Tensor, reference_cost: float) -> float | None:
    """The smallest κ of :data:`KAPPA_GRID` whose ``mean + κ·sd`` optimum is feasible on the ground
    truth (within :data:`FEASIBILITY_TOLERANCE`); None when none is. Read on the yardstick itself."""
    from saferl.data.world.exact import FEASIBILITY_TOLERANCE

    for kappa in KAPPA_GRID:
        outcome = solve_learned(world, rewards, next(iter(combinations(members, [kappa]).values())), reference_cost)
        if outcome.violation is not None and outcome.violation <= FEASIBILITY_TOLERANCE:
            return kappa
    return None


def _cell(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def run(folders: Sequence[Path], out: Path, num_members: int, kappas: Sequence[float], beta: float,
        cost_limit: float) -> list[str]:
    """Train, score and solve; returns the printed lines."""
    from saferl.data import load_preference_dataset
    from saferl.data.world import build_world_tokenizer, world_dataset_paths
    from saferl.data.world.exact import build_exact_world
    from saferl.eval.learned_problem import calibrated_learned_scores
    from saferl.models import load_policy

    stage = CostStage.from_conf()
    tokenizer = build_world_tokenizer()
    labels = [f"s{_folder_seed(folder)}" for folder in folders]
    results: dict[str, list[Outcome]] = {}
    train_seconds: dict[str, float] = dict.fromkeys(ENSEMBLES, 0.0)
    member_lines, diagnostic_lines = [], []

    def add(row: str, outcome: Outcome) -> None:
        results.setdefault(row, []).append(outcome)

    for folder, label in zip(folders, labels, strict=True):
        seed = _folder_seed(folder)
        reference, _ = load_policy(folder / "models" / "sft")
        world = build_exact_world(reference.eval(), tokenizer, beta, cost_limit)
        reference_cost = world.score(world.ref_logprobs).expected_cost[0]
        rewards, board_costs = calibrated_learned_scores(folder, world, tokenizer)
        add("the folder's own cost model (models/cost_model)",
            solve_learned(world, rewards, board_costs[..., 0], reference_cost))
        test_pairs = list(load_preference_dataset(str(world_dataset_paths(folder / "data").preferences("test"))).records)
        for ensemble, bootstrap in ENSEMBLES.items():
            member_costs, single = [], []
            for k in range(num_members):
                member_dir = out / label / ensemble.replace("+", "_") / f"member{k}"
                record = train_member(folder, member_dir, seed + MEMBER_SEED_STRIDE * k, bootstrap, stage)
                train_seconds[ensemble] += record["seconds"]
                costs = calibrated_scores(member_dir / "model", "cost", test_pairs, world, tokenizer)
                member_costs.append(costs)
                single.append(solve_learned(world, rewards, costs, reference_cost))
                member_lines.append(
                    f"| {label} | {ensemble} | {k} | {record['settings']['seed']} | {record['seconds']:.1f} | "
                    f"{record['metrics']['ground_truth_accuracy']:.3f} | {record['metrics']['sign_accuracy']:.3f} | "
                    f"{_cell(single[-1].violation)} | {_cell(single[-1].gap)} |")
            add(f"{ensemble}: member 0 alone", single[0])
            members = torch.stack(member_costs)
            for name, costs in combinations(members, kappas).items():
                add(f"{ensemble}: {name}", solve_learned(world, rewards, costs, reference_cost))
            error, spread = harmful_diagnostics(world, rewards, members)
            violations = [o.violation for o in single if o.violation is not None]
            needed = kappa_needed(world, rewards, members, reference_cost)
            needed_cell = f"> {KAPPA_GRID[-1]:g}" if needed is None else f"{needed:g}"
            diagnostic_lines.append(
                f"| {label} | {ensemble} | {min(violations):.3f} – {max(violations):.3f} | {error:.3f} | {spread:.3f} | "
                f"{needed_cell} |")

    seeds = " / ".join(labels)
    lines = [
        f"The learned problem's exact optimum on the ground truth: β = {beta}, d = {cost_limit}, π_ref each folder's "
        f"SFT policy; reward: the folder's calibrated models/reward_model; cost: as the row says; M = {num_members} "
        f"members per ensemble at {asdict(stage)}; compared against the exact optimum π* of the ground truth",
        "",
        f"| cost used | violation {seeds} | norm. Lagr. gap {seeds} | less safe than π_ref (of {len(folders)}) |",
        "| --- | --- | --- | ---: |",
    ]
    for row, outcomes in results.items():
        violation = " / ".join(_cell(o.violation) for o in outcomes)
        gap = " / ".join(_cell(o.gap) for o in outcomes)
        less_safe = sum(bool(o.less_safe) for o in outcomes)
        lines.append(f"| {row} | {violation} | {gap} | {less_safe} |")
    lines += ["", "Seconds spent training members (all folders): " +
              ", ".join(f"{name} {seconds:.1f} s" for name, seconds in train_seconds.items()), ""]
    lines += [
        "Per member (held-out accuracy against the ground-truth order, sign accuracy; its learned optimum alone):",
        "",
        "| folder | ensemble | member | seed | train s | GT accuracy | sign accuracy | violation | norm. gap |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *member_lines,
        "",
        "Does the disagreement cover the error? At the ensemble-mean optimum (κ = 0), harmful prompts' "
        "E[c_true − c̄] against E[sd]; and the smallest κ (grid step 0.25) that would have been feasible, read on "
        "the ground truth (a diagnostic, not a setting):",
        "",
        "| folder | ensemble | single-member violations (min – max) | E[c_true − c̄], harmful | E[sd], harmful | "
        "κ needed |",
        "| --- | --- | --- | ---: | ---: | ---: |",
        *diagnostic_lines,
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="world stage (or run) folders: data/, models/sft, "
                        "models/reward_model, models/cost_model, stages.json")
    parser.add_argument("--out", type=Path, required=True, help="where the members are written (not inside a folder)")
    parser.add_argument("--members", type=int, default=4, help="cost models per ensemble (M)")
    parser.add_argument("--kappas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0], help="κ of mean + κ·sd")
    parser.add_argument("--beta", type=float, default=0.5, help="β of the runs (the default job's 0.5)")
    parser.add_argument("--cost-limit", type=float, default=-0.8, help="d of the runs (the default job's -0.8)")
    args = parser.parse_args(argv)
    if args.members < 2:
        parser.error("--members: an ensemble's sd needs at least 2 members")
    out = args.out.resolve()
    for folder in args.folders:
        if out.is_relative_to(folder.resolve()):
            parser.error(f"--out {out} lies inside the input folder {folder}; members must not be written there")
    from saferl.runtime import init_ray
    from saferl.runtime.pool import close_worker_pool

    init_ray(_resources(0).runtime)
    try:
        lines = run(args.folders, out, args.members, args.kappas, args.beta, args.cost_limit)
    finally:
        import ray

        close_worker_pool()
        ray.shutdown()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
