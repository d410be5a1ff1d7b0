"""The learners' settings: typed, checked hyper-parameters that ``saferl.config`` builds from the
``learner`` and ``multiplier`` sections.

Plain dataclasses with no torch, Ray or transformers import at module level, so that the command
line's preflight (:mod:`saferl.cli_preflight`) checks a learner's section in about a second; each
learner's module re-exports its own (``saferl.learners.ppo_lag.PPOLagSettings``, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from saferl.runtime.specs import SCHEDULERS

__all__ = [
    "DEFAULT_FRONTIER_GRID",
    "CDPOSettings",
    "MocanSettings",
    "PPOLagSettings",
    "PPOSettings",
    "PecanSettings",
    "PreferenceSettings",
    "RBRSettings",
]

def check_skip_nonfinite(value: Any) -> None:
    """``learner.skip_nonfinite_batches`` must be a boolean (a string such as ``"false"`` would be
    truthy)."""
    if not isinstance(value, bool):
        raise ValueError(
            f"learner.skip_nonfinite_batches: expected true or false (skip and count batches holding "
            f"NaN or inf, or stop the run at the first); found {value!r}"
        )


def check_anchor_weight(value: Any, learner: str) -> None:
    """``learner.<learner>.anchor_weight``, the sample-target anchor's α, must be a number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"learner.{learner}.anchor_weight: expected a number >= 0 (0: DPO alone); found {value!r}")


#: λ values of a dualized learner's predicted frontier.
DEFAULT_FRONTIER_GRID = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


@dataclass(frozen=True)
class PPOSettings:
    """Hyper-parameters of the PPO(-Lagrangian) loop (published Safe RLHF values in brackets).

    Attributes:
        iterations: rollouts (and updates) in the run.
        prompts_per_iteration: rollout batch, one response per prompt.
        kl_coeff: β of the per-token KL penalty [0.01].
        clip_range_score: per-token streams clipped to ± this [50].
        gamma: GAE discount [1]; gae_lambda: λ_GAE [0.95].
        clip_eps: PPO ratio clip ε [0.2]; clip_eps_value: critic clip ε_v [5].
        ppo_epochs: passes over each rollout [1].
        kl_in_cost_stream: the published ``+β kl`` in the cost streams [True].
        ptx_coeff: weight of the PTX loss (the token-mean NLL of the setup's PTX set, one step
            after each actor update) [16 in the published scripts; 0, off, by default].
        seed: seeds prompt order and sampling.
        skip_nonfinite_batches: a rollout with a NaN or ±inf score, log-prob, advantage, loss or
            multiplier is skipped and counted (``perf/skipped_batches``) instead of stopping the
            run with ``NonFiniteError`` (the default, False).
    """

    iterations: int
    prompts_per_iteration: int
    kl_coeff: float = 0.01
    clip_range_score: float = 50.0
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    clip_eps_value: float = 5.0
    ppo_epochs: int = 1
    kl_in_cost_stream: bool = True
    ptx_coeff: float = 0.0
    seed: int = 0
    skip_nonfinite_batches: bool = False

    def __post_init__(self) -> None:
        check_skip_nonfinite(self.skip_nonfinite_batches)
        for key in ("iterations", "prompts_per_iteration", "ppo_epochs"):
            if getattr(self, key) < 1:
                raise ValueError(f"learner.{key} must be >= 1; found {getattr(self, key)}")
        if isinstance(self.kl_coeff, bool) or not isinstance(self.kl_coeff, (int, float)) or self.kl_coeff <= 0:
            raise ValueError(
                f"learner.kl_coeff: must be > 0 (the weight of the KL penalty; a sign mistake flips it "
                f"into a bonus); found {self.kl_coeff!r}"
            )
        for key in ("clip_range_score", "clip_eps", "clip_eps_value"):
            if getattr(self, key) <= 0:
                raise ValueError(f"learner.{key} must be > 0; found {getattr(self, key)}")
        if not (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError(
                f"learner.gamma and learner.gae_lambda must be in [0, 1]; found {self.gamma}, {self.gae_lambda}"
            )
        ptx = self.ptx_coeff
        if isinstance(ptx, bool) or not isinstance(ptx, (int, float)) or not (math.isfinite(ptx) and ptx >= 0):
            raise ValueError(f"learner.ptx_coeff must be a finite number >= 0 (the weight of the PTX loss; 0: off); "
                             f"found {self.ptx_coeff!r}")



@dataclass(frozen=True)
class PPOLagSettings:
    """A PPO-Lagrangian run (config keys in brackets).

    Attributes:
        ppo: the loop's hyper-parameters (``learner.*``).
        multiplier: :func:`saferl.core.multipliers.build_multiplier` options with ``kind``
            (``multiplier.*``); None: plain PPO on the reward alone (no cost, no cost critic).
        cost_limit: ``d``, one value per cost (root ``cost_limit``).
        policy_learning_rate, critic_learning_rate: AdamW rates (``learner.policy_learning_rate``,
            ``learner.critic_learning_rate``).
        policy_lr_schedule: the actor's learning-rate schedule over the run's optimizer steps
            (``learner.policy_lr_schedule``): ``constant``, ``linear`` or ``cosine`` (to 0), after
            a linear warmup over ``policy_lr_warmup_ratio`` of the steps
            (``learner.policy_lr_warmup_ratio``) [cosine, 0.03].
        name: names the checkpoint folder (``checkpoints/<name>``), the exported policy
            (``models/policy_<name>``) and the progress stage.
    """

    ppo: PPOSettings
    multiplier: dict | None
    cost_limit: float | tuple[float, ...]
    policy_learning_rate: float = 1e-3
    critic_learning_rate: float = 1e-3
    name: str = "ppo_lag"
    policy_lr_schedule: str = "constant"
    policy_lr_warmup_ratio: float = 0.0

    def __post_init__(self) -> None:
        for key in ("policy_learning_rate", "critic_learning_rate"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"learner.{key}: must be > 0; found {value!r}")
        if self.policy_lr_schedule not in SCHEDULERS:
            raise ValueError(f"learner.policy_lr_schedule: expected one of {list(SCHEDULERS)}; "
                             f"found {self.policy_lr_schedule!r}")
        ratio = self.policy_lr_warmup_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise ValueError(f"learner.policy_lr_warmup_ratio: expected a fraction of the steps in [0, 1); "
                             f"found {ratio!r}")

    def policy_schedule_steps(self) -> tuple[int, int]:
        """``(warmup_steps, total_steps)`` of the actor's schedule: one optimizer step per rollout
        and epoch."""
        total = self.ppo.iterations * self.ppo.ppo_epochs
        return round(self.policy_lr_warmup_ratio * total), total


@dataclass(frozen=True)
class MocanSettings:
    """MoCAN's settings (``learner.mocan.*`` unless said otherwise).

    Attributes:
        beta: β of the dual and of the DPO stage (root ``beta``).
        cost_limit: ``d`` when ``margin`` is None (root ``cost_limit``).
        num_samples: K reference samples per prompt for the dual (published 128).
        margin: a relative safety margin ``b`` instead of the absolute limit (``None``: use
            ``cost_limit``).
        stage: ``"dpo"`` (pseudo-preference DPO) or ``"ppo"`` (PPO with λ fixed at λ̂).
        soft_labels: DPO on the probabilities themselves (lower variance) or on Bernoulli draws.
        dpo_steps, dpo_pairs_per_step, dpo_learning_rate: the DPO stage.
        anchor_weight: α ≥ 0 of the sample-target anchor added to the DPO stage's loss
            (:func:`saferl.core.dualized.sample_target_weights`; 0: the published DPO alone).
        frontier_grid: λ values of the predicted frontier.
        predict_only: stop after step 2.
        num_prompts: the dual's prompts are this many of the setup's prompts (a seeded choice kept
            in data order; None: all of them; published 1000).
        ppo: ``stage="ppo"``'s loop (the ``learner.*`` PPO keys; its multiplier is replaced by
            λ̂ fixed).
        seed: sampling and label seed (the root ``seed``).
        skip_nonfinite_batches: ``learner.skip_nonfinite_batches`` for the DPO stage too (a step
            with NaN/inf reference log-probs or loss is skipped and counted instead of stopping).
    """

    beta: float = 0.5
    cost_limit: float | tuple[float, ...] = 0.0
    num_samples: int = 256
    margin: float | None = None
    stage: str = "dpo"
    soft_labels: bool = True
    dpo_steps: int = 400
    dpo_pairs_per_step: int = 256
    dpo_learning_rate: float = 1e-3
    anchor_weight: float = 1.0
    frontier_grid: tuple[float, ...] = DEFAULT_FRONTIER_GRID
    predict_only: bool = False
    num_prompts: int | None = None
    ppo: PPOLagSettings | None = None
    seed: int = 0
    skip_nonfinite_batches: bool = False

    def __post_init__(self) -> None:
        check_skip_nonfinite(self.skip_nonfinite_batches)
        if self.stage not in ("dpo", "ppo"):
            raise ValueError(f"learner.mocan.stage must be 'dpo' or 'ppo'; found {self.stage!r}")
        if self.num_samples < 2 or self.num_samples % 2:
            raise ValueError(f"learner.mocan.num_samples must be an even number >= 2; found {self.num_samples}")
        if self.num_prompts is not None and (not isinstance(self.num_prompts, int) or self.num_prompts < 1):
            raise ValueError(f"learner.mocan.num_prompts must be an integer >= 1 or null; found {self.num_prompts!r}")
        if self.margin is not None and (isinstance(self.margin, bool) or not isinstance(self.margin, (int, float))
                                        or self.margin < 0):
            raise ValueError(
                f"learner.mocan.margin: must be a number >= 0 (be safer than the reference by b) or null; "
                f"found {self.margin!r}"
            )
        check_anchor_weight(self.anchor_weight, "mocan")
        if self.stage == "ppo" and self.ppo is None:
            raise ValueError("learner.mocan.stage=ppo needs the learner's PPO keys (learner.iterations, ...)")
        if self.stage == "ppo" and self.ppo.ppo.kl_in_cost_stream:
            # With λ held at λ̂, the published streams' fixed point is the optimum at KL weight
            # β(1+λ̂), not π_λ̂ (docs/algorithms.md §2): MoCAN's PPO stage must aim at π_λ̂.
            raise ValueError(
                "learner.kl_in_cost_stream=true with learner.mocan.stage=ppo: the published +β·kl in the cost "
                "stream makes PPO with λ fixed at λ̂ reach π_ref·exp((r − λ̂c)/(β(1+λ̂))), not MoCAN's target "
                "π_λ̂; use learner.kl_in_cost_stream=false"
            )
        object.__setattr__(self, "frontier_grid", tuple(float(v) for v in self.frontier_grid))



@dataclass(frozen=True)
class CDPOSettings:
    """C-DPO's settings (``learner.cdpo.*`` unless said otherwise; docs/algorithms.md §4).

    Attributes:
        beta: β of every round's DPO (root ``beta``): DPO on ``σ(s_0 − s_1)`` at β aims at ``π_λ``.
        cost_limit: ``d``, one value per cost (root ``cost_limit``).
        rounds: dual steps, each followed by one DPO round (``>= 1``).
        num_samples: K samples per prompt from the current policy each round (even: they are
            paired 0–1, 2–3, ...).
        num_prompts: the sampled prompts are this many of the setup's prompts (a seeded choice kept
            in data order; None: all of them).
        multiplier_step_size: η of ``λ ← max(0, λ + η (E[c] − d))`` (> 0; one value, or one per cost).
        initial_multiplier: λ before the first step (>= 0; one value, or one per cost).
        soft_labels: DPO on ``σ(s_0 − s_1)`` itself (True) or on Bernoulli draws of it.
        dpo_steps, dpo_pairs_per_step, dpo_learning_rate: each round's DPO.
        anchor_weight: α ≥ 0 of MoCAN's sample-target anchor in each round's DPO (0: DPO alone).
        evaluate_rounds: score each round's policy with the setup's evaluator where it has one (the
            world's exact yardsticks per round; their seconds are kept apart from the rounds').
        seed: sampling and label seed (the root ``seed``).
        skip_nonfinite_batches: ``learner.skip_nonfinite_batches`` for every round's DPO.
    """

    beta: float = 0.5
    cost_limit: float | tuple[float, ...] = 0.0
    rounds: int = 5
    num_samples: int = 16
    num_prompts: int | None = None
    multiplier_step_size: float | tuple[float, ...] = 1.0
    initial_multiplier: float | tuple[float, ...] = 0.0
    soft_labels: bool = True
    dpo_steps: int = 40
    dpo_pairs_per_step: int = 32
    dpo_learning_rate: float = 1e-3
    anchor_weight: float = 0.0
    evaluate_rounds: bool = False
    seed: int = 0
    skip_nonfinite_batches: bool = False

    def __post_init__(self) -> None:
        check_skip_nonfinite(self.skip_nonfinite_batches)

        def integer(key: str, minimum: int) -> int:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"learner.cdpo.{key}: expected an integer >= {minimum}; found {value!r}")
            return value

        def per_cost(key: str, positive: bool) -> tuple[float, ...]:
            value = getattr(self, key)
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            m = len(self.cost_limit) if isinstance(self.cost_limit, (list, tuple)) else 1
            bound = "> 0" if positive else ">= 0"
            if len(values) not in (1, m) or not all(
                not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                and (v > 0 if positive else v >= 0) for v in values
            ):
                raise ValueError(f"learner.cdpo.{key}: expected a number {bound}, or a list of {m} (one per "
                                 f"cost); found {value!r}")
            return tuple(float(v) for v in values)

        integer("rounds", 1)
        if integer("num_samples", 2) % 2:
            raise ValueError(f"learner.cdpo.num_samples: expected an even integer >= 2 (the samples are paired); "
                             f"found {self.num_samples!r}")
        if self.num_prompts is not None:
            integer("num_prompts", 1)
        integer("dpo_steps", 1)
        integer("dpo_pairs_per_step", 1)
        object.__setattr__(self, "multiplier_step_size", per_cost("multiplier_step_size", positive=True))
        object.__setattr__(self, "initial_multiplier", per_cost("initial_multiplier", positive=False))
        for key in ("soft_labels", "evaluate_rounds"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"learner.cdpo.{key}: expected true or false; found {getattr(self, key)!r}")
        rate = self.dpo_learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            raise ValueError(f"learner.cdpo.dpo_learning_rate: expected a number > 0; found {rate!r}")
        check_anchor_weight(self.anchor_weight, "cdpo")


@dataclass(frozen=True)
class PecanSettings:
    """PeCAN's settings (``learner.pecan.*`` unless said otherwise).

    Attributes:
        beta: β of the implicit models, the dual and the final DPO (root ``beta``).
        num_samples: K reference samples per prompt for the dual (even, ``>= 2``: they are paired).
        margin: the relative safety margin ``b >= 0`` in implicit safety units: be safer than the
            reference by ``b`` in ``E[c]``, ``c = −β log(π_g/π_ref)`` (``−log(π_g/π_ref)`` with
            ``consistent=False``).
        consistent: the consistent labelling, β inside the scores (targets ``π_λ*``); False: the
            published raw log-ratios (targets ``π ∝ π_ref exp(s/β²)``).
        dpo_steps, dpo_pairs_per_step, dpo_learning_rate: every DPO run (``π_r``, ``π_g`` and the
            final alignment).
        anchor_weight: α ≥ 0 of MoCAN's sample-target anchor in the final alignment (0: DPO alone).
        frontier_grid: λ values of the predicted frontier.
        predict_only: stop after step 3.
        num_prompts: the dual's prompts are this many of the setup's prompts (a seeded choice kept
            in data order; None: all of them).
        seed: sampling and pair-order seed (the root ``seed``).
        skip_nonfinite_batches: ``learner.skip_nonfinite_batches`` for every DPO run.
    """

    beta: float = 0.5
    num_samples: int = 64
    margin: float = 0.1
    consistent: bool = True
    dpo_steps: int = 200
    dpo_pairs_per_step: int = 32
    dpo_learning_rate: float = 1e-3
    anchor_weight: float = 1.0
    frontier_grid: tuple[float, ...] = DEFAULT_FRONTIER_GRID
    predict_only: bool = False
    num_prompts: int | None = None
    seed: int = 0
    skip_nonfinite_batches: bool = False

    def __post_init__(self) -> None:
        check_skip_nonfinite(self.skip_nonfinite_batches)
        check_anchor_weight(self.anchor_weight, "pecan")
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
        object.__setattr__(self, "frontier_grid", tuple(float(v) for v in self.frontier_grid))



@dataclass(frozen=True)
class PreferenceSettings:
    """One offline preference run (``learner.preference.*`` unless said otherwise).

    Attributes:
        loss: a name of the core registry (``dpo``, ``ipo``, ``safe_nca``, ``bfpo``, ...).
        ordering: ``"better"`` (helpfulness labels) or ``"safer"`` (safety labels); ``safe_nca``
            always uses the safe-vs-unsafe pairs.
        hyperparameters: the loss's keyword hyper-parameters (``beta`` defaults to ``beta`` for
            the losses that take one).
        steps, pairs_per_step, learning_rate: the optimisation.
        beta: the root ``beta``, the loss's β unless ``hyperparameters`` sets it.
        seed: pair order (the root ``seed``).
        skip_nonfinite_batches: ``learner.skip_nonfinite_batches`` (see :class:`PPOSettings`): a
            step whose reference log-probs or loss hold NaN or ±inf is skipped and counted.
    """

    loss: str = "dpo"
    ordering: str = "better"
    hyperparameters: dict | None = None
    steps: int = 200
    pairs_per_step: int = 32
    learning_rate: float = 1e-3
    beta: float = 0.5
    seed: int = 0
    skip_nonfinite_batches: bool = False

    def __post_init__(self) -> None:
        check_skip_nonfinite(self.skip_nonfinite_batches)
        if self.ordering not in ("better", "safer"):
            raise ValueError(f"learner.preference.ordering must be 'better' or 'safer'; found {self.ordering!r}")
        from saferl.core.preference_losses import get_preference_loss

        try:
            get_preference_loss(self.loss)
        except (KeyError, ValueError) as error:
            raise ValueError(f"learner.preference.loss: {error}") from error
        spec = get_preference_loss(self.loss)
        given = dict(self.hyperparameters or {})
        unknown = sorted(set(given) - set(spec.defaults))
        if unknown:
            raise ValueError(
                f"learner.preference.hyperparameters: unknown key(s) {unknown}; allowed: {sorted(spec.defaults)}"
            )
        for name in ("beta", "tau"):
            if name in given and (isinstance(given[name], bool) or not isinstance(given[name], (int, float))
                                  or given[name] <= 0):
                raise ValueError(f"learner.preference.hyperparameters.{name}: must be > 0; found {given[name]!r}")
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, (int, float)) \
                or self.learning_rate <= 0:
            raise ValueError(f"learner.preference.learning_rate: must be > 0; found {self.learning_rate!r}")

    def loss_hyperparameters(self) -> dict[str, Any]:
        """The loss's hyper-parameters as trained: ``beta`` defaults to the root β where the loss
        takes one (SimPO's β is its own length-normalised scale, so it keeps its default)."""
        from saferl.core.preference_losses import get_preference_loss

        hyperparameters = dict(self.hyperparameters or {})
        if "beta" in get_preference_loss(self.loss).defaults and self.loss != "simpo":
            hyperparameters.setdefault("beta", self.beta)
        return hyperparameters


#: The response types of the world's spec (``saferl.rbr.world.WORLD_SPEC``).
RBR_WORLD_RESPONSE_TYPES = ("hard_refuse", "comply")


@dataclass(frozen=True)
class RBRSettings:
    """Rule-Based Rewards in PPO / PPO-Lag (``learner.rbr.*`` unless said otherwise; Mu et al. 2024,
    docs/algorithms.md §6).

    Attributes:
        variant: ``"ppo_lag"`` (PPO-Lagrangian with the cost constraint, the ``multiplier``
            section) or ``"ppo"`` (plain PPO on ``R_rm + R_rbr``, no cost: the paper's RBR-PPO).
        weights: ``"fit"`` (the hinge fit on graded reference samples) or ``"fixed"`` (the RBR-Fixed
            ablation: ``fixed_weight`` on the ideal class feature, every other feature 0).
        fixed_weight: the ideal class feature's weight with ``weights="fixed"`` (> 0).
        safety_relevant: the response types whose prompts get ``R_rm + R_rbr``; the others get
            ``R_rm`` alone.
        spec: ``"world"`` (the built-in world's spec) or the path of a spec in the release's
            ``proposition_prompts.yaml`` format (any setup).
        grader: ``"world"`` (the world's exact grader; world setup only) or ``"lm"`` (a causal
            LM at ``grader_model`` reads ``P(yes)/(P(yes)+P(no))`` per proposition, as a Ray
            actor group; any setup).
        grader_model: the LM grader's folder or hub name (``grader="lm"``).
        grader_chat_template: wrap each grader prompt in the grader tokenizer's chat template.
        grader_micro_batch_size: grader prompts per forward pass on a rank.
        response_types: a JSONL file of ``{"prompt": ..., "response_type": ...}`` records: the
            response type of each listed prompt (prompts not listed get ``R_rm`` alone). Needed
            off the world (whose prompts carry their type); None on the world.
        grader_noise: the world grader flips each proposition with this probability (0: exact).
        num_samples: reference samples per prompt graded for the fit.
        group_size: samples per fit group; the 95/5 split holds out whole groups (the world has
            16 prompts, too few to hold 5 % of them out).
        fit_steps, fit_learning_rate, margin, heldout_fraction: the fit (1000, 1e-2, 1, 0.05).
        ppo: the PPO loop (the ``learner.*`` PPO keys and the ``multiplier`` section).
        seed: sampling, grader noise and split seed (the root ``seed``).
    """

    variant: str = "ppo_lag"
    weights: str = "fit"
    fixed_weight: float = 1.0
    safety_relevant: tuple[str, ...] = RBR_WORLD_RESPONSE_TYPES
    spec: str = "world"
    grader: str = "world"
    grader_model: str | None = None
    grader_chat_template: bool = False
    grader_micro_batch_size: int = 16
    response_types: str | None = None
    grader_noise: float = 0.0
    num_samples: int = 64
    group_size: int = 8
    fit_steps: int = 1000
    fit_learning_rate: float = 1e-2
    margin: float = 1.0
    heldout_fraction: float = 0.05
    ppo: PPOLagSettings | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        def number(value: Any) -> bool:
            return not isinstance(value, bool) and isinstance(value, (int, float))

        if self.variant not in ("ppo_lag", "ppo"):
            raise ValueError(f"learner.rbr.variant: expected 'ppo_lag' (PPO-Lagrangian with the cost "
                             f"constraint) or 'ppo' (no cost); found {self.variant!r}")
        if self.weights not in ("fit", "fixed"):
            raise ValueError(f"learner.rbr.weights: expected 'fit' (hinge fit on graded samples) or 'fixed' "
                             f"(the RBR-Fixed ablation); found {self.weights!r}")
        if not number(self.fixed_weight) or self.fixed_weight <= 0:
            raise ValueError(f"learner.rbr.fixed_weight: expected a number > 0 (the ideal class feature's "
                             f"weight); found {self.fixed_weight!r}")
        if not isinstance(self.spec, str) or not self.spec:
            raise ValueError(f"learner.rbr.spec: expected 'world' or the path of a proposition_prompts.yaml "
                             f"spec; found {self.spec!r}")
        # The world's spec is known here; a spec file's response types are checked when it is read.
        allowed = RBR_WORLD_RESPONSE_TYPES if self.spec == "world" else None
        relevant = self.safety_relevant
        if isinstance(relevant, str) or not isinstance(relevant, (list, tuple)) or not all(
            isinstance(item, str) and item and (allowed is None or item in allowed) for item in relevant
        ) or len(set(relevant)) != len(relevant):
            out_of = f" out of {list(allowed)}" if allowed else " of the spec"
            raise ValueError(f"learner.rbr.safety_relevant: expected a list of distinct response types{out_of} "
                             f"(may be empty: R_rm alone); found {relevant!r}")
        object.__setattr__(self, "safety_relevant", tuple(relevant))
        if self.grader not in ("world", "lm"):
            raise ValueError(f"learner.rbr.grader: expected 'world' (the world's exact grader) or 'lm' (a causal "
                             f"LM at learner.rbr.grader_model); found {self.grader!r}")
        if self.grader == "lm" and (not isinstance(self.grader_model, str) or not self.grader_model):
            raise ValueError(f"learner.rbr.grader_model: expected the LM grader's folder or hub name with "
                             f"learner.rbr.grader=lm; found {self.grader_model!r}")
        if not isinstance(self.grader_chat_template, bool):
            raise ValueError(f"learner.rbr.grader_chat_template: expected true or false; found "
                             f"{self.grader_chat_template!r}")
        if self.response_types is not None and (not isinstance(self.response_types, str) or not self.response_types):
            raise ValueError(f"learner.rbr.response_types: expected null or the path of a JSONL file of "
                             f"{{prompt, response_type}} records; found {self.response_types!r}")
        if not number(self.grader_noise) or not 0 <= self.grader_noise <= 1:
            raise ValueError(f"learner.rbr.grader_noise: expected a probability in [0, 1]; found {self.grader_noise!r}")
        for key, minimum in (("num_samples", 2), ("group_size", 2), ("fit_steps", 1), ("grader_micro_batch_size", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"learner.rbr.{key}: expected an integer >= {minimum}; found {value!r}")
        if self.num_samples % self.group_size:
            raise ValueError(f"learner.rbr.num_samples: expected a multiple of learner.rbr.group_size="
                             f"{self.group_size} (each prompt's samples form whole groups); found {self.num_samples}")
        for key in ("fit_learning_rate", "margin"):
            value = getattr(self, key)
            if not number(value) or value <= 0:
                raise ValueError(f"learner.rbr.{key}: expected a number > 0; found {value!r}")
        if not number(self.heldout_fraction) or not 0 < self.heldout_fraction < 1:
            raise ValueError(f"learner.rbr.heldout_fraction: expected a number in (0, 1); found "
                             f"{self.heldout_fraction!r}")
        if self.ppo is None:
            raise ValueError("learner.rbr needs the learner's PPO keys (learner.iterations, ...)")
