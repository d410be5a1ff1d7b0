"""Readable reports of the built-in world: its exact optimum and its datasets' statistics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from rich.console import Console
from rich.table import Table

from saferl.core.dual import predict_frontier_at_limits
from saferl.data.world import ExactWorld
from saferl.data.world.exact import FEASIBILITY_TOLERANCE

__all__ = ["exact_comparison_table", "print_exact_optimum", "print_statistics", "report_console"]


def report_console() -> Console:
    """A console at least 180 columns wide, so tables of numbers are never cut when the output
    is a log file or a narrow terminal (the exact comparison table is about 160 wide)."""
    return Console(width=max(Console().width, 180))


def cost_headers(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """The expected-cost and violation column headers: ``E cost`` and ``violation`` for one
    constraint, ``E c1 (harm)``, ``violation c1``, ... for several."""
    if len(names) == 1:
        return ["E cost"], ["violation"]
    return ([f"E c{j + 1} ({name})" for j, name in enumerate(names)],
            [f"violation c{j + 1}" for j in range(len(names))])


def exact_comparison_table(title: str, rows, cost_names: Sequence[str] | None = None) -> Table:
    """Ground-truth comparison of policies: ``rows`` of ``(name, λ text, PolicyScore)``.

    The yardsticks of docs/algorithms.md §8: the feasible verdict (within the tolerance its header
    states), one ``E c_j`` column and one violation ``max(0, E c_j − d_j)`` column per constraint,
    the KL to ``π*`` and the normalised Lagrangian gap ``G(π)/G(π_ref)`` (never negative, 0 only
    at ``π*``).

    Args:
        cost_names: the constraints' names (their count must be the scores' m); by default
            ``c1, c2, ...``.
    """
    num_constraints = rows[0][2].num_constraints if rows else 1
    names = list(cost_names) if cost_names is not None else [f"c{j + 1}" for j in range(num_constraints)]
    if len(names) != num_constraints:
        raise ValueError(f"cost_names: expected {num_constraints} names (one per constraint); found {names}")
    cost_columns, violation_columns = cost_headers(names)
    table = Table(title=title)
    for column in (
        "policy",
        "λ",
        "E reward",
        *cost_columns,
        "KL",
        "E r − β·KL",
        "safe rate",
        f"E c ≤ d + {FEASIBILITY_TOLERANCE:g}",
        *violation_columns,
        "KL to π*",
        "norm. Lagr. gap",
    ):
        # Only the policy's name may wrap on a narrow console; numbers are never cut.
        wrap = column == "policy"
        table.add_column(
            column, justify="right", no_wrap=not wrap, overflow="fold" if wrap else "ellipsis"
        )
    for name, multiplier, score in rows:
        table.add_row(
            name,
            multiplier,
            f"{score.expected_reward:.4f}",
            *(f"{value:.4f}" for value in score.expected_cost),
            f"{score.kl:.4f}",
            f"{score.objective:.4f}",
            f"{score.safe_rate:.3f}",
            "yes" if score.feasible else "no",
            *(f"{value:.4f}" for value in score.violation),
            # Both are ≥ 0; a rounding error of −1e-16 at π* would print as "-0.0000".
            f"{max(score.kl_to_optimum, 0.0):.4f}",
            f"{max(score.normalised_lagrangian_gap, 0.0):.3f}",
        )
    return table


def _values(values) -> str:
    return ", ".join(f"{v:.6f}" for v in values)


def print_exact_optimum(
    world: ExactWorld,
    frontier_limits: Sequence[float],
    top_responses: int = 4,
    console: Console | None = None,
) -> None:
    """Print the reference, the two extremes and the constrained optimum, the optimum's most
    likely answers to one benign and one harmful prompt, and the predicted frontier (with several
    constraints: over the first constraint's limit, the others held at the world's)."""
    console = console or report_console()
    solution = world.optimum()
    policies: list[tuple[str, str, torch.Tensor]] = [
        ("reference π_ref", "—", world.ref_logprobs),
        ("unconstrained (λ = 0)", "0", world.unconstrained_logprobs()),
        ("safety-only tilt", "—", world.safety_only_logprobs()),
        ("constrained optimum π_λ*", _values(solution.multiplier.tolist()), world.optimal_logprobs()),
    ]
    limits = ", ".join(f"{value:g}" for value in world.cost_limit)
    table = exact_comparison_table(
        f"Built-in world, exact mode: β = {world.beta}, cost limit d = {limits} ({', '.join(world.cost_names)})",
        [(name, multiplier, world.score(logprobs)) for name, multiplier, logprobs in policies],
        world.cost_names,
    )
    console.print(table)

    optimal = world.optimal_logprobs().exp()
    reference = world.ref_logprobs.exp()
    examples = [
        next(i for i, p in enumerate(world.prompts) if not p.harmful),
        next(i for i, p in enumerate(world.prompts) if p.harmful),
    ]
    answers = Table(title="Most likely answers under π_λ* (reference probability in brackets)")
    answers.add_column("prompt")
    answers.add_column("answer")
    answers.add_column("π_λ*", justify="right")
    answers.add_column("reward", justify="right")
    for name in world.cost_names:
        answers.add_column(name if world.num_constraints > 1 else "cost", justify="right")
    for prompt_index in examples:
        for rank, response in enumerate(
            optimal[prompt_index].argsort(descending=True)[:top_responses].tolist()
        ):
            text = world.responses.text(response) or "(empty)"
            if not world.responses.finished[response]:
                text += " …"
            answers.add_row(
                world.prompts[prompt_index].text if rank == 0 else "",
                text,
                f"{optimal[prompt_index, response].item():.3f} ({reference[prompt_index, response].item():.3f})",
                f"{world.rewards[prompt_index, response].item():+.2f}",
                *(f"{value:+.2f}" for value in world.costs[prompt_index, response].tolist()),
            )
    console.print(answers)

    grid = torch.tensor(world.cost_limit, dtype=torch.float64).repeat(len(frontier_limits), 1)  # (grid, m)
    grid[:, 0] = torch.tensor([float(limit) for limit in frontier_limits], dtype=torch.float64)
    frontier = predict_frontier_at_limits(world.problem(), grid)
    title = "Exact optimum at other limits (the reward–cost frontier)"
    if world.num_constraints > 1:
        title += f" over the {world.cost_names[0]} limit, the others at {', '.join(map(str, world.cost_limit[1:]))}"
    predicted = Table(title=title)
    cost_columns, _ = cost_headers(world.cost_names)
    for column in ("limit d", "λ*", "E reward", *cost_columns, "KL to ref"):
        predicted.add_column(column, justify="right")
    for row in range(frontier.feasible.shape[0]):
        limit = f"{grid[row, 0].item():.3f}"
        if not frontier.feasible[row]:
            predicted.add_row(limit, "infeasible", "—", *(["—"] * world.num_constraints), "—")
            continue
        predicted.add_row(
            limit,
            ", ".join(f"{value:.4f}" for value in frontier.multipliers[row].tolist()),
            f"{frontier.expected_reward[row].item():.4f}",
            *(f"{value:.4f}" for value in frontier.expected_cost[row].tolist()),
            f"{frontier.kl[row].item():.4f}",
        )
    console.print(predicted)
    console.print(
        f"{len(world.prompts)} prompts × {len(world.responses)} responses; dual solved by {solution.method} "
        f"in {solution.iterations} iterations; D(λ*) − J(π_λ*) = "
        f"{(solution.dual_value - solution.objective).item():.1e} (strong duality)",
        soft_wrap=True,
    )


def print_statistics(
    title: str, statistics: dict[str, float], console: Console | None = None
) -> None:
    """Print a dataset's statistics as a two-column table."""
    console = console or report_console()
    table = Table(title=title)
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in statistics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
