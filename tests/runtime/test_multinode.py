"""Multi-node: Ray's own multi-node test cluster (several raylets on loopback) in a subprocess,
so it never meets the session's local cluster (tests/runtime/multinode_main.py, run once for both
tests). Groups are spread over nodes by placement, colocated roles follow their root role's
bundles, a train step and a generation complete, two PPO-Lagrangian iterations run with their six
roles over two nodes, and a PPO-Lagrangian run that loses a node goes on by itself to the
uninterrupted run's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("multinode_main.py")


@pytest.fixture(scope="module")
def multinode() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=SCRIPT.parent, env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, (
        f"multi-node script failed (exit {completed.returncode}):\n"
        f"{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
    )
    return json.loads(lines[-1][len("RESULT ") :])


def test_groups_spread_over_nodes_train_and_generate(multinode) -> None:
    result = multinode["spread"]
    policy_nodes = result["policy_node_ids"]
    assert len(set(policy_nodes)) == 2  # STRICT_SPREAD: one rank per node
    assert sorted(policy_nodes) == multinode["worker_node_ids"]  # the head has no CPUs
    assert result["reference_node_ids"] == policy_nodes  # colocated rank by rank
    assert result["backend"] == "gloo"
    assert result["changed"] and result["loss"] > 0
    assert result["generated_shape"][0] == 4 and result["response_tokens"] > 0


def test_ppo_lag_iterations_with_every_role_spread_over_nodes(multinode) -> None:
    """The world's PPO-Lagrangian stage, two iterations, its six roles (one rank of 1 CPU each)
    in four shared rank processes spread over the two 3-CPU worker raylets of Ray's multi-node
    test cluster."""
    result = multinode["ppo_lag"]
    workers = set(multinode["worker_node_ids"])
    # policy, reference, the reward and cost score models and critics: four rank processes
    # (runtime.max_single_rank_processes=4), more than one worker node's 3 CPUs hold.
    nodes = result["rank_nodes"]
    assert len(nodes) == 4
    assert set(nodes) == workers and max(nodes.count(node) for node in workers) <= 3
    assert len(result["history"]) == 2
    assert all(value == value for metrics in result["history"] for value in metrics.values())  # finite (no NaN)
    assert result["history"][-1]["multiplier/value_0"] == result["multiplier"][0] > 0
    assert result["policy_exported"]


def test_a_run_that_loses_a_node_goes_on_by_itself_to_the_uninterrupted_runs_numbers(multinode) -> None:
    """A worker node holding PPO-Lagrangian ranks is removed after the second iteration (before its
    checkpoint): one automatic restart names a lost role, goes on from iteration 1's checkpoint on
    the nodes left, and the history and λ equal those of the uninterrupted run."""
    result = multinode["recovered"]
    assert len(result["removed_node"]) == 1
    (restart,) = result["restarts"]
    assert restart["number"] == 1 and restart["role"] and "died" in restart["error"]
    assert restart["resumed_from"].startswith("iteration 1 ")

    def without_timings(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in history]

    expected, found = multinode["ppo_lag"], result["recovered"]  # part 2: the same run, uninterrupted
    assert len(found["history"]) == len(expected["history"]) == 2
    for found_row, expected_row in zip(without_timings(found["history"]), without_timings(expected["history"]), strict=True):
        assert found_row == pytest.approx(expected_row, rel=1e-6, abs=1e-9)
    assert found["multiplier"] == pytest.approx(expected["multiplier"], rel=1e-9)
