"""Rule-Based Rewards in PPO / PPO-Lag (Mu et al. 2024; docs/algorithms.md §6), on the built-in world.

The reward of a rollout is ``r = R_rm + R_rbr`` on safety-relevant prompts and ``r = R_rm``
elsewhere, with ``R_rm`` the setup's reward scorer (frozen) and ``R_rbr`` one linear RBR per
response type over the graded propositions and the class features (:class:`saferl.rbr.LinearRBR`).

1. **Grade reference samples**: K samples per prompt from the reference policy (the sampler of
   :func:`saferl.learners.mocan.sample_responses`), scored with the setup's reward scorer
   (``R_rm``) and graded by the world's grader (exact, or noisy at ``learner.rbr.grader_noise``);
   each sample's class is its true class (the exact propositions), as the paper's completions are
   of a known class by construction.
2. **Fit the RBR weights** per safety-relevant response type
   (:func:`saferl.rbr.fit_rbr_weights`: ``R_rm`` as a frozen offset, hinge loss, AdamW lr 1e-2,
   1000 steps, 95/5 split of the samples' groups), logging the fraction of zero-loss pairs and the
   held-out error rate with the fitted weights and with ``R_rm`` alone; or, for the **RBR-Fixed**
   ablation (``learner.rbr.weights=fixed``), weight ``learner.rbr.fixed_weight`` on the ideal
   class feature and 0 elsewhere. The weights go to ``rbr/weights.json``.
3. **PPO / PPO-Lag**: :func:`saferl.learners.ppo_lag.run` on the setup with its reward source
   replaced by :class:`RBRScorerSource` (``learner.rbr.variant``: ``ppo_lag`` keeps the cost
   constraint and the multiplier, ``ppo`` drops them). The rollout, advantage and update code
   is ppo_lag's; only the reward differs.

Its exact target on the world is the tilt of ppo_lag's target with ``R_rbr`` added to the reward:
``π ∝ π_ref·exp((R_rm + R_rbr − λc)/β)`` at the multiplier update's fixed point (``ppo_lag``) or
at λ = 0 (``ppo``), with ``R_rbr`` from the grader the run used.

Departures from the paper: the fit's completions are reference samples (classed by the world's
truth), not completions generated per class with a prompted model; the split holds out groups of
``learner.rbr.group_size`` samples of a prompt (the world's 16 prompts are too few to hold 5 % of
them out), so held-out groups share their prompt with training groups; RBR-Fixed's weights are
this module's choice (the ideal class feature only). Only the built-in world is supported: it has
the response type of every prompt and an exact grader (an LM grader over a hub setup's prompts
needs their response types, which no setup provides yet).
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
from saferl.data.world import EOS, build_world_tokenizer, enumerate_responses, world_prompts
from saferl.learners import ppo_lag
from saferl.learners.mocan import sample_responses
from saferl.learners.output import RunOutput
from saferl.learners.result import RunResult
from saferl.learners.scorers import Scorer, response_words
from saferl.learners.settings import PPOLagSettings, RBRSettings
from saferl.models import ModelSpec
from saferl.rbr import LinearRBR, RBRFitResult, fit_rbr_weights, rbr_features
from saferl.rbr.features import CLASS_FEATURE_PREFIX
from saferl.rbr.world import WorldGrader, world_response_type, world_spec
from saferl.runtime import ScoreGroup, init_ray
from saferl.runtime.resources import Resources
from saferl.setups.base import Needs, ScoreGroupStarter, ScorerSource, Setup

__all__ = [
    "RBRRewardScorer",
    "RBRScorerSource",
    "RBRSettings",
    "fixed_weights",
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
    return Needs(scorers=True, critics=True, groups=groups)


# ---------------------------------------------------------------------------------------------
# The reward: R_rm + R_rbr on safety-relevant prompts, R_rm elsewhere
# ---------------------------------------------------------------------------------------------


class RBRRewardScorer:
    """``R_rm + R_rbr`` on the prompts whose response type is safety-relevant, ``R_rm`` elsewhere.

    Args:
        reward: the reward model's scorer (``R_rm``, frozen).
        rbr: the linear RBR of every response type of the world's spec.
        grader: grades the world's propositions (exact or noisy).
        safety_relevant: the response types that get ``R_rbr``.
        tokenizer: the world's tokenizer (responses are read as words).
    """

    num_outputs = 1

    def __init__(
        self,
        reward: Scorer,
        rbr: LinearRBR,
        grader: WorldGrader,
        safety_relevant: Sequence[str],
        tokenizer,
    ) -> None:
        self.reward = reward
        self.rbr = rbr
        self.grader = grader
        self.safety_relevant = tuple(safety_relevant)
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.convert_tokens_to_ids(EOS)
        self.prompts = {prompt.text: prompt for prompt in world_prompts()}

    def bonus(self, batch: SequenceBatch, prompts: Sequence[str]) -> torch.Tensor:
        """``R_rbr`` of each row on a safety-relevant prompt, 0 elsewhere: ``(batch,)`` float64."""
        bonus = torch.zeros(len(prompts), dtype=torch.float64)
        for row, text in enumerate(prompts):
            prompt = self.prompts.get(text)
            if prompt is None:
                raise ValueError(
                    f"rbr scorer: prompt {text!r} is not a prompt of the built-in world"
                )
            response_type = world_response_type(prompt)
            if response_type not in self.safety_relevant:
                continue
            words, finished = response_words(self.tokenizer, self.eos_token_id, batch, row)
            graded = torch.tensor(
                list(self.grader.grade(prompt, words, finished).values()), dtype=torch.float64
            )
            bonus[row] = self.rbr.reward(response_type, graded)
        return bonus

    def score(self, batch: SequenceBatch, prompts: Sequence[str]) -> torch.Tensor:
        reward = self.reward.score(batch, prompts)[:, :1]  # (batch, 1)
        return reward + self.bonus(batch, prompts).to(reward.dtype).unsqueeze(-1)


@dataclass(frozen=True)
class RBRScorerSource:
    """The setup's reward source with ``R_rbr`` added on safety-relevant prompts (step 3's reward)."""

    reward: ScorerSource
    rbr: LinearRBR
    grader: WorldGrader
    safety_relevant: tuple[str, ...]
    tokenizer: object
    kind: str = "reward"

    @property
    def calibration(self):
        """The wrapped source's calibration (learned world scorers), reported by ppo_lag."""
        return getattr(self.reward, "calibration", None)

    def build(self, start_group: ScoreGroupStarter) -> Scorer:
        return RBRRewardScorer(
            self.reward.build(start_group),
            self.rbr,
            self.grader,
            self.safety_relevant,
            self.tokenizer,
        )


# ---------------------------------------------------------------------------------------------
# Step 2: the weights
# ---------------------------------------------------------------------------------------------


def fixed_weights(weight: float) -> LinearRBR:
    """RBR-Fixed: ``weight`` on the ideal class feature of every response type, 0 on every other."""
    spec = world_spec()
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
) -> tuple[LinearRBR, dict[str, RBRFitResult]]:
    """Step 2 on graded samples, per safety-relevant response type (the others keep weights 0).

    Args:
        graded: ``(P, K, n_propositions)`` the grader's answers (the features' input).
        exact: ``(P, K, n_propositions)`` the exact answers (each sample's class).
        reward_scores: ``(P, K)`` ``R_rm`` of every sample.
        response_types: the response type of each of the ``P`` prompts.
    """
    spec = world_spec()
    num_prompts, num_samples = reward_scores.shape
    groups_per_prompt = num_samples // settings.group_size
    # group id of sample k of prompt i: i·G + k // group_size (the split holds out whole groups)
    group_ids = (
        torch.arange(num_prompts).unsqueeze(1) * groups_per_prompt
        + torch.arange(num_samples).unsqueeze(0) // settings.group_size
    )  # (P, K)
    weights, fits = {}, {}
    for key in spec.response_types:
        feature_map = rbr_features(spec, key)
        rows = [i for i, response_type in enumerate(response_types) if response_type == key]
        if key not in settings.safety_relevant or not rows:
            weights[key] = torch.zeros(len(feature_map.feature_names), dtype=torch.float64)
            continue
        try:
            fit = fit_rbr_weights(
                feature_map.features(graded[rows]).flatten(0, 1),  # (n, n_features)
                reward_scores[rows].flatten(),
                group_ids[rows].flatten(),
                feature_map.class_features(exact[rows]).argmax(-1).flatten(),  # true class ranks
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
                f"failed ({error}); raise learner.rbr.num_samples so that the samples span several classes"
            ) from error
        weights[key], fits[key] = fit.weights, fit
    return LinearRBR.from_spec(spec, weights), fits


def _fit_record(fits: dict[str, RBRFitResult]) -> dict[str, dict]:
    return {
        key: {
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
    rbr: LinearRBR, grader: WorldGrader, safety_relevant: Sequence[str]
) -> torch.Tensor:
    """``R_rbr`` of every enumerated response to every world prompt (0 on prompts that are not
    safety-relevant): ``(num_prompts, num_responses)`` float64 in the exact enumeration's order."""
    prompts = world_prompts()
    graded = grader.probabilities(
        prompts, enumerate_responses(build_world_tokenizer())
    )  # (N, K, P)
    bonus = torch.zeros(graded.shape[:2], dtype=torch.float64)
    for row, prompt in enumerate(prompts):
        if (response_type := world_response_type(prompt)) in safety_relevant:
            bonus[row] = rbr.reward(response_type, graded[row])
    return bonus


def target(
    setup: Setup, settings: RBRSettings, rbr: LinearRBR, grader: WorldGrader
) -> TiltTarget | None:
    """ppo_lag's target with ``R_rbr`` added to the reward (the KL-regularised optimum of
    ``R_rm + R_rbr`` at β, at the multiplier update's fixed point with ``variant=ppo_lag``)."""
    stage = ppo_lag.target(setup, ppo_settings(settings))
    if stage is None:
        return None
    weights = "fixed weights" if settings.weights == "fixed" else "fitted weights"
    return replace(
        stage,
        label=f"the optimum of R_rm + R_rbr ({weights}) at β: {stage.label}",
        reward_bonus=rbr_bonus_table(rbr, grader, settings.safety_relevant),
    )


def run(setup: Setup, settings: RBRSettings, resources: Resources, output: RunOutput) -> RunResult:
    """Steps 1–3 of the module docstring on the world setup; the fit's record goes to ``rbr/``."""
    if setup.name != "world":
        raise ValueError(
            f"learner=rbr runs on the built-in world (model=world data=world), whose prompts have response "
            f"types and an exact grader; the {setup.name} setup has neither (an LM grader over its prompts "
            "needs their response types, which no setup provides yet)"
        )
    setup.require(needs(settings), "rbr")
    init_ray(resources.runtime)
    folder = output.folder / "rbr"
    folder.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    grader = WorldGrader(settings.grader_noise, settings.seed)
    weights_path = folder / "weights.json"
    details: dict = {
        "variant": settings.variant,
        "weights": settings.weights,
        "safety_relevant": list(settings.safety_relevant),
        "grader_noise": settings.grader_noise,
    }

    clock = time.perf_counter()
    if output.resume and weights_path.is_file():  # a resumed run keeps the weights it trained with
        rbr = LinearRBR.load(weights_path, world_spec())
        fit_path = folder / "fit.json"
        details["fit"] = json.loads(fit_path.read_text()) if fit_path.is_file() else {}
    elif settings.weights == "fixed":
        # 2. RBR-Fixed: no samples, no fit.
        rbr = fixed_weights(settings.fixed_weight)
    else:
        # 1. Reference samples: R_rm and the grader's (and the truth's) propositions.
        prompts = list(setup.prompts)
        batch, rows = sample_responses(
            setup.policy,
            setup.tokenizer,
            prompts,
            settings.num_samples,
            template=setup.template,
            max_prompt_length=setup.max_prompt_length,
            generation=replace(setup.generation, seed=settings.seed),
            resources=resources,
        )
        reward_scores = _reward_scores(setup, resources, batch, rows).reshape(
            len(prompts), settings.num_samples
        )
        world = {prompt.text: prompt for prompt in world_prompts()}
        eos = setup.tokenizer.convert_tokens_to_ids(EOS)
        graded, exact = [], []
        for row, text in enumerate(rows):
            words, finished = response_words(setup.tokenizer, eos, batch, row)
            graded.append(list(grader.grade(world[text], words, finished).values()))
            exact.append(list(WorldGrader().grade(world[text], words, finished).values()))
        shape = (len(prompts), settings.num_samples, -1)
        graded = torch.tensor(graded, dtype=torch.float64).reshape(shape)  # (P, K, n_propositions)
        exact = torch.tensor(exact, dtype=torch.float64).reshape(shape)
        seconds["rbr_grade"] = time.perf_counter() - clock
        # 2. The fit per safety-relevant response type.
        clock = time.perf_counter()
        response_types = [world_response_type(world[text]) for text in prompts]
        rbr, fits = fit_weights(graded, exact, reward_scores, response_types, settings)
        details["fit"] = _fit_record(fits)
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
            output.notice(
                f"rbr fit ({key}): {fit.n_train_pairs} training pairs, zero-loss fraction "
                f"{fit.final_zero_loss_fraction:.3f}; held-out error rate {fit.heldout_error_rate:.3f} "
                f"(R_rm alone {fit.heldout_error_rate_reward_model:.3f})"
            )
    rbr.save(weights_path)
    details["rbr_weights"] = rbr.weight_names()
    seconds["rbr_fit"] = time.perf_counter() - clock

    # 3. PPO / PPO-Lag with the reward R_rm + R_rbr on safety-relevant prompts.
    source = RBRScorerSource(setup.reward, rbr, grader, settings.safety_relevant, setup.tokenizer)
    aligned = ppo_lag.run(replace(setup, reward=source), ppo_settings(settings), resources, output)
    return replace(
        aligned,
        method="rbr",
        target=target(setup, settings, rbr, grader),
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
