"""What a NaN or ±inf does to a learner's batch: stop the run (the default) or skip the batch.

One :class:`NonFiniteGuard` per run serves every learner that trains on batches (PPO-Lagrangian's
rollouts, the preference losses' pair batches):

* the driver's own tensors (scores, log-probs, advantages, the multiplier) go through
  :meth:`NonFiniteGuard.inputs_finite` before anything is updated with them;
* the losses are checked in the ranks before ``backward`` (:func:`saferl.runtime.workers.refused_step`,
  all ranks agree); a refused step comes back to :meth:`NonFiniteGuard.step_taken`, which names the
  loss and the iteration.

Either raises :class:`~saferl.core.finite.NonFiniteError` (no checkpoint is written for the
iteration, so the last one holds the last good state) or, with ``learner.skip_nonfinite_batches``,
returns False: the learner then drops the batch (:meth:`NonFiniteGuard.skip_batch`) and the running
count is logged every iteration as ``perf/skipped_batches``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from saferl.core.finite import NonFiniteError, count_nonfinite, nonfinite_error
from saferl.runtime.types import TrainStepOutput

__all__ = ["NonFiniteGuard", "last_completed"]

logger = logging.getLogger(__name__)


class NonFiniteGuard:
    """Stops on a non-finite batch, or (``skip``) skips and counts it.

    Args:
        skip: ``learner.skip_nonfinite_batches``.
        skipped_batches: batches skipped before (a resumed run's count).
    """

    def __init__(self, skip: bool, skipped_batches: int = 0) -> None:
        self.skip = skip
        self.skipped_batches = skipped_batches

    def inputs_finite(self, iteration: int, tensors: Mapping[str, torch.Tensor]) -> bool:
        """True when every tensor (name → values, computed on the driver) is finite; otherwise
        raise for the first non-finite one, or return False when skipping."""
        for name, values in tensors.items():
            count = count_nonfinite(values)
            if not count.finite:
                return self._refuse(nonfinite_error(name, count, iteration))
        return True

    def step_taken(self, output: TrainStepOutput, loss_name: str, iteration: int) -> bool:
        """True when the group took the optimizer step (``train_step(..., report_nonfinite=True)``);
        for a step its ranks refused on a non-finite ``loss_name``, raise, or return False when
        skipping."""
        if output.refused is None:
            return True
        return self._refuse(nonfinite_error(loss_name, output.refused.count, iteration, output.refused.where))

    def _refuse(self, error: NonFiniteError) -> bool:
        if not self.skip:
            raise error
        logger.warning("skipping the batch: %s", error)
        return False

    def skip_batch(self) -> dict[str, float]:
        """Count one skipped batch; returns :meth:`metrics`."""
        self.skipped_batches += 1
        return self.metrics()

    def metrics(self) -> dict[str, float]:
        """``perf/skipped_batches``: batches skipped so far in the run."""
        return {"perf/skipped_batches": float(self.skipped_batches)}


def last_completed(history: Sequence[Mapping[str, float]], key: str) -> Mapping[str, float]:
    """The last metrics of ``history`` that hold ``key`` (a skipped batch logs only ``perf/``).

    Raises:
        NonFiniteError: every batch was skipped.
    """
    for metrics in reversed(history):
        if key in metrics:
            return metrics
    raise NonFiniteError(
        f"all {len(history)} batches of the run were skipped as non-finite (perf/skipped_batches), "
        f"so there is no {key!r} to report; look for the cause in the warnings, or set "
        "learner.skip_nonfinite_batches=false to stop at the first one"
    )
