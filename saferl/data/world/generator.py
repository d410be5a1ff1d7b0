"""Datasets of the built-in safety world: prompts, SFT demonstrations, safety preference pairs.

A *demonstrator* (a fixed mixture of answer patterns per prompt kind) writes the SFT data, so the
reference policy that is SFT-ed on it is sensible but mixed: on harmful prompts it sometimes gives
the unsafe detailed answer. A preference pair's two responses come from a *response sampler*: the
demonstrator (:func:`demonstrator_sampler`), or, in a training run, the SFT policy itself
(:mod:`saferl.data.world.policy_pairs`), as PKU-SafeRLHF's responses come from its own SFT model,
Alpaca-7B. Pairs are labelled from the ground truth: the helpfulness label Bradley–Terry style, ``P(y0 better) = σ((r0 − r1)/τ)``; the
safety label from the ground-truth cost (if exactly one response is safe it is the safer one, else
``P(y0 safer) = σ((c1 − c0)/τ)``); ``is_response_i_safe`` = ``cost ≤ 0``. Records are written in
the PKU-SafeRLHF format so the ordinary loaders read them.

The format holds one safety label per response, so each further cost of the world
(:data:`~saferl.data.world.ground_truth.COST_NAMES`, e.g. ``refusal``) gets its own pair files,
``preferences_{train,test}_<cost>.jsonl``, whose safety labels come from that cost (their pairs are
drawn with their own seed); a cost model is trained on each.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from saferl.data.errors import DataError
from saferl.data.records import PromptRecord, SafetyPreferencePair, SFTExample
from saferl.data.world.ground_truth import (
    COST_NAMES,
    check_cost_names,
    cost_function,
    ground_truth_cost,
    ground_truth_reward,
)
from saferl.data.world.vocab import WorldPrompt, world_prompts
from saferl.data.writing import write_records

__all__ = [
    "demonstrator_distribution",
    "sample_demonstration",
    "make_sft_examples",
    "ResponseSampler",
    "demonstrator_sampler",
    "make_preference_pairs",
    "WorldDatasetPaths",
    "write_demonstrations",
    "write_pair_datasets",
    "write_world_datasets",
    "write_cost_pairs",
    "world_statistics",
]

# Answer patterns, "{t}" is the prompt's topic. Weights are relative within each list. Every
# pattern has at most two words so that, with its EOS, it fits exact mode's three tokens.
_BENIGN_PATTERNS: tuple[tuple[str, float], ...] = (
    ("steps detail", 4.0),
    ("steps {t}", 2.0),
    ("{t} detail", 2.0),
    ("detail", 1.0),
    ("ok steps", 1.5),
    ("steps safely", 1.0),
    ("ok", 0.5),
    # The demonstrator over-refuses now and then, in either refusal word.
    ("sorry", 0.5),
    ("cannot", 0.5),
)
_HARMFUL_PATTERNS: tuple[tuple[str, float], ...] = (
    ("steps detail", 2.5),  # the most helpful and the most harmful
    ("{t} detail", 1.5),
    ("detail", 1.0),
    ("steps", 1.5),
    ("steps safely", 1.5),
    ("safely", 1.0),
    # Refusals in four styles, 2.0 in all (so the demonstrator is 60 % safe on harmful prompts):
    # the ideal hard refusal (an apology and a statement of inability), two bare ones (an apology
    # alone, inability alone) and a judgemental one.
    ("sorry cannot", 1.0),
    ("sorry", 0.5),
    ("cannot", 0.25),
    ("sorry wrong", 0.25),
    ("sorry safely", 1.0),
    ("ok", 0.5),
)


def demonstrator_distribution(prompt: WorldPrompt) -> list[tuple[str, float]]:
    """The demonstrator's responses to ``prompt`` with their probabilities (summing to 1)."""
    patterns = _HARMFUL_PATTERNS if prompt.harmful else _BENIGN_PATTERNS
    total = sum(weight for _, weight in patterns)
    return [(pattern.format(t=prompt.topic), weight / total) for pattern, weight in patterns]


def sample_demonstration(prompt: WorldPrompt, rng: random.Random) -> str:
    """One demonstrator response (words separated by spaces, no EOS)."""
    responses, probabilities = zip(*demonstrator_distribution(prompt), strict=True)
    return rng.choices(responses, weights=probabilities, k=1)[0]


#: Draws one response (words separated by spaces, no EOS) to a prompt of :func:`world_prompts`,
#: given by its index there, with the random generator given.
ResponseSampler = Callable[[int, random.Random], str]


def demonstrator_sampler() -> ResponseSampler:
    """The demonstrator as a :data:`ResponseSampler` (the pairs of ``job=world_data`` and of
    ``data.pair_source=demonstrator``)."""
    prompts = world_prompts()
    return lambda index, rng: sample_demonstration(prompts[index], rng)


def make_sft_examples(num_examples: int, seed: int) -> list[SFTExample]:
    """``num_examples`` demonstrations, prompts drawn uniformly from the world's prompts."""
    rng = random.Random(seed)
    prompts = world_prompts()
    examples = []
    for _ in range(num_examples):
        prompt = rng.choice(prompts)
        examples.append(SFTExample(prompt.text, sample_demonstration(prompt, rng)))
    return examples


def make_preference_pairs(
    num_pairs: int, seed: int, temperature: float = 0.5, cost: str = "harm",
    sampler: ResponseSampler | None = None,
) -> list[SafetyPreferencePair]:
    """``num_pairs`` safety preference pairs of two distinct sampled responses each.

    Args:
        num_pairs: how many pairs.
        seed: random seed.
        temperature: Bradley–Terry temperature τ of both labels (smaller is less noisy).
        cost: the ground-truth cost (``COST_NAMES``) the safety labels follow.
        sampler: where the responses come from (None: the demonstrator).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; found {temperature}")
    cost_of = cost_function(cost)
    sample = sampler or demonstrator_sampler()
    rng = random.Random(seed)
    prompts = world_prompts()
    pairs = []
    while len(pairs) < num_pairs:
        index = rng.randrange(len(prompts))
        prompt = prompts[index]
        response_0 = sample(index, rng)
        response_1 = sample(index, rng)
        if response_0 == response_1:
            continue
        words_0, words_1 = response_0.split(), response_1.split()
        reward_0, reward_1 = (
            ground_truth_reward(prompt, words_0),
            ground_truth_reward(prompt, words_1),
        )
        cost_0, cost_1 = cost_of(prompt, words_0), cost_of(prompt, words_1)
        safe_0, safe_1 = cost_0 <= 0, cost_1 <= 0
        better = 0 if rng.random() < _sigmoid((reward_0 - reward_1) / temperature) else 1
        if safe_0 != safe_1:
            # A noisy label here would contradict the safety labels (docs/algorithms.md §3).
            safer = 0 if safe_0 else 1
        else:
            safer = 0 if rng.random() < _sigmoid((cost_1 - cost_0) / temperature) else 1
        pairs.append(
            SafetyPreferencePair(prompt.text, response_0, response_1, better, safer, safe_0, safe_1)
        )
    return pairs


@dataclass(frozen=True)
class WorldDatasetPaths:
    """Where :func:`write_world_datasets` put each file."""

    folder: Path
    prompts: Path
    sft: Path
    preferences_train: Path
    preferences_test: Path
    statistics: Path

    def preferences(self, split: str, cost: str = "harm") -> Path:
        """The ``split`` (``"train"`` or ``"test"``) pairs whose safety labels follow ``cost``: the
        PKU files themselves for ``harm``, ``preferences_<split>_<cost>.jsonl`` for another cost."""
        base = {"train": self.preferences_train, "test": self.preferences_test}[split]
        return base if cost == "harm" else base.with_name(f"{base.stem}_{cost}.jsonl")


def world_dataset_paths(folder: str | Path) -> WorldDatasetPaths:
    """Where :func:`write_world_datasets` puts (or put) each file in ``folder``."""
    folder = Path(folder)
    return WorldDatasetPaths(
        folder=folder,
        prompts=folder / "prompts.jsonl",
        sft=folder / "sft.jsonl",
        preferences_train=folder / "preferences_train.jsonl",
        preferences_test=folder / "preferences_test.jsonl",
        statistics=folder / "statistics.json",
    )


def write_demonstrations(folder: str | Path, seed: int = 0, num_sft: int = 4000,
                         overwrite: bool = False) -> WorldDatasetPaths:
    """Write the world's prompt set and SFT demonstrations (``prompts.jsonl``, ``sft.jsonl``): a
    training run's first stage, before the SFT policy exists to draw pairs from. An existing file
    is never overwritten unless ``overwrite``."""
    paths = world_dataset_paths(folder)
    _refuse_existing(Path(folder), (paths.prompts, paths.sft), overwrite)
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_records([PromptRecord(prompt.text) for prompt in world_prompts()], paths.prompts, overwrite=overwrite)
    write_records(make_sft_examples(num_sft, seed), paths.sft, overwrite=overwrite)
    return paths


def write_pair_datasets(
    folder: str | Path,
    seed: int = 0,
    num_pairs_train: int = 4000,
    num_pairs_test: int = 1000,
    temperature: float = 0.5,
    overwrite: bool = False,
    costs: Sequence[str] = ("harm",),
    sampler: ResponseSampler | None = None,
) -> WorldDatasetPaths:
    """Write the preference pairs (``preferences_{train,test}.jsonl``, and per cost of ``costs``
    other than ``harm`` its own pairs, :meth:`WorldDatasetPaths.preferences`) with responses from
    ``sampler`` (None: the demonstrator), and ``statistics.json`` of the training pairs. An existing
    file is never overwritten unless ``overwrite``."""
    folder = Path(folder)
    paths = world_dataset_paths(folder)
    _refuse_existing(folder, _pair_files(paths, costs), overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    train = make_preference_pairs(num_pairs_train, seed + 1, temperature, sampler=sampler)
    test = make_preference_pairs(num_pairs_test, seed + 2, temperature, sampler=sampler)
    write_records(train, paths.preferences_train, overwrite=overwrite)
    write_records(test, paths.preferences_test, overwrite=overwrite)
    for name in costs:
        if name != "harm":
            write_cost_pairs(folder, name, seed, num_pairs_train, num_pairs_test, temperature, overwrite=overwrite,
                             sampler=sampler)
    statistics = world_statistics(train)
    paths.statistics.write_text(json.dumps(statistics, indent=2) + "\n")
    return paths


def write_world_datasets(
    folder: str | Path,
    seed: int = 0,
    num_sft: int = 4000,
    num_pairs_train: int = 4000,
    num_pairs_test: int = 1000,
    temperature: float = 0.5,
    overwrite: bool = False,
    costs: Sequence[str] = ("harm",),
) -> WorldDatasetPaths:
    """Write the world's prompt set, SFT demonstrations and demonstrator preference pairs as
    ``.jsonl`` files (:func:`write_demonstrations` and :func:`write_pair_datasets`; ``job=world_data``).

    Files: ``prompts.jsonl``, ``sft.jsonl``, ``preferences_train.jsonl``,
    ``preferences_test.jsonl`` and ``statistics.json``, and per cost of ``costs`` other than
    ``harm`` its own pairs (:meth:`WorldDatasetPaths.preferences`). An existing file is never
    overwritten unless ``overwrite`` (then the whole set is rewritten).
    """
    folder = Path(folder)
    paths = world_dataset_paths(folder)
    # Checked for the whole set first, so that a refusal writes nothing at all.
    _refuse_existing(folder, (paths.prompts, paths.sft, *_pair_files(paths, costs)), overwrite)
    write_demonstrations(folder, seed, num_sft, overwrite=True)
    return write_pair_datasets(folder, seed, num_pairs_train, num_pairs_test, temperature, overwrite=True, costs=costs)


def _pair_files(paths: WorldDatasetPaths, costs: Sequence[str]) -> tuple[Path, ...]:
    """What :func:`write_pair_datasets` writes for ``costs`` (checked names): the harm pairs, their
    statistics, and each further cost's train and test pairs."""
    extra = [name for name in check_cost_names(costs, "costs") if name != "harm"]
    return (paths.preferences_train, paths.preferences_test, paths.statistics,
            *(paths.preferences(split, name) for name in extra for split in ("train", "test")))


def _refuse_existing(folder: Path, targets: Sequence[Path], overwrite: bool) -> None:
    existing = [str(path) for path in targets if path.exists()]
    if existing and not overwrite:
        raise DataError(
            str(folder),
            expected="a folder without the world's files (pass overwrite=True to replace them)",
            found="existing " + ", ".join(existing),
        )


def write_cost_pairs(
    folder: str | Path,
    cost: str,
    seed: int = 0,
    num_pairs_train: int = 4000,
    num_pairs_test: int = 1000,
    temperature: float = 0.5,
    overwrite: bool = False,
    sampler: ResponseSampler | None = None,
) -> tuple[Path, Path]:
    """Write the train and test pairs labelled by ``cost`` (not ``harm``, whose pairs are the PKU
    files themselves) into ``folder``, responses from ``sampler`` (None: the demonstrator), as
    :func:`write_pair_datasets` does for the same arguments; returns their paths. Alone, it adds a
    cost's pairs next to another run's datasets."""
    if cost == "harm":
        raise ValueError("cost: the harm pairs are the world's PKU files (write_world_datasets); give another cost")
    paths = world_dataset_paths(folder)
    Path(folder).mkdir(parents=True, exist_ok=True)
    # Seeds of their own (harm's are seed + 1, seed + 2), so no two files share their draws.
    offset = 10 * COST_NAMES.index(check_cost_names([cost], "cost")[0])
    for split, split_seed, count in (("train", seed + 1, num_pairs_train), ("test", seed + 2, num_pairs_test)):
        pairs = make_preference_pairs(count, split_seed + offset, temperature, cost=cost, sampler=sampler)
        write_records(pairs, paths.preferences(split, cost), overwrite=overwrite)
    return paths.preferences("train", cost), paths.preferences("test", cost)


def world_statistics(pairs: Sequence[SafetyPreferencePair]) -> dict[str, float]:
    """Summary of a preference set: sizes, label rates, and the reward–cost tension.

    ``harmful_reward_cost_correlation`` is the Pearson correlation of ground-truth reward and cost
    over the responses to harmful prompts (positive: the tension exists).
    """
    by_text = {prompt.text: prompt for prompt in world_prompts()}
    rewards, costs, harmful_rewards, harmful_costs = [], [], [], []
    safe = better_is_safer = 0
    for pair in pairs:
        prompt = by_text[pair.prompt]
        for index in (0, 1):
            words = pair.response(index).split()
            reward, cost = ground_truth_reward(prompt, words), ground_truth_cost(prompt, words)
            rewards.append(reward)
            costs.append(cost)
            safe += pair.is_safe(index)
            if prompt.harmful:
                harmful_rewards.append(reward)
                harmful_costs.append(cost)
        better_is_safer += pair.better_response_id == pair.safer_response_id
    count = max(1, len(pairs))
    return {
        "num_pairs": len(pairs),
        "num_prompts": len({pair.prompt for pair in pairs}),
        "safe_response_rate": safe / max(1, 2 * len(pairs)),
        "better_is_safer_rate": better_is_safer / count,
        "mean_reward": sum(rewards) / max(1, len(rewards)),
        "mean_cost": sum(costs) / max(1, len(costs)),
        "harmful_reward_cost_correlation": _correlation(harmful_rewards, harmful_costs),
    }


def _sigmoid(value: float) -> float:
    return (
        1.0 / (1.0 + math.exp(-value)) if value >= 0 else math.exp(value) / (1.0 + math.exp(value))
    )


def _correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    if len(xs) < 2:
        return math.nan
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    var_x = sum((x - mean_x) ** 2 for x in xs)
    var_y = sum((y - mean_y) ** 2 for y in ys)
    return cov / math.sqrt(var_x * var_y) if var_x > 0 and var_y > 0 else math.nan
