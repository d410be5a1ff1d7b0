"""Masked reductions: exact values in float64, empty slices, garbage at invalid entries."""

from __future__ import annotations

import math

import pytest
import torch

from saferl.core.masked import masked_mean, masked_sum, masked_var, masked_whiten

F64 = torch.float64


def _values_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.tensor([[1.0, 2.0, 3.0, 5.0], [4.0, 5.0, 6.0, 7.0]], dtype=F64)
    mask = torch.tensor([[True, False, True, True], [False, False, False, False]])
    return values, mask


def test_masked_sum_all_and_per_row() -> None:
    values, mask = _values_and_mask()
    # valid entries 1, 3, 5 in row 0; none in row 1
    assert masked_sum(values, mask).item() == 9.0
    torch.testing.assert_close(
        masked_sum(values, mask, dim=-1), torch.tensor([9.0, 0.0], dtype=F64)
    )
    # per column: 1, 0, 3, 5
    torch.testing.assert_close(
        masked_sum(values, mask, dim=0), torch.tensor([1.0, 0.0, 3.0, 5.0], dtype=F64)
    )


def test_masked_mean_empty_rows_are_zero() -> None:
    values, mask = _values_and_mask()
    # row 0: (1 + 3 + 5) / 3 = 3; row 1 has no valid entry -> 0 by definition, not nan
    torch.testing.assert_close(
        masked_mean(values, mask, dim=-1), torch.tensor([3.0, 0.0], dtype=F64)
    )
    # over everything: 9 / 3 = 3
    assert masked_mean(values, mask).item() == 3.0
    # nothing valid at all -> 0
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0


def test_invalid_entries_never_leak_even_when_nan_or_inf() -> None:
    values, mask = _values_and_mask()
    values = values.clone()
    values[0, 1] = float("nan")
    values[1, :] = float("inf")
    assert masked_sum(values, mask).item() == 9.0
    torch.testing.assert_close(
        masked_mean(values, mask, dim=-1), torch.tensor([3.0, 0.0], dtype=F64)
    )
    assert masked_var(values, mask).item() == 4.0
    assert torch.isfinite(masked_whiten(values, mask)).all()


def test_zero_one_float_mask_equals_bool_mask() -> None:
    values, mask = _values_and_mask()
    float_mask = mask.to(F64)
    torch.testing.assert_close(
        masked_mean(values, float_mask, dim=-1), masked_mean(values, mask, dim=-1)
    )
    torch.testing.assert_close(masked_var(values, float_mask), masked_var(values, mask))


def test_mask_broadcasts_and_bad_shape_raises() -> None:
    values = torch.arange(6, dtype=F64).reshape(2, 3)  # [[0, 1, 2], [3, 4, 5]]
    column_mask = torch.tensor([True, False, True])  # broadcast over rows
    # 0 + 2 + 3 + 5 = 10
    assert masked_sum(values, column_mask).item() == 10.0
    with pytest.raises(ValueError, match="does not broadcast"):
        masked_sum(values, torch.ones(4, dtype=torch.bool))


def test_masked_var_unbiased_and_biased() -> None:
    values, mask = _values_and_mask()
    # valid 1, 3, 5: mean 3, squared deviations 4, 0, 4 (sum 8)
    assert masked_var(values, mask, unbiased=True).item() == 4.0  # 8 / 2
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(8.0 / 3.0, abs=1e-15)
    # agrees with torch on the selected entries
    selected = values[mask]
    assert masked_var(values, mask).item() == pytest.approx(selected.var().item(), abs=1e-15)


def test_masked_var_too_few_entries_raises() -> None:
    values = torch.tensor([1.0, 2.0], dtype=F64)
    with pytest.raises(ValueError, match="at least 2 valid entries"):
        masked_var(values, torch.tensor([True, False]), unbiased=True)
    with pytest.raises(ValueError, match="at least 1 valid entries"):
        masked_var(values, torch.tensor([False, False]), unbiased=False)
    # one entry, biased: variance 0
    assert masked_var(values, torch.tensor([True, False]), unbiased=False).item() == 0.0


def test_masked_whiten_uses_valid_entries_only() -> None:
    values, mask = _values_and_mask()
    # valid 1, 3, 5: mean 3, unbiased std 2 -> (-1, 0, 1); invalid entries -> 0
    expected = torch.tensor([[-1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(masked_whiten(values, mask, eps=0.0), expected)
    # shift_mean=False adds the mean 3 back to valid entries: (2, 3, 4)
    expected_unshifted = torch.tensor([[2.0, 0.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(
        masked_whiten(values, mask, shift_mean=False, eps=0.0), expected_unshifted
    )
    # default eps 1e-8: (5 - 3) / sqrt(4 + 1e-8) = 1 - 1.25e-9
    whitened = masked_whiten(values, mask)
    assert whitened[0, 3].item() == pytest.approx(2.0 / math.sqrt(4.0 + 1e-8), abs=1e-15)


def test_masked_whiten_random_has_zero_mean_unit_variance() -> None:
    generator = torch.Generator().manual_seed(0)
    values = 3.0 + 5.0 * torch.randn(6, 9, generator=generator, dtype=F64)
    mask = torch.rand(6, 9, generator=generator, dtype=F64) < 0.6
    whitened = masked_whiten(values, mask, eps=0.0)
    assert masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_var(whitened, mask).item() == pytest.approx(1.0, abs=1e-12)
    assert (whitened[~mask] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_kept(dtype: torch.dtype) -> None:
    values, mask = _values_and_mask()
    values = values.to(dtype)
    assert masked_sum(values, mask).dtype == dtype
    assert masked_mean(values, mask, dim=-1).dtype == dtype
    assert masked_var(values, mask).dtype == dtype
    assert masked_whiten(values, mask).dtype == dtype
