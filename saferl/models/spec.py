"""Plain descriptions of the models saferl builds (no Hydra, no torch modules).

The config layer (``conf/`` + ``saferl/cli.py``) turns its ``model`` group into these frozen
dataclasses; the builders in :mod:`saferl.models.builders` turn them into ``torch.nn.Module`` s.

A :class:`ModelSpec` names exactly one weight source:

* ``name_or_path``: a Hugging Face hub name or a local folder written by ``save_pretrained``;
* ``tiny``: a small causal LM built in code from a :class:`TinyModelConfig` (tests and the
  built-in task; no download).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saferl.runtime.specs import DTYPE_NAMES

__all__ = [
    "DTYPES",
    "TINY_ARCHITECTURES",
    "TRUST_REMOTE_CODE_KEY",
    "LoraSpec",
    "ModelSpec",
    "TinyModelConfig",
    "torch_dtype",
]

#: Accepted ``ModelSpec.dtype`` strings and the torch dtypes they name.
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}

#: Architectures a :class:`TinyModelConfig` can build.
TINY_ARCHITECTURES: tuple[str, ...] = ("llama", "gpt2")

#: The config key that lets the policy, reference, score models and critics run checkpoint code.
TRUST_REMOTE_CODE_KEY = "model.trust_remote_code"


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype named by one of the :data:`DTYPES` strings.

    Raises:
        ValueError: when ``name`` is not one of ``"float32"``, ``"bfloat16"``, ``"float16"``.
    """
    if name not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _require_positive(owner: str, **values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{owner}.{key} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class TinyModelConfig:
    """A small causal LM built in code (Hugging Face ``LlamaConfig`` or ``GPT2Config``).

    Used by the tests and by the built-in task, where no checkpoint can be downloaded. The
    embedding matrix is grown to the tokenizer's length when the tokenizer is longer (e.g. after
    a ``<pad>`` token was added), so ``vocab_size`` may be the tokenizer's size before that.

    Attributes:
        vocab_size: rows of the token embedding matrix.
        hidden_size: model width ``d``; must be divisible by ``num_heads``.
        num_layers: transformer blocks.
        num_heads: attention heads (Llama: also the number of key/value heads).
        intermediate_size: width of the MLP.
        max_position_embeddings: longest sequence the model accepts (GPT-2 learns these).
        architecture: ``"llama"`` (default) or ``"gpt2"``.
    """

    vocab_size: int
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 128
    architecture: str = "llama"

    def __post_init__(self) -> None:
        _require_positive(
            "model.tiny",
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
        )
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                "model.tiny.hidden_size must be divisible by model.tiny.num_heads, got "
                f"hidden_size={self.hidden_size}, num_heads={self.num_heads}"
            )
        if self.architecture not in TINY_ARCHITECTURES:
            raise ValueError(
                f"model.tiny.architecture must be one of {list(TINY_ARCHITECTURES)}, "
                f"got {self.architecture!r}"
            )


@dataclass(frozen=True)
class LoraSpec:
    """Low-rank adapters (peft ``LoraConfig``) on the built model.

    Attributes:
        r: adapter rank.
        alpha: scaling numerator; the update is ``(alpha / r) · B A``.
        dropout: dropout on the adapter input, in ``[0, 1)``.
        target_modules: module names to adapt; ``None`` lets peft pick its default for the
            architecture (Llama: ``q_proj``, ``v_proj``; GPT-2: ``c_attn``).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        _require_positive("model.lora", r=self.r)
        if not self.alpha > 0:
            raise ValueError(f"model.lora.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout!r}")
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):
                raise ValueError(
                    "model.lora.target_modules must be a list of module names, got the string "
                    f"{self.target_modules!r}"
                )
            # Frozen dataclass: normalise a list from the config layer to a hashable tuple.
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
            if not self.target_modules:
                raise ValueError("model.lora.target_modules must be None or non-empty, got []")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's weights come from and how to load them.

    Exactly one of ``name_or_path`` and ``tiny`` must be set.

    Attributes:
        name_or_path: hub name (e.g. ``"PKU-Alignment/alpaca-7b-reproduced"``) or local folder.
        tiny: a small causal LM built in code instead of loaded.
        revision: hub revision (branch, tag or commit) of ``name_or_path``; pin it for
            reproducible runs. Ignored for local folders and ``tiny``.
        trust_remote_code: allow the checkpoint's own Python code to run. Off by default:
            it executes code downloaded with the weights.
        trust_remote_code_key: the config key that sets ``trust_remote_code``, named when a
            checkpoint that needs its own code is refused (a judge's own key, for example);
            None when no setting allows it.
        dtype: parameter dtype, one of ``"float32"``, ``"bfloat16"``, ``"float16"``.
        lora: wrap the model in LoRA adapters (only the adapters train) when set.
    """

    name_or_path: str | None = None
    tiny: TinyModelConfig | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: str = "float32"
    lora: LoraSpec | None = None
    trust_remote_code_key: str | None = TRUST_REMOTE_CODE_KEY

    def __post_init__(self) -> None:
        if (self.name_or_path is None) == (self.tiny is None):
            found = "both are set" if self.tiny is not None else "neither is set"
            raise ValueError(
                "model: set exactly one of model.name_or_path (hub name or local folder) and "
                f"model.tiny (a TinyModelConfig built in code); {found}"
            )
        if self.name_or_path is not None and not self.name_or_path.strip():
            raise ValueError("model.name_or_path must be a hub name or a folder, got ''")
        if self.tiny is not None and not isinstance(self.tiny, TinyModelConfig):
            raise ValueError(
                f"model.tiny must be a TinyModelConfig, got {type(self.tiny).__name__}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.lora is not None and not isinstance(self.lora, LoraSpec):
            raise ValueError(
                f"model.lora must be a LoraSpec or None, got {type(self.lora).__name__}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of ``self.dtype``."""
        return DTYPES[self.dtype]
