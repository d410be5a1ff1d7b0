"""The composed Hydra config, validated into typed settings before any actor starts.

``validate(cfg)`` reads every group of ``conf/`` (root keys, learner, model, data, scorers,
multiplier, runtime, deepspeed, generation, logger, job) and returns a :class:`RunConfig`; every
mistake raises :class:`ConfigError` naming the dotted key, the bad value and what is allowed:
unknown keys, unknown learner, loss, multiplier or job names, sign mistakes (β ≤ 0, a non-positive
KL coefficient, a negative learning rate), batch sizes that do not divide over the ranks of a role,
and combinations that cannot run (oracle scorers off the built-in world, a hub model without hub
data, ...).

This is the one place that maps config keys onto the setups' and learners' dataclasses, which
validate their own values (each rule lives in its dataclass; this module adds the dotted section to
their messages and checks what only the composed config knows: unknown keys, and which
combinations can run). Nothing below this module imports it.
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

if TYPE_CHECKING:
    # The functions import the settings' modules where they build settings. The runtime's specs,
    # the learners' settings, every setup's settings (saferl.setups.settings) and the multipliers'
    # option rules are light, so validate() checks a whole config before torch, transformers or
    # Ray load (seconds).
    from saferl.data.world.settings import ReferenceConfig
    from saferl.learners.settings import (
        CDPOSettings,
        MocanSettings,
        PecanSettings,
        PPOLagSettings,
        PreferenceSettings,
        RBRSettings,
    )
    from saferl.runtime.resources import Resources
    from saferl.runtime.specs import GenerationSpec
    from saferl.setups.settings import HubSettings, StageSettings, TinySettings, WorldSettings

__all__ = [
    "ConfigError",
    "RunConfig",
    "validate",
    "LEARNERS",
    "JOBS",
]

LEARNERS = ("ppo_lag", "mocan", "pecan", "preference", "rbr", "cdpo")
JOBS = ("train", "evaluate", "exact_optimum", "world_data")
SCORER_KINDS = ("learned", "oracle", "pretrained")
SOURCES = ("world", "hub")
# The learner keys that are not PPOSettings fields.
_LEARNER_EXTRA = ("name", "policy_learning_rate", "critic_learning_rate", "policy_lr_schedule",
                  "policy_lr_warmup_ratio", "mocan", "pecan", "preference", "rbr", "cdpo")


class ConfigError(ValueError):
    """A config value that cannot run; the message names the dotted key."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a ``saferl`` run needs, typed and checked.

    Attributes:
        job: what to do (``JOBS``); learner: the algorithm (``LEARNERS``, ``learner.name``).
        setup: where the models, data and scorers come from: the built-in world's settings, the
            hub's models and data, or the world's tiny models on a PKU-format data set.
        settings: the learner's settings (the ``run`` argument of its module).
        resources: where every group runs (``runtime.*``, ``deepspeed.*``, the root ``seed``).
        seed, beta, cost_limit: the root keys (the problem ``max E[r] − β KL s.t. E[c_j] ≤ d_j``);
            ``cost_limit`` is a float for one cost and a tuple, one limit per cost, for several.
        costs: the world's costs the run constrains (``world.costs``; ``("harm",)`` off the world).
        generation: rollout sampling (``generation.*``).
        reference: ``world.reference``, the world's built-in reference (``job=exact_optimum``).
        logger: the validated ``logger`` section.
        resume: continue the run folder's finished stages and last checkpoint.
        checkpoint_every: RL iterations between checkpoints.
        output_dir: an explicit output folder, or None for Hydra's run folder.
    """

    job: str
    learner: str
    setup: WorldSettings | HubSettings | TinySettings
    settings: PPOLagSettings | MocanSettings | PecanSettings | PreferenceSettings | RBRSettings | CDPOSettings
    resources: Resources
    seed: int
    beta: float
    cost_limit: float | tuple[float, ...]
    generation: GenerationSpec
    reference: ReferenceConfig
    logger: dict
    resume: bool
    checkpoint_every: int
    output_dir: Path | None
    costs: tuple[str, ...] = ("harm",)

    @property
    def cost_limits(self) -> tuple[float, ...]:
        """``cost_limit`` as one float per cost (m = ``len(costs)``)."""
        return self.cost_limit if isinstance(self.cost_limit, tuple) else (self.cost_limit,)


def _container(node: Any, key: str) -> dict:
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{key}: expected a section (mapping); found {node!r}")
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{key}: {error}") from error


def _build(values: dict, key: str, cls, drop: tuple[str, ...] = (), **extra):
    """Dataclass ``cls`` from ``values`` (less ``drop``); unknown keys and bad values raise a
    ConfigError naming ``key``."""
    values = {k: v for k, v in values.items() if k not in drop}
    _unknown(values, {field.name for field in fields(cls)} - set(extra), key)
    try:
        return cls(**values, **extra)
    except (TypeError, ValueError) as error:
        message = str(error)
        # The dataclasses already name their keys (e.g. "deepspeed.zero_stage ..."); add the section
        # only where the message does not start with it.
        named = re.match(r"^[a-z_]+(\.[a-z_0-9]+)+", message) is not None
        raise ConfigError(message if named else f"{key}: {message}") from error


def _number(cfg: DictConfig, key: str, *, minimum: float | None = None, strict: bool = False) -> float:
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number; found {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        relation = ">" if strict else ">="
        raise ConfigError(f"{key}: must be {relation} {minimum}; found {value!r}")
    return float(value)


def _integer(cfg: DictConfig, key: str, minimum: int) -> int:
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: expected an integer >= {minimum}; found {value!r}")
    return int(value)


def _choice(value: Any, key: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{key}: unknown value {value!r}; allowed: {', '.join(allowed)}")
    return value


def _divides(rows: int, key: str, num_ranks: int) -> None:
    if rows % num_ranks:
        raise ConfigError(
            f"{key}={rows} does not divide over runtime.num_ranks={num_ranks} (every rank of a role "
            f"takes an equal share); use a multiple of {num_ranks}"
        )


def _multiplier(cfg: DictConfig, cost_limit: float | tuple[float, ...]) -> dict:
    # The multiplier's own rules, in plain Python: no torch before the config is known to be good.
    from saferl.core.multiplier_options import MULTIPLIER_KINDS, check_options

    options = _container(cfg.multiplier, "multiplier")
    kind = _choice(options.pop("kind", None), "multiplier.kind", MULTIPLIER_KINDS)
    try:
        check_options(kind, cost_limit, options)
    except (TypeError, ValueError) as error:
        message = str(error)
        option = message.split(":", 1)[0]
        # An option's own message ("lr: expected ...") becomes "multiplier.lr: expected ...".
        raise ConfigError(f"multiplier.{message}" if option in options else f"multiplier: {message}") from error
    return {"kind": kind, **options}


ROOT_KEYS = (
    "seed", "beta", "cost_limit", "resume", "checkpoint_every", "output_dir", "world", "learner",
    "model", "data", "scorers", "multiplier", "runtime", "deepspeed", "generation", "logger", "job",
)
JOB_KEYS = {
    "train": {"name"},
    "evaluate": {"name", "run_dir", "policy", "reference", "reward_model", "cost_model",
                 "responses_per_prompt", "rows_per_call", "judges"},
    "exact_optimum": {"name", "frontier_limits", "top_responses", "run_dir"},
    "world_data": {"name", "output_dir", "num_sft", "num_pairs_train", "num_pairs_test", "temperature", "overwrite"},
}


def _unknown(values, allowed, key: str, context: str = "") -> None:
    """Raise a ConfigError naming section ``key`` (``""``: the root) when ``values`` has keys
    outside ``allowed``; ``context`` says for which choice (e.g. ``" for source=world"``)."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        where = f"{key}: unknown key(s)" if key else "unknown root key(s)"
        raise ConfigError(f"{where} {unknown}{context}; allowed: {sorted(allowed)}")


def _job(cfg: DictConfig, job: str, num_ranks: int) -> None:
    """The ``job`` section's own keys."""
    values = _container(cfg.job, "job")
    _unknown(values, JOB_KEYS[job], "job")
    if job == "evaluate":
        _integer(cfg, "job.responses_per_prompt", 1)
        _divides(_integer(cfg, "job.rows_per_call", 1), "job.rows_per_call", num_ranks)
        from saferl.eval.judge_settings import parse_judges  # light: no torch

        try:
            parse_judges(values.get("judges"))
        except ValueError as error:
            raise ConfigError(str(error)) from error
    elif job == "exact_optimum":
        _integer(cfg, "job.top_responses", 1)
        limits = values["frontier_limits"]
        if not isinstance(limits, list) or not limits or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in limits
        ):
            raise ConfigError(f"job.frontier_limits: expected a non-empty list of numbers; found {limits!r}")
    elif job == "world_data":
        for key in ("num_sft", "num_pairs_train", "num_pairs_test"):
            _integer(cfg, f"job.{key}", 1)
        _number(cfg, "job.temperature", minimum=0.0, strict=True)


def _positive_rates(settings: Any, key: str) -> None:
    """Every ``*learning_rate`` field of a settings dataclass must be > 0."""
    for field in fields(settings):
        value = getattr(settings, field.name)
        if field.name.endswith("learning_rate") and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
        ):
            raise ConfigError(f"{key}.{field.name}: must be > 0; found {value!r}")


def _hub_settings(cfg: DictConfig, generation: GenerationSpec, rows_per_call: int | None) -> HubSettings:
    from saferl.setups.settings import HubSettings, max_prompt_length

    model, data = _container(cfg.model, "model"), _container(cfg.data, "data")
    model_keys = {"source", "policy", "reward_model", "cost_model", "revision", "dtype", "trust_remote_code"}
    data_keys = {"source", "path", "revision", "train_split", "test_split", "template", "max_length", *PTX_KEYS}
    for section, values, allowed in (("model", model, model_keys), ("data", data, data_keys)):
        _unknown(values, allowed, section, " for source=hub")
        if values.get("source") != "hub":
            raise ConfigError(
                f"{section}.source: a hub setup needs model.source=hub and data.source=hub; found "
                f"model.source={model.get('source')!r}, data.source={data.get('source')!r}"
            )
    if not isinstance(model.get("policy"), str) or not model["policy"].strip():
        raise ConfigError(f"model.policy: expected a hub name or local folder; found {model.get('policy')!r}")
    if not isinstance(data.get("path"), str) or not data["path"].strip():
        raise ConfigError(f"data.path: expected a hub dataset name or local file; found {data.get('path')!r}")
    from saferl.data.templates import TEMPLATE_NAMES
    from saferl.runtime.specs import DTYPE_NAMES

    _choice(data.get("template"), "data.template", TEMPLATE_NAMES)
    _choice(model.get("dtype"), "model.dtype", DTYPE_NAMES)
    if not isinstance(data.get("max_length"), int) or data["max_length"] < 2:
        raise ConfigError(f"data.max_length: expected an integer >= 2; found {data.get('max_length')!r}")
    try:
        max_prompt_length(data["max_length"], generation.max_new_tokens)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return HubSettings(
        policy=model["policy"],
        reward_model=model.get("reward_model"),
        cost_model=model.get("cost_model"),
        revision=model.get("revision"),
        dtype=model["dtype"],
        trust_remote_code=bool(model.get("trust_remote_code", False)),
        path=data["path"],
        data_revision=data.get("revision"),
        train_split=data.get("train_split", "train"),
        test_split=data.get("test_split", "test"),
        template=data["template"],
        max_length=data["max_length"],
        generation=generation,
        rows_per_call=rows_per_call,
        **_ptx_data(data),
    )


#: The ``scorers`` group's keys on the setups that train their own score models (world and tiny).
SCORER_KEYS = {"kind", "calibrate", "calibration", "regularization", "sign_weight", "cost_margin", "reward_model",
               "cost_model"}


#: The hub data group's PTX set (``data.ptx_*``), read by a PPO stage with ``learner.ptx_coeff > 0``.
PTX_KEYS = ("ptx_path", "ptx_split", "ptx_revision")


def _ptx_data(data: dict) -> dict:
    """``data.ptx_path``, ``data.ptx_split`` and ``data.ptx_revision`` as the setups' settings
    fields (null or absent: no PTX set)."""
    path, split, revision = data.get("ptx_path"), data.get("ptx_split", "train"), data.get("ptx_revision")
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise ConfigError(f"data.ptx_path: expected null (no PTX set) or a hub dataset name or local "
                          f".json/.jsonl/.parquet file of SFT demonstrations; found {path!r}")
    if not isinstance(split, str) or not split.strip():
        raise ConfigError(f"data.ptx_split: expected the split of data.ptx_path to read (e.g. train); found {split!r}")
    if revision is not None and not isinstance(revision, str):
        raise ConfigError(f"data.ptx_revision: expected null or a hub revision (commit, tag or branch); "
                          f"found {revision!r}")
    return {"ptx_path": path, "ptx_split": split, "ptx_revision": revision}


#: DeepSpeedSpec fields each engine sets for itself, and the keys that set them: the ``deepspeed``
#: group holds what every engine shares, and one key sets one thing.
_PER_ENGINE_KEYS = {
    "learning_rate": "learner.policy_learning_rate, learner.critic_learning_rate and the stages' learning_rate",
    "scheduler": "learner.policy_lr_schedule (the actor's; every other engine runs at a constant rate)",
    "warmup_steps": "learner.policy_lr_warmup_ratio (a share of the run's actor steps)",
    "total_steps": "learner.iterations × learner.ppo_epochs (the actor's schedule runs over the whole run)",
    "micro_batch_size_per_rank": "the stage's rows per step (e.g. learner.prompts_per_iteration) over runtime.num_ranks",
    "gradient_accumulation_steps": "the stage's rows per step (one optimizer step each, no accumulation)",
}


def _deepspeed_section(cfg: DictConfig) -> dict:
    """The ``deepspeed`` section; a per-engine key in it is refused, naming the key that sets it."""
    values = _container(cfg.deepspeed, "deepspeed")
    for key, where in _PER_ENGINE_KEYS.items():
        if key in values:
            raise ConfigError(f"deepspeed.{key}: set per engine, not in the deepspeed group (which every engine "
                              f"shares); found {values[key]!r}; use {where}")
    return values


def _ppo_stage(settings) -> PPOLagSettings | None:
    """The PPO loop a learner runs (ppo_lag itself, MoCAN's PPO stage, RBR's), or None."""
    from saferl.learners.settings import MocanSettings, PPOLagSettings, RBRSettings

    if isinstance(settings, PPOLagSettings):
        return settings
    if isinstance(settings, MocanSettings) and settings.stage == "ppo" or isinstance(settings, RBRSettings):
        return settings.ppo
    return None


def _ptx_set(settings, setup) -> None:
    """A PPO stage with ``learner.ptx_coeff > 0`` needs a PTX set: the built-in world's SFT
    demonstrations, or ``data.ptx_path`` on a hub or tiny setup."""
    from saferl.setups.settings import WorldSettings

    stage = _ppo_stage(settings)
    if stage is None or stage.ppo.ptx_coeff == 0 or isinstance(setup, WorldSettings) or setup.ptx_path:
        return
    raise ConfigError(
        f"learner.ptx_coeff={stage.ppo.ptx_coeff!r}: the PTX loss needs a supervised data set, and data.ptx_path is "
        f"{setup.ptx_path!r}; set data.ptx_path (a hub name such as tatsu-lab/alpaca, or a local .json/.jsonl/"
        ".parquet file of prompt/response or Alpaca instruction/input/output records), or learner.ptx_coeff=0"
    )


REFERENCE_SHAPE = ("hidden_size", "num_layers", "num_heads", "intermediate_size")


def _reference(cfg: DictConfig, seed: int) -> ReferenceConfig:
    """The world's reference: ``world.reference``'s shape, SFT-ed as ``model.sft`` on ``data.num_sft``
    demonstrations (the keys a training run's SFT stage reads; their defaults where a hub model or
    data group has no such key)."""
    from saferl.data.world.settings import ReferenceConfig

    shape = _container(cfg.world.reference, "world.reference")
    _unknown(shape, REFERENCE_SHAPE, "world.reference")
    for key in REFERENCE_SHAPE:
        if key in shape:
            _integer(cfg, f"world.reference.{key}", 1)
    training = {}
    sft = OmegaConf.select(cfg, "model.sft")
    if isinstance(sft, DictConfig):
        sft = _container(sft, "model.sft")
        training = {"steps": sft.get("steps"), "batch_size": sft.get("rows_per_step"),
                    "learning_rate": sft.get("learning_rate")}
    num_sft = OmegaConf.select(cfg, "data.num_sft")
    if num_sft is not None:
        training["num_examples"] = num_sft
    return _build({**shape, **{k: v for k, v in training.items() if v is not None}, "seed": seed},
                  "world.reference", ReferenceConfig)


def _sign_weight(cfg: DictConfig) -> float:
    """``scorers.sign_weight`` (≥ 0; 1, Safe RLHF's cost loss, when a config predates the key)."""
    if OmegaConf.select(cfg, "scorers.sign_weight") is None:
        return 1.0
    return _number(cfg, "scorers.sign_weight", minimum=0.0)


def _learner_limit(cfg: DictConfig, costs: tuple[str, ...], cost_limit: float | tuple[float, ...],
                   on_world: bool = True) -> float | tuple[float, ...]:
    """The limits the learner is given: ``d − δ`` with δ = ``scorers.cost_margin`` (≥ 0, in each
    cost's units): a mapping from the world's cost names to margins (a cost it does not name gets
    0; e.g. ``{harm: 0.1, refusal: 0.0}``), a number (one cost; 0 for several), or a list with one per cost; 0 when a
    config predates the key. The run is still judged at ``d``: the margin only makes the learner
    aim lower, to absorb the score models' error.

    Only on the built-in world (``on_world``), where the learned scores are calibrated into the
    ground truth's units and the run is judged there. Elsewhere the scores stay in the models' own
    units and the run is judged in them, so a margin is nothing but a lower ``cost_limit``: the
    scorers file's default (sized in the world's units) is not applied, and any other nonzero
    margin is refused, naming the ``cost_limit`` that says the same."""
    value = OmegaConf.select(cfg, "scorers.cost_margin")
    if value is None:
        return cost_limit
    value = OmegaConf.to_container(value) if isinstance(value, (ListConfig, DictConfig)) else value
    if not on_world:
        margins = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else [value]
        kind = OmegaConf.select(cfg, "scorers.kind")
        if all(v == 0 for v in margins) or value == _scorers_file_default(kind, "cost_margin"):
            return cost_limit
        raise ConfigError(
            f"scorers.cost_margin={value!r}: a margin is in ground-truth units and applies on the built-in world only; "
            f"here the scores and cost_limit are in the cost model's units, where a margin is the same as a lower "
            f"cost_limit: set cost_limit to d − δ (e.g. cost_limit={_shifted(cost_limit, margins, costs, value)}) "
            "and scorers.cost_margin=0"
        )
    limits = cost_limit if isinstance(cost_limit, tuple) else (cost_limit,)
    if isinstance(value, dict):
        from saferl.data.world.settings import COST_NAMES

        unknown = sorted(set(value) - set(COST_NAMES) - set(costs))
        if unknown:
            raise ConfigError(f"scorers.cost_margin: {unknown} name no cost (the world's are {list(COST_NAMES)}); "
                              f"expected a margin per cost name, e.g. {{{costs[0]}: 0.1}}")
        margins = [value.get(name, 0.0) for name in costs]  # a named cost the run does not constrain is unused
    elif isinstance(value, list):
        margins = value
    else:
        if len(limits) > 1 and value != 0:
            # Costs differ in units (harm against a refusal rate): one δ for all would be a guess.
            raise ConfigError(f"scorers.cost_margin: with {len(limits)} costs give a margin per cost name, e.g. "
                              f"scorers.cost_margin={{{costs[0]}:{value}}}; found the single number {value!r}")
        margins = [value] * len(limits)
    if len(margins) != len(limits) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in margins
    ):
        raise ConfigError(f"scorers.cost_margin: expected margins ≥ 0, one per cost of world.costs = {list(costs)}; "
                          f"found {value!r}")
    aimed = tuple(limit - float(margin) for limit, margin in zip(limits, margins, strict=True))
    return aimed if isinstance(cost_limit, tuple) else aimed[0]


def _scorers_file_default(kind: object, key: str) -> object:
    """``key`` as the packaged ``conf/scorers/<kind>.yaml`` sets it (None for an unknown kind)."""
    from saferl.conf_tree import CONFIG_DIR

    path = Path(CONFIG_DIR) / "scorers" / f"{kind}.yaml"
    if kind not in SCORER_KINDS or not path.is_file():
        return None
    found = OmegaConf.select(OmegaConf.load(path), key)
    return OmegaConf.to_container(found) if isinstance(found, (ListConfig, DictConfig)) else found


def _shifted(cost_limit: float | tuple[float, ...], margins: list, costs: tuple[str, ...], value: object) -> str:
    """``d − δ`` as a ``cost_limit`` override's value, for an error message (``?`` when unreadable)."""
    limits = cost_limit if isinstance(cost_limit, tuple) else (cost_limit,)
    if isinstance(value, dict):
        margins = [value.get(name, 0.0) for name in costs]
    if len(margins) != len(limits) or not all(isinstance(v, (int, float)) for v in margins):
        return "?"
    shifted = [f"{limit - float(margin):g}" for limit, margin in zip(limits, margins, strict=True)]
    return shifted[0] if len(shifted) == 1 else "[" + ",".join(shifted) + "]"


def _training_stages(model: dict, scorers: dict, num_ranks: int) -> dict[str, StageSettings]:
    """``model.sft``, ``scorers.reward_model`` and ``scorers.cost_model``, each checked (steps,
    rows, learning rate) before its rows are divided over the ranks; keyed by dotted key."""
    from saferl.setups.settings import StageSettings

    stages = {}
    for key, values in (("model.sft", model["sft"]), ("scorers.reward_model", scorers["reward_model"]),
                        ("scorers.cost_model", scorers["cost_model"])):
        stage = _build(values, key, StageSettings)
        try:
            stage.check(key)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        _divides(stage.rows_per_step, f"{key}.rows_per_step", num_ranks)
        stages[key] = stage
    return stages


def _world_settings(cfg: DictConfig, beta: float, cost_limit: float | tuple[float, ...], costs: tuple[str, ...],
                    generation: GenerationSpec, reference: ReferenceConfig, scorer_kind: str, seed: int,
                    num_ranks: int) -> WorldSettings:
    from saferl.setups.settings import WorldSettings

    model, data, scorers = _container(cfg.model, "model"), _container(cfg.data, "data"), _container(cfg.scorers, "scorers")
    _unknown(model, {"source", "sft", "from_run"}, "model", " for source=world")
    from_run = None
    if model.get("from_run") is not None:
        from_run = Path(str(model["from_run"])).expanduser()
        if not (from_run / "stages.json").is_file():
            raise ConfigError(
                f"model.from_run: {str(from_run)!r} is not a saferl run folder (no stages.json); "
                "give the folder of a run whose data, SFT and score-model stages finished"
            )
    _unknown(data, {"source", "num_sft", "num_pairs_train", "num_pairs_test", "label_temperature", "pair_source"},
             "data", " for source=world")
    for key in ("num_sft", "num_pairs_train", "num_pairs_test"):
        _integer(cfg, f"data.{key}", 1)
    _number(cfg, "data.label_temperature", minimum=0.0, strict=True)
    _unknown(scorers, SCORER_KEYS, "scorers")
    stages = _training_stages(model, scorers, num_ranks)
    return _build(
        {
            "beta": beta,
            "cost_limit": cost_limit,
            "reference": reference,
            "num_sft": data["num_sft"],
            "num_pairs_train": data["num_pairs_train"],
            "num_pairs_test": data["num_pairs_test"],
            "label_temperature": float(data["label_temperature"]),
            "pair_source": str(data.get("pair_source", "policy")),
            "sft": stages["model.sft"],
            "reward_model": stages["scorers.reward_model"],
            "cost_model": stages["scorers.cost_model"],
            "scorers": scorer_kind,
            "calibrate": bool(scorers["calibrate"]),
            "calibration": scorers.get("calibration", "isotonic"),
            "regularization": float(scorers["regularization"]),
            "sign_weight": _sign_weight(cfg),
            "generation": generation,
            "from_run": from_run,
            "seed": seed,
            "costs": costs,
        },
        "config",
        WorldSettings,
    )


def _rbr_sources(settings, on_world: bool) -> None:
    """Where RBR's response types and grader come from: the world has both; any other setup needs
    ``learner.rbr.response_types`` and the LM grader."""
    if on_world:
        if settings.response_types is not None:
            raise ConfigError(
                f"learner.rbr.response_types={settings.response_types!r}: the built-in world's prompts carry "
                "their response types (hard_refuse for harmful, comply for benign); leave it null on the world"
            )
        return
    if settings.grader == "world":
        raise ConfigError(
            "learner.rbr.grader=world: the world's exact grader reads the built-in world's responses only; "
            "on this setup use learner.rbr.grader=lm with learner.rbr.grader_model=<a causal LM folder>"
        )
    if settings.response_types is None:
        raise ConfigError(
            "learner.rbr.response_types: missing; off the built-in world, RBR needs each prompt's response "
            "type: a JSONL file of {\"prompt\": ..., \"response_type\": ...} records (prompts not listed get "
            "R_rm alone)"
        )
    from saferl.data.local_paths import looks_like_local_path

    local = {"response_types": settings.response_types}
    if settings.spec != "world":
        local["spec"] = settings.spec
    if looks_like_local_path(settings.grader_model):  # a hub name is checked when it loads
        local["grader_model"] = settings.grader_model
    for key, value in local.items():
        if not Path(value).exists():
            raise ConfigError(f"learner.rbr.{key}: expected an existing file or folder; {value!r} does not exist")


def _same_kl_coefficient(settings, beta: float) -> None:
    """On the world, a PPO stage's KL coefficient is the problem's β: the exact optimum the run is
    scored against is solved at β, so another coefficient would optimise a different problem."""
    stage = _ppo_stage(settings)
    if stage is None:
        return
    kl_coeff = stage.ppo.kl_coeff
    if kl_coeff != beta:
        raise ConfigError(
            f"learner.kl_coeff={kl_coeff!r} differs from beta={beta!r}: the built-in world scores the run against "
            "the exact optimum at beta, so the PPO stage must use the same KL coefficient (leave learner.kl_coeff "
            "at its default ${beta}, or set beta)"
        )


def _tiny_settings(cfg: DictConfig, generation: GenerationSpec, reference: ReferenceConfig, scorer_kind: str,
                   seed: int, num_ranks: int) -> TinySettings:
    """The world's tiny models on a PKU-format data set (``model=world`` with a hub data group)."""
    from saferl.setups.settings import TinySettings

    model, data, scorers = _container(cfg.model, "model"), _container(cfg.data, "data"), _container(cfg.scorers, "scorers")
    _unknown(model, {"source", "sft", "from_run"}, "model", " for source=world")
    _unknown(data, {"source", "path", "revision", "train_split", "test_split", "template", "max_length", *PTX_KEYS},
             "data", " for source=hub")
    _unknown(scorers, SCORER_KEYS, "scorers")
    if model.get("from_run") is not None:
        raise ConfigError(f"model.from_run: reuses a built-in-world run's stages; with data.path the stages train on "
                          f"your data (use resume=auto to continue a run); found {model['from_run']!r}")
    if scorer_kind != "learned":
        raise ConfigError(f"scorers.kind={scorer_kind!r}: the world's tiny models on data.path have only the score "
                          "models trained on that data (scorers.kind=learned); oracle is the built-in world's ground "
                          "truth and pretrained needs hub score models")
    if scorers.get("calibrate"):
        raise ConfigError("scorers.calibrate=true: there is no ground truth to calibrate against on data.path; set "
                          "scorers.calibrate=false (the scores and cost_limit are then in the cost model's units)")
    if not isinstance(data.get("path"), str) or not data["path"].strip():
        raise ConfigError(f"data.path: expected a local file or folder of PKU-format records; found {data.get('path')!r}")
    if not isinstance(data.get("max_length"), int) or data["max_length"] < 2:
        raise ConfigError(f"data.max_length: expected an integer >= 2; found {data.get('max_length')!r}")
    stages = _training_stages(model, scorers, num_ranks)
    return _build(
        {"reference": reference, "path": data["path"], "data_revision": data.get("revision"),
         "train_split": data.get("train_split", "train"), "test_split": data.get("test_split", "test"),
         "template": data.get("template"), "max_length": data["max_length"], "sft": stages["model.sft"],
         "reward_model": stages["scorers.reward_model"], "cost_model": stages["scorers.cost_model"],
         "regularization": float(scorers["regularization"]), "sign_weight": _sign_weight(cfg),
         "generation": generation, "seed": seed, **_ptx_data(data)},
        "config", TinySettings,
    )


def _learner_settings(cfg: DictConfig, learner: str, learner_values: dict, *, beta: float,
                      cost_limit: float | tuple[float, ...], seed: int, num_ranks: int):
    """The chosen learner's settings; every other learner's section must be absent. The
    ``multiplier`` section is checked whichever the learner (a mistake in it is a mistake even
    where the learner does not read it)."""
    from saferl.learners.settings import (
        CDPOSettings,
        MocanSettings,
        PecanSettings,
        PPOLagSettings,
        PPOSettings,
        PreferenceSettings,
        RBRSettings,
    )

    # The multiplier's options as given; validate() checks them with _multiplier.
    options = _container(cfg.multiplier, "multiplier")
    multiplier = {"kind": options.pop("kind", None), **options}
    if learner in ("pecan", "preference") and isinstance(cost_limit, tuple):
        raise ConfigError(
            f"learner={learner} with {len(cost_limit)} costs (world.costs): the {learner} learner learns from the "
            "pairs' one safety label (the harm cost); several constraints need learner=ppo_lag or learner=mocan, or "
            "set world.costs=[harm] and one cost_limit"
        )
    for name in ("mocan", "pecan", "preference", "rbr", "cdpo"):
        if name in learner_values and learner != name:
            raise ConfigError(
                f"learner.{name}: the {name} learner's section is set but learner.name={learner!r} "
                f"(pick it with learner={name})"
            )
    if learner in ("pecan", "preference", "cdpo"):
        # The learner-level guard against NaN/inf (PPO's keys hold the flag for the PPO learners).
        allowed = {"name", learner, "skip_nonfinite_batches"}
        _unknown(learner_values, allowed, "learner", f" for learner={learner}")
        if learner not in learner_values:
            raise ConfigError(f"learner.{learner}: missing (the {learner} learner's section)")
    ppo = None
    if learner in ("ppo_lag", "mocan", "rbr"):
        ppo = _build(learner_values, "learner", PPOSettings, _LEARNER_EXTRA, seed=seed)
        _divides(ppo.prompts_per_iteration, "learner.prompts_per_iteration", num_ranks)
        ppo = _build({"ppo": ppo, "multiplier": multiplier, "cost_limit": cost_limit,
                      "policy_learning_rate": learner_values.get("policy_learning_rate", 1e-3),
                      "critic_learning_rate": learner_values.get("critic_learning_rate", 1e-3),
                      "policy_lr_schedule": learner_values.get("policy_lr_schedule", "constant"),
                      "policy_lr_warmup_ratio": learner_values.get("policy_lr_warmup_ratio", 0.0)},
                     "learner", PPOLagSettings)
    if learner == "ppo_lag":
        return ppo
    if learner == "mocan":
        if "mocan" not in learner_values:
            raise ConfigError("learner.mocan: missing (the mocan learner's section)")
        settings = _build(learner_values["mocan"], "learner.mocan", MocanSettings, beta=beta, cost_limit=cost_limit,
                          ppo=ppo, seed=seed, skip_nonfinite_batches=ppo.ppo.skip_nonfinite_batches)
        _divides(settings.dpo_pairs_per_step, "learner.mocan.dpo_pairs_per_step", num_ranks)
    elif learner == "rbr":
        if "rbr" not in learner_values:
            raise ConfigError("learner.rbr: missing (the rbr learner's section)")
        settings = _build(learner_values["rbr"], "learner.rbr", RBRSettings, ppo=ppo, seed=seed)
    elif learner == "cdpo":
        settings = _build(learner_values["cdpo"], "learner.cdpo", CDPOSettings, beta=beta, cost_limit=cost_limit,
                          seed=seed, skip_nonfinite_batches=learner_values.get("skip_nonfinite_batches", False))
        _divides(settings.dpo_pairs_per_step, "learner.cdpo.dpo_pairs_per_step", num_ranks)
    elif learner == "pecan":
        settings = _build(learner_values["pecan"], "learner.pecan", PecanSettings, beta=beta, seed=seed,
                          skip_nonfinite_batches=learner_values.get("skip_nonfinite_batches", False))
        _divides(settings.dpo_pairs_per_step, "learner.pecan.dpo_pairs_per_step", num_ranks)
    else:
        settings = _build(learner_values["preference"], "learner.preference", PreferenceSettings, beta=beta,
                          seed=seed, skip_nonfinite_batches=learner_values.get("skip_nonfinite_batches", False))
        _divides(settings.pairs_per_step, "learner.preference.pairs_per_step", num_ranks)
    _positive_rates(settings, f"learner.{learner}")
    return settings


def _costs_and_limits(cfg: DictConfig) -> tuple[tuple[str, ...], float | tuple[float, ...]]:
    """``world.costs`` and the root ``cost_limit``: one limit per cost, a float for one cost (a
    one-element list is accepted too) and a list for several. Several costs exist only on the
    built-in world (a hub or tiny setup has one cost model). Plain Python, so the root keys are
    checked before the heavy modules load; the names themselves are checked against the world's
    (``saferl.data.world.COST_NAMES``) when its settings are built."""
    names = OmegaConf.select(cfg, "world.costs", default=["harm"])
    names = OmegaConf.to_container(names) if isinstance(names, ListConfig) else names
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"world.costs: expected a non-empty list of the world's cost names (e.g. [harm] or "
                          f"[harm, refusal]); found {names!r}")
    costs = tuple(names)
    sources = (OmegaConf.select(cfg, "model.source"), OmegaConf.select(cfg, "data.source"))
    if len(costs) > 1 and sources != ("world", "world"):
        raise ConfigError(
            f"world.costs={list(costs)}: several costs are the built-in world's (model=world data=world); "
            f"found model.source={sources[0]!r}, data.source={sources[1]!r}, whose setup has one cost model"
        )
    value = OmegaConf.select(cfg, "cost_limit", throw_on_missing=True)
    value = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
    values = value if isinstance(value, list) else [value]
    if len(values) != len(costs) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        expected = "a number" if len(costs) == 1 else f"a list of {len(costs)} numbers"
        raise ConfigError(f"cost_limit: expected {expected} (one limit per cost, m = {len(costs)}); found {value!r}; "
                          f"world.costs = {list(costs)} names the costs, one limit each")
    limits = tuple(float(v) for v in values)
    return costs, (limits[0] if len(limits) == 1 else limits)


def validate(cfg: DictConfig) -> RunConfig:
    """Check the whole composed config and build the typed settings (no actor, no model, no I/O).

    Raises:
        ConfigError: the first mistake, naming its dotted key.
    """
    # Root keys: the problem max E[r] − β KL s.t. E[c] ≤ d.
    seed = _integer(cfg, "seed", 0)
    beta = _number(cfg, "beta", minimum=0.0, strict=True)
    costs, cost_limit = _costs_and_limits(cfg)
    resume = cfg.get("resume")
    if resume not in (None, "auto"):
        raise ConfigError(f"resume: expected null (a fresh run) or auto (continue the run folder); found {resume!r}")
    checkpoint_every = _integer(cfg, "checkpoint_every", 1)
    _unknown({key: None for key in cfg if key != "hydra"}, ROOT_KEYS, "")
    _unknown(_container(cfg.world, "world"), ("cache_dir", "reference", "costs"), "world")
    output_dir = cfg.get("output_dir")
    if output_dir is not None and not isinstance(output_dir, str):
        raise ConfigError(f"output_dir: expected a folder path or null; found {output_dir!r}")
    job = _choice(OmegaConf.select(cfg, "job.name"), "job.name", JOBS)
    learner = _choice(OmegaConf.select(cfg, "learner.name"), "learner.name", LEARNERS)
    from saferl.tracking import validate_logger

    try:
        logger = validate_logger(_container(cfg.logger, "logger"))
    except ValueError as error:
        raise ConfigError(str(error)) from error

    # Where and how the groups run. The runtime's specs, the learners' settings and the logger's
    # checks are light modules (no torch, Ray or transformers): a mistake in these sections is said
    # in about a second; the setup's modules (and torch) load only after them.
    from saferl.runtime.resources import Resources
    from saferl.runtime.specs import DeepSpeedSpec, GenerationSpec, GroupSpec, RuntimeSpec, VLLMSpec

    runtime_values = _container(cfg.runtime, "runtime")
    num_ranks = _integer(cfg, "runtime.num_ranks", 1)
    group = GroupSpec(num_ranks=num_ranks, cpus_per_rank=_number(cfg, "runtime.cpus_per_rank", minimum=0.0),
                      gpus_per_rank=_number(cfg, "runtime.gpus_per_rank", minimum=0.0))
    runtime = _build(runtime_values, "runtime", RuntimeSpec, ("num_ranks", "cpus_per_rank", "gpus_per_rank", "vllm"))
    deepspeed = _build(_deepspeed_section(cfg), "deepspeed", DeepSpeedSpec)
    vllm = None
    if runtime_values.get("vllm") is not None:
        vllm = _build(_container(cfg.runtime.vllm, "runtime.vllm"), "runtime.vllm", VLLMSpec)
    resources = Resources(group=group, runtime=runtime, deepspeed=deepspeed, seed=seed, vllm=vllm)
    generation = _build(_container(cfg.generation, "generation"), "generation", GenerationSpec, seed=seed)
    _job(cfg, job, num_ranks)

    # The setup's sources (its settings come after the learner's).
    model_source = _choice(OmegaConf.select(cfg, "model.source"), "model.source", SOURCES)
    data_source = _choice(OmegaConf.select(cfg, "data.source"), "data.source", SOURCES)
    scorer_kind = _choice(OmegaConf.select(cfg, "scorers.kind"), "scorers.kind", SCORER_KINDS)

    # The learner.
    # The learner aims at d − scorers.cost_margin (on the world); the setup's evaluation and the summary keep d.
    learner_limit = _learner_limit(cfg, costs, cost_limit, on_world=(model_source, data_source) == ("world", "world"))
    settings = _learner_settings(cfg, learner, _container(cfg.learner, "learner"), beta=beta,
                                 cost_limit=learner_limit, seed=seed, num_ranks=num_ranks)
    reference = _reference(cfg, seed)
    if vllm is not None and _ppo_stage(settings) is None:
        raise ConfigError(
            f"runtime.vllm: vLLM engines generate the PPO loop's rollouts, and learner={learner} runs no PPO loop "
            "(ppo_lag, rbr and mocan with mocan.stage=ppo do); set runtime.vllm=null"
        )
    if vllm is not None and importlib.util.find_spec("vllm") is None:
        # Said now rather than when the PPO stage starts, after the stages before it. (The GPUs
        # are counted then, in the cluster the run joins.)
        raise ConfigError("runtime.vllm: the 'vllm' package is not installed (pip install 'saferl[vllm]'); "
                          "set runtime.vllm=null to generate in the policy group")

    # The setup: models, data, scorers.
    if learner == "rbr":
        _rbr_sources(settings, on_world=(model_source, data_source) == ("world", "world"))
    if model_source == "world" and data_source == "hub":
        setup = _tiny_settings(cfg, generation, reference, scorer_kind, seed, num_ranks)
    elif model_source == "world" or data_source == "world":
        if model_source != data_source:
            raise ConfigError(
                f"model.source={model_source!r} with data.source={data_source!r}: hub models need hub data "
                "(a PKU-format data.path); the built-in world's data goes with its own models (model=world "
                "data=world), and the world's tiny models can train on your data (model=world data=pku_saferlhf "
                "data.path=...)"
            )
        if scorer_kind == "pretrained":
            raise ConfigError("scorers.kind='pretrained' needs hub score models (model.reward_model); "
                              "on the built-in world use learned or oracle")
        setup = _world_settings(cfg, beta, cost_limit, costs, generation, reference, scorer_kind, seed, num_ranks)
        _same_kl_coefficient(settings, beta)
    else:
        if scorer_kind == "oracle":
            raise ConfigError("scorers.kind='oracle' is the built-in world's ground truth; a hub setup "
                              "uses pretrained (or learned) score models")
        # The dualized learners sample and score a hub setup's prompts in calls of a DPO step's rows.
        rows_per_call = 2 * settings.dpo_pairs_per_step if learner in ("mocan", "pecan", "cdpo") else None
        setup = _hub_settings(cfg, generation, rows_per_call)
        if learner in ("ppo_lag", "mocan", "cdpo") and scorer_kind == "pretrained" and not (
            setup.reward_model and setup.cost_model
        ):
            raise ConfigError(
                f"learner={learner} with scorers.kind=pretrained needs model.reward_model and "
                f"model.cost_model; found {setup.reward_model!r} and {setup.cost_model!r}"
            )
    _ptx_set(settings, setup)
    _multiplier(cfg, cost_limit)
    return RunConfig(
        job=job,
        learner=learner,
        setup=setup,
        settings=settings,
        resources=resources,
        seed=seed,
        beta=beta,
        cost_limit=cost_limit,
        generation=generation,
        reference=reference,
        logger=logger,
        resume=resume == "auto",
        checkpoint_every=checkpoint_every,
        output_dir=Path(output_dir) if output_dir is not None else None,
        costs=costs,
    )
