"""Where a run's actor groups run: one object instead of a five-argument tail.

:class:`Resources` bundles the group shape (ranks, CPUs and GPUs per rank), the Ray cluster and the
DeepSpeed settings every engine shares. Each engine then sets its own learning rate and batch
(:meth:`Resources.engine`): one optimizer step per ``rows_per_step`` rows split evenly over the
ranks, with no gradient accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from saferl.runtime.specs import DeepSpeedSpec, GroupSpec, RuntimeSpec, VLLMSpec

__all__ = ["Resources"]


@dataclass(frozen=True)
class Resources:
    """Where and how a run's groups run.

    Attributes:
        group: ranks, CPUs and GPUs per role (``runtime.num_ranks``, ``runtime.cpus_per_rank``,
            ``runtime.gpus_per_rank``).
        runtime: the Ray cluster (``runtime.*``).
        deepspeed: ZeRO stage, offload, precision and AdamW of every engine (``deepspeed.*``).
        seed: seeds every group's model build (the root ``seed``).
        vllm: vLLM engines for the PPO loop's rollouts (``runtime.vllm``; GPU and the ``vllm``
            extra); None: the policy group generates with Hugging Face ``generate``.
    """

    group: GroupSpec = field(default_factory=GroupSpec)
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    deepspeed: DeepSpeedSpec = field(default_factory=DeepSpeedSpec)
    seed: int = 0
    vllm: VLLMSpec | None = None

    @property
    def num_ranks(self) -> int:
        return self.group.num_ranks

    def engine(self, learning_rate: float, rows_per_step: int) -> DeepSpeedSpec:
        """One engine's spec: ``learning_rate`` and one optimizer step per ``rows_per_step`` rows.

        Raises:
            ValueError: ``rows_per_step`` does not divide over ``runtime.num_ranks``.
        """
        if rows_per_step % self.num_ranks:
            raise ValueError(
                f"{rows_per_step} rows per step do not divide over runtime.num_ranks={self.num_ranks}"
            )
        return replace(
            self.deepspeed,
            learning_rate=learning_rate,
            micro_batch_size_per_rank=rows_per_step // self.num_ranks,
            gradient_accumulation_steps=1,
        )
