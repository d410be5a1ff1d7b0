"""The learners on a hub setup: published models and a PKU-SafeRLHF-format preference dataset.

The recipes of the hub presets (``model.source=hub``): a policy checkpoint that is both the
policy's start and the frozen reference, a reward model and a cost model used as they are (no
score-model training, no calibration) where the learner needs them, and the pairs or prompts of a
preference dataset. Every recipe runs the same code as its built-in-world counterpart, with the
hub's models, tokenizer, template and lengths; none has an exact evaluation (no ground truth).

:func:`run_hub_ppo_lag` — Safe RLHF (``experiment=beaver_v1``):

1. check the settings before anything starts: the prompt budget
   ``data.max_length − generation.max_new_tokens`` is positive, every local path exists, the score
   models are sequence-classification checkpoints with a trained head that read the policy's token
   ids (same vocabulary), and a fresh run does not overwrite another run's checkpoint;
2. load the prompts of ``data.path`` (``data.train_split``), deduplicated (preference sets repeat
   each prompt once per pair);
3. load the policy's tokenizer and give it a pad token distinct from EOS;
4. run the shared PPO-Lagrangian loop (:func:`saferl.learners.pipeline.run_ppo_loop`): the reward
   critic starts from the reward model, the cost critic from the cost model (ALGORITHMS.md §2);
5. export the policy and write ``result.json`` (final λ, the last iteration's reward and cost,
   every iteration's metrics).

:func:`run_hub_preference` — a preference loss (``experiment=bfpo``, ``experiment=safe_nca``): the
training pairs of ``data.path``, the policy's tokenizer (pad token added), then the offline
learner's body (:func:`saferl.learners.offline.train_offline_preference`: ordering, Safe-NCA's
safe-vs-unsafe pairs, reference log-probs, the loss's steps, export); ``result.json``. No reward
or cost model.

:func:`run_hub_mocan` — MoCAN (``experiment=mocan``): K samples per training prompt from the policy
(``generation``), scored by the reward and cost models, the dual and the predicted frontier, then
pseudo-preference DPO (or PPO with λ fixed at λ*) — MoCAN's shared steps
(:mod:`saferl.learners.mocan`); ``result.json`` and the samples' scores (``mocan/scores.pt``).

:func:`run_hub_pecan` — PeCAN (``experiment=pecan``): PeCAN's shared steps 1–4
(:func:`saferl.learners.pecan.pecan_align`) on the dataset's pairs and prompts; ``result.json`` and
the samples' implicit scores (``pecan/scores.pt``).

Departures from the published code: the response budget is ``generation.max_new_tokens``
and prompts are cut from the left to ``data.max_length − max_new_tokens`` tokens (the published
code caps prompt + response at ``max_length`` through ``generate``'s ``max_length``); the loop's own
departures are listed in :mod:`saferl.learners.ppo_lag`. Training pairs (preference losses, PeCAN's
implicit models) are cut to ``data.max_length`` tokens, response last; a pair whose formatted prompt
alone fills ``data.max_length`` is dropped (counted in ``result.json``) instead of failing the run.
MoCAN and PeCAN sample and score ``2 × dpo_pairs_per_step`` rows per call, the rows of a DPO step.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoConfig, PreTrainedTokenizerBase

from saferl.core.dual import DualSolution
from saferl.data import format_prompt, load_preference_dataset, load_prompt_dataset
from saferl.data.records import SafetyPreferencePair
from saferl.data.sources import looks_like_local_path
from saferl.learners.mocan import MocanSettings, dualize_and_align, sample_responses, score_samples
from saferl.learners.offline import GroupSetup, OfflineSettings, train_offline_preference
from saferl.learners.pecan import PecanSettings, pecan_align
from saferl.learners.pipeline import CriticStart, run_ppo_loop
from saferl.learners.ppo_lag import PPOSettings
from saferl.learners.run_state import claim_run_folder
from saferl.learners.scorers import ModelScorer
from saferl.models import (
    ModelSpec,
    check_safe_rlhf_score_config,
    ensure_pad_token,
    is_safe_rlhf_score_config,
    load_tokenizer,
    safe_rlhf_score_dim,
)
from saferl.runtime import (
    DeepSpeedSpec,
    GenerationSpec,
    GroupSpec,
    RuntimeSpec,
    ScoreGroup,
    init_ray,
)
from saferl.tracking import Tracker

if TYPE_CHECKING:  # the learners read the validated settings, never the config itself
    from saferl.config import HubSettings

__all__ = [
    "HubMocanRun",
    "HubPecanRun",
    "HubPreferenceRun",
    "HubRun",
    "RUN_NAME",
    "hub_max_prompt_length",
    "run_hub_mocan",
    "run_hub_pecan",
    "run_hub_preference",
    "run_hub_ppo_lag",
]

logger = logging.getLogger(__name__)

#: Names the checkpoint folder (``checkpoints/ppo_lag``) and the policy (``models/policy_ppo_lag``).
RUN_NAME = "ppo_lag"


@dataclass(frozen=True)
class HubRun:
    """What a hub PPO-Lagrangian run produced (also written to ``<output_dir>/result.json``).

    Attributes:
        policy_dir: the trained policy, exported in Hugging Face format.
        multiplier: the final λ, one value per cost.
        reward, cost: the last iteration's mean reward-model score and mean cost-model score(s).
        history: every iteration's metrics (restored ones included after a resume).
        num_prompts: distinct training prompts; max_prompt_length: prompt tokens kept.
        seconds: wall time of the PPO stage.
    """

    policy_dir: Path
    multiplier: list[float]
    reward: float
    cost: list[float]
    history: list[dict[str, float]]
    num_prompts: int
    max_prompt_length: int
    seconds: float


def hub_max_prompt_length(max_length: int, max_new_tokens: int) -> int:
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


def _require_existing(key: str, source: str, folder: bool) -> None:
    """A local path named by ``key`` must exist (a hub name is left to the hub client)."""
    if not looks_like_local_path(source):
        return
    path = Path(source).expanduser()
    if not path.exists():
        what = (
            "a folder written by save_pretrained"
            if folder
            else "a .json/.jsonl/.parquet file or a folder of them"
        )
        raise FileNotFoundError(
            f"{key}: the local path {source!r} does not exist; give {what}, or a hub name (owner/name)"
        )
    if folder and not path.is_dir():
        raise NotADirectoryError(
            f"{key}: {source!r} is a file; expected a model folder written by save_pretrained"
        )


def _require_score_model(
    key: str, spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, learner: str = "ppo_lag"
) -> None:
    """``key``'s checkpoint must be a one-output sequence-classification model (trained head), or a
    safe-rlhf ``*ForScore`` one with ``score_dim`` 1, that reads the policy's token ids.

    The score groups and critics load it with ``AutoModelForSequenceClassification``; a causal-LM
    checkpoint would load with a fresh random head and score noise, so it is refused here. When the
    checkpoint ships a tokenizer, every token of the policy's vocabulary (its pad token aside) must
    have the same id in it: the score model reads the policy's sequences as they are.
    """
    config = AutoConfig.from_pretrained(
        spec.name_or_path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
    )
    architectures = list(config.architectures or [])
    if is_safe_rlhf_score_config(config):
        # A safe-rlhf *ForScore checkpoint (the Beaver-7B-v1.0 reward and cost models): loaded as
        # the matching *ForSequenceClassification; config-level refusals (do_normalize) happen here,
        # a non-zero score_head.bias is refused when the weights load.
        try:
            check_safe_rlhf_score_config(config, spec.name_or_path)
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from error
        num_outputs = safe_rlhf_score_dim(config)
    elif any(name.endswith("ForSequenceClassification") for name in architectures):
        num_outputs = config.num_labels
    else:
        raise ValueError(
            f"{key}: {spec.name_or_path!r} is not a score model (its architectures are {architectures}; "
            "expected a transformers *ForSequenceClassification checkpoint with a trained one-output "
            "head, as saferl's score-model stage writes, or a safe-rlhf *ForScore checkpoint such as "
            "the Beaver reward and cost models)"
        )
    if num_outputs != 1:
        raise ValueError(
            f"{key}: {spec.name_or_path!r} has {num_outputs} outputs; {learner} on a hub setup "
            "takes one reward and one cost score model with one output each"
        )
    try:
        own = load_tokenizer(
            spec.name_or_path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as error:  # no tokenizer files shipped: nothing to compare
        logger.warning("%s: no tokenizer in %s (%s); assuming the policy's", key, spec.name_or_path, error)
        return
    own_vocabulary = own.get_vocab()
    differing = sorted(
        token
        for token, index in tokenizer.get_vocab().items()
        if token != tokenizer.pad_token and own_vocabulary.get(token) != index
    )
    if differing:
        raise ValueError(
            f"{key}: {spec.name_or_path!r} has another vocabulary than model.policy ({len(differing)} "
            f"token(s) differ, e.g. {differing[:5]}); the score model reads the policy's token ids, "
            "so it needs the policy's tokenizer"
        )


def _model_spec(hub: HubSettings, name: str) -> ModelSpec:
    """A hub model as the groups load it (the setup's revision, dtype and remote-code setting)."""
    return ModelSpec(
        name_or_path=name,
        revision=hub.model_revision,
        trust_remote_code=hub.trust_remote_code,
        dtype=hub.dtype,
    )


def _policy_tokenizer(hub: HubSettings) -> PreTrainedTokenizerBase:
    """The policy's tokenizer, with a pad token distinct from EOS."""
    tokenizer = load_tokenizer(
        hub.policy, revision=hub.model_revision, trust_remote_code=hub.trust_remote_code
    )
    ensure_pad_token(tokenizer)
    return tokenizer


def _require_score_models(hub: HubSettings, learner: str, why: str) -> None:
    """Both score models are named and, when local, exist."""
    for key, value in (("model.reward_model", hub.reward_model), ("model.cost_model", hub.cost_model)):
        if not value:
            raise ValueError(
                f"{key}: {learner} on a hub setup needs a reward model and a cost model ({why}); "
                f"found {value!r}"
            )
        _require_existing(key, value, folder=True)


def _training_pairs(
    hub: HubSettings, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[SafetyPreferencePair], int]:
    """The pairs of ``data.path`` (``data.train_split``) whose formatted prompt leaves room for a
    response in ``data.max_length`` tokens, and how many were dropped for lack of it."""
    loaded = load_preference_dataset(hub.data_path, split=hub.train_split, revision=hub.data_revision)
    pairs = list(loaded.records)
    if not pairs:
        raise ValueError(f"data.path: {hub.data_path!r} (split {hub.train_split!r}) holds no pairs")
    distinct = sorted({pair.prompt for pair in pairs})
    formatted = [format_prompt(prompt, tokenizer, hub.template) for prompt in distinct]
    encoded = tokenizer(formatted, add_special_tokens=hub.template != "chat", return_attention_mask=False)
    fits = {prompt: len(ids) < hub.max_length for prompt, ids in zip(distinct, encoded["input_ids"], strict=True)}
    kept = [pair for pair in pairs if fits[pair.prompt]]
    if not kept:
        raise ValueError(
            f"data.max_length={hub.max_length}: every formatted prompt of {hub.data_path!r} fills it "
            "(no room for a response); raise data.max_length"
        )
    if len(kept) < len(pairs):
        logger.warning(
            "%d of %d pairs dropped: their formatted prompt fills data.max_length=%d tokens",
            len(pairs) - len(kept), len(pairs), hub.max_length,
        )
    logger.info("%d training pairs from %s (%s)", len(kept), loaded.source, hub.train_split)
    return kept, len(pairs) - len(kept)


def _training_prompts(hub: HubSettings, limit: int | None, seed: int) -> list[str]:
    """The distinct prompts of ``data.path`` (``data.train_split``); at most ``limit`` of them, a
    seeded choice kept in data order."""
    loaded = load_prompt_dataset(
        hub.data_path, split=hub.train_split, revision=hub.data_revision, deduplicate=True
    )
    prompts = [record.prompt for record in loaded.records]
    if not prompts:
        raise ValueError(f"data.path: {hub.data_path!r} (split {hub.train_split!r}) holds no prompts")
    if limit is not None and limit < len(prompts):
        chosen = sorted(random.Random(seed).sample(range(len(prompts)), limit))
        prompts = [prompts[i] for i in chosen]
    logger.info("%d distinct prompts from %s (%s)", len(prompts), loaded.source, hub.train_split)
    return prompts


def _write_result(output: Path, record: dict[str, Any]) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "result.json").write_text(json.dumps(record, indent=2) + "\n")


def run_hub_ppo_lag(
    hub: HubSettings,
    ppo: PPOSettings,
    multiplier: dict[str, Any],
    cost_limit: float,
    policy_learning_rate: float,
    critic_learning_rate: float,
    deepspeed: DeepSpeedSpec,
    generation: GenerationSpec,
    runtime: RuntimeSpec,
    num_ranks: int,
    cpus_per_rank: float,
    gpus_per_rank: float,
    output_dir: str | Path,
    tracker: Tracker | None = None,
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    seed: int = 0,
) -> HubRun:
    """PPO-Lagrangian on ``hub``'s models and prompts (steps 1–5 of the module docstring).

    Args:
        hub: ``RunConfig.hub`` (models, revision, dtype, data, template, ``max_length``).
        ppo: the loop's hyper-parameters (``learner.*``).
        multiplier: ``build_multiplier`` options with ``kind`` (the validated ``multiplier``
            section); cost_limit: ``d`` (root ``cost_limit``).
        policy_learning_rate, critic_learning_rate: ``learner.policy_learning_rate`` and
            ``learner.critic_learning_rate``.
        deepspeed, generation, runtime: the validated sections of the same names;
            ``generation.max_new_tokens`` is the response budget.
        num_ranks, cpus_per_rank, gpus_per_rank: ``runtime.*``; every role gets that many ranks.
        output_dir: the run folder (``checkpoints/ppo_lag``, ``models/policy_ppo_lag``,
            ``result.json``).
        tracker: where metrics go; progress: ``progress(stage, step, total, metrics)``.
        checkpoint_every: iterations between checkpoints (None: only after the last).
        resume: continue from ``checkpoints/ppo_lag`` when it holds one; a fresh run refuses a
            folder that does.
        seed: seeds the groups' model builds and the prompt order (``ppo.seed`` the sampling).

    Raises:
        ValueError, FileNotFoundError: a setting that cannot run; the message names the config key
            (``model.policy``, ``model.reward_model``, ``model.cost_model``, ``data.path``,
            ``data.max_length``, ``generation.max_new_tokens``).
        RunFolderInUseError: a fresh run in a folder holding a run (a checkpoint, results).
    """
    # 1. Settings that cannot run fail here, before any model or actor is loaded.
    max_prompt_length = hub_max_prompt_length(hub.max_length, generation.max_new_tokens)
    _require_score_models(hub, "ppo_lag", "they score the rollouts and initialise the critics")
    _require_existing("model.policy", hub.policy, folder=True)
    _require_existing("data.path", hub.data_path, folder=False)
    output = Path(output_dir)
    claim_run_folder(output, resume)  # a fresh run never overwrites another run's checkpoint
    policy, reward_model, cost_model = (
        _model_spec(hub, name) for name in (hub.policy, hub.reward_model, hub.cost_model)
    )

    # 2. Prompts.
    prompts = _training_prompts(hub, None, seed)

    # 3. The policy's tokenizer, with a pad token distinct from EOS; the score models must share it.
    tokenizer = _policy_tokenizer(hub)
    _require_score_model("model.reward_model", reward_model, tokenizer)
    _require_score_model("model.cost_model", cost_model, tokenizer)

    # 4. The shared PPO-Lagrangian loop. The critics load the score models as their weights
    # (CriticStart without init_from), so the hub revision applies to them too.
    run = run_ppo_loop(
        policy=policy,
        reward_critic=CriticStart(reward_model),
        cost_critics=[CriticStart(cost_model)],
        reward_scorer=reward_model,
        cost_scorers=[cost_model],
        tokenizer=tokenizer,
        prompts=prompts,
        template=hub.template,
        max_prompt_length=max_prompt_length,
        generation=generation,
        multiplier=multiplier,
        cost_limit=cost_limit,
        ppo=ppo,
        policy_learning_rate=policy_learning_rate,
        critic_learning_rate=critic_learning_rate,
        deepspeed=deepspeed,
        group=GroupSpec(num_ranks=num_ranks, cpus_per_rank=cpus_per_rank, gpus_per_rank=gpus_per_rank),
        runtime=runtime,
        output_dir=output,
        name=RUN_NAME,
        tracker=tracker,
        progress=progress,
        checkpoint_every=checkpoint_every,
        resume=resume,
        seed=seed,
    )

    # 5. The result.
    last = run.history[-1]
    result = HubRun(
        policy_dir=Path(run.policy_dir),
        multiplier=run.multiplier,
        reward=float(last["reward/score"]),
        cost=[float(last[f"cost/score_{j}"]) for j in range(len(run.multiplier))],
        history=run.history,
        num_prompts=len(prompts),
        max_prompt_length=max_prompt_length,
        seconds=run.seconds,
    )
    record = {
        **asdict(result),
        "policy_dir": str(result.policy_dir),
        "settings": {
            "hub": asdict(hub),
            "ppo": asdict(ppo),
            "multiplier": dict(multiplier),
            "cost_limit": cost_limit,
            "policy_learning_rate": policy_learning_rate,
            "critic_learning_rate": critic_learning_rate,
            "generation": asdict(generation),
            "seed": seed,
        },
    }
    _write_result(output, record)
    return result


def _group_setup(
    deepspeed: DeepSpeedSpec, runtime: RuntimeSpec, num_ranks: int, cpus_per_rank: float, gpus_per_rank: float,
    seed: int,
) -> GroupSetup:
    group = GroupSpec(num_ranks=num_ranks, cpus_per_rank=cpus_per_rank, gpus_per_rank=gpus_per_rank)
    return GroupSetup(deepspeed, group, runtime, seed)


# ---------------------------------------------------------------------------------------------
# Preference losses (experiment=bfpo, experiment=safe_nca)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubPreferenceRun:
    """What a hub preference run produced (also written to ``<output_dir>/result.json``).

    Attributes:
        policy_dir: the trained policy, exported in Hugging Face format.
        loss, ordering, hyperparameters: the loss as trained (``safe_nca``: ordering ``"safer"``;
            ``beta`` defaulted to the root β where the loss takes one).
        num_pairs: pairs trained on (Safe-NCA: the safe-vs-unsafe ones); num_dropped_pairs: pairs
            whose prompt alone filled ``data.max_length``.
        final_loss: the last step's loss; history: every step's metrics.
        seconds: wall time of the training (groups, reference log-probs, steps, export).
    """

    policy_dir: Path
    loss: str
    ordering: str
    hyperparameters: dict[str, Any]
    num_pairs: int
    num_dropped_pairs: int
    final_loss: float
    history: list[dict[str, float]]
    seconds: float


def run_hub_preference(
    hub: HubSettings,
    offline: OfflineSettings,
    beta: float,
    deepspeed: DeepSpeedSpec,
    runtime: RuntimeSpec,
    num_ranks: int,
    cpus_per_rank: float,
    gpus_per_rank: float,
    output_dir: str | Path,
    tracker: Tracker | None = None,
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
    seed: int = 0,
) -> HubPreferenceRun:
    """A preference loss on ``hub``'s policy and training pairs (see the module docstring).

    Args:
        hub: ``RunConfig.hub``; no reward or cost model is used.
        offline: the loss and its optimisation (``learner.preference``).
        beta: the root β, the loss's ``beta`` unless ``learner.preference.hyperparameters`` sets it.
        deepspeed, runtime, num_ranks, cpus_per_rank, gpus_per_rank: where the reference and
            policy groups run.
        output_dir: the run folder (``models/policy_<loss>``, ``result.json``).
        tracker: receives every step's metrics; progress: ``progress(loss, step, steps, metrics)``.
        seed: seeds the groups' model builds (``offline.seed`` the pair order).

    Raises:
        ValueError, FileNotFoundError: a setting that cannot run; the message names the config key.
    """
    # 1. Settings that cannot run fail here.
    _require_existing("model.policy", hub.policy, folder=True)
    _require_existing("data.path", hub.data_path, folder=False)
    output = Path(output_dir)
    # 2. The policy's tokenizer and the training pairs that fit data.max_length.
    tokenizer = _policy_tokenizer(hub)
    pairs, dropped = _training_pairs(hub, tokenizer)
    # 3. The offline learner's body: ordering, reference log-probs, the loss's steps, export.
    clock = time.perf_counter()
    run = train_offline_preference(
        pairs, offline, policy=_model_spec(hub, hub.policy), tokenizer=tokenizer, template=hub.template,
        max_length=hub.max_length, beta=beta,
        setup=_group_setup(deepspeed, runtime, num_ranks, cpus_per_rank, gpus_per_rank, seed),
        export_dir=output / "models" / f"policy_{offline.loss}", source=f"data.path={hub.data_path!r}",
        tracker=tracker, progress=progress,
    )
    # 4. The result.
    result = HubPreferenceRun(
        policy_dir=Path(run.policy_dir),
        loss=offline.loss,
        ordering=run.ordering,
        hyperparameters=run.hyperparameters,
        num_pairs=run.num_pairs,
        num_dropped_pairs=dropped,
        final_loss=float(run.history[-1]["preference/loss"]),
        history=run.history,
        seconds=time.perf_counter() - clock,
    )
    _write_result(output, {
        **asdict(result),
        "policy_dir": str(result.policy_dir),
        "settings": {"hub": asdict(hub), "preference": asdict(offline), "beta": beta, "seed": seed},
    })
    return result


# ---------------------------------------------------------------------------------------------
# MoCAN (experiment=mocan)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubMocanRun:
    """What a hub MoCAN run produced (also written to ``<output_dir>/result.json``; the samples'
    scores to ``<output_dir>/mocan/scores.pt``).

    Attributes:
        dual: λ̂ and the predicted statistics of ``π_λ̂`` (cost-model units).
        frontier_files: the CSV and PNG of the predicted frontier.
        policy_dir: the aligned policy (None with ``predict_only``).
        prompts: the dual's prompts (``P``); rewards ``(P, K)`` and costs ``(P, K, 1)``: the
            reward- and cost-model scores of the K samples of each.
        seconds: wall seconds per step (``sample``, ``dual``, ``align``).
    """

    dual: DualSolution
    frontier_files: tuple[Path, Path]
    policy_dir: Path | None
    prompts: list[str]
    rewards: torch.Tensor
    costs: torch.Tensor
    seconds: dict[str, float]


def _dual_record(dual: DualSolution) -> dict[str, Any]:
    return {
        "multiplier": dual.multiplier.tolist(),
        "cost_limit": dual.cost_limit.tolist(),
        "predicted_reward": float(dual.expected_reward),
        "predicted_cost": dual.expected_cost.tolist(),
        "predicted_kl": float(dual.kl),
        "objective": float(dual.objective),
        "solver": dual.method,
    }


def run_hub_mocan(
    hub: HubSettings,
    mocan: MocanSettings,
    beta: float,
    cost_limit: float,
    ppo: PPOSettings,
    policy_learning_rate: float,
    critic_learning_rate: float,
    deepspeed: DeepSpeedSpec,
    generation: GenerationSpec,
    runtime: RuntimeSpec,
    num_ranks: int,
    cpus_per_rank: float,
    gpus_per_rank: float,
    output_dir: str | Path,
    tracker: Tracker | None = None,
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
    seed: int = 0,
) -> HubMocanRun:
    """MoCAN on ``hub``'s policy, reward and cost models and prompts (see the module docstring).

    Args:
        hub: ``RunConfig.hub`` (the reward and cost models are required).
        mocan: ``learner.mocan`` (K, margin, stage, DPO, frontier grid, ``num_prompts``, seed).
        beta: the dual's and DPO's β; cost_limit: ``d`` when ``mocan.margin`` is None.
        ppo, policy_learning_rate, critic_learning_rate: ``stage="ppo"``'s loop (the hub
            PPO-Lagrangian recipe with λ fixed at λ*, in ``<output_dir>/mocan``).
        deepspeed, runtime, num_ranks, cpus_per_rank, gpus_per_rank: where the groups run.
        generation: the reference samples' sampling (seeded by ``mocan.seed``) and response budget.
        output_dir: the run folder (``mocan/frontier.{csv,png}``, ``mocan/scores.pt``,
            ``mocan/models/policy_dpo``, ``result.json``).
        tracker: receives the DPO steps' metrics; progress: ``progress(stage, step, total, metrics)``.
        seed: seeds the groups' model builds.

    Raises:
        ValueError, FileNotFoundError: a setting that cannot run; the message names the config key.
        saferl.core.dual.InfeasibleConstraintError: the limit is below what the samples reach.
    """
    # 1. Settings that cannot run fail here, before any model or actor is loaded.
    max_prompt_length = hub_max_prompt_length(hub.max_length, generation.max_new_tokens)
    _require_score_models(hub, "mocan", "they score the reference samples for the dual")
    _require_existing("model.policy", hub.policy, folder=True)
    _require_existing("data.path", hub.data_path, folder=False)
    output = Path(output_dir)
    setup = _group_setup(deepspeed, runtime, num_ranks, cpus_per_rank, gpus_per_rank, seed)
    policy, reward_model, cost_model = (
        _model_spec(hub, name) for name in (hub.policy, hub.reward_model, hub.cost_model)
    )
    rows_per_call = 2 * mocan.dpo_pairs_per_step

    # 2. The dual's prompts and the policy's tokenizer (the score models must share it).
    prompts = _training_prompts(hub, mocan.num_prompts, mocan.seed)
    tokenizer = _policy_tokenizer(hub)
    _require_score_model("model.reward_model", reward_model, tokenizer, learner="mocan")
    _require_score_model("model.cost_model", cost_model, tokenizer, learner="mocan")
    init_ray(runtime)

    # 3. MoCAN's step 1: K reference samples per prompt, scored by the reward and cost models.
    clock = time.perf_counter()
    batch, rows = sample_responses(
        policy, tokenizer, prompts, mocan.num_samples, template=hub.template, max_prompt_length=max_prompt_length,
        generation=replace(generation, seed=mocan.seed), setup=setup, rows_per_call=rows_per_call,
    )
    groups = [
        ScoreGroup(spec, tokenizer, setup.engine(0.0, rows_per_call), setup.group, runtime, num_outputs=1,
                   kind=kind, role=f"{kind}_scorer", seed=seed, wait=False)
        for kind, spec in (("reward", reward_model), ("cost", cost_model))
    ]
    try:
        samples = score_samples(batch, rows, mocan.num_samples,
                                {"reward": ModelScorer(groups[0]), "cost": ModelScorer(groups[1])},
                                rows_per_call=rows_per_call, num_ranks=num_ranks)
    finally:
        for group in groups:
            group.shutdown()
    (output / "mocan").mkdir(parents=True, exist_ok=True)
    torch.save({"prompts": prompts, "rewards": samples.rewards, "costs": samples.costs},
               output / "mocan" / "scores.pt")
    seconds = {"sample": time.perf_counter() - clock}

    # 4. MoCAN's steps 2–3: the dual and the predicted frontier, then one unconstrained alignment.
    def ppo_stage(dual: DualSolution) -> Path:
        """PPO with λ fixed at λ*: the hub PPO-Lagrangian recipe with a fixed multiplier."""
        fixed = {"kind": "fixed", "value": [float(v) for v in dual.multiplier]}
        return run_hub_ppo_lag(
            hub, ppo, fixed, float(dual.cost_limit[0]), policy_learning_rate, critic_learning_rate, deepspeed,
            generation, runtime, num_ranks, cpus_per_rank, gpus_per_rank, output / "mocan", tracker=tracker,
            progress=progress, seed=seed,
        ).policy_dir

    dual, files, policy_dir, stage_seconds = dualize_and_align(
        samples, mocan, beta, cost_limit, policy=policy, tokenizer=tokenizer, setup=setup, output=output / "mocan",
        ppo_stage=ppo_stage, progress=progress, tracker=tracker,
    )
    seconds.update(stage_seconds)

    # 5. The result.
    result = HubMocanRun(dual, files, policy_dir, prompts, samples.rewards, samples.costs, seconds)
    _write_result(output, {
        **_dual_record(dual),
        "frontier_files": [str(path) for path in files],
        "policy_dir": None if policy_dir is None else str(policy_dir),
        "num_prompts": len(prompts),
        "num_samples": mocan.num_samples,
        "reference_reward": float(samples.rewards.mean()),
        "reference_cost": samples.costs.mean(dim=(0, 1)).tolist(),
        "seconds": seconds,
        "settings": {"hub": asdict(hub), "mocan": asdict(mocan), "beta": beta, "cost_limit": cost_limit,
                     "generation": asdict(generation), "seed": seed},
    })
    return result


# ---------------------------------------------------------------------------------------------
# PeCAN (experiment=pecan)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubPecanRun:
    """What a hub PeCAN run produced (also written to ``<output_dir>/result.json``).

    Attributes:
        dual: λ̂ and the predicted statistics of ``π_λ̂``, in implicit units.
        frontier_files: the CSV and PNG of the predicted frontier.
        implicit_model_dirs: the exported ``π_r`` (helpfulness) and ``π_g`` (safety) DPO policies.
        reference_implicit_cost: ``E_ref c`` of the samples (implicit units).
        policy_dir: the aligned policy (None with ``predict_only``).
        prompts: the dual's prompts (``P``); rewards ``(P, K)`` and costs ``(P, K, 1)``: the
            implicit scores of their samples.
        num_pairs, num_dropped_pairs: training pairs of the implicit models, and those dropped
            because their prompt alone filled ``data.max_length``.
        seconds: wall seconds per step.
    """

    dual: DualSolution
    frontier_files: tuple[Path, Path]
    implicit_model_dirs: dict[str, Path]
    reference_implicit_cost: float
    policy_dir: Path | None
    prompts: list[str]
    rewards: torch.Tensor
    costs: torch.Tensor
    num_pairs: int
    num_dropped_pairs: int
    seconds: dict[str, float]


def run_hub_pecan(
    hub: HubSettings,
    pecan: PecanSettings,
    beta: float,
    deepspeed: DeepSpeedSpec,
    generation: GenerationSpec,
    runtime: RuntimeSpec,
    num_ranks: int,
    cpus_per_rank: float,
    gpus_per_rank: float,
    output_dir: str | Path,
    tracker: Tracker | None = None,
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
    seed: int = 0,
) -> HubPecanRun:
    """PeCAN on ``hub``'s policy and preference data (see the module docstring); no reward or
    cost model.

    Args:
        hub: ``RunConfig.hub``; pecan: ``learner.pecan``; beta: β of every DPO run and the dual.
        deepspeed, runtime, num_ranks, cpus_per_rank, gpus_per_rank: where the groups run.
        generation: the reference samples' sampling (seeded by ``pecan.seed``) and response budget.
        output_dir: the run folder (``pecan/models/{implicit_reward,implicit_safety,policy_dpo}``,
            ``pecan/frontier.{csv,png}``, ``pecan/scores.pt``, ``result.json``).
        tracker: receives the DPO steps' metrics; progress: ``progress(stage, step, total, metrics)``.
        seed: seeds the groups' model builds.
    """
    # 1. Settings that cannot run fail here.
    max_prompt_length = hub_max_prompt_length(hub.max_length, generation.max_new_tokens)
    _require_existing("model.policy", hub.policy, folder=True)
    _require_existing("data.path", hub.data_path, folder=False)
    output = Path(output_dir)
    # 2. The policy's tokenizer, the implicit models' pairs and the dual's prompts.
    tokenizer = _policy_tokenizer(hub)
    pairs, dropped = _training_pairs(hub, tokenizer)
    prompts = _training_prompts(hub, pecan.num_prompts, pecan.seed)
    init_ray(runtime)
    # 3. PeCAN's steps 1–4: implicit models, samples and implicit scores, the dual, DPO.
    stages = pecan_align(
        pairs, pecan, beta, policy=_model_spec(hub, hub.policy), tokenizer=tokenizer, template=hub.template,
        max_length=hub.max_length, prompts=prompts, max_prompt_length=max_prompt_length,
        generation=replace(generation, seed=pecan.seed),
        setup=_group_setup(deepspeed, runtime, num_ranks, cpus_per_rank, gpus_per_rank, seed),
        output=output / "pecan", rows_per_call=2 * pecan.dpo_pairs_per_step, progress=progress, tracker=tracker,
    )
    torch.save({"prompts": prompts, "rewards": stages.samples.rewards, "costs": stages.samples.costs},
               output / "pecan" / "scores.pt")
    # 4. The result.
    result = HubPecanRun(
        stages.dual, stages.frontier_files, stages.implicit_model_dirs, stages.reference_implicit_cost,
        stages.policy_dir, prompts, stages.samples.rewards, stages.samples.costs, len(pairs), dropped, stages.seconds,
    )
    _write_result(output, {
        **_dual_record(stages.dual),
        "units": "implicit",
        "reference_implicit_cost": stages.reference_implicit_cost,
        "frontier_files": [str(path) for path in stages.frontier_files],
        "implicit_model_dirs": {kind: str(path) for kind, path in stages.implicit_model_dirs.items()},
        "policy_dir": None if stages.policy_dir is None else str(stages.policy_dir),
        "num_prompts": len(prompts),
        "num_samples": pecan.num_samples,
        "num_pairs": len(pairs),
        "num_dropped_pairs": dropped,
        "seconds": stages.seconds,
        "settings": {"hub": asdict(hub), "pecan": asdict(pecan), "beta": beta, "generation": asdict(generation),
                     "seed": seed},
    })
    return result
