"""save/load in the standard Hugging Face format; critics initialised from saved score models."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from saferl.models import (
    LoraSpec,
    ModelSpec,
    build_critic,
    build_policy,
    build_score_model,
    end_scores,
    ensure_pad_token,
    load_policy,
    load_score_model,
    load_tokenizer,
    policy_token_logprobs,
    save_policy,
    save_score_model,
    score_backbone,
    score_head,
    score_model_kind,
    tiny_transformers_config,
    unwrap_model,
)


def _randomise(model: torch.nn.Module, only_trainable: bool = False) -> None:
    """Make every weight (LoRA B included, which starts at 0) matter for the comparison."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad or not only_trainable:
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_score_model_round_trip_plain_transformers(
    tokenizer, make_tiny_spec, batch, tmp_path, architecture
) -> None:
    model = build_score_model(make_tiny_spec(len(tokenizer), architecture), tokenizer, 2).eval()
    path = save_score_model(model, tokenizer, tmp_path / "cost", kind="cost")
    plain = AutoModelForSequenceClassification.from_pretrained(path).eval()
    inputs = batch()
    with torch.no_grad():
        ours = end_scores(model, **inputs)
        theirs = plain(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"].long()
        ).logits
        reloaded = end_scores(plain, **inputs)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    torch.testing.assert_close(reloaded, ours, rtol=0, atol=1e-6)
    assert plain.config.id2label == {0: "cost_0", 1: "cost_1"}
    assert plain.config.saferl == {"kind": "cost", "num_outputs": 2}
    loaded, loaded_tokenizer = load_score_model(path)
    assert score_model_kind(loaded) == "cost"
    assert loaded_tokenizer.pad_token_id == tokenizer.pad_token_id
    assert len(loaded_tokenizer) == len(tokenizer)


def test_refuses_non_empty_folder(tokenizer, tiny_spec, tmp_path) -> None:
    model = build_score_model(tiny_spec, tokenizer)
    target = tmp_path / "rm"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=str(target)):
        save_score_model(model, tokenizer, target, kind="reward")
    with pytest.raises(ValueError, match="non-empty"):
        save_policy(build_policy(tiny_spec, tokenizer), tokenizer, target)
    save_score_model(model, tokenizer, target, kind="reward", overwrite=True)
    assert (target / "config.json").exists() and (target / "notes.txt").exists()
    with pytest.raises(ValueError, match="kind"):
        save_score_model(model, tokenizer, tmp_path / "other", kind="helpfulness")
    assert not (tmp_path / "other").exists()


def test_policy_round_trip(tokenizer, tiny_spec, batch, tmp_path) -> None:
    model = build_policy(tiny_spec, tokenizer).eval()
    path = save_policy(model, tokenizer, tmp_path / "policy")
    loaded, loaded_tokenizer = load_policy(path)
    plain = AutoModelForCausalLM.from_pretrained(path)
    inputs = batch()
    with torch.no_grad():
        expected = policy_token_logprobs(model, **inputs)
        torch.testing.assert_close(
            policy_token_logprobs(loaded, **inputs), expected, rtol=0, atol=1e-6
        )
        torch.testing.assert_close(
            policy_token_logprobs(plain, **inputs), expected, rtol=0, atol=1e-6
        )
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()


def test_critic_init_from_saved_score_model(tokenizer, tiny_spec, batch, tmp_path) -> None:
    reward_model = build_score_model(tiny_spec, tokenizer).eval()
    path = save_score_model(reward_model, tokenizer, tmp_path / "reward", kind="reward")
    # The spec's own weight source is ignored when init_from is given.
    critic = build_critic(tiny_spec, tokenizer, init_from=str(path)).eval()
    reward_state = score_backbone(reward_model).state_dict()
    for name, value in score_backbone(critic).state_dict().items():
        assert torch.equal(value, reward_state[name]), name
    assert torch.equal(score_head(critic).weight, score_head(reward_model).weight)
    assert score_model_kind(critic) == "critic"
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(end_scores(critic, **inputs), end_scores(reward_model, **inputs))


def test_a_critic_value_scale_multiplies_its_first_values(tokenizer, tiny_spec, batch, tmp_path) -> None:
    """The head is linear without a bias, so scaling its weights scales every value exactly."""
    cost_model = build_score_model(tiny_spec, tokenizer).eval()
    path = save_score_model(cost_model, tokenizer, tmp_path / "cost", kind="cost")
    critic = build_critic(tiny_spec, tokenizer, init_from=str(path), value_scale=0.2).eval()
    assert torch.equal(score_head(critic).weight, score_head(cost_model).weight * 0.2)
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(end_scores(critic, **inputs), 0.2 * end_scores(cost_model, **inputs),
                                   rtol=1e-6, atol=1e-7)


def test_critic_init_from_multi_output_cost_model(tokenizer, tiny_spec, tmp_path) -> None:
    cost_model = build_score_model(tiny_spec, tokenizer, 3)
    path = save_score_model(cost_model, tokenizer, tmp_path / "cost", kind="cost")
    with pytest.raises(ValueError, match="init_output_index"):
        build_critic(tiny_spec, tokenizer, init_from=str(path))
    critic = build_critic(tiny_spec, tokenizer, init_from=str(path), init_output_index=2)
    assert critic.config.num_labels == 1
    assert torch.equal(score_head(critic).weight[0], score_head(cost_model).weight[2])


def test_critic_init_from_causal_lm_rejected(tokenizer, tiny_spec, tmp_path) -> None:
    build_policy(tiny_spec, tokenizer).save_pretrained(tmp_path / "causal")
    with pytest.raises(ValueError, match="not a score model"):
        build_critic(tiny_spec, tokenizer, init_from=str(tmp_path / "causal"))


def test_lora_policy_merged_save_reloads_identically(
    tokenizer, make_tiny_spec, batch, tmp_path
) -> None:
    model = build_policy(make_tiny_spec(len(tokenizer), lora=LoraSpec(r=4, alpha=8)), tokenizer)
    _randomise(model)
    model.eval()
    path = save_policy(model, tokenizer, tmp_path / "policy")
    assert not (path / "adapter_config.json").exists()
    assert any("lora_" in name for name, _ in model.named_parameters())  # caller's model intact
    loaded, _ = load_policy(path)
    assert not any("lora_" in name for name in loaded.state_dict())
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(
            policy_token_logprobs(loaded, **inputs),
            policy_token_logprobs(model, **inputs),
            rtol=0,
            atol=1e-5,
        )


def test_lora_score_model_merged_save_reloads_identically(
    tokenizer, make_tiny_spec, batch, tmp_path
) -> None:
    spec = make_tiny_spec(len(tokenizer), lora=LoraSpec(r=4, alpha=8))
    model = build_score_model(spec, tokenizer, 2)
    _randomise(model)
    model.eval()
    path = save_score_model(model, tokenizer, tmp_path / "rm", kind="reward")
    plain = AutoModelForSequenceClassification.from_pretrained(path).eval()
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(
            plain(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"].long()
            ).logits,
            end_scores(model, **inputs),
            rtol=0,
            atol=1e-5,
        )


@pytest.mark.parametrize("role", ["policy", "score"])
def test_lora_adapter_only_save(
    tokenizer_dir_no_pad, make_tiny_spec, batch, tmp_path, role
) -> None:
    """merge_lora=False writes a peft adapter over a local base; the vocabulary grew (<pad>)."""
    tokenizer = load_tokenizer(str(tokenizer_dir_no_pad))
    # The base checkpoint knows nothing of <pad>: saved by plain transformers before it is added.
    tiny = make_tiny_spec(len(tokenizer)).tiny
    AutoModelForCausalLM.from_config(tiny_transformers_config(tiny)).save_pretrained(
        tmp_path / "base"
    )
    ensure_pad_token(tokenizer)
    spec = ModelSpec(name_or_path=str(tmp_path / "base"), lora=LoraSpec(r=4, alpha=8))
    if role == "policy":
        model = build_policy(spec, tokenizer)
    else:
        model = build_score_model(spec, tokenizer, 2)
    _randomise(model, only_trainable=True)  # an adapter-only folder holds only these
    model.eval()
    save = save_policy if role == "policy" else save_score_model
    path = save(model, tokenizer, tmp_path / "adapter", merge_lora=False)
    assert (path / "adapter_config.json").exists()
    assert json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    load = load_policy if role == "policy" else load_score_model
    loaded, _ = load(path)
    loaded.eval()
    # The grown embedding rows (the new <pad>) travel with the adapter.
    torch.testing.assert_close(
        unwrap_model(loaded).get_input_embeddings().weight,
        unwrap_model(model).get_input_embeddings().weight,
        rtol=0,
        atol=0,
    )
    inputs = batch()
    inputs["input_ids"][inputs["input_ids"] == 0] = tokenizer.pad_token_id  # this vocab's pad id
    with torch.no_grad():
        if role == "policy":
            ours, theirs = (
                policy_token_logprobs(model, **inputs),
                policy_token_logprobs(loaded, **inputs),
            )
        else:
            ours, theirs = end_scores(model, **inputs), end_scores(loaded, **inputs)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_adapter_only_save_needs_named_base(tokenizer, make_tiny_spec, tmp_path) -> None:
    model = build_policy(make_tiny_spec(len(tokenizer), lora=LoraSpec(r=4)), tokenizer)
    with pytest.raises(ValueError, match="merge_lora=True"):
        save_policy(model, tokenizer, tmp_path / "adapter", merge_lora=False)
