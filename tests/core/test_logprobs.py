"""Token and sequence log-probabilities against log_softmax and hand values."""

from __future__ import annotations

import math

import pytest
import torch

from saferl.core.logprobs import sequence_logprobs, token_logprobs_from_logits

F64 = torch.float64


def test_matches_log_softmax_gather_in_float64() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 4.0 * torch.randn(3, 5, 11, generator=generator, dtype=F64)
    tokens = torch.randint(0, 11, (3, 5), generator=generator)
    expected = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    result = token_logprobs_from_logits(logits, tokens)
    assert result.shape == (3, 5)
    assert result.dtype == F64
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-13)


def test_hand_values() -> None:
    # logits (0, ln 3): probabilities (1/4, 3/4)
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]], dtype=F64)
    tokens = torch.tensor([[1, 0]])
    result = token_logprobs_from_logits(logits, tokens)
    torch.testing.assert_close(
        result, torch.tensor([[math.log(0.75), math.log(0.25)]], dtype=F64), rtol=0, atol=1e-15
    )
    # sequence: log(3/4 * 1/4) = log(3/16) = -1.6739764
    mask = torch.tensor([[True, True]])
    assert sequence_logprobs(result, mask).item() == pytest.approx(math.log(3.0 / 16.0), abs=1e-15)
    # length average: log(3/16) / 2 = -0.8369882
    assert sequence_logprobs(result, mask, average=True).item() == pytest.approx(
        math.log(3.0 / 16.0) / 2.0, abs=1e-15
    )


def test_sequence_logprob_is_masked_sum_over_response_tokens() -> None:
    generator = torch.Generator().manual_seed(1)
    batch, seq_len, vocab = 4, 7, 6
    logits = torch.randn(batch, seq_len, vocab, generator=generator, dtype=F64)
    tokens = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    # prompt prefix and padding suffix invalid; the last row has no response at all
    prefixes, lengths = [1, 0, 3, 2], [4, 7, 2, 0]
    mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    for row, (prefix, length) in enumerate(zip(prefixes, lengths, strict=True)):
        mask[row, prefix : prefix + length] = True

    token_logprobs = token_logprobs_from_logits(logits, tokens)
    log_softmax = torch.log_softmax(logits, dim=-1)
    expected_sums = []
    for row in range(batch):
        total = 0.0
        for t in range(seq_len):
            if mask[row, t]:
                total += log_softmax[row, t, tokens[row, t]].item()
        expected_sums.append(total)
    expected = torch.tensor(expected_sums, dtype=F64)
    torch.testing.assert_close(
        sequence_logprobs(token_logprobs, mask), expected, rtol=0, atol=1e-12
    )
    expected_means = torch.tensor(
        [s / n if n else 0.0 for s, n in zip(expected_sums, lengths, strict=True)], dtype=F64
    )
    torch.testing.assert_close(
        sequence_logprobs(token_logprobs, mask, average=True), expected_means, rtol=0, atol=1e-12
    )
    # the empty row sums to 0
    assert sequence_logprobs(token_logprobs, mask)[3].item() == 0.0


def test_gradient_matches_log_softmax() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, generator=generator, dtype=F64, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 3), generator=generator)
    weights = torch.randn(2, 3, generator=generator, dtype=F64)
    (token_logprobs_from_logits(logits, tokens) * weights).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    reference = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    (reference * weights).sum().backward()
    torch.testing.assert_close(ours, logits.grad, rtol=0, atol=1e-13)


def test_large_logits_are_stable() -> None:
    # logits (1000, 1000 + ln 3): the same (1/4, 3/4) as at 0, with no overflow
    logits = torch.tensor([[[1000.0, 1000.0 + math.log(3.0)]]], dtype=torch.float32)
    result = token_logprobs_from_logits(logits, torch.tensor([[0]]))
    assert result.dtype == torch.float32
    assert result.item() == pytest.approx(math.log(0.25), abs=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_keeps_dtype_and_is_close(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 50, generator=generator, dtype=F64)
    tokens = torch.randint(0, 50, (2, 4), generator=generator)
    reference = token_logprobs_from_logits(logits, tokens)
    result = token_logprobs_from_logits(logits.to(dtype), tokens)
    assert result.dtype == dtype
    # bf16 logits themselves carry ~3 significant digits
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(result.to(F64), reference, rtol=0, atol=tolerance)


def test_shape_errors() -> None:
    logits = torch.zeros(2, 3, 4, dtype=F64)
    with pytest.raises(ValueError, match="tokens"):
        token_logprobs_from_logits(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="one shape"):
        sequence_logprobs(torch.zeros(2, 3, dtype=F64), torch.ones(2, 4, dtype=torch.bool))
