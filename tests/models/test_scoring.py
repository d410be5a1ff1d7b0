"""score_all_positions, end_scores, critic_values and policy_token_logprobs."""

from __future__ import annotations

import pytest
import torch

from saferl.models import (
    build_critic,
    build_policy,
    build_score_model,
    critic_values,
    end_scores,
    last_token_index,
    policy_token_logprobs,
    score_all_positions,
    score_backbone,
)


@pytest.fixture(params=["llama", "gpt2"])
def score_model(request, tokenizer, make_tiny_spec):
    model = build_score_model(make_tiny_spec(len(tokenizer), request.param), tokenizer, 2)
    return model.eval()


def test_backbone_found_generically(tokenizer, make_tiny_spec) -> None:
    llama = build_score_model(make_tiny_spec(len(tokenizer), "llama"), tokenizer)
    gpt2 = build_score_model(make_tiny_spec(len(tokenizer), "gpt2"), tokenizer)
    assert score_backbone(llama) is llama.model
    assert score_backbone(gpt2) is gpt2.transformer


def test_last_token_index() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]])
    assert last_token_index(mask).tolist() == [2, 0, 3, 2]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        last_token_index(torch.tensor([[1, 0], [0, 0]]))


def test_all_positions_shape_and_end_consistency(score_model, batch) -> None:
    inputs = batch()
    with torch.no_grad():
        all_scores = score_all_positions(score_model, **inputs)
        end = end_scores(score_model, **inputs)
    assert all_scores.shape == (*inputs["input_ids"].shape, 2)
    assert all_scores.dtype == torch.float32
    lengths = inputs["attention_mask"].sum(-1)
    expected = all_scores[torch.arange(3), lengths - 1]
    torch.testing.assert_close(end, expected, rtol=0, atol=1e-6)


def test_end_scores_equal_transformers_logits(score_model, batch) -> None:
    inputs = batch()
    assert not inputs["attention_mask"].all()  # the batch really is padded
    with torch.no_grad():
        ours = end_scores(score_model, **inputs)
        theirs = score_model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"].long()
        ).logits
    assert ours.shape == theirs.shape == (3, 2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_end_scores_read_last_real_token(score_model, batch, tokenizer) -> None:
    inputs = batch()
    with torch.no_grad():
        base = end_scores(score_model, **inputs)
        # Changing a padding position's id leaves every score unchanged.
        padded = inputs["input_ids"].clone()
        row = 2  # "flour <eos>" has padding
        assert not inputs["attention_mask"][row, -1]
        padded[row, -1] = tokenizer.convert_tokens_to_ids("weapon")
        torch.testing.assert_close(end_scores(score_model, padded, inputs["attention_mask"]), base)
        # Changing the last real token changes that row's score (and only that row's).
        changed = inputs["input_ids"].clone()
        last = int(inputs["attention_mask"][row].sum()) - 1
        changed[row, last] = tokenizer.convert_tokens_to_ids("sorry")
        new = end_scores(score_model, changed, inputs["attention_mask"])
    assert not torch.allclose(new[row], base[row])
    torch.testing.assert_close(new[:row], base[:row])


def test_critic_values(tokenizer, tiny_spec, batch) -> None:
    critic = build_critic(tiny_spec, tokenizer).eval()
    inputs = batch()
    with torch.no_grad():
        values = critic_values(critic, **inputs)
        all_scores = score_all_positions(critic, **inputs)
    assert values.shape == inputs["input_ids"].shape
    torch.testing.assert_close(values, all_scores[..., 0])
    with pytest.raises(ValueError, match="one output"):
        critic_values(build_score_model(tiny_spec, tokenizer, 2), **inputs)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_policy_token_logprobs_alignment(tokenizer, make_tiny_spec, batch, architecture) -> None:
    model = build_policy(make_tiny_spec(len(tokenizer), architecture), tokenizer).eval()
    inputs = batch()
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        logprobs = policy_token_logprobs(model, ids, mask)
        logits = model(input_ids=ids, attention_mask=mask.long()).logits.double()
    assert logprobs.shape == ids.shape and logprobs.dtype == torch.float32
    # Manual: position t holds log softmax(logits[t-1])[ids[t]]; position 0 and padding hold 0.
    for b in range(ids.shape[0]):
        assert logprobs[b, 0] == 0
        for t in range(1, ids.shape[1]):
            if mask[b, t]:
                expected = torch.log_softmax(logits[b, t - 1], dim=-1)[ids[b, t]]
                assert abs(float(logprobs[b, t]) - float(expected)) < 1e-5, (b, t)
            else:
                assert logprobs[b, t] == 0
    # A response mask selects the response tokens' log-probs directly: log π(y|x) is a masked sum.
    prompt_len = 3
    response_mask = mask.clone()
    response_mask[:, :prompt_len] = False
    sequence_logprob = (logprobs * response_mask).sum(-1)
    manual = torch.stack(
        [
            sum(
                (
                    torch.log_softmax(logits[b, t - 1], -1)[ids[b, t]]
                    for t in range(prompt_len, ids.shape[1])
                    if mask[b, t]
                ),
                start=torch.zeros((), dtype=torch.float64),
            )
            for b in range(ids.shape[0])
        ]
    ).float()
    torch.testing.assert_close(sequence_logprob, manual, rtol=0, atol=1e-5)


def test_policy_token_logprobs_float32_from_bf16(tokenizer, make_tiny_spec, batch) -> None:
    model = build_policy(make_tiny_spec(len(tokenizer), dtype="bfloat16"), tokenizer).eval()
    with torch.no_grad():
        logprobs = policy_token_logprobs(model, **batch())
    assert logprobs.dtype == torch.float32
    assert torch.isfinite(logprobs).all() and (logprobs <= 0).all()
