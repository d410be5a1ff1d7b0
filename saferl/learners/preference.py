"""Offline preference alignment with any loss of the core registry (docs/algorithms.md §5), on any setup.

1. take the setup's training pairs;
2. order them — ``"better"`` (helpfulness labels: DPO, IPO, BFPO, ...) or ``"safer"`` (safety
   labels); Safe-NCA keeps only the safe-vs-unsafe pairs, safe response chosen;
3. the reference log-probs once (reference group), then ``steps`` optimizer steps of the policy
   group (from the setup's policy) on the loss;
4. export the aligned policy to ``models/policy_<loss>``.

Step 3 alone (reference log-probs, training, export on a ready batch) is
:func:`train_policy_on_pairs`, which MoCAN's and PeCAN's DPO stages run too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from saferl.core.targets import TiltTarget
from saferl.learners.nonfinite import last_completed
from saferl.learners.output import RunOutput
from saferl.learners.preference_update import (
    PreferenceTrainBatch,
    attach_reference_logps,
    build_preference_batch,
    safe_pairs,
    train_preference,
)
from saferl.learners.result import RunResult
from saferl.learners.settings import PreferenceSettings
from saferl.models import ModelSpec
from saferl.runtime import PolicyGroup, ReferenceGroup, init_ray
from saferl.runtime.resources import Resources
from saferl.setups.base import Needs, Setup
from saferl.tracking import Tracker

__all__ = ["PreferenceSettings", "needs", "run", "train_policy_on_pairs"]


def train_policy_on_pairs(
    policy: ModelSpec,
    tokenizer: PreTrainedTokenizerBase,
    data: PreferenceTrainBatch,
    loss: str,
    hyperparameters: Mapping[str, Any],
    resources: Resources,
    export_dir: Path | None,
    *,
    steps: int,
    pairs_per_step: int,
    learning_rate: float,
    seed: int,
    reference: ReferenceGroup | None = None,
    policy_group: PolicyGroup | None = None,
    tracker: Tracker | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    skip_nonfinite_batches: bool = False,
    likelihood_weights: Callable[[PreferenceTrainBatch], torch.Tensor] | None = None,
) -> tuple[Path | None, list[dict[str, float]]]:
    """Step 3–4: the reference log-probs of ``data`` (when the loss needs them), ``steps``
    optimizer steps of a policy group started from ``policy`` on ``loss``, and the export.

    Args:
        policy: the policy's start, also the reference whose log-probs are attached.
        export_dir: where the trained policy is exported (None: not exported).
        data: the interleaved pairs (:func:`build_preference_batch` or MoCAN's relabelled samples).
        reference: a running group hosting ``policy`` to reuse (left running); None: one is
            started here and shut down with the policy.
        policy_group: a running policy group to train (left running, e.g. C-DPO's policy, which
            trains on round after round; its engine must take ``2 * pairs_per_step`` rows per
            step); None: one is started from ``policy`` here and shut down after the export.
        progress: ``progress(step, metrics)`` after each step.
        skip_nonfinite_batches: skip and count non-finite steps instead of raising
            (:func:`~saferl.learners.preference_update.train_preference`).
        likelihood_weights: the rows' ``likelihood_weight`` ``(2P,)`` as a function of ``data``
            with its reference log-probs attached (MoCAN's sample-target anchor needs them);
            None: no likelihood term.

    Returns:
        The exported policy folder (None without ``export_dir``) and every step's metrics.
    """
    from saferl.core.preference_losses import get_preference_loss

    spec = get_preference_loss(loss)
    rows = 2 * pairs_per_step
    groups = []
    try:
        if spec.needs_reference and reference is None:
            reference = ReferenceGroup(policy, tokenizer, resources.engine(0.0, rows), resources.group,
                                       resources.runtime, role="reference", seed=resources.seed, wait=False)
            groups.append(reference)
        if policy_group is None:
            # Started in the background: it comes up while the reference scores the data.
            policy_group = PolicyGroup(policy, tokenizer, resources.engine(learning_rate, rows), resources.group,
                                       resources.runtime, role="policy", seed=resources.seed, wait=False)
            groups.append(policy_group)
        if spec.needs_reference:
            data = attach_reference_logps(data, reference, rows_per_call=rows)
        if likelihood_weights is not None:
            data = dataclasses.replace(data, likelihood_weight=likelihood_weights(data).float())
        history = train_preference(policy_group, data, loss, hyperparameters, steps=steps,
                                   pairs_per_step=pairs_per_step, seed=seed, tracker=tracker, progress=progress,
                                   skip_nonfinite_batches=skip_nonfinite_batches)
        return (None if export_dir is None else policy_group.export_hf(export_dir)), history
    finally:
        for group in groups:
            group.shutdown()


def target(setup: Setup, settings: PreferenceSettings, ordering: str) -> TiltTarget | None:
    """DPO's population optimum on Bradley–Terry labels of known temperature τ (docs/algorithms.md §8):
    ``β·Δu = Δr/τ``, i.e. ``π_ref·exp(r/(β·τ))`` on helpfulness labels and ``π_ref·exp(−c/(β·τ))``
    on safety labels. None for the other losses (their optima on these labels are not tilts) and
    where τ is unknown."""
    tau = setup.label_temperature
    if settings.loss != "dpo" or tau is None:
        return None
    beta = settings.loss_hyperparameters()["beta"]
    if ordering == "better":
        return TiltTarget(f"DPO optimum on helpfulness labels (KL weight β·τ, τ = {tau:g})", beta * tau,
                          multiplier=0.0)
    return TiltTarget(f"DPO optimum on safety labels (KL weight β·τ, τ = {tau:g})", beta * tau,
                      reward_weight=0.0, multiplier=1.0)


def needs(settings: PreferenceSettings) -> Needs:
    """The training pairs only: no scorer, no critic, no prompt set."""
    return Needs(pairs=True, prompts=False, groups=2)  # policy and reference


def run(setup: Setup, settings: PreferenceSettings, resources: Resources, output: RunOutput) -> RunResult:
    """Steps 1–4 of the module docstring on ``setup``; its headline is the last step's loss.

    Raises:
        ValueError: ``safe_nca`` on data without a pair of one safe and one unsafe response.
    """
    setup.require(needs(settings), f"learner.preference.loss={settings.loss}")
    clock = time.perf_counter()
    # 1–2. The training pairs, ordered.
    pairs, ordering = list(setup.pairs), settings.ordering
    if settings.loss == "safe_nca":
        pairs, ordering = safe_pairs(pairs), "safer"
        if not pairs:
            raise ValueError(
                f"learner.preference.loss=safe_nca trains on pairs with exactly one safe response, and "
                f"{setup.pairs_source} has none (every pair is safe/safe or unsafe/unsafe)"
            )
    batch = build_preference_batch(pairs, setup.tokenizer, setup.max_length, setup.template, ordering=ordering)
    hyperparameters = settings.loss_hyperparameters()
    init_ray(resources.runtime)
    # 3–4. Reference log-probs once, then the policy's steps, then the export.
    policy_dir, history = train_policy_on_pairs(
        setup.policy, setup.tokenizer, batch, settings.loss, hyperparameters, resources,
        output.folder / "models" / f"policy_{settings.loss}", steps=settings.steps,
        pairs_per_step=settings.pairs_per_step, learning_rate=settings.learning_rate, seed=settings.seed,
        tracker=output.tracker, progress=output.stage_progress(settings.loss, settings.steps),
        skip_nonfinite_batches=settings.skip_nonfinite_batches,
    )
    return RunResult(
        method=f"preference:{settings.loss}",
        target=target(setup, settings, ordering),
        headline=float(last_completed(history, "preference/loss")["preference/loss"]),
        policy_dir=Path(policy_dir),
        folder=output.folder,
        history=history,
        seconds={settings.loss: time.perf_counter() - clock},
        details={"loss": settings.loss, "ordering": ordering, "hyperparameters": hyperparameters,
                 "num_pairs": batch.num_pairs, "num_dropped_pairs": setup.num_dropped_pairs},
    )
