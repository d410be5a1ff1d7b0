"""Token and sequence log-probabilities (docs/algorithms.md §0).

``log π(y|x)`` is always the **masked sum** over response tokens; the length average is opt-in.
"""

from __future__ import annotations

import torch

from saferl.core.masked import masked_mean, masked_sum

__all__ = [
    "token_logprobs_from_logits",
    "sequence_logprobs",
]


def token_logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each chosen token, ``log softmax(logits)[token]``.

    ``log π(a_t) = logits_t[a_t] − logsumexp_v logits_t[v]``, computed without materialising the
    full ``(batch, seq_len, vocab)`` log-softmax: one row of the batch at a time, so the largest
    temporary is ``(seq_len, vocab)``. float32 and float64 logits are computed in their own
    precision; lower precisions (bf16, fp16) are upcast to float32 one row at a time, and the
    result is cast back to the dtype of ``logits`` (cast the logits to float32 first if you want
    float32 log-probs).

    The caller aligns ``tokens`` with ``logits`` (``logits[:, t]`` predicts ``tokens[:, t]``).
    Every entry of ``tokens`` must be a valid vocabulary index, padding included (mask the
    result, not the input).

    Args:
        logits: ``(batch, seq_len, vocab)``, floating point.
        tokens: ``(batch, seq_len)``, integer token ids in ``[0, vocab)``.

    Returns:
        ``(batch, seq_len)``, dtype of ``logits``.
    """
    if logits.dim() != 3 or tuple(tokens.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            "expected logits (batch, seq_len, vocab) and tokens (batch, seq_len), found logits "
            f"{tuple(logits.shape)} and tokens {tuple(tokens.shape)}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"expected floating-point logits, found dtype {logits.dtype}")
    if logits.shape[0] == 0:
        return logits.new_zeros(tuple(tokens.shape))
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    index = tokens.to(torch.long).unsqueeze(-1)  # (batch, seq_len, 1)
    rows = []
    # One batch row at a time bounds the logsumexp temporary to (seq_len, vocab).
    for row_logits, row_index in zip(logits, index, strict=True):
        row_logits = row_logits.to(compute_dtype)  # no copy for float32 / float64
        chosen = row_logits.gather(-1, row_index).squeeze(-1)  # (seq_len,)
        rows.append(chosen - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows).to(logits.dtype)


def sequence_logprobs(
    token_logprobs: torch.Tensor, response_mask: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """Sequence log-probability ``log π(y|x) = Σ_t mask_t log π(y_t | x, y_<t)``.

    With ``average=True`` the length-averaged ``Σ_t mask_t log π(y_t|…) / Σ_t mask_t`` instead
    (0 for a row without response tokens).

    Args:
        token_logprobs: ``(batch, seq_len)``, e.g. from :func:`token_logprobs_from_logits`.
        response_mask: ``(batch, seq_len)``, True on response tokens (prompt and padding False).
        average: return the length average instead of the sum.

    Returns:
        ``(batch,)``, dtype of ``token_logprobs``.
    """
    if tuple(token_logprobs.shape) != tuple(response_mask.shape) or token_logprobs.dim() != 2:
        raise ValueError(
            "expected token_logprobs and response_mask of one shape (batch, seq_len), found "
            f"{tuple(token_logprobs.shape)} and {tuple(response_mask.shape)}"
        )
    if average:
        return masked_mean(token_logprobs, response_mask, dim=-1)
    return masked_sum(token_logprobs, response_mask, dim=-1)
