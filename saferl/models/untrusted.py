"""Model folders are untrusted inputs: no checkpoint code runs and no weights unpickle objects
unless the user asked for it.

**Custom code.** A checkpoint can name its own Python classes in ``auto_map`` (``config.json``
for the config and models, ``tokenizer_config.json`` for the tokenizer); transformers imports and
runs them when ``trust_remote_code=True``. :func:`check_remote_code` reads those two files before
any load and refuses a folder that needs its own code (an ``auto_map`` for a ``model_type`` or
``tokenizer_class`` transformers has no class of), naming the file, the key found and the config
key that allows it. Every load path calls it first (builders, :mod:`saferl.models.io`, tokenizers,
the safe-rlhf reader, the hub setup's checks, judges and graders), so the refusal comes before
transformers' own (whose message does not name saferl's key) and before any actor starts. A hub
repo is read from the local cache only (never downloaded for the check): one not downloaded yet
meets transformers' own refusal instead, whose message names its ``trust_remote_code``. An
``auto_map`` next to a ``model_type`` transformers knows is not refused: with
``trust_remote_code=False`` transformers loads its own class and runs none of the folder's code
(refusing would push users to turn on code execution for a model that needs none).

**Weights.** Only safetensors (no code by construction) or ``torch.load(weights_only=True)``
(tensors and plain containers; anything else is an ``UnpicklingError``):

* transformers (5.x, as installed): ``from_pretrained`` prefers ``model.safetensors`` (and its
  sharded index) over ``pytorch_model.bin`` when a folder has both, and reads a ``.bin`` with
  ``torch.load(weights_only=True)`` after refusing torch < 2.6 (CVE-2025-32434: ``weights_only``
  could be bypassed before); peft reads adapters the same way;
* saferl's own reads of a user's ``.bin`` go through :func:`load_pickled_weights` (same rule);
* DeepSpeed's ``load_checkpoint`` unpickles its optimizer-state files with ``weights_only=False``
  and has no option to change that. Those files are this run's own checkpoints in its run folder
  (``saferl.runtime.workers``), never a model input; a run folder is as trusted as the code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import transformers

from saferl.models.spec import TRUST_REMOTE_CODE_KEY

__all__ = ["check_remote_code", "load_pickled_weights"]

logger = logging.getLogger(__name__)

_CONFIG_FILE = "config.json"
_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def _read_json(source: str, filename: str, revision: str | None) -> tuple[str, dict] | None:
    """``filename`` of a local folder or hub repo, parsed, and how messages name it; None when
    it cannot be read here (transformers then reports the problem when it loads)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        path: Path | None = folder / filename
        where = str(path)
    else:
        from transformers.utils import cached_file

        # The cached snapshot only: no network here (an offline node would wait on connection
        # timeouts, tens of seconds per file). A repo not yet downloaded is checked by
        # transformers itself, which refuses its code without trust_remote_code as well.
        try:
            resolved = cached_file(
                source,
                filename,
                revision=revision,
                local_files_only=True,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
                _raise_exceptions_for_gated_repo=False,
            )
        except (OSError, ValueError):  # not a hub name, or no such repo
            return None
        path = None if resolved is None else Path(resolved)
        where = f"{source.rstrip('/')}/{filename}"
    if path is None or not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return (where, values) if isinstance(values, dict) else None


def _known_model_type(model_type: object) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return isinstance(model_type, str) and model_type in CONFIG_MAPPING


def _known_tokenizer_class(name: object) -> bool:
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    if not isinstance(name, str):
        return False
    base = name.removesuffix("Fast")
    return any(tokenizer_class_from_name(n) is not None for n in (base, base + "Fast"))


def _how_to_allow(source: str, key: str | None) -> str:
    if key is None:
        return (
            "saferl has no setting to run this model's code; use a checkpoint that transformers "
            "loads with its own classes"
        )
    return (
        f"found {key}=false. Set {key}=true only if you trust the code in {source!r} (read its "
        ".py files first): it runs with this run's permissions"
    )


def check_remote_code(
    source: str | Path,
    trust_remote_code: bool,
    *,
    key: str | None = TRUST_REMOTE_CODE_KEY,
    revision: str | None = None,
) -> None:
    """Refuse a checkpoint that needs its own Python code unless ``trust_remote_code``.

    Reads ``config.json`` and ``tokenizer_config.json`` of ``source`` (a local folder, or a hub
    name through the cache) and loads nothing. With ``trust_remote_code`` it checks nothing: the
    load goes on as transformers does it.

    Args:
        source: local folder or hub name.
        trust_remote_code: the user's setting.
        key: the config key of that setting, named in the error (None: there is none).
        revision: hub revision of ``source``.

    Raises:
        ValueError: ``config.json`` has an ``auto_map`` and a ``model_type`` transformers does
            not know (or none), or an unknown ``model_type`` and no code at all;
            ``tokenizer_config.json`` has an ``auto_map`` for ``AutoTokenizer`` and a
            ``tokenizer_class`` transformers does not know. The message names the file, the
            key and value found, and ``key``.
    """
    if trust_remote_code:
        return
    source = str(source)
    version = transformers.__version__
    model_type = None
    config = _read_json(source, _CONFIG_FILE, revision)
    if config is not None:
        where, values = config
        model_type, auto_map = values.get("model_type"), values.get("auto_map")
        known = _known_model_type(model_type)
        if auto_map and not known:
            raise ValueError(
                f"{where}: auto_map {auto_map!r} names the checkpoint's own Python code, and "
                f"transformers {version} has no class for its model_type {model_type!r}, so "
                f"loading it means importing and running that code; {_how_to_allow(source, key)}"
            )
        if model_type is not None and not known:
            raise ValueError(
                f"{where}: model_type {model_type!r} is not one transformers {version} knows, and "
                "the file names no code for it (no auto_map), so no class can load it (allowing "
                "remote code would not help); expected a transformers model type such as "
                "'llama': upgrade transformers or check the folder"
            )
        if auto_map:
            logger.warning(
                "%s: auto_map %r is not used: transformers loads its own class for model_type %r "
                "and runs none of the checkpoint's code",
                where,
                auto_map,
                model_type,
            )
    tokenizer_config = _read_json(source, _TOKENIZER_CONFIG_FILE, revision)
    if tokenizer_config is not None:
        where, values = tokenizer_config
        auto_map = values.get("auto_map")
        # Older files store [slow, fast] directly; newer ones under "AutoTokenizer".
        names_code = isinstance(auto_map, list) or (
            isinstance(auto_map, dict) and auto_map.get("AutoTokenizer") is not None
        )
        tokenizer_class = values.get("tokenizer_class")
        # transformers uses its own tokenizer when it knows the class or the model type.
        if names_code and not _known_tokenizer_class(tokenizer_class) and not _known_model_type(model_type):
            raise ValueError(
                f"{where}: auto_map {auto_map!r} names the tokenizer's own Python code, and "
                f"transformers {version} has no tokenizer class {tokenizer_class!r}, so loading "
                f"it means importing and running that code; {_how_to_allow(source, key)}"
            )


def load_pickled_weights(path: str | Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A ``torch.save`` weight file (``pytorch_model.bin``) read as tensors only, on CPU.

    ``weights_only=True`` refuses any pickled object other than tensors and plain containers, so
    a crafted file cannot run code. Before torch 2.6 that guard could be bypassed
    (CVE-2025-32434), so such a file is refused there, as transformers does.

    Args:
        path: the file.
        mmap: memory-map it (zip-format files only: torch raises ``RuntimeError`` otherwise).

    Raises:
        ValueError: torch is older than 2.6 (names the file; safetensors needs no such guard).
        pickle.UnpicklingError: the file holds anything but tensors and plain containers.
    """
    from transformers.utils.import_utils import is_torch_greater_or_equal

    if not is_torch_greater_or_equal("2.6"):
        raise ValueError(
            f"{path}: reading a pickled weight file needs torch >= 2.6 (older torch.load can run "
            f"code from it even with weights_only=True, CVE-2025-32434); found torch "
            f"{torch.__version__}. Upgrade torch or give the checkpoint as .safetensors"
        )
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
