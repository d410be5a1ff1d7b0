"""Typed descriptions of the distributed runtime (no Hydra: the CLI layer builds these).

Five frozen dataclasses, validated on construction; an error names the dotted key to change:

* :class:`DeepSpeedSpec` (``deepspeed.*``): ZeRO stage, offload, precision, optimizer, schedule,
  batch geometry of one role's engine;
* :class:`GroupSpec` (``group.*``): how many ranks a role has, what each rank requests from Ray,
  and which role's bundles it shares;
* :class:`RuntimeSpec` (``runtime.*``): which Ray cluster to use, the collective backend, the
  placement strategy and the timeouts that turn a hang into an error;
* :class:`GenerationSpec` (``generation.*``): sampling parameters and the seed;
* :class:`VLLMSpec` (``runtime.vllm.*``): vLLM rollout engines for the PPO loop (GPU only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "BACKENDS",
    "DTYPE_NAMES",
    "OPTIMIZER_IMPLS",
    "PLACEMENT_STRATEGIES",
    "PRECISIONS",
    "SCHEDULERS",
    "DeepSpeedSpec",
    "GenerationSpec",
    "GroupSpec",
    "RuntimeSpec",
    "VLLMSpec",
]

#: ``DeepSpeedSpec.precision`` values; ``"auto"`` is bf16 on GPU and fp32 on CPU.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
#: ``ModelSpec.dtype`` (``model.dtype``) values: torch's own names, so checking one needs no torch.
DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
#: ``DeepSpeedSpec.scheduler`` values.
SCHEDULERS: tuple[str, ...] = ("constant", "cosine", "linear")
#: ``DeepSpeedSpec.optimizer_impl`` values (see :func:`saferl.runtime.deepspeed_config`).
OPTIMIZER_IMPLS: tuple[str, ...] = ("auto", "torch", "deepspeed")
#: ``RuntimeSpec.backend`` values; ``"auto"`` is nccl when ranks have GPUs, gloo otherwise.
BACKENDS: tuple[str, ...] = ("auto", "gloo", "nccl")
#: ``RuntimeSpec.placement_strategy`` values (Ray placement-group strategies).
PLACEMENT_STRATEGIES: tuple[str, ...] = ("PACK", "SPREAD", "STRICT_SPREAD")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require_int(key: str, value: object, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")


def _require_choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")


def _require_ray_quantity(key: str, value: object, maximum: float | None = None) -> None:
    """Ray accepts fractions up to 1 and whole numbers above 1."""
    if not _is_number(value) or value < 0:
        raise ValueError(f"{key} must be a non-negative number, got {value!r}")
    if value > 1 and float(value) != int(value):
        raise ValueError(f"{key} must be a fraction <= 1 or a whole number, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{key} must be at most {maximum}, got {value!r}")


@dataclass(frozen=True)
class DeepSpeedSpec:
    """One role's DeepSpeed engine (rendered by :func:`saferl.runtime.deepspeed_config`).

    A training step is one optimizer step on a **global batch** of
    ``micro_batch_size_per_rank * gradient_accumulation_steps * num_ranks`` rows (DeepSpeed's
    ``train_batch_size``): each rank gets an equal contiguous shard and runs
    ``gradient_accumulation_steps`` micro-batches of ``micro_batch_size_per_rank`` rows.

    Attributes:
        zero_stage: ZeRO stage 0 (plain data parallel), 1 (optimizer states partitioned),
            2 (+ gradients) or 3 (+ parameters). Inference engines use stage 3 when this is 3 and
            stage 0 otherwise (there is no optimizer state to partition).
        offload_optimizer: keep optimizer states (and the fp32 master weights) in CPU memory
            (ZeRO 1-3).
        offload_params: keep parameters in CPU memory between uses (ZeRO 3 only).
        precision: ``"auto"`` (bf16 on GPU, fp32 on CPU), ``"fp32"``, ``"bf16"`` or ``"fp16"``
            (dynamic loss scaling).
        gradient_clipping: global gradient-norm clip; 0 disables it.
        learning_rate: peak learning rate of AdamW.
        weight_decay: decoupled weight decay (not applied to biases and norm weights).
        adam_betas: AdamW ``(beta1, beta2)``.
        adam_eps: AdamW epsilon.
        scheduler: ``"constant"``, ``"cosine"`` (to 0) or ``"linear"`` (to 0), after a linear
            warmup of ``warmup_steps`` steps from 0 (Hugging Face's schedules, see
            :func:`saferl.runtime.ds_config.lr_scheduler_factory`).
        warmup_steps: optimizer steps of linear warmup (0: none).
        total_steps: optimizer steps of the whole run; required by ``cosine`` and ``linear``.
        micro_batch_size_per_rank: rows per forward/backward on one rank.
        gradient_accumulation_steps: micro-batches per optimizer step on one rank.
        optimizer_impl: ``"auto"`` uses DeepSpeed's compiled Adam (CPU Adam when offloading,
            fused Adam on GPU) only when that op was pre-built at install time, otherwise
            ``torch.optim.AdamW``; ``"torch"`` always ``torch.optim.AdamW``; ``"deepspeed"``
            always DeepSpeed's (JIT-compiled on first use when not pre-built: slow).
    """

    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    precision: str = "auto"
    gradient_clipping: float = 1.0
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    scheduler: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    micro_batch_size_per_rank: int = 1
    gradient_accumulation_steps: int = 1
    optimizer_impl: str = "auto"

    def __post_init__(self) -> None:
        _require_int("deepspeed.zero_stage", self.zero_stage, 0)
        if self.zero_stage > 3:
            raise ValueError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        for key in ("offload_optimizer", "offload_params"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(
                    f"deepspeed.{key} must be true or false, got {getattr(self, key)!r}"
                )
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError(
                "deepspeed.offload_optimizer needs deepspeed.zero_stage 1, 2 or 3, got zero_stage=0"
            )
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                "deepspeed.offload_params needs deepspeed.zero_stage=3 (only ZeRO-3 partitions "
                f"parameters), got zero_stage={self.zero_stage}"
            )
        _require_choice("deepspeed.precision", self.precision, PRECISIONS)
        if not _is_number(self.gradient_clipping) or self.gradient_clipping < 0:
            raise ValueError(
                "deepspeed.gradient_clipping must be a number >= 0 (0 disables clipping), got "
                f"{self.gradient_clipping!r}"
            )
        if not _is_number(self.learning_rate) or self.learning_rate < 0:
            raise ValueError(
                f"deepspeed.learning_rate must be a number >= 0, got {self.learning_rate!r}"
            )
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(
                f"deepspeed.weight_decay must be a number >= 0, got {self.weight_decay!r}"
            )
        betas = tuple(self.adam_betas) if isinstance(self.adam_betas, (list, tuple)) else None
        if betas is None or len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
            raise ValueError(
                f"deepspeed.adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}"
            )
        object.__setattr__(self, "adam_betas", (float(betas[0]), float(betas[1])))
        if not _is_number(self.adam_eps) or self.adam_eps <= 0:
            raise ValueError(f"deepspeed.adam_eps must be a positive number, got {self.adam_eps!r}")
        _require_choice("deepspeed.scheduler", self.scheduler, SCHEDULERS)
        _require_int("deepspeed.warmup_steps", self.warmup_steps, 0)
        if self.total_steps is not None:
            _require_int("deepspeed.total_steps", self.total_steps, 1)
        if self.scheduler in ("cosine", "linear"):
            if self.total_steps is None:
                raise ValueError(
                    f"deepspeed.total_steps must be set for deepspeed.scheduler={self.scheduler!r}"
                )
            if self.total_steps <= self.warmup_steps:
                raise ValueError(
                    "deepspeed.total_steps must exceed deepspeed.warmup_steps, got "
                    f"total_steps={self.total_steps}, warmup_steps={self.warmup_steps}"
                )
        _require_int("deepspeed.micro_batch_size_per_rank", self.micro_batch_size_per_rank, 1)
        _require_int("deepspeed.gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        _require_choice("deepspeed.optimizer_impl", self.optimizer_impl, OPTIMIZER_IMPLS)

    def rows_per_rank(self) -> int:
        """Rows one rank consumes per optimizer step (micro-batch size × accumulation steps)."""
        return self.micro_batch_size_per_rank * self.gradient_accumulation_steps

    def train_batch_size(self, num_ranks: int) -> int:
        """Rows of one optimizer step over ``num_ranks`` ranks (DeepSpeed ``train_batch_size``)."""
        return self.rows_per_rank() * num_ranks


@dataclass(frozen=True)
class GroupSpec:
    """How many ranks one role has and what each asks of Ray.

    Attributes:
        num_ranks: ranks of the role (one Ray actor each; one torch.distributed world).
        cpus_per_rank: Ray CPUs per rank (fractions <= 1 allowed, e.g. 0.5 to fit several roles
            on a small machine; above 1, whole numbers).
        gpus_per_rank: Ray GPUs per rank, in ``[0, 1]``; fractions let colocated roles share a
            GPU. 0 gives a CPU-only rank (no GPU is requested from Ray).
        colocate_with: another role's name: this role's rank ``i`` shares bundle ``i`` of that
            role's placement group (so it sits on the same node, and on the same GPU when the
            fractions add up to at most 1). It needs at most as many ranks as that role.
    """

    num_ranks: int = 1
    cpus_per_rank: float = 1.0
    gpus_per_rank: float = 0.0
    colocate_with: str | None = None

    def __post_init__(self) -> None:
        _require_int("group.num_ranks", self.num_ranks, 1)
        _require_ray_quantity("group.cpus_per_rank", self.cpus_per_rank)
        _require_ray_quantity("group.gpus_per_rank", self.gpus_per_rank, maximum=1.0)
        if self.cpus_per_rank == 0 and self.gpus_per_rank == 0:
            raise ValueError("group.cpus_per_rank and group.gpus_per_rank are both 0; request one")
        if self.colocate_with is not None and (
            not isinstance(self.colocate_with, str) or not self.colocate_with.strip()
        ):
            raise ValueError(
                f"group.colocate_with must be a role name or None, got {self.colocate_with!r}"
            )

    @property
    def uses_gpus(self) -> bool:
        """Whether ranks request GPUs from Ray."""
        return self.gpus_per_rank > 0


@dataclass(frozen=True)
class RuntimeSpec:
    """Which Ray cluster to use and how groups start, talk and fail.

    Attributes:
        address: ``None`` starts a local Ray cluster in this process; ``"auto"`` joins the
            cluster running on this machine (``ray start --head``); ``"host:port"`` joins a
            cluster's GCS; ``"ray://host:10001"`` connects through Ray Client.
        backend: torch.distributed backend of every group: ``"gloo"`` (CPU), ``"nccl"`` (GPU) or
            ``"auto"`` (nccl when the group's ranks request GPUs, gloo otherwise).
        placement_strategy: Ray placement-group strategy of each group's bundles: ``"PACK"`` (as
            few nodes as possible), ``"SPREAD"`` (across nodes when possible),
            ``"STRICT_SPREAD"`` (one bundle per node, fails when there are too few nodes).
        local_num_cpus: CPUs of a local cluster (``address=None``); None uses the machine's count.
        local_num_gpus: GPUs of a local cluster; None lets Ray detect them.
        startup_timeout_s: seconds to wait for a placement group, the actors, the distributed
            rendezvous and the model build before raising.
        call_timeout_s: seconds to wait for any one group call (generate, train step, ...)
            before raising.
        collective_timeout_s: torch.distributed timeout of collectives inside the ranks.
        ship_code: when joining an existing cluster, upload the ``saferl`` package with the job
            (``runtime_env.py_modules``) so remote nodes import this tree's code.
        env_vars: extra environment variables of every rank (e.g. ``NCCL_*`` settings).
        reuse_workers: a group that shuts down cleanly leaves its rank processes to the next
            group of the same shape, which loads its own model into them instead of starting
            new processes (:mod:`saferl.runtime.pool`); False starts and kills processes per
            group.
        max_single_rank_processes: the most rank processes that groups of one rank on CPUs (of
            one shape) keep; once that many serve groups, a new group loads its model into the
            least busy of them, next to the models already there, and the calls of a process's
            models take turns (:mod:`saferl.runtime.pool`). A rank process costs seconds of
            imports and one core can only run one model at a time, so on a small machine a few
            shared processes start sooner and run as fast as one per group. None: the CPUs
            there are (this machine's cores on a local cluster, the cluster's Ray CPUs on a
            joined one; :func:`saferl.runtime.pool.shared_process_limit`); 0: no limit (one
            process per group). Groups of several ranks or with GPUs always get processes of
            their own. Needs ``reuse_workers``.
        max_restarts: how many times one run starts its groups again by itself after a rank
            process or a node was lost, going on from its last checkpoint
            (:mod:`saferl.runtime.recovery`); 0 stops at the first loss.
    """

    address: str | None = None
    backend: str = "auto"
    placement_strategy: str = "PACK"
    local_num_cpus: int | None = None
    local_num_gpus: int | None = None
    startup_timeout_s: float = 600.0
    call_timeout_s: float = 3600.0
    collective_timeout_s: float = 1800.0
    ship_code: bool = True
    env_vars: Mapping[str, str] = field(default_factory=dict)
    reuse_workers: bool = True
    max_single_rank_processes: int | None = None
    max_restarts: int = 2

    def __post_init__(self) -> None:
        _require_int("runtime.max_restarts", self.max_restarts, 0)
        if not isinstance(self.reuse_workers, bool):
            raise ValueError(
                f"runtime.reuse_workers must be true or false, got {self.reuse_workers!r}"
            )
        if self.max_single_rank_processes is not None:
            _require_int("runtime.max_single_rank_processes", self.max_single_rank_processes, 0)
        if self.address is not None:
            if not isinstance(self.address, str) or not self.address.strip():
                raise ValueError(
                    "runtime.address must be None (start a local cluster), 'auto', 'host:port' or "
                    f"'ray://host:port', got {self.address!r}"
                )
            if self.address != "auto" and not self.address.startswith("ray://"):
                host, _, port = self.address.rpartition(":")
                if not host or not port.isdigit():
                    raise ValueError(
                        "runtime.address must be None, 'auto', 'host:port' or 'ray://host:port', "
                        f"got {self.address!r}"
                    )
        _require_choice("runtime.backend", self.backend, BACKENDS)
        _require_choice("runtime.placement_strategy", self.placement_strategy, PLACEMENT_STRATEGIES)
        if self.local_num_cpus is not None:
            _require_int("runtime.local_num_cpus", self.local_num_cpus, 1)
        if self.local_num_gpus is not None:
            _require_int("runtime.local_num_gpus", self.local_num_gpus, 0)
        for key in ("startup_timeout_s", "call_timeout_s", "collective_timeout_s"):
            value = getattr(self, key)
            if not _is_number(value) or value <= 0:
                raise ValueError(
                    f"runtime.{key} must be a positive number of seconds, got {value!r}"
                )
        if not isinstance(self.env_vars, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.env_vars.items()
        ):
            raise ValueError(f"runtime.env_vars must map strings to strings, got {self.env_vars!r}")
        object.__setattr__(self, "env_vars", dict(self.env_vars))

    def resolve_backend(self, uses_gpus: bool) -> str:
        """The collective backend of a group whose ranks do (not) request GPUs.

        Raises:
            ValueError: ``backend="nccl"`` for CPU-only ranks.
        """
        if self.backend == "auto":
            return "nccl" if uses_gpus else "gloo"
        if self.backend == "nccl" and not uses_gpus:
            raise ValueError(
                "runtime.backend='nccl' needs GPU ranks, but group.gpus_per_rank is 0; use 'gloo' "
                "or 'auto' for CPU-only groups"
            )
        return self.backend


@dataclass(frozen=True)
class GenerationSpec:
    """Sampling parameters of policy rollouts.

    Sampling is seeded per row: row ``i`` of a ``generate`` call draws its ``t``-th token from a
    generator seeded by ``(seed, i, t)``, so the output depends only on the prompts and the seed,
    not on how rows are split across ranks. Use a different ``seed`` per rollout batch
    (e.g. ``dataclasses.replace(spec, seed=base_seed + iteration)``).

    Attributes:
        max_new_tokens: response length limit.
        temperature: softmax temperature (> 0) applied before top-k/top-p.
        top_k: keep the ``top_k`` most likely tokens; 0 disables.
        top_p: nucleus sampling mass in ``(0, 1]``; 1 disables.
        do_sample: sample (True) or greedy decode (False: temperature/top-k/top-p unused).
        seed: base seed of the per-row generators.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    do_sample: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        _require_int("generation.max_new_tokens", self.max_new_tokens, 1)
        if not _is_number(self.temperature) or self.temperature <= 0:
            raise ValueError(
                f"generation.temperature must be a positive number, got {self.temperature!r}"
            )
        _require_int("generation.top_k", self.top_k, 0)
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"generation.top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"generation.do_sample must be true or false, got {self.do_sample!r}")
        _require_int("generation.seed", self.seed, 0)


@dataclass(frozen=True)
class VLLMSpec:
    """vLLM rollout engines of the PPO loop (``runtime.vllm``; :mod:`saferl.runtime.vllm_engine`).

    Attributes:
        num_engines: independent engines; prompts are split evenly over them.
        tensor_parallel_size: GPUs per engine.
        gpu_memory_utilization: fraction of each GPU vLLM may take (leave room for colocated
            training engines).
        dtype: model dtype in the engine.
        max_model_len: longest prompt + response; None uses the model's.
        enforce_eager: disable CUDA graphs (faster start-up, slower decoding).
    """

    num_engines: int = 1
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    dtype: str = "bfloat16"
    max_model_len: int | None = None
    enforce_eager: bool = True

    def __post_init__(self) -> None:
        for key in ("num_engines", "tensor_parallel_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"runtime.vllm.{key} must be an integer >= 1, got {value!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"runtime.vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}"
            )

    @property
    def gpus_needed(self) -> int:
        """GPUs of all engines together."""
        return self.num_engines * self.tensor_parallel_size
