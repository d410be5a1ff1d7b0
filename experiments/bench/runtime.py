"""Benchmark of the distributed runtime: generate, forward and train step per role.

For each model size, number of ranks and ZeRO stage, start a policy, a reward-model and a critic
group (Ray local cluster, DeepSpeed engines), then time

* ``policy/generate``: seeded sampling of ``--new-tokens`` tokens per prompt;
* ``policy/train_step``: one optimizer step (token log-probs + an SFT loss);
* ``reward/forward``: end scores of prompt + response sequences;
* ``critic/forward`` and ``critic/train_step``: values and one optimizer step on them.

and print one table with samples/s and tokens/s (generated tokens for ``generate``, real
prompt + response tokens otherwise). Timings are the median of ``--repeats`` calls after one
warm-up call; group start-up is not timed.

CPU (default: a tiny and a larger tiny model, 1 and 2 ranks, ZeRO 2 and 3, gloo, fp32)::

    python experiments/bench/runtime.py

The three roles of a rank share one placement bundle (one GPU on GPU runs, split 0.4/0.3/0.3),
so ``--ranks`` may not exceed the number of GPUs.

GPU (one rank per GPU, nccl, bf16; e.g. a 162M-parameter Llama)::

    python experiments/bench/runtime.py --device cuda --hidden 768 --layers 12 --heads 12 \\
        --vocab 32000 --batch 32 --prompt-len 128 --new-tokens 128 --ranks 1,2 --stages 2,3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from saferl.data.collators import PromptBatch, SequenceBatch  # noqa: E402
from saferl.models import ModelSpec, TinyModelConfig  # noqa: E402
from saferl.runtime import (  # noqa: E402
    CriticGroup,
    DeepSpeedSpec,
    GenerationSpec,
    GroupSpec,
    PolicyGroup,
    RuntimeSpec,
    ScoreGroup,
    init_ray,
    plan_placement,
)


def sft_loss(logprobs: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    """Response negative log-likelihood, summed per row, mean over rows."""
    return -(logprobs * batch.response_mask).sum(dim=-1).mean()


def value_loss(values: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    """Per-row mean squared error of the values to 0, mean over rows."""
    mask = batch.attention_mask.float()
    return ((values**2 * mask).sum(dim=-1) / mask.sum(dim=-1)).mean()


def synthetic_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``<pad> <eos> <unk> w0 w1 ...`` (no download)."""
    words = [f"w{i}" for i in range(max(vocab_size - 3, 1))]
    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "<unk>", *words])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>"
    )


@dataclass(frozen=True)
class ModelSize:
    name: str
    hidden: int
    layers: int
    heads: int
    vocab: int

    def spec(self, max_positions: int) -> ModelSpec:
        return ModelSpec(
            tiny=TinyModelConfig(
                vocab_size=self.vocab,
                hidden_size=self.hidden,
                num_layers=self.layers,
                num_heads=self.heads,
                intermediate_size=4 * self.hidden,
                max_position_embeddings=max_positions,
            )
        )

    def num_parameters(self) -> int:
        """Parameters of the causal LM (Llama, untied embeddings)."""
        h, layer = self.hidden, 4 * self.hidden * self.hidden + 3 * self.hidden * 4 * self.hidden
        return self.layers * (layer + 2 * h) + 2 * self.vocab * h + h


def random_batches(
    tokenizer: PreTrainedTokenizerFast, batch: int, prompt_len: int, response_len: int, seed: int
) -> tuple[PromptBatch, SequenceBatch]:
    """Random full-length prompts and prompt + response sequences ending with EOS."""
    generator = torch.Generator().manual_seed(seed)
    low, high = 3, len(tokenizer)
    prompt = torch.randint(low, high, (batch, prompt_len), generator=generator)
    response = torch.randint(low, high, (batch, response_len), generator=generator)
    response[:, -1] = tokenizer.eos_token_id
    ids = torch.cat([prompt, response], dim=1)
    attention = torch.ones_like(ids, dtype=torch.bool)
    response_mask = torch.zeros_like(attention)
    response_mask[:, prompt_len:] = True
    prompts = PromptBatch(prompt, torch.ones_like(prompt, dtype=torch.bool))
    return prompts, SequenceBatch(ids, attention, response_mask)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after a warm-up call, and the last result."""
    result = fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def bench_config(
    size: ModelSize,
    tokenizer: PreTrainedTokenizerFast,
    prompts: PromptBatch,
    sequences: SequenceBatch,
    num_ranks: int,
    stage: int,
    args: argparse.Namespace,
    runtime_spec: RuntimeSpec,
) -> list[tuple]:
    """Start policy, reward and critic groups for one (size, ranks, stage) and time their ops."""
    cuda = args.device == "cuda"
    model_spec = size.spec(args.prompt_len + args.new_tokens + 8)
    deepspeed_spec = DeepSpeedSpec(
        zero_stage=stage, learning_rate=1e-5, micro_batch_size_per_rank=args.batch // num_ranks
    )
    # The three roles share each rank's bundle (and its GPU): colocated placement.
    gpus = (0.4, 0.3, 0.3) if cuda else (0.0, 0.0, 0.0)
    group_specs = {
        "policy": GroupSpec(num_ranks, 0.5, gpus[0]),
        "reward": GroupSpec(num_ranks, 0.25, gpus[1], colocate_with="policy"),
        "critic": GroupSpec(num_ranks, 0.25, gpus[2], colocate_with="policy"),
    }
    plan = plan_placement(runtime_spec, group_specs)
    common = {"placement": plan, "wait": False}  # the three groups start at once
    args_of = {
        role: (model_spec, tokenizer, deepspeed_spec, spec, runtime_spec)
        for role, spec in group_specs.items()
    }
    policy = PolicyGroup(*args_of["policy"], **common)
    reward = ScoreGroup(*args_of["reward"], role="reward", **common)
    critic = CriticGroup(*args_of["critic"], role="critic", **common)
    generation = GenerationSpec(max_new_tokens=args.new_tokens, seed=1)
    ops: list[tuple[str, Callable[[], object]]] = [
        ("policy/generate", partial(policy.generate, prompts, generation)),
        ("policy/train_step", partial(policy.train_step, sequences, sft_loss)),
        ("reward/forward", partial(reward.end_scores, sequences)),
        ("critic/forward", partial(critic.values, sequences)),
        ("critic/train_step", partial(critic.train_step, sequences, value_loss)),
    ]
    rows = []
    try:
        for op, fn in ops:
            seconds, result = timed(fn, args.repeats)
            if op == "policy/generate":
                tokens = int(result.response_mask.sum())  # generated tokens
            else:
                tokens = int(sequences.attention_mask.sum())
            row = (
                size.name,
                f"{size.num_parameters() / 1e6:.2f}M",
                num_ranks,
                stage,
                op,
                args.batch,
                tokens,
                seconds,
                args.batch / seconds,
                tokens / seconds,
            )
            rows.append(row)
            print(_format_row(row), flush=True)
    finally:
        for group in (policy, reward, critic):
            group.shutdown()
        plan.remove()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--hidden", type=int, default=None, help="one model of this width")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument("--ranks", type=parse_ints, default=[1, 2])
    parser.add_argument("--stages", type=parse_ints, default=[2, 3])
    parser.add_argument("--batch", type=int, default=8, help="global rows per call")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray cluster")
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device on the driver")
    if cuda and max(args.ranks) > torch.cuda.device_count():
        raise SystemExit(
            f"--ranks {max(args.ranks)} needs as many GPUs (one rank per GPU), found "
            f"{torch.cuda.device_count()}; pass e.g. --ranks 1"
        )
    if args.hidden is not None:
        sizes = [
            ModelSize(
                f"h{args.hidden}-l{args.layers or 12}",
                args.hidden,
                args.layers or 12,
                args.heads or max(args.hidden // 64, 1),
                args.vocab or 32000,
            )
        ]
    else:
        vocab = args.vocab or 512
        sizes = [ModelSize("tiny", 32, 2, 2, vocab), ModelSize("small", 128, 4, 4, vocab)]

    runtime_spec = RuntimeSpec(local_num_cpus=args.cpus or (os.cpu_count() or 2) * 2)
    init_ray(runtime_spec)
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"

    rows: list[tuple] = []
    for size in sizes:
        tokenizer = synthetic_tokenizer(size.vocab)
        prompts, sequences = random_batches(
            tokenizer, args.batch, args.prompt_len, args.new_tokens, seed=0
        )
        for num_ranks in args.ranks:
            if args.batch % num_ranks:
                raise SystemExit(f"--batch {args.batch} must be divisible by ranks {num_ranks}")
            for stage in args.stages:
                rows.extend(
                    bench_config(
                        size, tokenizer, prompts, sequences, num_ranks, stage, args, runtime_spec
                    )
                )

    print()
    print(
        f"device: {device_name}; backend {'nccl' if cuda else 'gloo'}; "
        f"precision {'bf16' if cuda else 'fp32'}; batch {args.batch}, prompt {args.prompt_len} "
        f"tokens, response {args.new_tokens} tokens; median of {args.repeats}"
    )
    print(_header())
    for row in rows:
        print(_format_row(row))


_COLUMNS = (
    ("model", 6),
    ("params", 8),
    ("ranks", 5),
    ("zero", 4),
    ("op", 18),
    ("rows", 5),
    ("tokens", 7),
    ("seconds", 8),
    ("samples/s", 10),
    ("tokens/s", 10),
)


def _header() -> str:
    names = " | ".join(name.ljust(width) for name, width in _COLUMNS)
    rule = "-|-".join("-" * width for _, width in _COLUMNS)
    return f"| {names} |\n|-{rule}-|"


def _format_row(row: tuple) -> str:
    model, params, ranks, stage, op, batch, tokens, seconds, samples, tok_s = row
    cells = (
        model,
        params,
        str(ranks),
        str(stage),
        op,
        str(batch),
        str(tokens),
        f"{seconds:.3f}",
        f"{samples:.1f}",
        f"{tok_s:.0f}",
    )
    return "| " + " | ".join(c.ljust(w) for c, (_, w) in zip(cells, _COLUMNS, strict=True)) + " |"


if __name__ == "__main__":
    main()
