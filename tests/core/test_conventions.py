"""The sign-convention converters (docs/algorithms.md §0): utility g = −c, limit d = E_ref c − b."""

from __future__ import annotations

import pytest
import torch

from saferl.core.conventions import (
    cost_from_utility,
    limit_from_margin,
    margin_from_limit,
    utility_from_cost,
)


def test_utility_and_cost_are_negatives_and_round_trip():
    utility = torch.tensor([[0.5, -1.25], [2.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(cost_from_utility(utility), -utility)
    torch.testing.assert_close(utility_from_cost(cost_from_utility(utility)), utility)


def test_margin_and_limit():
    # The reference costs 0.3 on average; "be safer by 0.5" means the limit d = 0.3 − 0.5 = −0.2.
    limit = limit_from_margin(0.3, 0.5)
    assert limit.dtype == torch.float64 and limit.shape == (1,)
    assert limit.item() == pytest.approx(-0.2, abs=1e-15)  # Python floats stay float64
    assert margin_from_limit(0.3, limit).item() == pytest.approx(0.5, abs=1e-15)
    # m = 2, tensor inputs keep their dtype.
    reference = torch.tensor([1.0, -0.5], dtype=torch.float32)
    torch.testing.assert_close(
        limit_from_margin(reference, torch.tensor([0.25, 0.0])), torch.tensor([0.75, -0.5])
    )
