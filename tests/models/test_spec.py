"""ModelSpec / TinyModelConfig / LoraSpec validation."""

from __future__ import annotations

import inspect

import pytest
import torch

from saferl.models import (
    LoraSpec,
    ModelSpec,
    TinyModelConfig,
    build_policy,
    load_tokenizer,
    torch_dtype,
)


def test_exactly_one_source_neither() -> None:
    with pytest.raises(ValueError, match=r"name_or_path.*tiny.*neither"):
        ModelSpec()


def test_exactly_one_source_both() -> None:
    with pytest.raises(ValueError, match=r"name_or_path.*tiny.*both"):
        ModelSpec(name_or_path="gpt2", tiny=TinyModelConfig(vocab_size=10))


def test_empty_name_rejected() -> None:
    with pytest.raises(ValueError, match="name_or_path"):
        ModelSpec(name_or_path="  ")


def test_dtype_validated_and_mapped() -> None:
    with pytest.raises(ValueError, match=r"model\.dtype.*'float64'"):
        ModelSpec(name_or_path="x", dtype="float64")
    assert ModelSpec(name_or_path="x", dtype="bfloat16").torch_dtype is torch.bfloat16
    assert torch_dtype("float16") is torch.float16


def test_tiny_config_validation() -> None:
    with pytest.raises(ValueError, match="divisible"):
        TinyModelConfig(vocab_size=10, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match=r"model\.tiny\.num_layers"):
        TinyModelConfig(vocab_size=10, num_layers=0)
    with pytest.raises(ValueError, match=r"model\.tiny\.architecture.*'bert'"):
        TinyModelConfig(vocab_size=10, architecture="bert")


def test_lora_spec_validation_and_normalisation() -> None:
    assert LoraSpec(target_modules=["q_proj", "v_proj"]).target_modules == ("q_proj", "v_proj")
    with pytest.raises(ValueError, match="dropout"):
        LoraSpec(dropout=1.0)
    with pytest.raises(ValueError, match=r"model\.lora\.r"):
        LoraSpec(r=0)
    with pytest.raises(ValueError, match="target_modules"):
        LoraSpec(target_modules="q_proj")  # type: ignore[arg-type]


def test_specs_are_frozen() -> None:
    spec = ModelSpec(name_or_path="x")
    with pytest.raises(AttributeError):
        spec.dtype = "bfloat16"  # type: ignore[misc]


def test_trust_remote_code_defaults_false(tokenizer_dir, monkeypatch) -> None:
    assert ModelSpec(name_or_path="x").trust_remote_code is False
    assert inspect.signature(load_tokenizer).parameters["trust_remote_code"].default is False

    seen: dict[str, object] = {}

    def fake_from_pretrained(name, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(
        "saferl.models.builders.AutoModelForCausalLM.from_pretrained", fake_from_pretrained
    )
    tokenizer = load_tokenizer(str(tokenizer_dir))
    with pytest.raises(RuntimeError, match="stop"):
        build_policy(ModelSpec(name_or_path="some/model"), tokenizer)
    assert seen["trust_remote_code"] is False
    with pytest.raises(RuntimeError, match="stop"):
        build_policy(ModelSpec(name_or_path="some/model", trust_remote_code=True), tokenizer)
    assert seen["trust_remote_code"] is True
