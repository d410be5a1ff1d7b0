"""The training stages a setup may run before the learner: SFT of the reference policy and the
reward and cost models (docs/algorithms.md §3), each through the runtime and exported in Hugging Face
format. Shared by the setups that train their own models (:mod:`saferl.setups.world`,
:mod:`saferl.setups.tiny`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from saferl.data.records import SafetyPreferencePair, SFTExample
from saferl.learners.output import RunOutput
from saferl.learners.run_state import StageRecords
from saferl.learners.score_model import (
    evaluate_score_model,
    relabel_saved_score_model,
    train_score_model,
)
from saferl.learners.sft import run_sft
from saferl.models import ModelSpec
from saferl.runtime import CriticGroup, PolicyGroup
from saferl.runtime.resources import Resources
from saferl.runtime.side_by_side import side_by_side
from saferl.setups.settings import StageSettings

__all__ = ["StageSettings", "run_score_stage", "run_sft_stage", "run_stages_side_by_side"]


def run_sft_stage(
    model: ModelSpec, stage: StageSettings, examples: Sequence[SFTExample], tokenizer, *, template: str,
    max_length: int, seed: int, resources: Resources, output: RunOutput, export_dir: Path,
) -> None:
    """SFT of ``model`` on the demonstrations, exported to ``export_dir``."""
    policy = PolicyGroup(model, tokenizer, resources.engine(stage.learning_rate, stage.rows_per_step),
                         resources.group, resources.runtime, role="sft", seed=resources.seed)
    try:
        run_sft(policy, examples, tokenizer, steps=stage.steps, rows_per_step=stage.rows_per_step,
                max_length=max_length, template=template, seed=seed, tracker=output.tracker,
                progress=output.stage_progress("sft", stage.steps))
        policy.export_hf(export_dir)
    finally:
        policy.shutdown()


def run_score_stage(
    kind: str, stage: StageSettings, sft_dir: Path, train_pairs: Sequence[SafetyPreferencePair],
    test_pairs: Sequence[SafetyPreferencePair], tokenizer, *, template: str, max_length: int, regularization: float,
    seed: int, resources: Resources, output: RunOutput, export_dir: Path,
    truth: Callable[[str, str], float] | None = None, name: str | None = None, sign_weight: float = 1.0,
) -> dict[str, float]:
    """One score model from the SFT backbone, exported to ``export_dir``; returns its held-out
    metrics (with ``truth``, also the accuracy against the ground-truth order). ``name`` names its
    group, progress stage and metrics (default ``<kind>_model``; e.g. ``cost_refusal_model`` for a
    second cost)."""
    name = name or f"{kind}_model"
    critic = CriticGroup(ModelSpec(name_or_path=str(sft_dir)), tokenizer,
                         resources.engine(stage.learning_rate, 2 * stage.rows_per_step), resources.group,
                         resources.runtime, role=name, seed=resources.seed)
    try:
        train_score_model(critic, train_pairs, kind, tokenizer, steps=stage.steps, pairs_per_step=stage.rows_per_step,
                          max_length=max_length, template=template, score_regularization=regularization,
                          sign_weight=sign_weight, seed=seed,
                          tracker=output.tracker, progress=output.stage_progress(name, stage.steps))
        metrics = evaluate_score_model(critic, test_pairs, kind, tokenizer, max_length, template,
                                       rows_per_call=2 * stage.rows_per_step, truth=truth)
        critic.export_hf(export_dir)
        relabel_saved_score_model(export_dir, kind)
    finally:
        critic.shutdown()
    # Metrics stay in the fixed ``<kind>_model`` namespace, held-out ones named ``heldout_`` (the
    # training steps' are ``train_``); another cost's model prefixes its leaves
    # (``cost_model/refusal_heldout_pairwise_accuracy``).
    prefix = "" if name == f"{kind}_model" else name.removeprefix(f"{kind}_").removesuffix("_model") + "_"
    output.tracker.log({f"{kind}_model/{prefix}heldout_{k}": v for k, v in metrics.items()}, step=0)
    return metrics


def run_stages_side_by_side(
    records: StageRecords, stages: Mapping[str, tuple[dict[str, Any], Callable[[], dict[str, float]]]]
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Stages that need nothing from each other (the reward and cost models): the finished ones
    (in ``records``) read back, the others run side by side, each in its own group (one rank's
    work keeps one core busy) and recorded as it finishes, so a finished one survives a sibling's
    failure.

    Args:
        records: the run's stage records.
        stages: name → (the stage's settings, a call that runs it and returns its metrics).

    Returns:
        the metrics and the wall seconds of every stage, by name in the order of ``stages``.
    """
    metrics: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    recording = threading.Lock()  # one stages.json, written by one thread at a time

    def timed(name: str, settings: dict[str, Any], run: Callable[[], dict[str, float]]):
        clock = time.perf_counter()
        result = run()
        elapsed = time.perf_counter() - clock
        with recording:
            records.mark(name, {"metrics": result, "seconds": elapsed}, settings)
        return result, elapsed

    pending = {}
    for name, (settings, run) in stages.items():
        if (done := records.finished(name, settings)) is not None:
            metrics[name], seconds[name] = done["metrics"], done["seconds"]
        else:
            pending[name] = lambda name=name, settings=settings, run=run: timed(name, settings, run)
    for name, (result, elapsed) in side_by_side(pending).items():
        metrics[name], seconds[name] = result, elapsed
    return {name: metrics[name] for name in stages}, {name: seconds[name] for name in stages}
