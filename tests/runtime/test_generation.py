"""Generation in the policy group: seeded, reproducible, identical for 1 and 2 ranks (ZeRO-3 with
synchronised forwards, and ZeRO-2), masks derived from EOS; typed batch splitting errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import ray
import torch

from saferl.data.collators import PairBatch, PromptBatch, SequenceBatch
from saferl.runtime import DeepSpeedSpec, GenerationSpec, GroupSpec, PolicyGroup, slice_batch

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

SAMPLING = GenerationSpec(max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.95, seed=11)


@pytest.fixture(scope="module")
def groups(tokenizer, model_spec, runtime_spec, ray_cluster) -> Iterator[dict[str, PolicyGroup]]:
    """Policy groups with the same initial weights: 1 rank; 2 ranks ZeRO-3; 2 ranks ZeRO-2."""
    made = {}
    try:
        for name, ranks, stage in (("one", 1, 3), ("zero3", 2, 3), ("zero2", 2, 2)):
            made[name] = PolicyGroup(
                model_spec,
                tokenizer,
                DeepSpeedSpec(zero_stage=stage, micro_batch_size_per_rank=4 // ranks),
                GroupSpec(num_ranks=ranks, cpus_per_rank=0.25),
                runtime_spec,
                wait=False,  # the three start at once
            )
        yield made
    finally:
        for group in made.values():
            group.shutdown()


def test_generation_is_identical_for_one_and_two_ranks(groups, prompts: PromptBatch) -> None:
    outputs = {name: group.generate(prompts, SAMPLING) for name, group in groups.items()}
    reference = outputs["one"]
    for name in ("zero3", "zero2"):
        for field in ("prompt_ids", "sequences", "attention_mask", "response_mask"):
            assert torch.equal(getattr(outputs[name], field), getattr(reference, field)), (
                name,
                field,
            )


def test_generation_is_reproducible_and_seeded(groups, prompts: PromptBatch, tokenizer) -> None:
    group = groups["zero3"]
    first = group.generate(prompts, SAMPLING)
    again = group.generate(prompts, SAMPLING)
    assert torch.equal(first.sequences, again.sequences)
    other_seed = group.generate(prompts, GenerationSpec(**{**SAMPLING.__dict__, "seed": 12}))
    assert not torch.equal(first.sequences, other_seed.sequences)

    batch, width = prompts.input_ids.shape
    assert first.sequences.shape[0] == batch
    assert first.sequences.shape[1] <= width + SAMPLING.max_new_tokens
    assert torch.equal(first.sequences[:, :width], prompts.input_ids)
    assert not first.response_mask[:, :width].any()
    # every response ends at its first EOS (or at the length limit)
    eos = tokenizer.eos_token_id
    response = first.response_ids
    for row in range(batch):
        valid = first.response_mask[row, width:]
        length = int(valid.sum())
        hits = (response[row] == eos).nonzero().flatten().tolist()
        if hits:
            assert length == hits[0] + 1
        else:
            assert length == response.shape[1] == SAMPLING.max_new_tokens
        assert valid[:length].all() and not valid[length:].any()
    assert torch.equal(first.attention_mask[:, width:], first.response_mask[:, width:])


def test_greedy_generation_and_logprobs_agree_across_ranks(
    groups, prompts: PromptBatch, tokenizer
) -> None:
    greedy = GenerationSpec(max_new_tokens=8, do_sample=False)
    outputs = {name: group.generate(prompts, greedy) for name, group in groups.items()}
    assert torch.equal(outputs["one"].sequences, outputs["zero3"].sequences)
    batch = outputs["one"].to_sequence_batch(tokenizer.pad_token_id)
    logprobs = {name: group.token_logprobs(batch) for name, group in groups.items()}
    assert logprobs["one"].shape == batch.input_ids.shape
    for name in ("zero3", "zero2"):
        torch.testing.assert_close(logprobs[name], logprobs["one"], atol=1e-5, rtol=1e-5)
    # greedy tokens are the argmax, so each response token is the most likely one: log-prob <= 0
    assert (logprobs["one"][batch.response_mask] <= 0).all()


def test_batches_that_do_not_divide_are_refused(groups, prompts: PromptBatch, train_batch) -> None:
    group = groups["zero2"]
    with pytest.raises(ValueError, match=r"3 rows.*num_ranks=2"):
        group.generate(slice_batch(prompts, 0, 3), SAMPLING)
    with pytest.raises(ValueError, match=r"3 rows.*num_ranks=2"):
        group.token_logprobs(slice_batch(train_batch, 0, 3))
    with pytest.raises(ValueError, match=r"needs exactly 4 rows.*got 2"):
        group.train_step(slice_batch(train_batch, 0, 2), _unused_loss)
    # refused in the driver: the group is still usable
    assert group.token_logprobs(train_batch).shape == train_batch.input_ids.shape


def _unused_loss(outputs: torch.Tensor, batch) -> torch.Tensor:  # never reaches a rank
    return outputs.sum()


def pair_loss(logprobs: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """DPO-style loss without a reference: chosen rows come first in ``logprobs``."""
    sequence = (logprobs * batch.concatenated().response_mask).sum(dim=-1)  # (2 * batch,)
    chosen, rejected = sequence.chunk(2)
    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


def test_pair_batches_train_through_the_same_actor_code(groups, train_batch) -> None:
    # Runs last in this module: it changes the ZeRO-2 group's weights.
    rows = [1, 0, 3, 2]
    pairs = PairBatch(
        chosen=train_batch,
        rejected=SequenceBatch(
            train_batch.input_ids[rows],
            train_batch.attention_mask[rows],
            train_batch.response_mask[rows],
        ),
        preference_prob=torch.ones(4),
    )
    group = groups["zero2"]
    before = group.token_logprobs(train_batch)
    step = group.train_step(pairs, pair_loss)
    # the loss the ranks computed equals the driver's, from the log-probs before the step
    sequence = (before * train_batch.response_mask).sum(dim=-1)
    expected = -torch.nn.functional.logsigmoid(sequence - sequence[rows]).mean()
    assert step.num_rows == 4
    assert step.loss == pytest.approx(float(expected), rel=1e-4)
    assert not torch.allclose(group.token_logprobs(train_batch), before)
