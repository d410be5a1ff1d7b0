"""The numerical guard helper (saferl.core.finite) and the learners' guard (saferl.learners.nonfinite):
what a NaN or inf stops, and what its message says."""

from __future__ import annotations

import math

import pytest
import torch

from saferl.core.finite import NonFiniteCount, NonFiniteError, check_finite, count_nonfinite
from saferl.learners.nonfinite import NonFiniteGuard, last_completed
from saferl.learners.settings import PPOSettings, PreferenceSettings
from saferl.runtime.types import RefusedStep, TrainStepOutput


def test_counts_nan_and_inf_apart_and_integers_are_finite() -> None:
    # 2 NaN, +inf and −inf, 2 finite: 6 entries
    values = torch.tensor([[math.nan, 1.0, math.inf], [-math.inf, math.nan, 0.0]])
    assert count_nonfinite(values) == NonFiniteCount(nan=2, inf=2, total=6)
    assert count_nonfinite(torch.arange(4)).finite
    check_finite(torch.zeros(3), "advantages", iteration=1)  # finite: nothing raised


def test_the_error_names_the_tensor_iteration_driver_counts_and_the_skip_key() -> None:
    scores = torch.tensor([0.5, math.nan, 1.0, math.inf])
    with pytest.raises(NonFiniteError) as raised:
        check_finite(scores, "reward scores", iteration=7)
    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert message.startswith("non-finite reward scores at iteration 7 on the driver: 1 NaN and 1 inf among 4 entries")
    assert "learner.skip_nonfinite_batches=true" in message


def test_the_error_names_the_rank_that_computed_the_tensor() -> None:
    with pytest.raises(NonFiniteError, match=r"non-finite policy loss at iteration 3 on policy rank 1: 1 NaN and 0 inf among 1"):
        check_finite(torch.tensor(math.nan), "policy loss", iteration=3, where="policy rank 1")


def test_the_guard_raises_by_default_and_skips_and_counts_when_asked() -> None:
    rollout = {"reward scores": torch.ones(4), "old log-probs": torch.tensor([0.0, -math.inf])}
    with pytest.raises(NonFiniteError, match="non-finite old log-probs at iteration 2 on the driver"):
        NonFiniteGuard(skip=False).inputs_finite(2, rollout)
    guard = NonFiniteGuard(skip=True)
    assert not guard.inputs_finite(2, rollout)
    assert guard.skip_batch() == {"perf/skipped_batches": 1.0}
    assert guard.inputs_finite(3, {"reward scores": torch.ones(4)})
    assert guard.metrics() == {"perf/skipped_batches": 1.0}


def test_a_step_the_ranks_refused_names_loss_rank_and_iteration() -> None:
    refused = TrainStepOutput(math.nan, None, 1e-3, 8, {}, RefusedStep("reward_critic rank 1", NonFiniteCount(1, 0, 1)))
    with pytest.raises(NonFiniteError, match="non-finite reward critic loss at iteration 4 on reward_critic rank 1"):
        NonFiniteGuard(skip=False).step_taken(refused, "reward critic loss", 4)
    assert not NonFiniteGuard(skip=True).step_taken(refused, "reward critic loss", 4)
    assert NonFiniteGuard(skip=False).step_taken(TrainStepOutput(0.5, None, 1e-3, 8), "policy loss", 4)


def test_the_last_completed_batch_and_a_run_that_skipped_every_batch() -> None:
    history = [{"reward/score": 1.0, "perf/skipped_batches": 0.0}, {"perf/skipped_batches": 1.0}]
    assert last_completed(history, "reward/score") is history[0]
    with pytest.raises(NonFiniteError, match="all 1 batches of the run were skipped"):
        last_completed(history[1:], "reward/score")


@pytest.mark.parametrize("value", ["true", 1, None])
def test_skip_nonfinite_batches_must_be_a_boolean(value) -> None:
    with pytest.raises(ValueError, match=rf"learner.skip_nonfinite_batches: expected true or false .*found {value!r}"):
        PPOSettings(iterations=1, prompts_per_iteration=1, skip_nonfinite_batches=value)
    with pytest.raises(ValueError, match="learner.skip_nonfinite_batches"):
        PreferenceSettings(skip_nonfinite_batches=value)
    assert PPOSettings(iterations=1, prompts_per_iteration=1).skip_nonfinite_batches is False
