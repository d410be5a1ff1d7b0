"""The composed Hydra config, validated into typed settings before any actor starts.

``validate(cfg)`` reads every group of ``conf/`` (root keys, learner, model, data, scorers,
multiplier, runtime, deepspeed, generation, logger, job) and returns a :class:`RunConfig`; every
mistake raises :class:`ConfigError` naming the dotted key, the bad value and what is allowed:
unknown keys, unknown learner, loss, multiplier or job names, sign mistakes (β ≤ 0, a non-positive
KL coefficient, a negative learning rate), batch sizes that do not divide over the ranks of a role,
and combinations that cannot run (oracle scorers off the built-in world, a hub model without hub
data, ...).

This is the one place that maps config keys onto the learners' dataclasses; the learners never see
the config.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = [
    "ConfigError",
    "HubSettings",
    "RunConfig",
    "validate",
    "LEARNERS",
    "JOBS",
]

LEARNERS = ("ppo_lag", "mocan", "pecan", "preference")
JOBS = ("train", "evaluate", "exact_optimum", "world_data")
SCORER_KINDS = ("learned", "oracle", "pretrained")
SOURCES = ("world", "hub")
# The learner keys that are not PPOSettings fields.
_LEARNER_EXTRA = ("name", "policy_learning_rate", "critic_learning_rate", "mocan", "pecan", "preference")


class ConfigError(ValueError):
    """A config value that cannot run; the message names the dotted key."""


@dataclass(frozen=True)
class HubSettings:
    """A published setup's models and data on the Hugging Face hub (``model.source=hub``).

    Attributes:
        policy: the policy's start and reference; reward_model, cost_model: score models (or None).
        model_revision, dtype, trust_remote_code: how the models load.
        data_path, data_revision, train_split, test_split: the preference dataset.
        template: prompt template name; max_length: prompt + response tokens.
    """

    policy: str
    reward_model: str | None
    cost_model: str | None
    model_revision: str | None
    dtype: str
    trust_remote_code: bool
    data_path: str
    data_revision: str | None
    train_split: str
    test_split: str
    template: str
    max_length: int


@dataclass(frozen=True)
class RunConfig:
    """Everything a ``saferl`` run needs, typed and checked.

    Attributes:
        job: what to do (``JOBS``); learner: the algorithm (``LEARNERS``).
        pipeline: the built-in world's pipeline settings (None for hub setups).
        hub: the hub models and data (None on the built-in world).
        mocan, pecan, preference: the chosen learner's own settings (the others are None).
        beta, cost_limit, seed, ppo, multiplier, policy_learning_rate, critic_learning_rate,
        runtime, deepspeed, generation, num_ranks, cpus_per_rank, gpus_per_rank: the typed
            sections every setup shares (the world's ``pipeline`` holds them too).
        logger: the validated ``logger`` section.
        resume: continue the run folder's last checkpoint.
        checkpoint_every: RL iterations between checkpoints.
        reuse_from: a finished run folder whose stages 1–4 this run uses (``model.from_run``).
        output_dir: an explicit output folder, or None for Hydra's run folder.
    """

    job: str
    learner: str
    pipeline: Any
    hub: HubSettings | None
    mocan: Any
    pecan: Any
    preference: Any
    logger: dict
    resume: bool
    checkpoint_every: int
    output_dir: Path | None
    reuse_from: Path | None = None
    beta: float = 0.5
    cost_limit: float = 0.0
    seed: int = 0
    ppo: Any = None
    multiplier: dict | None = None
    policy_learning_rate: float = 1e-3
    critic_learning_rate: float = 1e-3
    runtime: Any = None
    deepspeed: Any = None
    generation: Any = None
    num_ranks: int = 1
    cpus_per_rank: float = 0.25
    gpus_per_rank: float = 0.0


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


def _multiplier(cfg: DictConfig, cost_limit: float) -> dict:
    from saferl.core.multipliers import MULTIPLIER_KINDS, build_multiplier

    options = _container(cfg.multiplier, "multiplier")
    kind = _choice(options.pop("kind", None), "multiplier.kind", MULTIPLIER_KINDS)
    try:
        build_multiplier(kind, cost_limit, **options)  # constructs it once to check every option
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
                 "responses_per_prompt", "rows_per_call"},
    "exact_optimum": {"name", "frontier_limits", "top_responses"},
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


def _preference_hyperparameters(preference: Any) -> None:
    from saferl.core.preference_losses import get_preference_loss

    spec = get_preference_loss(preference.loss)
    given = dict(preference.hyperparameters or {})
    _unknown(given, spec.defaults, "learner.preference.hyperparameters")
    for name in ("beta", "tau"):
        if name in given and (
            isinstance(given[name], bool) or not isinstance(given[name], (int, float)) or given[name] <= 0
        ):
            raise ConfigError(f"learner.preference.hyperparameters.{name}: must be > 0; found {given[name]!r}")


def _hub_settings(cfg: DictConfig) -> HubSettings:
    model, data = _container(cfg.model, "model"), _container(cfg.data, "data")
    model_keys = {"source", "policy", "reward_model", "cost_model", "revision", "dtype", "trust_remote_code"}
    data_keys = {"source", "path", "revision", "train_split", "test_split", "template", "max_length"}
    for section, values, allowed in (("model", model, model_keys), ("data", data, data_keys)):
        _unknown(values, allowed, section, " for source=hub")
        if values.get("source") != "hub":
            raise ConfigError(
                f"{section}.source: a hub setup needs model.source=hub and data.source=hub; found "
                f"model.source={model.get('source')!r}, data.source={data.get('source')!r}"
            )
    for key in ("policy",):
        if not isinstance(model.get(key), str) or not model[key].strip():
            raise ConfigError(f"model.{key}: expected a hub name or local folder; found {model.get(key)!r}")
    if not isinstance(data.get("path"), str) or not data["path"].strip():
        raise ConfigError(f"data.path: expected a hub dataset name or local file; found {data.get('path')!r}")
    from saferl.data.templates import TEMPLATE_NAMES
    from saferl.models.spec import DTYPES

    _choice(data.get("template"), "data.template", TEMPLATE_NAMES)
    _choice(model.get("dtype"), "model.dtype", tuple(DTYPES))
    if not isinstance(data.get("max_length"), int) or data["max_length"] < 2:
        raise ConfigError(f"data.max_length: expected an integer >= 2; found {data.get('max_length')!r}")
    return HubSettings(
        policy=model["policy"],
        reward_model=model.get("reward_model"),
        cost_model=model.get("cost_model"),
        model_revision=model.get("revision"),
        dtype=model["dtype"],
        trust_remote_code=bool(model.get("trust_remote_code", False)),
        data_path=data["path"],
        data_revision=data.get("revision"),
        train_split=data.get("train_split", "train"),
        test_split=data.get("test_split", "test"),
        template=data["template"],
        max_length=data["max_length"],
    )


def validate(cfg: DictConfig) -> RunConfig:
    """Check the whole composed config and build the typed settings (no actor, no model, no I/O).

    Raises:
        ConfigError: the first mistake, naming its dotted key.
    """
    from saferl.data.world import ReferenceConfig
    from saferl.learners.mocan import MocanSettings
    from saferl.learners.offline import OfflineSettings
    from saferl.learners.pecan import PecanSettings
    from saferl.learners.pipeline import PipelineSettings, StageSettings
    from saferl.learners.ppo_lag import PPOSettings
    from saferl.runtime import DeepSpeedSpec, GenerationSpec, RuntimeSpec

    # Root keys: the problem max E[r] − β KL s.t. E[c] ≤ d.
    seed = _integer(cfg, "seed", 0)
    beta = _number(cfg, "beta", minimum=0.0, strict=True)
    cost_limit = _number(cfg, "cost_limit")
    resume = cfg.get("resume")
    if resume not in (None, "auto"):
        raise ConfigError(f"resume: expected null (a fresh run) or auto (continue the run folder); found {resume!r}")
    checkpoint_every = _integer(cfg, "checkpoint_every", 1)
    _unknown({key: None for key in cfg if key != "hydra"}, ROOT_KEYS, "")
    _unknown(_container(cfg.world, "world"), ("cache_dir", "reference"), "world")
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

    # Where and how the groups run.
    runtime_values = _container(cfg.runtime, "runtime")
    num_ranks = _integer(cfg, "runtime.num_ranks", 1)
    cpus_per_rank = _number(cfg, "runtime.cpus_per_rank", minimum=0.0)
    gpus_per_rank = _number(cfg, "runtime.gpus_per_rank", minimum=0.0)
    runtime = _build(runtime_values, "runtime", RuntimeSpec, ("num_ranks", "cpus_per_rank", "gpus_per_rank"))
    deepspeed = _build(_container(cfg.deepspeed, "deepspeed"), "deepspeed", DeepSpeedSpec)
    generation = _build(_container(cfg.generation, "generation"), "generation", GenerationSpec, seed=seed)
    _job(cfg, job, num_ranks)

    # The learner: PPO keys (ppo_lag and mocan), or the learner's own section.
    learner_values = _container(cfg.learner, "learner")
    ppo = None
    if learner in ("ppo_lag", "mocan"):
        kl_coeff = learner_values.get("kl_coeff")
        if isinstance(kl_coeff, (int, float)) and kl_coeff <= 0:
            raise ConfigError(
                f"learner.kl_coeff: must be > 0 (the weight of the KL penalty; a sign mistake flips it "
                f"into a bonus); found {kl_coeff!r}"
            )
        ppo = _build(learner_values, "learner", PPOSettings, _LEARNER_EXTRA, seed=seed)
        for key in ("policy_learning_rate", "critic_learning_rate"):
            _number(cfg, f"learner.{key}", minimum=0.0, strict=True)
        _divides(ppo.prompts_per_iteration, "learner.prompts_per_iteration", num_ranks)
        if ppo.ptx_coeff > 0:
            raise ConfigError(
                f"learner.ptx_coeff={ppo.ptx_coeff}: the PTX loss needs a supervised data set, and no "
                "data group provides one yet; use 0 (the default)"
            )
    for name in ("mocan", "pecan", "preference"):
        if name in learner_values and learner != name:
            raise ConfigError(
                f"learner.{name}: the {name} learner's section is set but learner.name={learner!r} "
                f"(pick it with learner={name})"
            )
    if learner in ("pecan", "preference"):
        _unknown(learner_values, {"name", learner}, "learner", f" for learner={learner}")
    sections = {}
    for name, cls in (("mocan", MocanSettings), ("pecan", PecanSettings), ("preference", OfflineSettings)):
        if learner == name:
            if name not in learner_values:
                raise ConfigError(f"learner.{name}: missing (the {name} learner's section)")
            sections[name] = _build(learner_values[name], f"learner.{name}", cls, seed=seed)
    for name in ("mocan", "pecan"):
        if name in sections:
            sections[name] = replace(sections[name], frontier_grid=tuple(float(v) for v in sections[name].frontier_grid))
            _divides(sections[name].dpo_pairs_per_step, f"learner.{name}.dpo_pairs_per_step", num_ranks)
    for name, settings in sections.items():
        _positive_rates(settings, f"learner.{name}")
    if "mocan" in sections and sections["mocan"].margin is not None and not (
        isinstance(sections["mocan"].margin, (int, float)) and sections["mocan"].margin >= 0
    ):
        raise ConfigError(
            f"learner.mocan.margin: must be a number >= 0 (be safer than the reference by b) or null; "
            f"found {sections['mocan'].margin!r}"
        )
    if "preference" in sections:
        _preference_hyperparameters(sections["preference"])
        _divides(sections["preference"].pairs_per_step, "learner.preference.pairs_per_step", num_ranks)
        hyper = dict(sections["preference"].hyperparameters or {})
        if "beta" in hyper and (not isinstance(hyper["beta"], (int, float)) or hyper["beta"] <= 0):
            raise ConfigError(f"learner.preference.hyperparameters.beta: must be > 0; found {hyper['beta']!r}")

    # Models, data, scorers.
    model_source = _choice(OmegaConf.select(cfg, "model.source"), "model.source", SOURCES)
    data_source = _choice(OmegaConf.select(cfg, "data.source"), "data.source", SOURCES)
    scorers = _container(cfg.scorers, "scorers")
    scorer_kind = _choice(scorers.get("kind"), "scorers.kind", SCORER_KINDS)
    multiplier = _multiplier(cfg, cost_limit)
    pipeline = hub = reuse_from = None
    if model_source == "world" or data_source == "world":
        if model_source != data_source:
            raise ConfigError(
                f"model.source={model_source!r} with data.source={data_source!r}: the built-in world's "
                "models and data go together (model=world data=world), and a hub preset's too"
            )
        if scorer_kind == "pretrained":
            raise ConfigError("scorers.kind='pretrained' needs hub score models (model.reward_model); "
                              "on the built-in world use learned or oracle")
        model = _container(cfg.model, "model")
        _unknown(model, {"source", "sft", "from_run"}, "model", " for source=world")
        if model.get("from_run") is not None:
            reuse_from = Path(str(model["from_run"])).expanduser()
            if not (reuse_from / "stages.json").is_file():
                raise ConfigError(
                    f"model.from_run: {str(reuse_from)!r} is not a saferl run folder (no stages.json); "
                    "give the folder of a run whose data, SFT and score-model stages finished"
                )
        data = _container(cfg.data, "data")
        data_keys = {"source", "num_sft", "num_pairs_train", "num_pairs_test", "label_temperature"}
        _unknown(data, data_keys, "data", " for source=world")
        for key in ("num_sft", "num_pairs_train", "num_pairs_test"):
            _integer(cfg, f"data.{key}", 1)
        _number(cfg, "data.label_temperature", minimum=0.0, strict=True)
        score_keys = {"kind", "calibrate", "regularization", "reward_model", "cost_model"}
        _unknown(scorers, score_keys, "scorers")
        stages = {}
        for key, values in (("model.sft", model["sft"]), ("scorers.reward_model", scorers["reward_model"]),
                            ("scorers.cost_model", scorers["cost_model"])):
            stage = _build(values, key, StageSettings)
            if not isinstance(stage.steps, int) or stage.steps < 1:
                raise ConfigError(f"{key}.steps: expected an integer >= 1; found {stage.steps!r}")
            if not isinstance(stage.rows_per_step, int) or stage.rows_per_step < 1:
                raise ConfigError(f"{key}.rows_per_step: expected an integer >= 1; found {stage.rows_per_step!r}")
            if not isinstance(stage.learning_rate, (int, float)) or stage.learning_rate <= 0:
                raise ConfigError(f"{key}.learning_rate: must be > 0; found {stage.learning_rate!r}")
            _divides(stage.rows_per_step, f"{key}.rows_per_step", num_ranks)
            stages[key] = stage
        reference_values = _container(cfg.world.reference, "world.reference")
        reference = _build(reference_values, "world.reference", ReferenceConfig)
        _positive_rates(reference, "world.reference")
        pipeline = _build(
            {
                "world_beta": beta,
                "cost_limit": cost_limit,
                "reference": reference,
                "num_sft": data["num_sft"],
                "num_pairs_train": data["num_pairs_train"],
                "num_pairs_test": data["num_pairs_test"],
                "label_temperature": float(data["label_temperature"]),
                "sft": stages["model.sft"],
                "reward_model": stages["scorers.reward_model"],
                "cost_model": stages["scorers.cost_model"],
                "ppo": ppo,
                "policy_learning_rate": float(learner_values.get("policy_learning_rate", 1e-3)),
                "critic_learning_rate": float(learner_values.get("critic_learning_rate", 1e-3)),
                "multiplier": multiplier,
                "scorers": scorer_kind,
                "calibrate_scorers": bool(scorers["calibrate"]),
                "score_regularization": float(scorers["regularization"]),
                "runtime": runtime,
                "deepspeed": deepspeed,
                "generation": generation,
                "num_ranks": num_ranks,
                "cpus_per_rank": cpus_per_rank,
                "gpus_per_rank": gpus_per_rank,
                "seed": seed,
            },
            "config",
            PipelineSettings,
        )
    else:
        hub = _hub_settings(cfg)
        if scorer_kind == "oracle":
            raise ConfigError("scorers.kind='oracle' is the built-in world's ground truth; a hub setup "
                              "uses pretrained (or learned) score models")
        from saferl.learners.hub import hub_max_prompt_length

        try:
            hub_max_prompt_length(hub.max_length, generation.max_new_tokens)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        if learner in ("ppo_lag", "mocan") and scorer_kind == "pretrained" and not (
            hub.reward_model and hub.cost_model
        ):
            raise ConfigError(
                f"learner={learner} with scorers.kind=pretrained needs model.reward_model and "
                f"model.cost_model; found {hub.reward_model!r} and {hub.cost_model!r}"
            )
    return RunConfig(
        job=job,
        learner=learner,
        pipeline=pipeline,
        hub=hub,
        mocan=sections.get("mocan"),
        pecan=sections.get("pecan"),
        preference=sections.get("preference"),
        logger=logger,
        resume=resume == "auto",
        checkpoint_every=checkpoint_every,
        output_dir=Path(output_dir) if output_dir is not None else None,
        reuse_from=reuse_from,
        beta=beta,
        cost_limit=cost_limit,
        seed=seed,
        ppo=ppo,
        multiplier=multiplier,
        policy_learning_rate=float(learner_values.get("policy_learning_rate", 1e-3)),
        critic_learning_rate=float(learner_values.get("critic_learning_rate", 1e-3)),
        runtime=runtime,
        deepspeed=deepspeed,
        generation=generation,
        num_ranks=num_ranks,
        cpus_per_rank=cpus_per_rank,
        gpus_per_rank=gpus_per_rank,
    )
