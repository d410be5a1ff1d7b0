"""Run by test_multinode.py in a subprocess (it needs its own Ray instance): a Ray multi-node
test cluster on this machine (a head without CPUs and two worker raylets on loopback), a
policy group spread over the two workers with STRICT_SPREAD and a reference group colocated
with it; one train step, one generation and one reference forward. Prints one JSON line."""

from __future__ import annotations

import json
import os
import sys

import ray
import torch
from conftest import (
    PROMPTS,
    TRAIN_PAIRS,
    left_padded_prompts,
    make_tokenizer,
    sequence_batch,
    tiny_model_spec,
)
from ray.cluster_utils import Cluster

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


def sft_loss(logprobs: torch.Tensor, batch) -> torch.Tensor:
    return -(logprobs * batch.response_mask).sum(dim=-1).mean()


def main() -> int:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    worker_nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        runtime_spec = RuntimeSpec(
            address=cluster.address,
            placement_strategy="STRICT_SPREAD",
            startup_timeout_s=240.0,
            call_timeout_s=240.0,
            collective_timeout_s=180.0,
        )
        init_ray(runtime_spec)
        tokenizer = make_tokenizer()
        model_spec = tiny_model_spec(len(tokenizer))
        deepspeed_spec = DeepSpeedSpec(
            zero_stage=3, micro_batch_size_per_rank=2, learning_rate=1e-2
        )
        groups = {
            "policy": GroupSpec(num_ranks=2, cpus_per_rank=0.5),
            "reference": GroupSpec(num_ranks=2, cpus_per_rank=0.5, colocate_with="policy"),
        }
        plan = plan_placement(runtime_spec, groups)
        common = {"placement": plan, "wait": False}
        policy = PolicyGroup(
            model_spec, tokenizer, deepspeed_spec, groups["policy"], runtime_spec, **common
        )
        reference = ReferenceGroup(
            model_spec, tokenizer, deepspeed_spec, groups["reference"], runtime_spec, **common
        )
        batch = sequence_batch(tokenizer, TRAIN_PAIRS)
        before = reference.token_logprobs(batch)
        step = policy.train_step(batch, sft_loss)
        after = policy.token_logprobs(batch)
        generated = policy.generate(
            left_padded_prompts(tokenizer, PROMPTS), GenerationSpec(max_new_tokens=6, seed=3)
        )
        result = {
            "worker_node_ids": sorted(node.node_id for node in worker_nodes),
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
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
