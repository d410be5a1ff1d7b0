"""Benchmark: the plug-in dual solve (MoCAN's λ estimate) with saferl's solver and the published one.

For N prompts × K reference samples and m constraints, solve ``min_{λ≥0} D̂(λ)`` (docs/algorithms.md §1)
with

* ``saferl``: :func:`saferl.core.dual.solve` (bracketed Newton for m = 1, projected Newton for m ≥ 2);
* ``published``: projected gradient descent with a fixed step and restarts, as in the published
  MoCAN code (:func:`saferl.core.dual.projected_gradient_dual`),

and print one table: N, K, m, solver, iterations, wall seconds, |λ − λ_ref|_∞. ``λ_ref`` is an
independent high-precision reference: bisection on ``D̂'`` to machine precision for m = 1, SciPy's
L-BFGS-B at a tight tolerance for m = 2.

Synthetic data: rewards ~ N(0, 1); costs = 0.6·r + 0.8·noise (a real tension), one column per
constraint; β = 0.1 as in the published runs; each limit halfway between the smallest achievable
cost and the cost of the unconstrained tilt, so every constraint binds.

Run: ``python experiments/bench/dual_solver.py`` (add ``--quick`` for the small sizes only).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.optimize import minimize

from saferl.core.dual import DualProblem, projected_gradient_dual, solve

BETA = 0.1


def make_problem(num_prompts: int, num_samples: int, m: int, seed: int = 0) -> DualProblem:
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randn(num_prompts, num_samples, generator=generator, dtype=torch.float64)
    noise = torch.randn(num_prompts, num_samples, m, generator=generator, dtype=torch.float64)
    costs = 0.6 * rewards.unsqueeze(-1) + 0.8 * noise
    problem = DualProblem.from_samples(rewards, costs, BETA, torch.zeros(m, dtype=torch.float64))
    free_cost = problem.statistics(torch.zeros(m, dtype=torch.float64))["expected_cost"]
    smallest = problem.min_achievable_cost()
    return problem.with_cost_limit(smallest + 0.5 * (free_cost - smallest))


def reference_multiplier(problem: DualProblem) -> torch.Tensor:
    if problem.num_constraints == 1:
        low, high = 0.0, 1.0
        while problem.gradient(high).item() < 0:
            low, high = high, 2 * high
        for _ in range(100):
            middle = 0.5 * (low + high)
            if problem.gradient(middle).item() < 0:
                low = middle
            else:
                high = middle
        return torch.tensor([0.5 * (low + high)], dtype=torch.float64)
    result = minimize(
        lambda x: problem.value(torch.from_numpy(x)).item(),
        np.ones(problem.num_constraints),
        jac=lambda x: problem.gradient(torch.from_numpy(x)).numpy(),
        method="L-BFGS-B",
        bounds=[(0.0, None)] * problem.num_constraints,
        options={"gtol": 1e-14, "ftol": 1e-16, "maxiter": 10_000},
    )
    return torch.from_numpy(result.x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the small sizes")
    args = parser.parse_args()
    sizes = [(1000, 16), (1000, 128), (10_000, 128)]
    if args.quick:
        sizes = sizes[:2]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for num_prompts, num_samples in sizes:
        for m in (1, 2):
            problem = make_problem(num_prompts, num_samples, m)
            reference = reference_multiplier(problem)
            solvers = {
                "saferl": lambda p=problem: solve(p),
                # Step 0.05 is near the largest stable one here: ∇²D ≈ Var(c)/β ≈ 10.
                "published": lambda p=problem: projected_gradient_dual(
                    p, step_size=0.05, max_iterations=5000, num_restarts=3, tolerance=1e-10
                ),
            }
            for name, run in solvers.items():
                start = time.perf_counter()
                solution = run()
                seconds = time.perf_counter() - start
                error = (solution.multiplier - reference).abs().max().item()
                rows.append(
                    (
                        num_prompts,
                        num_samples,
                        m,
                        name,
                        solution.iterations,
                        seconds,
                        error,
                        solution.multiplier.tolist(),
                    )
                )
    header = f"{'N':>6} {'K':>4} {'m':>2}  {'solver':<10} {'iterations':>10} {'seconds':>9} {'|λ−λ_ref|':>10}  λ"
    print(header)
    print("-" * len(header))
    for n, k, m, name, iterations, seconds, error, multiplier in rows:
        shown = ", ".join(f"{value:.6f}" for value in multiplier)
        print(
            f"{n:>6} {k:>4} {m:>2}  {name:<10} {iterations:>10} {seconds:>9.3f} {error:>10.2e}  [{shown}]"
        )
    print()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, β = {BETA}")


if __name__ == "__main__":
    main()
