"""DeepSpeed engines around saferl's models (used inside the rank actors).

Each role's model is wrapped in a small ``nn.Module`` whose ``forward`` returns exactly what the
role computes (token log-probs, end scores or values), and the wrapper is handed to
``deepspeed.initialize``. Every forward therefore runs through ``DeepSpeedEngine.forward`` (ZeRO-3
parameter gathering, autocast and the hooks ``engine.backward`` relies on), and the pure helpers
of :mod:`saferl.models.scoring` stay the single definition of those quantities.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from saferl.models import critic_values, end_scores, policy_token_logprobs
from saferl.runtime.ds_config import (
    deepspeed_config,
    deepspeed_inference_config,
    lr_scheduler_factory,
)
from saferl.runtime.specs import DeepSpeedSpec

__all__ = [
    "EndScoresModule",
    "TokenLogprobsModule",
    "ValuesModule",
    "build_inference_engine",
    "build_train_engine",
    "full_state_dict",
    "gathered_parameters",
    "is_zero3",
    "load_full_state_dict",
    "weight_decay_groups",
]


class TokenLogprobsModule(nn.Module):
    """``forward(input_ids, attention_mask) -> (batch, seq_len)`` token log-probs of a causal LM
    (:func:`saferl.models.policy_token_logprobs`: position ``t`` holds ``log p(x_t | x_<t)``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return policy_token_logprobs(self.model, input_ids, attention_mask)


class EndScoresModule(nn.Module):
    """``forward(input_ids, attention_mask) -> (batch, m)`` score-model outputs at each row's last
    real token (:func:`saferl.models.end_scores`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return end_scores(self.model, input_ids, attention_mask)


class ValuesModule(nn.Module):
    """``forward(input_ids, attention_mask) -> (batch, seq_len)`` critic values ``V_t``
    (:func:`saferl.models.critic_values`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return critic_values(self.model, input_ids, attention_mask)


def weight_decay_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: decay on matrices, none on biases and norm weights (1-d tensors).

    Only trainable parameters are included (LoRA freezes the base weights).
    """
    decay, no_decay = [], []
    for param in module.parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_train_engine(module: nn.Module, spec: DeepSpeedSpec, world_size: int, device: str) -> Any:
    """A DeepSpeed training engine (optimizer from :func:`deepspeed_config`, learning-rate
    schedule from :func:`lr_scheduler_factory`).

    Must run after :func:`saferl.runtime.distributed.init_process_group` on every rank.

    Returns:
        The ``deepspeed.DeepSpeedEngine``.
    """
    import deepspeed

    config = deepspeed_config(spec, world_size, device)
    engine, *_ = deepspeed.initialize(
        model=module,
        model_parameters=weight_decay_groups(module, spec.weight_decay),
        lr_scheduler=lr_scheduler_factory(spec),
        config=config,
    )
    return engine


def build_inference_engine(
    module: nn.Module, spec: DeepSpeedSpec, world_size: int, device: str
) -> Any:
    """A DeepSpeed engine without optimizer (:func:`deepspeed_inference_config`), in eval mode,
    parameters frozen. Under ZeRO-3 the parameters are partitioned across the ranks."""
    import deepspeed

    module.requires_grad_(False)
    module.eval()
    config = deepspeed_inference_config(spec, world_size, device)
    engine, *_ = deepspeed.initialize(model=module, config=config)
    engine.eval()
    return engine


def is_zero3(engine: Any) -> bool:
    """Whether the engine partitions parameters (ZeRO stage 3)."""
    return bool(engine.zero_optimization_partition_weights())


@contextlib.contextmanager
def gathered_parameters(engine: Any, modifier_rank: int | None = None) -> Iterator[None]:
    """Inside the block every rank holds the full parameters of ``engine.module``.

    Under ZeRO-3 this is ``deepspeed.zero.GatheredParameters`` over all parameters, a collective:
    **every rank must enter it**. With ``modifier_rank=r`` the changes rank ``r`` makes inside the
    block are re-partitioned to all ranks on exit. Outside ZeRO-3 it does nothing.
    """
    if not is_zero3(engine):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(
        list(engine.module.parameters()), modifier_rank=modifier_rank
    ):
        yield


def full_state_dict(engine: Any, keep: bool = True) -> dict[str, torch.Tensor]:
    """CPU copy of the full state dict of the wrapped model (``engine.module.model``).

    A collective under ZeRO-3: call it on every rank; ranks that pass ``keep=False`` take part
    in the gathering but copy nothing and get an empty dict. Keys are the Hugging Face model's own.
    """
    model = engine.module.model
    if not keep and not is_zero3(engine):
        return {}
    with gathered_parameters(engine):
        if not keep:
            return {}
        return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}


def load_full_state_dict(engine: Any, state: dict[str, torch.Tensor], source_rank: int = 0) -> None:
    """Copy full weights into the wrapped model: rank ``source_rank``'s ``state`` wins.

    Outside ZeRO-3 every rank copies its own ``state`` (pass the same on all ranks). Under
    ZeRO-3 only ``source_rank`` copies (others may pass an empty dict) and DeepSpeed
    re-partitions on exit. A collective under ZeRO-3.
    """
    model = engine.module.model
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    with gathered_parameters(engine, modifier_rank=source_rank), torch.no_grad():
        if not is_zero3(engine) or rank == source_rank:
            model.load_state_dict(state, strict=True)
