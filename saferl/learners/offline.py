"""Offline preference alignment on the built-in world with any loss of the core registry.

1. load the world's training pairs (written by the pipeline's data stage);
2. order them — ``"better"`` (helpfulness labels: DPO, IPO, BFPO, ...) or ``"safer"`` (safety
   labels); Safe-NCA keeps only the safe-vs-unsafe pairs, safe response chosen;
3. the reference log-probs once (reference group), then ``steps`` optimizer steps of the policy
   group (from the SFT reference) on the loss;
4. export the aligned policy (exact evaluation is the caller's: :func:`evaluate_exact`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from saferl.data import load_preference_dataset
from saferl.data.world import build_world_tokenizer
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners.pipeline import PipelineSettings, PreparedModels, _deepspeed, _group
from saferl.learners.preference import (
    attach_reference_logps,
    build_preference_batch,
    safe_pairs,
    train_preference,
)
from saferl.models import ModelSpec
from saferl.runtime import PolicyGroup, ReferenceGroup, init_ray

__all__ = ["OfflineSettings", "run_offline_preference"]


@dataclass(frozen=True)
class OfflineSettings:
    """One offline preference run.

    Attributes:
        loss: a name of the core registry (``dpo``, ``ipo``, ``safe_nca``, ``bfpo``, ...).
        ordering: ``"better"`` (helpfulness labels) or ``"safer"`` (safety labels); ``safe_nca``
            always uses the safe-vs-unsafe pairs.
        hyperparameters: the loss's keyword hyper-parameters (``beta`` defaults to the world's β
            for the losses that take one).
        steps, pairs_per_step, learning_rate: the optimisation.
        seed: pair order.
    """

    loss: str = "dpo"
    ordering: str = "better"
    hyperparameters: dict | None = None
    steps: int = 200
    pairs_per_step: int = 32
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ordering not in ("better", "safer"):
            raise ValueError(f"learner.preference.ordering must be 'better' or 'safer'; found {self.ordering!r}")
        from saferl.core.preference_losses import get_preference_loss

        try:
            get_preference_loss(self.loss)
        except (KeyError, ValueError) as error:
            raise ValueError(f"learner.preference.loss: {error}") from error


def run_offline_preference(
    settings: PipelineSettings, offline: OfflineSettings, prepared: PreparedModels, output_dir: str | Path,
    progress=None,
) -> tuple[Path, float]:
    """Steps 1–4 of the module docstring; returns the exported policy folder and wall seconds."""
    from saferl.core.preference_losses import get_preference_loss

    init_ray(settings.runtime)
    clock = time.perf_counter()
    tokenizer = build_world_tokenizer()
    report = progress or (lambda stage, step, total, metrics: None)
    # 1–2. The training pairs, ordered.
    data = prepared.sft_dir.parent.parent / "data" / "preferences_train.jsonl"
    pairs = list(load_preference_dataset(str(data)).records)
    ordering = offline.ordering
    if offline.loss == "safe_nca":
        pairs, ordering = safe_pairs(pairs), "safer"
    batch = build_preference_batch(pairs, tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE, ordering=ordering)
    spec = get_preference_loss(offline.loss)
    hyperparameters = dict(offline.hyperparameters or {})
    if "beta" in spec.defaults and offline.loss not in ("simpo",):
        hyperparameters.setdefault("beta", settings.world_beta)
    rows = 2 * offline.pairs_per_step
    sft = ModelSpec(name_or_path=str(prepared.sft_dir))
    groups = []
    try:
        # 3. Reference log-probs once, then the policy's steps.
        if spec.needs_reference:
            reference = ReferenceGroup(sft, tokenizer, _deepspeed(settings, 0.0, rows), _group(settings),
                                       settings.runtime, role="reference", seed=settings.seed)
            groups.append(reference)
            batch = attach_reference_logps(batch, reference, rows_per_call=rows)
        policy = PolicyGroup(sft, tokenizer, _deepspeed(settings, offline.learning_rate, rows), _group(settings),
                             settings.runtime, role="policy", seed=settings.seed)
        groups.append(policy)
        train_preference(policy, batch, offline.loss, hyperparameters, steps=offline.steps,
                         pairs_per_step=offline.pairs_per_step, seed=offline.seed,
                         progress=lambda step, metrics: report(offline.loss, step, offline.steps, metrics))
        # 4. Export.
        policy_dir = policy.export_hf(Path(output_dir) / "models" / f"policy_{offline.loss}")
    finally:
        for group in groups:
            group.shutdown()
    return policy_dir, time.perf_counter() - clock
