"""GAE, Safe RLHF token streams and the Lagrangian combined advantage (docs/algorithms.md §2)."""

from __future__ import annotations

import pytest
import torch

from saferl.core.advantages import combined_advantage, gae, safe_rlhf_token_streams

F64 = torch.float64
NAN = float("nan")


# ---------------------------------------------------------------------------------------------- GAE
def _reference_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, gae_lambda: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain Python: A_t = Σ_{l≥0} (γλ)^l δ_{t+l} over the valid block, V = 0 after it."""
    batch, seq_len = rewards.shape
    advantages = torch.zeros(batch, seq_len, dtype=F64)
    returns = torch.zeros(batch, seq_len, dtype=F64)
    for b in range(batch):
        valid = [t for t in range(seq_len) if mask[b, t]]
        r = [float(rewards[b, t]) for t in valid]
        v = [float(values[b, t]) for t in valid] + [0.0]  # bootstrap 0 after the last token
        deltas = [r[i] + gamma * v[i + 1] - v[i] for i in range(len(valid))]
        for i, t in enumerate(valid):
            advantage = 0.0
            for offset in range(len(valid) - i):
                advantage += (gamma * gae_lambda) ** offset * deltas[i + offset]
            advantages[b, t] = advantage
            returns[b, t] = advantage + v[i]
    return advantages, returns


def _ragged_mask(generator: torch.Generator, batch: int, seq_len: int) -> torch.Tensor:
    """Rows with an invalid prompt prefix, a response block, and invalid padding after it."""
    mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    for b in range(batch):
        prefix = int(torch.randint(0, 4, (), generator=generator))
        length = int(torch.randint(1, seq_len - prefix + 1, (), generator=generator))
        mask[b, prefix : prefix + length] = True
    return mask


@pytest.mark.parametrize(
    ("gamma", "gae_lambda"), [(1.0, 0.95), (0.99, 1.0), (0.9, 0.0), (1.0, 1.0), (0.5, 0.3)]
)
def test_gae_matches_python_double_loop_on_ragged_masks(gamma: float, gae_lambda: float) -> None:
    generator = torch.Generator().manual_seed(0)
    batch, seq_len = 8, 10
    mask = _ragged_mask(generator, batch, seq_len)
    assert (~mask[:, 0]).any() and (~mask[:, -1]).any()  # both prefixes and suffixes occur
    rewards = torch.randn(batch, seq_len, generator=generator, dtype=F64)
    values = torch.randn(batch, seq_len, generator=generator, dtype=F64)
    # garbage at invalid positions must be ignored
    rewards = torch.where(mask, rewards, torch.full_like(rewards, 1e6))
    values = torch.where(mask, values, torch.full_like(values, NAN))

    advantages, returns = gae(rewards, values, mask, gamma, gae_lambda)
    expected_advantages, expected_returns = _reference_gae(rewards, values, mask, gamma, gae_lambda)
    torch.testing.assert_close(advantages, expected_advantages, rtol=0, atol=1e-12)
    torch.testing.assert_close(returns, expected_returns, rtol=0, atol=1e-12)
    assert (advantages[~mask] == 0).all() and (returns[~mask] == 0).all()


def test_gae_hand_example_three_tokens() -> None:
    # one prompt position, three response tokens, one padding position
    mask = torch.tensor([[False, True, True, True, False]])
    rewards = torch.tensor([[9.0, 0.0, 0.0, 1.0, 9.0]], dtype=F64)
    values = torch.tensor([[9.0, 0.5, 0.6, 0.7, 9.0]], dtype=F64)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, gae_lambda=0.5)
    # δ_3 = 1 + 0.9·0   − 0.7 = 0.3       (V after the last token is 0, not the padding's 9)
    # δ_2 = 0 + 0.9·0.7 − 0.6 = 0.03
    # δ_1 = 0 + 0.9·0.6 − 0.5 = 0.04
    # A_3 = 0.3
    # A_2 = 0.03 + 0.45·0.3   = 0.165
    # A_1 = 0.04 + 0.45·0.165 = 0.11425
    # returns = A + V = (0.61425, 0.765, 1.0)
    torch.testing.assert_close(
        advantages, torch.tensor([[0.0, 0.11425, 0.165, 0.3, 0.0]], dtype=F64), rtol=0, atol=1e-15
    )
    torch.testing.assert_close(
        returns, torch.tensor([[0.0, 0.61425, 0.765, 1.0, 0.0]], dtype=F64), rtol=0, atol=1e-15
    )


def test_gae_with_gamma_and_lambda_one_gives_reward_to_go() -> None:
    mask = torch.tensor([[True, True, True], [False, True, True]])
    rewards = torch.tensor([[1.0, 2.0, 3.0], [5.0, -1.0, 4.0]], dtype=F64)
    values = torch.tensor([[0.3, -0.2, 0.9], [7.0, 1.0, 2.0]], dtype=F64)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, gae_lambda=1.0)
    # returns = Σ_{s≥t} r_s: (6, 5, 3) and (·, 3, 4); advantages = returns − V
    torch.testing.assert_close(returns, torch.tensor([[6.0, 5.0, 3.0], [0.0, 3.0, 4.0]], dtype=F64))
    torch.testing.assert_close(
        advantages, torch.tensor([[5.7, 5.2, 2.1], [0.0, 2.0, 2.0]], dtype=F64), rtol=0, atol=1e-15
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gae_keeps_dtype(dtype: torch.dtype) -> None:
    mask = torch.ones(2, 3, dtype=torch.bool)
    advantages, returns = gae(
        torch.ones(2, 3, dtype=dtype), torch.zeros(2, 3, dtype=dtype), mask, 1.0, 0.95
    )
    assert advantages.dtype == dtype and returns.dtype == dtype


def test_gae_rejects_bad_arguments() -> None:
    ones = torch.ones(2, 3, dtype=F64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="gamma"):
        gae(ones, ones, mask, gamma=1.5, gae_lambda=0.95)
    with pytest.raises(ValueError, match="gae_lambda"):
        gae(ones, ones, mask, gamma=1.0, gae_lambda=-0.1)
    with pytest.raises(ValueError, match="one shape"):
        gae(ones, ones[:, :2], mask, gamma=1.0, gae_lambda=0.95)


# --------------------------------------------------------------------------- Safe RLHF streams
def _stream_inputs() -> dict[str, torch.Tensor]:
    """Two rows: (prompt, 2 response tokens, padding) and (4 response tokens)."""
    mask = torch.tensor([[False, True, True, False], [True, True, True, True]])
    # kl_t = logprobs − ref_logprobs: row 0 (·, 1, 2, ·), row 1 (0.5, −1, 0, 3)
    ref_logprobs = torch.full((2, 4), -2.0, dtype=F64)
    kl = torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.5, -1.0, 0.0, 3.0]], dtype=F64)
    logprobs = ref_logprobs + kl
    # garbage outside the response: -inf - (-inf) = nan must not leak
    logprobs[0, 0] = logprobs[0, 3] = ref_logprobs[0, 0] = ref_logprobs[0, 3] = -float("inf")
    return {
        "reward_scores": torch.tensor([1.0, 5.0], dtype=F64),
        "cost_scores": torch.tensor([[0.3, -2.0], [-0.4, 0.2]], dtype=F64),
        "logprobs": logprobs,
        "ref_logprobs": ref_logprobs,
        "response_mask": mask,
    }


def test_streams_hand_example_two_costs() -> None:
    inputs = _stream_inputs()
    reward_stream, cost_streams = safe_rlhf_token_streams(
        **inputs, kl_coeff=0.1, clip_range_score=1.5
    )
    assert reward_stream.shape == (2, 4)
    assert cost_streams.shape == (2, 4, 2)
    # reward: −0.1·kl, score at the last valid token, then clip to ±1.5
    #   row 0: (0, −0.1, −0.2 + 1 = 0.8, 0)
    #   row 1: (−0.05, 0.1, 0, −0.3 + 5 = 4.7 → 1.5)
    expected_reward = torch.tensor([[0.0, -0.1, 0.8, 0.0], [-0.05, 0.1, 0.0, 1.5]], dtype=F64)
    torch.testing.assert_close(reward_stream, expected_reward, rtol=0, atol=1e-15)
    # cost j: +0.1·kl, score j at the last valid token, then clip
    #   j=0 row 0: (0, 0.1, 0.2 + 0.3 = 0.5, 0)        row 1: (0.05, −0.1, 0, 0.3 − 0.4 = −0.1)
    #   j=1 row 0: (0, 0.1, 0.2 − 2 = −1.8 → −1.5, 0)  row 1: (0.05, −0.1, 0, 0.3 + 0.2 = 0.5)
    expected_cost_0 = torch.tensor([[0.0, 0.1, 0.5, 0.0], [0.05, -0.1, 0.0, -0.1]], dtype=F64)
    expected_cost_1 = torch.tensor([[0.0, 0.1, -1.5, 0.0], [0.05, -0.1, 0.0, 0.5]], dtype=F64)
    torch.testing.assert_close(cost_streams[..., 0], expected_cost_0, rtol=0, atol=1e-15)
    torch.testing.assert_close(cost_streams[..., 1], expected_cost_1, rtol=0, atol=1e-15)


def test_streams_one_cost_has_two_dimensional_shape() -> None:
    inputs = _stream_inputs()
    inputs["cost_scores"] = inputs["cost_scores"][:, 0]  # (batch,)
    reward_stream, cost_stream = safe_rlhf_token_streams(
        **inputs, kl_coeff=0.1, clip_range_score=1.5
    )
    assert cost_stream.shape == (2, 4)
    expected_cost = torch.tensor([[0.0, 0.1, 0.5, 0.0], [0.05, -0.1, 0.0, -0.1]], dtype=F64)
    torch.testing.assert_close(cost_stream, expected_cost, rtol=0, atol=1e-15)


def test_streams_clip_after_adding_the_score() -> None:
    # last-token kl = 600, β = 0.1: −60 + score 20 = −40 stays inside ±50.
    # (Clipping before adding would give −50 + 20 = −30.)
    mask = torch.tensor([[True, True]])
    logprobs = torch.tensor([[0.0, 600.0]], dtype=F64)
    reward_stream, cost_stream = safe_rlhf_token_streams(
        reward_scores=torch.tensor([20.0], dtype=F64),
        cost_scores=torch.tensor([-20.0], dtype=F64),
        logprobs=logprobs,
        ref_logprobs=torch.zeros(1, 2, dtype=F64),
        response_mask=mask,
        kl_coeff=0.1,
        clip_range_score=50.0,
    )
    assert reward_stream[0, 1].item() == pytest.approx(-40.0, abs=1e-12)
    assert cost_stream[0, 1].item() == pytest.approx(40.0, abs=1e-12)  # +60 − 20


def test_streams_reject_empty_rows_and_bad_shapes() -> None:
    inputs = _stream_inputs()
    inputs["response_mask"] = inputs["response_mask"].clone()
    inputs["response_mask"][1] = False
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        safe_rlhf_token_streams(**inputs, kl_coeff=0.1, clip_range_score=1.5)
    inputs = _stream_inputs()
    inputs["reward_scores"] = torch.zeros(3, dtype=F64)
    with pytest.raises(ValueError, match="reward_scores"):
        safe_rlhf_token_streams(**inputs, kl_coeff=0.1, clip_range_score=1.5)
    inputs = _stream_inputs()
    with pytest.raises(ValueError, match="clip_range_score"):
        safe_rlhf_token_streams(**inputs, kl_coeff=0.1, clip_range_score=0.0)


# ---------------------------------------------------------------------------- combined advantage
def test_combined_advantage_one_cost() -> None:
    reward_advantages = torch.tensor([[1.0, -2.0]], dtype=F64)
    cost_advantages = torch.tensor([[0.5, 1.0]], dtype=F64)
    # λ = 0.5: (1 − 0.25) / 1.5 = 0.5;  (−2 − 0.5) / 1.5 = −5/3
    expected = torch.tensor([[0.5, -5.0 / 3.0]], dtype=F64)
    torch.testing.assert_close(
        combined_advantage(reward_advantages, cost_advantages, 0.5), expected
    )
    # the same with a 0-dim tensor, a (1,) tensor, and (batch, seq_len, 1) cost advantages
    torch.testing.assert_close(
        combined_advantage(reward_advantages, cost_advantages, torch.tensor(0.5)), expected
    )
    torch.testing.assert_close(
        combined_advantage(reward_advantages, cost_advantages.unsqueeze(-1), torch.tensor([0.5])),
        expected,
    )
    # λ = 0 leaves the reward advantages unchanged
    torch.testing.assert_close(
        combined_advantage(reward_advantages, cost_advantages, 0.0), reward_advantages
    )


def test_combined_advantage_two_costs() -> None:
    reward_advantages = torch.tensor([[1.0, -2.0]], dtype=F64)
    cost_advantages = torch.tensor([[[0.5, 2.0], [1.0, -1.0]]], dtype=F64)  # (1, 2, m=2)
    multiplier = torch.tensor([0.5, 0.25], dtype=F64)
    # Σλ = 0.75, denominator 1.75
    # t=0: 1 − (0.5·0.5 + 0.25·2) = 0.25   → 0.25 / 1.75  = 1/7
    # t=1: −2 − (0.5·1 + 0.25·(−1)) = −2.25 → −2.25 / 1.75 = −9/7
    expected = torch.tensor([[1.0 / 7.0, -9.0 / 7.0]], dtype=F64)
    torch.testing.assert_close(
        combined_advantage(reward_advantages, cost_advantages, multiplier), expected
    )


def test_no_gradient_flows_into_the_multiplier() -> None:
    reward_advantages = torch.tensor([[1.0, -2.0]], dtype=F64, requires_grad=True)
    cost_advantages = torch.tensor([[[0.5, 2.0], [1.0, -1.0]]], dtype=F64)
    multiplier = torch.tensor([0.5, 0.25], dtype=F64, requires_grad=True)
    combined = combined_advantage(reward_advantages, cost_advantages, multiplier)
    combined.sum().backward()
    assert multiplier.grad is None
    # d/dA_r = 1 / (1 + Σλ) = 1 / 1.75
    torch.testing.assert_close(reward_advantages.grad, torch.full((1, 2), 1.0 / 1.75, dtype=F64))


def test_combined_advantage_rejects_bad_multipliers() -> None:
    reward_advantages = torch.zeros(2, 3, dtype=F64)
    two_costs = torch.zeros(2, 3, 2, dtype=F64)
    with pytest.raises(ValueError, match="non-negative"):
        combined_advantage(reward_advantages, torch.zeros(2, 3, dtype=F64), -0.1)
    with pytest.raises(ValueError, match="non-negative"):
        combined_advantage(reward_advantages, two_costs, torch.tensor([0.1, -0.1]))
    with pytest.raises(ValueError, match="m = 2 cost streams but multiplier has 1"):
        combined_advantage(reward_advantages, two_costs, 0.5)
    with pytest.raises(ValueError, match="m = 2 cost streams but multiplier has 3"):
        combined_advantage(reward_advantages, two_costs, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="m = 1 cost streams but multiplier has 2"):
        combined_advantage(
            reward_advantages, torch.zeros(2, 3, dtype=F64), torch.tensor([0.1, 0.2])
        )
    with pytest.raises(ValueError, match="cost_advantages"):
        combined_advantage(reward_advantages, torch.zeros(2, 4, dtype=F64), 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streams_and_combined_advantage_keep_dtype(dtype: torch.dtype) -> None:
    inputs = {
        key: (value.to(dtype) if value.is_floating_point() else value)
        for key, value in _stream_inputs().items()
    }
    reward_stream, cost_streams = safe_rlhf_token_streams(
        **inputs, kl_coeff=0.1, clip_range_score=1.5
    )
    assert reward_stream.dtype == dtype and cost_streams.dtype == dtype
    combined = combined_advantage(reward_stream, cost_streams, torch.tensor([0.5, 0.25], dtype=F64))
    assert combined.dtype == dtype
