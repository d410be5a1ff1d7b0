"""Hub or local checkpoints and PKU-SafeRLHF-format data as a setup (the published presets).

A policy checkpoint is both the policy's start and the frozen reference; a reward model and a cost
model are used as they are (no score-model training, no calibration) where the learner needs them,
and they also initialise the critics (docs/algorithms.md §2). There is no ground truth, so no evaluator:
the arena (``job=evaluate``) compares a trained policy with its reference.

:func:`build`:

1. preflight: every check that can fail before a model or actor loads — the prompt budget
   ``data.max_length − generation.max_new_tokens`` is positive, every local path exists, and the
   score models the learner needs are named;
2. the policy's tokenizer, with a pad token distinct from EOS;
3. the score models are sequence-classification checkpoints (or safe-rlhf ``*ForScore`` ones) with
   one output that read the policy's token ids (same vocabulary);
4. the distinct training prompts of ``data.path`` (``data.train_split``), and the training pairs
   whose formatted prompt leaves room for a response in ``data.max_length`` tokens (those dropped
   are counted, not a failure);
5. with ``learner.ptx_coeff > 0``, the PTX demonstrations of ``data.ptx_path``
   (``data.ptx_split``) whose formatted prompt leaves room for a response, in the same way.

Departures from the published code: the response budget is ``generation.max_new_tokens`` and
prompts are cut from the left to ``data.max_length − max_new_tokens`` tokens (the published code
caps prompt + response at ``max_length`` through ``generate``'s ``max_length``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoConfig, PreTrainedTokenizerBase

from saferl.data import (
    format_prompt,
    load_preference_dataset,
    load_prompt_dataset,
    load_sft_dataset,
)
from saferl.data.errors import DataError
from saferl.data.records import SafetyPreferencePair, SFTExample
from saferl.data.sources import looks_like_local_path
from saferl.learners.output import RunOutput
from saferl.models import (
    ModelSpec,
    check_safe_rlhf_score_config,
    ensure_pad_token,
    is_safe_rlhf_score_config,
    load_tokenizer,
    safe_rlhf_score_dim,
)
from saferl.models.untrusted import check_remote_code
from saferl.runtime.resources import Resources
from saferl.setups.base import CriticStart, ModelScorerSource, Needs, Setup
from saferl.setups.settings import (  # light: config validation reads them
    HubSettings,
    TinySettings,
    max_prompt_length,
)

__all__ = ["HubSettings", "build", "check_ptx_path", "load_ptx_dataset", "max_prompt_length", "preflight",
           "ptx_examples",
           "require_score_model", "training_pairs"]

logger = logging.getLogger(__name__)


def _require_existing(key: str, source: str, folder: bool) -> None:
    """A local path named by ``key`` must exist (a hub name is left to the hub client)."""
    if not looks_like_local_path(source):
        return
    path = Path(source).expanduser()
    if not path.exists():
        what = "a folder written by save_pretrained" if folder else "a .json/.jsonl/.parquet file or a folder of them"
        raise FileNotFoundError(
            f"{key}: the local path {source!r} does not exist; give {what}, or a hub name (owner/name)"
        )
    if folder and not path.is_dir():
        raise NotADirectoryError(f"{key}: {source!r} is a file; expected a model folder written by save_pretrained")


def preflight(hub: HubSettings, needs: Needs, learner: str) -> int:
    """Step 1: the checks that need no model; returns the prompt budget.

    Raises:
        ValueError, FileNotFoundError: naming the config key.
    """
    budget = max_prompt_length(hub.max_length, hub.generation.max_new_tokens)
    if needs.scorers or needs.critics:
        why = "they score the rollouts and initialise the critics" if needs.critics else \
            "they score the reference samples for the dual"
        for key, value in (("model.reward_model", hub.reward_model), ("model.cost_model", hub.cost_model)):
            if not value:
                raise ValueError(
                    f"{key}: {learner} on a hub setup needs a reward model and a cost model ({why}); found {value!r}"
                )
            _require_existing(key, value, folder=True)
    _require_existing("model.policy", hub.policy, folder=True)
    _require_existing("data.path", hub.path, folder=False)
    if needs.ptx:
        check_ptx_path(hub, learner)
    return budget


def check_ptx_path(settings: HubSettings | TinySettings, learner: str) -> None:
    """``data.ptx_path`` is set, and exists where it is a local path (a hub or tiny setup whose PPO
    stage has ``learner.ptx_coeff > 0``)."""
    if not settings.ptx_path:
        raise ValueError(f"data.ptx_path: {learner} with learner.ptx_coeff > 0 needs a PTX set of supervised "
                         f"demonstrations (a hub name such as tatsu-lab/alpaca, or a local file); found "
                         f"{settings.ptx_path!r}")
    _require_existing("data.ptx_path", settings.ptx_path, folder=False)


def load_ptx_dataset(settings: HubSettings | TinySettings):
    """``data.ptx_path`` through the SFT loader; bad records or columns name the key too."""
    try:
        return load_sft_dataset(settings.ptx_path, split=settings.ptx_split, revision=settings.ptx_revision)
    except DataError as error:
        raise ValueError(f"data.ptx_path: {error}") from error


def require_score_model(key: str, spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, learner: str = "ppo_lag") -> None:
    """``key``'s checkpoint must be a one-output sequence-classification model (trained head), or a
    safe-rlhf ``*ForScore`` one with ``score_dim`` 1, that reads the policy's token ids.

    The score groups and critics load it with ``AutoModelForSequenceClassification``; a causal-LM
    checkpoint would load with a fresh random head and score noise, so it is refused here. When the
    checkpoint ships a tokenizer, every token of the policy's vocabulary (its pad token aside) must
    have the same id in it: the score model reads the policy's sequences as they are.
    """
    check_remote_code(spec.name_or_path, spec.trust_remote_code, key=spec.trust_remote_code_key,
                      revision=spec.revision)
    config = AutoConfig.from_pretrained(spec.name_or_path, revision=spec.revision,
                                        trust_remote_code=spec.trust_remote_code)
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
        own = load_tokenizer(spec.name_or_path, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
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


def policy_tokenizer(hub: HubSettings) -> PreTrainedTokenizerBase:
    """Step 2: the policy's tokenizer, with a pad token distinct from EOS."""
    tokenizer = load_tokenizer(hub.policy, revision=hub.revision, trust_remote_code=hub.trust_remote_code)
    ensure_pad_token(tokenizer)
    return tokenizer


def load_training_pairs(hub: HubSettings) -> list[SafetyPreferencePair]:
    """Every pair of ``data.path`` (``data.train_split``), as loaded."""
    loaded = load_preference_dataset(hub.path, split=hub.train_split, revision=hub.data_revision)
    logger.info("%d pairs from %s (%s)", len(loaded.records), loaded.source, hub.train_split)
    return list(loaded.records)


def training_pairs(
    hub: HubSettings, tokenizer: PreTrainedTokenizerBase, pairs: list[SafetyPreferencePair] | None = None
) -> tuple[list[SafetyPreferencePair], int]:
    """The pairs of ``data.path`` (``data.train_split``; ``pairs`` when the caller has loaded them)
    whose formatted prompt leaves room for a response in ``data.max_length`` tokens, and how many
    were dropped for lack of it."""
    pairs = load_training_pairs(hub) if pairs is None else pairs
    if not pairs:
        raise ValueError(f"data.path: {hub.path!r} (split {hub.train_split!r}) holds no pairs")
    fits = _prompts_that_fit([pair.prompt for pair in pairs], hub, tokenizer)
    kept = [pair for pair in pairs if fits[pair.prompt]]
    if not kept:
        raise ValueError(
            f"data.max_length={hub.max_length}: every formatted prompt of {hub.path!r} fills it "
            "(no room for a response); raise data.max_length"
        )
    if len(kept) < len(pairs):
        logger.warning("%d of %d pairs dropped: their formatted prompt fills data.max_length=%d tokens",
                       len(pairs) - len(kept), len(pairs), hub.max_length)
    return kept, len(pairs) - len(kept)


def _prompts_that_fit(
    prompts: list[str], hub: HubSettings | TinySettings, tokenizer: PreTrainedTokenizerBase
) -> dict[str, bool]:
    """Whether each distinct prompt, formatted, leaves room for a response in ``data.max_length``."""
    distinct = sorted(set(prompts))
    formatted = [format_prompt(prompt, tokenizer, hub.template) for prompt in distinct]
    encoded = tokenizer(formatted, add_special_tokens=hub.template != "chat", return_attention_mask=False)
    return {prompt: len(ids) < hub.max_length for prompt, ids in zip(distinct, encoded["input_ids"], strict=True)}


def ptx_examples(hub: HubSettings | TinySettings, tokenizer: PreTrainedTokenizerBase) -> list[SFTExample]:
    """Step 5: the demonstrations of ``data.ptx_path`` (``data.ptx_split``, ``data.ptx_revision``)
    through the SFT loader (prompt/response columns, or Alpaca's), less those whose formatted
    prompt fills ``data.max_length`` (counted in a warning)."""
    check_ptx_path(hub, "the PPO stage")
    loaded = load_ptx_dataset(hub)
    examples = list(loaded.records)
    if not examples:
        raise ValueError(f"data.ptx_path: {hub.ptx_path!r} (split {hub.ptx_split!r}) holds no demonstrations")
    fits = _prompts_that_fit([example.prompt for example in examples], hub, tokenizer)
    kept = [example for example in examples if fits[example.prompt]]
    if not kept:
        raise ValueError(f"data.max_length={hub.max_length}: every formatted prompt of data.ptx_path={hub.ptx_path!r} "
                         "fills it (no room for a response); raise data.max_length")
    if len(kept) < len(examples):
        logger.warning("%d of %d PTX demonstrations dropped: their formatted prompt fills data.max_length=%d tokens",
                       len(examples) - len(kept), len(examples), hub.max_length)
    logger.info("%d PTX demonstrations from %s (%s)", len(kept), loaded.source, hub.ptx_split)
    return kept


def training_prompts(hub: HubSettings) -> list[str]:
    """The distinct prompts of ``data.path`` (``data.train_split``), in data order."""
    loaded = load_prompt_dataset(hub.path, split=hub.train_split, revision=hub.data_revision, deduplicate=True)
    prompts = [record.prompt for record in loaded.records]
    if not prompts:
        raise ValueError(f"data.path: {hub.path!r} (split {hub.train_split!r}) holds no prompts")
    logger.info("%d distinct prompts from %s (%s)", len(prompts), loaded.source, hub.train_split)
    return prompts


def build(hub: HubSettings, resources: Resources, output: RunOutput, needs: Needs, learner: str) -> Setup:
    """Steps 1–5 of the module docstring (only what ``needs`` asks for); returns the hub setup.

    ``resources`` and ``output`` are unused (a hub setup trains nothing of its own); they keep the
    signature every setup shares.
    """
    del resources, output
    # 1. Preflight.
    budget = preflight(hub, needs, learner)
    # 2. The tokenizer.
    tokenizer = policy_tokenizer(hub)
    policy = hub.model_spec(hub.policy)
    # 3. The score models read the policy's token ids.
    reward = cost = None
    if needs.scorers or needs.critics:
        reward, cost = hub.model_spec(hub.reward_model), hub.model_spec(hub.cost_model)
        require_score_model("model.reward_model", reward, tokenizer, learner=learner)
        require_score_model("model.cost_model", cost, tokenizer, learner=learner)
    # 4. Prompts and pairs; 5. the PTX set.
    pairs, dropped = training_pairs(hub, tokenizer) if needs.pairs else ([], 0)
    ptx = ptx_examples(hub, tokenizer) if needs.ptx else []
    return Setup(
        name="hub",
        policy=policy,
        tokenizer=tokenizer,
        template=hub.template,
        max_length=hub.max_length,
        max_prompt_length=budget,
        generation=hub.generation,
        prompts=training_prompts(hub) if needs.prompts else [],
        pairs=pairs,
        num_dropped_pairs=dropped,
        pairs_source=f"data.path={hub.path!r}",
        ptx=ptx,
        ptx_source=f"data.ptx_path={hub.ptx_path!r}",
        reward=ModelScorerSource(reward, "reward") if needs.scorers else None,
        costs=(ModelScorerSource(cost, "cost"),) if needs.scorers else (),
        # The critics load the score models as their weights, so the hub revision applies to them too.
        reward_critic=CriticStart(reward) if needs.critics else None,
        cost_critics=(CriticStart(cost),) if needs.critics else (),
        evaluator=None,
        rows_per_call=hub.rows_per_call,
    )
