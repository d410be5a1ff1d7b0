"""PeCAN (``saferl.learners.pecan``): the implicit scores of both labellings against hand-computed
values, and its settings. Its steps run end to end on the world preset (tests/cli/test_runs.py) and
on hub-format files (tests/learners/test_hub.py)."""

from __future__ import annotations

import pytest
import torch

from saferl.learners import pecan
from saferl.learners.pecan import PecanSettings, implicit_scores


def test_implicit_scores_are_beta_log_ratios_and_the_cost_is_minus_the_safety_score():
    # One prompt, two samples; log π under π_r, π_g and π_ref (float64, exact).
    logps = {
        "reward": torch.tensor([[-1.0, -3.0]]),
        "safety": torch.tensor([[-2.5, -1.5]]),
        "reference": torch.tensor([[-2.0, -2.0]]),
    }
    reward, cost = implicit_scores(logps, beta=0.5, consistent=True)
    # r = β (log π_r − log π_ref) = 0.5·(1, −1); g = 0.5·(−0.5, 0.5); c = −g.
    assert reward.tolist() == [[0.5, -0.5]] and cost.tolist() == [[0.25, -0.25]]
    assert reward.dtype == torch.float64
    # The published labelling: the raw log-ratios (β left out).
    reward, cost = implicit_scores(logps, beta=0.5, consistent=False)
    assert reward.tolist() == [[1.0, -1.0]] and cost.tolist() == [[0.5, -0.5]]


def test_pecan_reads_pairs_and_prompts_and_no_scorer():
    needs = pecan.needs(PecanSettings())
    assert needs.pairs and needs.prompts and not needs.scorers and not needs.critics


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"num_samples": 3}, r"learner\.pecan\.num_samples"),
        ({"margin": -0.1}, r"learner\.pecan\.margin"),
        ({"frontier_grid": (-1.0,)}, r"learner\.pecan\.frontier_grid"),
        ({"num_prompts": 0}, r"learner\.pecan\.num_prompts"),
        ({"anchor_weight": -0.5}, r"learner\.pecan\.anchor_weight"),
    ],
)
def test_settings_that_cannot_run_name_their_key(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        PecanSettings(**changes)
