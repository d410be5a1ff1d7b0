"""saferl's PPO-Lagrangian iteration side by side with TRL's RLOO and GRPO trainers, on the built-in world.

What is the same on every side:

* the model: the world's tiny Llama (``world.reference`` shape: 2 layers, 64 wide), built from its
  config with the same seed (so with the same initial weights), and the world's word-level tokenizer;
* the prompts: the world's 16 prompts, untemplated;
* the batch: ``--batch`` completions per update, ``--new-tokens`` tokens at most per completion,
  sampled at temperature 1 (no top-k, no top-p);
* the updates: ``--updates`` updates, each one rollout and **one** AdamW step on the whole batch
  (learning rate ``--lr``, betas (0.9, 0.95), gradient clipping 1.0, constant schedule, no weight
  decay), a KL penalty of weight ``--kl`` to the frozen initial policy, the same ``--seed``;
* the reward: the world's ground truth (:func:`saferl.data.world.ground_truth_reward`), read off
  the response's token ids (a response ends at its first EOS; one without EOS is unfinished) by
  saferl's oracle scorer, and by :func:`world_reward_of_ids` as a TRL reward function.

What cannot be made the same (the table says so too):

* saferl's PPO-Lagrangian samples one completion per prompt and trains a reward critic and a cost
  critic next to the policy (plus the ground-truth harm cost and a Lagrange multiplier); TRL's RLOO
  and GRPO have no critic and no cost: they sample ``--generations`` completions per prompt (so
  ``--batch / --generations`` prompts per update) and use the group's rewards as the baseline;
* saferl runs its 4 models (policy, reference, reward critic and cost critic) as one-rank Ray actor
  groups (CPU, ZeRO-2 DeepSpeed engines for the policy and the critics) in rank processes they
  share, as many as the machine has cores (``runtime.max_single_rank_processes``, default: 2 on a
  2-core machine); the policy's and the critics' updates run side by side. TRL runs one process
  (accelerate on CPU, no DeepSpeed), with the reference model in it.

A sample is one completion scored. Each side's rate is its steady state: the wall time from the end
of update 1 to the end of the last update (so one-off model builds, process and actor starts and the
first update's warm-up are excluded on every side), samples/s = ``batch × (updates − 1)`` over that
time, tokens/s = the completion tokens generated (EOS included) over that time, and CPU s/update =
the machine's busy CPU time over that time per timed update (every core, every process: on
saferl's side the driver, the rank processes and Ray's own; Linux ``/proc/stat``, else n/a). On a
machine with few cores, that CPU time over the core count bounds the update time from below, so it
shows how much of the gap is work rather than waiting. Each repeat builds
every side afresh, each side starts once the machine is quiet (less than 15 % busy over half a
second, so it does not share the cores with the previous side's processes winding down), the sides
run in turn inside each repeat (so a load change on the machine hits
all three), and the table shows the median of ``--repeats`` repeats. The last line is
``ratio vs TRL RLOO: x, vs TRL GRPO: y`` (saferl's samples/s over TRL's).

Run (TRL is in the ``bench`` extra, ``pip install -e ".[bench]"``; without it the script says so and
exits 2)::

    python experiments/bench/vs_trl.py
    python experiments/bench/vs_trl.py --repeats 1 --updates 4   # a quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

#: Exit status when TRL is not installed.
MISSING_TRL = 2
SIDES = ("saferl PPO-Lag", "TRL RLOO", "TRL GRPO")


@dataclass(frozen=True)
class BenchSettings:
    """What every side shares (see the module docstring)."""

    batch: int = 16
    new_tokens: int = 3
    updates: int = 12
    lr: float = 1e-5
    kl: float = 0.01
    seed: int = 0
    generations: int = 4  # TRL's completions per prompt
    repeats: int = 3

    def __post_init__(self) -> None:
        if self.updates < 2:
            raise ValueError("--updates must be >= 2 (the first update is the warm-up, not timed)")
        if self.batch % self.generations:
            raise ValueError(
                f"--batch ({self.batch}) must be a multiple of --generations ({self.generations})"
            )
        if self.generations < 2:
            raise ValueError("--generations must be >= 2 (RLOO and GRPO need a group per prompt)")
        if self.repeats < 1:
            raise ValueError("--repeats must be >= 1")


# ---------------------------------------------------------------------------------------------
# Pure helpers (tested in tests/bench/test_vs_trl.py)
# ---------------------------------------------------------------------------------------------


def world_reward_of_ids(prompt: str, ids: Sequence[int], tokenizer, prompts=None) -> float:
    """The world's ground-truth reward of the response ``ids`` (token ids, generated after
    ``prompt``), read as saferl's oracle scorer reads it: the response ends at its first EOS (the
    EOS and anything after it are not words); a response without EOS is unfinished."""
    from saferl.data.world import EOS, ground_truth_reward, world_prompts

    prompts = prompts or {p.text: p for p in world_prompts()}
    if prompt not in prompts:
        raise ValueError(f"{prompt!r} is not a prompt of the built-in world")
    ids = list(ids)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    finished = eos in ids
    words = tokenizer.convert_ids_to_tokens(ids[: ids.index(eos)] if finished else ids)
    return ground_truth_reward(prompts[prompt], words, finished)


@dataclass
class WorldReward:
    """The world's ground truth as a TRL reward function (``reward_funcs=[...]``): called with the
    prompts, the decoded completions and ``completion_ids`` (the ids up to and including the first
    EOS), returns one reward per completion. It also counts what it scored, per call."""

    tokenizer: object
    calls: list[tuple[int, int]] = field(default_factory=list)  # (completions, completion tokens)

    def __post_init__(self) -> None:
        from saferl.data.world import world_prompts

        self.__name__ = "world_ground_truth"  # TRL names a reward function's metrics by it
        self._prompts = {p.text: p for p in world_prompts()}

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        self.calls.append((len(completion_ids), sum(len(ids) for ids in completion_ids)))
        return [
            world_reward_of_ids(p, ids, self.tokenizer, self._prompts)
            for p, ids in zip(prompts, completion_ids, strict=True)
        ]


@dataclass(frozen=True)
class Rate:
    """One side's steady-state throughput in one repeat; ``cpu_seconds_per_update`` is the
    machine's busy CPU time per update, every process of the side included (None: unknown)."""

    samples_per_s: float
    tokens_per_s: float
    seconds_per_update: float
    timed_updates: int
    cpu_seconds_per_update: float | None = None


def machine_busy_s() -> float | None:
    """CPU seconds this machine's cores have been busy since boot, summed over cores (Linux
    ``/proc/stat``: user, nice, system, irq and softirq time; idle, I/O wait and time stolen by
    a hypervisor are not busy); None where there is no ``/proc/stat``."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(
    busy: Callable[[], float | None] | None = None,
    share: float = 0.15,
    window_s: float = 0.5,
    limit_s: float = 30.0,
) -> float:
    """Wait until the machine's cores were busy less than ``share`` of a ``window_s`` window
    (:func:`machine_busy_s`), at most ``limit_s``; returns the seconds waited. The sides run one
    after the other, and a side's processes wind down for a second or two after it returns (Ray's
    rank processes, TRL's trainer): the next side's timed updates must not share the cores with them."""
    busy = busy or machine_busy_s
    started = time.perf_counter()
    cores = os.cpu_count() or 1
    while time.perf_counter() - started < limit_s:
        before = busy()
        if before is None:
            break
        time.sleep(window_s)
        if (busy() - before) / (window_s * cores) < share:
            break
    return time.perf_counter() - started


def steady_rate(
    update_ends: Sequence[float],
    samples: Sequence[int],
    tokens: Sequence[int],
    busy_at_ends: Sequence[float | None] | None = None,
) -> Rate:
    """Throughput from the end of update 1 to the end of the last: ``update_ends[i]`` is when
    update ``i`` ended (seconds, any clock), ``samples[i]``/``tokens[i]`` what it generated and
    scored, ``busy_at_ends[i]`` :func:`machine_busy_s` then; update 0 is the warm-up (its samples,
    and the time before its end, are not counted)."""
    if not (len(update_ends) == len(samples) == len(tokens)) or len(update_ends) < 2:
        raise ValueError("steady_rate: need the end time, samples and tokens of at least 2 updates")
    seconds = update_ends[-1] - update_ends[0]
    if seconds <= 0:
        raise ValueError("steady_rate: the update end times do not increase")
    timed = len(update_ends) - 1
    cpu = None
    if busy_at_ends is not None and None not in (busy_at_ends[0], busy_at_ends[-1]):
        cpu = (busy_at_ends[-1] - busy_at_ends[0]) / timed
    return Rate(sum(samples[1:]) / seconds, sum(tokens[1:]) / seconds, seconds / timed, timed, cpu)


def median_rate(rates: Sequence[Rate]) -> Rate:
    """Each field's median over repeats (the CPU time's over the repeats that know it)."""
    cpu = [r.cpu_seconds_per_update for r in rates if r.cpu_seconds_per_update is not None]
    return Rate(
        statistics.median(r.samples_per_s for r in rates),
        statistics.median(r.tokens_per_s for r in rates),
        statistics.median(r.seconds_per_update for r in rates),
        rates[0].timed_updates,
        statistics.median(cpu) if cpu else None,
    )


def ratio_line(saferl: float, rloo: float, grpo: float) -> str:
    """The last line: saferl's samples/s over each TRL trainer's."""
    return f"ratio vs TRL RLOO: {saferl / rloo:.2f}, vs TRL GRPO: {saferl / grpo:.2f}"


def table(rates: dict[str, list[Rate]], notes: dict[str, str]) -> list[str]:
    """The table's lines: per side the median samples/s, tokens/s and s/update over repeats, every
    repeat's samples/s, and what the side runs."""
    lines = [
        "| side           | samples/s | tokens/s | s/update | CPU s/update | samples/s per repeat | what runs",
        "|----------------|-----------|----------|----------|--------------|----------------------|----------",
    ]
    for side, repeats in rates.items():
        m = median_rate(repeats)
        each = ", ".join(f"{r.samples_per_s:.1f}" for r in repeats)
        cpu = "n/a" if m.cpu_seconds_per_update is None else f"{m.cpu_seconds_per_update:.3f}"
        lines.append(
            f"| {side:<14} | {m.samples_per_s:>9.1f} | {m.tokens_per_s:>8.1f} | "
            f"{m.seconds_per_update:>8.3f} | {cpu:>12} | {each:<20} | {notes.get(side, '')}"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# The sides
# ---------------------------------------------------------------------------------------------


def world_parts(settings: BenchSettings):
    """The world's tokenizer, the tiny Llama's spec, and the prompts."""
    from saferl.data.world import (
        ReferenceConfig,
        build_world_tokenizer,
        world_model_spec,
        world_prompts,
    )

    tokenizer = build_world_tokenizer()
    return (
        tokenizer,
        world_model_spec(ReferenceConfig(), tokenizer),
        [p.text for p in world_prompts()],
    )


def run_saferl(settings: BenchSettings) -> Rate:
    """One saferl PPO-Lagrangian run (``ppo_lag.run``: 1 rank per role, CPU, ZeRO-2) of
    ``settings.updates`` iterations with the world's ground-truth reward and harm cost."""
    from saferl.learners import ppo_lag
    from saferl.learners.output import RunOutput
    from saferl.runtime import DeepSpeedSpec, GenerationSpec, GroupSpec, RuntimeSpec
    from saferl.runtime.resources import Resources
    from saferl.setups.base import CriticStart, Setup
    from saferl.setups.world import WorldScorerSource

    tokenizer, spec, prompts = world_parts(settings)
    setup = Setup(
        name="world",
        policy=spec,
        tokenizer=tokenizer,
        template="raw",
        max_length=2 + settings.new_tokens,
        max_prompt_length=2,
        generation=GenerationSpec(max_new_tokens=settings.new_tokens),
        prompts=prompts,
        reward=WorldScorerSource.oracle("reward", tokenizer),
        costs=(WorldScorerSource.oracle("cost", tokenizer, "harm"),),
        reward_critic=CriticStart(spec),
        cost_critics=(CriticStart(spec),),
    )
    resources = Resources(
        group=GroupSpec(num_ranks=1, cpus_per_rank=1.0),
        runtime=RuntimeSpec(local_num_cpus=max(4, os.cpu_count() or 2)),
        deepspeed=DeepSpeedSpec(zero_stage=2, adam_betas=(0.9, 0.95), gradient_clipping=1.0),
        seed=settings.seed,
    )
    ppo_settings = ppo_lag.PPOLagSettings(
        ppo=ppo_lag.PPOSettings(
            iterations=settings.updates,
            prompts_per_iteration=settings.batch,
            kl_coeff=settings.kl,
            seed=settings.seed,
        ),
        multiplier={"kind": "log_gradient_ascent"},
        cost_limit=0.0,
        policy_learning_rate=settings.lr,
        critic_learning_rate=settings.lr,
    )
    ends: list[float] = []
    busy: list[float | None] = []
    tokens: list[int] = []

    def progress(stage, step, total, metrics) -> None:
        ends.append(time.perf_counter())
        busy.append(machine_busy_s())
        tokens.append(round(metrics["rollout/response_length"] * settings.batch))

    with tempfile.TemporaryDirectory(prefix="saferl-vs-trl-") as folder:
        ppo_lag.run(setup, ppo_settings, resources, RunOutput(Path(folder), progress=progress))
    return steady_rate(ends, [settings.batch] * len(ends), tokens, busy)


def run_trl(kind: str, settings: BenchSettings) -> Rate:
    """One TRL run (``"rloo"`` or ``"grpo"``) of ``settings.updates`` steps, one generation and one
    optimizer step each, with :class:`WorldReward` as the reward function."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from saferl.models import build_policy, save_policy

    if kind == "rloo":
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer

    tokenizer, spec, prompts = world_parts(settings)
    reward = WorldReward(tokenizer)
    ends: list[float] = []
    busy: list[float | None] = []

    class UpdateEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())
            busy.append(machine_busy_s())

    # Enough rows that the sampler never runs out: each step takes batch / generations prompts.
    dataset = Dataset.from_dict(
        {"prompt": prompts * (settings.updates * settings.batch // len(prompts) + 1)}
    )
    with tempfile.TemporaryDirectory(prefix="trl-vs-saferl-") as folder:
        # TRL builds its reference model from the policy's path, so the policy goes through a folder.
        torch.manual_seed(settings.seed)  # as every saferl rank does before building its model
        model_dir = save_policy(build_policy(spec, tokenizer), tokenizer, Path(folder) / "policy")
        config = Config(
            output_dir=str(Path(folder) / "trainer"),
            model_init_kwargs={"dtype": "float32"},
            per_device_train_batch_size=settings.batch,
            gradient_accumulation_steps=1,
            steps_per_generation=1,
            num_iterations=1,
            num_generations=settings.generations,
            max_completion_length=settings.new_tokens,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_steps=settings.updates,
            learning_rate=settings.lr,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            adam_beta1=0.9,
            adam_beta2=0.95,
            max_grad_norm=1.0,
            beta=settings.kl,
            seed=settings.seed,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=str(model_dir),
            reward_funcs=[reward],
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[UpdateEnds()],
        )
        trainer.train()
    if len(reward.calls) != settings.updates:
        raise RuntimeError(
            f"TRL {kind}: {len(reward.calls)} reward calls for {settings.updates} updates "
            "(expected one generation per update)"
        )
    samples, tokens = zip(*reward.calls, strict=True)
    return steady_rate(ends, samples, tokens, busy)


def trl_version() -> str | None:
    """TRL's version, or None when it is not installed."""
    try:
        import trl
    except ImportError:
        return None
    return trl.__version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = BenchSettings()
    parser.add_argument("--batch", type=int, default=defaults.batch, help="completions per update")
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=defaults.new_tokens,
        help="tokens per completion at most (the world's exact mode uses 3)",
    )
    parser.add_argument(
        "--updates", type=int, default=defaults.updates, help="updates per run; the first warms up"
    )
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument(
        "--kl",
        type=float,
        default=defaults.kl,
        help="KL penalty weight (saferl kl_coeff, TRL beta)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--generations", type=int, default=defaults.generations, help="TRL's completions per prompt"
    )
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of this process (TRL's trainer, saferl's driver); saferl's ranks "
        "get 1 each from Ray (one CPU per rank). 0: torch's default",
    )
    args = parser.parse_args(argv)
    version = trl_version()
    if version is None:
        print(
            'vs_trl: TRL is not installed; install the bench extra: pip install -e ".[bench]" '
            '(or pip install "trl>=0.12")',
            file=sys.stderr,
        )
        return MISSING_TRL
    try:
        settings = BenchSettings(
            args.batch,
            args.new_tokens,
            args.updates,
            args.lr,
            args.kl,
            args.seed,
            args.generations,
            args.repeats,
        )
    except ValueError as error:
        parser.error(str(error))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    runners: dict[str, Callable[[], Rate]] = {
        SIDES[0]: lambda: run_saferl(settings),
        SIDES[1]: lambda: run_trl("rloo", settings),
        SIDES[2]: lambda: run_trl("grpo", settings),
    }
    rates: dict[str, list[Rate]] = {side: [] for side in SIDES}
    for repeat in range(settings.repeats):
        for side, runner in runners.items():
            wait_until_quiet()
            rate = runner()
            rates[side].append(rate)
            print(
                f"repeat {repeat + 1}/{settings.repeats}: {side}: {rate.samples_per_s:.1f} samples/s, "
                f"{rate.tokens_per_s:.1f} tokens/s",
                flush=True,
            )
    import ray

    ray.shutdown()  # the ranks' buffered log lines arrive before the table, not after it
    k = settings.generations
    from saferl.runtime import GroupSpec, RuntimeSpec
    from saferl.runtime.pool import shared_process_limit

    processes = min(4, shared_process_limit(RuntimeSpec(), GroupSpec(num_ranks=1, cpus_per_rank=1.0))) or 4
    notes = {
        SIDES[0]: f"1 completion/prompt; policy, reference, reward + cost critics: 4 one-rank groups in "
                  f"{processes} Ray processes, ZeRO-2",
        SIDES[1]: f"{k} completions/prompt, no critic; one process, reference in it",
        SIDES[2]: f"{k} completions/prompt, no critic; one process, reference in it",
    }
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print()
    print(
        f"saferl vs TRL {version} on the built-in world (CPU, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} torch thread(s) per process, load average {' '.join(f'{x:.2f}' for x in load) if load else 'n/a'}): "
        f"tiny Llama (2 layers, 64 wide), batch {settings.batch} completions of ≤ {settings.new_tokens} "
        f"tokens, {settings.updates} updates ({settings.updates - 1} timed), lr {settings.lr:g}, KL "
        f"{settings.kl:g}, seed {settings.seed}; median of {settings.repeats}"
    )
    for line in table(rates, notes):
        print(line)
    medians = {side: median_rate(rates[side]).samples_per_s for side in SIDES}
    print(ratio_line(medians[SIDES[0]], medians[SIDES[1]], medians[SIDES[2]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
