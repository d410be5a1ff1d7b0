"""MoCAN: one-shot safety alignment by optimal dualization (ALGORITHMS.md §1, §4), on the world.

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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from saferl.core.dual import DualProblem, DualSolution, predict_frontier
from saferl.core.dualized import composite_score, mocan_dual, pseudo_preference_prob
from saferl.data.collators import SequenceBatch, collate_prompts
from saferl.data.world import PolicyScore, build_world_tokenizer
from saferl.data.world.exact import MAX_RESPONSE_TOKENS
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners.pipeline import (
    PipelineSettings,
    PreparedModels,
    _deepspeed,
    _group,
    calibrate,
    evaluate_exact,
    run_ppo_stage,
    world_truth,
)
from saferl.learners.preference import (
    PreferenceTrainBatch,
    attach_reference_logps,
    train_preference,
)
from saferl.learners.scorers import AffineScorer, ModelScorer, WorldOracleScorer
from saferl.models import ModelSpec
from saferl.runtime import GenerationSpec, PolicyGroup, ReferenceGroup, ScoreGroup, init_ray

__all__ = [
    "MocanSettings",
    "MocanResult",
    "ScoredSamples",
    "sample_reference",
    "sample_and_score",
    "pseudo_preference_batch",
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
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stage not in ("dpo", "ppo"):
            raise ValueError(f"learner.mocan.stage must be 'dpo' or 'ppo'; found {self.stage!r}")
        if self.num_samples < 2 or self.num_samples % 2:
            raise ValueError(f"learner.mocan.num_samples must be an even number >= 2; found {self.num_samples}")


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


def sample_reference(
    settings: PipelineSettings, prepared: PreparedModels, num_samples: int, seed: int, tokenizer
) -> tuple[SequenceBatch, list[str]]:
    """K samples per prompt from the SFT reference through the runtime.

    Returns:
        The sampled rows ``(P·K, seq_len)``, prompt-major (row ``i·K + k``), and the prompt of
        each row.
    """
    sampler = PolicyGroup(ModelSpec(name_or_path=str(prepared.sft_dir)), tokenizer,
                          _deepspeed(settings, 0.0, settings.num_ranks), _group(settings), settings.runtime,
                          role="reference_sampler", seed=settings.seed)
    try:
        prompts = [prompt for prompt in prepared.prompts for _ in range(num_samples)]
        generated = sampler.generate(
            collate_prompts(prompts, tokenizer, MAX_SEQUENCE_LENGTH, template=WORLD_TEMPLATE),
            GenerationSpec(max_new_tokens=MAX_RESPONSE_TOKENS, seed=seed),
        )
    finally:
        sampler.shutdown()
    return generated.to_sequence_batch(int(tokenizer.pad_token_id)), prompts


def sample_and_score(
    settings: PipelineSettings, prepared: PreparedModels, num_samples: int, seed: int, tokenizer
) -> ScoredSamples:
    """Step 1: K reference samples per prompt (:func:`sample_reference`), scored
    (learned-calibrated or oracle scorers)."""
    batch, prompts = sample_reference(settings, prepared, num_samples, seed, tokenizer)
    groups = []
    try:
        scores = {}
        for kind in ("reward", "cost"):
            if settings.scorers == "oracle":
                scorer = WorldOracleScorer(kind, tokenizer)
            else:
                directory = prepared.reward_dir if kind == "reward" else prepared.cost_dir
                group = ScoreGroup(ModelSpec(name_or_path=str(directory)), tokenizer,
                                   _deepspeed(settings, 0.0, settings.num_ranks), _group(settings), settings.runtime,
                                   num_outputs=1, kind=kind, role=f"{kind}_scorer", seed=settings.seed)
                groups.append(group)
                scorer = ModelScorer(group)
                if settings.calibrate_scorers:
                    scorer = AffineScorer(scorer, *calibrate(group, prepared.test_pairs, world_truth(kind), tokenizer,
                                                             settings.num_ranks))
            scores[kind] = scorer.score(batch, prompts)[:, 0].double().reshape(len(prepared.prompts), num_samples)
    finally:
        for group in groups:
            group.shutdown()
    return ScoredSamples(batch.input_ids, batch.attention_mask, batch.response_mask, scores["reward"],
                         scores["cost"].unsqueeze(-1))


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


def train_dpo(
    settings: PipelineSettings, sft_dir: Path, data: PreferenceTrainBatch, tokenizer, export_dir: Path, *,
    steps: int, pairs_per_step: int, learning_rate: float, seed: int, progress=None,
    reference: ReferenceGroup | None = None,
) -> Path:
    """DPO at the world's β from the SFT reference on ``data`` (reference log-probs attached
    here); returns the exported policy folder. MoCAN's step 3a, and PeCAN's steps 1 and 4.

    Args:
        reference: a running group hosting the SFT reference to reuse (left running); None: one
            is started here and shut down with the policy.
    """
    rows = 2 * pairs_per_step
    sft = ModelSpec(name_or_path=str(sft_dir))
    groups = []
    try:
        if reference is None:
            reference = ReferenceGroup(sft, tokenizer, _deepspeed(settings, 0.0, rows), _group(settings),
                                       settings.runtime, role="reference", seed=settings.seed, wait=False)
            groups.append(reference)
        # Started in the background: it comes up while the reference scores the data.
        policy = PolicyGroup(sft, tokenizer, _deepspeed(settings, learning_rate, rows), _group(settings),
                             settings.runtime, role="policy", seed=settings.seed, wait=False)
        groups.append(policy)
        data = attach_reference_logps(data, reference, rows_per_call=rows)
        train_preference(policy, data, "dpo", {"beta": settings.world_beta}, steps=steps,
                         pairs_per_step=pairs_per_step, seed=seed, progress=progress)
        return policy.export_hf(export_dir)
    finally:
        for group in groups:
            group.shutdown()


def run_mocan(
    settings: PipelineSettings, mocan: MocanSettings, prepared: PreparedModels, output_dir: str | Path,
    progress=None,
) -> MocanResult:
    """Steps 1–3 of the module docstring (step 3 skipped with ``predict_only``)."""
    from saferl.eval.frontier import print_frontier, write_frontier

    init_ray(settings.runtime)
    output = Path(output_dir)
    tokenizer = build_world_tokenizer()
    seconds: dict[str, float] = {}
    report = progress or (lambda stage, step, total, metrics: None)

    # 1. Reference samples, scored.
    clock = time.perf_counter()
    samples = sample_and_score(settings, prepared, mocan.num_samples, mocan.seed, tokenizer)
    seconds["sample"] = time.perf_counter() - clock

    # 2. The dual and the predicted frontier.
    clock = time.perf_counter()
    if mocan.margin is None:
        dual = mocan_dual(samples.rewards, samples.costs, settings.world_beta, cost_limit=settings.cost_limit)
    else:
        dual = mocan_dual(samples.rewards, samples.costs, settings.world_beta, margin=mocan.margin)
    problem = DualProblem.from_samples(samples.rewards, samples.costs, settings.world_beta, dual.cost_limit)
    frontier = predict_frontier(problem, torch.tensor(mocan.frontier_grid, dtype=torch.float64))
    files = write_frontier(frontier, output / "mocan", "MoCAN predicted frontier (reference samples)", dual,
                           overwrite=True)
    print_frontier(frontier, f"MoCAN: predicted frontier from {mocan.num_samples} samples per prompt", dual)
    seconds["dual"] = time.perf_counter() - clock
    if mocan.predict_only:
        return MocanResult(dual, files, None, None, None, None, seconds)

    # 3. One unconstrained alignment on s = r − λ*·c.
    clock = time.perf_counter()
    if mocan.stage == "ppo":
        fixed = replace(settings, multiplier={"kind": "fixed", "value": [float(v) for v in dual.multiplier]})
        policy_dir = run_ppo_stage(fixed, prepared, output / "mocan", "ppo_lag", progress=progress).policy_dir
    else:
        data = pseudo_preference_batch(samples, dual.multiplier, mocan.soft_labels, mocan.seed)
        policy_dir = train_dpo(settings, prepared.sft_dir, data, tokenizer, output / "mocan" / "models" / "policy_dpo",
                               steps=mocan.dpo_steps, pairs_per_step=mocan.dpo_pairs_per_step,
                               learning_rate=mocan.dpo_learning_rate, seed=mocan.seed,
                               progress=lambda step, metrics: report("mocan_dpo", step, mocan.dpo_steps, metrics))
    seconds["align"] = time.perf_counter() - clock
    reference_score, trained, optimum, optimal_multiplier = evaluate_exact(settings, prepared.sft_dir, policy_dir)
    return MocanResult(dual, files, trained, reference_score, optimum, optimal_multiplier, seconds)
