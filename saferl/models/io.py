"""Saving and loading policies and score models in the standard Hugging Face format.

A saved folder is what ``save_pretrained`` writes for the model and for the tokenizer, so plain
transformers code loads it: ``AutoModelForCausalLM.from_pretrained(path)`` for a policy,
``AutoModelForSequenceClassification.from_pretrained(path)`` for a score model (same end scores
as :func:`saferl.models.end_scores`). Score models also record their kind and number of outputs
in ``config.json`` (see :mod:`saferl.models.metadata`).

LoRA: by default the adapters are merged into the base weights before saving (``merge_lora=True``)
so the folder is an ordinary full checkpoint that needs neither peft nor the base model. Merging
works on a deep copy, so the model being trained keeps its adapters; the copy briefly doubles the
model's memory. With ``merge_lora=False`` only the peft adapter (plus resized embeddings, when the
vocabulary grew) is written; loading it needs the base checkpoint named in
``adapter_config.json``, so the base must have come from a hub name or a folder, not a tiny config.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedTokenizerBase,
)

from saferl.models.metadata import score_model_kind, set_score_metadata
from saferl.models.scoring import is_peft_model, score_head
from saferl.models.spec import torch_dtype
from saferl.models.tokenizers import load_tokenizer
from saferl.models.untrusted import check_remote_code

__all__ = [
    "ADAPTER_METADATA_FILE",
    "load_policy",
    "load_score_model",
    "save_policy",
    "save_score_model",
]

#: Written next to a peft adapter (``merge_lora=False``): what to load the base model as.
ADAPTER_METADATA_FILE = "saferl_adapter.json"

# Files whose presence changes how a folder loads; ``overwrite=True`` removes stale ones first.
_STALE_PATTERNS: tuple[str, ...] = (
    "adapter_config.json",
    "adapter_model.*",
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    ADAPTER_METADATA_FILE,
)


def _prepare_dir(path: str | Path, overwrite: bool) -> Path:
    """Create ``path``; refuse a non-empty folder unless ``overwrite``."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"cannot save a model to {str(folder)!r}: it exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise ValueError(
                f"refusing to save a model into the non-empty folder {str(folder)!r}; "
                "pass overwrite=True or choose another path"
            )
        for pattern in _STALE_PATTERNS:
            for stale in folder.glob(pattern):
                stale.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _save(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    folder: Path,
    merge_lora: bool,
    adapter_metadata: dict[str, object],
) -> None:
    if is_peft_model(model):
        if merge_lora:
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(folder)
        else:
            base_name = model.peft_config[model.active_adapter].base_model_name_or_path
            if not base_name:
                raise ValueError(
                    "merge_lora=False needs a base model loadable by name or path, but this "
                    "model was built from a tiny config; save with merge_lora=True"
                )
            model.save_pretrained(folder)
            (folder / ADAPTER_METADATA_FILE).write_text(json.dumps(adapter_metadata, indent=2))
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def save_policy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    overwrite: bool = False,
    merge_lora: bool = True,
) -> Path:
    """Save a causal-LM policy and its tokenizer with ``save_pretrained``.

    Args:
        model: a ``PreTrainedModel`` or a LoRA ``PeftModel``.
        tokenizer: saved alongside, so the folder is self-contained.
        path: target folder; created if missing.
        overwrite: allow writing into a non-empty folder (stale weight files are removed).
        merge_lora: merge LoRA adapters into the weights (default) or save the adapter only.

    Returns:
        The folder.

    Raises:
        ValueError: ``path`` is non-empty and ``overwrite`` is False.
    """
    folder = _prepare_dir(path, overwrite)
    _save(model, tokenizer, folder, merge_lora, {"role": "policy"})
    return folder


def save_score_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    kind: str | None = None,
    overwrite: bool = False,
    merge_lora: bool = True,
) -> Path:
    """Save a reward/cost model or critic and its tokenizer with ``save_pretrained``.

    Args:
        model: a sequence-classification ``PreTrainedModel`` or a LoRA ``PeftModel`` around one.
        tokenizer: saved alongside.
        path: target folder; created if missing.
        kind: ``"reward"``, ``"cost"``, ``"critic"`` or ``"score"``, recorded in the config
            (``id2label`` and a ``saferl`` field); None keeps the model's recorded kind (or
            ``"score"``).
        overwrite: allow writing into a non-empty folder (stale weight files are removed).
        merge_lora: merge LoRA adapters into the weights (default) or save the adapter only.

    Returns:
        The folder.

    Raises:
        ValueError: ``path`` is non-empty and ``overwrite`` is False; unknown ``kind``.
    """
    num_outputs = score_head(model).out_features
    kind = kind or score_model_kind(model) or "score"
    # Validate before touching the disk: an unknown kind raises here.
    set_score_metadata(model, kind, num_outputs)
    folder = _prepare_dir(path, overwrite)
    _save(
        model,
        tokenizer,
        folder,
        merge_lora,
        {"role": "score", "kind": kind, "num_outputs": num_outputs},
    )
    return folder


def _load_adapter(
    folder: Path,
    auto_class: type,
    dtype: str,
    trust_remote_code: bool,
    extra_kwargs: dict[str, object],
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    from peft import PeftConfig, PeftModel  # an adapter folder: peft is needed from here on

    tokenizer = load_tokenizer(str(folder), trust_remote_code=trust_remote_code)
    base_name = PeftConfig.from_pretrained(str(folder)).base_model_name_or_path
    if base_name:  # the base the adapter names is a model input too
        check_remote_code(base_name, trust_remote_code)
    base = auto_class.from_pretrained(
        base_name, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, **extra_kwargs
    )
    if len(tokenizer) > base.get_input_embeddings().num_embeddings:
        # The adapter folder holds the grown embedding rows; make the shapes match to load them.
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    base.config.pad_token_id = tokenizer.pad_token_id
    base.config.eos_token_id = tokenizer.eos_token_id
    return PeftModel.from_pretrained(base, str(folder)), tokenizer


def _existing_folder(path: str | Path, trust_remote_code: bool) -> Path:
    """``path`` as a folder, refused when missing or when it needs its own code untrusted."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"no saved model at {str(folder)!r}: not a folder")
    check_remote_code(folder, trust_remote_code)
    return folder


def load_policy(
    path: str | Path, dtype: str = "float32", trust_remote_code: bool = False
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load a policy saved by :func:`save_policy` (or any causal-LM folder with a tokenizer).

    Returns:
        ``(model, tokenizer)``; the model is a ``PeftModel`` for an adapter-only folder.
    """
    folder = _existing_folder(path, trust_remote_code)
    if (folder / "adapter_config.json").exists():
        return _load_adapter(folder, AutoModelForCausalLM, dtype, trust_remote_code, {})
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
    )
    return model, load_tokenizer(str(folder), trust_remote_code=trust_remote_code)


def load_score_model(
    path: str | Path, dtype: str = "float32", trust_remote_code: bool = False
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load a score model saved by :func:`save_score_model` (or any transformers
    sequence-classification folder with a tokenizer).

    The recorded kind is available as ``saferl.models.score_model_kind(model)``.

    Returns:
        ``(model, tokenizer)``; the model is a ``PeftModel`` for an adapter-only folder.
    """
    folder = _existing_folder(path, trust_remote_code)
    if (folder / "adapter_config.json").exists():
        meta_path = folder / ADAPTER_METADATA_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        num_outputs = int(meta.get("num_outputs", 1))
        model, tokenizer = _load_adapter(
            folder,
            AutoModelForSequenceClassification,
            dtype,
            trust_remote_code,
            {"num_labels": num_outputs},
        )
        set_score_metadata(model, str(meta.get("kind", "score")), num_outputs)
        return model, tokenizer
    from transformers import AutoConfig

    from saferl.models.safe_rlhf_format import is_safe_rlhf_score_config, load_safe_rlhf_score_model

    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    if is_safe_rlhf_score_config(config):  # a safe-rlhf ``*ForScore`` checkpoint (e.g. Beaver)
        model = load_safe_rlhf_score_model(
            str(folder), dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, config=config
        )
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
        )
    return model, load_tokenizer(str(folder), trust_remote_code=trust_remote_code)
