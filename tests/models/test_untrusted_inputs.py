"""Model folders are untrusted inputs (saferl.models.untrusted).

Real folders in the hub's formats: a tiny Llama saved with ``save_pretrained``, then edited the way
a checkpoint with its own code looks (``auto_map`` in ``config.json`` / ``tokenizer_config.json``
and the ``.py`` file it names), or given a pickled ``pytorch_model.bin`` whose ``__reduce__``
would create a marker file if it were ever unpickled.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from saferl.models import (
    ModelSpec,
    build_policy,
    build_score_model,
    load_policy,
    load_score_model,
    load_tokenizer,
    save_policy,
)
from saferl.models.untrusted import check_remote_code, load_pickled_weights


class _CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: the file appears only if a loader ran it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def llama_dir(tmp_path, tiny_spec, tokenizer) -> Path:
    """A tiny Llama policy and its tokenizer, as ``save_pretrained`` writes them (safetensors)."""
    torch.manual_seed(0)
    return save_policy(build_policy(tiny_spec, tokenizer), tokenizer, tmp_path / "llama")


def _edit_json(path: Path, **changes: object) -> None:
    values = json.loads(path.read_text())
    values.update(changes)
    path.write_text(json.dumps(values, indent=2))


def _custom_code_folder(folder: Path, model_type: str, marker: Path) -> Path:
    """Give ``folder`` its own config and model classes (``custom_llama.py``, named in
    ``config.json``'s ``auto_map``); importing that file creates ``marker``."""
    (folder / "custom_llama.py").write_text(
        "from pathlib import Path\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n"
        f"Path({str(marker)!r}).touch()  # proof that this file ran\n\n\n"
        "class CustomLlamaConfig(LlamaConfig):\n"
        f"    model_type = {model_type!r}\n\n\n"
        "class CustomLlamaForCausalLM(LlamaForCausalLM):\n"
        "    config_class = CustomLlamaConfig\n"
    )
    _edit_json(
        folder / "config.json",
        model_type=model_type,
        architectures=["CustomLlamaForCausalLM"],
        auto_map={
            "AutoConfig": "custom_llama.CustomLlamaConfig",
            "AutoModelForCausalLM": "custom_llama.CustomLlamaForCausalLM",
        },
    )
    return folder


def test_a_folder_needing_its_own_code_is_refused_before_anything_loads(
    llama_dir, tokenizer, tmp_path
) -> None:
    marker = tmp_path / "code_ran"
    folder = _custom_code_folder(llama_dir, "saferl_custom_llama", marker)
    every_load = {
        "check": lambda: check_remote_code(folder, False),
        "load_policy": lambda: load_policy(folder),
        "load_score_model": lambda: load_score_model(folder),
        "load_tokenizer": lambda: load_tokenizer(str(folder)),
        "build_policy": lambda: build_policy(ModelSpec(name_or_path=str(folder)), tokenizer),
        "build_score_model": lambda: build_score_model(ModelSpec(name_or_path=str(folder)), tokenizer),
    }
    for name, load in every_load.items():
        with pytest.raises(ValueError) as refused:
            load()
        message = str(refused.value)
        # names the file, the key found, what it would mean, and the setting that allows it
        assert f"{folder}/config.json" in message, name
        assert "auto_map" in message and "custom_llama.CustomLlamaConfig" in message, name
        assert "'saferl_custom_llama'" in message, name
        assert "model.trust_remote_code=true only if you trust the code" in message, name
    assert not marker.exists()


def test_with_trust_remote_code_the_folder_s_own_classes_load(llama_dir, tmp_path) -> None:
    marker = tmp_path / "code_ran"
    folder = _custom_code_folder(llama_dir, "saferl_custom_llama_trusted", marker)
    check_remote_code(folder, True)  # no refusal
    model, tokenizer = load_policy(folder, trust_remote_code=True)
    assert type(model).__name__ == "CustomLlamaForCausalLM"
    assert marker.exists()  # the user asked for the code to run, and it did
    assert len(tokenizer) > 0


def test_the_refusal_names_the_given_key_or_says_there_is_none(llama_dir, tokenizer, tmp_path) -> None:
    folder = _custom_code_folder(llama_dir, "saferl_custom_llama", tmp_path / "code_ran")
    judge_key = "job.judges[name=classifier:llama].trust_remote_code"
    spec = ModelSpec(name_or_path=str(folder), trust_remote_code_key=judge_key)
    with pytest.raises(ValueError, match=r"job\.judges\[name=classifier:llama\]\.trust_remote_code=true"):
        build_policy(spec, tokenizer)
    with pytest.raises(ValueError, match="saferl has no setting to run this model's code"):
        check_remote_code(folder, False, key=None)


def test_a_judge_needing_its_own_code_is_refused_with_the_judge_s_key(llama_dir, tmp_path) -> None:
    from saferl.eval.judge_settings import JudgeSettings
    from saferl.eval.judges import build_judge

    folder = _custom_code_folder(llama_dir, "saferl_custom_llama", tmp_path / "code_ran")
    settings = JudgeSettings(kind="llamaguard", path=str(folder), name="guard")
    with pytest.raises(ValueError, match=r"job\.judges\[name=guard\]\.trust_remote_code=true") as refused:
        build_judge(settings, local=True)
    assert f"{folder}/config.json" in str(refused.value)
    assert not (tmp_path / "code_ran").exists()


def test_the_arena_refuses_such_a_judge_before_it_generates(llama_dir, tmp_path) -> None:
    """run_arena checks every model judge first: the policy folder does not even exist, and the
    refusal is still the judge's (it came before anything was loaded or generated)."""
    from saferl.data.world import build_world_tokenizer
    from saferl.eval.arena_run import run_arena
    from saferl.eval.judge_settings import JudgeSettings

    folder = _custom_code_folder(llama_dir, "saferl_custom_llama", tmp_path / "code_ran")
    judges = [JudgeSettings(kind="classifier", path=str(folder), name="harm")]
    with pytest.raises(ValueError, match=r"job\.judges\[name=harm\]\.trust_remote_code=true"):
        run_arena(str(tmp_path / "no_policy"), str(tmp_path / "no_reference"), ["explain bread"],
                  build_world_tokenizer(), {"reward": str(tmp_path / "no_rm"), "cost": str(tmp_path / "no_cm")},
                  judges=judges)
    assert not (tmp_path / "code_ran").exists()


def test_a_tokenizer_needing_its_own_code_is_refused(tokenizer_dir, tmp_path) -> None:
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    for path in tokenizer_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    _edit_json(
        folder / "tokenizer_config.json",
        tokenizer_class="SaferlCustomTokenizer",
        auto_map={"AutoTokenizer": ["custom_tokenizer.SaferlCustomTokenizer", None]},
    )
    with pytest.raises(ValueError) as refused:
        load_tokenizer(str(folder))
    message = str(refused.value)
    assert f"{folder}/tokenizer_config.json" in message
    assert "custom_tokenizer.SaferlCustomTokenizer" in message and "'SaferlCustomTokenizer'" in message
    assert "model.trust_remote_code=true" in message


def test_an_auto_map_beside_a_known_model_type_loads_transformers_own_class(llama_dir, tmp_path) -> None:
    # transformers loads LlamaForCausalLM and runs none of the folder's code: nothing to refuse,
    # and no reason to make the user turn code execution on.
    marker = tmp_path / "code_ran"
    folder = _custom_code_folder(llama_dir, "llama", marker)
    check_remote_code(folder, False)
    model, _ = load_policy(folder)
    assert type(model) is LlamaForCausalLM
    assert not marker.exists()


def test_an_unknown_model_type_without_code_is_refused_saying_trust_would_not_help(llama_dir) -> None:
    _edit_json(llama_dir / "config.json", model_type="no_such_model_type")
    with pytest.raises(ValueError, match="would not help") as refused:
        load_policy(llama_dir)
    assert f"{llama_dir}/config.json" in str(refused.value)
    assert "'no_such_model_type'" in str(refused.value)


def _malicious_bin(folder: Path, marker: Path) -> Path:
    """``pytorch_model.bin``: the model's real tensors plus one object whose unpickling creates
    ``marker`` (what a crafted checkpoint would do with a shell command instead)."""
    model = LlamaForCausalLM.from_pretrained(folder)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    state["payload"] = _CreatesMarker(marker)
    path = folder / "pytorch_model.bin"
    torch.save(state, path)
    return path


def test_the_payload_is_real(llama_dir, tmp_path) -> None:
    # What every other pickle test guards against: an unsafe torch.load runs the payload.
    marker = tmp_path / "unsafe_load_ran_it"
    path = _malicious_bin(llama_dir, marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_malicious_pickle_is_never_unpickled(llama_dir, tokenizer, tmp_path) -> None:
    marker = tmp_path / "payload_ran"
    path = _malicious_bin(llama_dir, marker)
    (llama_dir / "model.safetensors").unlink()  # the pickle is the folder's only weight file
    with pytest.raises(pickle.UnpicklingError):
        load_pickled_weights(path)
    for load in (
        lambda: load_policy(llama_dir),
        lambda: build_policy(ModelSpec(name_or_path=str(llama_dir)), tokenizer),
        lambda: build_score_model(ModelSpec(name_or_path=str(llama_dir)), tokenizer),
    ):
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            load()  # transformers' torch.load(weights_only=True) refuses the object
    assert not marker.exists()


def test_safetensors_are_preferred_over_a_pickle_beside_them(llama_dir, tmp_path) -> None:
    marker = tmp_path / "payload_ran"
    expected = LlamaForCausalLM.from_pretrained(llama_dir).state_dict()
    _malicious_bin(llama_dir, marker)
    model, _ = load_policy(llama_dir)
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    assert not marker.exists()


def test_a_plain_pickled_state_dict_still_loads_as_tensors(llama_dir) -> None:
    expected = LlamaForCausalLM.from_pretrained(llama_dir).state_dict()
    path = llama_dir / "pytorch_model.bin"
    torch.save(expected, path)
    (llama_dir / "model.safetensors").unlink()
    state = load_pickled_weights(path)
    torch.testing.assert_close(state["lm_head.weight"], expected["lm_head.weight"], rtol=0, atol=0)
    model, _ = load_policy(llama_dir)
    torch.testing.assert_close(model.lm_head.weight, expected["lm_head.weight"], rtol=0, atol=0)


def test_the_hub_setup_refuses_a_score_model_needing_its_own_code(llama_dir, tokenizer, tmp_path) -> None:
    from saferl.setups.hub import require_score_model

    folder = _custom_code_folder(llama_dir, "saferl_custom_llama", tmp_path / "code_ran")
    with pytest.raises(ValueError, match=r"model\.trust_remote_code=true") as refused:
        require_score_model("model.reward_model", ModelSpec(name_or_path=str(folder)), tokenizer)
    assert f"{folder}/config.json" in str(refused.value)
