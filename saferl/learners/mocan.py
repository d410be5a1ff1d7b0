"""MoCAN: one-shot safety alignment by optimal dualization (ALGORITHMS.md §1, §4), on the world
(:func:`run_mocan`) or a hub setup (:func:`saferl.learners.hub.run_hub_mocan`).

1. sample K responses per prompt from the reference policy through the runtime and score them
   with the reward and cost scorers;
2. solve the plug-in dual at the cost limit (or a relative margin) for λ*; print and write the
   predicted reward–cost frontier (table and PNG) — with ``predict_only`` MoCAN stops here, the
   cheap way to choose a limit;
3. one unconstrained alignment on ``s = r − λ*·c``:

   a. ``stage="dpo"``: the K samples of each prompt are paired (0–1, 2–3, ...), labelled with
      ``P(y_0 ≻ y_1) = σ(s_0 − s_1)`` (soft labels, or Bernoulli draws with ``soft_labels=False``)
      and DPO runs at the dual's β — its population optimum is ``π_λ*``;
   b. ``stage="ppo"``: the PPO-Lagrangian loop with the multiplier fixed at λ* (the same
      rollout, advantage and update code as ``ppo_lag``; only the multiplier differs).

Pairs are built from the sampled token ids themselves (not re-tokenised text), so a response cut
off by the length limit is trained on exactly as it was sampled.

The world and hub recipes share every step's code: :func:`sample_responses` and
:func:`score_samples` (step 1, with the world's calibrated or oracle scorers, or a hub setup's
score models), :func:`dualize_and_align` (steps 2 and 3a; step 3b is the caller's PPO stage). Only
the world evaluates the trained policy (exactly, against the ground truth).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from saferl.core.dual import DualProblem, DualSolution, predict_frontier
from saferl.core.dualized import composite_score, mocan_dual, pseudo_preference_prob
from saferl.data.collators import SequenceBatch, collate_prompts
from saferl.data.world import PolicyScore, build_world_tokenizer
from saferl.data.world.exact import MAX_RESPONSE_TOKENS
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners.offline import GroupSetup, train_policy_on_pairs
from saferl.learners.pipeline import (
    PipelineSettings,
    PreparedModels,
    calibrate,
    evaluate_exact,
    run_ppo_stage,
    world_truth,
)
from saferl.learners.preference import PreferenceTrainBatch
from saferl.learners.scorers import AffineScorer, ModelScorer, Scorer, WorldOracleScorer
from saferl.models import ModelSpec
from saferl.runtime import GenerationSpec, PolicyGroup, ReferenceGroup, ScoreGroup, init_ray
from saferl.runtime.batching import pad_and_concat
from saferl.tracking import Tracker

__all__ = [
    "MocanSettings",
    "MocanResult",
    "ScoredSamples",
    "sample_responses",
    "sample_reference",
    "score_samples",
    "sample_and_score",
    "dualize",
    "dualize_and_align",
    "pseudo_preference_batch",
    "train_dpo_policy",
    "train_dpo",
    "run_mocan",
]


@dataclass(frozen=True)
class MocanSettings:
    """MoCAN's own knobs (the world, scorers, runtime and PPO settings come from the pipeline's).

    Attributes:
        num_samples: K reference samples per prompt for the dual (published 128).
        margin: a relative safety margin ``b`` instead of the absolute limit (``None``: use the
            world's cost limit).
        stage: ``"dpo"`` (pseudo-preference DPO) or ``"ppo"`` (PPO with λ fixed at λ*).
        soft_labels: DPO on the probabilities themselves (lower variance) or on Bernoulli draws.
        dpo_steps, dpo_pairs_per_step, dpo_learning_rate: the DPO stage.
        frontier_grid: λ values of the predicted frontier.
        predict_only: stop after step 2.
        num_prompts: on a hub setup, the dual's prompts are this many distinct training prompts
            (a seeded choice; None: all of them; published 1000). The world always uses its own
            prompt set.
        seed: sampling and label seed.
    """

    num_samples: int = 64
    margin: float | None = None
    stage: str = "dpo"
    soft_labels: bool = True
    dpo_steps: int = 200
    dpo_pairs_per_step: int = 32
    dpo_learning_rate: float = 1e-3
    frontier_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
    predict_only: bool = False
    num_prompts: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stage not in ("dpo", "ppo"):
            raise ValueError(f"learner.mocan.stage must be 'dpo' or 'ppo'; found {self.stage!r}")
        if self.num_samples < 2 or self.num_samples % 2:
            raise ValueError(f"learner.mocan.num_samples must be an even number >= 2; found {self.num_samples}")
        if self.num_prompts is not None and (not isinstance(self.num_prompts, int) or self.num_prompts < 1):
            raise ValueError(f"learner.mocan.num_prompts must be an integer >= 1 or null; found {self.num_prompts!r}")


@dataclass(frozen=True)
class MocanResult:
    """What MoCAN measured: the dual's solution and prediction, and (unless predict-only) the
    trained policy's exact scores.

    Attributes:
        dual: λ̂ and the predicted statistics of ``π_λ̂`` (from the samples).
        frontier_files: the CSV and PNG of the predicted frontier.
        trained: exact ground-truth scores of the aligned policy (None with ``predict_only``).
        reference, optimum: exact scores of the reference and the exact optimum.
        optimal_multiplier: the exact λ*.
        seconds: wall seconds per step.
    """

    dual: DualSolution
    frontier_files: tuple[Path, Path]
    trained: PolicyScore | None
    reference: PolicyScore | None
    optimum: PolicyScore | None
    optimal_multiplier: list[float] | None
    seconds: dict[str, float]


@dataclass(frozen=True)
class ScoredSamples:
    """K samples per prompt with their scores.

    Attributes:
        input_ids, attention_mask, response_mask: ``(P·K, seq_len)``, prompt-major (row ``i·K + k``).
        rewards: ``(P, K)``; costs: ``(P, K, 1)``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    rewards: torch.Tensor
    costs: torch.Tensor


# ---------------------------------------------------------------------------------------------
# Step 1: reference samples and their scores (world and hub)
# ---------------------------------------------------------------------------------------------


def _row_chunks(rows: int, rows_per_call: int | None, num_ranks: int) -> list[torch.Tensor]:
    """Row indices per call: one call with all rows (``rows_per_call=None``), or chunks of
    ``rows_per_call`` rows whose last, shorter one is padded with copies of its first row up to a
    multiple of the ranks (callers drop the copies)."""
    if rows_per_call is None:
        return [torch.arange(rows)]
    if rows_per_call < 1 or rows_per_call % num_ranks:
        raise ValueError(f"rows_per_call must be a positive multiple of the {num_ranks} ranks; found {rows_per_call}")
    chunks = []
    for start in range(0, rows, rows_per_call):
        index = torch.arange(start, min(start + rows_per_call, rows))
        chunks.append(torch.cat([index, index[:1].repeat(-len(index) % num_ranks)]))
    return chunks


def _concat_sequences(batches: Sequence[SequenceBatch], pad_token_id: int) -> SequenceBatch:
    """Right-padded batches of different widths as one (right-padded to the widest)."""
    if len(batches) == 1:
        return batches[0]
    return SequenceBatch(
        pad_and_concat([b.input_ids for b in batches], pad_token_id),
        pad_and_concat([b.attention_mask for b in batches], False),
        pad_and_concat([b.response_mask for b in batches], False),
    )


def sample_responses(
    policy: ModelSpec,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    num_samples: int,
    *,
    template: str,
    max_prompt_length: int,
    generation: GenerationSpec,
    setup: GroupSetup,
    rows_per_call: int | None = None,
) -> tuple[SequenceBatch, list[str]]:
    """K samples per prompt from ``policy`` through a sampler group.

    Args:
        prompts: the ``P`` prompts (untemplated); template, max_prompt_length: how they are
            formatted and cut (from the left).
        generation: sampling (its seed seeds the samples).
        rows_per_call: sampled rows per ``generate`` call (None: all in one call). Call ``c > 0``
            samples with seed ``generation.seed + c·1000003``, so no two calls share per-row
            generators.

    Returns:
        The sampled rows ``(P·K, seq_len)``, RIGHT-padded, prompt-major (row ``i·K + k``), and the
        prompt of each row.
    """
    rows = [prompt for prompt in prompts for _ in range(num_samples)]
    pad_token_id = int(tokenizer.pad_token_id)
    sampler = PolicyGroup(policy, tokenizer, setup.engine(0.0, setup.num_ranks), setup.group, setup.runtime,
                          role="reference_sampler", seed=setup.seed)
    try:
        pieces = []
        for call, index in enumerate(_row_chunks(len(rows), rows_per_call, setup.num_ranks)):
            keep = len(set(index.tolist()))  # padding copies repeat the chunk's first row
            generated = sampler.generate(
                collate_prompts([rows[i] for i in index.tolist()], tokenizer, max_prompt_length, template=template),
                generation if call == 0 else replace(generation, seed=generation.seed + call * 1_000_003),
            )
            batch = generated.to_sequence_batch(pad_token_id)
            pieces.append(SequenceBatch(batch.input_ids[:keep], batch.attention_mask[:keep],
                                        batch.response_mask[:keep]))
    finally:
        sampler.shutdown()
    return _concat_sequences(pieces, pad_token_id), rows


def _scores(scorer: Scorer, batch: SequenceBatch, prompts: Sequence[str], rows_per_call: int | None,
            num_ranks: int) -> torch.Tensor:
    """``scorer``'s first output of every row ``(rows,)``, in calls of ``rows_per_call`` rows."""
    scores = []
    for index in _row_chunks(len(prompts), rows_per_call, num_ranks):
        keep = len(set(index.tolist()))
        width = int(batch.attention_mask[index].sum(-1).max())  # right padding: real tokens first
        chunk = SequenceBatch(batch.input_ids[index, :width], batch.attention_mask[index, :width],
                              batch.response_mask[index, :width])
        scores.append(scorer.score(chunk, [prompts[i] for i in index.tolist()])[:keep, 0])
    return torch.cat(scores)


def score_samples(
    batch: SequenceBatch,
    prompts: Sequence[str],
    num_samples: int,
    scorers: Mapping[str, Scorer],
    *,
    rows_per_call: int | None = None,
    num_ranks: int = 1,
) -> ScoredSamples:
    """Step 1's scores: the ``"reward"`` and ``"cost"`` scorers on the samples.

    Args:
        batch: ``(P·K, seq_len)`` prompt-major samples (:func:`sample_responses`); prompts: their
            prompts, one per row.
        scorers: ``"reward"`` and ``"cost"`` (one output each used).
        rows_per_call: rows per scorer call (None: one call); num_ranks: the score groups' ranks.
    """
    shape = (len(prompts) // num_samples, num_samples)
    scores = {kind: _scores(scorers[kind], batch, prompts, rows_per_call, num_ranks).double().reshape(shape)
              for kind in ("reward", "cost")}
    return ScoredSamples(batch.input_ids, batch.attention_mask, batch.response_mask, scores["reward"],
                         scores["cost"].unsqueeze(-1))


def sample_reference(
    settings: PipelineSettings, prepared: PreparedModels, num_samples: int, seed: int, tokenizer
) -> tuple[SequenceBatch, list[str]]:
    """K samples per prompt from the world's SFT reference (:func:`sample_responses`)."""
    return sample_responses(
        ModelSpec(name_or_path=str(prepared.sft_dir)), tokenizer, prepared.prompts, num_samples,
        template=WORLD_TEMPLATE, max_prompt_length=MAX_SEQUENCE_LENGTH,
        generation=GenerationSpec(max_new_tokens=MAX_RESPONSE_TOKENS, seed=seed),
        setup=GroupSetup.from_pipeline(settings),
    )


def sample_and_score(
    settings: PipelineSettings, prepared: PreparedModels, num_samples: int, seed: int, tokenizer
) -> ScoredSamples:
    """Step 1 on the world: K reference samples per prompt (:func:`sample_reference`), scored
    (learned-calibrated or oracle scorers)."""
    batch, prompts = sample_reference(settings, prepared, num_samples, seed, tokenizer)
    setup = GroupSetup.from_pipeline(settings)
    groups = []
    try:
        scorers = {}
        for kind in ("reward", "cost"):
            if settings.scorers == "oracle":
                scorers[kind] = WorldOracleScorer(kind, tokenizer)
                continue
            directory = prepared.reward_dir if kind == "reward" else prepared.cost_dir
            group = ScoreGroup(ModelSpec(name_or_path=str(directory)), tokenizer,
                               setup.engine(0.0, setup.num_ranks), setup.group, setup.runtime,
                               num_outputs=1, kind=kind, role=f"{kind}_scorer", seed=setup.seed)
            groups.append(group)
            scorers[kind] = ModelScorer(group)
            if settings.calibrate_scorers:
                scorers[kind] = AffineScorer(scorers[kind], *calibrate(group, prepared.test_pairs, world_truth(kind),
                                                                       tokenizer, settings.num_ranks))
        return score_samples(batch, prompts, num_samples, scorers)
    finally:
        for group in groups:
            group.shutdown()


# ---------------------------------------------------------------------------------------------
# Steps 2–3: the dual, the predicted frontier, the relabelled pairs and DPO (world and hub)
# ---------------------------------------------------------------------------------------------


def dualize(
    rewards: torch.Tensor,
    costs: torch.Tensor,
    beta: float,
    *,
    cost_limit: float | list[float] | None = None,
    margin: float | None = None,
    frontier_grid: Sequence[float],
    folder: Path,
    title: str,
    heading: str,
) -> tuple[DualSolution, tuple[Path, Path]]:
    """Step 2: λ* of the plug-in dual at ``cost_limit`` or ``margin`` (exactly one given), and the
    predicted frontier over ``frontier_grid`` written to ``folder/frontier.{csv,png}`` (titled
    ``title``) and printed (headed ``heading``)."""
    from saferl.eval.frontier import print_frontier, write_frontier

    dual = mocan_dual(rewards, costs, beta, cost_limit=cost_limit, margin=margin)
    problem = DualProblem.from_samples(rewards, costs, beta, dual.cost_limit)
    frontier = predict_frontier(problem, torch.tensor(tuple(frontier_grid), dtype=torch.float64))
    files = write_frontier(frontier, folder, title, dual, overwrite=True)
    print_frontier(frontier, heading, dual)
    return dual, files


def pseudo_preference_batch(samples: ScoredSamples, multiplier: torch.Tensor, soft_labels: bool, seed: int) -> PreferenceTrainBatch:
    """Step 3a's data: samples paired 0–1, 2–3, ... per prompt, labelled ``σ(s_0 − s_1)``.

    Rows are interleaved as the preference learner expects (first response of a pair, then its
    second); pairs of identical responses carry no signal and are dropped.
    """
    scores = composite_score(samples.rewards, samples.costs, multiplier)  # (P, K)
    flat = scores.reshape(-1)
    probs = pseudo_preference_prob(flat[0::2], flat[1::2]).float()  # P(first ≻ second) per pair
    if not soft_labels:
        generator = torch.Generator().manual_seed(seed)
        probs = (torch.rand(probs.shape, generator=generator) < probs).float()
    first, second = samples.input_ids[0::2], samples.input_ids[1::2]
    keep = torch.nonzero((first != second).any(dim=-1)).flatten()  # same padding: same ids = same response
    rows = torch.stack([2 * keep, 2 * keep + 1], dim=1).flatten()  # interleaved row indices
    response_mask = samples.response_mask[rows]
    label = probs[keep].repeat_interleave(2)
    return PreferenceTrainBatch(
        input_ids=samples.input_ids[rows], attention_mask=samples.attention_mask[rows], response_mask=response_mask,
        response_lengths=response_mask.sum(-1).float(), preference_prob=label, chosen_is_safe=None,
        rejected_is_safe=None, ordering="chosen",
    )


def train_dpo_policy(
    policy: ModelSpec, data: PreferenceTrainBatch, tokenizer, setup: GroupSetup, beta: float, export_dir: Path, *,
    steps: int, pairs_per_step: int, learning_rate: float, seed: int, progress=None,
    reference: ReferenceGroup | None = None, tracker: Tracker | None = None,
) -> Path:
    """DPO at β from ``policy`` on ``data`` (reference log-probs attached first; the offline
    learner's :func:`~saferl.learners.offline.train_policy_on_pairs`); returns the exported policy
    folder. MoCAN's step 3a, and PeCAN's steps 1 and 4.

    Args:
        reference: a running group hosting ``policy`` to reuse (left running); None: one is
            started here and shut down with the policy.
    """
    policy_dir, _ = train_policy_on_pairs(
        policy, tokenizer, data, "dpo", {"beta": beta}, setup, export_dir, steps=steps,
        pairs_per_step=pairs_per_step, learning_rate=learning_rate, seed=seed, reference=reference,
        tracker=tracker, progress=progress,
    )
    return policy_dir


def train_dpo(
    settings: PipelineSettings, sft_dir: Path, data: PreferenceTrainBatch, tokenizer, export_dir: Path, *,
    steps: int, pairs_per_step: int, learning_rate: float, seed: int, progress=None,
    reference: ReferenceGroup | None = None,
) -> Path:
    """:func:`train_dpo_policy` on the world: from the SFT reference at the world's β."""
    return train_dpo_policy(
        ModelSpec(name_or_path=str(sft_dir)), data, tokenizer, GroupSetup.from_pipeline(settings),
        settings.world_beta, export_dir, steps=steps, pairs_per_step=pairs_per_step,
        learning_rate=learning_rate, seed=seed, progress=progress, reference=reference,
    )


def dualize_and_align(
    samples: ScoredSamples,
    mocan: MocanSettings,
    beta: float,
    cost_limit: float | list[float],
    *,
    policy: ModelSpec,
    tokenizer: PreTrainedTokenizerBase,
    setup: GroupSetup,
    output: Path,
    ppo_stage: Callable[[DualSolution], Path],
    progress=None,
    tracker: Tracker | None = None,
) -> tuple[DualSolution, tuple[Path, Path], Path | None, dict[str, float]]:
    """Steps 2–3 on scored reference samples, for the world and hub recipes alike.

    Args:
        samples: step 1's output; beta: the dual's and DPO's β.
        cost_limit: the absolute limit ``d`` (used when ``mocan.margin`` is None).
        policy: the reference policy, DPO's start; tokenizer, setup: its tokenizer and groups.
        output: MoCAN's folder: the frontier files and ``models/policy_dpo``.
        ppo_stage: step 3b, given the dual's solution; returns the exported policy folder.
        progress: ``progress("mocan_dpo", step, mocan.dpo_steps, metrics)``.

    Returns:
        The dual's solution, the frontier's CSV and PNG, the aligned policy's folder (None with
        ``predict_only``) and wall seconds of ``"dual"`` and ``"align"``.
    """
    report = progress or (lambda stage, step, total, metrics: None)
    seconds: dict[str, float] = {}

    # 2. The dual and the predicted frontier.
    clock = time.perf_counter()
    limit = {"cost_limit": cost_limit} if mocan.margin is None else {"margin": mocan.margin}
    dual, files = dualize(
        samples.rewards, samples.costs, beta, **limit, frontier_grid=mocan.frontier_grid, folder=output,
        title="MoCAN predicted frontier (reference samples)",
        heading=f"MoCAN: predicted frontier from {mocan.num_samples} samples per prompt",
    )
    seconds["dual"] = time.perf_counter() - clock
    if mocan.predict_only:
        return dual, files, None, seconds

    # 3. One unconstrained alignment on s = r − λ*·c.
    clock = time.perf_counter()
    if mocan.stage == "ppo":
        policy_dir = ppo_stage(dual)
    else:
        data = pseudo_preference_batch(samples, dual.multiplier, mocan.soft_labels, mocan.seed)
        policy_dir = train_dpo_policy(
            policy, data, tokenizer, setup, beta, output / "models" / "policy_dpo",
            steps=mocan.dpo_steps, pairs_per_step=mocan.dpo_pairs_per_step, learning_rate=mocan.dpo_learning_rate,
            seed=mocan.seed, tracker=tracker,
            progress=lambda step, metrics: report("mocan_dpo", step, mocan.dpo_steps, metrics),
        )
    seconds["align"] = time.perf_counter() - clock
    return dual, files, policy_dir, seconds


def run_mocan(
    settings: PipelineSettings, mocan: MocanSettings, prepared: PreparedModels, output_dir: str | Path,
    progress=None,
) -> MocanResult:
    """Steps 1–3 of the module docstring on the world, then the exact evaluation (step 3 and the
    evaluation skipped with ``predict_only``)."""
    init_ray(settings.runtime)
    output = Path(output_dir)
    tokenizer = build_world_tokenizer()

    # 1. Reference samples, scored.
    clock = time.perf_counter()
    samples = sample_and_score(settings, prepared, mocan.num_samples, mocan.seed, tokenizer)
    seconds = {"sample": time.perf_counter() - clock}

    # 2–3. The dual, the predicted frontier, and one unconstrained alignment on s = r − λ*·c.
    def ppo_stage(dual: DualSolution) -> Path:
        fixed = replace(settings, multiplier={"kind": "fixed", "value": [float(v) for v in dual.multiplier]})
        return run_ppo_stage(fixed, prepared, output / "mocan", "ppo_lag", progress=progress).policy_dir

    dual, files, policy_dir, stage_seconds = dualize_and_align(
        samples, mocan, settings.world_beta, settings.cost_limit, policy=ModelSpec(name_or_path=str(prepared.sft_dir)),
        tokenizer=tokenizer, setup=GroupSetup.from_pipeline(settings), output=output / "mocan", ppo_stage=ppo_stage,
        progress=progress,
    )
    seconds.update(stage_seconds)
    if policy_dir is None:
        return MocanResult(dual, files, None, None, None, None, seconds)
    reference_score, trained, optimum, optimal_multiplier = evaluate_exact(settings, prepared.sft_dir, policy_dir)
    return MocanResult(dual, files, trained, reference_score, optimum, optimal_multiplier, seconds)
