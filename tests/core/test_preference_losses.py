"""Tests of saferl.core.preference_losses against docs/algorithms.md §5 and hand formulas."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch

from saferl.core.preference_losses import (
    PREFERENCE_LOSSES,
    PreferenceLogps,
    bfpo_loss,
    cdpo_loss,
    dpo_loss,
    get_preference_loss,
    hinge_loss,
    implicit_reward_accuracy,
    implicit_reward_margin,
    ipo_loss,
    kto_loss,
    nca_loss,
    orpo_loss,
    preference_loss,
    robust_dpo_loss,
    simpo_loss,
    sppo_loss,
)

F64 = torch.float64


def t(values: list[float] | float, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.as_tensor(values, dtype=dtype)


def from_log_ratios(
    u_w: list[float] | torch.Tensor,
    u_l: list[float] | torch.Tensor,
    **extra: torch.Tensor | None,
) -> PreferenceLogps:
    """A batch with reference log-probs chosen so that u_w, u_l are exactly the given values."""
    u_w, u_l = torch.as_tensor(u_w, dtype=F64), torch.as_tensor(u_l, dtype=F64)
    ref_w = torch.full_like(u_w, -20.0)
    ref_l = torch.full_like(u_l, -30.0)
    return PreferenceLogps(
        chosen_logps=ref_w + u_w,
        rejected_logps=ref_l + u_l,
        ref_chosen_logps=ref_w,
        ref_rejected_logps=ref_l,
        chosen_lengths=torch.full_like(u_w, 10.0),
        rejected_lengths=torch.full_like(u_l, 12.0),
        **extra,
    )


def random_batch(
    batch: int = 16, seed: int = 0, dtype: torch.dtype = F64, soft: bool = False
) -> PreferenceLogps:
    gen = torch.Generator().manual_seed(seed)
    chosen_lengths = torch.randint(1, 40, (batch,), generator=gen)
    rejected_lengths = torch.randint(1, 40, (batch,), generator=gen)
    # per-token log-probs in (-3, -0.01): sums are negative, length-averages in (-3, 0)
    chosen = -(torch.rand(batch, generator=gen, dtype=F64) * 3 + 0.01) * chosen_lengths
    rejected = -(torch.rand(batch, generator=gen, dtype=F64) * 3 + 0.01) * rejected_lengths
    ref_chosen = chosen + torch.randn(batch, generator=gen, dtype=F64) * 4
    ref_rejected = rejected + torch.randn(batch, generator=gen, dtype=F64) * 4
    return PreferenceLogps(
        chosen_logps=chosen.to(dtype),
        rejected_logps=rejected.to(dtype),
        ref_chosen_logps=ref_chosen.to(dtype),
        ref_rejected_logps=ref_rejected.to(dtype),
        chosen_lengths=chosen_lengths,  # int lengths must work
        rejected_lengths=rejected_lengths,
        chosen_is_safe=torch.rand(batch, generator=gen) > 0.5,  # bool labels must work
        rejected_is_safe=torch.rand(batch, generator=gen) > 0.5,
        preference_prob=torch.rand(batch, generator=gen, dtype=F64).to(dtype) if soft else None,
    )


# ---- independent scalar references (python floats, no torch) ----


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return math.exp(log_sigmoid(x))


def rows(logps: PreferenceLogps) -> list[dict[str, float]]:
    def get(v: torch.Tensor | None, i: int) -> float:
        return float("nan") if v is None else float(v[i])

    return [
        {
            "pw": get(logps.chosen_logps, i),
            "pl": get(logps.rejected_logps, i),
            "uw": get(logps.chosen_logps, i) - get(logps.ref_chosen_logps, i),
            "ul": get(logps.rejected_logps, i) - get(logps.ref_rejected_logps, i),
            "nw": get(logps.chosen_lengths, i),
            "nl": get(logps.rejected_lengths, i),
            "sw": get(logps.chosen_is_safe, i),
            "sl": get(logps.rejected_is_safe, i),
            "p": 1.0 if logps.preference_prob is None else get(logps.preference_prob, i),
        }
        for i in range(logps.chosen_logps.shape[0])
    ]


def swap_row(r: dict[str, float]) -> dict[str, float]:
    return {
        **r,
        "pw": r["pl"],
        "pl": r["pw"],
        "uw": r["ul"],
        "ul": r["uw"],
        "nw": r["nl"],
        "nl": r["nw"],
    }


def soft(pair: Callable[[dict[str, float]], float]) -> Callable[[dict[str, float]], float]:
    return lambda r: r["p"] * pair(r) + (1 - r["p"]) * pair(swap_row(r))


def ref_dpo(beta: float, eps: float) -> Callable[[dict[str, float]], float]:
    def pair(r: dict[str, float]) -> float:
        z = beta * (r["uw"] - r["ul"])
        return -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)

    return soft(pair)


def ref_robust(beta: float, eps: float) -> Callable[[dict[str, float]], float]:
    def pair(r: dict[str, float]) -> float:
        z = beta * (r["uw"] - r["ul"])
        return (-(1 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1 - 2 * eps)

    return soft(pair)


def ref_hinge(beta: float) -> Callable[[dict[str, float]], float]:
    return soft(lambda r: max(0.0, 1 - beta * (r["uw"] - r["ul"])))


def ref_ipo(beta: float) -> Callable[[dict[str, float]], float]:
    return soft(lambda r: (r["uw"] - r["ul"] - 1 / (2 * beta)) ** 2)


def ref_nca(beta: float) -> Callable[[dict[str, float]], float]:
    return soft(
        lambda r: (
            -log_sigmoid(beta * r["uw"])
            - 0.5 * log_sigmoid(-beta * r["uw"])
            - 0.5 * log_sigmoid(-beta * r["ul"])
        )
    )


def ref_sppo(beta: float) -> Callable[[dict[str, float]], float]:
    return soft(lambda r: (r["uw"] - 0.5 / beta) ** 2 + (r["ul"] + 0.5 / beta) ** 2)


def ref_orpo(weight: float) -> Callable[[dict[str, float]], float]:
    def log_odds(a: float) -> float:
        return a - math.log(-math.expm1(a))

    def pair(r: dict[str, float]) -> float:
        aw, al = r["pw"] / r["nw"], r["pl"] / r["nl"]
        return -aw - weight * log_sigmoid(log_odds(aw) - log_odds(al))

    return soft(pair)


def ref_simpo(beta: float, gamma: float) -> Callable[[dict[str, float]], float]:
    return soft(lambda r: -log_sigmoid(beta * r["pw"] / r["nw"] - beta * r["pl"] / r["nl"] - gamma))


def ref_bfpo(tau: float, b1: float, alpha: float) -> Callable[[dict[str, float]], float]:
    def pair(r: dict[str, float]) -> float:
        b3 = 1 / (b1 - 1)
        g = b1 * b3 * r["sw"] - b3 * r["sl"] - alpha
        return (r["uw"] - r["ul"] - g / tau) ** 2

    return pair


def assert_matches(loss: torch.Tensor, logps: PreferenceLogps, ref, tol: float = 1e-10) -> None:
    expected = t([ref(r) for r in rows(logps)])
    assert loss.shape == expected.shape
    torch.testing.assert_close(loss, expected, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# docs/algorithms.md §5 test vectors
# ---------------------------------------------------------------------------------------------


def test_nca_and_dpo_at_zero_log_ratio() -> None:
    logps = from_log_ratios([0.0], [0.0])
    # NCA: -log σ(0) - ½ log σ(0) - ½ log σ(0) = 2 log 2 = 1.3862944
    torch.testing.assert_close(nca_loss(logps), t([2 * math.log(2)]), rtol=0, atol=1e-12)
    # DPO: -log σ(0) = log 2 = 0.6931472
    torch.testing.assert_close(dpo_loss(logps), t([math.log(2)]), rtol=0, atol=1e-12)


def test_nca_and_dpo_published_vector() -> None:
    logps = from_log_ratios([2.0], [-1.0])
    # NCA, β = 0.1: log(1+e^-0.2) + ½ log(1+e^0.2) + ½ log(1+e^-0.1)
    #             = 0.598139 + 0.399069 + 0.322199 = 1.319407
    torch.testing.assert_close(nca_loss(logps, beta=0.1), t([1.31941]), rtol=0, atol=1e-5)
    # DPO, β = 0.1, h = 3: log(1 + e^-0.3) = 0.554355
    torch.testing.assert_close(dpo_loss(logps, beta=0.1), t([0.55436]), rtol=0, atol=1e-5)


def test_nca_chosen_term_minimised_at_beta_u_w_ln2() -> None:
    beta = 0.1
    # grid over u_w with u_l fixed (the rejected term does not depend on u_w)
    grid = torch.linspace(-20.0, 40.0, 60001, dtype=F64)  # step 1e-3
    losses = nca_loss(from_log_ratios(grid, torch.zeros_like(grid)), beta=beta)
    best = grid[losses.argmin()]
    assert abs(beta * float(best) - math.log(2)) < 2e-4  # ln 2 / β = 6.931
    # autograd: zero derivative at ln 2/β, negative to the left, positive to the right
    for offset, sign in ((0.0, 0), (-1.0, -1), (1.0, 1)):
        u_w = torch.tensor([math.log(2) / beta + offset], dtype=F64, requires_grad=True)
        nca_loss(from_log_ratios(u_w, [0.0]), beta=beta).sum().backward()
        grad = float(u_w.grad)
        if sign == 0:
            assert abs(grad) < 1e-12
        else:
            assert grad * sign > 0


def test_bfpo_published_vector() -> None:
    # h = 3; targets g/τ = +100, +50, -50, -100 → (3-100)², (3-50)², (3+50)², (3+100)²
    logps = from_log_ratios(
        [3.0, 3.0, 3.0, 3.0],
        [0.0, 0.0, 0.0, 0.0],
        chosen_is_safe=t([1.0, 1.0, 0.0, 0.0]),
        rejected_is_safe=t([0.0, 1.0, 0.0, 1.0]),
    )
    torch.testing.assert_close(
        bfpo_loss(logps, tau=0.01), t([9409.0, 2209.0, 2809.0, 10609.0]), rtol=1e-12, atol=1e-9
    )


def test_bfpo_on_safe_safe_pairs_is_ipo_with_beta_tau() -> None:
    base = random_batch(seed=3)
    ones = torch.ones(16, dtype=torch.bool)
    logps = replace(base, chosen_is_safe=ones, rejected_is_safe=ones)
    torch.testing.assert_close(bfpo_loss(logps, tau=0.01), ipo_loss(logps, beta=0.01))
    torch.testing.assert_close(bfpo_loss(logps, tau=0.05), ipo_loss(logps, beta=0.05))


# ---------------------------------------------------------------------------------------------
# Every loss against an independent hand formula at random inputs
# ---------------------------------------------------------------------------------------------

CASES = [
    ("dpo", dpo_loss, {}, ref_dpo(0.1, 0.0)),
    ("dpo_eps", dpo_loss, {"beta": 0.3, "label_smoothing": 0.2}, ref_dpo(0.3, 0.2)),
    ("cdpo", cdpo_loss, {}, ref_dpo(0.1, 0.1)),
    ("robust_dpo", robust_dpo_loss, {"beta": 0.2, "label_smoothing": 0.1}, ref_robust(0.2, 0.1)),
    ("hinge", hinge_loss, {"beta": 0.2}, ref_hinge(0.2)),
    ("ipo", ipo_loss, {"beta": 0.5}, ref_ipo(0.5)),
    ("nca", nca_loss, {"beta": 0.2}, ref_nca(0.2)),
    ("sppo", sppo_loss, {"beta": 0.5}, ref_sppo(0.5)),
    ("orpo", orpo_loss, {"odds_ratio_weight": 0.3}, ref_orpo(0.3)),
    ("simpo", simpo_loss, {}, ref_simpo(2.0, 0.5)),
    ("simpo_custom", simpo_loss, {"beta": 2.5, "gamma": 1.2}, ref_simpo(2.5, 1.2)),
]


@pytest.mark.parametrize("soft_labels", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("name, fn, hparams, ref", CASES, ids=[c[0] for c in CASES])
def test_loss_matches_hand_formula(name, fn, hparams, ref, soft_labels: bool) -> None:
    logps = random_batch(seed=1, soft=soft_labels)
    assert_matches(fn(logps, **hparams), logps, ref)


def test_bfpo_matches_hand_formula() -> None:
    logps = random_batch(seed=2)
    assert_matches(bfpo_loss(logps), logps, ref_bfpo(0.01, 3.0, 0.5))
    assert_matches(
        bfpo_loss(logps, tau=0.1, b1=5.0, alpha=0.2), logps, ref_bfpo(0.1, 5.0, 0.2), tol=1e-9
    )


def test_kto_matches_hand_formula_with_default_z0() -> None:
    logps = random_batch(seed=4)
    rs = rows(logps)
    mean_u = sum(r["uw"] + r["ul"] for r in rs) / (2 * len(rs))
    z0 = max(0.0, mean_u)
    beta, lam_d, lam_u = 0.2, 1.5, 0.7
    expected = [
        lam_d * (1 - sigmoid(beta * (r["uw"] - z0))) + lam_u * (1 - sigmoid(beta * (z0 - r["ul"])))
        for r in rs
    ]
    loss = kto_loss(logps, beta=beta, desirable_weight=lam_d, undesirable_weight=lam_u)
    torch.testing.assert_close(loss, t(expected), rtol=1e-10, atol=1e-10)


def test_kto_z0_is_clamped_detached_and_overridable() -> None:
    # batch mean of u = (-1 - 3 - 2 - 4)/4 = -2.5 < 0 → z0 = 0
    logps = from_log_ratios([-1.0, -3.0], [-2.0, -4.0])
    torch.testing.assert_close(kto_loss(logps), kto_loss(logps, z0=t(0.0)))
    # positive mean: (2 + 4 + 0 + 2)/4 = 2 → z0 = 2; the loss then is
    # [1 - σ(0.1(2-2))] + [1 - σ(0.1(2-0))] = 0.5 + 0.450166 = 0.950166 for the first pair
    u_w = torch.tensor([2.0, 4.0], dtype=F64, requires_grad=True)
    loss = kto_loss(from_log_ratios(u_w, [0.0, 2.0]))
    torch.testing.assert_close(loss[0], t(0.5 + 1 - sigmoid(0.2)), rtol=0, atol=1e-12)
    # detached z0: the gradient of loss_i wrt u_w is only through its own desirable term
    loss.sum().backward()
    expected_grad = [
        -0.1 * sigmoid(0.1 * (uw - 2)) * (1 - sigmoid(0.1 * (uw - 2))) for uw in (2, 4)
    ]
    torch.testing.assert_close(u_w.grad, t(expected_grad), rtol=0, atol=1e-12)
    # a per-example z0 of shape (batch,) is used as given
    torch.testing.assert_close(
        kto_loss(from_log_ratios([1.0], [1.0]), z0=t([1.0])), t([1.0]), rtol=0, atol=1e-12
    )


def test_orpo_is_accurate_and_finite_near_certain_responses() -> None:
    # length-averaged log-prob a = -1e-20: p = 1 - 1e-20, log(1 - p) = log(1e-20) = -46.0517;
    # log1p(-exp(a)) alone gives -inf in float64.
    logps = PreferenceLogps(
        chosen_logps=t([-1e-20], F64).requires_grad_(True),
        rejected_logps=t([-2.0]),
        ref_chosen_logps=None,
        ref_rejected_logps=None,
        chosen_lengths=t([1.0]),
        rejected_lengths=t([4.0]),
    )
    loss = orpo_loss(logps)
    # log odds_w = -1e-20 + 46.0517 ; log odds_l = -0.5 - log(1 - e^-0.5) = -0.5 + 0.932752
    lo_w = -1e-20 - math.log(1e-20)
    lo_l = -0.5 - math.log(-math.expm1(-0.5))
    expected = 1e-20 - 0.1 * log_sigmoid(lo_w - lo_l)
    torch.testing.assert_close(loss, t([expected]), rtol=1e-12, atol=1e-15)
    loss.sum().backward()
    assert torch.isfinite(logps.chosen_logps.grad).all()


# ---------------------------------------------------------------------------------------------
# Gradient signs: the losses fall as the chosen response gains ground on the rejected one
# ---------------------------------------------------------------------------------------------


def _grads(fn, logps: PreferenceLogps, **hparams) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = logps.chosen_logps.clone().requires_grad_(True)
    rejected = logps.rejected_logps.clone().requires_grad_(True)
    fn(replace(logps, chosen_logps=chosen, rejected_logps=rejected), **hparams).sum().backward()
    return chosen.grad, rejected.grad


# Each loss at a point where, by its formula, raising u_w (or the normalised chosen reward) and
# lowering u_l both reduce the loss: hinge needs βh < 1, ipo h < 1/(2β), sppo u_w < 1/(2β) and
# u_l > -1/(2β), nca βu_w < ln 2, bfpo h < g/τ.
GRADIENT_CASES = [
    ("dpo", dpo_loss, {}),
    ("cdpo", cdpo_loss, {}),
    ("robust_dpo", robust_dpo_loss, {"label_smoothing": 0.2}),
    ("hinge", hinge_loss, {}),
    ("ipo", ipo_loss, {}),
    ("nca", nca_loss, {}),
    ("sppo", sppo_loss, {}),
    ("kto", kto_loss, {}),
    ("orpo", orpo_loss, {}),
    ("simpo", simpo_loss, {}),
    ("bfpo", bfpo_loss, {}),
]


@pytest.mark.parametrize("name, fn, hparams", GRADIENT_CASES, ids=[c[0] for c in GRADIENT_CASES])
def test_loss_decreases_as_chosen_gains(name, fn, hparams) -> None:
    # u_w ∈ {-1, 0.5, 2}, u_l ∈ {0, 1, -0.5}: h ≤ 2, βu_w ≤ 0.2 < ln 2, |u| < 5 = 1/(2β)
    logps = from_log_ratios(
        [-1.0, 0.5, 2.0],
        [0.0, 1.0, -0.5],
        chosen_is_safe=t([1.0, 1.0, 0.0]),
        rejected_is_safe=t([0.0, 1.0, 0.0]),
    )
    if name == "bfpo":  # g/τ ∈ {100, 50, -50}: keep h below the target on every row
        logps = from_log_ratios(
            [-1.0, 0.5, -80.0],
            [0.0, 1.0, 0.0],
            chosen_is_safe=t([1.0, 1.0, 0.0]),
            rejected_is_safe=t([0.0, 1.0, 0.0]),
        )
    grad_chosen, grad_rejected = _grads(fn, logps, **hparams)
    assert (grad_chosen < 0).all(), grad_chosen
    assert (grad_rejected > 0).all(), grad_rejected


def test_losses_of_h_alone_fall_monotonically_in_h() -> None:
    # DPO and robust DPO (for ε < ½) are strictly decreasing in h everywhere
    h = torch.linspace(-30.0, 30.0, 601, dtype=F64)
    logps = from_log_ratios(h, torch.zeros_like(h))
    for fn, hparams in ((dpo_loss, {}), (robust_dpo_loss, {"label_smoothing": 0.3})):
        loss = fn(logps, **hparams)
        assert (loss[1:] < loss[:-1]).all(), fn.__name__


def test_cdpo_is_minimised_at_the_smoothed_log_odds() -> None:
    # cDPO is not monotone: d/dz[-(1-ε) log σ(z) - ε log σ(-z)] = σ(z) - (1-ε) = 0 at
    # z = βh = log((1-ε)/ε) = log 9 = 2.19722 for ε = 0.1, i.e. h = 21.9722 at β = 0.1
    h = torch.linspace(0.0, 50.0, 50001, dtype=F64)  # step 1e-3
    loss = cdpo_loss(from_log_ratios(h, torch.zeros_like(h)))
    assert abs(float(h[loss.argmin()]) - math.log(9) / 0.1) < 2e-3


def test_nca_depends_on_log_ratios_not_only_on_h() -> None:
    # same h = 1, different (u_w, u_l): DPO agrees, NCA does not
    a = from_log_ratios([1.0], [0.0])
    b = from_log_ratios([5.0], [4.0])
    torch.testing.assert_close(dpo_loss(a), dpo_loss(b))
    assert abs(float(nca_loss(a) - nca_loss(b))) > 1e-3


# ---------------------------------------------------------------------------------------------
# Soft labels
# ---------------------------------------------------------------------------------------------


def test_dpo_soft_label_closed_form() -> None:
    logps = random_batch(seed=5, soft=True)
    p = logps.preference_prob
    h = (logps.chosen_logps - logps.ref_chosen_logps) - (
        logps.rejected_logps - logps.ref_rejected_logps
    )
    beta = 0.25
    expected = -p * torch.nn.functional.logsigmoid(beta * h) - (
        1 - p
    ) * torch.nn.functional.logsigmoid(-beta * h)
    torch.testing.assert_close(dpo_loss(logps, beta=beta), expected)


def test_label_smoothing_equals_soft_label_one_minus_eps() -> None:
    hard = random_batch(seed=6)
    eps = 0.15
    softened = replace(hard, preference_prob=torch.full((16,), 1 - eps, dtype=F64))
    torch.testing.assert_close(dpo_loss(hard, label_smoothing=eps), dpo_loss(softened))
    torch.testing.assert_close(cdpo_loss(hard, label_smoothing=eps), dpo_loss(softened))


SOFT_NAMES = sorted(n for n, s in PREFERENCE_LOSSES.items() if s.accepts_soft_labels)


@pytest.mark.parametrize("name", SOFT_NAMES)
def test_soft_label_identities(name: str) -> None:
    fn = get_preference_loss(name).fn
    hard = random_batch(seed=7)
    with_p = random_batch(seed=7, soft=True)
    p = with_p.preference_prob
    ones = replace(hard, preference_prob=torch.ones(16, dtype=F64))
    zeros = replace(hard, preference_prob=torch.zeros(16, dtype=F64))
    raw_swapped = replace(hard.swapped(), preference_prob=None)
    # p = 1 is the hard label; p = 0 is the hard label on the swapped pair
    torch.testing.assert_close(fn(ones), fn(hard))
    torch.testing.assert_close(fn(zeros), fn(raw_swapped))
    # the mixture
    torch.testing.assert_close(fn(with_p), p * fn(hard) + (1 - p) * fn(raw_swapped))
    # swapping roles and flipping the label describes the same preference
    torch.testing.assert_close(fn(with_p.swapped()), fn(with_p))
    torch.testing.assert_close(fn(hard.swapped()), fn(hard))


def test_soft_ipo_and_sppo_targets() -> None:
    # swap mixture of IPO: (h - (2p-1)/(2β))² + p(1-p)/β²;
    # of SPPO: (u_w - (2p-1)/(2β))² + (u_l + (2p-1)/(2β))² + 2p(1-p)/β²
    beta = 0.5
    logps = random_batch(seed=8, soft=True)
    p = logps.preference_prob
    u_w = logps.chosen_logps - logps.ref_chosen_logps
    u_l = logps.rejected_logps - logps.ref_rejected_logps
    target = (2 * p - 1) / (2 * beta)
    torch.testing.assert_close(
        ipo_loss(logps, beta=beta), (u_w - u_l - target) ** 2 + p * (1 - p) / beta**2
    )
    torch.testing.assert_close(
        sppo_loss(logps, beta=beta),
        (u_w - target) ** 2 + (u_l + target) ** 2 + 2 * p * (1 - p) / beta**2,
    )


@pytest.mark.parametrize("fn", [kto_loss, bfpo_loss], ids=["kto", "bfpo"])
def test_hard_label_losses_reject_soft_labels(fn) -> None:
    with pytest.raises(ValueError, match="soft labels"):
        fn(random_batch(seed=9, soft=True))


def test_swapped_exchanges_roles_and_flips_the_label() -> None:
    logps = random_batch(seed=10, soft=True)
    s = logps.swapped()
    assert s.chosen_logps is logps.rejected_logps
    assert s.rejected_logps is logps.chosen_logps
    assert s.ref_chosen_logps is logps.ref_rejected_logps
    assert s.ref_rejected_logps is logps.ref_chosen_logps
    assert s.chosen_lengths is logps.rejected_lengths
    assert s.rejected_lengths is logps.chosen_lengths
    assert s.chosen_is_safe is logps.rejected_is_safe
    assert s.rejected_is_safe is logps.chosen_is_safe
    torch.testing.assert_close(s.preference_prob, 1 - logps.preference_prob)
    # a hard label (p = 1) becomes an explicit 0
    hard = random_batch(seed=10)
    torch.testing.assert_close(hard.swapped().preference_prob, torch.zeros(16, dtype=F64))
    torch.testing.assert_close(hard.swapped().swapped().preference_prob, torch.ones(16, dtype=F64))
    # bool labels flip too
    boolean = replace(hard, preference_prob=torch.ones(16, dtype=torch.bool))
    torch.testing.assert_close(boolean.swapped().preference_prob, torch.zeros(16, dtype=F64))


# ---------------------------------------------------------------------------------------------
# Registry and errors
# ---------------------------------------------------------------------------------------------

EXPECTED_NAMES = {
    "dpo",
    "cdpo",
    "robust_dpo",
    "hinge",
    "ipo",
    "nca",
    "safe_nca",
    "sppo",
    "kto",
    "orpo",
    "simpo",
    "bfpo",
}


def test_registry_names_and_flags() -> None:
    assert set(PREFERENCE_LOSSES) == EXPECTED_NAMES
    for name, spec in PREFERENCE_LOSSES.items():
        assert spec.name == name
        assert spec.needs_reference == (name not in {"orpo", "simpo"})
        assert spec.uses_safety_labels == (name == "bfpo")
        assert spec.accepts_soft_labels == (name not in {"kto", "bfpo"})
        signature = inspect.signature(spec.fn).parameters
        assert dict(spec.defaults) == {
            k: p.default for k, p in signature.items() if p.kind is p.KEYWORD_ONLY
        }
    assert PREFERENCE_LOSSES["safe_nca"].fn is nca_loss is PREFERENCE_LOSSES["nca"].fn
    assert PREFERENCE_LOSSES["dpo"].defaults == {"beta": 0.1, "label_smoothing": 0.0}
    assert PREFERENCE_LOSSES["cdpo"].defaults == {"beta": 0.1, "label_smoothing": 0.1}
    assert PREFERENCE_LOSSES["simpo"].defaults == {"beta": 2.0, "gamma": 0.5}
    assert PREFERENCE_LOSSES["bfpo"].defaults == {"tau": 0.01, "b1": 3.0, "alpha": 0.5}
    assert PREFERENCE_LOSSES["orpo"].defaults == {"odds_ratio_weight": 0.1}
    assert PREFERENCE_LOSSES["kto"].defaults == {
        "beta": 0.1,
        "desirable_weight": 1.0,
        "undesirable_weight": 1.0,
        "z0": None,
    }


def test_unknown_loss_lists_sorted_names() -> None:
    with pytest.raises(ValueError) as info:
        get_preference_loss("dpoo")
    message = str(info.value)
    assert "'dpoo'" in message
    assert ", ".join(sorted(EXPECTED_NAMES)) in message


def test_preference_loss_convenience_and_unknown_hparams() -> None:
    logps = random_batch(seed=11)
    torch.testing.assert_close(preference_loss("ipo", logps, beta=0.3), ipo_loss(logps, beta=0.3))
    torch.testing.assert_close(preference_loss("cdpo", logps), dpo_loss(logps, label_smoothing=0.1))
    with pytest.raises(ValueError, match="gamma") as info:
        preference_loss("dpo", logps, beta=0.2, gamma=1.0)
    assert "valid: beta, label_smoothing" in str(info.value)
    with pytest.raises(ValueError, match="valid names"):
        preference_loss("nope", logps)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_reference_requirement_matches_registry(name: str) -> None:
    spec = get_preference_loss(name)
    base = random_batch(seed=12)
    for missing in ("ref_chosen_logps", "ref_rejected_logps"):
        logps = replace(base, **{missing: None})
        if spec.needs_reference:
            with pytest.raises(ValueError, match=missing) as info:
                spec.fn(logps)
            named = {"cdpo_loss": "dpo_loss"}.get(spec.fn.__name__, spec.fn.__name__)
            assert named in str(info.value)  # cdpo_loss delegates to dpo_loss
        else:
            torch.testing.assert_close(spec.fn(logps), spec.fn(base))


def test_bfpo_requires_safety_labels() -> None:
    base = random_batch(seed=13)
    for missing in ("chosen_is_safe", "rejected_is_safe"):
        logps = replace(base, **{missing: None})
        with pytest.raises(ValueError, match="bfpo_loss needs safety labels"):
            bfpo_loss(logps)


def test_bad_hyper_parameters_raise() -> None:
    logps = random_batch(seed=14)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(logps, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        robust_dpo_loss(logps, label_smoothing=0.5)
    with pytest.raises(ValueError, match="b1"):
        bfpo_loss(logps, b1=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_dtype_is_kept(name: str, dtype: torch.dtype) -> None:
    spec = get_preference_loss(name)
    logps = random_batch(seed=15, dtype=dtype, soft=spec.accepts_soft_labels)
    loss = spec.fn(logps)
    assert loss.dtype == dtype
    assert loss.shape == (16,)
    assert torch.isfinite(loss).all()
    if dtype == torch.float32:
        reference = spec.fn(random_batch(seed=15, dtype=F64, soft=spec.accepts_soft_labels))
        torch.testing.assert_close(loss.double(), reference, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------


def test_implicit_reward_diagnostics() -> None:
    # h = 3, -1, 0, 0.5 → accuracy 2/4 (the tie counts as wrong); margin 0.1·(2.5/4) = 0.0625
    logps = from_log_ratios([2.0, 0.0, 1.0, 0.5], [-1.0, 1.0, 1.0, 0.0])
    torch.testing.assert_close(implicit_reward_accuracy(logps), t(0.5))
    torch.testing.assert_close(implicit_reward_margin(logps, beta=0.1), t(0.0625))
    torch.testing.assert_close(implicit_reward_margin(logps), t(0.0625))
    with pytest.raises(ValueError, match="implicit_reward_accuracy"):
        implicit_reward_accuracy(replace(logps, ref_chosen_logps=None))
