"""Offline preference alignment with any loss of the core registry, on the built-in world or a hub
setup (:func:`saferl.learners.hub.run_hub_preference`).

1. load the training pairs (the world's, written by the pipeline's data stage; or a hub setup's
   ``data.path``);
2. order them — ``"better"`` (helpfulness labels: DPO, IPO, BFPO, ...) or ``"safer"`` (safety
   labels); Safe-NCA keeps only the safe-vs-unsafe pairs, safe response chosen;
3. the reference log-probs once (reference group), then ``steps`` optimizer steps of the policy
   group (from the reference policy) on the loss;
4. export the aligned policy (exact evaluation is the world caller's: :func:`evaluate_exact`).

Steps 2–4 are :func:`train_offline_preference`, the one body both recipes run; step 3 alone
(reference log-probs, training, export on a ready batch) is :func:`train_policy_on_pairs`, which
MoCAN's and PeCAN's DPO stages run too. :class:`GroupSetup` says where their groups run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from saferl.data import load_preference_dataset
from saferl.data.records import SafetyPreferencePair
from saferl.data.world import build_world_tokenizer
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners.pipeline import PipelineSettings, PreparedModels, _engine_spec, _group
from saferl.learners.preference import (
    PreferenceTrainBatch,
    attach_reference_logps,
    build_preference_batch,
    safe_pairs,
    train_preference,
)
from saferl.models import ModelSpec
from saferl.runtime import (
    DeepSpeedSpec,
    GroupSpec,
    PolicyGroup,
    ReferenceGroup,
    RuntimeSpec,
    init_ray,
)
from saferl.tracking import Tracker

__all__ = [
    "GroupSetup",
    "OfflineSettings",
    "PreferenceRun",
    "run_offline_preference",
    "train_offline_preference",
    "train_policy_on_pairs",
]

#: ``progress(stage, step, total, metrics)``, as the CLI's progress bar takes it.
Progress = Callable[[str, int, int, dict[str, float]], None]


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


@dataclass(frozen=True)
class GroupSetup:
    """Where and how a recipe's groups run (the world's pipeline settings or a hub run's sections).

    Attributes:
        deepspeed: every engine's ZeRO stage, precision and AdamW settings (each engine sets its
            own learning rate and batch size, :meth:`engine`).
        group: ranks, CPUs and GPUs per role.
        runtime: the Ray cluster.
        seed: seeds every group's model build.
    """

    deepspeed: DeepSpeedSpec
    group: GroupSpec
    runtime: RuntimeSpec
    seed: int = 0

    @classmethod
    def from_pipeline(cls, settings: PipelineSettings) -> GroupSetup:
        """The built-in world's setup (the same engines as the pipeline's ``_deepspeed``)."""
        return cls(settings.deepspeed, _group(settings), settings.runtime, settings.seed)

    @property
    def num_ranks(self) -> int:
        return self.group.num_ranks

    def engine(self, learning_rate: float, rows_per_step: int) -> DeepSpeedSpec:
        """One engine's spec: ``learning_rate``, one optimizer step per ``rows_per_step`` rows."""
        return _engine_spec(self.deepspeed, self.group.num_ranks, learning_rate, rows_per_step)


@dataclass(frozen=True)
class PreferenceRun:
    """What :func:`train_offline_preference` produced.

    Attributes:
        policy_dir: the exported policy.
        ordering: the pairs' ordering as trained (``"safer"`` for ``safe_nca``).
        hyperparameters: the loss's hyper-parameters as trained (with the defaulted ``beta``).
        num_pairs: pairs in the training set after the ordering step.
        history: every step's metrics (``preference/loss``, ...).
    """

    policy_dir: Path
    ordering: str
    hyperparameters: dict[str, Any]
    num_pairs: int
    history: list[dict[str, float]]


def train_policy_on_pairs(
    policy: ModelSpec,
    tokenizer: PreTrainedTokenizerBase,
    data: PreferenceTrainBatch,
    loss: str,
    hyperparameters: Mapping[str, Any],
    setup: GroupSetup,
    export_dir: Path,
    *,
    steps: int,
    pairs_per_step: int,
    learning_rate: float,
    seed: int,
    reference: ReferenceGroup | None = None,
    tracker: Tracker | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[Path, list[dict[str, float]]]:
    """Step 3–4: the reference log-probs of ``data`` (when the loss needs them), ``steps``
    optimizer steps of a policy group started from ``policy`` on ``loss``, and the export.

    Args:
        policy: the policy's start, also the reference whose log-probs are attached.
        data: the interleaved pairs (:func:`build_preference_batch` or MoCAN's relabelled samples).
        reference: a running group hosting ``policy`` to reuse (left running); None: one is
            started here and shut down with the policy.
        progress: ``progress(step, metrics)`` after each step.

    Returns:
        The exported policy folder and every step's metrics.
    """
    from saferl.core.preference_losses import get_preference_loss

    spec = get_preference_loss(loss)
    rows = 2 * pairs_per_step
    groups = []
    try:
        if spec.needs_reference and reference is None:
            reference = ReferenceGroup(policy, tokenizer, setup.engine(0.0, rows), setup.group, setup.runtime,
                                       role="reference", seed=setup.seed, wait=False)
            groups.append(reference)
        # Started in the background: it comes up while the reference scores the data.
        policy_group = PolicyGroup(policy, tokenizer, setup.engine(learning_rate, rows), setup.group,
                                   setup.runtime, role="policy", seed=setup.seed, wait=False)
        groups.append(policy_group)
        if spec.needs_reference:
            data = attach_reference_logps(data, reference, rows_per_call=rows)
        history = train_preference(policy_group, data, loss, hyperparameters, steps=steps,
                                   pairs_per_step=pairs_per_step, seed=seed, tracker=tracker, progress=progress)
        return policy_group.export_hf(export_dir), history
    finally:
        for group in groups:
            group.shutdown()


def train_offline_preference(
    pairs: Sequence[SafetyPreferencePair],
    offline: OfflineSettings,
    *,
    policy: ModelSpec,
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    max_length: int,
    beta: float,
    setup: GroupSetup,
    export_dir: Path,
    source: str = "the training pairs",
    tracker: Tracker | None = None,
    progress: Progress | None = None,
) -> PreferenceRun:
    """Steps 2–4 of the module docstring on any policy, tokenizer, template and length.

    Args:
        pairs: the safety-labelled training pairs.
        offline: the loss and its optimisation.
        policy: the policy's start and reference.
        template, max_length: how pairs are formatted and cut (prompt + response tokens).
        beta: the β of losses that take one, unless ``offline.hyperparameters`` sets it.
        setup: where the groups run.
        export_dir: where the trained policy is exported.
        source: names the data in errors.
        progress: ``progress(offline.loss, step, offline.steps, metrics)``.

    Raises:
        ValueError: ``safe_nca`` on data without a pair of one safe and one unsafe response.
    """
    from saferl.core.preference_losses import get_preference_loss

    report = progress or (lambda stage, step, total, metrics: None)
    init_ray(setup.runtime)
    # 2. The training pairs, ordered.
    ordering = offline.ordering
    if offline.loss == "safe_nca":
        pairs, ordering = safe_pairs(pairs), "safer"
        if not pairs:
            raise ValueError(
                f"learner.preference.loss=safe_nca trains on pairs with exactly one safe response, and "
                f"{source} has none (every pair is safe/safe or unsafe/unsafe); check data.path"
            )
    batch = build_preference_batch(pairs, tokenizer, max_length, template, ordering=ordering)
    spec = get_preference_loss(offline.loss)
    hyperparameters = dict(offline.hyperparameters or {})
    if "beta" in spec.defaults and offline.loss not in ("simpo",):
        hyperparameters.setdefault("beta", beta)
    # 3–4. Reference log-probs once, then the policy's steps, then the export.
    policy_dir, history = train_policy_on_pairs(
        policy, tokenizer, batch, offline.loss, hyperparameters, setup, export_dir,
        steps=offline.steps, pairs_per_step=offline.pairs_per_step, learning_rate=offline.learning_rate,
        seed=offline.seed, tracker=tracker,
        progress=lambda step, metrics: report(offline.loss, step, offline.steps, metrics),
    )
    return PreferenceRun(policy_dir, ordering, hyperparameters, batch.num_pairs, history)


def run_offline_preference(
    settings: PipelineSettings, offline: OfflineSettings, prepared: PreparedModels, output_dir: str | Path,
    progress=None,
) -> tuple[Path, float]:
    """Steps 1–4 of the module docstring on the built-in world; returns the exported policy folder
    and wall seconds."""
    init_ray(settings.runtime)
    clock = time.perf_counter()
    # 1. The world's training pairs (steps 2–4: the shared body).
    data = prepared.sft_dir.parent.parent / "data" / "preferences_train.jsonl"
    pairs = list(load_preference_dataset(str(data)).records)
    run = train_offline_preference(
        pairs, offline, policy=ModelSpec(name_or_path=str(prepared.sft_dir)), tokenizer=build_world_tokenizer(),
        template=WORLD_TEMPLATE, max_length=MAX_SEQUENCE_LENGTH, beta=settings.world_beta,
        setup=GroupSetup.from_pipeline(settings), export_dir=Path(output_dir) / "models" / f"policy_{offline.loss}",
        source=str(data), progress=progress,
    )
    return run.policy_dir, time.perf_counter() - clock
