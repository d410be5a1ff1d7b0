"""MoCAN: one-shot safety alignment by optimal dualization (docs/algorithms.md §1, §4), on any setup.

1. sample K responses per prompt from the reference policy through the runtime and score them
   with the setup's reward scorer and each of its ``m`` cost scorers;
2. solve the plug-in dual at the cost limits (or a relative margin) for λ̂ ``(m,)`` — bracketed
   Newton for one cost, projected Newton for several — and predict the
   reward–cost frontier over ``frontier_grid`` — with ``predict_only`` MoCAN stops here, the cheap
   way to choose a limit;
3. one unconstrained alignment on ``s = r − λ̂·c``:

   a. ``stage="dpo"``: the K samples of each prompt are paired (0–1, 2–3, ...), labelled with
      ``P(y_0 ≻ y_1) = σ(s_0 − s_1)`` (soft labels, or Bernoulli draws with ``soft_labels=False``)
      and DPO runs at the dual's β — its population optimum is ``π_λ̂``. With ``anchor_weight``
      α > 0 the loss adds α times the sample-target cross-entropy
      (:func:`saferl.core.dualized.sample_target_weights`): DPO on a finite sample leaves the mass
      outside it free, and the anchor pins it without moving the target;
   b. ``stage="ppo"``: :func:`saferl.learners.ppo_lag.run` with the multiplier fixed at λ̂ (the
      same rollout, advantage and update code as ``ppo_lag``; only the multiplier differs), in
      ``<run>/mocan``.

Pairs are built from the sampled token ids themselves (not re-tokenised text), so a response cut
off by the length limit is trained on exactly as it was sampled. The samples' scores are saved
(``mocan/scores.pt``) so that the dual can be re-solved at another limit without resampling.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from saferl.core.dual import DualProblem, InfeasibleConstraintError, predict_frontier
from saferl.core.dualized import (
    composite_score,
    mocan_dual,
    pseudo_preference_prob,
    sample_target_weights,
)
from saferl.core.targets import TiltTarget
from saferl.data.batches import SequenceBatch
from saferl.data.collators import collate_prompts
from saferl.learners import ppo_lag
from saferl.learners.output import RunOutput
from saferl.learners.preference import train_policy_on_pairs
from saferl.learners.preference_update import PreferenceTrainBatch
from saferl.learners.result import DualPrediction, RunResult
from saferl.learners.scorers import Scorer
from saferl.learners.settings import MocanSettings
from saferl.models import ModelSpec
from saferl.runtime import GenerationSpec, PolicyGroup, ScoreGroup, init_ray
from saferl.runtime.batching import pad_and_concat
from saferl.runtime.resources import Resources
from saferl.setups.base import Needs, Setup

__all__ = [
    "MocanSettings",
    "ScoredSamples",
    "anchor_weights",
    "anchored_pairs",
    "build_scorers",
    "choose_prompts",
    "dualize",
    "needs",
    "pseudo_preference_batch",
    "run",
    "sample_responses",
    "score_samples",
]



@dataclass(frozen=True)
class ScoredSamples:
    """K samples per prompt with their scores.

    Attributes:
        input_ids, attention_mask, response_mask: ``(P·K, seq_len)``, prompt-major (row ``i·K + k``).
        rewards: ``(P, K)``; costs: ``(P, K, m)``, one column per cost scorer.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    rewards: torch.Tensor
    costs: torch.Tensor


def needs(settings: MocanSettings) -> Needs:
    """The reward and cost scorers; critic starts only for the PPO stage."""
    ppo = settings.stage == "ppo" and not settings.predict_only
    # the sampler, then policy and reference (DPO) or PPO's policy, reference and critics
    return Needs(scorers=True, critics=ppo, groups=4 if ppo else 2,
                 ptx=ppo and settings.ppo is not None and settings.ppo.ppo.ptx_coeff > 0)


def choose_prompts(prompts: Sequence[str], limit: int | None, seed: int) -> list[str]:
    """At most ``limit`` of ``prompts``: a seeded choice kept in data order (None: all)."""
    prompts = list(prompts)
    if limit is not None and limit < len(prompts):
        chosen = sorted(random.Random(seed).sample(range(len(prompts)), limit))
        prompts = [prompts[i] for i in chosen]
    return prompts


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
    resources: Resources,
    rows_per_call: int | None = None,
    sampler: PolicyGroup | None = None,
) -> tuple[SequenceBatch, list[str]]:
    """K samples per prompt from ``policy`` through a sampler group.

    Args:
        prompts: the ``P`` prompts (untemplated); template, max_prompt_length: how they are
            formatted and cut (from the left).
        generation: sampling (its seed seeds the samples).
        rows_per_call: sampled rows per ``generate`` call (None: all in one call). Call ``c > 0``
            samples with seed ``generation.seed + c·1000003``, so no two calls share per-row
            generators.
        sampler: a running policy group to sample from (left running; ``policy`` is then unused),
            e.g. C-DPO's policy between its DPO rounds; None: a sampler group started from
            ``policy`` here and shut down after sampling.

    Returns:
        The sampled rows ``(P·K, seq_len)``, RIGHT-padded, prompt-major (row ``i·K + k``), and the
        prompt of each row.
    """
    rows = [prompt for prompt in prompts for _ in range(num_samples)]
    pad_token_id = int(tokenizer.pad_token_id)
    own_sampler = sampler is None
    if own_sampler:
        sampler = PolicyGroup(policy, tokenizer, resources.engine(0.0, resources.num_ranks), resources.group,
                              resources.runtime, role="reference_sampler", seed=resources.seed)
    try:
        pieces = []
        for call, index in enumerate(_row_chunks(len(rows), rows_per_call, resources.num_ranks)):
            keep = len(set(index.tolist()))  # padding copies repeat the chunk's first row
            generated = sampler.generate(
                collate_prompts([rows[i] for i in index.tolist()], tokenizer, max_prompt_length, template=template),
                generation if call == 0 else replace(generation, seed=generation.seed + call * 1_000_003),
            )
            batch = generated.to_sequence_batch(pad_token_id)
            pieces.append(SequenceBatch(batch.input_ids[:keep], batch.attention_mask[:keep],
                                        batch.response_mask[:keep]))
    finally:
        if own_sampler:
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


def build_scorers(setup: Setup, resources: Resources, groups: list[ScoreGroup]) -> dict[str, Any]:
    """The setup's ``"reward"`` scorer and its ``"cost"`` scorers (one per cost), for
    :func:`score_samples`; every score group started is appended to ``groups`` (the caller shuts
    them down)."""
    started_kinds: list[str] = []

    def start_score_group(spec: ModelSpec, kind: str) -> ScoreGroup:
        # Several cost models run side by side: each group's role is distinct (cost_scorer, cost_scorer_1, ...).
        same_kind = started_kinds.count(kind)
        started_kinds.append(kind)
        role = f"{kind}_scorer" + (f"_{same_kind}" if same_kind else "")
        groups.append(ScoreGroup(spec, setup.tokenizer,
                                 resources.engine(0.0, setup.rows_per_call or resources.num_ranks),
                                 resources.group, resources.runtime, num_outputs=1, kind=kind,
                                 role=role, seed=resources.seed))
        return groups[-1]

    return {"reward": setup.reward.build(start_score_group),
            "cost": [source.build(start_score_group) for source in setup.costs]}


def score_samples(
    batch: SequenceBatch,
    prompts: Sequence[str],
    num_samples: int,
    scorers: Mapping[str, Scorer | Sequence[Scorer]],
    *,
    rows_per_call: int | None = None,
    num_ranks: int = 1,
) -> ScoredSamples:
    """Step 1's scores: the ``"reward"`` scorer and the ``"cost"`` scorers on the samples.

    Args:
        batch: ``(P·K, seq_len)`` prompt-major samples (:func:`sample_responses`); prompts: their
            prompts, one per row.
        scorers: ``"reward"`` (one scorer) and ``"cost"`` (one scorer, or one per cost, in the
            order of the limits); one output of each is used.
        rows_per_call: rows per scorer call (None: one call); num_ranks: the score groups' ranks.
    """
    shape = (len(prompts) // num_samples, num_samples)

    def scored(scorer: Scorer) -> torch.Tensor:  # (P, K)
        return _scores(scorer, batch, prompts, rows_per_call, num_ranks).double().reshape(shape)

    cost_scorers = scorers["cost"] if isinstance(scorers["cost"], Sequence) else [scorers["cost"]]
    costs = torch.stack([scored(scorer) for scorer in cost_scorers], dim=-1)  # (P, K, m)
    return ScoredSamples(batch.input_ids, batch.attention_mask, batch.response_mask, scored(scorers["reward"]), costs)


# ---------------------------------------------------------------------------------------------
# Steps 2–3: the dual, the predicted frontier, the relabelled pairs and DPO
# ---------------------------------------------------------------------------------------------


def dualize(
    rewards: torch.Tensor,
    costs: torch.Tensor,
    beta: float,
    *,
    cost_limit: float | Sequence[float] | None = None,
    margin: float | None = None,
    frontier_grid: Sequence[float],
    units: str,
    title: str,
    heading: str,
) -> DualPrediction:
    """Step 2: λ̂ of the plug-in dual at ``cost_limit`` or ``margin`` (exactly one given), and the
    predicted frontier over ``frontier_grid`` (the caller writes and prints it)."""
    solution = mocan_dual(rewards, costs, beta, cost_limit=cost_limit, margin=margin)
    problem = DualProblem.from_samples(rewards, costs, beta, solution.cost_limit)
    frontier = predict_frontier(problem, torch.tensor(tuple(frontier_grid), dtype=torch.float64))
    return DualPrediction(solution, frontier, units, title, heading)


def pseudo_preference_batch(samples: ScoredSamples, multiplier: torch.Tensor, soft_labels: bool, seed: int,
                            keep_identical: bool = False) -> PreferenceTrainBatch:
    """Step 3a's data: samples paired 0–1, 2–3, ... per prompt, labelled ``σ(s_0 − s_1)``.

    Rows are interleaved as the preference learner expects (first response of a pair, then its
    second). Pairs of identical responses carry no DPO signal and are dropped, unless
    ``keep_identical`` (the anchor term learns from every sample): the rows are then the samples
    in their own order.
    """
    scores = composite_score(samples.rewards, samples.costs, multiplier)  # (P, K)
    flat = scores.reshape(-1)
    probs = pseudo_preference_prob(flat[0::2], flat[1::2]).float()  # P(first ≻ second) per pair
    if not soft_labels:
        generator = torch.Generator().manual_seed(seed)
        probs = (torch.rand(probs.shape, generator=generator) < probs).float()
    first, second = samples.input_ids[0::2], samples.input_ids[1::2]
    keep = torch.arange(len(first)) if keep_identical else torch.nonzero((first != second).any(dim=-1)).flatten()  # same padding: same ids = same response
    rows = torch.stack([2 * keep, 2 * keep + 1], dim=1).flatten()  # interleaved row indices
    response_mask = samples.response_mask[rows]
    label = probs[keep].repeat_interleave(2)
    return PreferenceTrainBatch(
        input_ids=samples.input_ids[rows], attention_mask=samples.attention_mask[rows], response_mask=response_mask,
        response_lengths=response_mask.sum(-1).float(), preference_prob=label, chosen_is_safe=None,
        rejected_is_safe=None, ordering="chosen",
    )


def anchor_weights(samples: ScoredSamples, multiplier: torch.Tensor, beta: float,
                   anchor_weight: float) -> Callable[[PreferenceTrainBatch], torch.Tensor]:
    """Step 3a's anchor: the rows' ``likelihood_weight`` as a function of the batch of
    ``pseudo_preference_batch(..., keep_identical=True)`` (rows = samples, in order) once its
    reference log-probs are attached: ``α · (number of pairs) ·`` :func:`sample_target_weights`,
    so that the per-step mean over pairs estimates α times the sample-target cross-entropy.

    The samples may come from any policy (C-DPO samples its current one): the target on them is
    ``π_ref·e^{s/β}`` restricted to the sample, whatever drew it."""
    scores = composite_score(samples.rewards, samples.costs, multiplier).reshape(-1)  # (P·K,)
    prompt_index = torch.arange(len(scores)) // samples.rewards.shape[1]
    # Rows are prompt + response, right-padded to one width: equal rows hold the same response.
    response_index = torch.unique(samples.input_ids, dim=0, return_inverse=True)[1]

    def weights(batch: PreferenceTrainBatch) -> torch.Tensor:
        if batch.ref_logps is None or len(batch.ref_logps) != len(scores):
            raise ValueError(f"the anchor needs the reference log-probs of all {len(scores)} samples, in order")
        row_weights = sample_target_weights(prompt_index, response_index, batch.ref_logps, scores, beta)
        return anchor_weight * batch.num_pairs * row_weights

    return weights


def anchored_pairs(samples: ScoredSamples, multiplier: torch.Tensor, *, soft_labels: bool, seed: int, beta: float,
                   anchor_weight: float) -> tuple[PreferenceTrainBatch, Callable | None]:
    """Step 3a's data as MoCAN, PeCAN and C-DPO train on it: the relabelled pairs
    (:func:`pseudo_preference_batch`, every sample kept when anchored) and, for ``anchor_weight``
    α > 0, the :func:`anchor_weights` function ``train_policy_on_pairs`` takes (None: DPO alone)."""
    anchored = anchor_weight > 0
    data = pseudo_preference_batch(samples, multiplier, soft_labels, seed, keep_identical=anchored)
    return data, (anchor_weights(samples, multiplier, beta, anchor_weight) if anchored else None)


def run(setup: Setup, settings: MocanSettings, resources: Resources, output: RunOutput) -> RunResult:
    """Steps 1–3 of the module docstring on ``setup``; writes into ``<output>/mocan``."""
    setup.require(needs(settings), "mocan")
    init_ray(resources.runtime)
    folder = output.folder / "mocan"
    folder.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    # 1. K reference samples per prompt, scored by the setup's reward and cost scorers.
    clock = time.perf_counter()
    prompts = choose_prompts(setup.prompts, settings.num_prompts, settings.seed)
    rows_per_call = setup.rows_per_call
    batch, rows = sample_responses(
        setup.policy, setup.tokenizer, prompts, settings.num_samples, template=setup.template,
        max_prompt_length=setup.max_prompt_length, generation=replace(setup.generation, seed=settings.seed),
        resources=resources, rows_per_call=rows_per_call,
    )
    groups: list[ScoreGroup] = []
    try:
        scorers = build_scorers(setup, resources, groups)
        samples = score_samples(batch, rows, settings.num_samples, scorers, rows_per_call=rows_per_call,
                                num_ranks=resources.num_ranks)
    finally:
        for group in groups:
            group.shutdown()
    torch.save({"prompts": prompts, "rewards": samples.rewards, "costs": samples.costs}, folder / "scores.pt")
    seconds["sample"] = time.perf_counter() - clock

    # 2. The dual and the predicted frontier.
    clock = time.perf_counter()
    limit = {"cost_limit": settings.cost_limit} if settings.margin is None else {"margin": settings.margin}
    try:
        dual = dualize(
            samples.rewards, samples.costs, settings.beta, **limit, frontier_grid=settings.frontier_grid,
            units=setup.score_units, title="MoCAN predicted frontier (reference samples)",
            heading=f"MoCAN: predicted frontier from {settings.num_samples} samples per prompt",
        )
    except InfeasibleConstraintError as error:
        # The limit here is the root cost_limit less scorers.cost_margin: say which keys move it.
        raise InfeasibleConstraintError(
            f"MoCAN's dual on the reference samples' scores: {error} The limits are the root cost_limit less "
            "scorers.cost_margin (with learned scorers); lower the margin or loosen cost_limit.",
            error.cost_limit, error.min_achievable_cost) from error
    seconds["dual"] = time.perf_counter() - clock
    details = {"num_prompts": len(prompts), "num_samples": settings.num_samples,
               "reference_reward": float(samples.rewards.mean()),
               "reference_cost": samples.costs.mean(dim=(0, 1)).tolist(), "stage": settings.stage}
    multiplier = [float(v) for v in dual.solution.multiplier]
    # Its target: DPO on σ(s_0 − s_1) at β, or PPO with λ held at λ̂ (§1 streams), reach π_λ̂.
    target = TiltTarget(f"π_λ̂ (λ̂ from {settings.num_samples} samples per prompt)", settings.beta,
                        multiplier=tuple(multiplier))
    result = RunResult(method="mocan", headline=float(dual.solution.objective), policy_dir=None, folder=folder,
                       multiplier=multiplier, seconds=seconds, dual=dual, target=target, details=details)
    if settings.predict_only:
        return result

    # 3. One unconstrained alignment on s = r − λ̂·c.
    clock = time.perf_counter()
    if settings.stage == "ppo":
        fixed = replace(settings.ppo, multiplier={"kind": "fixed", "value": multiplier},
                        cost_limit=tuple(float(v) for v in dual.solution.cost_limit))
        aligned = ppo_lag.run(setup, fixed, resources, output.under("mocan"))
        policy_dir, history = aligned.policy_dir, aligned.history
    else:
        data, weights = anchored_pairs(samples, dual.solution.multiplier, soft_labels=settings.soft_labels,
                                       seed=settings.seed, beta=settings.beta, anchor_weight=settings.anchor_weight)
        policy_dir, history = train_policy_on_pairs(
            setup.policy, setup.tokenizer, data, "dpo", {"beta": settings.beta}, resources,
            folder / "models" / "policy_dpo", steps=settings.dpo_steps, pairs_per_step=settings.dpo_pairs_per_step,
            learning_rate=settings.dpo_learning_rate, seed=settings.seed, tracker=output.tracker,
            progress=output.stage_progress("mocan_dpo", settings.dpo_steps),
            skip_nonfinite_batches=settings.skip_nonfinite_batches,
            likelihood_weights=weights,
        )
    seconds["align"] = time.perf_counter() - clock
    return replace(result, policy_dir=Path(policy_dir), history=history)
