"""Building policies, score models and critics from a :class:`~saferl.models.spec.ModelSpec`.

Every builder

1. loads the weights (hub name or local folder through the ``Auto*`` classes, or a tiny model
   built from a :class:`~saferl.models.spec.TinyModelConfig`), passing ``revision`` and
   ``trust_remote_code`` (False unless the spec says otherwise) through;
2. grows the token embeddings when the tokenizer is longer than them (e.g. ``<pad>`` was just
   added by :func:`~saferl.models.tokenizers.ensure_pad_token`);
3. copies the tokenizer's pad/EOS/BOS ids into the model config (and generation config);
4. wraps the model in peft LoRA adapters when ``spec.lora`` is set.

Score models (docs/algorithms.md §3) are the standard Hugging Face ``AutoModelForSequenceClassification``
of the causal-LM family (e.g. ``LlamaForSequenceClassification``): backbone without the LM head
plus a bias-free linear head ``score: hidden -> m``. A saved one therefore loads in plain
transformers code. Read its outputs with :mod:`saferl.models.scoring`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from saferl.models.metadata import set_score_metadata
from saferl.models.safe_rlhf_format import is_safe_rlhf_score_config, load_safe_rlhf_score_model
from saferl.models.scoring import score_head, unwrap_model
from saferl.models.spec import LoraSpec, ModelSpec, TinyModelConfig
from saferl.models.untrusted import check_remote_code

__all__ = [
    "build_critic",
    "build_policy",
    "build_score_model",
    "default_head_init_std",
    "init_score_head_",
    "tiny_transformers_config",
]


def tiny_transformers_config(
    tiny: TinyModelConfig, num_labels: int | None = None
) -> PretrainedConfig:
    """The transformers config of a tiny in-code model.

    Args:
        tiny: the sizes and architecture.
        num_labels: number of score-head outputs ``m`` for a sequence-classification model;
            None for a causal LM.

    Returns:
        A ``LlamaConfig`` (untied embeddings, ``num_key_value_heads = num_heads``) or a
        ``GPT2Config``. Token ids are left unset; the builders copy them from the tokenizer.
    """
    label_kwargs = {} if num_labels is None else {"num_labels": num_labels}
    if tiny.architecture == "llama":
        return LlamaConfig(
            vocab_size=tiny.vocab_size,
            hidden_size=tiny.hidden_size,
            num_hidden_layers=tiny.num_layers,
            num_attention_heads=tiny.num_heads,
            num_key_value_heads=tiny.num_heads,
            intermediate_size=tiny.intermediate_size,
            max_position_embeddings=tiny.max_position_embeddings,
            tie_word_embeddings=False,
            pad_token_id=None,
            bos_token_id=None,
            eos_token_id=None,
            **label_kwargs,
        )
    if tiny.architecture == "gpt2":
        return GPT2Config(
            vocab_size=tiny.vocab_size,
            n_embd=tiny.hidden_size,
            n_layer=tiny.num_layers,
            n_head=tiny.num_heads,
            n_inner=tiny.intermediate_size,
            n_positions=tiny.max_position_embeddings,
            pad_token_id=None,
            bos_token_id=None,
            eos_token_id=None,
            **label_kwargs,
        )
    raise ValueError(f"model.tiny.architecture {tiny.architecture!r} is not supported")


def _require_distinct_pad(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(
            "the tokenizer needs a pad token distinct from EOS (found pad id "
            f"{tokenizer.pad_token_id}, EOS id {tokenizer.eos_token_id}); call "
            "saferl.models.ensure_pad_token(tokenizer) before building models"
        )


def _match_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow embeddings to the tokenizer's length and copy its special-token ids (in place)."""
    num_embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > num_embeddings:
        # New rows start at the mean of the old ones (transformers' mean_resizing), which keeps
        # a causal LM's next-token distribution close to the original.
        model.resize_token_embeddings(len(tokenizer))
    token_ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    configs = [model.config, model.config.get_text_config()]
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and model.can_generate():
        configs.append(generation_config)
    for config in configs:
        for key, value in token_ids.items():
            if value is not None:  # keep the checkpoint's id where the tokenizer has none
                setattr(config, key, value)


def _apply_lora(model: PreTrainedModel, lora: LoraSpec, task_type: str) -> nn.Module:
    """Wrap ``model`` in LoRA adapters; only the adapters (and, for SEQ_CLS, the head) train."""
    from peft import LoraConfig, TaskType, get_peft_model  # imported only when LoRA is asked for

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=None if lora.target_modules is None else list(lora.target_modules),
        task_type=TaskType[task_type],
    )
    return get_peft_model(model, config)


def _refuse_untrusted_code(spec: ModelSpec, source: str, revision: str | None) -> None:
    """Before ``source`` loads: refuse a checkpoint needing its own code (names the spec's key)."""
    check_remote_code(source, spec.trust_remote_code, key=spec.trust_remote_code_key, revision=revision)


def _pretrained_kwargs(spec: ModelSpec) -> dict[str, object]:
    return {
        "revision": spec.revision,
        "trust_remote_code": spec.trust_remote_code,
        "dtype": spec.torch_dtype,
    }


def build_policy(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
    """A causal LM for the policy or the reference model.

    Args:
        spec: weight source, dtype, LoRA.
        tokenizer: with a pad token distinct from EOS (see ``ensure_pad_token``).

    Returns:
        A ``PreTrainedModel`` (``AutoModelForCausalLM``), or a peft ``PeftModel`` around one when
        ``spec.lora`` is set. The train/eval mode is left as built (``from_pretrained``
        returns eval mode, ``from_config`` train mode); callers set the mode they need.
    """
    _require_distinct_pad(tokenizer)
    if spec.tiny is not None:
        config = tiny_transformers_config(spec.tiny)
        model = AutoModelForCausalLM.from_config(config, dtype=spec.torch_dtype)
    else:
        _refuse_untrusted_code(spec, spec.name_or_path, spec.revision)
        model = AutoModelForCausalLM.from_pretrained(spec.name_or_path, **_pretrained_kwargs(spec))
    _match_tokenizer(model, tokenizer)
    if spec.lora is not None:
        return _apply_lora(model, spec.lora, "CAUSAL_LM")
    return model


def default_head_init_std(hidden_size: int) -> float:
    """Default std of a fresh score head: ``1 / (hidden_size + 1)``.

    Small on purpose (as in OpenRLHF's value/reward heads; Stiennon et al. 2020 use a
    variance of ``1/(d+1)``): with final-norm hidden states of norm about ``sqrt(d)``, initial
    scores are about ``1/sqrt(d)``, so Bradley–Terry losses start near ``log 2`` and a fresh
    critic's values start near 0 instead of adding O(1) noise to the first advantages.
    """
    return 1.0 / (hidden_size + 1)


def init_score_head_(model: nn.Module, std: float | None = None) -> None:
    """Re-initialise the score head in place: weights ``N(0, std²)``, no bias.

    Args:
        model: a score model, optionally LoRA-wrapped.
        std: standard deviation; None uses :func:`default_head_init_std` of the head's width.
    """
    head = score_head(model)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"expected an nn.Linear score head, found {type(head).__name__}")
    if head.bias is not None:
        raise ValueError("the score head must have no bias (docs/algorithms.md §3)")
    if std is None:
        std = default_head_init_std(head.in_features)
    if not (std > 0 and math.isfinite(std)):
        raise ValueError(f"score head init std must be positive and finite, got {std!r}")
    with torch.no_grad():
        head.weight.normal_(mean=0.0, std=std)


def _head_param_prefix(model: PreTrainedModel) -> str:
    head = score_head(model)
    for name, module in model.named_modules():
        if module is head:
            return f"{name}."
    raise TypeError("score head not found among the model's modules")


def _is_sequence_classification(config: PretrainedConfig) -> bool:
    return any(arch.endswith("ForSequenceClassification") for arch in config.architectures or [])


def _load_score_model(
    spec: ModelSpec, source: str, num_outputs: int | None, revision: str | None
) -> tuple[PreTrainedModel, bool]:
    """Load a sequence-classification model from ``source``; return it and whether its head
    came from the checkpoint (False: freshly initialised over a causal-LM backbone)."""
    _refuse_untrusted_code(spec, source, revision)
    config = AutoConfig.from_pretrained(
        source, revision=revision, trust_remote_code=spec.trust_remote_code
    )
    if is_safe_rlhf_score_config(config):
        # A safe-rlhf ``*ForScore`` checkpoint (e.g. the Beaver-7B-v1.0 reward and cost models):
        # loaded as the same ``*ForSequenceClassification``, head included, or refused.
        model = load_safe_rlhf_score_model(
            source,
            revision=revision,
            dtype=spec.torch_dtype,
            trust_remote_code=spec.trust_remote_code,
            num_outputs=num_outputs,
            config=config,
        )
        return model, True
    kwargs = _pretrained_kwargs(spec) | {"revision": revision, "output_loading_info": True}
    if _is_sequence_classification(config):
        if num_outputs is not None and config.num_labels != num_outputs:
            raise ValueError(
                f"{source} is a score model with {config.num_labels} outputs, but "
                f"{num_outputs} were requested (num_outputs)"
            )
    else:
        kwargs["num_labels"] = num_outputs if num_outputs is not None else 1
    model, loading_info = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    prefix = _head_param_prefix(model)
    head_missing = any(key.startswith(prefix) for key in loading_info["missing_keys"])
    backbone_missing = [k for k in loading_info["missing_keys"] if not k.startswith(prefix)]
    if backbone_missing:
        raise ValueError(
            f"{source} lacks backbone weights for a score model of its architecture: "
            f"{sorted(backbone_missing)[:5]}"
        )
    return model, not head_missing


def build_score_model(
    spec: ModelSpec,
    tokenizer: PreTrainedTokenizerBase,
    num_outputs: int = 1,
    head_init_std: float | None = None,
) -> nn.Module:
    """A reward or cost model: causal-LM backbone + bias-free linear head ``hidden -> m``.

    Args:
        spec: weight source. A hub/local causal-LM checkpoint gives the backbone and a freshly
            initialised head; an existing sequence-classification checkpoint, or a safe-rlhf
            ``*ForScore`` one (:mod:`saferl.models.safe_rlhf_format`), gives both (its number of
            outputs must equal ``num_outputs``). ``tiny`` builds everything fresh.
        tokenizer: with a pad token distinct from EOS (see ``ensure_pad_token``).
        num_outputs: ``m``, 1 for a reward model or a single cost, more for several costs.
        head_init_std: std of a fresh head (None: :func:`default_head_init_std`).

    Returns:
        An ``AutoModelForSequenceClassification`` model with ``config.num_labels == m`` and
        ``config.pad_token_id`` set (so plain transformers reads the same end score), or a peft
        ``PeftModel`` (task SEQ_CLS: LoRA adapters plus a trainable head) when ``spec.lora`` is set.
    """
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be at least 1, got {num_outputs}")
    _require_distinct_pad(tokenizer)
    if spec.tiny is not None:
        config = tiny_transformers_config(spec.tiny, num_labels=num_outputs)
        model = AutoModelForSequenceClassification.from_config(config, dtype=spec.torch_dtype)
        head_loaded = False
    else:
        model, head_loaded = _load_score_model(spec, spec.name_or_path, num_outputs, spec.revision)
    if not head_loaded:
        init_score_head_(model, head_init_std)
        set_score_metadata(model, "score", num_outputs)
    _match_tokenizer(model, tokenizer)
    if spec.lora is not None:
        return _apply_lora(model, spec.lora, "SEQ_CLS")
    return model


def _select_head_output(model: PreTrainedModel, index: int) -> None:
    """Keep one output row of an ``m``-output head (in place), making a one-output model."""
    base = unwrap_model(model)
    head = score_head(base)
    if not 0 <= index < head.out_features:
        raise ValueError(f"init_output_index must be in [0, {head.out_features}), got {index}")
    new_head = nn.Linear(
        head.in_features, 1, bias=False, device=head.weight.device, dtype=head.weight.dtype
    )
    with torch.no_grad():
        new_head.weight.copy_(head.weight[index : index + 1])
    for name, module in base.named_children():
        if module is head:
            setattr(base, name, new_head)
            break
    base.config.num_labels = 1
    base.num_labels = 1


def build_critic(
    spec: ModelSpec,
    tokenizer: PreTrainedTokenizerBase,
    init_from: str | None = None,
    init_output_index: int | None = None,
    value_scale: float = 1.0,
) -> nn.Module:
    """A value model: a one-output score model read at every position.

    Values are ``saferl.models.critic_values(critic, ids, mask)``, i.e.
    ``score_all_positions(...)[..., 0]``. Safe RLHF initialises the reward critic from the
    reward model and the cost critic from the cost model: pass the saved score model's folder
    (or hub name) as ``init_from`` and both backbone and head are copied from it.

    Args:
        spec: dtype, ``trust_remote_code`` and LoRA; also the weight source when ``init_from``
            is None (then the head is freshly initialised, see :func:`build_score_model`).
        tokenizer: with a pad token distinct from EOS.
        init_from: a saved score model (``save_score_model`` output, any transformers
            sequence-classification checkpoint, or a safe-rlhf ``*ForScore`` checkpoint) whose
            weights replace the spec's source.
        init_output_index: for an ``m > 1`` score model, which output row the critic keeps
            (e.g. the cost index this critic estimates). Required when ``m > 1``.
        value_scale: multiplies the loaded head's weights (with ``init_from``), so that the
            critic's first values are ``value_scale`` times the score model's: the scale of a
            calibration that maps the score model into the units of the rewards the critic will
            predict (the world's ground-truth units).

    Returns:
        A one-output ``AutoModelForSequenceClassification`` model (or LoRA ``PeftModel``),
        recorded as kind ``"critic"`` in its config.
    """
    _require_distinct_pad(tokenizer)
    if init_from is None:
        model = build_score_model(spec, tokenizer, num_outputs=1)
        set_score_metadata(model, "critic", 1)
        return model
    model, head_loaded = _load_score_model(spec, init_from, None, revision=None)
    if not head_loaded:
        raise ValueError(
            f"init_from={init_from!r} is not a score model (it has no trained score head); "
            "initialise critics from a saved reward or cost model"
        )
    num_labels = model.config.num_labels
    if num_labels != 1:
        if init_output_index is None:
            raise ValueError(
                f"init_from={init_from!r} has {num_labels} outputs; set init_output_index to "
                "the output this critic estimates"
            )
        _select_head_output(model, init_output_index)
    elif init_output_index not in (None, 0):
        raise ValueError(
            f"init_from={init_from!r} has one output; got init_output_index={init_output_index}"
        )
    if value_scale != 1.0:
        with torch.no_grad():
            score_head(unwrap_model(model)).weight.mul_(float(value_scale))
    set_score_metadata(model, "critic", 1)
    _match_tokenizer(model, tokenizer)
    if spec.lora is not None:
        return _apply_lora(model, spec.lora, "SEQ_CLS")
    return model
