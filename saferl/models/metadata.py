"""What kind of score model a checkpoint holds, recorded in its Hugging Face config.

A saved score model's ``config.json`` carries, besides the standard fields,

* ``id2label`` / ``label2id``: ``{0: "reward"}`` for one output, ``{0: "cost_0", 1: "cost_1"}``
  for several, so plain transformers code sees meaningful label names;
* ``saferl``: ``{"kind": "reward" | "cost" | "critic" | "score", "num_outputs": m}``.

Both are ignored by transformers itself, so the checkpoint still loads with
``AutoModelForSequenceClassification.from_pretrained(path)``.
"""

from __future__ import annotations

from torch import nn
from transformers import PretrainedConfig

from saferl.models.scoring import unwrap_model

__all__ = ["SCORE_KINDS", "score_model_kind", "set_config_score_metadata", "set_score_metadata"]

#: The kinds of score model saferl records. ``"score"`` is a score model of unstated use.
SCORE_KINDS: tuple[str, ...] = ("reward", "cost", "critic", "score")


def set_score_metadata(model: nn.Module, kind: str, num_outputs: int) -> None:
    """Record ``kind`` and ``num_outputs`` in the model's config (in place).

    Raises:
        ValueError: when ``kind`` is not one of :data:`SCORE_KINDS`.
    """
    set_config_score_metadata(unwrap_model(model).config, kind, num_outputs)


def set_config_score_metadata(config: PretrainedConfig, kind: str, num_outputs: int) -> None:
    """:func:`set_score_metadata` on a bare config (e.g. to relabel a saved checkpoint).

    Raises:
        ValueError: when ``kind`` is not one of :data:`SCORE_KINDS`.
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"score model kind must be one of {list(SCORE_KINDS)}, got {kind!r}")
    if num_outputs == 1:
        labels = [kind]
    else:
        labels = [f"{kind}_{i}" for i in range(num_outputs)]
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.saferl = {"kind": kind, "num_outputs": num_outputs}


def score_model_kind(model: nn.Module) -> str | None:
    """The kind recorded by :func:`set_score_metadata`, or None when none was recorded."""
    meta = getattr(unwrap_model(model).config, "saferl", None)
    if isinstance(meta, dict):
        kind = meta.get("kind")
        return kind if isinstance(kind, str) else None
    return None
