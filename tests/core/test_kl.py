"""Per-token KL estimators: hand values, k3 >= 0, exact expectations and Monte-Carlo means."""

from __future__ import annotations

import math

import pytest
import torch

from saferl.core.kl import KL_ESTIMATORS, kl_estimator, kl_k1, kl_k2, kl_k3

F64 = torch.float64

# Two categorical distributions on 4 outcomes: the policy π (sampled from) and π_ref.
POLICY_PROBS = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64)
REF_PROBS = torch.tensor([0.25, 0.25, 0.3, 0.2], dtype=F64)
# KL(π‖π_ref) = Σ π log(π/π_ref)
#   = 0.4 ln 1.6 + 0.3 ln 1.2 + 0.2 ln(2/3) + 0.1 ln 0.5
#   = 0.1880008 + 0.0546965 − 0.0810930 − 0.0693147 = 0.0922902
EXACT_KL = float((POLICY_PROBS * (POLICY_PROBS / REF_PROBS).log()).sum())


def test_exact_kl_value() -> None:
    assert EXACT_KL == pytest.approx(0.09229018, abs=1e-8)


def test_hand_values() -> None:
    # π(a) = 0.5, π_ref(a) = 0.25
    logprobs = torch.tensor([math.log(0.5)], dtype=F64)
    ref_logprobs = torch.tensor([math.log(0.25)], dtype=F64)
    # k1 = ln 2 = 0.6931472
    assert kl_k1(logprobs, ref_logprobs).item() == pytest.approx(math.log(2.0), abs=1e-15)
    # k2 = ½ (ln 2)² = 0.2402265
    assert kl_k2(logprobs, ref_logprobs).item() == pytest.approx(
        0.5 * math.log(2.0) ** 2, abs=1e-15
    )
    # k3 = r − 1 − ln r with r = 0.25 / 0.5 = 0.5: 0.5 − 1 + ln 2 = 0.1931472
    assert kl_k3(logprobs, ref_logprobs).item() == pytest.approx(math.log(2.0) - 0.5, abs=1e-15)


def test_k3_is_non_negative_and_zero_only_at_equality() -> None:
    generator = torch.Generator().manual_seed(0)
    logprobs = 10.0 * torch.randn(10_000, generator=generator, dtype=F64)
    ref_logprobs = logprobs + torch.randn(10_000, generator=generator, dtype=F64) * torch.logspace(
        -12, 1, 10_000, dtype=F64
    )
    assert (kl_k3(logprobs, ref_logprobs) >= 0).all()
    assert (kl_k3(logprobs.float(), ref_logprobs.float()) >= 0).all()
    assert (kl_k3(logprobs, logprobs) == 0).all()


def test_k3_is_accurate_for_tiny_log_ratios() -> None:
    # d = 1e-6: k3 = e^d − d − 1 = d²/2 + d³/6 + … = 5.000001667e-13; the naive form loses ~4 digits
    logprobs = torch.tensor([0.0], dtype=F64)
    ref_logprobs = torch.tensor([1e-6], dtype=F64)
    assert kl_k3(logprobs, ref_logprobs).item() == pytest.approx(5.000001666667e-13, rel=1e-9)


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_exact_expectation_under_policy(name: str) -> None:
    estimator = kl_estimator(name)
    per_outcome = estimator(POLICY_PROBS.log(), REF_PROBS.log())
    expectation = float((POLICY_PROBS * per_outcome).sum())
    if name == "k2":
        # k2 is biased: E[½ (log π/π_ref)²] = 0.0896297 against KL 0.0922902 (bias −2.9%)
        assert expectation == pytest.approx(0.08962970, abs=1e-8)
        assert abs(expectation - EXACT_KL) < 0.05 * EXACT_KL
    else:
        # k1 and k3 are unbiased: the expectation is the KL itself
        assert expectation == pytest.approx(EXACT_KL, abs=1e-15)


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_monte_carlo_mean_approaches_exact_kl(name: str) -> None:
    num_samples = 200_000
    generator = torch.Generator().manual_seed(1234)
    samples = torch.multinomial(POLICY_PROBS, num_samples, replacement=True, generator=generator)
    logprobs = POLICY_PROBS.log()[samples]
    ref_logprobs = REF_PROBS.log()[samples]
    estimates = kl_estimator(name)(logprobs, ref_logprobs)

    # exact mean and standard error of the Monte-Carlo mean, by enumerating the 4 outcomes
    per_outcome = kl_estimator(name)(POLICY_PROBS.log(), REF_PROBS.log())
    expectation = float((POLICY_PROBS * per_outcome).sum())
    variance = float((POLICY_PROBS * (per_outcome - expectation) ** 2).sum())
    standard_error = math.sqrt(variance / num_samples)  # k1 9.2e-4, k2 1.4e-4, k3 1.8e-4
    bias = abs(expectation - EXACT_KL)  # 0 for k1 and k3, 2.7e-3 for k2
    mean = estimates.mean().item()
    # within 5 standard errors of the estimator's own expectation ...
    assert abs(mean - expectation) < 5.0 * standard_error
    # ... hence of the exact KL, up to k2's bias
    assert abs(mean - EXACT_KL) < 5.0 * standard_error + bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_shape_and_dtype_are_kept(name: str, dtype: torch.dtype) -> None:
    logprobs = -torch.rand(3, 5, dtype=dtype)
    ref_logprobs = -torch.rand(3, 5, dtype=dtype)
    result = KL_ESTIMATORS[name](logprobs, ref_logprobs)
    assert result.shape == (3, 5)
    assert result.dtype == dtype


def test_registry_and_unknown_name() -> None:
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}
    assert kl_estimator("k3") is kl_k3
    with pytest.raises(ValueError, match=r"'k1', 'k2', 'k3'"):
        kl_estimator("k4")
    with pytest.raises(TypeError):
        KL_ESTIMATORS["k4"] = kl_k1  # type: ignore[index]
