"""Predict mode's outputs (saferl.eval.frontier): table rows, CSV round trip, PNG, no overwrite."""

from __future__ import annotations

import csv
import io
import math

import matplotlib.image
import pytest
import torch
from rich.console import Console

from saferl.core.dual import DualProblem, predict_frontier, predict_frontier_at_limits, solve
from saferl.eval.frontier import frontier_table, print_frontier, write_frontier

F64 = torch.float64
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sampled_problem(num_constraints: int = 1) -> DualProblem:
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(8, 16, generator=generator, dtype=F64)
    costs = torch.randn(8, 16, num_constraints, generator=generator, dtype=F64)
    return DualProblem.from_samples(rewards, costs.squeeze(-1), beta=0.5, cost_limit=-0.3)


@pytest.fixture
def limits_frontier():
    """A grid of limits with one infeasible point (−5 is below every sample's cost)."""
    problem = sampled_problem()
    return predict_frontier_at_limits(problem, [-5.0, -0.6, -0.3, 0.0, 0.5]), solve(problem)


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_frontier_table_rows_one_constraint(limits_frontier):
    frontier, _ = limits_frontier
    rows = frontier_table(frontier)
    assert len(rows) == 5
    assert list(rows[0]) == [
        "multiplier",
        "expected_reward",
        "expected_cost",
        "kl",
        "cost_limit",
        "feasible",
    ]
    assert rows[0]["feasible"] is False and math.isnan(rows[0]["multiplier"])
    assert rows[0]["cost_limit"] == -5.0
    for i, row in enumerate(rows[1:], start=1):
        assert row["feasible"] is True
        assert row["multiplier"] == frontier.multipliers[i, 0].item()
        assert row["expected_cost"] == frontier.expected_cost[i, 0].item()
        assert row["kl"] == frontier.kl[i].item()
    # Looser limits need smaller multipliers.
    multipliers = [row["multiplier"] for row in rows[1:]]
    assert multipliers == sorted(multipliers, reverse=True)


def test_frontier_table_several_constraints_has_suffixed_columns():
    frontier = predict_frontier(sampled_problem(2), torch.tensor([[0.0, 0.0], [0.5, 1.0]]))
    rows = frontier_table(frontier)
    assert list(rows[1]) == [
        "multiplier_0",
        "multiplier_1",
        "expected_reward",
        "expected_cost_0",
        "expected_cost_1",
        "kl",
        "feasible",
    ]
    assert rows[1]["multiplier_1"] == 1.0
    assert rows[0]["multiplier_0"] == 0.0 and rows[0]["feasible"] is True
    # λ = 0 is the unconstrained tilt π ∝ π_ref exp(r/β), not the reference: KL > 0.
    assert rows[0]["kl"] > 0.0


def test_write_frontier_csv_round_trips_and_png_is_valid(tmp_path, limits_frontier):
    frontier, solution = limits_frontier
    csv_path, png_path = write_frontier(
        frontier, tmp_path / "predict", "sampled toy, β = 0.5", solution=solution
    )
    assert csv_path == tmp_path / "predict" / "frontier.csv" and csv_path.is_file()
    assert png_path == tmp_path / "predict" / "frontier.png" and png_path.is_file()

    rows = read_csv(csv_path)
    expected = frontier_table(frontier)
    assert len(rows) == len(expected)
    for written, row in zip(rows, expected, strict=True):
        assert list(written) == list(row)
        assert written["feasible"] == ("true" if row["feasible"] else "false")
        for key, value in row.items():
            if key == "feasible":
                continue
            read_back = float(written[key])
            assert (math.isnan(read_back) and math.isnan(value)) or read_back == value  # exact

    assert png_path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(png_path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0  # something was drawn


def test_write_frontier_refuses_to_overwrite(tmp_path, limits_frontier):
    frontier, solution = limits_frontier
    csv_path, png_path = write_frontier(frontier, tmp_path, "first")
    before = csv_path.read_bytes()
    png_path.unlink()  # even when only one of the two exists
    with pytest.raises(FileExistsError, match="frontier.csv already exists; pass overwrite=True"):
        write_frontier(frontier, tmp_path, "second", solution=solution)
    assert not png_path.exists() and csv_path.read_bytes() == before  # nothing written
    write_frontier(frontier, tmp_path, "second", solution=solution, overwrite=True)
    assert png_path.read_bytes()[:8] == PNG_SIGNATURE


def test_write_frontier_several_constraints(tmp_path):
    problem = sampled_problem(2).with_cost_limit([0.0, 0.1])
    frontier = predict_frontier(problem, torch.tensor([[0.0, 0.0], [0.5, 1.0], [1.0, 2.0]]))
    csv_path, png_path = write_frontier(frontier, tmp_path, "two constraints", solve(problem))
    assert read_csv(csv_path)[2]["multiplier_1"] == "2.0"
    assert matplotlib.image.imread(png_path).shape[0] > 100


def test_print_frontier_shows_every_row_and_the_optimum(limits_frontier):
    frontier, solution = limits_frontier
    buffer = io.StringIO()
    console = Console(file=buffer, width=200)
    print_frontier(frontier, "toy frontier [sampled]", solution, console=console)
    text = buffer.getvalue()
    assert "toy frontier [sampled]" in text and "infeasible" in text
    assert f"{frontier.multipliers[1, 0].item():.4f}" in text
    assert f"λ* = {solution.multiplier.item():.6g}" in text
    assert f"E[r] = {solution.expected_reward.item():.6g}" in text  # not eaten as markup
