"""PPO clipped losses and diagnostics: both clip branches, gradients, averaging, worked values."""

from __future__ import annotations

import math

import pytest
import torch

from saferl.core.ppo import (
    approx_kl,
    clip_fraction,
    explained_variance,
    ppo_policy_loss,
    ppo_value_loss,
)

F64 = torch.float64


# ----------------------------------------------------------------------------------- policy loss
@pytest.mark.parametrize(
    ("advantage", "ratio", "expected_loss", "expected_grad"),
    [
        # A > 0, ρ = 1.5 > 1 + ε: max(−1.5, −1.2) = −1.2 (clipped branch, constant in θ)
        (1.0, 1.5, -1.2, 0.0),
        # A > 0, ρ = 0.5 < 1 − ε: max(−0.5, −0.8) = −0.5 (unclipped); d/dlogπ = −A·ρ = −0.5
        (1.0, 0.5, -0.5, -0.5),
        # A < 0, ρ = 1.5: max(1.5, 1.2) = 1.5 (unclipped); d/dlogπ = −A·ρ = 1.5
        (-1.0, 1.5, 1.5, 1.5),
        # A < 0, ρ = 0.5: max(0.5, 0.8) = 0.8 (clipped branch, constant in θ)
        (-1.0, 0.5, 0.8, 0.0),
        # inside the trust region, A = 2, ρ = 1.1: −2.2; d/dlogπ = −2.2
        (2.0, 1.1, -2.2, -2.2),
    ],
)
def test_policy_loss_clip_branches_and_gradients(
    advantage: float, ratio: float, expected_loss: float, expected_grad: float
) -> None:
    old_logprobs = torch.tensor([[-1.0]], dtype=F64)
    logprobs = (old_logprobs + math.log(ratio)).requires_grad_(True)
    advantages = torch.tensor([[advantage]], dtype=F64)
    mask = torch.tensor([[True]])
    loss = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-12)
    loss.backward()
    assert logprobs.grad.item() == pytest.approx(expected_grad, abs=1e-12)


def test_policy_loss_averages_per_sequence_then_over_batch() -> None:
    # ρ = 1 everywhere, so ℓ_t = −A_t.
    # row 0: one valid token, A = 4; row 1: four valid tokens, A = 1; row 2: no valid token.
    mask = torch.tensor(
        [[True, False, False, False], [True, True, True, True], [False, False, False, False]]
    )
    advantages = torch.tensor(
        [[4.0, 100.0, 100.0, 100.0], [1.0, 1.0, 1.0, 1.0], [100.0, 100.0, 100.0, 100.0]], dtype=F64
    )
    logprobs = torch.zeros(3, 4, dtype=F64)
    loss = ppo_policy_loss(logprobs, logprobs.clone(), advantages, mask, clip_eps=0.2)
    # per sequence: −4 and −1; the empty row is left out; batch mean −2.5
    assert loss.item() == pytest.approx(-2.5, abs=1e-15)
    # a flat token mean would be −(4 + 1 + 1 + 1 + 1) / 5 = −1.6
    assert loss.item() != pytest.approx(-1.6, abs=1e-3)


def test_policy_loss_does_not_differentiate_advantages_or_old_logprobs() -> None:
    logprobs = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    old_logprobs = torch.tensor([[-1.1, -1.9]], dtype=F64, requires_grad=True)
    advantages = torch.tensor([[1.0, -1.0]], dtype=F64, requires_grad=True)
    ppo_policy_loss(
        logprobs, old_logprobs, advantages, torch.ones(1, 2, dtype=torch.bool), 0.2
    ).backward()
    assert logprobs.grad is not None
    assert old_logprobs.grad is None and advantages.grad is None


def test_policy_loss_rejects_bad_arguments() -> None:
    zeros = torch.zeros(2, 3, dtype=F64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="clip_eps"):
        ppo_policy_loss(zeros, zeros, zeros, mask, clip_eps=0.0)
    with pytest.raises(ValueError, match="one shape"):
        ppo_policy_loss(zeros, zeros, zeros[:, 0], mask, clip_eps=0.2)


# ------------------------------------------------------------------------------------ value loss
def test_value_loss_clip_branches_and_per_sequence_mean() -> None:
    # ε_v = 0.5. Row 0 has tokens a, b and padding; row 1 has token c and padding.
    #   a: V = 2, V_old = 1, R = 3: V_clip = 1.5; (V−R)² = 1,  (V_clip−R)² = 2.25 → 2.25 (clipped)
    #   b: V = 2, V_old = 1, R = 0: V_clip = 1.5; (V−R)² = 4,  (V_clip−R)² = 2.25 → 4    (unclipped)
    #   c: V = 0, V_old = 0, R = 1: V_clip = 0;   both 1                          → 1
    # per-sequence means: row 0 (2.25 + 4) / 2 = 3.125, row 1 1; loss = ½ · (3.125 + 1) / 2 = 1.03125
    # (a flat token mean would give ½ · 7.25 / 3 = 1.2083333)
    values = torch.tensor([[2.0, 2.0, 50.0], [0.0, 50.0, 50.0]], dtype=F64, requires_grad=True)
    old_values = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)
    returns = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss = ppo_value_loss(values, old_values, returns, mask, clip_eps_value=0.5)
    assert loss.item() == pytest.approx(1.03125, abs=1e-15)
    loss.backward()
    # a: clipped branch, V_clip is constant in V → 0
    # b: ½ · ½ (batch) · ½ (row 0 has 2 tokens) · 2 (V − R) = ½ · ½ · ½ · 4 = 0.5
    # c: ½ · ½ (batch) · 1 (row 1 has 1 token) · 2 (V − R) = −0.5 (both branches equal, V inside the clip)
    expected_grad = torch.tensor([[0.0, 0.5, 0.0], [-0.5, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(values.grad, expected_grad, rtol=0, atol=1e-15)


def test_value_loss_without_clipping_is_half_per_sequence_mse() -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(3, 5, generator=generator, dtype=F64)
    returns = torch.randn(3, 5, generator=generator, dtype=F64)
    mask = torch.rand(3, 5, generator=generator) < 0.7
    # old_values = values: the clip interval is centred on V itself, so V_clip = V
    loss = ppo_value_loss(values, values.clone(), returns, mask, clip_eps_value=5.0)
    squared = (values - returns) ** 2
    # per-sequence mean over each row's valid tokens, then the mean over rows that have any
    rows = [squared[b][mask[b]].mean() for b in range(3) if mask[b].any()]
    expected = 0.5 * torch.stack(rows).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-14)


# ----------------------------------------------------------------------------------- diagnostics
def test_approx_kl_worked_value() -> None:
    # ρ = 2 and 0.5 on the valid tokens, garbage on the invalid one
    # (2 − 1) − ln 2 = 0.3068528;  (0.5 − 1) + ln 2 = 0.1931472;  mean = 0.5 / 2 = 0.25
    old_logprobs = torch.tensor([[-1.0, -1.0, -1.0]], dtype=F64)
    logprobs = old_logprobs + torch.tensor([[math.log(2.0), math.log(0.5), 30.0]], dtype=F64)
    logprobs.requires_grad_(True)
    mask = torch.tensor([[True, True, False]])
    result = approx_kl(logprobs, old_logprobs, mask)
    assert result.item() == pytest.approx(0.25, abs=1e-15)
    assert not result.requires_grad
    # identical policies: exactly 0
    assert approx_kl(old_logprobs, old_logprobs, mask).item() == 0.0


def test_clip_fraction_worked_value() -> None:
    # ρ = 1.1, 1.3, 0.7, 0.9 on valid tokens, 5.0 on an invalid one; ε = 0.2
    # |ρ − 1| > 0.2 for 1.3 and 0.7 → 2 / 4 = 0.5
    ratios = torch.tensor([[1.1, 1.3, 0.7], [0.9, 5.0, 5.0]], dtype=F64)
    old_logprobs = torch.full((2, 3), -2.0, dtype=F64)
    logprobs = old_logprobs + ratios.log()
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert clip_fraction(logprobs, old_logprobs, mask, clip_eps=0.2).item() == 0.5


def test_explained_variance_worked_values() -> None:
    returns = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, 99.0]], dtype=F64)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    # perfect critic → 1
    assert explained_variance(returns.clone(), returns, mask).item() == 1.0
    # constant prediction → Var(R − c) = Var(R) → 0
    assert explained_variance(torch.full_like(returns, 2.5), returns, mask).item() == pytest.approx(
        0.0, abs=1e-15
    )
    # V = (2, 1, 4, 3): residuals (−1, 1, −1, 1), Var = 1; Var(R) of (1, 2, 3, 4) = 1.25
    # → 1 − 1 / 1.25 = 0.2
    values = torch.tensor([[2.0, 1.0, -7.0], [4.0, 3.0, -7.0]], dtype=F64)
    assert explained_variance(values, returns, mask).item() == pytest.approx(0.2, abs=1e-15)


def test_explained_variance_is_nan_when_returns_are_constant() -> None:
    # 0.1 is not exactly representable: the mean of three 0.1s is not 0.1, yet Var(R) must be 0
    returns = torch.tensor([[0.1, 0.1, 0.1, 5.0]], dtype=F64)
    values = torch.tensor([[0.0, 0.2, 0.3, 0.0]], dtype=F64)
    mask = torch.tensor([[True, True, True, False]])
    assert math.isnan(explained_variance(values, returns, mask).item())
    # one valid token, and none
    assert math.isnan(
        explained_variance(values, returns, torch.tensor([[False, True, False, False]])).item()
    )
    assert math.isnan(
        explained_variance(values, returns, torch.zeros(1, 4, dtype=torch.bool)).item()
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_losses_and_diagnostics_keep_dtype(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(1)
    logprobs = -torch.rand(2, 4, generator=generator, dtype=F64).to(dtype)
    old_logprobs = -torch.rand(2, 4, generator=generator, dtype=F64).to(dtype)
    advantages = torch.randn(2, 4, generator=generator, dtype=F64).to(dtype)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    assert ppo_policy_loss(logprobs, old_logprobs, advantages, mask, 0.2).dtype == dtype
    assert ppo_value_loss(advantages, old_logprobs, logprobs, mask, 0.5).dtype == dtype
    assert approx_kl(logprobs, old_logprobs, mask).dtype == dtype
    assert clip_fraction(logprobs, old_logprobs, mask, 0.2).dtype == dtype
    assert explained_variance(advantages, logprobs, mask).dtype == dtype
