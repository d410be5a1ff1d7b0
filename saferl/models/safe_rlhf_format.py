"""Reading safe-rlhf score checkpoints (``LlamaForScore`` & co.) as saferl score models.

The published Safe RLHF reward and cost models (``PKU-Alignment/beaver-7b-v1.0-reward``,
``PKU-Alignment/beaver-7b-v1.0-cost``) are checkpoints of safe-rlhf's own ``*ForScore`` classes
(loaded there with ``safe_rlhf.models.AutoModelForScore``), not transformers
``*ForSequenceClassification`` ones. Their on-disk format, as written by safe-rlhf
(``safe_rlhf/models/score_model/__init__.py``: ``ScoreModelMixin``;
``safe_rlhf/models/score_model/llama/modeling_llama.py``: ``LlamaForScore``;
``safe_rlhf/models/normalizer.py``: ``Normalizer``):

* ``config.json``: the backbone's transformers config (``model_type`` e.g. ``"llama"``) with
  ``architectures: ["LlamaForScore"]`` and the score-head keys ``score_dim`` (outputs ``m``),
  ``bias`` (safe-rlhf 2023, default false) or ``score_bias`` (later versions, default true, the
  bias starting at zero), ``score_type`` (``"reward"``, ``"cost"`` or ``"critic"``),
  ``do_normalize``, ``normalizer_type`` (``"RunningMeanStd"``, ``"ExponentialMovingAverage"`` or
  null), ``momentum`` (EMA only), and after training ``mean`` / ``var`` (lists of ``m`` floats);
* weights (``model.safetensors`` / ``pytorch_model.bin``, possibly sharded with an index):
  the backbone under its usual prefix (``model.*`` for Llama), the head ``score_head.weight``
  ``(m, hidden)`` and ``score_head.bias`` ``(m,)`` when the head has a bias, and the normalizer's
  buffers ``normalizer.mean`` ``(m,)``, ``normalizer.var`` ``(m,)``, ``normalizer.count`` ``(1,)``;
* the end score is the head applied to the backbone's last hidden state at the last position
  where ``attention_mask`` is set (``m.nonzero()[-1]`` per row), then, only when
  ``do_normalize`` is true, passed through the normalizer: ``(s − mean) / (std + 1e-8)``
  (``"affine"``, score type reward), ``s / (std + 1e-8)`` (``"scale"``, cost) or ``s``
  (``"identity"``, critic).

saferl's score model (docs/algorithms.md §3) is the transformers ``*ForSequenceClassification`` of
the same backbone: identical backbone weights, head ``score.weight = score_head.weight``, end
score at the last real token by the mask (:func:`saferl.models.end_scores`), so the scores are
the same numbers. Two things do not carry over and are refused with a ``ValueError`` naming the
file, never silently dropped:

* a non-zero ``score_head.bias``: saferl's heads are bias-free (``nn.Linear(bias=False)`` in
  every transformers ``*ForSequenceClassification`` of a causal-LM family, and
  ``init_score_head_`` / the critic builder rely on it), and a bias cannot be folded into a
  bias-free linear map of the hidden state. An all-zero bias (safe-rlhf's initial value) is
  dropped, which changes no score;
* ``do_normalize: true`` with a normaliser that changes scores (score types reward and cost):
  the affine map needs a bias for the same reason. (safe-rlhf's own PPO scripts override the
  flag with ``--normalize_reward`` / ``--normalize_cost``, default false, so folding the scale
  alone would not be faithful to them either.) The normaliser's buffers are otherwise unused.

:func:`load_safe_rlhf_score_model` is what :func:`saferl.models.build_score_model` and
:func:`saferl.models.build_critic` call when a checkpoint's config names a ``*ForScore``
architecture, for a local folder or a hub name alike (transformers downloads the files).
:func:`convert_safe_rlhf_score_model` writes a standard saferl / Hugging Face score-model folder.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
from transformers.utils import cached_file

from saferl.models.metadata import set_config_score_metadata
from saferl.models.untrusted import check_remote_code, load_pickled_weights

__all__ = [
    "SAFE_RLHF_CONFIG_KEYS",
    "check_safe_rlhf_score_config",
    "convert_safe_rlhf_score_model",
    "is_safe_rlhf_score_config",
    "load_safe_rlhf_score_model",
    "safe_rlhf_score_dim",
]

logger = logging.getLogger(__name__)

#: The keys safe-rlhf's ``ScoreModelMixin.init_score_head`` (and training) adds to ``config.json``.
#: They are removed from a converted config.
SAFE_RLHF_CONFIG_KEYS: tuple[str, ...] = (
    "score_dim",
    "bias",
    "score_bias",
    "score_type",
    "do_normalize",
    "normalizer_type",
    "normalize_function",
    "momentum",
    "mean",
    "var",
)

#: ``score_type`` -> (saferl score-model kind, safe-rlhf normalize function).
_SCORE_TYPES: dict[str, tuple[str, str]] = {
    "reward": ("reward", "affine"),
    "cost": ("cost", "scale"),
    "critic": ("critic", "identity"),
}

#: Weight files in transformers' order of preference: single file first, then a sharded index.
_WEIGHT_FILES: tuple[str, ...] = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

#: Tokenizer files copied as they are by the conversion (whichever the source has).
_TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)

_HEAD_PREFIX = "score_head."
#: ``from_pretrained(key_mapping=...)`` renaming of the head: ``score_head.*`` -> ``score.*``.
_HEAD_KEY_MAPPING: dict[str, str] = {r"^score_head\.": "score."}
_NORMALIZER_PREFIX = "normalizer."


def is_safe_rlhf_score_config(config: PretrainedConfig) -> bool:
    """Whether ``config`` is that of a safe-rlhf score model (an architecture ``*ForScore``,
    e.g. ``LlamaForScore``)."""
    return any(name.endswith("ForScore") for name in config.architectures or [])


def safe_rlhf_score_dim(config: PretrainedConfig) -> int:
    """Number of score outputs ``m`` of a safe-rlhf config (``score_dim``, default 1 as in
    safe-rlhf)."""
    return int(getattr(config, "score_dim", 1) or 1)


def _where(source: str | Path, filename: str) -> str:
    """How an error names a file of ``source`` (a folder path or a hub name)."""
    return f"{str(source).rstrip('/')}/{filename}"


def check_safe_rlhf_score_config(config: PretrainedConfig, source: str | Path) -> None:
    """Refuse what a safe-rlhf config asks for that saferl's score models cannot reproduce.

    Checks only ``config.json`` (no weights are read): the score type is known, the backbone has
    a transformers sequence-classification class, and ``do_normalize`` is off (or the
    normaliser is the identity, score type ``"critic"``).

    Raises:
        ValueError: naming ``<source>/config.json``, the key and the value.
    """
    where = _where(source, "config.json")
    if not is_safe_rlhf_score_config(config):
        raise ValueError(
            f"{where}: architectures {list(config.architectures or [])} name no safe-rlhf score "
            "model (expected e.g. ['LlamaForScore'])"
        )
    score_type = getattr(config, "score_type", "reward")
    if score_type not in _SCORE_TYPES:
        raise ValueError(
            f"{where}: score_type {score_type!r} is not one of safe-rlhf's {list(_SCORE_TYPES)}"
        )
    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise ValueError(
            f"{where}: model_type {config.model_type!r} has no transformers "
            "*ForSequenceClassification class to load this score model as"
        )
    score_dim = safe_rlhf_score_dim(config)
    if score_dim < 1:
        raise ValueError(f"{where}: score_dim must be at least 1, got {score_dim}")
    normalize_function = _SCORE_TYPES[score_type][1]
    if getattr(config, "do_normalize", False) and normalize_function != "identity":
        raise ValueError(
            f"{where}: do_normalize is true (score_type {score_type!r}, so safe-rlhf returns the "
            f"{normalize_function!r}-normalised score, e.g. (s - mean) / (std + 1e-8) with the "
            "normalizer.mean/var buffers); saferl's score heads are bias-free linear maps "
            "(docs/algorithms.md §3) and do not apply a normaliser, so the scores would differ. "
            "Set do_normalize to false in config.json to use the raw scores (what safe-rlhf's "
            "PPO scripts use with their default --normalize_reward/--normalize_cost false)"
        )


def _resolve(source: str, filename: str, revision: str | None) -> str | None:
    """Local path of ``filename`` in a folder or hub repo (downloaded), or None when absent."""
    return cached_file(
        source,
        filename,
        revision=revision,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_gated_repo=True,
    )


def _weight_shards(source: str, revision: str | None) -> tuple[str, dict[str, list[str]]]:
    """The weight file's name (for messages) and, per local shard path, the keys to read there.

    Only ``score_head.*`` and ``normalizer.*`` keys are listed; for a single-file checkpoint the
    list is empty and means "look for them in the whole file".
    """
    for filename in _WEIGHT_FILES:
        path = _resolve(source, filename, revision)
        if path is None:
            continue
        if not filename.endswith(".index.json"):
            return filename, {path: []}
        weight_map: dict[str, str] = json.loads(Path(path).read_text())["weight_map"]
        shards: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            if key.startswith((_HEAD_PREFIX, _NORMALIZER_PREFIX)):
                shards.setdefault(shard, []).append(key)
        resolved: dict[str, list[str]] = {}
        for shard, keys in shards.items():
            shard_path = _resolve(source, shard, revision)
            if shard_path is None:
                raise ValueError(
                    f"{_where(source, filename)} names the shard {shard!r}, which is missing"
                )
            resolved[shard_path] = keys
        return filename, resolved
    raise ValueError(
        f"{source}: no weights found (looked for {list(_WEIGHT_FILES)}); a safe-rlhf score "
        "checkpoint holds the backbone, score_head.* and normalizer.* tensors"
    )


def _read_head_tensors(source: str, revision: str | None) -> tuple[str, dict[str, torch.Tensor]]:
    """The ``score_head.*`` and ``normalizer.*`` tensors of a checkpoint and the weight file's
    name, without loading the backbone (safetensors are opened lazily, ``.bin`` memory-mapped)."""
    filename, shards = _weight_shards(source, revision)
    wanted = (_HEAD_PREFIX, _NORMALIZER_PREFIX)
    tensors: dict[str, torch.Tensor] = {}
    for path, keys in shards.items():
        if path.endswith(".safetensors"):
            with safe_open(path, framework="pt") as handle:
                for key in keys or [k for k in handle.keys() if k.startswith(wanted)]:
                    tensors[key] = handle.get_tensor(key)
        else:
            try:
                state = load_pickled_weights(path, mmap=True)
            except RuntimeError:  # legacy (non-zip) torch.save format cannot be memory-mapped
                state = load_pickled_weights(path)
            for key in keys or [k for k in state if k.startswith(wanted)]:
                tensors[key] = state[key].clone()
            del state
    return filename, tensors


def _check_head_tensors(
    source: str, filename: str, tensors: dict[str, torch.Tensor], score_dim: int
) -> None:
    where = _where(source, filename)
    weight = tensors.get(f"{_HEAD_PREFIX}weight")
    if weight is None:
        raise ValueError(
            f"{where} has no score_head.weight: not a trained safe-rlhf score model "
            f"(found {sorted(tensors) or 'no score_head.*/normalizer.* tensors'})"
        )
    if weight.dim() != 2 or weight.shape[0] != score_dim:
        raise ValueError(
            f"{where}: score_head.weight has shape {tuple(weight.shape)}, but config.json has "
            f"score_dim={score_dim} (expected ({score_dim}, hidden_size))"
        )
    bias = tensors.get(f"{_HEAD_PREFIX}bias")
    if bias is not None and bool(torch.count_nonzero(bias)):
        raise ValueError(
            f"{where}: score_head.bias is non-zero ({bias.float().tolist()[:4]}); saferl's score "
            "heads are bias-free linear maps (docs/algorithms.md §3; transformers' "
            "*ForSequenceClassification heads have no bias) and a bias cannot be folded into "
            "one, so this checkpoint's scores cannot be reproduced and it is not loaded"
        )


def _sequence_classification_config(
    config: PretrainedConfig, source: str | Path
) -> PretrainedConfig:
    """The transformers config of the matching ``*ForSequenceClassification`` model."""
    check_safe_rlhf_score_config(config, source)
    kind = _SCORE_TYPES[getattr(config, "score_type", "reward")][0]
    score_dim = safe_rlhf_score_dim(config)
    converted = copy.deepcopy(config)
    for key in SAFE_RLHF_CONFIG_KEYS:
        if key in converted.__dict__:
            delattr(converted, key)
    converted.architectures = [MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES[config.model_type]]
    converted.num_labels = score_dim
    set_config_score_metadata(converted, kind, score_dim)  # id2label / label2id, saferl field
    return converted


def _forget_head_key_mapping(model: PreTrainedModel) -> None:
    """Drop the head renaming from the conversions transformers remembers for saving.

    transformers (5.x) keeps the ``key_mapping`` a model was loaded with (``_weight_conversions``)
    and reverses it in ``save_pretrained``, which would write ``score_head.weight`` again. The
    model is a plain ``*ForSequenceClassification`` now, so it must save as one (saferl's
    exports of score models and of critics started from them, and the conversion).
    """
    conversions = getattr(model, "_weight_conversions", None)
    if conversions is None:
        return
    renaming = [list(_HEAD_KEY_MAPPING), list(_HEAD_KEY_MAPPING.values())]
    model._weight_conversions = [
        conversion
        for conversion in conversions
        if [
            list(getattr(conversion, "source_patterns", [])),
            list(getattr(conversion, "target_patterns", [])),
        ]
        != renaming
    ]


def load_safe_rlhf_score_model(
    source: str | Path,
    *,
    revision: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    trust_remote_code: bool = False,
    num_outputs: int | None = None,
    config: PretrainedConfig | None = None,
) -> PreTrainedModel:
    """Load a safe-rlhf ``*ForScore`` checkpoint as saferl's score model.

    Steps: check ``config.json`` (:func:`check_safe_rlhf_score_config`); read the
    ``score_head.*`` / ``normalizer.*`` tensors and refuse a non-zero bias; load the matching
    transformers ``*ForSequenceClassification`` with ``num_labels = score_dim`` from the same
    files, ``score_head.weight`` mapped to ``score.weight`` (``key_mapping``; the normaliser's
    buffers and a zero bias are left unused); require every backbone weight to be present.

    Args:
        source: local folder or hub name (downloaded by transformers as usual).
        revision: hub revision; ignored for a folder.
        dtype: parameter dtype, or ``"auto"`` for the checkpoint's own.
        trust_remote_code: passed to transformers.
        num_outputs: when set, the number of outputs ``m`` the caller expects.
        config: the already-loaded ``AutoConfig`` of ``source`` (read when None).

    Returns:
        The ``*ForSequenceClassification`` model (eval mode), recorded as kind ``"reward"``,
        ``"cost"`` or ``"critic"`` after ``score_type``.

    Raises:
        ValueError: a refused checkpoint (bias, normaliser, missing weights, output count),
            naming the file.
    """
    source = str(source)
    check_remote_code(source, trust_remote_code, revision=revision)
    if config is None:
        config = AutoConfig.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
    converted = _sequence_classification_config(config, source)
    score_dim = converted.num_labels
    if num_outputs is not None and num_outputs != score_dim:
        raise ValueError(
            f"{source} is a safe-rlhf score model with {score_dim} outputs (score_dim in "
            f"config.json), but {num_outputs} were requested (num_outputs)"
        )
    filename, tensors = _read_head_tensors(source, revision)
    _check_head_tensors(source, filename, tensors, score_dim)
    model, loading_info = AutoModelForSequenceClassification.from_pretrained(
        source,
        config=converted,
        revision=revision,
        trust_remote_code=trust_remote_code,
        dtype=dtype,
        key_mapping=_HEAD_KEY_MAPPING,
        output_loading_info=True,
    )
    _forget_head_key_mapping(model)
    missing = sorted(loading_info["missing_keys"])
    if missing:
        raise ValueError(
            f"{_where(source, filename)} lacks weights of a {converted.architectures[0]} "
            f"(its backbone names may differ from transformers'): {missing[:5]}"
        )
    model.eval()
    return model


def _existing_entries(folder: Path) -> list[str]:
    return sorted(str(entry) for entry in folder.iterdir()) if folder.is_dir() else []


def _copy_tokenizer_files(source: str, revision: str | None, destination: Path) -> list[str]:
    copied: list[str] = []
    for filename in _TOKENIZER_FILES:
        path = _resolve(source, filename, revision)
        if path is not None:
            shutil.copyfile(path, destination / filename)
            copied.append(filename)
    return copied


def _remove_stale_weights(folder: Path, patterns: Iterable[str]) -> None:
    for pattern in patterns:
        for stale in folder.glob(pattern):
            stale.unlink()


def convert_safe_rlhf_score_model(
    source: str | Path,
    destination: str | Path,
    overwrite: bool = False,
    *,
    revision: str | None = None,
) -> Path:
    """Write a safe-rlhf score checkpoint as a standard saferl / Hugging Face score model.

    The folder loads with plain ``AutoModelForSequenceClassification.from_pretrained`` and with
    :func:`saferl.models.load_score_model` (same end scores as the source), keeps the source's
    dtype, records the kind from ``score_type`` and drops the safe-rlhf config keys
    (:data:`SAFE_RLHF_CONFIG_KEYS`). The source's tokenizer files are copied unchanged.

    Args:
        source: safe-rlhf checkpoint (local folder or hub name).
        destination: folder to write; created if missing.
        overwrite: allow writing into a non-empty folder (its old weight files are removed).
        revision: hub revision of ``source``.

    Returns:
        The destination folder.

    Raises:
        ValueError: ``destination`` holds files and ``overwrite`` is False (the error names
            them), ``destination`` is the source folder, or the checkpoint is refused (see
            :func:`load_safe_rlhf_score_model`).
    """
    source = str(source)
    folder = Path(destination).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"cannot convert into {str(folder)!r}: it exists and is not a folder")
    local_source = Path(source).expanduser()
    if local_source.is_dir() and folder.is_dir() and folder.resolve() == local_source.resolve():
        raise ValueError(
            f"convert_safe_rlhf_score_model: destination {str(folder)!r} is the source folder; "
            "choose another folder"
        )
    existing = _existing_entries(folder)
    if existing and not overwrite:
        raise ValueError(
            f"refusing to overwrite {existing[0]!r}"
            + (f" (and {len(existing) - 1} more entries)" if len(existing) > 1 else "")
            + " in the non-empty folder "
            f"{str(folder)!r}; pass overwrite=True or choose another destination"
        )
    # Load (and check) before touching the disk: a refused checkpoint writes nothing.
    model = load_safe_rlhf_score_model(source, revision=revision, dtype="auto")
    folder.mkdir(parents=True, exist_ok=True)
    if existing:
        _remove_stale_weights(
            folder,
            (
                "model*.safetensors",
                "model.safetensors.index.json",
                "pytorch_model*.bin",
                "pytorch_model.bin.index.json",
            ),
        )
    model.save_pretrained(folder)
    copied = _copy_tokenizer_files(source, revision, folder)
    if not copied:
        logger.warning(
            "%s ships no tokenizer files; %s holds the model only (load_score_model needs a "
            "tokenizer next to it)",
            source,
            folder,
        )
    return folder
