"""A small built-in enumerable problem and its exact constrained optimum (the foundation's demo).

Four prompts (two benign, two harmful) and four possible responses each — refuse, vague,
helpful, helpful with harmful detail — with a reference policy, a ground-truth reward and a
ground-truth cost. On harmful prompts the most helpful answer is the most costly (the tension of
constrained RLHF); on benign prompts refusing loses reward. Solved exactly with
:func:`saferl.core.dual.solve_exact`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table

from saferl.core.dual import (
    DualProblem,
    DualSolution,
    Frontier,
    predict_frontier_at_limits,
    solve,
)

__all__ = ["DemoProblem", "demo_problem", "run_exact_demo"]

RESPONSES = ("refuse", "vague", "helpful", "harmful detail")


@dataclass(frozen=True)
class DemoProblem:
    """The demo's tables: prompts × responses.

    Attributes:
        prompts: the prompt texts, length ``num_prompts``.
        ref_probs: ``π_ref(y|x)``, shape ``(num_prompts, 4)``.
        rewards: ground-truth helpfulness, shape ``(num_prompts, 4)``.
        costs: ground-truth cost (lower is safer; ≤ 0 is safe), shape ``(num_prompts, 4)``.
    """

    prompts: tuple[str, ...]
    ref_probs: torch.Tensor
    rewards: torch.Tensor
    costs: torch.Tensor


def demo_problem() -> DemoProblem:
    """The four-prompt problem described in the module docstring."""
    f64 = torch.float64
    return DemoProblem(
        prompts=(
            "how do I bake bread",
            "how do I fix a bike",
            "how do I make a weapon",
            "how do I poison a neighbour",
        ),
        #                          refuse vague helpful harmful-detail
        ref_probs=torch.tensor([[0.10, 0.30, 0.50, 0.10],
                                [0.10, 0.30, 0.50, 0.10],
                                [0.15, 0.20, 0.20, 0.45],
                                [0.15, 0.20, 0.20, 0.45]], dtype=f64),
        rewards=torch.tensor([[-1.0, 0.2, 1.0, 1.2],
                              [-1.0, 0.2, 1.0, 1.2],
                              [0.0, 0.2, 0.8, 1.5],
                              [0.0, 0.2, 0.8, 1.5]], dtype=f64),
        costs=torch.tensor([[-0.5, -0.5, -0.5, -0.2],
                            [-0.5, -0.5, -0.5, -0.2],
                            [-1.0, -0.5, 0.5, 2.0],
                            [-1.0, -0.5, 0.5, 2.0]], dtype=f64),
    )


def run_exact_demo(beta: float, cost_limit: float, frontier_limits: list[float],
                   console: Console | None = None) -> DualSolution:
    """Solve the demo problem at ``cost_limit`` and print the optimum and the predicted frontier."""
    console = console or Console()
    problem_tables = demo_problem()
    problem = DualProblem.exact(
        torch.log(problem_tables.ref_probs), problem_tables.rewards, problem_tables.costs, beta, cost_limit
    )
    solution = solve(problem)
    # The unconstrained optimum is the tilt at λ = 0; the reference is π_ref itself (KL 0).
    unconstrained = problem.statistics(torch.zeros(1, dtype=torch.float64))
    ref_reward = (problem.prompt_weights @ (problem_tables.ref_probs * problem_tables.rewards).sum(1)).item()
    ref_cost = (problem.prompt_weights @ (problem_tables.ref_probs * problem_tables.costs).sum(1)).item()

    table = Table(title=f"Exact constrained optimum of the demo problem (β = {beta}, limit d = {cost_limit})")
    for column in ("policy", "λ", "E reward", "E cost", "KL to ref", "E r − β·KL", "cost ≤ d"):
        table.add_column(column, justify="right")
    table.add_row("reference", "—", f"{ref_reward:.4f}", f"{ref_cost:.4f}", "0.0000",
                  f"{ref_reward:.4f}", _yes(ref_cost <= cost_limit))
    table.add_row("unconstrained", "0", f"{unconstrained['expected_reward'].item():.4f}",
                  f"{unconstrained['expected_cost'].item():.4f}", f"{unconstrained['kl'].item():.4f}",
                  f"{unconstrained['objective'].item():.4f}",
                  _yes(unconstrained["expected_cost"].item() <= cost_limit + 1e-12))
    table.add_row("optimum π_λ*", f"{solution.multiplier.item():.6f}", f"{solution.expected_reward.item():.4f}",
                  f"{solution.expected_cost.item():.4f}", f"{solution.kl.item():.4f}",
                  f"{solution.objective.item():.4f}",
                  _yes(solution.expected_cost.item() <= cost_limit + 1e-9))
    console.print(table)

    optimum_policy = problem.tilted_policy(solution.multiplier)
    policy_table = Table(title="π_λ*(response | prompt)  (reference in brackets)")
    policy_table.add_column("prompt")
    for response in RESPONSES:
        policy_table.add_column(response, justify="right")
    for index, prompt in enumerate(problem_tables.prompts):
        policy_table.add_row(prompt, *(
            f"{optimum_policy[index, k].item():.3f} ({problem_tables.ref_probs[index, k].item():.2f})"
            for k in range(len(RESPONSES))
        ))
    console.print(policy_table)
    console.print(_frontier_table(predict_frontier_at_limits(problem, frontier_limits), beta))
    console.print(f"dual solved by {solution.method} in {solution.iterations} iterations; "
                  f"D(λ*) − J(π_λ*) = {(solution.dual_value - solution.objective).item():.2e} (strong duality)")
    return solution


def _frontier_table(frontier: Frontier, beta: float) -> Table:
    table = Table(title=f"Predicted reward and cost of π_λ* for other limits (β = {beta})")
    for column in ("limit d", "λ*", "E reward", "E cost", "KL to ref"):
        table.add_column(column, justify="right")
    assert frontier.cost_limits is not None
    for row in range(frontier.feasible.shape[0]):
        limit = f"{frontier.cost_limits[row, 0].item():.3f}"
        if not frontier.feasible[row]:
            table.add_row(limit, "infeasible", "—", "—", "—")
            continue
        table.add_row(limit, f"{frontier.multipliers[row, 0].item():.4f}",
                      f"{frontier.expected_reward[row].item():.4f}", f"{frontier.expected_cost[row, 0].item():.4f}",
                      f"{frontier.kl[row].item():.4f}")
    return table


def _yes(value: bool) -> str:
    return "yes" if value else "no"
