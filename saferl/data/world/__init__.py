"""The built-in safety world: a small synthetic, verifiable constrained-RLHF task in words.

* :mod:`~saferl.data.world.vocab`: words, prompts (benign and harmful requests), tokenizer;
* :mod:`~saferl.data.world.ground_truth`: the ground-truth reward and cost, with a real tension;
* :mod:`~saferl.data.world.generator`: SFT demonstrations and PKU-SafeRLHF-format preference pairs;
* :mod:`~saferl.data.world.reference`: the tiny reference LM, SFT-ed on the demonstrations;
* :mod:`~saferl.data.world.exact`: exact mode — all responses enumerated, the exact optimum, and
  exact scoring of any policy.
"""

from saferl.data.world.exact import (
    MAX_RESPONSE_TOKENS,
    ExactResponses,
    ExactWorld,
    PolicyScore,
    build_exact_world,
    cost_limits,
    enumerate_policy_logprobs,
    enumerate_responses,
)
from saferl.data.world.generator import (
    WorldDatasetPaths,
    demonstrator_distribution,
    make_preference_pairs,
    make_sft_examples,
    world_dataset_paths,
    world_statistics,
    write_cost_pairs,
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
    "write_world_datasets",
    "world_statistics",
]
