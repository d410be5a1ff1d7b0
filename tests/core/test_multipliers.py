"""Unit tests for saferl.core.multipliers (float64, CPU, worked values in comments)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from saferl.core.multipliers import (
    MULTIPLIER_KINDS,
    FixedMultiplier,
    LogGradientAscentMultiplier,
    Multiplier,
    PIDMultiplier,
    build_multiplier,
)

F64 = torch.float64


def costs(*values: float) -> torch.Tensor:
    """Raw cost scores of one iteration, shape (n,)."""
    return torch.tensor(values, dtype=F64)


def scalar(tensor: torch.Tensor) -> float:
    assert tensor.shape == (1,), tensor.shape
    return float(tensor[0])


def make(kind: str, cost_limit: float | list[float] = 0.0) -> Multiplier:
    """One instance of each kind with O(1) settings, λ_0 = 1 so that it can move both ways."""
    if kind == "log_gradient_ascent":
        return LogGradientAscentMultiplier(cost_limit, initial_value=1.0, lr=0.1, window=4)
    if kind == "pid":
        return PIDMultiplier(
            cost_limit,
            kp=0.5,
            ki=0.2,
            kd=1.0,
            max_value=10.0,
            initial_integral=1.0,
            ema_alpha_p=0.3,
            ema_alpha_d=0.5,
            delay=2,
        )
    assert kind == "fixed"
    return FixedMultiplier(0.7, cost_limit=cost_limit)


KINDS = ["log_gradient_ascent", "pid", "fixed"]


# --- interface ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_implements_the_interface(kind: str) -> None:
    multiplier = make(kind)
    assert isinstance(multiplier, Multiplier)
    assert multiplier.value.dtype == F64 and multiplier.value.shape == (1,)
    assert not multiplier.value.requires_grad
    assert multiplier.constraint_estimate is None
    returned = multiplier.update(costs(1.0, 2.0))
    assert torch.equal(returned, multiplier.value)
    # J_C of this call = mean(1, 2) = 1.5 (the log-GA window holds only these two so far)
    assert torch.equal(multiplier.constraint_estimate, torch.tensor([1.5], dtype=F64))
    # `value` is a copy: writing into it must not change the multiplier
    before = multiplier.value
    multiplier.value.fill_(123.0)
    assert torch.equal(multiplier.value, before)


def test_build_multiplier_kinds_and_alias() -> None:
    assert set(MULTIPLIER_KINDS) == {"log_gradient_ascent", "lagrangian", "pid", "fixed"}
    assert isinstance(build_multiplier("lagrangian", 0.0), LogGradientAscentMultiplier)
    assert isinstance(build_multiplier("log_gradient_ascent", 0.0), LogGradientAscentMultiplier)
    pid = build_multiplier("pid", [0.0, 1.0], kp=1.0, ki=0.1, kd=0.0, max_value=5.0)
    assert isinstance(pid, PIDMultiplier) and pid.num_constraints == 2
    fixed = build_multiplier("fixed", 0.5, value=0.74)
    assert isinstance(fixed, FixedMultiplier)
    assert torch.equal(fixed.value, torch.tensor([0.74], dtype=F64))
    assert torch.equal(fixed.cost_limit, torch.tensor([0.5], dtype=F64))


def test_build_multiplier_unknown_kind_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError) as info:
        build_multiplier("pi", 0.0)
    message = str(info.value)
    assert "'pi'" in message
    for kind in ("log_gradient_ascent", "lagrangian", "pid", "fixed"):
        assert kind in message


def test_build_multiplier_bad_options_name_the_option() -> None:
    with pytest.raises(ValueError, match=r"unexpected option\(s\) \['lambda_lr'\].*accepted"):
        build_multiplier("lagrangian", 0.0, lambda_lr=0.1)
    with pytest.raises(ValueError, match=r"missing required option\(s\) \['max_value'\]"):
        build_multiplier("pid", 0.0, kp=1.0, ki=0.1, kd=0.0)
    with pytest.raises(ValueError, match=r"missing required option\(s\) \['value'\]"):
        build_multiplier("fixed", 0.0)


# --- direction of movement -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_multiplier_rises_above_the_limit_and_falls_below(kind: str) -> None:
    above, below = make(kind, cost_limit=0.5), make(kind, cost_limit=0.5)
    start = scalar(above.value)
    for _ in range(3):
        above.update(costs(2.0, 3.0))  # J_C = 2.5 > d = 0.5
        below.update(costs(-2.0, -3.0))  # J_C = -2.5 < d = 0.5
    if kind == "fixed":
        assert scalar(above.value) == scalar(below.value) == start == 0.7
    else:
        assert scalar(above.value) > start > scalar(below.value)


@pytest.mark.parametrize("kind", ["log_gradient_ascent", "pid"])
def test_two_constraints_move_independently_in_opposite_directions(kind: str) -> None:
    multiplier = make(kind, cost_limit=[0.0, 0.0])
    start = multiplier.value
    assert start.shape == (2,)
    # column 0 violated (J = +1.5 > 0), column 1 satisfied (J = -1.5 < 0); shape (n, m) = (2, 2)
    episode_costs = torch.tensor([[1.0, -1.0], [2.0, -2.0]], dtype=F64)
    for _ in range(2):
        value = multiplier.update(episode_costs)
    assert value[0] > start[0] and value[1] < start[1]
    assert torch.equal(multiplier.constraint_estimate, torch.tensor([1.5, -1.5], dtype=F64))
    # each constraint is the same as a one-constraint multiplier on its own column
    alone = make(kind, cost_limit=0.0)
    for _ in range(2):
        alone.update(episode_costs[:, 0])
    assert torch.equal(alone.value, value[:1])


def test_fixed_two_constraints_broadcast_and_never_move() -> None:
    fixed = FixedMultiplier([0.25, 1.5], cost_limit=0.0)  # cost_limit broadcast to m = 2
    assert torch.equal(fixed.cost_limit, torch.zeros(2, dtype=F64))
    fixed.update(torch.tensor([[10.0, -10.0], [20.0, -20.0]], dtype=F64))
    assert torch.equal(fixed.value, torch.tensor([0.25, 1.5], dtype=F64))
    assert torch.equal(fixed.constraint_estimate, torch.tensor([15.0, -15.0], dtype=F64))
    assert fixed.num_updates == 1


# --- log gradient ascent (Safe RLHF) -----------------------------------------------------------


def test_log_gradient_ascent_matches_the_hand_formula() -> None:
    multiplier = LogGradientAscentMultiplier(0.0, initial_value=1.0, lr=0.1)
    # J_C = mean(2, 4) = 3; λ_1 = 1 · exp(0.1 · 1 · (3 − 0)) = exp(0.3) = 1.3498588075760032
    value = multiplier.update(costs(2.0, 4.0))
    assert scalar(value) == pytest.approx(1.3498588075760032, rel=1e-15, abs=0)
    assert scalar(value) == pytest.approx(1.0 * math.exp(0.1 * 1.0 * 3.0), rel=1e-15, abs=0)
    # window (128) now holds 2, 4, 0: J_C = 2; λ_2 = λ_1 · exp(0.1 · λ_1 · 2) = 1.7682171189564941
    value = multiplier.update(costs(0.0))
    assert scalar(multiplier.constraint_estimate) == 2.0
    assert scalar(value) == pytest.approx(1.7682171189564941, rel=1e-14, abs=0)


def test_log_gradient_ascent_window_mean_uses_only_the_last_window_costs() -> None:
    multiplier = LogGradientAscentMultiplier(0.0, initial_value=1.0, lr=0.1, window=3)
    multiplier.update(costs(1.0, 2.0))  # window [1, 2]       J_C = 1.5
    assert scalar(multiplier.constraint_estimate) == 1.5
    multiplier.update(costs(3.0, 4.0))  # window [2, 3, 4]    J_C = 3   (1 dropped)
    assert scalar(multiplier.constraint_estimate) == 3.0
    value = multiplier.update(costs(10.0))  # window [3, 4, 10] J_C = 17/3
    assert scalar(multiplier.constraint_estimate) == pytest.approx(17.0 / 3.0, rel=1e-15)
    # λ: 1 → 1.161834242728283 (J 1.5) → 1.6463328063883909 (J 3) → 4.184855588592161 (J 17/3)
    assert scalar(value) == pytest.approx(4.184855588592161, rel=1e-14, abs=0)
    # more costs in one call than the window holds: only the newest three count, J_C = 3
    multiplier.update(costs(100.0, 100.0, 2.0, 3.0, 4.0))
    assert scalar(multiplier.constraint_estimate) == 3.0


def test_log_gradient_ascent_delay_only_records_costs() -> None:
    multiplier = LogGradientAscentMultiplier(1.0, initial_value=1.0, lr=0.1, delay=2)
    assert scalar(multiplier.update(costs(3.0))) == 1.0  # call 1: recorded, J_C = 3
    assert scalar(multiplier.update(costs(5.0))) == 1.0  # call 2: recorded, J_C = 4
    assert scalar(multiplier.constraint_estimate) == 4.0
    # call 3 steps on the whole window: J_C = mean(3, 5, 1) = 3, e = 2, λ = exp(0.2) = 1.2214027581601699
    value = multiplier.update(costs(1.0))
    assert scalar(value) == pytest.approx(1.2214027581601699, rel=1e-15, abs=0)
    assert multiplier.num_updates == 3


def test_log_gradient_ascent_cap_holds_exactly_under_sustained_violation() -> None:
    multiplier = LogGradientAscentMultiplier(0.0, initial_value=1.0, lr=0.1, max_value=5.0)
    # J_C − d = 10: λ 1 → e = 2.718… → 2.718 · e^2.718 ≈ 41.3, capped at 5, and stays there
    values = [scalar(multiplier.update(costs(10.0))) for _ in range(20)]
    assert values[0] == pytest.approx(math.e, rel=1e-15)
    assert values[1:] == [5.0] * 19  # exactly the cap, not exp(log 5) ± 1 ulp
    # once the constraint is satisfied λ leaves the cap at once (log λ was clamped, not wound up):
    # window 128 holds 20 tens + 108 × (−100): J_C = (200 − 10800)/128 = −82.8125 → λ tiny
    assert scalar(multiplier.update(costs(*([-100.0] * 108)))) < 1e-6


def test_log_gradient_ascent_without_cap_exceeds_the_published_cap() -> None:
    multiplier = LogGradientAscentMultiplier(0.0, initial_value=1.0, lr=0.1, max_value=None)
    multiplier.update(costs(10.0))  # λ = e
    assert scalar(multiplier.update(costs(10.0))) > 5.0  # ≈ 41.3


def test_log_gradient_ascent_decays_towards_zero_when_safe() -> None:
    multiplier = LogGradientAscentMultiplier(0.0, initial_value=1.0, lr=0.1)
    # J_C − d = −50: log λ ← log λ − 5 λ, so λ_1 = e^-5 ≈ 6.7e-3, then λ ≈ 1/(5 t): ≤ 1e-3 by t ≈ 200
    for _ in range(300):
        value = multiplier.update(costs(-50.0))
    assert 0.0 < scalar(value) <= 1e-3  # multiplicative: approaches 0, never reaches it


def test_log_gradient_ascent_per_constraint_hyper_parameters() -> None:
    multiplier = LogGradientAscentMultiplier(
        [0.0, 0.0], initial_value=[1.0, 2.0], lr=[0.1, 0.0 + 0.2], max_value=[5.0, 100.0]
    )
    value = multiplier.update(torch.tensor([[1.0, 1.0]], dtype=F64))
    # λ_0 = 1 · exp(0.1 · 1 · 1) = exp(0.1); λ_1 = 2 · exp(0.2 · 2 · 1) = 2 exp(0.4)
    expected = torch.tensor([math.exp(0.1), 2.0 * math.exp(0.4)], dtype=F64)
    torch.testing.assert_close(value, expected, rtol=1e-15, atol=0.0)


# --- PID Lagrangian ------------------------------------------------------------------------------


def test_pid_three_steps_by_hand() -> None:
    # d = 1, K_p = 1, K_i = 0.5, K_d = 1, no smoothing, delay 1
    multiplier = PIDMultiplier(1.0, kp=1.0, ki=0.5, kd=1.0, max_value=20.0)
    # step 1: J = mean(2, 4) = 3, e = 2: I = 0 + 0.5·2 = 1, P = 2, C̄ = 3, D = max(0, 3 − 3) = 0
    #         λ = 2 + 1 + 0 = 3
    assert scalar(multiplier.update(costs(2.0, 4.0))) == 3.0
    # step 2: J = 2, e = 1: I = 1.5, P = 1, C̄ = 2, D = max(0, 2 − 3) = 0;  λ = 1 + 1.5 = 2.5
    assert scalar(multiplier.update(costs(2.0))) == 2.5
    # step 3: J = 4, e = 3: I = 3, P = 3, C̄ = 4, D = max(0, 4 − 2) = 2;   λ = 3 + 3 + 2 = 8
    assert scalar(multiplier.update(costs(4.0, 4.0))) == 8.0
    assert scalar(multiplier.constraint_estimate) == 4.0


def test_pid_ema_and_derivative_delay_by_hand() -> None:
    # d = 0, K_p = 1, K_i = 0, K_d = 1, α_p = α_d = 0.5, delay 2; EMAs start at the first value
    multiplier = PIDMultiplier(
        0.0, kp=1.0, ki=0.0, kd=1.0, max_value=20.0, ema_alpha_p=0.5, ema_alpha_d=0.5, delay=2
    )
    # t=1: J = 2: P = 2, C̄_1 = 2, D = 0 (C̄_{-1} := C̄_1)                 λ = 2
    assert scalar(multiplier.update(costs(2.0))) == 2.0
    # t=2: J = 4: P = 0.5·2 + 0.5·4 = 3, C̄_2 = 3, D = max(0, C̄_2 − C̄_0 := C̄_1) = 1   λ = 4
    assert scalar(multiplier.update(costs(4.0))) == 4.0
    # t=3: J = 0: P = 1.5, C̄_3 = 1.5, D = max(0, 1.5 − C̄_1 = 2) = 0      λ = 1.5
    assert scalar(multiplier.update(costs(0.0))) == 1.5
    # t=4: J = 6: P = 0.75 + 3 = 3.75, C̄_4 = 3.75, D = 3.75 − C̄_2 = 0.75 λ = 4.5
    assert scalar(multiplier.update(costs(6.0))) == 4.5


def test_pid_initial_value_is_the_clamped_initial_integral() -> None:
    assert (
        scalar(PIDMultiplier(0.0, 1.0, 0.1, 0.0, max_value=2.0, initial_integral=0.5).value) == 0.5
    )
    assert (
        scalar(PIDMultiplier(0.0, 1.0, 0.1, 0.0, max_value=2.0, initial_integral=3.0).value) == 2.0
    )


def test_pid_cap_holds_exactly_under_sustained_violation() -> None:
    multiplier = PIDMultiplier(0.0, kp=1.0, ki=1.0, kd=1.0, max_value=5.0)
    values = [scalar(multiplier.update(costs(10.0))) for _ in range(10)]
    # step 1: P = 10, I = 10 → 20 → capped at 5
    assert values == [5.0] * 10


def test_pid_reaches_exactly_zero_when_safe() -> None:
    multiplier = PIDMultiplier(
        0.0, kp=1.0, ki=0.5, kd=1.0, max_value=5.0, initial_integral=2.0, ema_alpha_p=0.9
    )
    # e = −10: I = max(0, 2 − 5) = 0 at once; P < 0; D = 0 → λ = max(0, P + 0) = 0 exactly
    values = [scalar(multiplier.update(costs(-10.0))) for _ in range(5)]
    assert values == [0.0] * 5


def test_pid_missing_cap_is_an_error() -> None:
    with pytest.raises(TypeError, match="max_value"):
        PIDMultiplier(0.0, kp=1.0, ki=0.1, kd=0.0)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="explicit cap"):
        PIDMultiplier(0.0, kp=1.0, ki=0.1, kd=0.0, max_value=None)  # type: ignore[arg-type]


# --- resuming ----------------------------------------------------------------------------------


def _episode_costs_stream(num_steps: int, num_constraints: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    # varying batch sizes, costs around the limit so that λ moves both ways
    return [
        torch.randn(3 + step % 4, num_constraints, generator=generator, dtype=F64) + 0.2
        for step in range(num_steps)
    ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("resume_after", [1, 5])
def test_resumed_trajectory_equals_the_uninterrupted_one(kind: str, resume_after: int) -> None:
    def fresh() -> Multiplier:
        if kind == "log_gradient_ascent":  # window 6 < total costs, delay 2 spans resume_after=1
            return LogGradientAscentMultiplier([0.0, 0.3], lr=0.5, window=6, delay=2)
        if kind == "pid":
            return PIDMultiplier(
                [0.0, 0.3],
                kp=0.5,
                ki=0.3,
                kd=2.0,
                max_value=3.0,
                initial_integral=[0.1, 0.7],
                ema_alpha_p=0.4,
                ema_alpha_d=0.6,
                delay=3,
            )
        return FixedMultiplier([0.2, 0.9], cost_limit=[0.0, 0.3])

    stream = _episode_costs_stream(10, num_constraints=2)
    uninterrupted = fresh()
    expected = [(uninterrupted.update(c), uninterrupted.constraint_estimate) for c in stream]

    first = fresh()
    for c in stream[:resume_after]:
        first.update(c)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = fresh()
    resumed.load_state_dict(torch.load(buffer))  # weights_only=True: plain tensors/ints/None
    assert torch.equal(resumed.value, first.value)
    for (value, estimate), c in zip(expected[resume_after:], stream[resume_after:], strict=True):
        assert torch.equal(resumed.update(c), value)
        assert torch.equal(resumed.constraint_estimate, estimate)
    assert resumed.state_dict().keys() == uninterrupted.state_dict().keys()


def test_state_dict_is_a_snapshot() -> None:
    multiplier = LogGradientAscentMultiplier(0.0, window=3)
    multiplier.update(costs(1.0))
    state = multiplier.state_dict()
    saved_window = state["cost_window"].clone()
    multiplier.update(costs(2.0, 3.0))
    assert torch.equal(state["cost_window"], saved_window)


@pytest.mark.parametrize("kind", KINDS)
def test_loading_a_state_of_another_kind_or_size_says_what_was_expected(kind: str) -> None:
    multiplier = make(kind)
    other_kind = "pid" if kind != "pid" else "fixed"
    with pytest.raises(ValueError, match=rf"expected .* kind '{kind}', found '{other_kind}'"):
        multiplier.load_state_dict(make(other_kind).state_dict())
    with pytest.raises(ValueError, match=r"expected num_constraints=1 .*found 2"):
        multiplier.load_state_dict(make(kind, cost_limit=[0.0, 0.0]).state_dict())
    state = make(kind).state_dict()
    del state["num_updates"]
    with pytest.raises(ValueError, match=r"missing key\(s\) \['num_updates'\]"):
        multiplier.load_state_dict(state)


def test_loading_a_window_longer_than_this_window_is_an_error() -> None:
    long = LogGradientAscentMultiplier(0.0, window=8)
    long.update(costs(*range(8)))
    with pytest.raises(ValueError, match=r"cost_window.*k <= 4, found \(8, 1\)"):
        LogGradientAscentMultiplier(0.0, window=4).load_state_dict(long.state_dict())


# --- bad inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_episode_costs_with_the_wrong_number_of_constraints(kind: str) -> None:
    two = make(kind, cost_limit=[0.0, 0.0])
    with pytest.raises(ValueError, match=r"expected shape \(n, 2\).*found \(5,\)"):
        two.update(costs(1.0, 2.0, 3.0, 4.0, 5.0))
    with pytest.raises(ValueError, match=r"expected shape \(n, 2\).*found \(4, 3\)"):
        two.update(torch.zeros(4, 3, dtype=F64))
    one = make(kind)
    with pytest.raises(ValueError, match=r"expected shape \(n,\) or \(n, 1\).*found \(4, 2\)"):
        one.update(torch.zeros(4, 2, dtype=F64))
    one.update(torch.zeros(4, 1, dtype=F64))  # (n, 1) is fine for m = 1


@pytest.mark.parametrize("kind", KINDS)
def test_empty_or_non_finite_episode_costs(kind: str) -> None:
    multiplier = make(kind)
    with pytest.raises(ValueError, match=r"at least one cost score.*\(0, 1\)"):
        multiplier.update(torch.zeros(0, dtype=F64))
    with pytest.raises(ValueError, match=r"finite cost scores.*1 non-finite"):
        multiplier.update(costs(1.0, math.nan))
    assert multiplier.num_updates == 0  # a rejected call leaves the state untouched
    assert multiplier.constraint_estimate is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial_value": 0.0}, r"initial_value: expected values > 0.0, found \[0.0\]"),
        ({"initial_value": -1.0}, r"initial_value: expected values > 0.0"),
        ({"initial_value": 6.0}, r"initial_value: expected values <= max_value \[5.0\]"),
        ({"lr": 0.0}, r"lr: expected values > 0.0"),
        ({"window": 0}, r"window: expected an integer >= 1, found 0"),
        ({"window": 2.5}, r"window: expected an integer >= 1, found 2.5"),
        ({"delay": -1}, r"delay: expected an integer >= 0, found -1"),
        ({"max_value": 0.0}, r"max_value: expected values > 0.0"),
        ({"max_value": math.nan}, r"max_value: expected finite values"),
        ({"initial_value": [1.0, 2.0, 3.0]}, r"initial_value: expected a float or 1 values"),
    ],
)
def test_log_gradient_ascent_rejects_bad_hyper_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LogGradientAscentMultiplier(0.0, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ki": -0.1}, r"ki: expected values >= 0.0, found \[-0.1, -0.1\]"),
        ({"kp": [1.0, -1.0]}, r"kp: expected values >= 0.0"),
        ({"kd": math.inf}, r"kd: expected finite values"),
        ({"max_value": math.inf}, r"max_value: expected finite values, found \[inf, inf\]"),
        ({"max_value": -1.0}, r"max_value: expected values >= 0.0"),
        ({"ema_alpha_p": 1.0}, r"ema_alpha_p: expected values < 1.0"),
        ({"ema_alpha_d": -0.5}, r"ema_alpha_d: expected values >= 0.0"),
        ({"delay": 0}, r"delay: expected an integer >= 1, found 0"),
        ({"initial_integral": -1.0}, r"initial_integral: expected values >= 0.0"),
        ({"kp": [1.0, 1.0, 1.0]}, r"kp: expected a float or 2 values .*found 3 values"),
    ],
)
def test_pid_rejects_bad_hyper_parameters(kwargs: dict, message: str) -> None:
    options = {"kp": 1.0, "ki": 0.1, "kd": 0.0, "max_value": 5.0} | kwargs
    with pytest.raises(ValueError, match=message):
        PIDMultiplier([0.0, 0.0], **options)


def test_bad_cost_limits_and_fixed_values() -> None:
    with pytest.raises(ValueError, match=r"cost_limit: expected finite limits"):
        LogGradientAscentMultiplier(math.nan)
    with pytest.raises(ValueError, match=r"cost_limit: expected a float or a non-empty 1-D"):
        LogGradientAscentMultiplier([])
    with pytest.raises(ValueError, match=r"cost_limit: .*flat sequence of floats, found nested values"):
        PIDMultiplier([[0.0, 0.0], [0.0, 0.0]], kp=1.0, ki=0.0, kd=0.0, max_value=1.0)
    with pytest.raises(ValueError, match=r"value: expected values >= 0.0, found \[-0.5\]"):
        FixedMultiplier(-0.5)
    with pytest.raises(ValueError, match=r"cost_limit: expected a float or 3 values"):
        FixedMultiplier([0.1, 0.2, 0.3], cost_limit=[0.0, 0.0])


@pytest.mark.parametrize("kind", ["log_gradient_ascent", "pid", "fixed"])
def test_the_option_rules_that_config_validation_reads_are_the_constructors_own(kind) -> None:
    """``saferl.config`` checks ``multiplier.*`` with ``multiplier_options.OPTIONS`` (no torch);
    the classes must take exactly those options with exactly those defaults."""
    import inspect

    from saferl.core.multiplier_options import OPTIONS, REQUIRED
    from saferl.core.multipliers import _KIND_TO_CLASS

    parameters = {name: parameter.default for name, parameter in inspect.signature(_KIND_TO_CLASS[kind]).parameters.items()
                  if name != "cost_limit"}
    rules = {name: (inspect.Parameter.empty if rule.default is REQUIRED else rule.default)
             for name, rule in OPTIONS[kind].items()}
    assert parameters == rules

