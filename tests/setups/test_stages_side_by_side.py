"""Independent stages (the reward and cost models) run side by side: at the same time, each
recorded in stages.json as it finishes (so it survives a sibling's failure), finished ones read
back instead of run again, results in the stages' order."""

from __future__ import annotations

import json
import threading

import pytest

from saferl.learners.run_state import StageRecords
from saferl.setups.stages import run_stages_side_by_side


def test_stages_run_at_the_same_time_and_are_recorded(tmp_path):
    barrier = threading.Barrier(2, timeout=10)  # one after the other, the first would time out

    def stage(accuracy):
        def run():
            barrier.wait()
            return {"pairwise_accuracy": accuracy}

        return run

    records = StageRecords(tmp_path, resume=False)
    metrics, seconds = run_stages_side_by_side(records, {
        "reward_model": ({"steps": 3}, stage(0.7)), "cost_model": ({"steps": 5}, stage(0.8)),
    })
    assert list(metrics) == ["reward_model", "cost_model"] == list(seconds)
    assert metrics == {"reward_model": {"pairwise_accuracy": 0.7}, "cost_model": {"pairwise_accuracy": 0.8}}
    saved = json.loads((tmp_path / "stages.json").read_text())
    assert saved["cost_model"] == {"metrics": {"pairwise_accuracy": 0.8}, "seconds": seconds["cost_model"],
                                   "settings": {"steps": 5}}


def test_a_finished_stage_survives_a_siblings_failure_and_is_not_run_again(tmp_path):
    def broken():
        raise RuntimeError("cost_model rank 0 died")

    runs = []

    def reward():
        runs.append("reward_model")
        return {"pairwise_accuracy": 0.7}

    with pytest.raises(RuntimeError, match="cost_model rank 0 died"):
        run_stages_side_by_side(StageRecords(tmp_path, resume=False), {
            "reward_model": ({"steps": 3}, reward), "cost_model": ({"steps": 5}, broken),
        })
    assert set(json.loads((tmp_path / "stages.json").read_text())) == {"reward_model"}
    resumed = StageRecords(tmp_path, resume=True)
    metrics, _ = run_stages_side_by_side(resumed, {
        "reward_model": ({"steps": 3}, reward), "cost_model": ({"steps": 5}, lambda: {"pairwise_accuracy": 0.9}),
    })
    assert runs == ["reward_model"]  # read back, not trained again
    assert metrics == {"reward_model": {"pairwise_accuracy": 0.7}, "cost_model": {"pairwise_accuracy": 0.9}}

