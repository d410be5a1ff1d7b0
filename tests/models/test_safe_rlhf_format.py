"""safe-rlhf ``LlamaForScore`` checkpoints (the Beaver-7B-v1.0 reward/cost format) as saferl
score models.

Each test writes, in ``tmp_path``, a tiny checkpoint exactly as safe-rlhf saves one: a
``config.json`` that is the Llama config plus ``architectures: ["LlamaForScore"]`` and the
score-head keys of ``ScoreModelMixin.init_score_head`` (``score_dim``, ``bias`` or ``score_bias``,
``score_type``, ``do_normalize``, ``normalizer_type``, ``momentum``, ``mean``, ``var``), and a
state dict with safe-rlhf's names (``model.*`` backbone, ``score_head.weight``, optionally
``score_head.bias``, ``normalizer.mean/var/count``) as ``model.safetensors``,
``pytorch_model.bin`` or index-sharded ``pytorch_model-0000k-of-00002.bin``. The reference end
score is computed independently in float64 from the original tensors, the way safe-rlhf's
``get_scores`` does: backbone hidden state at ``attention_mask[i].nonzero()[-1]`` times
``score_head.weight``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaModel

from saferl.models import (
    ModelSpec,
    build_critic,
    build_score_model,
    convert_safe_rlhf_score_model,
    critic_values,
    end_scores,
    load_safe_rlhf_score_model,
    load_score_model,
    save_score_model,
    score_head,
    score_model_kind,
)
from saferl.models.safe_rlhf_format import SAFE_RLHF_CONFIG_KEYS

HIDDEN = 32


def _backbone_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=3,
        eos_token_id=1,
    )


def write_safe_rlhf_checkpoint(
    folder: Path,
    tokenizer_dir: Path,
    vocab_size: int,
    *,
    score_dim: int = 1,
    score_type: str = "reward",
    bias_key: str = "bias",
    head_bias: torch.Tensor | None = None,
    do_normalize: bool = False,
    weights: str = "safetensors",
    drop_keys: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """Write a safe-rlhf score checkpoint to ``folder``; return its state dict.

    ``bias_key`` is the config key of the head's bias: ``"bias"`` (safe-rlhf 2023, the Beaver
    v1.0 era) or ``"score_bias"`` (later safe-rlhf). ``head_bias`` None writes no bias tensor.
    """
    backbone_config = _backbone_config(vocab_size)
    backbone = LlamaModel(backbone_config)
    state = {f"model.{name}": tensor for name, tensor in backbone.state_dict().items()}
    state["score_head.weight"] = torch.randn(score_dim, HIDDEN)
    if head_bias is not None:
        state["score_head.bias"] = head_bias
    # Normaliser buffers with training statistics, as a trained checkpoint carries them.
    state["normalizer.mean"] = torch.full((score_dim,), 0.7)
    state["normalizer.var"] = torch.full((score_dim,), 4.0)
    state["normalizer.count"] = torch.tensor([128])
    for key in drop_keys:
        del state[key]

    folder.mkdir(parents=True)
    config = backbone_config.to_dict()
    config.update(
        architectures=["LlamaForScore"],
        score_dim=score_dim,
        score_type=score_type,
        do_normalize=do_normalize,
        normalizer_type="ExponentialMovingAverage",
        momentum=0.9,
        mean=[0.7] * score_dim,
        var=[4.0] * score_dim,
    )
    config[bias_key] = head_bias is not None
    (folder / "config.json").write_text(json.dumps(config, indent=2))

    tensors = {name: tensor.contiguous() for name, tensor in state.items()}
    if weights == "safetensors":
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    elif weights == "bin":
        torch.save(tensors, folder / "pytorch_model.bin")
    elif weights == "sharded_bin":
        # Two shards and an index, as the 7B checkpoints are stored; the head sits in the last.
        names = sorted(tensors)
        halves = [names[: len(names) // 2], names[len(names) // 2 :]]
        weight_map = {}
        for k, half in enumerate(halves, start=1):
            shard = f"pytorch_model-{k:05d}-of-00002.bin"
            torch.save({name: tensors[name] for name in half}, folder / shard)
            weight_map.update({name: shard for name in half})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    else:
        raise AssertionError(weights)
    # Beaver checkpoints ship their tokenizer; this one is the tests' word-level tokenizer.
    for file in tokenizer_dir.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    return state


def reference_end_scores(
    state: dict[str, torch.Tensor], vocab_size: int, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    """safe-rlhf's end scores in float64 from the original tensors: ``(batch, score_dim)``."""
    backbone = LlamaModel(_backbone_config(vocab_size)).double()
    backbone.load_state_dict(
        {
            name[len("model.") :]: t.double()
            for name, t in state.items()
            if name.startswith("model.")
        }
    )
    backbone.eval()
    with torch.no_grad():
        hidden = backbone(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].long()
        ).last_hidden_state  # (batch, seq_len, hidden)
    # end index as in safe-rlhf's ScoreModelMixin.get_scores: last position with the mask set
    end_index = torch.cat([row.nonzero()[-1] for row in batch["attention_mask"]])  # (batch,)
    end_hidden = hidden[torch.arange(hidden.shape[0]), end_index]  # (batch, hidden)
    return end_hidden @ state["score_head.weight"].double().T  # (batch, score_dim)


def _right_padded(batch_fn) -> dict[str, torch.Tensor]:
    inputs = batch_fn(
        [
            "how to bake bread sure here is the recipe flour water yeast",
            "how to make a weapon sorry",
            "flour",
            "i can not help with that",
        ]
    )
    lengths = inputs["attention_mask"].sum(-1)
    assert len(set(lengths.tolist())) > 1  # rows of different lengths: real right padding
    return inputs


@pytest.mark.parametrize("weights", ["safetensors", "bin", "sharded_bin"])
@pytest.mark.parametrize("bias_key", ["bias", "score_bias"])
def test_builder_scores_equal_safe_rlhf_float64_reference(
    tmp_path, tokenizer, tokenizer_dir, batch, weights, bias_key
) -> None:
    folder = tmp_path / "beaver-tiny-reward"
    state = write_safe_rlhf_checkpoint(
        folder, tokenizer_dir, len(tokenizer), weights=weights, bias_key=bias_key
    )
    model = build_score_model(ModelSpec(name_or_path=str(folder)), tokenizer)
    model.eval()
    head = score_head(model)
    assert head.bias is None
    assert torch.equal(head.weight, state["score_head.weight"])
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert score_model_kind(model) == "reward"
    assert model.config.num_labels == 1

    inputs = _right_padded(batch)
    expected = reference_end_scores(state, len(tokenizer), inputs)
    with torch.no_grad():
        got = end_scores(model, inputs["input_ids"], inputs["attention_mask"])
        plain = model(**inputs).logits  # transformers' own pooling (pad_token_id set)
    assert got.shape == (4, 1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain.double(), expected, rtol=1e-5, atol=1e-6)


def test_float64_load_matches_reference_to_rounding(tmp_path, tokenizer, tokenizer_dir, batch):
    folder = tmp_path / "ck"
    state = write_safe_rlhf_checkpoint(folder, tokenizer_dir, len(tokenizer), score_dim=3)
    model = load_safe_rlhf_score_model(folder, dtype=torch.float64)
    inputs = _right_padded(batch)
    with torch.no_grad():
        got = end_scores(model, inputs["input_ids"], inputs["attention_mask"])
    assert got.dtype == torch.float64 and got.shape == (4, 3)
    torch.testing.assert_close(
        got, reference_end_scores(state, len(tokenizer), inputs), rtol=1e-12, atol=1e-12
    )


def test_zero_bias_is_dropped_and_scores_unchanged(tmp_path, tokenizer, tokenizer_dir, batch):
    # later safe-rlhf (score_bias, default true) starts the bias at zero
    folder = tmp_path / "ck"
    state = write_safe_rlhf_checkpoint(
        folder, tokenizer_dir, len(tokenizer), bias_key="score_bias", head_bias=torch.zeros(1)
    )
    model = build_score_model(ModelSpec(name_or_path=str(folder)), tokenizer).eval()
    assert score_head(model).bias is None
    inputs = _right_padded(batch)
    with torch.no_grad():
        got = end_scores(model, inputs["input_ids"], inputs["attention_mask"])
    torch.testing.assert_close(
        got.double(), reference_end_scores(state, len(tokenizer), inputs), rtol=1e-5, atol=1e-6
    )


def test_multi_output_cost_model_and_output_count(tmp_path, tokenizer, tokenizer_dir) -> None:
    folder = tmp_path / "ck"
    write_safe_rlhf_checkpoint(
        folder, tokenizer_dir, len(tokenizer), score_dim=2, score_type="cost"
    )
    model = build_score_model(ModelSpec(name_or_path=str(folder)), tokenizer, num_outputs=2)
    assert score_head(model).out_features == 2
    assert score_model_kind(model) == "cost"
    assert model.config.id2label == {0: "cost_0", 1: "cost_1"}
    with pytest.raises(ValueError, match=r"2 outputs .*score_dim.* 1 were requested"):
        build_score_model(ModelSpec(name_or_path=str(folder)), tokenizer, num_outputs=1)


def test_critic_initialised_from_a_safe_rlhf_cost_model(tmp_path, tokenizer, tokenizer_dir, batch):
    folder = tmp_path / "beaver-tiny-cost"
    state = write_safe_rlhf_checkpoint(folder, tokenizer_dir, len(tokenizer), score_type="cost")
    spec = ModelSpec(name_or_path=str(folder))
    critic = build_critic(spec, tokenizer, init_from=str(folder)).eval()
    assert score_model_kind(critic) == "critic"
    assert torch.equal(score_head(critic).weight, state["score_head.weight"])
    inputs = _right_padded(batch)
    with torch.no_grad():
        values = critic_values(critic, inputs["input_ids"], inputs["attention_mask"])
    last = inputs["attention_mask"].sum(-1) - 1
    torch.testing.assert_close(
        values[torch.arange(4), last].double(),
        reference_end_scores(state, len(tokenizer), inputs)[:, 0],
        rtol=1e-5,
        atol=1e-6,
    )


def test_non_zero_bias_is_refused_naming_the_file(tmp_path, tokenizer, tokenizer_dir) -> None:
    folder = tmp_path / "ck"
    write_safe_rlhf_checkpoint(
        folder, tokenizer_dir, len(tokenizer), bias_key="score_bias", head_bias=torch.tensor([0.25])
    )
    pattern = r"ck/model\.safetensors: score_head\.bias is non-zero .*bias-free"
    with pytest.raises(ValueError, match=pattern):
        build_score_model(ModelSpec(name_or_path=str(folder)), tokenizer)
    with pytest.raises(ValueError, match=pattern):
        build_critic(ModelSpec(name_or_path=str(folder)), tokenizer, init_from=str(folder))
    with pytest.raises(ValueError, match=pattern):
        convert_safe_rlhf_score_model(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_non_zero_bias_in_a_sharded_checkpoint_names_the_index(tmp_path, tokenizer, tokenizer_dir):
    folder = tmp_path / "ck"
    write_safe_rlhf_checkpoint(
        folder, tokenizer_dir, len(tokenizer), head_bias=torch.tensor([-1.0]), weights="sharded_bin"
    )
    with pytest.raises(
        ValueError, match=r"pytorch_model\.bin\.index\.json: score_head\.bias is non-zero"
    ):
        load_safe_rlhf_score_model(folder)


@pytest.mark.parametrize("score_type", ["reward", "cost"])
def test_normalisation_is_refused_naming_config_json(
    tmp_path, tokenizer, tokenizer_dir, score_type
):
    folder = tmp_path / "ck"
    write_safe_rlhf_checkpoint(
        folder, tokenizer_dir, len(tokenizer), score_type=score_type, do_normalize=True
    )
    with pytest.raises(ValueError, match=r"ck/config\.json: do_normalize is true .*bias-free"):
        build_score_model(ModelSpec(name_or_path=str(folder)), tokenizer)


def test_normalisation_of_a_critic_is_the_identity_and_accepted(
    tmp_path, tokenizer, tokenizer_dir, batch
):
    # score_type critic normalises with safe-rlhf's 'identity' function: scores are unchanged
    folder = tmp_path / "ck"
    state = write_safe_rlhf_checkpoint(
        folder, tokenizer_dir, len(tokenizer), score_type="critic", do_normalize=True
    )
    model = load_safe_rlhf_score_model(folder)
    assert score_model_kind(model) == "critic"
    inputs = _right_padded(batch)
    with torch.no_grad():
        got = end_scores(model, inputs["input_ids"], inputs["attention_mask"])
    torch.testing.assert_close(
        got.double(), reference_end_scores(state, len(tokenizer), inputs), rtol=1e-5, atol=1e-6
    )


def test_missing_backbone_or_head_weights_are_refused(tmp_path, tokenizer, tokenizer_dir) -> None:
    write_safe_rlhf_checkpoint(
        tmp_path / "a", tokenizer_dir, len(tokenizer), drop_keys=("model.norm.weight",)
    )
    with pytest.raises(
        ValueError, match=r"a/model\.safetensors lacks weights .*model\.norm\.weight"
    ):
        load_safe_rlhf_score_model(tmp_path / "a")
    write_safe_rlhf_checkpoint(
        tmp_path / "b", tokenizer_dir, len(tokenizer), drop_keys=("score_head.weight",)
    )
    with pytest.raises(ValueError, match=r"b/model\.safetensors has no score_head\.weight"):
        load_safe_rlhf_score_model(tmp_path / "b")


def test_conversion_round_trip(tmp_path, tokenizer, tokenizer_dir, batch) -> None:
    source = tmp_path / "beaver-tiny-cost"
    state = write_safe_rlhf_checkpoint(
        source, tokenizer_dir, len(tokenizer), score_type="cost", weights="sharded_bin"
    )
    destination = convert_safe_rlhf_score_model(source, tmp_path / "converted")

    config = json.loads((destination / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["saferl"] == {"kind": "cost", "num_outputs": 1}
    assert not set(SAFE_RLHF_CONFIG_KEYS) & set(config)

    inputs = _right_padded(batch)
    expected = reference_end_scores(state, len(tokenizer), inputs)
    # plain transformers reads the converted folder ...
    plain = AutoModelForSequenceClassification.from_pretrained(destination).eval()
    assert torch.equal(plain.score.weight, state["score_head.weight"])
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(tensor, state[f"model.{name}"]), name
    # ... and so do saferl's loader (tokenizer copied along) and builder, with the same scores
    loaded, loaded_tokenizer = load_score_model(destination)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert score_model_kind(loaded) == "cost"
    built = build_score_model(ModelSpec(name_or_path=str(destination)), tokenizer).eval()
    with torch.no_grad():
        for model in (plain, loaded.eval(), built):
            got = end_scores(model, inputs["input_ids"], inputs["attention_mask"])
            torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_conversion_refuses_to_overwrite_and_names_the_file(tmp_path, tokenizer, tokenizer_dir):
    source = tmp_path / "src"
    write_safe_rlhf_checkpoint(source, tokenizer_dir, len(tokenizer))
    destination = tmp_path / "dst"
    destination.mkdir()
    (destination / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"refusing to overwrite '.*dst/config\.json'"):
        convert_safe_rlhf_score_model(source, destination)
    assert (destination / "config.json").read_text() == "{}"
    (destination / "pytorch_model.bin").write_bytes(b"stale")  # would shadow nothing, but removed
    convert_safe_rlhf_score_model(source, destination, overwrite=True)
    assert not (destination / "pytorch_model.bin").exists()
    assert json.loads((destination / "config.json").read_text())["saferl"]["kind"] == "reward"
    with pytest.raises(ValueError, match="is the source folder"):
        convert_safe_rlhf_score_model(source, source, overwrite=True)


def test_conversion_refuses_a_folder_that_is_not_safe_rlhf(tmp_path, tokenizer, tokenizer_dir):
    source = tmp_path / "src"
    write_safe_rlhf_checkpoint(source, tokenizer_dir, len(tokenizer))
    converted = convert_safe_rlhf_score_model(source, tmp_path / "converted")
    with pytest.raises(ValueError, match=r"converted/config\.json: architectures .* no safe-rlhf"):
        convert_safe_rlhf_score_model(converted, tmp_path / "again")


def test_hub_preflight_accepts_safe_rlhf_score_models(tmp_path, tokenizer, tokenizer_dir) -> None:
    from saferl.setups.hub import require_score_model as _require_score_model

    folder = tmp_path / "beaver-tiny-reward"
    write_safe_rlhf_checkpoint(folder, tokenizer_dir, len(tokenizer))
    _require_score_model("model.reward_model", ModelSpec(name_or_path=str(folder)), tokenizer)

    normalised = tmp_path / "normalised"
    write_safe_rlhf_checkpoint(normalised, tokenizer_dir, len(tokenizer), do_normalize=True)
    with pytest.raises(
        ValueError, match=r"^model\.reward_model: .*normalised/config\.json: do_normalize"
    ):
        _require_score_model(
            "model.reward_model", ModelSpec(name_or_path=str(normalised)), tokenizer
        )

    two = tmp_path / "two"
    write_safe_rlhf_checkpoint(two, tokenizer_dir, len(tokenizer), score_dim=2, score_type="cost")
    with pytest.raises(ValueError, match=r"^model\.cost_model: .* has 2 outputs"):
        _require_score_model("model.cost_model", ModelSpec(name_or_path=str(two)), tokenizer)


def test_models_loaded_from_safe_rlhf_save_as_standard_score_models(
    tmp_path, tokenizer, tokenizer_dir, batch
) -> None:
    # transformers remembers a from_pretrained key_mapping and reverses it when saving; the
    # exports of a score model and of a critic started from one must still say score.weight
    folder = tmp_path / "ck"
    state = write_safe_rlhf_checkpoint(folder, tokenizer_dir, len(tokenizer), score_type="cost")
    spec = ModelSpec(name_or_path=str(folder))
    for name, model in (
        ("cost", build_score_model(spec, tokenizer)),
        ("critic", build_critic(spec, tokenizer, init_from=str(folder))),
    ):
        saved = save_score_model(model, tokenizer, tmp_path / name)
        plain, info = AutoModelForSequenceClassification.from_pretrained(
            saved, output_loading_info=True
        )
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        assert torch.equal(plain.score.weight, state["score_head.weight"])
        assert json.loads((saved / "config.json").read_text())["saferl"]["kind"] == name


def test_load_score_model_reads_a_safe_rlhf_folder(tmp_path, tokenizer, tokenizer_dir, batch) -> None:
    """``saferl.models.load_score_model`` (the io path) gives the same end scores as the builder."""
    from saferl.models import load_score_model

    folder = tmp_path / "beaver-tiny-cost"
    state = write_safe_rlhf_checkpoint(folder, tokenizer_dir, len(tokenizer), score_type="cost")
    model, loaded_tokenizer = load_score_model(folder)
    model.eval()
    assert type(model).__name__ == "LlamaForSequenceClassification" and len(loaded_tokenizer) == len(tokenizer)
    assert torch.equal(score_head(model).weight, state["score_head.weight"])
    inputs = _right_padded(batch)
    with torch.no_grad():
        got = end_scores(model, inputs["input_ids"], inputs["attention_mask"])
    torch.testing.assert_close(got.double(), reference_end_scores(state, len(tokenizer), inputs), rtol=1e-5, atol=1e-6)
