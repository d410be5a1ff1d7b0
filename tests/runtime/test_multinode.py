"""Multi-node: Ray's own multi-node test cluster (several raylets on loopback) in a subprocess,
so it never meets the session's local cluster. Groups are spread over nodes by placement,
colocated roles follow their root role's bundles, and a train step and a generation complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("multinode_main.py")


def test_groups_spread_over_nodes_train_and_generate() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=SCRIPT.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, (
        f"multi-node script failed (exit {completed.returncode}):\n"
        f"{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
    )
    result = json.loads(lines[-1][len("RESULT ") :])
    policy_nodes = result["policy_node_ids"]
    assert len(set(policy_nodes)) == 2  # STRICT_SPREAD: one rank per node
    assert sorted(policy_nodes) == result["worker_node_ids"]  # the head has no CPUs
    assert result["reference_node_ids"] == policy_nodes  # colocated rank by rank
    assert result["backend"] == "gloo"
    assert result["changed"] and result["loss"] > 0
    assert result["generated_shape"][0] == 4 and result["response_tokens"] > 0
