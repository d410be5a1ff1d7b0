"""C-DPO: constrained DPO by dual ascent (docs/algorithms.md §1, §4), on any setup.

A policy group (started from the setup's policy) and a reference group (the frozen ``π_ref``) stay
up for the whole run, with the setup's reward scorer and its ``m`` cost scorers. Each of
``rounds`` rounds:

1. sample K responses per prompt from the **current** policy (the policy group itself; round 1
   samples ``π_ref``);
2. score them with the reward and cost scorers and estimate ``E[c]`` ``(m,)`` on them;
3. one projected dual step ``λ ← max(0, λ + η (E[c] − d))``
   (:func:`saferl.core.dual_ascent.projected_dual_step`);
4. one DPO round: the samples paired 0–1, 2–3, ... and relabelled ``σ(s_0 − s_1)`` with
   ``s = r − λ·c`` — MoCAN's relabelling (:func:`saferl.learners.mocan.pseudo_preference_batch`)
   — and ``dpo_steps`` DPO steps at β against ``π_ref``, continuing the policy group (the shared
   preference update, :func:`saferl.learners.preference.train_policy_on_pairs`). DPO's population
   optimum on these labels is ``π_λ ∝ π_ref exp((r − λ·c)/β)`` whatever policy sampled the pairs.
   With ``anchor_weight`` α > 0 the round adds MoCAN's sample-target anchor
   (:func:`saferl.learners.mocan.anchor_weights`): the target ``π_ref·e^{s/β}`` restricted to the
   round's samples, which pins the mass DPO leaves free outside them.

With ``evaluate_rounds`` and a setup that has an evaluator (the world's exact one), each round's
policy is exported and scored (normalised Lagrangian gap, violation), outside the rounds' timings.
Each round's λ, ``E[c]``, samples and seconds are in ``RunResult.details["rounds"]``
(``result.json``), and its own target is ``π_λ`` at the final λ (:class:`TiltTarget` at β: the
labels are computed from the scores, so their temperature is 1).

Where this departs from the paper (Liu et al. 2024, "Enhancing LLM Safety via Constrained Direct
Preference Optimization"): the pairs are fresh samples of the current policy, relabelled, rather
than a fixed preference data set relabelled; ``E[c]`` is the plain mean of the round's samples'
costs (prompts weighted uniformly); the DPO optimizer state carries over from round to round.

After every round the run checkpoints atomically into ``checkpoints/cdpo`` (the policy's weights,
optimizer and scheduler state, λ, the round records and metrics); ``resume=auto`` continues after
the last finished round. Each round's sampling and DPO seeds depend on the round's number alone, so
a resumed run makes the same rounds as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from saferl.core.dual_ascent import projected_dual_step
from saferl.core.targets import TiltTarget
from saferl.learners.mocan import (
    anchored_pairs,
    build_scorers,
    choose_prompts,
    sample_responses,
    score_samples,
)
from saferl.learners.output import RunOutput
from saferl.learners.preference import train_policy_on_pairs
from saferl.learners.result import RunResult
from saferl.learners.run_state import (
    RunFolderInUseError,
    latest_checkpoint,
    resume_checkpoint,
    save_checkpoint_atomically,
)
from saferl.learners.settings import CDPOSettings
from saferl.runtime import PolicyGroup, ReferenceGroup, ScoreGroup, init_ray
from saferl.runtime.resources import Resources
from saferl.setups.base import Needs, Setup
from saferl.tracking import Tracker

__all__ = ["CDPOSettings", "needs", "run", "target"]

#: Generation seeds of successive rounds are this far apart (a round's chunks use offsets of 1_000_003).
_ROUND_SEED_STRIDE = 7_919_000_017


def needs(settings: CDPOSettings) -> Needs:
    """The reward and cost scorers and the prompts; no pairs, no critics."""
    return Needs(scorers=True, groups=2)  # the policy (sampler and learner) and the reference


def target(settings: CDPOSettings, multiplier: tuple[float, ...]) -> TiltTarget:
    """Perfect optimisation of the last round: DPO at β on ``σ(s_0 − s_1)``, ``s = r − λ·c``,
    reaches ``π_λ`` at the final λ (docs/algorithms.md §4, §8)."""
    return TiltTarget(
        f"π_λ at C-DPO's final λ ({settings.rounds} rounds of η = "
        f"{', '.join(f'{v:g}' for v in settings.multiplier_step_size)})",
        settings.beta,
        multiplier=multiplier,
    )


@dataclass(frozen=True)
class _OffsetTracker:
    """Each round's DPO steps numbered after the previous rounds' (the tracker's steps must grow)."""

    tracker: Tracker
    offset: int
    extra: Mapping[str, float]

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.tracker.log({**metrics, **self.extra}, step=self.offset + step)

    def finish(self) -> None:
        return None


def _per_constraint(values: tuple[float, ...], m: int, key: str) -> torch.Tensor:
    if len(values) not in (1, m):
        raise ValueError(
            f"learner.cdpo.{key}: expected one value or {m} (one per cost of the setup); found "
            f"{list(values)}"
        )
    return torch.tensor(values, dtype=torch.float64).expand(m).clone()


def _settings_record(settings: CDPOSettings) -> dict[str, Any]:
    """The settings as JSON reads them back (tuples become lists)."""
    return json.loads(json.dumps(asdict(settings)))


def _save_round(folder: Path, policy: PolicyGroup, settings: CDPOSettings, state: dict[str, Any]) -> None:
    """A checkpoint after a round: the policy group's DeepSpeed checkpoint and the loop's state."""
    folder.mkdir(parents=True, exist_ok=True)
    policy.save_checkpoint(folder / "policy")
    (folder / "state.json").write_text(json.dumps({"settings": _settings_record(settings), **state}, indent=2) + "\n")


def _load_round(folder: Path, policy: PolicyGroup, settings: CDPOSettings) -> dict[str, Any]:
    """Restore :func:`_save_round`'s checkpoint into ``policy``; returns the loop's state. A
    checkpoint of other settings is refused (its rounds are not this run's)."""
    path = folder / "state.json"
    if not path.exists():
        raise FileNotFoundError(f"no cdpo checkpoint in {folder} (missing {path.name})")
    state = json.loads(path.read_text())
    recorded, wanted = state.pop("settings"), _settings_record(settings)
    if recorded != wanted:
        differing = sorted(key for key in set(recorded) | set(wanted) if recorded.get(key) != wanted.get(key))
        raise ValueError(
            f"{path}: the checkpoint was written with other learner.cdpo settings ("
            + "; ".join(f"{key}: recorded {recorded.get(key)!r}, now {wanted.get(key)!r}" for key in differing)
            + "); resume with the same settings, or start a fresh run folder"
        )
    policy.load_checkpoint(folder / "policy")
    return state


def run(setup: Setup, settings: CDPOSettings, resources: Resources, output: RunOutput) -> RunResult:
    """Steps 1–4 of the module docstring, ``settings.rounds`` times, on ``setup``; writes into
    ``<output>/cdpo``, checkpointing after each round into ``<output>/checkpoints/cdpo`` (with
    ``output.resume``, the run continues after its last checkpointed round). Its headline is the
    last round's mean sampled reward."""
    setup.require(needs(settings), "cdpo")
    checkpoint_dir = output.folder / "checkpoints" / "cdpo"
    if not output.resume and latest_checkpoint(checkpoint_dir) is not None:
        # A fresh run never overwrites another run's checkpoint (the CLI refuses the whole folder;
        # this guards a direct call too).
        raise RunFolderInUseError(
            f"{checkpoint_dir} holds a checkpoint; resume it (resume=auto) or choose another folder "
            "(nothing was changed)"
        )
    init_ray(resources.runtime)
    folder = output.folder / "cdpo"
    folder.mkdir(parents=True, exist_ok=True)
    m = len(setup.costs)
    limits = (
        settings.cost_limit
        if isinstance(settings.cost_limit, (list, tuple))
        else (settings.cost_limit,)
    )
    cost_limit = _per_constraint(tuple(float(v) for v in limits), m, "cost_limit")
    step_size = _per_constraint(settings.multiplier_step_size, m, "multiplier_step_size")
    multiplier = _per_constraint(settings.initial_multiplier, m, "initial_multiplier")
    prompts = choose_prompts(setup.prompts, settings.num_prompts, settings.seed)
    rows = 2 * settings.dpo_pairs_per_step
    seconds = {"start": 0.0, "sample": 0.0, "dual": 0.0, "dpo": 0.0, "round_evaluation": 0.0}
    rounds: list[dict[str, Any]] = []
    history: list[dict[str, float]] = []
    policy_dir: Path | None = None
    groups: list[PolicyGroup | ReferenceGroup | ScoreGroup] = []
    clock = time.perf_counter()
    try:
        reference = ReferenceGroup(
            setup.policy,
            setup.tokenizer,
            resources.engine(0.0, rows),
            resources.group,
            resources.runtime,
            role="reference",
            seed=resources.seed,
            wait=False,
        )
        groups.append(reference)
        policy = PolicyGroup(
            setup.policy,
            setup.tokenizer,
            resources.engine(settings.dpo_learning_rate, rows),
            resources.group,
            resources.runtime,
            role="policy",
            seed=resources.seed,
            wait=False,
        )
        groups.append(policy)
        scorers = build_scorers(setup, resources, groups)
        seconds["start"] = time.perf_counter() - clock
        elapsed, first_round = seconds["start"], 0
        # (A damaged newest checkpoint falls back to the previous one, with a notice.)
        if output.resume and (found := resume_checkpoint(checkpoint_dir, output.notice)) is not None:
            state = _load_round(found, policy, settings)
            first_round, rounds, history = int(state["round"]), state["rounds"], state["history"]
            multiplier = torch.tensor(state["multiplier"], dtype=torch.float64)
            policy_dir = None if state["policy_dir"] is None else Path(state["policy_dir"])
            elapsed = float(state["elapsed"]) + seconds["start"]  # this start counts too
            seconds.update({key: seconds[key] + float(value) for key, value in state["seconds"].items()})
            output.notice(f"resuming from round {first_round} of {settings.rounds} (checkpoint {found})")
        for index in range(first_round, settings.rounds):
            round_number, clock = index + 1, time.perf_counter()

            # 1. K samples per prompt from the current policy.
            generation = replace(setup.generation, seed=settings.seed + index * _ROUND_SEED_STRIDE)
            batch, row_prompts = sample_responses(
                setup.policy,
                setup.tokenizer,
                prompts,
                settings.num_samples,
                template=setup.template,
                max_prompt_length=setup.max_prompt_length,
                generation=generation,
                resources=resources,
                rows_per_call=setup.rows_per_call,
                sampler=policy,
            )
            # 2. Their scores, and E[c] (m,) of the current policy.
            samples = score_samples(
                batch,
                row_prompts,
                settings.num_samples,
                scorers,
                rows_per_call=setup.rows_per_call,
                num_ranks=resources.num_ranks,
            )
            expected_cost = samples.costs.mean(dim=(0, 1))
            sampled = time.perf_counter()
            seconds["sample"] += sampled - clock

            # 3. The projected dual step λ ← max(0, λ + η (E[c] − d)).
            previous = multiplier
            multiplier = projected_dual_step(multiplier, expected_cost, cost_limit, step_size)
            stepped = time.perf_counter()
            seconds["dual"] += stepped - sampled

            # 4. One DPO round on the samples relabelled with s = r − λ·c, continuing the policy.
            data, weights = anchored_pairs(samples, multiplier, soft_labels=settings.soft_labels,
                                           seed=settings.seed + index, beta=settings.beta,
                                           anchor_weight=settings.anchor_weight)
            last = round_number == settings.rounds
            export = (
                folder / "models" / f"policy_round{round_number}"
                if last or settings.evaluate_rounds
                else None
            )
            round_metrics = {
                "preference/round": float(round_number),
                **{f"multiplier/value_{j}": float(multiplier[j]) for j in range(m)},
                **{f"constraint/estimate_{j}": float(expected_cost[j]) for j in range(m)},
            }
            exported, steps = train_policy_on_pairs(
                setup.policy,
                setup.tokenizer,
                data,
                "dpo",
                {"beta": settings.beta},
                resources,
                export,
                steps=settings.dpo_steps,
                pairs_per_step=settings.dpo_pairs_per_step,
                learning_rate=settings.dpo_learning_rate,
                seed=settings.seed + index,
                reference=reference,
                policy_group=policy,
                tracker=_OffsetTracker(output.tracker, len(history), round_metrics),
                progress=output.stage_progress(f"cdpo_round{round_number}", settings.dpo_steps),
                skip_nonfinite_batches=settings.skip_nonfinite_batches,
                likelihood_weights=weights,
            )
            history.extend({**step, **round_metrics} for step in steps)
            policy_dir = Path(exported) if exported is not None else policy_dir
            round_seconds = time.perf_counter() - clock
            seconds["dpo"] += time.perf_counter() - stepped
            elapsed += round_seconds
            record: dict[str, Any] = {
                "round": round_number,
                "multiplier_before": previous.tolist(),
                "multiplier": multiplier.tolist(),
                "expected_cost": expected_cost.tolist(),
                "expected_reward": float(samples.rewards.mean()),
                "pairs": data.num_pairs,
                "samples": len(row_prompts),
                "cumulative_samples": len(row_prompts) * round_number,
                "seconds": round_seconds,
                "cumulative_seconds": elapsed,
                "dpo_loss": float(steps[-1]["preference/loss"]),
            }
            if settings.evaluate_rounds and setup.evaluator is not None and exported is not None:
                clock = time.perf_counter()
                trained = setup.evaluator.evaluate(Path(exported)).trained
                record.update(
                    normalised_lagrangian_gap=float(trained.normalised_lagrangian_gap),
                    kl_to_optimum=float(trained.kl_to_optimum),
                    violation=list(trained.violation),
                    exact_expected_cost=list(trained.expected_cost),
                )
                seconds["round_evaluation"] += time.perf_counter() - clock
            rounds.append(record)
            # The round's checkpoint (its time is not a round's).
            state = {"round": round_number, "multiplier": multiplier.tolist(), "rounds": rounds, "history": history,
                     "policy_dir": None if policy_dir is None else str(policy_dir), "elapsed": elapsed,
                     "seconds": {key: value for key, value in seconds.items() if key != "start"}}
            save_checkpoint_atomically(lambda staging, state=state: _save_round(staging, policy, settings, state),
                                       checkpoint_dir)
    finally:
        for group in groups:
            group.shutdown()
    final = tuple(float(v) for v in multiplier)
    details = {
        "num_prompts": len(prompts),
        "num_samples": settings.num_samples,
        "rounds": rounds,
        "multiplier_history": [record["multiplier"] for record in rounds],
        "total_samples": sum(record["samples"] for record in rounds),
        "multiplier_step_size": list(step_size.tolist()),
        "initial_multiplier": list(
            _per_constraint(settings.initial_multiplier, m, "initial_multiplier").tolist()
        ),
    }
    return RunResult(
        method="cdpo",
        headline=rounds[-1]["expected_reward"],
        policy_dir=policy_dir,
        folder=folder,
        multiplier=list(final),
        history=history,
        seconds={k: v for k, v in seconds.items() if v or k != "round_evaluation"},
        target=target(settings, final),
        details=details,
    )
