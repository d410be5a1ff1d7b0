"""Building policies, score models and critics from tiny configs and local folders."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from saferl.models import (
    LoraSpec,
    ModelSpec,
    build_critic,
    build_policy,
    build_score_model,
    default_head_init_std,
    score_backbone,
    score_head,
    score_model_kind,
)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_policy_from_tiny_config(tokenizer, make_tiny_spec, batch, architecture) -> None:
    model = build_policy(make_tiny_spec(len(tokenizer), architecture), tokenizer)
    assert model.config.model_type == architecture
    assert model.config.num_hidden_layers == 2
    assert model.config.hidden_size == 32
    inputs = batch()
    logits = model(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, len(tokenizer))


def test_policy_dtype(tokenizer, make_tiny_spec) -> None:
    model = build_policy(make_tiny_spec(len(tokenizer), dtype="bfloat16"), tokenizer)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_policy_from_local_path(tokenizer, make_tiny_spec, tmp_path) -> None:
    original = build_policy(make_tiny_spec(len(tokenizer)), tokenizer)
    original.save_pretrained(tmp_path / "policy")
    loaded = build_policy(ModelSpec(name_or_path=str(tmp_path / "policy")), tokenizer)
    assert isinstance(loaded, type(original))
    for (name, p), (_, q) in zip(
        original.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
@pytest.mark.parametrize("num_outputs", [1, 3])
def test_score_model_head(tokenizer, make_tiny_spec, architecture, num_outputs) -> None:
    model = build_score_model(make_tiny_spec(len(tokenizer), architecture), tokenizer, num_outputs)
    head = score_head(model)
    assert isinstance(head, nn.Linear)
    assert head.bias is None
    assert head.out_features == num_outputs == model.config.num_labels
    assert head.in_features == 32
    # fresh head drawn from N(0, std²) with the small default std 1/(d+1)
    std = default_head_init_std(32)
    assert head.weight.abs().max() < 6 * std
    assert head.weight.std() > 0.3 * std
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert score_model_kind(model) == "score"


def test_score_model_from_causal_lm_path(tokenizer, make_tiny_spec, tmp_path) -> None:
    causal = build_policy(make_tiny_spec(len(tokenizer)), tokenizer)
    causal.save_pretrained(tmp_path / "causal")
    model = build_score_model(ModelSpec(name_or_path=str(tmp_path / "causal")), tokenizer, 2)
    assert isinstance(model, AutoModelForSequenceClassification._model_mapping[type(causal.config)])
    causal_backbone = causal.model.state_dict()
    for name, value in score_backbone(model).state_dict().items():
        assert torch.equal(value, causal_backbone[name]), name
    head = score_head(model)
    assert head.out_features == 2
    assert head.weight.abs().max() < 6 * default_head_init_std(32)  # fresh, small


def test_score_model_from_score_checkpoint(tokenizer, make_tiny_spec, tmp_path) -> None:
    original = build_score_model(make_tiny_spec(len(tokenizer)), tokenizer, 2)
    with torch.no_grad():
        score_head(original).weight.fill_(0.5)  # unlike any fresh init
    original.save_pretrained(tmp_path / "rm")
    loaded = build_score_model(ModelSpec(name_or_path=str(tmp_path / "rm")), tokenizer, 2)
    assert torch.equal(score_head(loaded).weight, score_head(original).weight)
    with pytest.raises(ValueError, match="2 outputs, but 1"):
        build_score_model(ModelSpec(name_or_path=str(tmp_path / "rm")), tokenizer, 1)


def test_num_outputs_validated(tokenizer, tiny_spec) -> None:
    with pytest.raises(ValueError, match="num_outputs"):
        build_score_model(tiny_spec, tokenizer, 0)


def test_critic_fresh(tokenizer, tiny_spec) -> None:
    critic = build_critic(tiny_spec, tokenizer)
    assert score_head(critic).out_features == 1
    assert score_model_kind(critic) == "critic"


def test_trust_remote_code_reaches_score_loader(tokenizer, monkeypatch) -> None:
    seen: list[object] = []

    def fake(name, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        raise RuntimeError("stop")

    monkeypatch.setattr("saferl.models.builders.AutoConfig.from_pretrained", fake)
    with pytest.raises(RuntimeError):
        build_score_model(ModelSpec(name_or_path="some/model"), tokenizer)
    assert seen == [False]


def test_lora_policy_trains_only_adapters(tokenizer, make_tiny_spec) -> None:
    model = build_policy(make_tiny_spec(len(tokenizer), lora=LoraSpec(r=4, alpha=8)), tokenizer)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in name for name in trainable)
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert any("embed_tokens" in name for name in frozen)


def test_lora_score_model_trains_adapters_and_head(tokenizer, make_tiny_spec) -> None:
    spec = make_tiny_spec(len(tokenizer), lora=LoraSpec(r=4, alpha=8, target_modules=["q_proj"]))
    model = build_score_model(spec, tokenizer)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in name or ".score." in name for name in trainable)
    assert any("lora_" in name for name in trainable)
    assert any(".score." in name for name in trainable)
    assert all("q_proj" in name for name in trainable if "lora_" in name)
    assert score_head(model).weight.requires_grad


def test_causal_lm_checkpoint_unchanged_by_score_build(tokenizer, make_tiny_spec, tmp_path) -> None:
    """Building a score model from a causal checkpoint must not need or alter the LM head."""
    causal = build_policy(make_tiny_spec(len(tokenizer)), tokenizer)
    causal.save_pretrained(tmp_path / "causal")
    build_score_model(ModelSpec(name_or_path=str(tmp_path / "causal")), tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "causal")
    assert torch.equal(reloaded.lm_head.weight, causal.lm_head.weight)
