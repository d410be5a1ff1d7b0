"""PeCAN: one-shot safety alignment from preferences only (ALGORITHMS.md §4), on the world
(:func:`run_pecan`) or a hub setup (:func:`saferl.learners.hub.run_hub_pecan`).

No reward or cost model: two DPO policies trained from the SFT reference ``π_ref`` give implicit
scores through their log-ratios, and the rest is MoCAN (:mod:`saferl.learners.mocan`, whose
sampling, relabelling and DPO code this module reuses).

1. train ``π_r`` by DPO at β on the helpfulness labels (``ordering="better"``) and ``π_g`` on the
   safety labels (``ordering="safer"``) of the world's training pairs, each from ``π_ref``, and
   export both;
2. sample K responses per prompt from ``π_ref`` and compute ``log π_r/π_ref`` and
   ``log π_g/π_ref`` of every sample (sequence log-prob = token log-probs summed over the
   response mask, from reference groups hosting ``π_r``, ``π_g`` and ``π_ref``). The implicit
   scores are :func:`~saferl.core.dualized.pecan_scores` of those log-ratios: ``r`` and ``g``,
   and the cost ``c = −g`` (:func:`~saferl.core.conventions.cost_from_utility`);
3. solve the dual in those units with the **relative** margin ``b`` (be safer than the reference
   by ``b``: ``d = E_ref c − b``; the ``const(x)`` of the implicit scores cancels in it), print
   and write the predicted frontier (CSV and PNG) — with ``predict_only`` PeCAN stops here;
4. relabel the sample pairs (0–1, 2–3, ... per prompt) with ``σ(s_0 − s_1)``,
   ``s = r − λ*·c`` (soft labels), and run DPO at β from ``π_ref``;
5. evaluate exactly (:func:`~saferl.learners.pipeline.evaluate_exact`, ground truth) — on the
   world only: a hub setup has no ground truth.

Steps 1–4 are :func:`pecan_align`, the one body of both recipes.

Which optimum each labelling reaches (``consistent``):

* ``consistent=True`` (default): the scores are ``β log(π/π_ref)``, in the units of the reward
  that generated the labels; DPO at β on ``σ(s_0 − s_1)`` targets ``π_λ* ∝ π_ref exp(s/β)``,
  the optimum of the dual just solved.
* ``consistent=False`` (the published PeCAN code): the raw log-ratios ``log(π/π_ref) = r/β``
  enter the dual and the labels, so DPO at β targets ``π ∝ π_ref exp(s/β²)`` — a more sharply
  tilted policy than the dual's prediction whenever ``β ≠ 1`` (and the margin is read in
  log-ratio units).

PeCAN's constraint lives in implicit units: the margin is a margin on ``E[−β log π_g/π_ref]``,
not on the world's ground-truth cost. The exact evaluation therefore reports the trained
policy's violation of ``world.cost_limit`` **as measured**, for comparison with the exact optimum
at that limit; it is not a target PeCAN was asked to meet.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from saferl.core.conventions import cost_from_utility
from saferl.core.dual import DualSolution
from saferl.core.dualized import pecan_scores
from saferl.data import load_preference_dataset
from saferl.data.records import SafetyPreferencePair
from saferl.data.world import PolicyScore, build_world_tokenizer
from saferl.data.world.exact import MAX_RESPONSE_TOKENS
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners.mocan import (
    ScoredSamples,
    dualize,
    pseudo_preference_batch,
    sample_responses,
    train_dpo_policy,
)
from saferl.learners.offline import GroupSetup
from saferl.learners.pipeline import PipelineSettings, PreparedModels, evaluate_exact
from saferl.learners.preference import build_preference_batch, group_sequence_logps
from saferl.models import ModelSpec
from saferl.runtime import GenerationSpec, ReferenceGroup, init_ray
from saferl.tracking import Tracker

__all__ = ["PecanSettings", "PecanResult", "PecanStages", "implicit_scores", "pecan_align", "run_pecan"]

DEFAULT_FRONTIER_GRID = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


@dataclass(frozen=True)
class PecanSettings:
    """PeCAN's own knobs (the world and runtime settings come from the pipeline's).

    Attributes:
        num_samples: K reference samples per prompt for the dual (even, ``>= 2``: they are paired).
        margin: the relative safety margin ``b >= 0`` in implicit safety units: be safer than the
            reference by ``b`` in ``E[c]``, ``c = −β log(π_g/π_ref)`` (``−log(π_g/π_ref)`` with
            ``consistent=False``).
        consistent: the consistent labelling, β inside the scores (targets ``π_λ*``); False: the
            published raw log-ratios (targets ``π ∝ π_ref exp(s/β²)``).
        dpo_steps, dpo_pairs_per_step, dpo_learning_rate: every DPO run (``π_r``, ``π_g`` and the
            final alignment).
        frontier_grid: λ values of the predicted frontier.
        predict_only: stop after step 3.
        num_prompts: on a hub setup, the dual's prompts are this many distinct training prompts
            (a seeded choice; None: all of them). The world always uses its own prompt set.
        seed: sampling and pair-order seed.
    """

    num_samples: int = 64
    margin: float = 0.1
    consistent: bool = True
    dpo_steps: int = 200
    dpo_pairs_per_step: int = 32
    dpo_learning_rate: float = 1e-3
    frontier_grid: tuple[float, ...] = DEFAULT_FRONTIER_GRID
    predict_only: bool = False
    num_prompts: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.num_samples, int) or self.num_samples < 2 or self.num_samples % 2:
            raise ValueError(f"learner.pecan.num_samples must be an even integer >= 2; found {self.num_samples!r}")
        if self.margin is None or not float(self.margin) >= 0:
            raise ValueError(
                f"learner.pecan.margin must be a number >= 0 (implicit safety units); found {self.margin!r}"
            )
        if not isinstance(self.consistent, bool):
            raise ValueError(f"learner.pecan.consistent must be true or false; found {self.consistent!r}")
        if not isinstance(self.dpo_steps, int) or self.dpo_steps < 1:
            raise ValueError(f"learner.pecan.dpo_steps must be an integer >= 1; found {self.dpo_steps!r}")
        if not isinstance(self.dpo_pairs_per_step, int) or self.dpo_pairs_per_step < 1:
            raise ValueError(
                f"learner.pecan.dpo_pairs_per_step must be an integer >= 1; found {self.dpo_pairs_per_step!r}"
            )
        if not float(self.dpo_learning_rate) > 0:
            raise ValueError(f"learner.pecan.dpo_learning_rate must be > 0; found {self.dpo_learning_rate!r}")
        if self.num_prompts is not None and (not isinstance(self.num_prompts, int) or self.num_prompts < 1):
            raise ValueError(f"learner.pecan.num_prompts must be an integer >= 1 or null; found {self.num_prompts!r}")
        if not self.frontier_grid or any(float(v) < 0 for v in self.frontier_grid):
            raise ValueError(
                f"learner.pecan.frontier_grid must be a non-empty list of λ >= 0; found {self.frontier_grid!r}"
            )


@dataclass(frozen=True)
class PecanResult:
    """What PeCAN measured.

    Attributes:
        dual: λ̂ and the predicted statistics of ``π_λ̂``, in implicit units.
        frontier_files: the CSV and PNG of the predicted frontier.
        implicit_model_dirs: the exported ``π_r`` (helpfulness) and ``π_g`` (safety) DPO policies.
        reference_implicit_cost: ``E_ref c`` of the samples (implicit units); the dual's limit is
            this minus the margin.
        trained: exact ground-truth scores of the aligned policy (None with ``predict_only``).
        reference, optimum: exact scores of the reference and the exact optimum at
            ``world.cost_limit`` (None with ``predict_only``).
        optimal_multiplier: the exact λ* at ``world.cost_limit`` (ground-truth units).
        consistent: which labelling was used.
        seconds: wall seconds per step.
    """

    dual: DualSolution
    frontier_files: tuple[Path, Path]
    implicit_model_dirs: dict[str, Path]
    reference_implicit_cost: float
    trained: PolicyScore | None
    reference: PolicyScore | None
    optimum: PolicyScore | None
    optimal_multiplier: list[float] | None
    consistent: bool
    seconds: dict[str, float]


def implicit_scores(
    logps: dict[str, torch.Tensor], beta: float, consistent: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2's scores from sequence log-probs: ``(r, c)`` with ``c = −g``.

    Args:
        logps: ``"reward"`` (``log π_r``), ``"safety"`` (``log π_g``) and ``"reference"``
            (``log π_ref``) of the samples, each the same shape (e.g. ``(P, K)``).
        beta: the β the implicit policies were trained with.
        consistent: see :func:`saferl.core.dualized.pecan_scores`.

    Returns:
        ``r`` and ``c``, the shape of the inputs, float64.
    """
    reference = logps["reference"].double()
    reward = pecan_scores(logps["reward"].double() - reference, beta, consistent)
    safety = pecan_scores(logps["safety"].double() - reference, beta, consistent)
    return reward, cost_from_utility(safety)


@dataclass(frozen=True)
class PecanStages:
    """What steps 1–4 produced (:func:`pecan_align`).

    Attributes:
        dual, frontier_files, implicit_model_dirs, reference_implicit_cost: as in
            :class:`PecanResult`.
        samples: the reference samples with their implicit scores (rewards ``(P, K)``, costs
            ``(P, K, 1)``).
        policy_dir: the aligned policy (None with ``predict_only``).
        seconds: wall seconds per step.
    """

    dual: DualSolution
    frontier_files: tuple[Path, Path]
    implicit_model_dirs: dict[str, Path]
    reference_implicit_cost: float
    samples: ScoredSamples
    policy_dir: Path | None
    seconds: dict[str, float]


def pecan_align(
    pairs: Sequence[SafetyPreferencePair],
    pecan: PecanSettings,
    beta: float,
    *,
    policy: ModelSpec,
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    max_length: int,
    prompts: Sequence[str],
    max_prompt_length: int,
    generation: GenerationSpec,
    setup: GroupSetup,
    output: Path,
    rows_per_call: int | None = None,
    progress=None,
    tracker: Tracker | None = None,
) -> PecanStages:
    """Steps 1–4 of the module docstring on any reference policy, for the world and hub recipes.

    Args:
        pairs: the safety-labelled training pairs of the implicit models.
        beta: β of the implicit models, the dual and the final DPO.
        policy: ``π_ref`` (every DPO run's start); tokenizer: its tokenizer.
        template, max_length: how the pairs are formatted and cut (prompt + response tokens).
        prompts, max_prompt_length, generation: the dual's prompts, how they are cut, and the
            sampling of the K reference samples (its seed seeds them).
        setup: where the groups run; output: PeCAN's folder (``models/``, the frontier files).
        rows_per_call: sampled rows per ``generate`` call (None: one call).
        progress: ``progress(stage, step, total, metrics)`` with stages ``pecan_reward``,
            ``pecan_safety`` and ``pecan_dpo``.
    """
    report = progress or (lambda stage, step, total, metrics: None)
    seconds: dict[str, float] = {}
    dpo_options = {"steps": pecan.dpo_steps, "pairs_per_step": pecan.dpo_pairs_per_step,
                   "learning_rate": pecan.dpo_learning_rate, "seed": pecan.seed, "tracker": tracker}

    # One group hosting π_ref serves every step: the reference log-probs of each DPO data set
    # (steps 1 and 4) and of the samples (step 2).
    rows = 2 * pecan.dpo_pairs_per_step
    groups = []

    def start(kind: str, spec: ModelSpec) -> ReferenceGroup:
        groups.append(ReferenceGroup(spec, tokenizer, setup.engine(0.0, rows), setup.group, setup.runtime,
                                     role=f"{kind}_logps", seed=setup.seed, wait=False))
        return groups[-1]

    def implicit_spec(directory: Path) -> ModelSpec:
        return replace(policy, name_or_path=str(directory), revision=None, lora=None)  # an exported folder

    try:
        reference = start("reference", policy)

        # 1. The implicit models: DPO on the helpfulness and on the safety labels, from π_ref.
        clock = time.perf_counter()
        model_dirs = {}
        for kind, ordering in (("reward", "better"), ("safety", "safer")):
            data = build_preference_batch(pairs, tokenizer, max_length, template, ordering=ordering)
            model_dirs[kind] = train_dpo_policy(
                policy, data, tokenizer, setup, beta, output / "models" / f"implicit_{kind}",
                **dpo_options, reference=reference,
                progress=lambda step, metrics, kind=kind: report(f"pecan_{kind}", step, pecan.dpo_steps, metrics),
            )
        seconds["implicit_models"] = time.perf_counter() - clock

        # 2. Reference samples and their sequence log-probs under π_r, π_g and π_ref.
        clock = time.perf_counter()
        implicit = {kind: start(kind, implicit_spec(model_dirs[kind])) for kind in ("reward", "safety")}
        batch, _ = sample_responses(policy, tokenizer, prompts, pecan.num_samples, template=template,
                                    max_prompt_length=max_prompt_length, generation=generation, setup=setup,
                                    rows_per_call=rows_per_call)
        shape = (len(prompts), pecan.num_samples)
        logps = {kind: group_sequence_logps(group, batch, rows_per_call=rows).reshape(shape)
                 for kind, group in (*implicit.items(), ("reference", reference))}
        for group in implicit.values():
            group.shutdown()
            groups.remove(group)
        rewards, costs = implicit_scores(logps, beta, pecan.consistent)
        samples = ScoredSamples(batch.input_ids, batch.attention_mask, batch.response_mask, rewards,
                                costs.unsqueeze(-1))
        seconds["sample"] = time.perf_counter() - clock

        # 3. The dual in implicit units at the relative margin, and the predicted frontier.
        clock = time.perf_counter()
        labelling = "consistent" if pecan.consistent else "published"
        dual, files = dualize(
            samples.rewards, samples.costs, beta, margin=pecan.margin, frontier_grid=pecan.frontier_grid,
            folder=output, title=f"PeCAN predicted frontier (implicit units, {labelling} labelling)",
            heading=f"PeCAN: predicted frontier in implicit units ({labelling} labelling) from "
                    f"{pecan.num_samples} samples per prompt",
        )
        reference_cost = float(samples.costs.mean())
        seconds["dual"] = time.perf_counter() - clock
        if pecan.predict_only:
            return PecanStages(dual, files, model_dirs, reference_cost, samples, None, seconds)

        # 4. Relabel the sample pairs with σ(s_0 − s_1), s = r − λ*·c, and run DPO at β from π_ref.
        clock = time.perf_counter()
        data = pseudo_preference_batch(samples, dual.multiplier, soft_labels=True, seed=pecan.seed)
        policy_dir = train_dpo_policy(policy, data, tokenizer, setup, beta, output / "models" / "policy_dpo",
                                      **dpo_options, reference=reference,
                                      progress=lambda step, metrics: report("pecan_dpo", step, pecan.dpo_steps,
                                                                            metrics))
        seconds["align"] = time.perf_counter() - clock
    finally:
        for group in groups:
            group.shutdown()
    return PecanStages(dual, files, model_dirs, reference_cost, samples, policy_dir, seconds)


def run_pecan(
    settings: PipelineSettings, pecan: PecanSettings, prepared: PreparedModels, output_dir: str | Path,
    progress=None,
) -> PecanResult:
    """Steps 1–5 of the module docstring on the world (4–5 skipped with ``predict_only``)."""
    init_ray(settings.runtime)
    tokenizer = build_world_tokenizer()
    # 1–4. The shared body, on the world's pairs, prompts, template and lengths.
    data = prepared.sft_dir.parent.parent / "data" / "preferences_train.jsonl"
    stages = pecan_align(
        load_preference_dataset(str(data)).records, pecan, settings.world_beta,
        policy=ModelSpec(name_or_path=str(prepared.sft_dir)), tokenizer=tokenizer, template=WORLD_TEMPLATE,
        max_length=MAX_SEQUENCE_LENGTH, prompts=prepared.prompts, max_prompt_length=MAX_SEQUENCE_LENGTH,
        generation=GenerationSpec(max_new_tokens=MAX_RESPONSE_TOKENS, seed=pecan.seed),
        setup=GroupSetup.from_pipeline(settings), output=Path(output_dir) / "pecan", progress=progress,
    )
    seconds = dict(stages.seconds)
    if stages.policy_dir is None:
        return PecanResult(stages.dual, stages.frontier_files, stages.implicit_model_dirs,
                           stages.reference_implicit_cost, None, None, None, None, pecan.consistent, seconds)

    # 5. Exact evaluation (ground truth; the violation of world.cost_limit is reported as measured).
    clock = time.perf_counter()
    reference_score, trained, optimum, optimal_multiplier = evaluate_exact(settings, prepared.sft_dir,
                                                                           stages.policy_dir)
    seconds["evaluation"] = time.perf_counter() - clock
    return PecanResult(stages.dual, stages.frontier_files, stages.implicit_model_dirs, stages.reference_implicit_cost,
                       trained, reference_score, optimum, optimal_multiplier, pecan.consistent, seconds)
