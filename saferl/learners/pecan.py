"""PeCAN: one-shot safety alignment from preferences only (docs/algorithms.md §4), on any setup.

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
   ``s = r − λ*·c`` (soft labels), and run DPO at β from ``π_ref``.

Which optimum each labelling reaches (``consistent``):

* ``consistent=True`` (default): the scores are ``β log(π/π_ref)``, in the units of the reward
  that generated the labels; DPO at β on ``σ(s_0 − s_1)`` targets ``π_λ* ∝ π_ref exp(s/β)``,
  the optimum of the dual just solved.
* ``consistent=False`` (the published PeCAN code): the raw log-ratios ``log(π/π_ref) = r/β``
  enter the dual and the labels, so DPO at β targets ``π ∝ π_ref exp(s/β²)`` — a more sharply
  tilted policy than the dual's prediction whenever ``β ≠ 1`` (and the margin is read in
  log-ratio units).

PeCAN's constraint lives in implicit units: the margin is a margin on ``E[−β log π_g/π_ref]``,
not on the world's ground-truth cost. The world's exact evaluation therefore reports the trained
policy's violation of ``cost_limit`` **as measured**, for comparison with the exact optimum
at that limit; it is not a target PeCAN was asked to meet.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from saferl.core.conventions import cost_from_utility
from saferl.core.dualized import pecan_scores
from saferl.core.targets import TiltTarget
from saferl.learners.mocan import (
    ScoredSamples,
    anchored_pairs,
    choose_prompts,
    dualize,
    sample_responses,
)
from saferl.learners.output import RunOutput
from saferl.learners.preference import train_policy_on_pairs
from saferl.learners.preference_update import build_preference_batch, group_sequence_logps
from saferl.learners.result import RunResult
from saferl.learners.settings import PecanSettings
from saferl.models import ModelSpec
from saferl.runtime import ReferenceGroup, init_ray
from saferl.runtime.resources import Resources
from saferl.setups.base import Needs, Setup

__all__ = ["PecanSettings", "implicit_scores", "needs", "run"]


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


def target(setup: Setup, settings: PecanSettings, multiplier: float) -> TiltTarget | None:
    """PeCAN's target where the labels' temperature τ is known (docs/algorithms.md §4, §8).

    DPO at β on labels ``σ(Δr/τ)`` gives implicit scores ``β log(π_r/π_ref) = r/τ`` (+ const(x)),
    so λ̂ is the same in ground-truth units, and the final DPO at β on ``σ(Δs)`` reaches
    ``π_ref·exp((r − λ̂c)/(β·τ))``; the published labelling (raw log-ratios ``r/(β·τ)``) reaches
    ``π_ref·exp((r − λ̂c)/(β²·τ))``."""
    tau = setup.label_temperature
    if tau is None:
        return None
    if settings.consistent:
        return TiltTarget(f"π_λ̂ at KL weight β·τ (τ = {tau:g}), as if the implicit models were exact",
                          settings.beta * tau, multiplier=multiplier)
    return TiltTarget(f"published labelling: KL weight β²·τ (τ = {tau:g}), as if the implicit models were exact",
                      settings.beta ** 2 * tau, multiplier=multiplier)


def needs(settings: PecanSettings) -> Needs:
    """The training pairs (of the implicit models) and the prompts (of the dual); no scorer."""
    return Needs(pairs=True, groups=2)  # DPO's policy and reference


def run(setup: Setup, settings: PecanSettings, resources: Resources, output: RunOutput) -> RunResult:
    """Steps 1–4 of the module docstring on ``setup``; writes into ``<output>/pecan``. Its headline
    is the dual's predicted objective (implicit units)."""
    setup.require(needs(settings), "pecan")
    init_ray(resources.runtime)
    folder = output.folder / "pecan"
    seconds: dict[str, float] = {}
    beta, tokenizer = settings.beta, setup.tokenizer
    rows = 2 * settings.dpo_pairs_per_step
    history: list[dict[str, float]] = []

    def dpo(data, export_dir: Path, stage: str, likelihood_weights=None) -> Path:
        """DPO at β from π_ref on ``data``, with the shared reference group; its steps are logged."""
        policy_dir, steps = train_policy_on_pairs(
            setup.policy, tokenizer, data, "dpo", {"beta": beta}, resources, export_dir,
            steps=settings.dpo_steps, pairs_per_step=settings.dpo_pairs_per_step,
            learning_rate=settings.dpo_learning_rate, seed=settings.seed, reference=reference,
            tracker=output.tracker, progress=output.stage_progress(stage, settings.dpo_steps),
            skip_nonfinite_batches=settings.skip_nonfinite_batches, likelihood_weights=likelihood_weights,
        )
        history.extend(steps)
        return policy_dir

    # One group hosting π_ref serves every step: the reference log-probs of each DPO data set
    # (steps 1 and 4) and of the samples (step 2).
    groups: list[ReferenceGroup] = []

    def start(kind: str, spec: ModelSpec) -> ReferenceGroup:
        groups.append(ReferenceGroup(spec, tokenizer, resources.engine(0.0, rows), resources.group,
                                     resources.runtime, role=f"{kind}_logps", seed=resources.seed, wait=False))
        return groups[-1]

    def implicit_spec(directory: Path) -> ModelSpec:
        return replace(setup.policy, name_or_path=str(directory), revision=None, lora=None)  # an exported folder

    try:
        reference = start("reference", setup.policy)

        # 1. The implicit models: DPO on the helpfulness and on the safety labels, from π_ref.
        clock = time.perf_counter()
        model_dirs = {}
        for kind, ordering in (("reward", "better"), ("safety", "safer")):
            data = build_preference_batch(setup.pairs, tokenizer, setup.max_length, setup.template, ordering=ordering)
            model_dirs[kind] = dpo(data, folder / "models" / f"implicit_{kind}", f"pecan_{kind}")
        seconds["implicit_models"] = time.perf_counter() - clock

        # 2. Reference samples and their sequence log-probs under π_r, π_g and π_ref.
        clock = time.perf_counter()
        prompts = choose_prompts(setup.prompts, settings.num_prompts, settings.seed)
        implicit = {kind: start(kind, implicit_spec(model_dirs[kind])) for kind in ("reward", "safety")}
        batch, _ = sample_responses(
            setup.policy, tokenizer, prompts, settings.num_samples, template=setup.template,
            max_prompt_length=setup.max_prompt_length, generation=replace(setup.generation, seed=settings.seed),
            resources=resources, rows_per_call=setup.rows_per_call,
        )
        shape = (len(prompts), settings.num_samples)
        logps = {kind: group_sequence_logps(group, batch, rows_per_call=rows).reshape(shape)
                 for kind, group in (*implicit.items(), ("reference", reference))}
        for group in implicit.values():
            group.shutdown()
            groups.remove(group)
        rewards, costs = implicit_scores(logps, beta, settings.consistent)
        samples = ScoredSamples(batch.input_ids, batch.attention_mask, batch.response_mask, rewards,
                                costs.unsqueeze(-1))
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"prompts": prompts, "rewards": samples.rewards, "costs": samples.costs}, folder / "scores.pt")
        seconds["sample"] = time.perf_counter() - clock

        # 3. The dual in implicit units at the relative margin, and the predicted frontier.
        clock = time.perf_counter()
        labelling = "consistent" if settings.consistent else "published"
        dual = dualize(
            samples.rewards, samples.costs, beta, margin=settings.margin, frontier_grid=settings.frontier_grid,
            units="implicit units", title=f"PeCAN predicted frontier (implicit units, {labelling} labelling)",
            heading=f"PeCAN: predicted frontier in implicit units ({labelling} labelling) from "
                    f"{settings.num_samples} samples per prompt",
        )
        seconds["dual"] = time.perf_counter() - clock
        result = RunResult(
            method="pecan", headline=float(dual.solution.objective), policy_dir=None, folder=folder,
            multiplier=[float(v) for v in dual.solution.multiplier], seconds=seconds, dual=dual,
            target=target(setup, settings, float(dual.solution.multiplier[0])),
            details={"units": "implicit", "labelling": labelling,
                     "reference_implicit_cost": float(samples.costs.mean()),
                     "implicit_model_dirs": {kind: str(path) for kind, path in model_dirs.items()},
                     "num_prompts": len(prompts), "num_samples": settings.num_samples,
                     "num_pairs": len(setup.pairs), "num_dropped_pairs": setup.num_dropped_pairs},
        )
        if settings.predict_only:
            return replace(result, history=history)

        # 4. Relabel the sample pairs with σ(s_0 − s_1), s = r − λ*·c, and run DPO at β from π_ref.
        clock = time.perf_counter()
        data, weights = anchored_pairs(samples, dual.solution.multiplier, soft_labels=True, seed=settings.seed,
                                       beta=beta, anchor_weight=settings.anchor_weight)
        policy_dir = dpo(data, folder / "models" / "policy_dpo", "pecan_dpo", weights)
        seconds["align"] = time.perf_counter() - clock
    finally:
        for group in groups:
            group.shutdown()
    return replace(result, policy_dir=Path(policy_dir), history=history)
