"""Safe RLHF (PPO-Lagrangian) on a hub setup: published models and a PKU-SafeRLHF-format prompt set.

The recipe of ``experiment=beaver_v1`` and its kind (``model.source=hub``): a policy checkpoint that
is both the policy's start and the frozen reference, a reward model and a cost model used as they
are (no score-model training, no calibration), and the prompts of a preference dataset.

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

Departures from the published Safe RLHF code: the response budget is ``generation.max_new_tokens``
and prompts are cut from the left to ``data.max_length − max_new_tokens`` tokens (the published
code caps prompt + response at ``max_length`` through ``generate``'s ``max_length``); the loop's own
departures are listed in :mod:`saferl.learners.ppo_lag`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import AutoConfig, PreTrainedTokenizerBase

from saferl.data import load_prompt_dataset
from saferl.data.sources import looks_like_local_path
from saferl.learners.pipeline import CriticStart, run_ppo_loop
from saferl.learners.ppo_lag import PPOSettings
from saferl.learners.run_state import RunFolderInUseError, latest_checkpoint
from saferl.models import (
    ModelSpec,
    check_safe_rlhf_score_config,
    ensure_pad_token,
    is_safe_rlhf_score_config,
    load_tokenizer,
    safe_rlhf_score_dim,
)
from saferl.runtime import DeepSpeedSpec, GenerationSpec, GroupSpec, RuntimeSpec
from saferl.tracking import Tracker

if TYPE_CHECKING:  # the learners read the validated settings, never the config itself
    from saferl.config import HubSettings

__all__ = ["HubRun", "RUN_NAME", "hub_max_prompt_length", "run_hub_ppo_lag"]

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


def _require_score_model(key: str, spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> None:
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
            f"{key}: {spec.name_or_path!r} has {num_outputs} outputs; ppo_lag on a hub setup "
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
        RunFolderInUseError: a fresh run in a folder with a checkpoint.
    """
    # 1. Settings that cannot run fail here, before any model or actor is loaded.
    max_prompt_length = hub_max_prompt_length(hub.max_length, generation.max_new_tokens)
    for key, value in (("model.reward_model", hub.reward_model), ("model.cost_model", hub.cost_model)):
        if not value:
            raise ValueError(
                f"{key}: ppo_lag on a hub setup needs a reward model and a cost model (they score the "
                f"rollouts and initialise the critics); found {value!r}"
            )
    _require_existing("model.policy", hub.policy, folder=True)
    _require_existing("model.reward_model", hub.reward_model, folder=True)
    _require_existing("model.cost_model", hub.cost_model, folder=True)
    _require_existing("data.path", hub.data_path, folder=False)
    output = Path(output_dir)
    checkpoint = latest_checkpoint(output / "checkpoints" / RUN_NAME)
    if checkpoint is not None and not resume:
        raise RunFolderInUseError(
            f"{output} already holds a ppo_lag checkpoint ({checkpoint}); pass resume=auto to continue "
            "it, or choose another folder"
        )

    def spec(name: str) -> ModelSpec:
        return ModelSpec(
            name_or_path=name,
            revision=hub.model_revision,
            trust_remote_code=hub.trust_remote_code,
            dtype=hub.dtype,
        )

    policy, reward_model, cost_model = spec(hub.policy), spec(hub.reward_model), spec(hub.cost_model)

    # 2. Prompts.
    loaded = load_prompt_dataset(
        hub.data_path, split=hub.train_split, revision=hub.data_revision, deduplicate=True
    )
    prompts = [record.prompt for record in loaded.records]
    if not prompts:
        raise ValueError(f"data.path: {hub.data_path!r} (split {hub.train_split!r}) holds no prompts")
    logger.info("%d distinct prompts from %s (%s)", len(prompts), loaded.source, hub.train_split)

    # 3. The policy's tokenizer, with a pad token distinct from EOS; the score models must share it.
    tokenizer = load_tokenizer(
        hub.policy, revision=hub.model_revision, trust_remote_code=hub.trust_remote_code
    )
    ensure_pad_token(tokenizer)
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
    output.mkdir(parents=True, exist_ok=True)
    (output / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return result
