"""The built-in safety world: a small synthetic, verifiable constrained-RLHF task in words.

* :mod:`~saferl.data.world.vocab`: words, prompts (benign and harmful requests), tokenizer;
* :mod:`~saferl.data.world.ground_truth`: the ground-truth reward and cost, with a real tension;
* :mod:`~saferl.data.world.generator`: SFT demonstrations and PKU-SafeRLHF-format preference pairs;
* :mod:`~saferl.data.world.reference`: the tiny reference LM, SFT-ed on the demonstrations;
* :mod:`~saferl.data.world.exact`: exact mode — all responses enumerated, the exact optimum, and
  exact scoring of any policy.
* :mod:`~saferl.data.world.settings`: the names, limits and reference shape a config is checked
  against (no torch).

The names below load on first use (PEP 562 ``__getattr__``), so that the light
:mod:`~saferl.data.world.settings` imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saferl.data.world.exact import (
        MAX_RESPONSE_TOKENS,
        ExactResponses,
        ExactWorld,
        PolicyScore,
        build_exact_world,
        cost_limits,
        enumerate_policy_logprobs,
        enumerate_responses,
        ground_truth_tables,
    )
    from saferl.data.world.generator import (
        WorldDatasetPaths,
        demonstrator_distribution,
        make_preference_pairs,
        make_sft_examples,
        world_dataset_paths,
        world_statistics,
        write_cost_pairs,
        write_demonstrations,
        write_pair_datasets,
        write_world_datasets,
    )
    from saferl.data.world.ground_truth import (
        COST_NAMES,
        check_cost_names,
        cost_function,
        ground_truth_cost,
        ground_truth_refusal,
        ground_truth_reward,
        is_safe,
        response_features,
    )
    from saferl.data.world.reference import (
        ReferenceConfig,
        load_or_train_reference_policy,
        train_reference_policy,
        world_model_spec,
    )
    from saferl.data.world.vocab import (
        BENIGN_TOPICS,
        EOS,
        HARMFUL_TOPICS,
        VOCABULARY,
        WorldPrompt,
        build_world_tokenizer,
        world_prompts,
    )

# name -> the module that defines it
_EXPORTS = {
    "MAX_RESPONSE_TOKENS": "saferl.data.world.settings",
    "ExactResponses": "saferl.data.world.exact",
    "ExactWorld": "saferl.data.world.exact",
    "PolicyScore": "saferl.data.world.exact",
    "build_exact_world": "saferl.data.world.exact",
    "cost_limits": "saferl.data.world.settings",
    "enumerate_policy_logprobs": "saferl.data.world.exact",
    "enumerate_responses": "saferl.data.world.exact",
    "ground_truth_tables": "saferl.data.world.exact",
    "WorldDatasetPaths": "saferl.data.world.generator",
    "demonstrator_distribution": "saferl.data.world.generator",
    "make_preference_pairs": "saferl.data.world.generator",
    "make_sft_examples": "saferl.data.world.generator",
    "world_dataset_paths": "saferl.data.world.generator",
    "world_statistics": "saferl.data.world.generator",
    "write_cost_pairs": "saferl.data.world.generator",
    "write_demonstrations": "saferl.data.world.generator",
    "write_pair_datasets": "saferl.data.world.generator",
    "write_world_datasets": "saferl.data.world.generator",
    "COST_NAMES": "saferl.data.world.settings",
    "check_cost_names": "saferl.data.world.settings",
    "cost_function": "saferl.data.world.ground_truth",
    "ground_truth_cost": "saferl.data.world.ground_truth",
    "ground_truth_refusal": "saferl.data.world.ground_truth",
    "ground_truth_reward": "saferl.data.world.ground_truth",
    "is_safe": "saferl.data.world.ground_truth",
    "response_features": "saferl.data.world.ground_truth",
    "ReferenceConfig": "saferl.data.world.settings",
    "load_or_train_reference_policy": "saferl.data.world.reference",
    "train_reference_policy": "saferl.data.world.reference",
    "world_model_spec": "saferl.data.world.reference",
    "BENIGN_TOPICS": "saferl.data.world.vocab",
    "EOS": "saferl.data.world.vocab",
    "HARMFUL_TOPICS": "saferl.data.world.vocab",
    "VOCABULARY": "saferl.data.world.vocab",
    "WorldPrompt": "saferl.data.world.vocab",
    "build_world_tokenizer": "saferl.data.world.vocab",
    "world_prompts": "saferl.data.world.vocab",
}

__all__ = [
    "BENIGN_TOPICS",
    "COST_NAMES",
    "EOS",
    "HARMFUL_TOPICS",
    "MAX_RESPONSE_TOKENS",
    "VOCABULARY",
    "ExactResponses",
    "ExactWorld",
    "PolicyScore",
    "ReferenceConfig",
    "WorldDatasetPaths",
    "WorldPrompt",
    "build_exact_world",
    "build_world_tokenizer",
    "check_cost_names",
    "cost_function",
    "cost_limits",
    "demonstrator_distribution",
    "enumerate_policy_logprobs",
    "enumerate_responses",
    "ground_truth_cost",
    "ground_truth_refusal",
    "ground_truth_reward",
    "ground_truth_tables",
    "is_safe",
    "load_or_train_reference_policy",
    "make_preference_pairs",
    "make_sft_examples",
    "response_features",
    "train_reference_policy",
    "world_model_spec",
    "world_prompts",
    "world_dataset_paths",
    "write_cost_pairs",
    "write_demonstrations",
    "write_pair_datasets",
    "write_world_datasets",
    "world_statistics",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
