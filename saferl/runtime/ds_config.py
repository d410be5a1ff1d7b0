"""Rendering a :class:`~saferl.runtime.specs.DeepSpeedSpec` into DeepSpeed's JSON config.

The keys are DeepSpeed's own (https://www.deepspeed.ai/docs/config-json/):

* batch: ``train_batch_size``, ``train_micro_batch_size_per_gpu``, ``gradient_accumulation_steps``
  (DeepSpeed checks ``train_batch_size == micro * accumulation * world_size``);
* ``gradient_clipping``;
* precision: ``bf16.enabled`` or ``fp16.enabled`` (``loss_scale: 0`` = dynamic loss scaling);
  neither for fp32;
* ``zero_optimization``: ``stage``, ``offload_optimizer.device``, ``offload_param.device``,
  ``stage3_gather_16bit_weights_on_model_save``, and ``contiguous_gradients: false`` for CPU
  training engines at stages 1–2 (see :func:`_zero_section`);
* ``optimizer``: ``{"type": "AdamW", "params": {lr, betas, eps, weight_decay, torch_adam}}``;
  ``torch_adam: true`` makes DeepSpeed build ``torch.optim.AdamW`` instead of its compiled
  CPU/fused Adam ops (no JIT build); see :func:`use_torch_adam`;
* no ``scheduler`` section: the learning-rate schedule is a Hugging Face schedule handed to
  ``deepspeed.initialize(lr_scheduler=...)`` (:func:`lr_scheduler_factory`, which says why).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from saferl.runtime.specs import DeepSpeedSpec

__all__ = [
    "deepspeed_config",
    "deepspeed_inference_config",
    "lr_scheduler_factory",
    "resolve_precision",
    "use_torch_adam",
]

_DEVICES = ("cpu", "cuda")


def _check_device(device: str) -> None:
    if device not in _DEVICES:
        raise ValueError(f"device must be one of {list(_DEVICES)}, got {device!r}")


def resolve_precision(spec: DeepSpeedSpec, device: str) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``: ``"auto"`` is bf16 on ``cuda`` and fp32 on ``cpu``.

    Raises:
        ValueError: fp16 requested on CPU (DeepSpeed's CPU accelerator has no fp16 training).
    """
    _check_device(device)
    if spec.precision == "auto":
        return "bf16" if device == "cuda" else "fp32"
    if spec.precision == "fp16" and device == "cpu":
        raise ValueError(
            "deepspeed.precision='fp16' is not supported on CPU ranks; use 'fp32', 'bf16' or 'auto'"
        )
    return spec.precision


def _prebuilt_ops() -> dict[str, bool]:
    """DeepSpeed ops compiled at install time (``DS_BUILD_*``); the rest would be JIT-built."""
    try:
        from deepspeed.git_version_info import installed_ops
    except ImportError:  # pragma: no cover - deepspeed always ships this module
        return {}
    return dict(installed_ops)


def use_torch_adam(spec: DeepSpeedSpec, device: str) -> bool:
    """Whether the engine runs ``torch.optim.AdamW`` (``torch_adam: true``) instead of
    DeepSpeed's compiled Adam (``DeepSpeedCPUAdam`` when offloading, ``FusedAdam`` on GPU).

    ``optimizer_impl="auto"`` picks DeepSpeed's op only when it was pre-built, so no run ever
    waits for a JIT compilation it did not ask for; on CPU ranks without offload it is always
    torch's AdamW. ``"deepspeed"`` always uses DeepSpeed's op (JIT-built when not pre-built).
    """
    _check_device(device)
    if spec.optimizer_impl != "auto":
        return spec.optimizer_impl == "torch"
    if device == "cpu" and not spec.offload_optimizer:
        return True
    op = "cpu_adam" if spec.offload_optimizer else "fused_adam"
    return not _prebuilt_ops().get(op, False)


def lr_scheduler_factory(spec: DeepSpeedSpec) -> Callable[[Any], Any]:
    """``optimizer -> scheduler`` for ``deepspeed.initialize(lr_scheduler=...)``.

    The schedules are Hugging Face's (``transformers.get_scheduler``), the ones the published
    Safe RLHF code passes to DeepSpeed: optimizer step ``k`` (0-based) uses
    ``lr * k / warmup_steps`` during warmup, then ``lr`` (constant), ``lr * (T - k) / (T - w)``
    (linear) or ``lr * (1 + cos(pi (k - w) / (T - w))) / 2`` (cosine), ``T = total_steps``.
    DeepSpeed steps the scheduler after every optimizer step.

    DeepSpeed's own ``scheduler`` config section is not used: its warmup schedulers
    (``WarmupLR``, ``WarmupCosineLR``, ``WarmupDecayLR``) run the first two optimizer steps at the
    minimum learning rate and stretch warmups shorter than two steps.
    """
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}[
        spec.scheduler
    ]

    def build(optimizer: Any) -> Any:
        return get_scheduler(
            name,
            optimizer=optimizer,
            num_warmup_steps=spec.warmup_steps,
            num_training_steps=spec.total_steps,
        )

    return build


def _precision_sections(precision: str) -> dict[str, Any]:
    if precision == "bf16":
        return {"bf16": {"enabled": True}}
    if precision == "fp16":
        return {
            "fp16": {
                "enabled": True,
                "loss_scale": 0,
                "initial_scale_power": 16,
                "loss_scale_window": 1000,
                "hysteresis": 2,
                "min_loss_scale": 1,
            }
        }
    return {}


def _zero_section(spec: DeepSpeedSpec, stage: int, with_optimizer: bool, device: str) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": stage}
    if with_optimizer and device == "cpu" and stage in (1, 2):
        # DeepSpeed's default copies every gradient into one contiguous buffer as backward makes
        # it, which keeps GPU memory from fragmenting. On CPU there is no such fragmentation to
        # avoid, and the copy is about a tenth of a small model's step (tiny world Llama, one
        # rank: 6.35 → 5.6 ms); the gradients, and so the steps, are the same.
        zero["contiguous_gradients"] = False
    if with_optimizer and spec.offload_optimizer and stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if spec.offload_params and stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        # save_16bit_model / consolidated state dicts gather the full weights on rank 0
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return zero


def _batch_sections(spec: DeepSpeedSpec, world_size: int) -> dict[str, Any]:
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return {
        "train_batch_size": spec.train_batch_size(world_size),
        "train_micro_batch_size_per_gpu": spec.micro_batch_size_per_rank,
        "gradient_accumulation_steps": spec.gradient_accumulation_steps,
    }


def deepspeed_config(spec: DeepSpeedSpec, world_size: int, device: str) -> dict[str, Any]:
    """The DeepSpeed config of a **training** engine (policy, critics).

    Args:
        spec: the role's engine description.
        world_size: ranks of the role's group.
        device: ``"cpu"`` or ``"cuda"`` (decides ``precision="auto"`` and the Adam implementation).

    Returns:
        A dict for ``deepspeed.initialize(config=...)``.
    """
    precision = resolve_precision(spec, device)
    torch_adam = use_torch_adam(spec, device)
    config: dict[str, Any] = {
        **_batch_sections(spec, world_size),
        "gradient_clipping": float(spec.gradient_clipping),
        **_precision_sections(precision),
        "zero_optimization": _zero_section(spec, spec.zero_stage, with_optimizer=True, device=device),
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": spec.learning_rate,
                "betas": list(spec.adam_betas),
                "eps": spec.adam_eps,
                "weight_decay": spec.weight_decay,
                "torch_adam": torch_adam,
            },
        },
        "steps_per_print": 10**9,  # saferl logs its own metrics
        "wall_clock_breakdown": False,
    }
    if torch_adam and spec.offload_optimizer:
        # An offloaded torch AdamW runs on the CPU copies; DeepSpeed refuses it unless told.
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def deepspeed_inference_config(spec: DeepSpeedSpec, world_size: int, device: str) -> dict[str, Any]:
    """The DeepSpeed config of an **inference** engine (reference, reward and cost models).

    No optimizer and no scheduler. ZeRO stage 3 (parameters partitioned across the ranks,
    gathered layer by layer during the forward) when ``spec.zero_stage == 3``, else stage 0
    (stages 1 and 2 only partition optimizer state and gradients, which inference has none of).
    """
    precision = resolve_precision(spec, device)
    stage = 3 if spec.zero_stage == 3 else 0
    return {
        **_batch_sections(spec, world_size),
        **_precision_sections(precision),
        "zero_optimization": _zero_section(spec, stage, with_optimizer=False, device=device),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
