"""Run by test_multinode.py in a subprocess (it needs its own Ray instance), on one Ray multi-node
test cluster: a head without CPUs and two worker raylets on loopback, 3 CPUs each. Two parts, one
after the other (the cluster's start is most of the cost, so they share it):

1. **Spread groups**: a 2-rank policy group spread over the two workers with STRICT_SPREAD and a
   reference group colocated with it; one train step, one generation and one reference forward.
2. **PPO-Lagrangian**: two iterations of the ``ppo_lag`` learner (``saferl.learners.ppo_lag.run``) on
   the world's pieces with one rank of 1 CPU per role, the six roles (policy, reference, reward
   and cost score models, both critics) sharing four rank processes, which cannot fit on one node
   and are spread over both.

3. **A lost node**: a third worker raylet joins; part 2's PPO-Lagrangian stage runs again with a
   checkpoint after each iteration, and once its second iteration is done (before that checkpoint)
   a worker node holding its rank processes is removed from the cluster. The run goes on by itself
   (:func:`saferl.runtime.recovery.run_with_restarts`, as the CLI runs every job) from the first
   iteration's checkpoint on the nodes left; part 2 is the uninterrupted run it is compared with
   (the same settings and seed: where the ranks run does not change the numbers).

Prints one JSON line: ``{"worker_node_ids": ..., "spread": {...}, "ppo_lag": {...},
"recovered": {...}}``; the second part's rank processes are told apart from the first's by their
Ray actor ids."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import ray
import torch
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

sys.path.insert(0, str(Path(__file__).parent))
from conftest import (  # noqa: E402
    PROMPTS,
    TRAIN_PAIRS,
    left_padded_prompts,
    make_tokenizer,
    sequence_batch,
    tiny_model_spec,
)

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
from saferl.runtime import (
    DeepSpeedSpec,
    GenerationSpec,
    GroupSpec,
    PolicyGroup,
    ReferenceGroup,
    RuntimeSpec,
    init_ray,
    plan_placement,
)
from saferl.runtime.resources import Resources
from saferl.setups.base import CriticStart, ModelScorerSource, Setup


def sft_loss(logprobs: torch.Tensor, batch) -> torch.Tensor:
    return -(logprobs * batch.response_mask).sum(dim=-1).mean()


def rank_host_ids() -> set[str]:
    """Ray actor ids of every rank process so far (dead ones included)."""
    return {a.actor_id for a in list_actors(detail=True, limit=1000) if a.class_name == "RankHost"}


def spread_groups(address: str) -> dict:
    """Part 1: a STRICT_SPREAD policy group and its colocated reference group."""
    runtime_spec = RuntimeSpec(
        address=address,
        placement_strategy="STRICT_SPREAD",
        ship_code=False,
        startup_timeout_s=240.0,
        call_timeout_s=240.0,
        collective_timeout_s=180.0,
    )
    tokenizer = make_tokenizer()
    model_spec = tiny_model_spec(len(tokenizer))
    deepspeed_spec = DeepSpeedSpec(zero_stage=3, micro_batch_size_per_rank=2, learning_rate=1e-2)
    groups = {
        "policy": GroupSpec(num_ranks=2, cpus_per_rank=0.5),
        "reference": GroupSpec(num_ranks=2, cpus_per_rank=0.5, colocate_with="policy"),
    }
    plan = plan_placement(runtime_spec, groups)
    common = {"placement": plan, "wait": False}
    policy = PolicyGroup(model_spec, tokenizer, deepspeed_spec, groups["policy"], runtime_spec, **common)
    reference = ReferenceGroup(model_spec, tokenizer, deepspeed_spec, groups["reference"], runtime_spec, **common)
    batch = sequence_batch(tokenizer, TRAIN_PAIRS)
    before = reference.token_logprobs(batch)
    step = policy.train_step(batch, sft_loss)
    after = policy.token_logprobs(batch)
    generated = policy.generate(left_padded_prompts(tokenizer, PROMPTS), GenerationSpec(max_new_tokens=6, seed=3))
    result = {
        "policy_node_ids": [info.node_id for info in policy.rank_infos],
        "reference_node_ids": [info.node_id for info in reference.rank_infos],
        "backend": policy.rank_infos[0].backend,
        "loss": step.loss,
        "changed": not torch.allclose(before, after),
        "generated_shape": list(generated.sequences.shape),
        "response_tokens": int(generated.response_mask.sum()),
    }
    policy.shutdown()
    reference.shutdown()
    plan.remove()
    return result


def recovered_from_a_lost_node(cluster: Cluster, setup: Setup, settings: PPOLagSettings, resources: Resources,
                               folder: Path) -> dict:
    """Part 3: the run that loses a node (part 2 is its uninterrupted twin)."""
    from dataclasses import replace

    from saferl.learners.run_state import saved_state
    from saferl.runtime.recovery import run_with_restarts

    cluster.add_node(num_cpus=3)
    cluster.wait_for_nodes()
    removed: list[str] = []

    def remove_a_node_after_iteration_2(stage: str, step: int, total: int, metrics: dict) -> None:
        # Called on the driver after each iteration, before its checkpoint: the checkpoint's save
        # then meets the lost ranks, and the run goes on from iteration 1's checkpoint.
        if step != 2 or removed:
            return
        busy = {a.node_id for a in list_actors(detail=True, limit=1000)
                if a.class_name == "RankHost" and a.state == "ALIVE"}
        node = next(node for node in cluster.worker_nodes if node.node_id in busy)
        removed.append(node.node_id)
        cluster.remove_node(node)

    output = RunOutput(folder / "recovered", progress=remove_a_node_after_iteration_2, checkpoint_every=1)
    restarts: list = []
    # After the loss every rank process is started anew; two shared ones (rather than one per
    # role) start sooner and compute the same numbers (tests/runtime/test_pool.py).
    restarted = replace(resources, runtime=replace(resources.runtime, max_single_rank_processes=2))
    recovered = run_with_restarts(
        lambda resume: ppo_lag.run(setup, settings, restarted, replace(output, resume=resume)),
        resume=False, max_restarts=2, saved_state=lambda: saved_state(output.folder), on_restart=restarts.append,
    )
    return {
        "removed_node": removed,
        "restarts": [restart.to_dict() for restart in restarts],
        "recovered": {"history": recovered.history, "multiplier": recovered.multiplier},
    }


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
        init_ray(RuntimeSpec(address=cluster.address, ship_code=False))
        spread = spread_groups(cluster.address)
        earlier_hosts = rank_host_ids()
        runtime = RuntimeSpec(
            address=cluster.address,
            placement_strategy="PACK",
            ship_code=False,  # the nodes share this checkout
            # Six one-rank groups in four processes: more than one 3-CPU node holds, and two
            # process starts fewer than one per group.
            max_single_rank_processes=4,
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
            PPOSettings(iterations=2, prompts_per_iteration=16, kl_coeff=0.5),
            {"kind": "log_gradient_ascent", "initial_value": 1.0, "lr": 0.1, "window": 16}, -0.8,
        )
        resources = Resources(GroupSpec(num_ranks=1, cpus_per_rank=1.0), runtime, DeepSpeedSpec(), seed=0)
        run = ppo_lag.run(setup, settings, resources, RunOutput(folder / "run"))
        part_2_hosts = rank_host_ids() - earlier_hosts
        # The node of each of this part's rank processes (saferl.runtime.pool.RankHost; four for
        # the six roles, none reused from part 1).
        nodes = [a.node_id for a in list_actors(detail=True, limit=1000)
                 if a.class_name == "RankHost" and a.actor_id in part_2_hosts]
        recovered = recovered_from_a_lost_node(cluster, setup, settings, resources, folder)
        result = {
            "worker_node_ids": sorted(node.node_id for node in worker_nodes),
            "spread": spread,
            "ppo_lag": {
                "rank_nodes": nodes,
                "history": run.history,
                "multiplier": run.multiplier,
                "policy_exported": (run.policy_dir / "config.json").is_file(),
            },
            "recovered": recovered,
        }
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(folder, ignore_errors=True)  # the models and the runs' checkpoints


if __name__ == "__main__":
    sys.exit(main())
