"""What every setup provides to every learner: the typed :class:`Setup`, and how a learner says what
it needs from one (:class:`Needs`).

A setup is where a run's models, data, scorers and evaluation come from (the built-in world in
:mod:`saferl.setups.world`, hub or local checkpoints in :mod:`saferl.setups.hub`). A learner reads
only this container, so one learner module runs on every setup, and a new data source is one setup
module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from transformers import PreTrainedTokenizerBase

from saferl.core.targets import TiltTarget
from saferl.data.records import SafetyPreferencePair, SFTExample
from saferl.data.world import PolicyScore
from saferl.learners.scorers import ModelScorer, Scorer, ShapedRewardScorer
from saferl.models import ModelSpec
from saferl.runtime import GenerationSpec, ScoreGroup

__all__ = [
    "CriticStart",
    "Evaluation",
    "Evaluator",
    "ModelScorerSource",
    "Needs",
    "ScoreGroupStarter",
    "ScorerSource",
    "Setup",
    "ShapedScorerSource",
]

#: Starts a ``ScoreGroup`` for ``(model spec, kind)`` on the caller's resources; the caller shuts it
#: down when it is done with the scorer.
ScoreGroupStarter = Callable[[ModelSpec, str], ScoreGroup]


class ScorerSource(Protocol):
    """Where a reward or cost comes from: builds a :class:`~saferl.learners.scorers.Scorer`,
    starting the score groups it needs through the starter it is given (so that they run on the
    learner's resources and are shut down with the learner's other groups)."""

    kind: str  # "reward" or "cost"

    def build(self, start_group: ScoreGroupStarter) -> Scorer: ...


@dataclass(frozen=True)
class ModelScorerSource:
    """A score model used as it is (a hub reward or cost model, or a trained one without
    calibration)."""

    spec: ModelSpec
    kind: str

    def build(self, start_group: ScoreGroupStarter) -> Scorer:
        return ModelScorer(start_group(self.spec, self.kind))


@dataclass(frozen=True)
class ShapedScorerSource:
    """``r − Σ_j λ_j c_j`` with a constant λ, as a reward (the fixed-λ reward-shaping baseline is
    plain PPO with this as its reward)."""

    reward: ScorerSource
    costs: tuple[ScorerSource, ...]
    multipliers: tuple[float, ...]
    kind: str = "reward"

    def build(self, start_group: ScoreGroupStarter) -> Scorer:
        return ShapedRewardScorer(self.reward.build(start_group), [cost.build(start_group) for cost in self.costs],
                                  list(self.multipliers))


@dataclass(frozen=True)
class CriticStart:
    """Where one critic's weights come from (docs/algorithms.md §2: the reward critic starts from the
    reward model, each cost critic from its cost model).

    Attributes:
        spec: the critic's dtype, ``trust_remote_code``, LoRA and revision; also its weights
            (a score model's backbone and head) when ``init_from`` is None.
        init_from: a saved score model (folder) whose backbone and head replace ``spec``'s
            weights; it must have a trained head (see :func:`saferl.models.build_critic`).
        value_scale: multiplies that head, so the critic starts in the units of the rewards it
            will predict (the world: the scale of the score model's affine fit to the ground truth).
    """

    spec: ModelSpec
    init_from: str | None = None
    value_scale: float = 1.0


@dataclass(frozen=True)
class Evaluation:
    """A trained policy scored against its reference and the problem's optimum.

    Attributes:
        reference, trained, optimum: the scores of the reference, the trained policy and the
            exact constrained optimum ``π_λ*``.
        optimal_multiplier: the exact λ*, one value per constraint.
        target: the learner's own target (the policy it would reach with perfect optimisation
            under its settings), scored the same way; None where the learner has none.
        target_label: what the target is; target_multiplier: its λ, one value per constraint.
        learned_optimum: with learned scorers, the exact optimum of the learned problem (every
            enumerated response scored by the calibrated score models), scored on the ground truth:
            it separates score-model error from optimiser error. learned_optimal_multiplier: its λ.
        cost_names: what each constraint's cost is (e.g. ``("harm", "refusal")``), in the order of
            every per-constraint entry.
        behaviour: Not-Unsafe, Not-Overrefuse, F1 and Hard-Refusal-Style (docs/algorithms.md §6) of
            ``"trained"``, ``"reference"``, ``"optimum"`` and ``"target"`` (where there is one), each
            a dict of the four rates; exact on the world, None where the setup cannot judge.
    """

    reference: PolicyScore
    trained: PolicyScore
    optimum: PolicyScore
    optimal_multiplier: list[float]
    target: PolicyScore | None = None
    target_label: str | None = None
    target_multiplier: list[float] | None = None
    learned_optimum: PolicyScore | None = None
    learned_optimal_multiplier: list[float] | None = None
    cost_names: tuple[str, ...] | None = None
    behaviour: dict[str, dict[str, float]] | None = None


class Evaluator(Protocol):
    """Scores an exported policy (the world: exactly, against the ground truth), and the learner's
    own target when it has one."""

    def evaluate(self, policy_dir: Path, target: TiltTarget | None = None) -> Evaluation: ...

    def prefetch(self) -> None:
        """Start computing, in the background, what :meth:`evaluate` needs that training does not
        change (a caller that will evaluate calls it before training; evaluating without it
        computes the same)."""


@dataclass(frozen=True)
class Needs:
    """What a learner reads from its setup; a setup builds only these.

    Attributes:
        scorers: the reward and cost scorers (``Setup.reward``, ``Setup.costs``).
        critics: where the critics start (``Setup.reward_critic``, ``Setup.cost_critics``).
        pairs: the training preference pairs (``Setup.pairs``).
        prompts: the training prompts (``Setup.prompts``).
        ptx: the PTX demonstrations (``Setup.ptx``), read by a PPO loop with ``learner.ptx_coeff > 0``.
        groups: the rank groups the learner runs at once (at least); a setup that trains models
            first starts their processes in the background (``runtime.reuse_workers``), so the
            learner's groups find them up.
    """

    scorers: bool = False
    critics: bool = False
    pairs: bool = False
    prompts: bool = True
    groups: int = 0
    ptx: bool = False


@dataclass(frozen=True)
class Setup:
    """A run's models, data, scorers and evaluation.

    Attributes:
        name: ``"world"`` or ``"hub"`` (names the source in results).
        policy: the policy's start, also the frozen reference.
        tokenizer: the policy's tokenizer, with a pad token distinct from EOS.
        template: prompt template name (``saferl.data.templates``).
        max_length: prompt + response tokens of a training pair.
        max_prompt_length: prompt tokens kept for sampling (cut from the left).
        generation: rollout sampling (``generation.*``; learners set the seed per use).
        prompts: the training prompts (distinct, untemplated).
        pairs: the training pairs (``Needs.pairs``; empty otherwise).
        num_dropped_pairs: pairs left out because their formatted prompt fills ``max_length``.
        pairs_source: names the pairs' data in errors.
        ptx: the PTX set (``Needs.ptx``; empty otherwise): supervised demonstrations whose
            token-mean NLL the PPO loop adds after each actor step (the world's SFT
            demonstrations; ``data.ptx_path`` on a hub or tiny setup).
        ptx_source: names the PTX set in errors and logs.
        reward, costs: where the reward and each cost come from (``Needs.scorers``).
        reward_critic, cost_critics: where the critics start (``Needs.critics``).
        evaluator: scores a trained policy (None: the setup has no ground truth).
        rows_per_call: rows per sampling or scoring call of the dualized learners (None: one call
            with every row; a hub setup's large prompt sets are cut into calls).
        label_temperature: the Bradley–Terry temperature τ of the pairs' labels where it is known
            (the world's), which fixes what DPO on them targets (the optimum at β·τ).
        score_units: the units of ``reward`` and ``costs`` (``"ground-truth units"`` for the
            world's oracle or calibrated scorers, ``"cost-model units"`` otherwise), in which the
            limit and a dual's prediction are read.
        details: what the setup's own stages measured (e.g. score-model accuracies), reported as
            they are.
        seconds: wall seconds of the setup's own stages.
    """

    name: str
    policy: ModelSpec
    tokenizer: PreTrainedTokenizerBase
    template: str
    max_length: int
    max_prompt_length: int
    generation: GenerationSpec
    prompts: Sequence[str]
    pairs: Sequence[SafetyPreferencePair] = ()
    num_dropped_pairs: int = 0
    pairs_source: str = "the training pairs"
    ptx: Sequence[SFTExample] = ()
    ptx_source: str = "the PTX set"
    reward: ScorerSource | None = None
    costs: Sequence[ScorerSource] = ()
    reward_critic: CriticStart | None = None
    cost_critics: Sequence[CriticStart] = ()
    evaluator: Evaluator | None = None
    rows_per_call: int | None = None
    score_units: str = "cost-model units"
    label_temperature: float | None = None
    details: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def require(self, needs: Needs, learner: str) -> None:
        """Fail early, naming the learner, when the setup lacks what ``needs`` asks for."""
        if needs.scorers and (self.reward is None or not self.costs):
            raise ValueError(f"{learner} needs a reward and a cost scorer; the {self.name} setup has none")
        if needs.critics and (self.reward_critic is None or not self.cost_critics):
            raise ValueError(f"{learner} needs critic starts; the {self.name} setup has none")
        if needs.pairs and not self.pairs:
            raise ValueError(f"{learner} trains on preference pairs; {self.pairs_source} holds none")
        if needs.ptx and not self.ptx:
            raise ValueError(
                f"{learner} with learner.ptx_coeff > 0 needs a PTX set of supervised demonstrations; the "
                f"{self.name} setup has none ({self.ptx_source}): set data.ptx_path (a hub name or a local "
                "file of prompt/response records), or learner.ptx_coeff=0"
            )
