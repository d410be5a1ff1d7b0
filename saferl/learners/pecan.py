"""PeCAN: one-shot safety alignment from preferences only (ALGORITHMS.md §4), on the world.

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
5. evaluate exactly (:func:`~saferl.learners.pipeline.evaluate_exact`, ground truth).

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
from dataclasses import dataclass
from pathlib import Path

import torch

from saferl.core.conventions import cost_from_utility
from saferl.core.dual import DualProblem, DualSolution, predict_frontier
from saferl.core.dualized import mocan_dual, pecan_scores
from saferl.data import load_preference_dataset
from saferl.data.world import PolicyScore, build_world_tokenizer
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners.mocan import (
    ScoredSamples,
    pseudo_preference_batch,
    sample_reference,
    train_dpo,
)
from saferl.learners.pipeline import (
    PipelineSettings,
    PreparedModels,
    _deepspeed,
    _group,
    evaluate_exact,
)
from saferl.learners.preference import build_preference_batch, group_sequence_logps
from saferl.models import ModelSpec
from saferl.runtime import ReferenceGroup, init_ray

__all__ = ["PecanSettings", "PecanResult", "implicit_scores", "run_pecan"]

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


def run_pecan(
    settings: PipelineSettings, pecan: PecanSettings, prepared: PreparedModels, output_dir: str | Path,
    progress=None,
) -> PecanResult:
    """Steps 1–5 of the module docstring (4–5 skipped with ``predict_only``)."""
    from saferl.eval.frontier import print_frontier, write_frontier

    init_ray(settings.runtime)
    output = Path(output_dir) / "pecan"
    tokenizer = build_world_tokenizer()
    seconds: dict[str, float] = {}
    report = progress or (lambda stage, step, total, metrics: None)
    dpo_options = {"steps": pecan.dpo_steps, "pairs_per_step": pecan.dpo_pairs_per_step,
                   "learning_rate": pecan.dpo_learning_rate, "seed": pecan.seed}

    # One group hosting π_ref serves every step: the reference log-probs of each DPO data set
    # (steps 1 and 4) and of the samples (step 2).
    rows = 2 * pecan.dpo_pairs_per_step
    groups = []

    def start(kind: str, directory: Path) -> ReferenceGroup:
        groups.append(ReferenceGroup(ModelSpec(name_or_path=str(directory)), tokenizer,
                                     _deepspeed(settings, 0.0, rows), _group(settings), settings.runtime,
                                     role=f"{kind}_logps", seed=settings.seed, wait=False))
        return groups[-1]

    try:
        reference = start("reference", prepared.sft_dir)

        # 1. The implicit models: DPO on the helpfulness and on the safety labels, from π_ref.
        clock = time.perf_counter()
        data_dir = prepared.sft_dir.parent.parent / "data"
        pairs = load_preference_dataset(str(data_dir / "preferences_train.jsonl")).records
        model_dirs = {}
        for kind, ordering in (("reward", "better"), ("safety", "safer")):
            data = build_preference_batch(pairs, tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE, ordering=ordering)
            model_dirs[kind] = train_dpo(
                settings, prepared.sft_dir, data, tokenizer, output / "models" / f"implicit_{kind}",
                **dpo_options, reference=reference,
                progress=lambda step, metrics, kind=kind: report(f"pecan_{kind}", step, pecan.dpo_steps, metrics),
            )
        seconds["implicit_models"] = time.perf_counter() - clock

        # 2. Reference samples and their sequence log-probs under π_r, π_g and π_ref.
        clock = time.perf_counter()
        implicit = {kind: start(kind, model_dirs[kind]) for kind in ("reward", "safety")}  # start while sampling
        batch, _ = sample_reference(settings, prepared, pecan.num_samples, pecan.seed, tokenizer)
        shape = (len(prepared.prompts), pecan.num_samples)
        logps = {kind: group_sequence_logps(group, batch, rows_per_call=rows).reshape(shape)
                 for kind, group in (*implicit.items(), ("reference", reference))}
        for group in implicit.values():
            group.shutdown()
            groups.remove(group)
        rewards, costs = implicit_scores(logps, settings.world_beta, pecan.consistent)
        samples = ScoredSamples(batch.input_ids, batch.attention_mask, batch.response_mask, rewards,
                                costs.unsqueeze(-1))
        seconds["sample"] = time.perf_counter() - clock

        # 3. The dual in implicit units at the relative margin, and the predicted frontier.
        clock = time.perf_counter()
        dual = mocan_dual(samples.rewards, samples.costs, settings.world_beta, margin=pecan.margin)
        problem = DualProblem.from_samples(samples.rewards, samples.costs, settings.world_beta, dual.cost_limit)
        frontier = predict_frontier(problem, torch.tensor(pecan.frontier_grid, dtype=torch.float64))
        labelling = "consistent" if pecan.consistent else "published"
        files = write_frontier(frontier, output, f"PeCAN predicted frontier (implicit units, {labelling} labelling)",
                               dual, overwrite=True)
        print_frontier(frontier, f"PeCAN: predicted frontier in implicit units ({labelling} labelling) from "
                       f"{pecan.num_samples} samples per prompt", dual)
        reference_cost = float(samples.costs.mean())
        seconds["dual"] = time.perf_counter() - clock
        if pecan.predict_only:
            return PecanResult(dual, files, model_dirs, reference_cost, None, None, None, None, pecan.consistent, seconds)

        # 4. Relabel the sample pairs with σ(s_0 − s_1), s = r − λ*·c, and run DPO at β from π_ref.
        clock = time.perf_counter()
        data = pseudo_preference_batch(samples, dual.multiplier, soft_labels=True, seed=pecan.seed)
        policy_dir = train_dpo(settings, prepared.sft_dir, data, tokenizer, output / "models" / "policy_dpo",
                               **dpo_options, reference=reference,
                               progress=lambda step, metrics: report("pecan_dpo", step, pecan.dpo_steps, metrics))
        seconds["align"] = time.perf_counter() - clock
    finally:
        for group in groups:
            group.shutdown()

    # 5. Exact evaluation (ground truth; the violation of world.cost_limit is reported as measured).
    clock = time.perf_counter()
    reference_score, trained, optimum, optimal_multiplier = evaluate_exact(settings, prepared.sft_dir, policy_dir)
    seconds["evaluation"] = time.perf_counter() - clock
    return PecanResult(dual, files, model_dirs, reference_cost, trained, reference_score, optimum,
                       optimal_multiplier, pecan.consistent, seconds)
