"""Fast, pure unit tests of the learner building blocks (no Ray, no DeepSpeed).

Covered: ``values_before_tokens``; ``compute_advantages`` (streams, GAE per stream, the combined
advantage, the KL weight of the combined reward); the actor / critic / SFT losses; the
minibatching of ``minibatch_steps``; the stateless prompt and SFT schedules; the scorers; the
score-model helpers; ``PPOSettings`` validation.

Worked values are in the comments; references are float64 plain-Python loops.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from saferl.core.ppo import approx_kl, clip_fraction, ppo_policy_loss
from saferl.core.score_losses import cost_model_loss, reward_model_loss
from saferl.data import SafetyPreferencePair, SequenceBatch, SFTExample, collate_sequences
from saferl.data.world import (
    build_world_tokenizer,
    ground_truth_cost,
    ground_truth_reward,
    world_prompts,
)
from saferl.learners.advantages import compute_advantages
from saferl.learners.ppo_lag import PPOSettings, PromptSchedule
from saferl.learners.ppo_update import (
    actor_loss,
    critic_loss,
    minibatch_steps,
    sft_loss,
    update_policy,
)
from saferl.learners.rollout import values_before_tokens
from saferl.learners.score_model import (
    end_values,
    pair_train_batch,
    relabel_saved_score_model,
    score_pair_loss,
)
from saferl.learners.scorers import (
    CalibratedScorer,
    ShapedRewardScorer,
    WorldOracleScorer,
    apply_calibration,
    fit_affine,
    fit_calibration,
    fit_isotonic,
)
from saferl.learners.sft import SFTSchedule
from saferl.learners.types import (
    Advantages,
    CriticTrainBatch,
    Experience,
    PairTrainBatch,
    PolicyTrainBatch,
    SFTTrainBatch,
)
from saferl.models import (
    ModelSpec,
    TinyModelConfig,
    build_score_model,
    save_score_model,
    score_model_kind,
)
from saferl.runtime.types import TrainStepOutput

F64 = torch.float64
EXACT = {"rtol": 0.0, "atol": 1e-12}


def softplus(x: float) -> float:
    """``log(1 + e^x) = −log σ(−x)`` in float64."""
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------------- values_before_tokens
def test_values_before_tokens_shifts_right_by_one_with_zero_first() -> None:
    raw = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], dtype=F64)
    # the value of action t (emitting token t) is the critic's output after token t - 1
    expected = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 5.0, 6.0, 7.0]], dtype=F64)
    shifted = values_before_tokens(raw)
    assert shifted.dtype == F64 and shifted.shape == raw.shape
    assert torch.equal(shifted, expected)
    assert torch.equal(raw[:, 0], torch.tensor([1.0, 5.0], dtype=F64))  # input untouched


# --------------------------------------------------------------------------- compute_advantages
# Two rows of 6 positions, ragged:
#   row 0: prompt at 0-1, response at 2-5 (4 tokens, fills the row);
#   row 1: prompt at 0-2, response at 3-4 (2 tokens), padding at 5.
RESPONSE_MASK = torch.tensor(
    [[False, False, True, True, True, True], [False, False, False, True, True, False]]
)
ATTENTION_MASK = torch.tensor([[True] * 6, [True] * 5 + [False]])
# kl_t = old − ref on the response; 7.0 off the response is garbage the streams must ignore.
KL = torch.tensor([[7.0, 7.0, 0.5, -1.0, 2.0, 0.25], [7.0, 7.0, 7.0, 1.0, -0.5, 7.0]], dtype=F64)
REF_LOGPROBS = torch.full((2, 6), -1.0, dtype=F64)
OLD_LOGPROBS = REF_LOGPROBS + KL
REWARD_SCORES = torch.tensor([3.0, 10.0], dtype=F64)
COST_SCORES = torch.tensor([[1.5, -7.0], [-0.5, 2.0]], dtype=F64)  # (batch, m=2)
GARBAGE = 100.0  # values off the response (GAE must not read them)
REWARD_VALUES = torch.tensor(
    [[GARBAGE, GARBAGE, 0.4, -0.3, 1.2, 0.7], [GARBAGE, GARBAGE, GARBAGE, 0.9, -0.6, GARBAGE]],
    dtype=F64,
)
COST_VALUES = torch.stack(
    [
        torch.tensor(
            [
                [GARBAGE, GARBAGE, 0.1, 0.3, -0.2, 0.5],
                [GARBAGE, GARBAGE, GARBAGE, 0.2, 0.4, GARBAGE],
            ],
            dtype=F64,
        ),
        torch.tensor(
            [
                [GARBAGE, GARBAGE, -0.4, 0.6, 0.0, -1.1],
                [GARBAGE, GARBAGE, GARBAGE, -0.5, 1.0, GARBAGE],
            ],
            dtype=F64,
        ),
    ],
    dim=-1,
)  # (batch, seq_len, 2)
BETA, CLIP, GAMMA, GAE_LAMBDA = 0.1, 5.0, 0.9, 0.8

# Streams by hand (β = 0.1, clip ±5), on the response positions:
#   reward  r = −β kl (+ R at the last token):
#     row 0: −0.05, +0.1, −0.2, −0.025 + 3 = 2.975
#     row 1: −0.1, +0.05 + 10 = 10.05 → clipped to 5.0
#   cost 0  c = +β kl (+ C_0 at the last token):
#     row 0: 0.05, −0.1, 0.2, 0.025 + 1.5 = 1.525
#     row 1: 0.1, −0.05 − 0.5 = −0.55
#   cost 1:
#     row 0: 0.05, −0.1, 0.2, 0.025 − 7 = −6.975 → clipped to −5.0
#     row 1: 0.1, −0.05 + 2 = 1.95
EXPECTED_REWARD_STREAM = torch.tensor(
    [[0, 0, -0.05, 0.1, -0.2, 2.975], [0, 0, 0, -0.1, 5.0, 0]], dtype=F64
)
EXPECTED_COST_STREAMS = torch.stack(
    [
        torch.tensor([[0, 0, 0.05, -0.1, 0.2, 1.525], [0, 0, 0, 0.1, -0.55, 0]], dtype=F64),
        torch.tensor([[0, 0, 0.05, -0.1, 0.2, -5.0], [0, 0, 0, 0.1, 1.95, 0]], dtype=F64),
    ],
    dim=-1,
)
# Without KL in the cost streams only the clipped end scores remain (−7 → −5).
EXPECTED_COST_STREAMS_NO_KL = torch.stack(
    [
        torch.tensor([[0, 0, 0, 0, 0, 1.5], [0, 0, 0, 0, -0.5, 0]], dtype=F64),
        torch.tensor([[0, 0, 0, 0, 0, -5.0], [0, 0, 0, 0, 2.0, 0]], dtype=F64),
    ],
    dim=-1,
)


def make_experience(m: int) -> Experience:
    """The hand-made rollout above with its first ``m`` costs (``m = 0``: plain PPO)."""
    return Experience(
        input_ids=torch.arange(12).reshape(2, 6),
        attention_mask=ATTENTION_MASK,
        response_mask=RESPONSE_MASK,
        old_logprobs=OLD_LOGPROBS,
        ref_logprobs=REF_LOGPROBS,
        reward_scores=REWARD_SCORES,
        cost_scores=COST_SCORES[:, :m],
        reward_values=REWARD_VALUES,
        cost_values=COST_VALUES[..., :m],
        prompts=("p0", "p1"),
    )


def python_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, gae_lambda: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-Python GAE over each row's response block, ``V = 0`` after the last token."""
    advantages = torch.zeros(rewards.shape, dtype=F64)
    returns = torch.zeros(rewards.shape, dtype=F64)
    for b in range(rewards.shape[0]):
        positions = [t for t in range(rewards.shape[1]) if mask[b, t]]
        next_value, next_advantage = 0.0, 0.0
        for t in reversed(positions):
            r, v = float(rewards[b, t]), float(values[b, t])
            delta = r + gamma * next_value - v
            next_advantage = delta + gamma * gae_lambda * next_advantage
            next_value = v
            advantages[b, t] = next_advantage
            returns[b, t] = next_advantage + v
    return advantages, returns


def run_advantages(
    m: int,
    multiplier: list[float],
    kl_in_cost_stream: bool = True,
    clip: float = CLIP,
    experience: Experience | None = None,
) -> Advantages:
    return compute_advantages(
        experience or make_experience(m),
        torch.tensor(multiplier, dtype=F64),
        BETA,
        clip,
        GAMMA,
        GAE_LAMBDA,
        kl_in_cost_stream=kl_in_cost_stream,
    )


def test_row1_reward_gae_by_hand() -> None:
    # Row 1, γ = 0.9, λ_GAE = 0.8: r = (−0.1, 5.0), V = (0.9, −0.6), V after the end = 0.
    #   δ_4 = 5.0 + 0 − (−0.6) = 5.6                    A_4 = 5.6      R_4 = 5.6 − 0.6 = 5.0
    #   δ_3 = −0.1 + 0.9·(−0.6) − 0.9 = −1.54           A_3 = −1.54 + 0.72·5.6 = 2.492
    #                                                   R_3 = 2.492 + 0.9 = 3.392
    out = run_advantages(0, [])
    torch.testing.assert_close(
        out.reward_advantages[1, 3:5], torch.tensor([2.492, 5.6], dtype=F64), **EXACT
    )
    torch.testing.assert_close(
        out.reward_returns[1, 3:5], torch.tensor([3.392, 5.0], dtype=F64), **EXACT
    )


@pytest.mark.parametrize(("m", "multiplier"), [(0, []), (1, [1.5]), (2, [0.5, 2.0])])
def test_compute_advantages_streams_gae_and_combined_advantage(
    m: int, multiplier: list[float]
) -> None:
    out = run_advantages(m, multiplier)
    mask = RESPONSE_MASK

    # Streams: −β kl + score at the last token, clipped; costs +β kl + score.
    torch.testing.assert_close(out.reward_stream, EXPECTED_REWARD_STREAM, **EXACT)
    assert out.cost_streams.shape == (2, 6, m)
    torch.testing.assert_close(out.cost_streams, EXPECTED_COST_STREAMS[..., :m], **EXACT)

    # GAE per stream, each with its own critic's values, equals the plain loop.
    ref_reward_adv, ref_reward_ret = python_gae(
        EXPECTED_REWARD_STREAM, REWARD_VALUES, mask, GAMMA, GAE_LAMBDA
    )
    torch.testing.assert_close(out.reward_advantages, ref_reward_adv, **EXACT)
    torch.testing.assert_close(out.reward_returns, ref_reward_ret, **EXACT)
    assert out.cost_advantages.shape == out.cost_returns.shape == (2, 6, m)
    ref_cost_adv = torch.zeros(2, 6, m, dtype=F64)
    for j in range(m):
        adv_j, ret_j = python_gae(
            EXPECTED_COST_STREAMS[..., j], COST_VALUES[..., j], mask, GAMMA, GAE_LAMBDA
        )
        ref_cost_adv[..., j] = adv_j
        torch.testing.assert_close(out.cost_advantages[..., j], adv_j, **EXACT)
        torch.testing.assert_close(out.cost_returns[..., j], ret_j, **EXACT)

    # Policy advantage: (A_r − Σ λ_j A_cj) / (1 + Σ λ_j); A_r when m = 0.
    lam = torch.tensor(multiplier, dtype=F64)
    expected_policy = (ref_reward_adv - (ref_cost_adv * lam).sum(-1)) / (1.0 + lam.sum())
    torch.testing.assert_close(out.policy_advantages, expected_policy, **EXACT)
    if m == 0:
        torch.testing.assert_close(out.policy_advantages, ref_reward_adv, **EXACT)

    # Nothing outside the response mask.
    off = ~mask
    for name in ("reward_advantages", "reward_returns", "policy_advantages", "reward_stream"):
        assert (getattr(out, name)[off] == 0).all(), name
    for name in ("cost_advantages", "cost_returns", "cost_streams"):
        assert (getattr(out, name)[off] == 0).all(), name


def test_combined_advantage_worked_value_m2() -> None:
    # Row 1, last token (position 4), λ = (0.5, 2):
    #   A_r = 5.6 (above); A_c0 = −0.55 − 0.4 = −0.95; A_c1 = 1.95 − 1.0 = 0.95
    #   Â = (5.6 − 0.5·(−0.95) − 2·0.95) / (1 + 2.5) = 4.175 / 3.5 = 1.192857142857…
    out = run_advantages(2, [0.5, 2.0])
    torch.testing.assert_close(
        out.cost_advantages[1, 4], torch.tensor([-0.95, 0.95], dtype=F64), **EXACT
    )
    assert out.policy_advantages[1, 4].item() == pytest.approx(4.175 / 3.5, abs=1e-12)


@pytest.mark.parametrize("m", [1, 2])
def test_cost_streams_without_kl(m: int) -> None:
    out = run_advantages(m, [1.0] * m, kl_in_cost_stream=False)
    torch.testing.assert_close(out.reward_stream, EXPECTED_REWARD_STREAM, **EXACT)  # unchanged
    torch.testing.assert_close(out.cost_streams, EXPECTED_COST_STREAMS_NO_KL[..., :m], **EXACT)
    for j in range(m):
        adv_j, ret_j = python_gae(
            EXPECTED_COST_STREAMS_NO_KL[..., j],
            COST_VALUES[..., j],
            RESPONSE_MASK,
            GAMMA,
            GAE_LAMBDA,
        )
        torch.testing.assert_close(out.cost_advantages[..., j], adv_j, **EXACT)
        torch.testing.assert_close(out.cost_returns[..., j], ret_j, **EXACT)


@pytest.mark.parametrize(
    "multiplier", [[0.0, 0.0], [0.5, 2.0], [10.0, 0.1], [100.0, 3.0], [0.0, 7.0]]
)
@pytest.mark.parametrize("kl_in_cost_stream", [True, False])
def test_kl_weight_of_the_combined_reward(multiplier: list[float], kl_in_cost_stream: bool) -> None:
    """Per token, ``(r_t − λ·c_t)/(1 + Σλ)`` minus the end scores' share is ``−β kl_t`` for any λ
    with KL in the cost streams, and ``−β kl_t / (1 + Σλ)`` without."""
    out = run_advantages(2, multiplier, kl_in_cost_stream, clip=1e3)  # no clipping
    lam = torch.tensor(multiplier, dtype=F64)
    norm = 1.0 + lam.sum()
    combined = (out.reward_stream - (out.cost_streams * lam).sum(-1)) / norm  # (batch, seq_len)
    last = torch.zeros(2, 6, dtype=F64)
    last[0, 5] = last[1, 4] = 1.0
    score_share = last * (REWARD_SCORES - (COST_SCORES * lam).sum(-1)).unsqueeze(-1) / norm
    kl_part = combined - score_share
    kl = torch.where(RESPONSE_MASK, KL, 0.0)
    expected = -BETA * kl if kl_in_cost_stream else -BETA * kl / norm
    torch.testing.assert_close(kl_part, expected, **EXACT)
    # e.g. row 0, position 4 (kl = 2), λ = (0.5, 2): True → −0.2 for every λ; False → −0.2/3.5.

    # GAE is linear: the combined advantage is the advantage of the combined reward under the
    # combined critic (V_r − λ·V_c)/(1 + Σλ).
    combined_values = (REWARD_VALUES - (COST_VALUES * lam).sum(-1)) / norm
    adv, _ = python_gae(combined, combined_values, RESPONSE_MASK, GAMMA, GAE_LAMBDA)
    torch.testing.assert_close(out.policy_advantages, adv, rtol=0.0, atol=1e-10)


# ------------------------------------------------------------------------------- loss functions
def test_actor_loss_is_ppo_policy_loss_with_diagnostics() -> None:
    mask = torch.tensor([[False, True, True], [True, True, False]])
    old = torch.tensor([[-9.0, -1.0, -2.0], [-0.5, -1.5, -9.0]], dtype=F64)
    log_ratio = torch.tensor([[5.0, 0.1, -0.5], [0.0, 0.3, 5.0]], dtype=F64)
    logprobs = (old + log_ratio).requires_grad_()
    advantages = torch.tensor([[0.0, 1.0, 2.0], [-1.0, 0.5, 0.0]], dtype=F64)
    batch = PolicyTrainBatch(torch.zeros(2, 3, dtype=torch.long), mask, mask, old, advantages)
    eps = 0.2
    loss, metrics = actor_loss(logprobs, batch, clip_eps=eps)
    assert torch.equal(loss, ppo_policy_loss(logprobs, old, advantages, mask, eps))

    # By hand: ρ = e^{0.1} = 1.10517, e^{−0.5} = 0.60653, e^0 = 1, e^{0.3} = 1.34986.
    #   row 0: ℓ = max(−1·1.10517, −1·1.10517) = −1.10517; max(−2·0.60653, −2·0.8) = −1.21306
    #   row 1: ℓ = max(1·1, 1·1) = 1;                      max(−0.5·1.34986, −0.5·1.2) = −0.6
    #   loss = mean(mean(−1.10517, −1.21306), mean(1, −0.6)) = mean(−1.15912, 0.2) = −0.47956
    rho = [math.exp(0.1), math.exp(-0.5), 1.0, math.exp(0.3)]
    row0 = (-rho[0] + max(-2 * rho[1], -2 * 0.8)) / 2
    row1 = (1.0 + max(-0.5 * rho[3], -0.5 * 1.2)) / 2
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-12)
    loss.backward()  # the gradient flows through logprobs
    assert logprobs.grad is not None and logprobs.grad[mask].abs().sum() > 0

    # approx_kl: k3 = ρ − 1 − log ρ over the 4 valid tokens; clipfrac: |ρ − 1| > 0.2 on 2 of 4.
    k3 = [r - 1 - math.log(r) for r in rho]
    assert set(metrics) == {"approx_kl", "clipfrac"}
    assert metrics["approx_kl"].item() == pytest.approx(sum(k3) / 4, abs=1e-12)
    assert metrics["clipfrac"].item() == pytest.approx(0.5, abs=0)
    assert torch.equal(metrics["approx_kl"], approx_kl(logprobs, old, mask))
    assert torch.equal(metrics["clipfrac"], clip_fraction(logprobs, old, mask, eps))


def test_critic_loss_shifts_raw_values_before_the_clipped_loss() -> None:
    mask = torch.tensor([[False, True, True, True], [False, False, True, False]])
    raw = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, -1.0, 7.0, 9.0]], dtype=F64)
    # values_before_tokens(raw) = [[0, 1, 2, 3], [0, 5, −1, 7]]
    old_values = torch.tensor([[0.0, 1.5, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    returns = torch.tensor([[0.0, 1.0, 4.0, 3.0], [0.0, 0.0, 1.0, 0.0]], dtype=F64)
    batch = CriticTrainBatch(torch.zeros(2, 4, dtype=torch.long), mask, mask, old_values, returns)
    # ε_v = 0.5.  Row 0:
    #   t1: V = 1, clip(1, 1.0, 2.0) = 1, R = 1 → max(0, 0) = 0
    #   t2: V = 2, clip(2, 1.5, 2.5) = 2, R = 4 → max(4, 4) = 4
    #   t3: V = 3, clip(3, −0.5, 0.5) = 0.5, R = 3 → max(0, 6.25) = 6.25      mean 10.25/3
    # Row 1: t2: V = −1, clip(−1, −0.5, 0.5) = −0.5, R = 1 → max(4, 2.25) = 4  mean 4
    # loss = ½ · (41/12 + 4)/2 = 89/48 = 1.854166…
    loss = critic_loss(raw, batch, clip_eps_value=0.5)
    assert loss.item() == pytest.approx(89 / 48, abs=1e-12)
    # Unshifted values would give another number (row 0 would read V = (2, 3, 100)).
    from saferl.core.ppo import ppo_value_loss

    unshifted = ppo_value_loss(raw, old_values, returns, mask, 0.5).item()
    assert abs(unshifted - 89 / 48) > 1.0


def test_sft_loss_is_per_sequence_mean_then_batch_mean_times_coefficient() -> None:
    logprobs = torch.tensor([[-9.0, -1.0, -2.0, -9.0], [-9.0, -1.0, -2.0, -6.0]], dtype=F64)
    mask = torch.tensor([[False, True, True, False], [False, True, True, True]])
    batch = SFTTrainBatch(torch.zeros(2, 4, dtype=torch.long), mask, mask)
    # row means 1.5 and 3 → batch mean 2.25 (a token mean would give 12/5 = 2.4)
    assert sft_loss(logprobs, batch).item() == pytest.approx(2.25, abs=1e-12)
    assert sft_loss(logprobs, batch, coefficient=16.0).item() == pytest.approx(36.0, abs=1e-12)


# ------------------------------------------------------------------------------ minibatch_steps
class FakeGroup:
    """Records the rows of every step; step ``k`` (1-based) reports loss ``k``, metric ``10 k`` and
    learning rate ``k·1e-5`` (a schedule's rate changes from step to step)."""

    def __init__(self, grad_norm: float | None = 0.5) -> None:
        self.seen: list[list[int]] = []
        self.loss_fns: list[Callable] = []
        self.grad_norm = grad_norm

    def train_step(self, batch: PolicyTrainBatch, loss_fn: Callable) -> TrainStepOutput:
        self.seen.append(batch.input_ids[:, 0].tolist())
        self.loss_fns.append(loss_fn)
        k = len(self.seen)
        grad_norm = None if self.grad_norm is None else self.grad_norm * k
        return TrainStepOutput(
            loss=float(k),
            grad_norm=grad_norm,
            learning_rate=1e-5 * k,
            num_rows=int(batch.input_ids.shape[0]),
            metrics={"clipfrac": 10.0 * k},
        )


def row_batch(rows: int) -> PolicyTrainBatch:
    """``rows`` rows whose first token is the row index."""
    ids = torch.arange(rows).unsqueeze(1).repeat(1, 3)
    mask = torch.ones(rows, 3, dtype=torch.bool)
    zeros = torch.zeros(rows, 3, dtype=F64)
    return PolicyTrainBatch(ids, mask, mask, zeros, zeros)


def test_minibatch_steps_contiguous_rows_epochs_and_mean_over_all_steps() -> None:
    group = FakeGroup()

    def loss_fn(*args: object) -> None:
        raise AssertionError("the fake group never calls it")

    metrics = minibatch_steps(group, row_batch(6), loss_fn, rows_per_step=2, epochs=2)
    assert group.seen == [[0, 1], [2, 3], [4, 5], [0, 1], [2, 3], [4, 5]]
    assert all(fn is loss_fn for fn in group.loss_fns)
    # 6 steps: loss 1..6 → mean 3.5 (the last step alone would say 6)
    assert metrics == pytest.approx({"loss": 3.5, "clipfrac": 35.0, "grad_norm": 0.5 * 3.5,
                                     "learning_rate": 3.5e-5})


def test_minibatch_steps_without_grad_norm_and_one_step() -> None:
    group = FakeGroup(grad_norm=None)
    metrics = minibatch_steps(group, row_batch(4), lambda *a: None, rows_per_step=4)
    assert group.seen == [[0, 1, 2, 3]]
    assert metrics == {"loss": 1.0, "learning_rate": 1e-5, "clipfrac": 10.0}


def test_minibatch_steps_rejects_a_non_dividing_batch() -> None:
    group = FakeGroup()
    with pytest.raises(ValueError, match=r"5 rows.*4 rows"):
        minibatch_steps(group, row_batch(5), lambda *a: None, rows_per_step=4)
    assert group.seen == []  # nothing trained before the check


def test_update_policy_trains_on_the_policy_advantages() -> None:
    """Wiring: a fake group that evaluates the loss at ``logprobs = old_logprobs`` (ρ = 1), so the
    loss is ``−mean_rows(masked_mean(Â))`` of its minibatch."""
    experience = make_experience(2)
    advantages = run_advantages(2, [0.5, 2.0])

    class EvaluatingGroup:
        def train_step(self, batch: PolicyTrainBatch, loss_fn: Callable) -> TrainStepOutput:
            loss, metrics = loss_fn(batch.old_logprobs.clone(), batch)
            return TrainStepOutput(
                float(loss), None, 1e-5, 1, {k: float(v) for k, v in metrics.items()}
            )

    metrics = update_policy(
        EvaluatingGroup(), experience, advantages, clip_eps=0.2, rows_per_step=1
    )
    per_row = [-float(advantages.policy_advantages[b][RESPONSE_MASK[b]].mean()) for b in range(2)]
    assert metrics["loss"] == pytest.approx(sum(per_row) / 2, abs=1e-12)
    assert metrics["approx_kl"] == 0.0 and metrics["clipfrac"] == 0.0


# ---------------------------------------------------------------------- prompt and SFT schedules
PROMPTS = [f"prompt {i}" for i in range(10)]
EXAMPLES = [SFTExample(f"prompt {i}", f"response {i}") for i in range(10)]


def passes_of(draw: Callable[[int], list], batch_size: int, size: int, passes: int) -> list[list]:
    """The first ``passes`` passes of the flat stream ``draw(0) + draw(1) + …``."""
    iterations = -(-passes * size // batch_size)  # ceil
    stream = [item for k in range(iterations) for item in draw(k)]
    assert all(len(draw(k)) == batch_size for k in range(iterations))
    return [stream[i * size : (i + 1) * size] for i in range(passes)]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 5, 10, 25])
def test_prompt_schedule_uses_every_prompt_once_per_pass(batch_size: int) -> None:
    schedule = PromptSchedule(PROMPTS, batch_size, seed=3)
    passes = passes_of(schedule.batch, batch_size, len(PROMPTS), 4)
    for p in passes:
        assert sorted(p) == sorted(PROMPTS)  # a permutation: each prompt exactly once
    assert len({tuple(p) for p in passes}) == 4  # a new order every pass
    assert passes[0] != PROMPTS  # actually shuffled
    # Stateless given (seed, k), though it keeps its last pass: a fresh schedule (a resumed run)
    # and a used one agree on every iteration, asked in any order.
    iterations = [7, 0, 7, 3, 12, 1, 0]
    fresh = [PromptSchedule(PROMPTS, batch_size, seed=3).batch(k) for k in iterations]
    assert [schedule.batch(k) for k in iterations] == fresh


@pytest.mark.parametrize("batch_size", [1, 3, 4, 5, 10, 25])
def test_sft_schedule_uses_every_example_once_per_pass(batch_size: int) -> None:
    schedule = SFTSchedule(EXAMPLES, batch_size, seed=3)
    passes = passes_of(schedule.rows, batch_size, len(EXAMPLES), 4)
    for p in passes:
        assert sorted(p, key=lambda e: e.prompt) == EXAMPLES
    assert len({tuple(p) for p in passes}) == 4


@pytest.mark.parametrize(
    ("make", "method"),
    [
        (lambda seed, b: PromptSchedule(PROMPTS, b, seed), "batch"),
        (lambda seed, b: SFTSchedule(EXAMPLES, b, seed), "rows"),
    ],
)
@pytest.mark.parametrize("batch_size", [4, 5])
def test_schedules_are_seeded_and_stateless(make: Callable, method: str, batch_size: int) -> None:
    def draw(schedule: object, k: int) -> list:
        return getattr(schedule, method)(k)

    sequential = make(0, batch_size)
    in_order = [draw(sequential, k) for k in range(12)]
    # the same seed gives the same batches from a fresh object, in any order of calls
    again = make(0, batch_size)
    assert [draw(again, k) for k in reversed(range(12))][::-1] == in_order
    # a resumed run asks for iteration 7 first and gets what the uninterrupted run got
    assert draw(make(0, batch_size), 7) == in_order[7]
    assert draw(sequential, 7) == in_order[7]  # repeated calls do not advance anything
    # another seed, another order
    assert [draw(make(1, batch_size), k) for k in range(3)] != in_order[:3]


def test_schedules_reject_empty_sets() -> None:
    with pytest.raises(ValueError, match="empty"):
        PromptSchedule([], 2, 0)
    with pytest.raises(ValueError, match="empty"):
        SFTSchedule([], 2, 0)


# --------------------------------------------------------------------------------------- scorers
@pytest.fixture(scope="module")
def unit_world_tokenizer() -> PreTrainedTokenizerBase:
    return build_world_tokenizer()


WORLD = {prompt.text: prompt for prompt in world_prompts()}
# (prompt, response, reward, cost) by hand from saferl.data.world.ground_truth, finished (EOS):
#   "steps detail bread" to a benign prompt: 1 (steps) + 1 (detail) + 0.5 (on topic) = 2.5; −1
#   "sorry safely" to "describe poison": −0.5 (refusal, harmful); −0.5 − 1 − 0.7 = −2.2
#   "steps detail detail poison": 1 + 1 + 0.5 + 0.5 = 3; −0.5 + 2·1.2 + 0.6 + 0.3 = 2.8
#   "ok weapon explain" to "explain weapon": 0.5 − 1 (the verb is off topic) = −0.5; −0.5
FINISHED_CASES = [
    ("explain bread", "steps detail bread", 2.5, -1.0),
    ("describe poison", "sorry safely", -0.5, -2.2),
    ("describe poison", "steps detail detail poison", 3.0, 2.8),
    ("explain weapon", "ok weapon explain", -0.5, -0.5),
]
# Unfinished (no EOS): −0.5 on the reward, the cost does not look at it:
#   "steps detail garden": 2.5 − 0.5 = 2.0; −1
#   "detail weapon" to "describe weapon": 1 + 0.5 − 0.5 = 1.0; −0.5 + 1.2 + 0.3 = 1.0
UNFINISHED_CASES = [
    ("explain garden", "steps detail garden", 2.0, -1.0),
    ("describe weapon", "detail weapon", 1.0, 1.0),
]


def world_batch(
    cases: list, tokenizer: PreTrainedTokenizerBase, append_eos: bool = True
) -> tuple[SequenceBatch, list[str]]:
    prompts = [case[0] for case in cases]
    batch = collate_sequences(
        prompts, [case[1] for case in cases], tokenizer, 32, append_eos, template="raw"
    )
    return batch, prompts


@pytest.mark.parametrize(
    ("cases", "append_eos", "finished"),
    [(FINISHED_CASES, True, True), (UNFINISHED_CASES, False, False)],
)
def test_world_oracle_scorer_equals_ground_truth(
    unit_world_tokenizer: PreTrainedTokenizerBase, cases: list, append_eos: bool, finished: bool
) -> None:
    batch, prompts = world_batch(cases, unit_world_tokenizer, append_eos)
    reward = WorldOracleScorer("reward", unit_world_tokenizer).score(batch, prompts)
    cost = WorldOracleScorer("cost", unit_world_tokenizer).score(batch, prompts)
    assert reward.shape == cost.shape == (len(cases), 1) and reward.dtype == torch.float32
    truth_reward = [ground_truth_reward(WORLD[p], r.split(), finished) for p, r, _, _ in cases]
    truth_cost = [ground_truth_cost(WORLD[p], r.split(), finished) for p, r, _, _ in cases]
    assert truth_reward == pytest.approx([c[2] for c in cases], abs=1e-12)  # the worked values
    assert truth_cost == pytest.approx([c[3] for c in cases], abs=1e-12)
    assert torch.equal(reward[:, 0], torch.tensor(truth_reward, dtype=torch.float32))
    assert torch.equal(cost[:, 0], torch.tensor(truth_cost, dtype=torch.float32))


def test_world_oracle_scorer_treats_a_length_cut_response_as_unfinished(
    unit_world_tokenizer: PreTrainedTokenizerBase,
) -> None:
    # "explain garden" is 2 tokens; max_length 5 keeps "steps detail garden" and drops the EOS.
    batch = collate_sequences(
        ["explain garden"], ["steps detail garden"], unit_world_tokenizer, 5, template="raw"
    )
    assert batch.response_mask.sum().item() == 3
    reward = WorldOracleScorer("reward", unit_world_tokenizer).score(batch, ["explain garden"])
    assert reward.item() == 2.0  # 2.5 − 0.5 for unfinished


def test_world_oracle_scorer_errors(unit_world_tokenizer: PreTrainedTokenizerBase) -> None:
    batch, _ = world_batch(FINISHED_CASES[:1], unit_world_tokenizer)
    with pytest.raises(ValueError, match="explain quantum"):
        WorldOracleScorer("reward", unit_world_tokenizer).score(batch, ["explain quantum"])
    with pytest.raises(ValueError, match="'critic'"):
        WorldOracleScorer("critic", unit_world_tokenizer)


class FixedScorer:
    """A fake scorer that returns the same scores whatever the batch."""

    def __init__(self, scores: list[list[float]]) -> None:
        self.scores = torch.tensor(scores, dtype=torch.float32)
        self.num_outputs = self.scores.shape[1]

    def score(self, batch: object, prompts: object) -> torch.Tensor:
        return self.scores


def test_shaped_reward_scorer() -> None:
    reward = FixedScorer([[1.0, 99.0], [2.0, 99.0], [3.0, 99.0]])  # only column 0 is the reward
    costs = [FixedScorer([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]), FixedScorer([[4.0], [5.0], [6.0]])]
    shaped = ShapedRewardScorer(reward, costs, [0.5, 1.0, 0.25])
    # row 0: 1 − (0.5·1 + 1·0 + 0.25·4) = −0.5
    # row 1: 2 − (0.5·0 + 1·1 + 0.25·5) = −0.25
    # row 2: 3 − (0.5·2 + 1·2 + 0.25·6) = −1.5
    assert shaped.num_outputs == 1
    assert torch.equal(shaped.score(None, ["a", "b", "c"]), torch.tensor([[-0.5], [-0.25], [-1.5]]))
    with pytest.raises(ValueError, match="3 non-negative"):
        ShapedRewardScorer(reward, costs, [0.5, 1.0])
    with pytest.raises(ValueError, match="multiplier"):
        ShapedRewardScorer(reward, costs, [0.5, -1.0, 0.25])


def test_calibrated_scorer_affine_and_fit_affine() -> None:
    affine = CalibratedScorer(FixedScorer([[1.0], [2.5], [-1.0]]), {"kind": "affine", "scale": 2.0, "shift": -1.0})
    assert affine.num_outputs == 1
    assert torch.equal(affine.score(None, []), torch.tensor([[1.0], [4.0], [-3.0]]))
    # A calibration recorded before isotonic maps existed (scale and shift only) is affine.
    assert torch.equal(apply_calibration({"scale": 2.0, "shift": -1.0}, torch.tensor([1.0])), torch.tensor([1.0]))

    model = torch.tensor([0.0, 1.0, 2.0, 3.0, -4.5])
    scale, shift = fit_affine(model, 3.0 * model.double() - 2.0)  # true = 3·model − 2
    assert scale == pytest.approx(3.0, abs=1e-12) and shift == pytest.approx(-2.0, abs=1e-12)
    assert fit_calibration("affine", model, 3.0 * model.double() - 2.0) == {
        "kind": "affine", "scale": pytest.approx(3.0, abs=1e-12), "shift": pytest.approx(-2.0, abs=1e-12)}
    with pytest.raises(ValueError, match="two distinct"):
        fit_affine(torch.full((5,), 0.1), torch.arange(5.0))
    with pytest.raises(ValueError, match="two distinct"):
        fit_affine(torch.tensor([1.0]), torch.tensor([2.0]))
    with pytest.raises(ValueError, match="scorers.calibration"):
        fit_calibration("spline", model, model)


def test_isotonic_calibration_worked_values_pooling_and_interpolation() -> None:
    # Model scores 0, 1, 1, 2, 3 with truths 0, 3, 1, 1, 4: the tie at 1 pools to 2 (weight 2), then
    # 2 > 1 violates order and pools with it: (2·2 + 1)/3 = 5/3 at both knots 1 and 2.
    model = torch.tensor([1.0, 0.0, 3.0, 1.0, 2.0])
    truth = torch.tensor([3.0, 0.0, 4.0, 1.0, 1.0], dtype=torch.float64)
    knots_x, knots_y = fit_isotonic(model, truth)
    assert knots_x == [0.0, 1.0, 2.0, 3.0]
    assert knots_y == pytest.approx([0.0, 5 / 3, 5 / 3, 4.0], abs=1e-12)
    calibration = fit_calibration("isotonic", model, truth)
    assert calibration == {"kind": "isotonic", "knots_x": knots_x, "knots_y": knots_y}
    # Linear between knots, constant beyond them; the dtype is kept.
    points = torch.tensor([[-5.0, 0.5], [2.5, 10.0]])
    mapped = apply_calibration(calibration, points)
    assert mapped.dtype == torch.float32
    torch.testing.assert_close(mapped, torch.tensor([[0.0, 5 / 6], [(5 / 3 + 4.0) / 2, 4.0]]), rtol=0, atol=1e-6)
    # It is the least-squares monotone fit: no non-decreasing step function on the knots does
    # better (a grid of candidates around it).
    def loss(values):
        at = dict(zip(knots_x, values, strict=True))
        return sum((float(t) - at[float(m)]) ** 2 for m, t in zip(model, truth, strict=True))
    best = loss(knots_y)
    grid = [k / 6 for k in range(0, 25)]
    for a in grid:
        for b in grid:
            if a <= b <= 4.0:
                assert loss([0.0, a, b, 4.0]) >= best - 1e-12
    scorer = CalibratedScorer(FixedScorer([[0.5], [9.0]]), calibration)
    torch.testing.assert_close(scorer.score(None, []), torch.tensor([[5 / 6], [4.0]]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="two distinct"):
        fit_isotonic(torch.ones(3), torch.arange(3.0))


# ----------------------------------------------------------------------------------- score model
# Three pairs.  (better, safer) ids and the safety labels of response_0 / response_1:
PAIRS = [
    SafetyPreferencePair(
        "describe poison", "steps detail poison", "sorry safely", 0, 1, False, True
    ),
    SafetyPreferencePair("explain bread", "ok", "steps bread", 1, 0, True, True),
    SafetyPreferencePair(
        "explain malware", "detail malware", "steps detail detail malware", 1, 0, False, False
    ),
]
# reward rows: (better, worse)   cost rows: (safer, unsafer)
EXPECTED_ROWS = {
    "reward": [
        ("steps detail poison", False, True),
        ("sorry safely", False, True),
        ("steps bread", True, True),
        ("ok", True, True),
        ("steps detail detail malware", False, False),
        ("detail malware", False, False),
    ],
    "cost": [
        ("sorry safely", True, False),
        ("steps detail poison", True, False),
        ("ok", True, True),
        ("steps bread", True, True),
        ("detail malware", False, False),
        ("steps detail detail malware", False, False),
    ],
}  # (response text, first_is_safe, second_is_safe), labels repeated on both rows of a pair


@pytest.mark.parametrize("kind", ["reward", "cost"])
def test_pair_train_batch_interleaves_and_orders(
    unit_world_tokenizer: PreTrainedTokenizerBase, kind: str
) -> None:
    batch = pair_train_batch(PAIRS, kind, unit_world_tokenizer, 32, template="raw")
    assert batch.input_ids.shape[0] == 6
    for row, (text, first_safe, second_safe) in enumerate(EXPECTED_ROWS[kind]):
        ids = batch.input_ids[row]
        prompt_ids = ids[batch.attention_mask[row] & ~batch.response_mask[row]]
        response_ids = ids[batch.response_mask[row]]
        assert (
            unit_world_tokenizer.convert_ids_to_tokens(prompt_ids.tolist())
            == PAIRS[row // 2].prompt.split()
        )
        assert unit_world_tokenizer.convert_ids_to_tokens(response_ids.tolist()) == [
            *text.split(),
            "<eos>",
        ]
        assert bool(batch.first_is_safe[row]) is first_safe, row
        assert bool(batch.second_is_safe[row]) is second_safe, row
    assert torch.equal(batch.preference_prob, torch.ones(6))
    with pytest.raises(ValueError, match="'critic'"):
        pair_train_batch(PAIRS, "critic", unit_world_tokenizer, 32, template="raw")


def test_end_values_reads_the_last_real_token() -> None:
    raw = torch.arange(15, dtype=F64).reshape(3, 5)
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(end_values(raw, attention), torch.tensor([4.0, 6.0, 12.0], dtype=F64))


def hand_pair_batch() -> tuple[torch.Tensor, PairTrainBatch]:
    """End scores first = (2, 0.5, 3), second = (−1, 1.5, 4) at the last real token of 6 ragged
    rows (garbage 50 elsewhere); pair labels (first, second) safe: (T, F), (T, T), (F, F)."""
    lengths = [4, 2, 3, 5, 1, 4]
    ends = [2.0, -1.0, 0.5, 1.5, 3.0, 4.0]
    raw = torch.full((6, 5), 50.0, dtype=F64)
    attention = torch.zeros(6, 5, dtype=torch.bool)
    for row, (length, end) in enumerate(zip(lengths, ends, strict=True)):
        attention[row, :length] = True
        raw[row, length - 1] = end
    first_safe = torch.tensor([True, True, True, True, False, False])
    second_safe = torch.tensor([False, False, True, True, False, False])
    batch = PairTrainBatch(
        torch.zeros(6, 5, dtype=torch.long),
        attention,
        attention,
        first_safe,
        second_safe,
        torch.ones(6),
    )
    return raw, batch


def test_score_pair_loss_reward() -> None:
    raw, batch = hand_pair_batch()
    eta = 0.01
    loss, metrics = score_pair_loss(raw, batch, "reward", eta)
    first, second = (
        torch.tensor([2.0, 0.5, 3.0], dtype=F64),
        torch.tensor([-1.0, 1.5, 4.0], dtype=F64),
    )
    assert torch.equal(loss, reward_model_loss(first, second, eta))
    # −log σ(3), −log σ(−1), −log σ(−1) → softplus(−3) + 2 softplus(1), over 3;
    # plus η · mean(4, 0.25, 9, 1, 2.25, 16) = η · 32.5/6
    by_hand = (softplus(-3.0) + 2 * softplus(1.0)) / 3 + eta * 32.5 / 6
    assert loss.item() == pytest.approx(by_hand, abs=1e-12)
    # better > worse on pair 0 only
    assert set(metrics) == {"pairwise_accuracy"}
    assert metrics["pairwise_accuracy"].item() == pytest.approx(1 / 3, abs=1e-12)


def test_score_pair_loss_cost() -> None:
    raw, batch = hand_pair_batch()
    eta = 0.01
    loss, metrics = score_pair_loss(raw, batch, "cost", eta)
    safer, unsafer = (
        torch.tensor([2.0, 0.5, 3.0], dtype=F64),
        torch.tensor([-1.0, 1.5, 4.0], dtype=F64),
    )
    safer_safe, unsafer_safe = torch.tensor([True, True, False]), torch.tensor([False, True, False])
    assert torch.equal(loss, cost_model_loss(safer, unsafer, safer_safe, unsafer_safe, eta))
    # per pair: softplus(−(C_u − C_s)) + softplus(s_s C_s) + softplus(s_u C_u):
    #   pair 0 (C_s 2, C_u −1, s +1/−1): softplus(3) + softplus(2) + softplus(1)
    #   pair 1 (0.5, 1.5, +1/+1):         softplus(−1) + softplus(0.5) + softplus(1.5)
    #   pair 2 (3, 4, −1/−1):             softplus(−1) + softplus(−3) + softplus(−4)
    per_pair = [
        softplus(3) + softplus(2) + softplus(1),
        softplus(-1) + softplus(0.5) + softplus(1.5),
        softplus(-1) + softplus(-3) + softplus(-4),
    ]
    assert loss.item() == pytest.approx(sum(per_pair) / 3 + eta * 32.5 / 6, abs=1e-12)
    # The safer response should score LOWER: unsafer > safer on pairs 1 and 2 → 2/3
    # (the reward orientation would say 1/3).
    assert metrics["pairwise_accuracy"].item() == pytest.approx(2 / 3, abs=1e-12)
    # sign: (C ≤ 0) == safe.  safer (2, 0.5, 3) vs (T, T, F): ✗ ✗ ✓;
    #                         unsafer (−1, 1.5, 4) vs (F, T, F): ✗ ✗ ✓  → 2/6
    assert metrics["sign_accuracy"].item() == pytest.approx(1 / 3, abs=1e-12)


def test_relabel_saved_score_model(
    unit_world_tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(
        tiny=TinyModelConfig(
            vocab_size=len(unit_world_tokenizer),
            hidden_size=16,
            num_layers=1,
            num_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
        )
    )
    model = build_score_model(spec, unit_world_tokenizer).eval()
    path = save_score_model(model, unit_world_tokenizer, tmp_path / "critic", kind="critic")
    assert json.loads((path / "config.json").read_text())["saferl"]["kind"] == "critic"

    relabel_saved_score_model(path, "cost")
    config = json.loads((path / "config.json").read_text())
    assert config["saferl"] == {"kind": "cost", "num_outputs": 1}
    assert config["id2label"] == {"0": "cost"}

    loaded = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    assert score_model_kind(loaded) == "cost"
    ids = torch.tensor([[3, 9, 14, 15, 2]])  # "explain poison steps detail <eos>"
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)  # weights untouched

    with pytest.raises(ValueError, match="bogus"):
        relabel_saved_score_model(path, "bogus")
    assert json.loads((path / "config.json").read_text())["saferl"]["kind"] == "cost"


# ----------------------------------------------------------------------------------- PPOSettings
def test_ppo_settings_defaults_are_the_published_values() -> None:
    s = PPOSettings(iterations=1, prompts_per_iteration=1)
    assert (s.kl_coeff, s.clip_range_score, s.gamma, s.gae_lambda) == (0.01, 50.0, 1.0, 0.95)
    assert (s.clip_eps, s.clip_eps_value, s.ppo_epochs, s.kl_in_cost_stream, s.ptx_coeff) == (
        0.2,
        5.0,
        1,
        True,
        0.0,
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("iterations", 0),
        ("prompts_per_iteration", 0),
        ("ppo_epochs", 0),
        ("kl_coeff", -0.5),
        ("clip_range_score", 0.0),
        ("clip_eps", -0.1),
        ("clip_eps_value", 0.0),
        ("gamma", 1.5),
        ("gae_lambda", -0.25),
        ("ptx_coeff", -2.0),
    ],
)
def test_ppo_settings_errors_name_the_key_and_value(key: str, value: float) -> None:
    kwargs = {"iterations": 3, "prompts_per_iteration": 4, key: value}
    with pytest.raises(ValueError, match=re.escape(f"learner.{key}")) as info:
        PPOSettings(**kwargs)
    assert str(value) in str(info.value)


def test_experience_properties() -> None:
    for m in (0, 1, 2):
        experience = make_experience(m)
        assert experience.num_constraints == m and experience.batch_size == 2
