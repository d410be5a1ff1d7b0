"""Numerical guards: find NaN and ±inf in a tensor and say where they are.

A NaN that reaches an optimizer spreads to every weight in one step, and an inf in the
multiplier's input makes λ meaningless; both leave a run that trains on for hours on garbage. The
learners therefore check what they feed on (scores, log-probs, advantages, losses, the multiplier)
with :func:`check_finite` and stop with a :class:`NonFiniteError` that names the tensor, the
iteration and where it was computed, or skip the batch (``learner.skip_nonfinite_batches``).

Pure tensor code: no config, no device, no distributed call (the ranks all-reduce
:class:`NonFiniteCount` themselves).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["NonFiniteCount", "NonFiniteError", "check_finite", "count_nonfinite", "nonfinite_error"]

#: What the messages tell a user who would rather skip such batches than stop.
SKIP_HINT = (
    "to skip such batches instead (nothing is updated with them; they are counted under "
    "perf/skipped_batches), set learner.skip_nonfinite_batches=true"
)


class NonFiniteError(ValueError):
    """A tensor a learner was about to use holds NaN or ±inf (the message says which, where and
    how many). Raised before anything is updated with it."""


@dataclass(frozen=True)
class NonFiniteCount:
    """How many entries of a tensor are NaN or ±inf.

    Attributes:
        nan: NaN entries.
        inf: +inf or −inf entries.
        total: all entries.
    """

    nan: int
    inf: int
    total: int

    @property
    def finite(self) -> bool:
        """True when no entry is NaN or ±inf."""
        return self.nan == 0 and self.inf == 0


def count_nonfinite(values: torch.Tensor) -> NonFiniteCount:
    """The NaN and ±inf entries of ``values`` (any shape, any dtype; integer tensors are finite)."""
    values = values.detach()
    if not values.is_floating_point():
        return NonFiniteCount(0, 0, values.numel())
    return NonFiniteCount(
        nan=int(torch.isnan(values).sum()), inf=int(torch.isinf(values).sum()), total=values.numel()
    )


def nonfinite_error(
    name: str, count: NonFiniteCount, iteration: int | None, where: str = "the driver"
) -> NonFiniteError:
    """The error for ``count`` non-finite entries of the tensor ``name``.

    Args:
        name: what the tensor holds, e.g. ``"reward scores"``, ``"policy loss"``, ``"multiplier"``.
        count: its non-finite entries.
        iteration: the learner's iteration (1-based, as logged); None outside a learner's loop.
        where: ``"the driver"`` or the rank that computed it, e.g. ``"policy rank 1"``.
    """
    at = "" if iteration is None else f" at iteration {iteration}"
    return NonFiniteError(
        f"non-finite {name}{at} on {where}: {count.nan} NaN and {count.inf} inf among "
        f"{count.total} entries; nothing was updated with them and this iteration is not "
        f"checkpointed (the last checkpoint holds the last good state); {SKIP_HINT}"
    )


def check_finite(
    values: torch.Tensor, name: str, iteration: int | None, where: str = "the driver"
) -> None:
    """Raise :class:`NonFiniteError` when ``values`` holds NaN or ±inf.

    Args:
        values: the tensor, any shape.
        name: what it holds (the message's subject), e.g. ``"advantages"``.
        iteration: the learner's iteration (1-based, as logged); None outside a learner's loop.
        where: ``"the driver"`` or the rank that computed it, e.g. ``"policy rank 0"``.

    Raises:
        NonFiniteError: naming ``name``, ``iteration``, ``where``, the NaN and inf counts out of
            the entries, and ``learner.skip_nonfinite_batches``.
    """
    count = count_nonfinite(values)
    if not count.finite:
        raise nonfinite_error(name, count, iteration, where)
