"""Rule-Based Rewards in PPO / PPO-Lag (Mu et al. 2024; docs/algorithms.md §6), on every setup.

The reward of a rollout is ``r = R_rm + R_rbr`` on safety-relevant prompts and ``r = R_rm``
elsewhere, with ``R_rm`` the setup's reward scorer (frozen) and ``R_rbr`` one linear RBR per
response type over the graded propositions and the class features (:class:`saferl.rbr.LinearRBR`).
The spec is the world's or a ``proposition_prompts.yaml`` file (``learner.rbr.spec``); each
prompt's response type is the world's own or read from ``learner.rbr.response_types``; the grader
is the world's (exact, or noisy at ``learner.rbr.grader_noise``) or a causal LM run as a Ray actor
group (``learner.rbr.grader=lm``, :mod:`saferl.learners.rbr_grading`).

1. **Grade reference samples**: K samples per prompt that has a response type, from the
   reference policy (the sampler of :func:`saferl.learners.mocan.sample_responses`), scored with
   the setup's reward scorer (``R_rm``) and graded. With the world's grader and spec each
   sample's class is its true class (the exact propositions), as the paper's completions are of a
   known class by construction; otherwise (an LM grader, or a spec file) the class of the grader's
   answers rounded at 1/2, and a sample that no class accepts is left out of the fit (counted).
2. **Fit the RBR weights** per safety-relevant response type
   (:func:`saferl.rbr.fit_rbr_weights`: ``R_rm`` as a frozen offset, hinge loss, AdamW lr 1e-2,
   1000 steps, 95/5 split of the samples' groups), logging the fraction of zero-loss pairs and the
   held-out error rate with the fitted weights and with ``R_rm`` alone; or, for the **RBR-Fixed**
   ablation (``learner.rbr.weights=fixed``), weight ``learner.rbr.fixed_weight`` on the ideal
   class feature and 0 elsewhere. The weights go to ``rbr/weights.json``.
3. **PPO / PPO-Lag**: :func:`saferl.learners.ppo_lag.run` on the setup with its reward source
   replaced by :class:`RBRScorerSource` (``learner.rbr.variant``: ``ppo_lag`` keeps the cost
   constraint and the multiplier, ``ppo`` drops them). The rollout, advantage and update code
   is ppo_lag's; only the reward differs. An LM grader's group stays up through the PPO stage
   and is shut down after it.

Its exact target on the world is the tilt of ppo_lag's target with ``R_rbr`` added to the reward:
``π ∝ π_ref·exp((R_rm + R_rbr − λc)/β)`` at the multiplier update's fixed point (``ppo_lag``) or
at λ = 0 (``ppo``), with ``R_rbr`` from the grader the run used (the world's grader only: an LM
grader's answers on every enumerated response are not computed).

Departures from the paper: the fit's completions are reference samples (classed by the world's
truth, or by the grader's rounded answers), not completions generated per class with a prompted
model; the split holds out groups of ``learner.rbr.group_size`` samples of a prompt (the world's
16 prompts are too few to hold 5 % of them out), so held-out groups share their prompt with
training groups; RBR-Fixed's weights are this module's choice (the ideal class feature only).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from saferl.core.targets import TiltTarget
from saferl.data.batches import SequenceBatch
from saferl.learners import ppo_lag
from saferl.learners.mocan import sample_responses
from saferl.learners.output import RunOutput
from saferl.learners.rbr_grading import (
    RowGrader,
    WorldRowGrader,
    prompt_response_types,
    start_lm_grader,
)
from saferl.learners.result import RunResult
from saferl.learners.scorers import Scorer
from saferl.learners.settings import PPOLagSettings, RBRSettings
from saferl.models import ModelSpec
from saferl.rbr import LinearRBR, RBRFitResult, RBRSpec, fit_rbr_weights, load_spec, rbr_features
from saferl.rbr.features import CLASS_FEATURE_PREFIX
from saferl.rbr.response_types import response_type_or_none
from saferl.runtime import ScoreGroup, init_ray
from saferl.runtime.resources import Resources
from saferl.setups.base import Needs, ScoreGroupStarter, ScorerSource, Setup

__all__ = [
    "RBRRewardScorer",
    "RBRScorerSource",
    "RBRSettings",
    "fixed_weights",
    "load_rbr_spec",
    "needs",
    "ppo_settings",
    "run",
    "target",
]


def ppo_settings(settings: RBRSettings) -> PPOLagSettings:
    """Step 3's loop: ppo_lag's settings named ``rbr``, without the multiplier for ``variant=ppo``."""
    multiplier = settings.ppo.multiplier if settings.variant == "ppo_lag" else None
    return replace(settings.ppo, multiplier=multiplier, name="rbr")


def needs(settings: RBRSettings) -> Needs:
    """ppo_lag's needs (scorers and critics; its groups), the reward scorer also for the fit."""
    stage = ppo_lag.needs(ppo_settings(settings))
    groups = stage.groups if settings.variant == "ppo_lag" else 3  # no cost critic without the cost
    return Needs(scorers=True, critics=True, groups=groups, ptx=stage.ptx)


# ---------------------------------------------------------------------------------------------
# The reward: R_rm + R_rbr on safety-relevant prompts, R_rm elsewhere
# ---------------------------------------------------------------------------------------------


class RBRRewardScorer:
    """``R_rm + R_rbr`` on the prompts whose response type is safety-relevant, ``R_rm`` elsewhere.

    Args:
        reward: the reward model's scorer (``R_rm``, frozen).
        rbr: the linear RBR of every response type of the spec.
        grader: grades the spec's propositions on rollouts.
        response_types: the response type of each prompt that has one.
        safety_relevant: the response types that get ``R_rbr``.
    """

    num_outputs = 1

    def __init__(
        self,
        reward: Scorer,
        rbr: LinearRBR,
        grader: RowGrader,
        response_types: dict[str, str],
        safety_relevant: Sequence[str],
    ) -> None:
        self.reward = reward
        self.rbr = rbr
        self.grader = grader
        self.response_types = response_types
        self.safety_relevant = tuple(safety_relevant)

    def bonus(self, batch: SequenceBatch, prompts: Sequence[str]) -> torch.Tensor:
        """``R_rbr`` of each row on a safety-relevant prompt, 0 elsewhere: ``(batch,)`` float64."""
        bonus = torch.zeros(len(prompts), dtype=torch.float64)
        rows = [row for row, text in enumerate(prompts) if self.response_types.get(text) in self.safety_relevant]
        if not rows:
            return bonus
        graded = self.grader.grade(batch, prompts, rows)  # (len(rows), n_propositions)
        for index, row in enumerate(rows):
            bonus[row] = self.rbr.reward(self.response_types[prompts[row]], graded[index])
        return bonus

    def score(self, batch: SequenceBatch, prompts: Sequence[str]) -> torch.Tensor:
        reward = self.reward.score(batch, prompts)[:, :1]  # (batch, 1)
        return reward + self.bonus(batch, prompts).to(reward.dtype).unsqueeze(-1)


@dataclass(frozen=True)
class RBRScorerSource:
    """The setup's reward source with ``R_rbr`` added on safety-relevant prompts (step 3's reward)."""

    reward: ScorerSource
    rbr: LinearRBR
    grader: RowGrader
    response_types: dict[str, str]
    safety_relevant: tuple[str, ...]
    kind: str = "reward"

    @property
    def calibration(self):
        """The wrapped source's calibration (learned world scorers), reported by ppo_lag."""
        return getattr(self.reward, "calibration", None)

    def build(self, start_group: ScoreGroupStarter) -> Scorer:
        return RBRRewardScorer(
            self.reward.build(start_group), self.rbr, self.grader, self.response_types, self.safety_relevant
        )


# ---------------------------------------------------------------------------------------------
# Step 2: the weights
# ---------------------------------------------------------------------------------------------


def load_rbr_spec(name: str) -> RBRSpec:
    """``learner.rbr.spec``: the world's spec (``"world"``) or a ``proposition_prompts.yaml`` file."""
    if name == "world":
        from saferl.rbr.world import world_spec

        return world_spec()
    return load_spec(name)


def fixed_weights(weight: float, spec: RBRSpec) -> LinearRBR:
    """RBR-Fixed: ``weight`` on the ideal class feature of every response type, 0 on every other."""
    rbr = LinearRBR.from_spec(spec)
    weights = {}
    for key, feature_map in rbr.feature_maps.items():
        vector = torch.zeros(len(feature_map.feature_names), dtype=torch.float64)
        vector[feature_map.feature_names.index(CLASS_FEATURE_PREFIX + spec.class_order[0])] = weight
        weights[key] = vector
    return LinearRBR.from_spec(spec, weights)


def fit_weights(
    graded: torch.Tensor,
    exact: torch.Tensor,
    reward_scores: torch.Tensor,
    response_types: Sequence[str],
    settings: RBRSettings,
    spec: RBRSpec,
) -> tuple[LinearRBR, dict[str, RBRFitResult], dict[str, int]]:
    """Step 2 on graded samples, per safety-relevant response type (the others keep weights 0).
    Returns the RBR, each fitted type's fit and its number of samples left out (in no class).

    Args:
        graded: ``(P, K, n_propositions)`` the grader's answers (the features' input).
        exact: ``(P, K, n_propositions)`` 0/1 answers that fix each sample's class (the truth
            where it is known, else the grader's answers rounded); a sample that no class of its
            response type accepts is left out of the fit.
        reward_scores: ``(P, K)`` ``R_rm`` of every sample.
        response_types: the response type of each of the ``P`` prompts (the spec's spelling).
        spec: the spec whose response types, propositions and classes the RBR uses.
    """
    num_prompts, num_samples = reward_scores.shape
    groups_per_prompt = num_samples // settings.group_size
    # group id of sample k of prompt i: i·G + k // group_size (the split holds out whole groups)
    group_ids = (
        torch.arange(num_prompts).unsqueeze(1) * groups_per_prompt
        + torch.arange(num_samples).unsqueeze(0) // settings.group_size
    )  # (P, K)
    weights, fits, unclassified = {}, {}, {}
    for key in spec.response_types:
        feature_map = rbr_features(spec, key)
        rows = [i for i, response_type in enumerate(response_types) if response_type == key]
        if key not in settings.safety_relevant or not rows:
            weights[key] = torch.zeros(len(feature_map.feature_names), dtype=torch.float64)
            continue
        classes = feature_map.class_features(exact[rows])  # (rows, K, n_classes), one-hot or all 0
        classified = classes.sum(-1).flatten() > 0  # (rows·K,): some class accepts the sample
        try:
            fit = fit_rbr_weights(
                feature_map.features(graded[rows]).flatten(0, 1)[classified],  # (n, n_features)
                reward_scores[rows].flatten()[classified],
                group_ids[rows].flatten()[classified],
                classes.argmax(-1).flatten()[classified],  # class ranks
                feature_names=feature_map.feature_names,
                margin=settings.margin,
                lr=settings.fit_learning_rate,
                steps=settings.fit_steps,
                heldout_fraction=settings.heldout_fraction,
                seed=settings.seed,
            )
        except ValueError as error:
            raise ValueError(
                f"learner.rbr: the fit of {key!r} on {len(rows)} prompts × {num_samples} reference samples "
                f"({int(classified.sum())} in a class) failed ({error}); raise learner.rbr.num_samples so that "
                "the samples span several classes"
            ) from error
        weights[key], fits[key], unclassified[key] = fit.weights, fit, int((~classified).sum())
    return LinearRBR.from_spec(spec, weights), fits, unclassified


def _fit_record(fits: dict[str, RBRFitResult], unclassified: dict[str, int]) -> dict[str, dict]:
    return {
        key: {
            "n_unclassified_samples": unclassified[key],
            "zero_loss_fraction": fit.final_zero_loss_fraction,
            "final_loss": fit.final_loss,
            "heldout_error_rate": fit.heldout_error_rate,
            "heldout_error_rate_reward_model": fit.heldout_error_rate_reward_model,
            "n_train_pairs": fit.n_train_pairs,
            "n_heldout_pairs": fit.n_heldout_pairs,
            "n_heldout_ideal_pairs": fit.n_heldout_ideal_pairs,
            "weights": fit.weight_dict(),
        }
        for key, fit in fits.items()
    }


# ---------------------------------------------------------------------------------------------
# The target and the run
# ---------------------------------------------------------------------------------------------


def rbr_bonus_table(
    rbr: LinearRBR, grader: WorldRowGrader, response_types: dict[str, str], safety_relevant: Sequence[str]
) -> torch.Tensor:
    """``R_rbr`` of every enumerated response to every world prompt (0 on prompts that are not
    safety-relevant): ``(num_prompts, num_responses)`` float64 in the exact enumeration's order."""
    from saferl.data.world import build_world_tokenizer, enumerate_responses, world_prompts
    from saferl.rbr.world import WorldGrader

    prompts = world_prompts()
    graded = WorldGrader(grader.noise_rate, grader.seed).probabilities(
        prompts, enumerate_responses(build_world_tokenizer())
    )  # (N, K, P)
    bonus = torch.zeros(graded.shape[:2], dtype=torch.float64)
    for row, prompt in enumerate(prompts):
        if (response_type := response_types[prompt.text]) in safety_relevant:
            bonus[row] = rbr.reward(response_type, graded[row])
    return bonus


def target(
    setup: Setup, settings: RBRSettings, rbr: LinearRBR, grader: RowGrader, response_types: dict[str, str]
) -> TiltTarget | None:
    """ppo_lag's target with ``R_rbr`` added to the reward (the KL-regularised optimum of
    ``R_rm + R_rbr`` at β, at the multiplier update's fixed point with ``variant=ppo_lag``); None
    off the world, or with an LM grader (its answers on every enumerated response are not known)."""
    stage = ppo_lag.target(setup, ppo_settings(settings))
    if stage is None or not isinstance(grader, WorldRowGrader):
        return None
    weights = "fixed weights" if settings.weights == "fixed" else "fitted weights"
    return replace(
        stage,
        label=f"the optimum of R_rm + R_rbr ({weights}) at β: {stage.label}",
        reward_bonus=rbr_bonus_table(rbr, grader, response_types, settings.safety_relevant),
    )


def run(setup: Setup, settings: RBRSettings, resources: Resources, output: RunOutput) -> RunResult:
    """Steps 1–3 of the module docstring; the fit's record goes to ``rbr/``."""
    setup.require(needs(settings), "rbr")
    spec = load_rbr_spec(settings.spec)
    unknown = [name for name in settings.safety_relevant if response_type_or_none(spec, name) is None]
    if unknown:
        raise ValueError(f"learner.rbr.safety_relevant: {unknown} are not response types of the spec "
                         f"{settings.spec!r} ({list(spec.response_types)})")
    safety_relevant = tuple(spec.response_type(name) for name in settings.safety_relevant)
    response_types = prompt_response_types(setup.name, setup.prompts, spec, settings.response_types)
    init_ray(resources.runtime)
    folder = output.folder / "rbr"
    folder.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    weights_path = folder / "weights.json"
    details: dict = {
        "variant": settings.variant,
        "weights": settings.weights,
        "spec": settings.spec,
        "grader": settings.grader if settings.grader == "world" else f"lm ({settings.grader_model})",
        "safety_relevant": list(safety_relevant),
        "grader_noise": settings.grader_noise,
        "prompts_with_a_response_type": sum(text in response_types for text in setup.prompts),
    }

    clock = time.perf_counter()
    if settings.grader == "world":
        grader: RowGrader = WorldRowGrader(settings.grader_noise, settings.seed, setup.tokenizer)
    else:
        grader = start_lm_grader(settings, spec, setup.tokenizer, resources)
    try:
        if output.resume and weights_path.is_file():  # a resumed run keeps the weights it trained with
            rbr = LinearRBR.load(weights_path, spec)
            fit_path = folder / "fit.json"
            details["fit"] = json.loads(fit_path.read_text()) if fit_path.is_file() else {}
        elif settings.weights == "fixed":
            # 2. RBR-Fixed: no samples, no fit.
            rbr = fixed_weights(settings.fixed_weight, spec)
        else:
            # 1. Reference samples of the prompts with a response type: R_rm and the grades.
            prompts = [text for text in setup.prompts if text in response_types]
            batch, rows = sample_responses(
                setup.policy,
                setup.tokenizer,
                prompts,
                settings.num_samples,
                template=setup.template,
                max_prompt_length=setup.max_prompt_length,
                generation=replace(setup.generation, seed=settings.seed),
                resources=resources,
                rows_per_call=setup.rows_per_call,
            )
            reward_scores = _reward_scores(setup, resources, batch, rows).reshape(
                len(prompts), settings.num_samples
            )
            shape = (len(prompts), settings.num_samples, -1)
            every_row = range(len(rows))
            graded = grader.grade(batch, rows, every_row).reshape(shape)  # (P, K, n_propositions)
            if isinstance(grader, WorldRowGrader) and settings.spec == "world":
                # each sample's true class, as the paper's completions are of a known class
                exact = WorldRowGrader(0.0, 0, setup.tokenizer).grade(batch, rows, every_row).reshape(shape)
            else:
                exact = (graded >= 0.5).double()  # the grader's answers, rounded
            seconds["rbr_grade"] = time.perf_counter() - clock
            # 2. The fit per safety-relevant response type.
            clock = time.perf_counter()
            fit_types = [response_types[text] for text in prompts]
            rbr, fits, unclassified = fit_weights(
                graded, exact, reward_scores, fit_types, replace(settings, safety_relevant=safety_relevant), spec
            )
            details["fit"] = _fit_record(fits, unclassified)
            (folder / "fit.json").write_text(json.dumps(details["fit"], indent=2) + "\n")
            output.tracker.log(
                {
                    f"reward/rbr_{key}_{name}": value
                    for key, record in details["fit"].items()
                    for name, value in record.items()
                    if isinstance(value, float)
                },
                step=0,
            )
            for key, fit in fits.items():
                left_out = f", {unclassified[key]} samples in no class left out" if unclassified[key] else ""
                output.notice(
                    f"rbr fit ({key}): {fit.n_train_pairs} training pairs, zero-loss fraction "
                    f"{fit.final_zero_loss_fraction:.3f}; held-out error rate {fit.heldout_error_rate:.3f} "
                    f"(R_rm alone {fit.heldout_error_rate_reward_model:.3f}){left_out}"
                )
        rbr.save(weights_path)
        details["rbr_weights"] = rbr.weight_names()
        seconds["rbr_fit"] = time.perf_counter() - clock

        # 3. PPO / PPO-Lag with the reward R_rm + R_rbr on safety-relevant prompts.
        source = RBRScorerSource(setup.reward, rbr, grader, response_types, safety_relevant)
        aligned = ppo_lag.run(replace(setup, reward=source), ppo_settings(settings), resources, output)
    finally:
        grader.shutdown()
    return replace(
        aligned,
        method="rbr",
        target=target(setup, replace(settings, safety_relevant=safety_relevant), rbr, grader, response_types),
        seconds={**seconds, **aligned.seconds},
        details={**aligned.details, **details},
    )


def _reward_scores(
    setup: Setup, resources: Resources, batch: SequenceBatch, rows: Sequence[str]
) -> torch.Tensor:
    """``R_rm`` of every sampled row ``(rows,)`` float64, from the setup's reward scorer (its score
    groups, if any, are shut down after)."""
    groups: list[ScoreGroup] = []

    def start_score_group(spec: ModelSpec, kind: str) -> ScoreGroup:
        groups.append(
            ScoreGroup(
                spec,
                setup.tokenizer,
                resources.engine(0.0, resources.num_ranks),
                resources.group,
                resources.runtime,
                num_outputs=1,
                kind=kind,
                role=f"{kind}_scorer",
                seed=resources.seed,
            )
        )
        return groups[-1]

    try:
        return setup.reward.build(start_score_group).score(batch, rows)[:, 0].double()
    finally:
        for group in groups:
            group.shutdown()


def weights_file(folder: Path) -> Path:
    """Where a run writes its RBR weights (``<run>/rbr/weights.json``)."""
    return Path(folder) / "rbr" / "weights.json"
