"""The PTX term of PPO-Lagrangian (docs/algorithms.md §2): its loss, its rows and its data set.

Unit tests, no Ray: the loss on a tiny model against a float64 computation by hand; the PTX rows
of an iteration; the SFT loader reading Alpaca's format; the hub and tiny setups' PTX loading and
the setup's refusal without a PTX set. The run itself is in test_ppo_lag.py.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from saferl.data import load_sft_dataset
from saferl.data.records import SFTExample
from saferl.data.world import (
    ReferenceConfig,
    build_world_tokenizer,
    make_sft_examples,
    world_model_spec,
)
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners.ppo_update import ptx_loss, sft_loss
from saferl.learners.sft import PTXBatches, sft_batch
from saferl.models import build_policy
from saferl.models.scoring import policy_token_logprobs
from saferl.runtime import GenerationSpec
from saferl.setups.base import Needs, Setup
from saferl.setups.hub import ptx_examples
from saferl.setups.tiny import word_tokenizer


def test_the_ptx_loss_is_the_coefficient_times_the_token_mean_nll():
    """Two rows whose responses have 2 and 3 tokens (+ EOS: 3 and 4 supervised tokens): the PTX
    loss weighs each token the same, so it is Σ NLL / 7, not the mean of the two rows' means."""
    tokenizer = build_world_tokenizer()
    torch.manual_seed(0)
    model = build_policy(world_model_spec(ReferenceConfig(), tokenizer), tokenizer).eval()
    batch = sft_batch([SFTExample("explain essay", "essay detail"), SFTExample("describe weapon", "steps safely ok")],
                      tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE)
    assert batch.response_mask.sum(-1).tolist() == [3, 4]
    coefficient = 16.0
    with torch.no_grad():
        loss = ptx_loss(policy_token_logprobs(model, batch.input_ids, batch.attention_mask), batch, coefficient)
        # By hand, in float64: the logits at t − 1 predict the token at t.
        logits = model.double()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    per_row: list[list[float]] = []
    for row in range(2):
        nlls = []
        for t in range(1, batch.input_ids.shape[1]):
            if batch.response_mask[row, t]:
                log_softmax = logits[row, t - 1].log_softmax(-1)
                nlls.append(-float(log_softmax[batch.input_ids[row, t]]))
        per_row.append(nlls)
    token_mean = sum(sum(nlls) for nlls in per_row) / sum(len(nlls) for nlls in per_row)
    sequence_mean = sum(sum(nlls) / len(nlls) for nlls in per_row) / 2
    assert float(loss) == pytest.approx(coefficient * token_mean, rel=1e-6)
    # The two means differ here, so a per-sequence mean would fail the line above.
    assert abs(token_mean - sequence_mean) > 1e-3
    with torch.no_grad():  # the SFT stage's loss is the per-sequence mean
        sft = sft_loss(policy_token_logprobs(model.float(), batch.input_ids, batch.attention_mask), batch)
    assert float(sft) == pytest.approx(sequence_mean, rel=1e-5)


def test_ptx_rows_depend_on_the_seed_and_iteration_alone():
    tokenizer = build_world_tokenizer()
    examples = make_sft_examples(40, seed=1)

    def rows(seed: int, iteration: int) -> list[list[int]]:
        return PTXBatches(examples, 16, seed, tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE)(iteration).input_ids.tolist()

    assert rows(0, 3) == rows(0, 3)  # a resumed run's batches
    assert rows(0, 3) != rows(0, 2) and rows(0, 3) != rows(1, 3)
    assert len(rows(0, 0)) == 16


def test_the_sft_loader_reads_alpaca_as_safe_rlhf_does(tmp_path):
    """``prompt = instruction + " " + input`` (input not empty), ``response = output``."""
    path = tmp_path / "alpaca.jsonl"
    rows = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "text": "..."},
            {"instruction": "Say hello.", "input": "", "output": "Hello!", "text": "..."}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert list(load_sft_dataset(str(path)).records) == [SFTExample("Add the numbers. 2 and 3", "5"),
                                                         SFTExample("Say hello.", "Hello!")]
    # A prompt/response set is read as it is, and a field map keeps its meaning.
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "p", "response": "r", "instruction": "i", "input": "", "output": "o"}) + "\n")
    assert list(load_sft_dataset(str(plain)).records) == [SFTExample("p", "r")]
    assert list(load_sft_dataset(str(path), field_map={"prompt": "instruction", "response": "output"}).records)[0] \
        == SFTExample("Add the numbers.", "5")


def test_a_hub_setups_ptx_set_is_loaded_and_prompts_that_fill_max_length_are_dropped(tmp_path, caplog):
    path = tmp_path / "ptx.jsonl"
    long_prompt = " ".join(["word"] * 20)
    path.write_text("".join(json.dumps(row) + "\n" for row in (
        {"prompt": "say hi", "response": "hi there"}, {"prompt": long_prompt, "response": "ok"})))
    tokenizer = word_tokenizer(["say hi there word ok", "BEGINNING OF CONVERSATION: USER: ASSISTANT:"])
    settings = SimpleNamespace(ptx_path=str(path), ptx_split="train", ptx_revision=None, template="safe_rlhf",
                               max_length=16)
    with caplog.at_level(logging.WARNING):
        assert ptx_examples(settings, tokenizer) == [SFTExample("say hi", "hi there")]
    assert "1 of 2 PTX demonstrations dropped" in caplog.text
    with pytest.raises(ValueError, match="data.ptx_path"):
        ptx_examples(SimpleNamespace(**{**vars(settings), "ptx_path": None}), tokenizer)
    # A file without prompt/response (or Alpaca's) columns: the error names the key, the file and the columns.
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"question": "say hi", "answer": "hi"}) + "\n")
    with pytest.raises(ValueError, match=r"data\.ptx_path: .*wrong\.jsonl") as raised:
        ptx_examples(SimpleNamespace(**{**vars(settings), "ptx_path": str(wrong)}), tokenizer)
    assert "prompt" in str(raised.value)


def test_a_setup_without_a_ptx_set_is_refused_naming_the_keys():
    tokenizer = build_world_tokenizer()
    setup = Setup(name="hub", policy=None, tokenizer=tokenizer, template="safe_rlhf", max_length=8,
                  max_prompt_length=4, generation=GenerationSpec(max_new_tokens=4), prompts=["p"],
                  ptx_source="data.ptx_path=None")
    with pytest.raises(ValueError, match=r"ppo_lag with learner\.ptx_coeff > 0 .*data\.ptx_path"):
        setup.require(Needs(ptx=True), "ppo_lag")
    setup.require(Needs(ptx=False), "ppo_lag")
