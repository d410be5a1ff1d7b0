"""Run by test_runs.py in a subprocess (it needs its own Ray instance): start a Ray cluster (the
"existing cluster" a user would have), run a one-job `saferl -m launcher=ray job=evaluate ...`
sweep against it, and print one JSON line with the exit status and the worker actors the cluster
hosted (Ray's state API, dead actors included) — proof that the jobs' actor groups joined it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ray.cluster_utils import Cluster
from ray.util.state import list_actors


def main(run_dir: str, sweep_dir: str) -> int:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
    try:
        completed = subprocess.run(
            [
                sys.executable, "-m", "saferl.cli", "-m", "launcher=ray",
                f"hydra.launcher.ray.init.address={cluster.address}",
                f"runtime.address={cluster.address}",
                # Its four groups share two rank processes (each process started costs seconds).
                "runtime.max_single_rank_processes=2",
                "job=evaluate", f"job.run_dir={run_dir}", "job.responses_per_prompt=1",
                "logger=none", f"hydra.sweep.dir={sweep_dir}", "seed=3",
            ],
            capture_output=True, text=True, timeout=600,
        )
        actors = [a.class_name for a in list_actors(address=cluster.address, detail=True, limit=1000)]
        print("RESULT " + json.dumps({
            "returncode": completed.returncode,
            "stderr": completed.stderr[-3000:],
            "worker_actors": sorted(name for name in actors if name == "RankHost"),
        }), flush=True)
        return 0
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
