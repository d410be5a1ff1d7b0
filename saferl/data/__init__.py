"""saferl.data: records, loaders, validation, templates and tokenising collators.

* :mod:`~saferl.data.records`: the typed records (prompt, SFT example, preference pair, safety
  preference pair in the PKU-SafeRLHF format).
* :mod:`~saferl.data.loading` / :mod:`~saferl.data.sources`: load a hub dataset (pinned by
  ``revision``) or a local ``.json``/``.jsonl``/``.parquet`` file or folder through ``datasets``,
  with field maps; :mod:`~saferl.data.writing` writes records back.
* :mod:`~saferl.data.validation`: per-record checks with :class:`DataError` messages that name the
  source, record and field; strict or skip-and-report.
* :mod:`~saferl.data.templates` and :mod:`~saferl.data.collators`: prompt templates and padded
  tensor batches with exact response masks.

The built-in synthetic task lives in :mod:`saferl.data.world`.
"""

from __future__ import annotations

from saferl.data.errors import DataError, ErrorReason
from saferl.data.records import (
    PreferencePair,
    PromptRecord,
    Record,
    SafetyPreferencePair,
    SFTExample,
)
from saferl.data.validation import ValidationReport, validate_record, validate_records

# Loading and writing import the `datasets` library (about 0.6 s), the templates and collators
# tokenise, and the batches are torch tensors; they are imported on first use (PEP 562), so that the
# runtime's workers, which only move batches, start without `datasets`, and the config's validation
# (the records, the world's light settings) without torch.
_LAZY = {
    "PairBatch": "saferl.data.batches",
    "PromptBatch": "saferl.data.batches",
    "SequenceBatch": "saferl.data.batches",
    "collate_preference_pairs": "saferl.data.collators",
    "collate_prompts": "saferl.data.collators",
    "collate_safety_pairs": "saferl.data.collators",
    "collate_sequences": "saferl.data.collators",
    "SAFE_RLHF_TEMPLATE": "saferl.data.templates",
    "TEMPLATE_NAMES": "saferl.data.templates",
    "format_prompt": "saferl.data.templates",
    "response_separator": "saferl.data.templates",
    "LoadedDataset": "saferl.data.loading",
    "PairwiseDataset": "saferl.data.loading",
    "PreferenceDataset": "saferl.data.loading",
    "PromptDataset": "saferl.data.loading",
    "SFTDataset": "saferl.data.loading",
    "load_pairwise_dataset": "saferl.data.loading",
    "load_preference_dataset": "saferl.data.loading",
    "load_prompt_dataset": "saferl.data.loading",
    "load_records": "saferl.data.loading",
    "load_sft_dataset": "saferl.data.loading",
    "SUPPORTED_EXTENSIONS": "saferl.data.sources",
    "write_records": "saferl.data.writing",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'saferl.data' has no attribute {name!r}")

__all__ = [
    # records
    "PromptRecord",
    "SFTExample",
    "PreferencePair",
    "SafetyPreferencePair",
    "Record",
    # errors and validation
    "DataError",
    "ErrorReason",
    "ValidationReport",
    "validate_record",
    "validate_records",
    # loading and writing
    "SUPPORTED_EXTENSIONS",
    "LoadedDataset",
    "PreferenceDataset",
    "PairwiseDataset",
    "SFTDataset",
    "PromptDataset",
    "load_preference_dataset",
    "load_pairwise_dataset",
    "load_sft_dataset",
    "load_prompt_dataset",
    "load_records",
    "write_records",
    # templates
    "SAFE_RLHF_TEMPLATE",
    "TEMPLATE_NAMES",
    "format_prompt",
    "response_separator",
    # collators
    "PromptBatch",
    "SequenceBatch",
    "PairBatch",
    "collate_prompts",
    "collate_sequences",
    "collate_preference_pairs",
    "collate_safety_pairs",
]
