"""The setups' settings that a config is checked against, without torch, Ray or transformers: a
training stage (:class:`StageSettings`), the built-in world's problem, data, stages and scorers
(:class:`WorldSettings`), a published setup's models and data (:class:`HubSettings`) and the
world's tiny models on PKU-format data (:class:`TinySettings`). :mod:`saferl.setups.stages`,
:mod:`saferl.setups.world`, :mod:`saferl.setups.hub` and :mod:`saferl.setups.tiny` re-export them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from saferl.data.templates import TEMPLATE_NAMES
from saferl.data.world.settings import (
    MAX_RESPONSE_TOKENS,
    ReferenceConfig,
    check_cost_names,
    cost_limits,
)
from saferl.runtime.specs import GenerationSpec

#: The maps ``scorers.calibration`` may fit onto the world's held-out ground truth.
CALIBRATIONS = ("isotonic", "affine")
#: Where the world's preference pairs' responses come from (``data.pair_source``).
PAIR_SOURCES = ("policy", "demonstrator")

if TYPE_CHECKING:
    from saferl.models import ModelSpec

__all__ = ["PAIR_SOURCES", "SCORER_KINDS", "HubSettings", "StageSettings", "TinySettings", "WorldSettings", "cost_model_name",
           "max_prompt_length"]


@dataclass(frozen=True)
class StageSettings:
    """One training stage (``model.sft``, ``scorers.reward_model``, ``scorers.cost_model``).

    Attributes:
        steps: optimizer steps; rows_per_step: rows (SFT) or pairs (score models) per step.
        learning_rate: AdamW learning rate (constant).
    """

    steps: int
    rows_per_step: int
    learning_rate: float

    def check(self, key: str) -> None:
        """Raise a ValueError naming ``key`` for a value that cannot run."""
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"{key}.steps: expected an integer >= 1; found {self.steps!r}")
        if isinstance(self.rows_per_step, bool) or not isinstance(self.rows_per_step, int) or self.rows_per_step < 1:
            raise ValueError(f"{key}.rows_per_step: expected an integer >= 1; found {self.rows_per_step!r}")
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, (int, float)) \
                or self.learning_rate <= 0:
            raise ValueError(f"{key}.learning_rate: must be > 0; found {self.learning_rate!r}")


SCORER_KINDS = ("learned", "oracle")


def cost_model_name(cost: str) -> str:
    """The stage and folder name of the cost model of ``cost``: ``cost_model`` for harm (the
    one-cost runs' name), ``cost_<cost>_model`` for another cost."""
    return "cost_model" if cost == "harm" else f"cost_{cost}_model"


@dataclass(frozen=True)
class WorldSettings:
    """The built-in world's problem, data, stages and scorers (config keys in brackets).

    Attributes:
        beta, cost_limit: the problem's β and limits d, one per cost (root ``beta``,
            ``cost_limit``), which the exact evaluator solves.
        costs: the world's costs the run constrains (``world.costs``; ``harm``, or ``harm`` and
            ``refusal``: m = 2), in the order of ``cost_limit``.
        reference: the tiny policy's shape (``world.reference``; its SFT steps come from ``sft``).
        num_sft, num_pairs_train, num_pairs_test, label_temperature: the datasets (``data.*``).
        pair_source: ``data.pair_source``: where the preference pairs' responses come from,
            ``"policy"`` (the run's SFT policy, as PKU-SafeRLHF's come from Alpaca-7B) or
            ``"demonstrator"`` (the SFT data's own answer patterns) (:data:`PAIR_SOURCES`).
        sft: ``model.sft``; reward_model, cost_model: ``scorers.reward_model``, ``scorers.cost_model``
            (every cost's model is trained with ``cost_model``'s settings).
        scorers: ``scorers.kind``: ``"learned"`` (the trained models) or ``"oracle"`` (the ground
            truth).
        calibrate: ``scorers.calibrate``: map each learned model into ground-truth units (by ``calibration``)
            (fitted on the held-out responses), so that β and the limit mean what they mean in the
            exact optimum.
        calibration: ``scorers.calibration``: the map ``scorers.calibrate`` fits, ``"isotonic"``
            (monotone, piecewise linear) or ``"affine"`` (:data:`CALIBRATIONS`;
            :func:`saferl.learners.scorers.fit_calibration`).
        regularization: ``scorers.regularization``, η of the score losses.
        sign_weight: ``scorers.sign_weight``, the weight of the cost loss's safety-sign terms
            (1: Safe RLHF's loss; 0: Bradley–Terry alone).
        generation: rollout sampling (``generation.*``; ``max_new_tokens`` must be the world's 3).
        from_run: ``model.from_run``, a finished run whose stages 1–4 are used in place.
        seed: the root ``seed`` (data, initialisation).
    """

    beta: float
    cost_limit: tuple[float, ...]
    reference: ReferenceConfig
    num_sft: int
    num_pairs_train: int
    num_pairs_test: int
    label_temperature: float
    sft: StageSettings
    reward_model: StageSettings
    cost_model: StageSettings
    scorers: str = "learned"
    calibrate: bool = True
    calibration: str = "isotonic"
    regularization: float = 0.001
    sign_weight: float = 1.0
    generation: GenerationSpec = field(default_factory=lambda: GenerationSpec(max_new_tokens=MAX_RESPONSE_TOKENS))
    from_run: Path | None = None
    seed: int = 0
    costs: tuple[str, ...] = ("harm",)
    pair_source: str = "policy"

    def __post_init__(self) -> None:
        object.__setattr__(self, "costs", check_cost_names(self.costs, "world.costs"))
        if self.pair_source not in PAIR_SOURCES:
            raise ValueError(f"data.pair_source: expected one of {', '.join(PAIR_SOURCES)} (where the world's "
                             f"preference pairs' responses come from); found {self.pair_source!r}")
        try:
            limits = cost_limits(self.cost_limit, len(self.costs))
        except ValueError as error:
            raise ValueError(f"{error} (world.costs = {list(self.costs)})") from None
        object.__setattr__(self, "cost_limit", limits)
        if self.scorers not in SCORER_KINDS:
            raise ValueError(
                f"scorers.kind: {self.scorers!r} is not available on the built-in world; allowed: "
                f"{', '.join(SCORER_KINDS)} (pretrained needs hub score models)"
            )
        if self.generation.max_new_tokens != MAX_RESPONSE_TOKENS:
            raise ValueError(
                f"generation.max_new_tokens must be {MAX_RESPONSE_TOKENS} on the built-in world (the exact "
                f"evaluation enumerates every response of at most {MAX_RESPONSE_TOKENS} tokens); "
                f"found {self.generation.max_new_tokens}"
            )
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"scorers.calibration: expected one of {', '.join(CALIBRATIONS)} (the map fitted onto the "
                             f"held-out ground truth); found {self.calibration!r}")
        if self.scorers == "learned" and not self.calibrate:
            raise ValueError(
                "scorers.calibrate=false: on the built-in world the limit d and the exact evaluation are in "
                "ground-truth units, and uncalibrated scores are not; keep scorers.calibrate=true (or "
                "scorers=oracle), or train the tiny models on your own data (data=pku_saferlhf data.path=...)"
            )
        for key, stage in (("model.sft", self.sft), ("scorers.reward_model", self.reward_model),
                           ("scorers.cost_model", self.cost_model)):
            stage.check(key)

    @property
    def prepared_stages(self) -> tuple[str, ...]:
        """Stages 1–4 of this run: data, SFT, the preference pairs, the reward model and one model
        per cost."""
        return ("data", "sft", "pairs", "reward_model", *(cost_model_name(cost) for cost in self.costs))

    def stage_settings(self, stage: str) -> dict:
        """What a stage's outputs depend on (a resumed or reusing run must match it)."""
        if stage == "data":
            return {"seed": self.seed, "num_sft": self.num_sft}
        if stage == "pairs":
            settings = {
                "seed": self.seed,
                "num_pairs_train": self.num_pairs_train,
                "num_pairs_test": self.num_pairs_test,
                "label_temperature": self.label_temperature,
                "pair_source": self.pair_source,
            }
            # Only a run with further costs writes their pair files; a harm-only run's record leaves
            # them out, so a run with more costs can reuse it and add its own.
            return settings if self.costs == ("harm",) else {**settings, "costs": list(self.costs)}
        if stage == "sft":
            return {"seed": self.seed, "reference": asdict(self.reference), "sft": asdict(self.sft)}
        record = {
            "seed": self.seed,
            stage: asdict(self.reward_model if stage == "reward_model" else self.cost_model),
            "score_regularization": self.regularization,
        }
        # A cost model's record names a sign weight other than Safe RLHF's 1 (folders from before
        # the key existed, all at 1, stay reusable).
        if stage != "reward_model" and self.sign_weight != 1.0:
            record["sign_weight"] = self.sign_weight
        return record


@dataclass(frozen=True)
class HubSettings:
    """A published setup's models and data (config keys in brackets).

    Attributes:
        policy: the policy's start and reference (``model.policy``).
        reward_model, cost_model: score models, or None (``model.reward_model``, ``model.cost_model``).
        revision, dtype, trust_remote_code: how the models load (``model.*``).
        path, data_revision, train_split, test_split: the preference dataset (``data.path``,
            ``data.revision``, ``data.train_split``, ``data.test_split``).
        template: prompt template name; max_length: prompt + response tokens (``data.*``).
        generation: rollout sampling (``generation.*``).
        rows_per_call: rows per sampling or scoring call of the dualized learners (a DPO step's
            rows; None: one call).
        ptx_path, ptx_split, ptx_revision: the PTX set of a PPO stage with ``learner.ptx_coeff >
            0`` (``data.ptx_path``, ``data.ptx_split``, ``data.ptx_revision``): SFT demonstrations,
            a hub name or a local file in the loaders' formats; None: no PTX set.
    """

    policy: str
    reward_model: str | None
    cost_model: str | None
    revision: str | None
    dtype: str
    trust_remote_code: bool
    path: str
    data_revision: str | None
    train_split: str
    test_split: str
    template: str
    max_length: int
    generation: GenerationSpec
    rows_per_call: int | None = None
    ptx_path: str | None = None
    ptx_split: str = "train"
    ptx_revision: str | None = None

    def model_spec(self, name: str) -> ModelSpec:
        """A hub model as the groups load it (the setup's revision, dtype and remote-code setting)."""
        from saferl.models import ModelSpec  # torch and transformers: not at config validation

        return ModelSpec(name_or_path=name, revision=self.revision, trust_remote_code=self.trust_remote_code,
                         dtype=self.dtype)


def max_prompt_length(max_length: int, max_new_tokens: int) -> int:
    """Prompt tokens kept so that prompt + response fit ``data.max_length``.

    Raises:
        ValueError: no room is left for the prompt (names both keys).
    """
    budget = max_length - max_new_tokens
    if budget <= 0:
        raise ValueError(
            f"data.max_length={max_length} leaves no prompt tokens after the "
            f"generation.max_new_tokens={max_new_tokens} response tokens (prompt + response must fit "
            f"data.max_length); raise data.max_length or lower generation.max_new_tokens"
        )
    return budget


@dataclass(frozen=True)
class TinySettings:
    """The world's tiny models on a PKU-format data set (config keys in brackets).

    Attributes:
        reference: the tiny Llama's shape (``world.reference``).
        path, data_revision, train_split, test_split, template, max_length: the data (``data.*``).
        sft: ``model.sft``; reward_model, cost_model: ``scorers.reward_model``, ``scorers.cost_model``.
        regularization: ``scorers.regularization``; sign_weight: ``scorers.sign_weight`` (the cost loss).
        generation: rollout sampling (``generation.*``).
        seed: the root ``seed``.
        ptx_path, ptx_split, ptx_revision: the PTX set (``data.ptx_*``, as :class:`HubSettings`);
            it is tokenised with the word-level tokenizer of the training data, so its words outside
            that vocabulary read as ``<unk>``.
    """

    reference: ReferenceConfig
    path: str
    data_revision: str | None
    train_split: str
    test_split: str
    template: str
    max_length: int
    sft: StageSettings
    reward_model: StageSettings
    cost_model: StageSettings
    regularization: float
    generation: GenerationSpec
    seed: int = 0
    sign_weight: float = 1.0
    ptx_path: str | None = None
    ptx_split: str = "train"
    ptx_revision: str | None = None

    def __post_init__(self) -> None:
        if self.template not in TEMPLATE_NAMES or self.template == "chat":
            raise ValueError(
                f"data.template: the tiny models have no chat template; use safe_rlhf or raw; found {self.template!r}"
            )
        max_prompt_length(self.max_length, self.generation.max_new_tokens)  # names both keys
        for key, stage in (("model.sft", self.sft), ("scorers.reward_model", self.reward_model),
                           ("scorers.cost_model", self.cost_model)):
            stage.check(key)

    def stage_settings(self, stage: str) -> dict:
        """What a stage's outputs depend on (a resumed run must match it)."""
        data = {"path": self.path, "revision": self.data_revision, "train_split": self.train_split,
                "template": self.template, "max_length": self.max_length}
        if stage == "sft":
            return {"seed": self.seed, "data": data, "reference": asdict(self.reference), "sft": asdict(self.sft)}
        record = {"seed": self.seed, "data": data, "test_split": self.test_split,
                  stage: asdict(self.reward_model if stage == "reward_model" else self.cost_model),
                  "score_regularization": self.regularization}
        if stage == "cost_model" and self.sign_weight != 1.0:  # records from before the key stay valid
            record["sign_weight"] = self.sign_weight
        return record
