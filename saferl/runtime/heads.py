"""Heads: the kind of model a rank holds, and what its forward computes.

A head is a small frozen dataclass sent to every rank of a group. It builds the model (on the
CPU, after the rank seeded torch), wraps it in the :mod:`saferl.runtime.engines` module whose
``forward(input_ids, attention_mask)`` returns the head's output, and saves the model in Hugging
Face format. The engine kind (trainable or inference) is the worker's business
(:mod:`saferl.runtime.workers`), so each head serves both.

=============  ======================================  ==========================================
head           forward returns                         Hugging Face export
=============  ======================================  ==========================================
PolicyHead     token log-probs ``(batch, seq_len)``    ``AutoModelForCausalLM`` (+ tokenizer)
ScoreHead      end scores ``(batch, m)``               ``AutoModelForSequenceClassification``
CriticHead     values ``(batch, seq_len)``             ``AutoModelForSequenceClassification``
=============  ======================================  ==========================================

Only a :class:`PolicyHead` generates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from torch import nn
from transformers import PreTrainedTokenizerBase

from saferl.models import (
    ModelSpec,
    build_critic,
    build_policy,
    build_score_model,
    save_policy,
    save_score_model,
)
from saferl.runtime.engines import EndScoresModule, TokenLogprobsModule, ValuesModule

__all__ = ["CriticHead", "Head", "PolicyHead", "ScoreHead"]


class Head(Protocol):
    """What a worker asks of its head."""

    tokenizer: PreTrainedTokenizerBase

    def build(self) -> nn.Module:
        """The Hugging Face model (or a peft model around one), freshly built on the CPU."""
        ...

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` inside the module whose ``forward(input_ids, attention_mask)`` is the head's
        output (what DeepSpeed wraps)."""
        ...

    def save(self, model: nn.Module, directory: str) -> Path:
        """``model`` and the tokenizer as a Hugging Face folder (overwriting); returns it."""
        ...


@dataclass(frozen=True)
class PolicyHead:
    """A causal LM: token log-probs ``(batch, seq_len)`` (position ``t``: ``log π(x_t | x_<t)``,
    0 at padding); generates.

    Attributes:
        model_spec: the weights (e.g. the SFT checkpoint).
        tokenizer: with a pad token distinct from EOS.
    """

    model_spec: ModelSpec
    tokenizer: PreTrainedTokenizerBase

    def build(self) -> nn.Module:
        return build_policy(self.model_spec, self.tokenizer)

    def wrap(self, model: nn.Module) -> nn.Module:
        return TokenLogprobsModule(model)

    def save(self, model: nn.Module, directory: str) -> Path:
        return save_policy(model, self.tokenizer, directory, overwrite=True)


@dataclass(frozen=True)
class ScoreHead:
    """A reward or cost model: ``(batch, m)`` scores at each row's last real token.

    Attributes:
        model_spec: the weights.
        tokenizer: with a pad token distinct from EOS.
        num_outputs: ``m``, the score head's outputs.
        kind: ``"reward"`` or ``"cost"``, recorded in the export (None keeps the model's).
    """

    model_spec: ModelSpec
    tokenizer: PreTrainedTokenizerBase
    num_outputs: int = 1
    kind: str | None = None

    def build(self) -> nn.Module:
        return build_score_model(self.model_spec, self.tokenizer, num_outputs=self.num_outputs)

    def wrap(self, model: nn.Module) -> nn.Module:
        return EndScoresModule(model)

    def save(self, model: nn.Module, directory: str) -> Path:
        return save_score_model(model, self.tokenizer, directory, kind=self.kind, overwrite=True)


@dataclass(frozen=True)
class CriticHead:
    """A reward or cost critic: a one-output score model read at every position, values
    ``V_t`` ``(batch, seq_len)``.

    Attributes:
        model_spec: the weights.
        tokenizer: with a pad token distinct from EOS.
        init_from: a saved score model to initialise from (Safe RLHF: the reward/cost model).
        init_output_index: which output of an ``m > 1`` score model this critic keeps.
        value_scale: multiplies the loaded head (``build_critic``): the critic starts in the
            calibrated units of the rewards it predicts.
    """

    model_spec: ModelSpec
    tokenizer: PreTrainedTokenizerBase
    init_from: str | None = None
    init_output_index: int | None = None
    value_scale: float = 1.0

    def build(self) -> nn.Module:
        return build_critic(
            self.model_spec,
            self.tokenizer,
            init_from=self.init_from,
            init_output_index=self.init_output_index,
            value_scale=self.value_scale,
        )

    def wrap(self, model: nn.Module) -> nn.Module:
        return ValuesModule(model)

    def save(self, model: nn.Module, directory: str) -> Path:
        return save_score_model(model, self.tokenizer, directory, kind="critic", overwrite=True)
