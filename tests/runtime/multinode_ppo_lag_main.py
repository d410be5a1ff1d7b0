"""Run by test_multinode.py in a subprocess (it needs its own Ray instance): one ``ppo_lag``
iteration of the ``ppo_lag`` learner (``saferl.learners.ppo_lag.run``) on the world's pieces on a Ray
multi-node test cluster — a head without CPUs and two worker raylets on loopback, 3 CPUs each —
with one rank of 1 CPU per role, so the six roles (policy, reference, reward and cost score models,
both critics) cannot fit on one node and are spread over both. Prints one JSON line: each worker
actor's node id (from Ray's state API, dead actors included) and the iteration's metrics."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import ray
import torch
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from saferl.data.world import (
    ReferenceConfig,
    build_world_tokenizer,
    train_reference_policy,
    world_prompts,
)
from saferl.data.world.exact import MAX_RESPONSE_TOKENS
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners import ppo_lag
from saferl.learners.output import RunOutput
from saferl.learners.ppo_lag import PPOLagSettings, PPOSettings
from saferl.models import (
    ModelSpec,
    TinyModelConfig,
    build_score_model,
    save_policy,
    save_score_model,
)
from saferl.runtime import DeepSpeedSpec, GenerationSpec, GroupSpec, RuntimeSpec, init_ray
from saferl.runtime.resources import Resources
from saferl.setups.base import CriticStart, ModelScorerSource, Setup


def main() -> int:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    folder = Path(tempfile.mkdtemp(prefix="multinode_ppo_lag_"))
    tokenizer = build_world_tokenizer()
    reference_config = ReferenceConfig(num_examples=200, steps=10, batch_size=32)
    model, _ = train_reference_policy(reference_config, tokenizer)
    save_policy(model, tokenizer, folder / "sft")
    tiny = ModelSpec(tiny=TinyModelConfig(vocab_size=len(tokenizer), hidden_size=32, num_layers=1,
                                          num_heads=2, intermediate_size=64, max_position_embeddings=32))
    for seed, kind in enumerate(("reward", "cost"), start=1):
        torch.manual_seed(seed)
        save_score_model(build_score_model(tiny, tokenizer), tokenizer, folder / kind, kind=kind)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    worker_nodes = [cluster.add_node(num_cpus=3) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        runtime = RuntimeSpec(
            address=cluster.address,
            placement_strategy="PACK",
            ship_code=False,  # the nodes share this checkout
            startup_timeout_s=300.0,
            call_timeout_s=300.0,
            collective_timeout_s=240.0,
        )
        init_ray(runtime)
        sft = ModelSpec(name_or_path=str(folder / "sft"))
        setup = Setup(
            name="world", policy=sft, tokenizer=tokenizer, template=WORLD_TEMPLATE, max_length=MAX_SEQUENCE_LENGTH,
            max_prompt_length=MAX_SEQUENCE_LENGTH, generation=GenerationSpec(max_new_tokens=MAX_RESPONSE_TOKENS),
            prompts=[prompt.text for prompt in world_prompts()],
            reward=ModelScorerSource(ModelSpec(name_or_path=str(folder / "reward")), "reward"),
            costs=(ModelScorerSource(ModelSpec(name_or_path=str(folder / "cost")), "cost"),),
            reward_critic=CriticStart(sft, init_from=str(folder / "reward")),
            cost_critics=(CriticStart(sft, init_from=str(folder / "cost")),),
        )
        settings = PPOLagSettings(
            PPOSettings(iterations=1, prompts_per_iteration=16, kl_coeff=0.5),
            {"kind": "log_gradient_ascent", "initial_value": 1.0, "lr": 0.1, "window": 16}, -0.8,
        )
        resources = Resources(GroupSpec(num_ranks=1, cpus_per_rank=1.0), runtime, DeepSpeedSpec(), seed=0)
        run = ppo_lag.run(setup, settings, resources, RunOutput(folder / "run"))
        # The node of each rank process (saferl.runtime.pool.RankHost; one per role here, since
        # the six groups start at once and none is reused).
        nodes = [a.node_id for a in list_actors(detail=True, limit=1000) if a.class_name == "RankHost"]
        result = {
            "worker_node_ids": sorted(node.node_id for node in worker_nodes),
            "rank_nodes": nodes,
            "history": run.history,
            "multiplier": run.multiplier,
            "policy_exported": (run.policy_dir / "config.json").is_file(),
        }
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
