"""Benchmark of whole PPO-Lagrangian iterations through the learner itself (``ppo_lag.run``).

The runtime benchmark (``runtime.py``) times each role's call alone; this one times what a
researcher waits for: the loop's eight steps (rollout, scoring, reference log-probs, values,
advantages, actor update, critic updates, multiplier), with every group a real Ray actor and
every model a DeepSpeed engine. Policy, reference, reward model, cost model and the two critics
are Llamas of one shape built from a config (random weights, no download); prompts are random
full-length token strings, so every rollout samples ``--new-tokens`` tokens unless EOS comes
first (it rarely does from a random model over a large vocabulary).

It prints one row per rollout engine: the median over the timed iterations (every iteration
after the first, which warms up) of the iteration's seconds, samples/s and generated tokens/s,
with the generation's time as a share of it (``perf/generate_s``: the loop samples the next rollout,
and scores it, while the critics train, so the share says what generation costs, not what the
iteration waits for). ``--rollout vllm`` runs the same loop with its rollouts from vLLM
engines (``runtime.vllm``; the loop syncs the policy's weights into them after every update), after
checking that sync on one parameter; where the ``vllm`` extra or a GPU is missing, the row says why
instead (the same error a run gets).

CPU smoke run (tiny model)::

    python experiments/bench/ppo_iteration.py --hidden 32 --layers 2 --vocab 512 --batch 8

GPU (one GPU shared by the six roles; bf16; a ~0.47B-parameter Llama)::

    python experiments/bench/ppo_iteration.py --device cuda --hidden 1024 --layers 24 \\
        --heads 16 --vocab 32000 --batch 32 --prompt-len 128 --new-tokens 128
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runtime import ModelSize, synthetic_tokenizer  # noqa: E402

from saferl.learners import ppo_lag  # noqa: E402
from saferl.learners.output import RunOutput  # noqa: E402
from saferl.runtime import (  # noqa: E402
    DeepSpeedSpec,
    GenerationSpec,
    GroupSpec,
    RuntimeSpec,
    VLLMSpec,
    require_vllm,  # noqa: E402
)
from saferl.runtime.resources import Resources  # noqa: E402
from saferl.setups.base import CriticStart, ModelScorerSource, Setup  # noqa: E402

#: Groups of one PPO-Lagrangian run with one cost: policy, reference, reward and cost models, and
#: the reward and cost critics. On one GPU they share it, so each asks for this share.
NUM_ROLES = 6


def random_prompts(tokenizer, count: int, length: int, seed: int) -> list[str]:
    """``count`` random prompts of ``length`` words of the synthetic vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    words = tokenizer.convert_ids_to_tokens(list(range(3, len(tokenizer))))
    ids = torch.randint(0, len(words), (count, length), generator=generator)
    return [" ".join(words[i] for i in row) for row in ids.tolist()]


def bench_setup(size: ModelSize, args: argparse.Namespace) -> Setup:
    """A setup whose six models share one Llama shape; nothing is trained before the loop."""
    tokenizer = synthetic_tokenizer(size.vocab)
    max_length = args.prompt_len + args.new_tokens + 8  # room for the template's separator tokens
    spec = size.spec(max_length)
    if args.device == "cuda":
        spec = replace(spec, dtype="bfloat16")
    return Setup(
        name="bench",
        policy=spec,
        tokenizer=tokenizer,
        template="raw",
        max_length=max_length,
        max_prompt_length=args.prompt_len,
        generation=GenerationSpec(max_new_tokens=args.new_tokens),
        prompts=random_prompts(tokenizer, args.batch * args.iterations, args.prompt_len, seed=0),
        reward=ModelScorerSource(spec, "reward"),
        costs=(ModelScorerSource(spec, "cost"),),
        reward_critic=CriticStart(spec),
        cost_critics=(CriticStart(spec),),
    )


#: vLLM's share of the GPU when it generates the rollouts: the six training and inference roles
#: share what is left (each asks for 1/NUM_ROLES of the Ray GPU; memory is what vLLM's share bounds).
VLLM = VLLMSpec(gpu_memory_utilization=0.3)


def resources_for(args: argparse.Namespace, vllm: VLLMSpec | None = None) -> Resources:
    """One rank per role, the six roles sharing the GPU (or the CPUs); ``vllm``: rollout engines."""
    cuda = args.device == "cuda"
    return Resources(
        group=GroupSpec(num_ranks=1, cpus_per_rank=1.0, gpus_per_rank=(0.9 / NUM_ROLES) if cuda else 0.0),
        runtime=RuntimeSpec(local_num_cpus=max(NUM_ROLES, os.cpu_count() or 2)),
        deepspeed=DeepSpeedSpec(zero_stage=args.stage),
        seed=0,
        vllm=vllm,
    )


def check_weight_sync(setup: Setup, resources: Resources) -> str:
    """The sync the PPO loop does with vLLM engines, checked on one parameter the engines hold
    unfused (the final norm's weight): loaded doubled it reads back doubled, and after
    ``sync_weights_from`` it reads back the policy's. Returns what the table's note says."""
    from saferl.runtime import PolicyGroup

    name = "model.norm.weight"
    policy = PolicyGroup(setup.policy, setup.tokenizer, resources.engine(1e-6, 1), resources.group, resources.runtime)
    engines = None
    try:
        with tempfile.TemporaryDirectory(prefix="saferl-vllm-sync-") as folder:
            engines = ppo_lag.start_vllm_engines(setup, resources, policy, Path(folder) / "policy")
            state = policy.full_state_dict()
            expected = state[name].float()
            ray.get([engine.load_weights.remote({**state, name: state[name] * 2}) for engine in engines.engines])
            doubled = all(torch.equal(got, 2 * expected) for got in engines.parameters_named(name))
            engines.sync_weights_from(policy)
            restored = all(torch.equal(got, expected) for got in engines.parameters_named(name))
    finally:
        if engines is not None:
            engines.shutdown()
        policy.shutdown()
    if not (doubled and restored):
        raise SystemExit(f"vLLM weight sync check failed on {name}: doubled {doubled}, synced back {restored}")
    return f"weight sync checked ({name}: loaded doubled, then synced back to the policy's)"


def run_iterations(setup: Setup, args: argparse.Namespace, vllm: VLLMSpec | None = None) -> list[dict[str, float]]:
    """``args.iterations`` PPO-Lagrangian iterations (rollouts from ``vllm`` engines when given);
    every iteration's metrics."""
    resources = resources_for(args, vllm)
    settings = ppo_lag.PPOLagSettings(
        ppo=ppo_lag.PPOSettings(
            iterations=args.iterations, prompts_per_iteration=args.batch, kl_in_cost_stream=False
        ),
        multiplier={"kind": "log_gradient_ascent"},
        cost_limit=0.0,
        policy_learning_rate=1e-6,
        critic_learning_rate=1e-6,
    )
    with tempfile.TemporaryDirectory(prefix="saferl-bench-") as folder:
        return ppo_lag.run(setup, settings, resources, RunOutput(Path(folder))).history


def iteration_row(rollout: str, history: list[dict[str, float]], batch: int) -> tuple:
    """Median seconds, samples/s, generated tokens/s and generation share of the timed iterations."""
    timed = history[1:] or history
    # The iteration's wall time (its steps overlap: the next rollout is generated and scored while
    # the critics train).
    seconds = [m["perf/iteration_s"] for m in timed]
    generate_share = [m["perf/generate_s"] / s for m, s in zip(timed, seconds, strict=True)]
    tokens = [m["rollout/response_length"] * batch for m in timed]
    median = statistics.median(seconds)
    return (rollout, len(timed), median, batch / median,
            statistics.median(t / s for t, s in zip(tokens, seconds, strict=True)),
            statistics.median(generate_share), "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8, help="prompts per iteration")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=3, help="the first one warms up")
    parser.add_argument("--stage", type=int, default=2, help="ZeRO stage of every engine")
    parser.add_argument("--rollout", default="hf,vllm", help="rollout engines to try: hf, vllm")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device on the driver")

    size = ModelSize(f"h{args.hidden}-l{args.layers}", args.hidden, args.layers,
                     args.heads or max(args.hidden // 64, 1), args.vocab)
    rows = []
    for rollout in [r for r in args.rollout.split(",") if r]:
        if rollout == "hf":
            history = run_iterations(bench_setup(size, args), args)
            rows.append(iteration_row("hf generate", history, args.batch))
        elif rollout == "vllm":
            try:
                require_vllm(1)
            except RuntimeError as error:  # the run's own error, shown instead of a row
                rows.append(("vllm", 0, float("nan"), float("nan"), float("nan"), float("nan"),
                             f"not run: {error}"))
                continue
            setup = bench_setup(size, args)
            note = check_weight_sync(setup, resources_for(args, VLLM))
            history = run_iterations(setup, args, VLLM)
            rows.append((*iteration_row("vllm", history, args.batch)[:-1], note))
        else:
            raise SystemExit(f"--rollout: unknown engine {rollout!r}; expected hf or vllm")

    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print()
    print(f"PPO-Lagrangian iterations: device {device}; model {size.name} "
          f"({size.num_parameters() / 1e6:.1f}M parameters, {'bf16' if args.device == 'cuda' else 'fp32'}); "
          f"ZeRO {args.stage}; batch {args.batch}, prompt {args.prompt_len} tokens, response ≤ "
          f"{args.new_tokens} tokens; 6 roles, 1 rank each")
    print("| rollout     | timed | s/iteration | samples/s | gen tokens/s | gen share     | note")
    print("|-------------|-------|-------------|-----------|--------------|---------------|-----")
    for rollout, timed, seconds, samples, tokens, share, note in rows:
        print(f"| {rollout:<11} | {timed:>5} | {seconds:>11.3f} | {samples:>9.2f} | {tokens:>12.1f} | "
              f"{share:>13.2f} | {note}")


if __name__ == "__main__":
    main()
