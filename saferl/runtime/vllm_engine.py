"""Optional vLLM rollout engines (extra ``vllm``; GPU only).

The Hugging Face ``generate`` path of :class:`~saferl.runtime.PolicyGroup` is the default and
the tested one. For fast GPU rollouts a learner can start a :class:`VLLMEngineGroup` from an
exported policy folder and push the policy's weights into it after every update
(:meth:`VLLMEngineGroup.sync_weights_from`).

What is verified here (CPU, no vllm installed): asking for it without ``vllm`` or without GPUs
raises a ``RuntimeError`` that says what is missing (:func:`require_vllm`). **Untested without
GPUs**: engine start-up, ``generate`` and the weight sync. The sync gathers the policy's full
weights on its rank 0 (:meth:`PolicyGroup.full_state_dict`), puts them in the Ray object store
once, and each engine loads them through vLLM's ``model.load_weights`` (reached through
``LLM.collective_rpc`` on vLLM versions that have it, else the v0 ``driver_worker`` path).
That internal API moves between vLLM releases; for large models an NCCL broadcast from the
policy's rank 0 into the engines is the faster route and is left for when it can be tested.
``experiments/bench/ppo_iteration.py --rollout vllm`` checks the sync on a GPU: a parameter the
engines load doubled reads back doubled, and after ``sync_weights_from`` reads back the policy's.

The PPO loop uses these engines for its rollouts when ``runtime.vllm`` is set
(:func:`saferl.learners.ppo_lag.start_vllm_engines`); the loop's side of it (sync before the first
rollout and after each update, every rollout from the engines) is tested on CPU with a stand-in
engine.

Sampling: each row is one request with ``SamplingParams(seed=row_seed(seed, row, 0))``, so rows
are reproducible and independent of how they are batched, but the samples differ from the HF path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import ray
import torch

from saferl.data.batches import PromptBatch
from saferl.runtime.batching import pad_and_concat
from saferl.runtime.generation import row_seed
from saferl.runtime.specs import GenerationSpec, RuntimeSpec, VLLMSpec
from saferl.runtime.types import GenerationOutput, response_mask_from_eos

__all__ = ["VLLMEngineGroup", "VLLMSpec", "VLLMWorker", "require_vllm"]


def _cluster_gpus() -> float:
    if ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0.0))
    return float(torch.cuda.device_count())


def require_vllm(gpus_needed: int = 1) -> None:
    """Check that vLLM rollouts can run: ``vllm`` importable and enough GPUs.

    Raises:
        RuntimeError: naming each missing piece (the package, the GPUs).
    """
    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("the 'vllm' package is not installed (pip install 'saferl[vllm]')")
    gpus = _cluster_gpus()
    if gpus < gpus_needed:
        where = "in the Ray cluster" if ray.is_initialized() else "on this machine"
        missing.append(f"{gpus_needed} GPU(s) are needed but {gpus:g} were found {where}")
    if missing:
        raise RuntimeError(
            "vLLM rollout engines were requested, but " + "; and ".join(missing) + ". Set "
            "runtime.vllm=null to generate in the policy group (Hugging Face generate)"
        )


class VLLMWorker:
    """One vLLM engine (a Ray actor holding ``tensor_parallel_size`` GPUs). Untested here."""

    def __init__(self, model_path: str, spec: VLLMSpec, eos_token_id: int) -> None:
        from vllm import LLM

        self.eos_token_id = eos_token_id
        self.llm = LLM(
            model=model_path,
            tensor_parallel_size=spec.tensor_parallel_size,
            dtype=spec.dtype,
            gpu_memory_utilization=spec.gpu_memory_utilization,
            max_model_len=spec.max_model_len,
            enforce_eager=spec.enforce_eager,
        )

    def generate(
        self, prompts: list[list[int]], spec: GenerationSpec, row_offset: int
    ) -> list[list[int]]:
        """Response ids per prompt (ending with EOS unless cut at ``max_new_tokens``)."""
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=1,
                temperature=spec.temperature if spec.do_sample else 0.0,
                top_k=spec.top_k if spec.top_k > 0 else -1,
                top_p=spec.top_p,
                max_tokens=spec.max_new_tokens,
                seed=row_seed(spec.seed, row_offset + i, 0),
                stop_token_ids=[self.eos_token_id],
            )
            for i in range(len(prompts))
        ]
        requests = [{"prompt_token_ids": ids} for ids in prompts]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs]

    def _on_models(self, function: Any) -> list[Any]:
        """``function(model)`` on the engine's model in each of its workers (one per GPU), through
        ``LLM.collective_rpc`` where this vLLM has it, else the v0 ``driver_worker`` path."""
        if hasattr(self.llm, "collective_rpc"):
            return list(self.llm.collective_rpc(lambda worker: function(worker.model_runner.model)))
        return [function(self.llm.llm_engine.model_executor.driver_worker.model_runner.model)]

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the engine's weights (Hugging Face parameter names)."""
        items = list(state.items())
        self._on_models(lambda model: model.load_weights(items))

    def parameter(self, name: str) -> torch.Tensor:
        """A parameter the engine holds unsharded and unfused (e.g. ``model.norm.weight``), on CPU:
        what a check of :meth:`VLLMEngineGroup.sync_weights_from` reads back."""
        return self._on_models(lambda model: dict(model.named_parameters())[name].detach().float().cpu())[0]


class VLLMEngineGroup:
    """``spec.num_engines`` vLLM engines serving rollouts of one policy. Untested without GPUs.

    Args:
        spec: engines, GPUs, memory share.
        model_path: a Hugging Face folder of the policy (``PolicyGroup.export_hf``).
        tokenizer: the policy's tokenizer (pad and EOS ids).
        runtime_spec: timeouts.

    Raises:
        RuntimeError: ``vllm`` missing or too few GPUs (see :func:`require_vllm`).
    """

    def __init__(
        self, spec: VLLMSpec, model_path: str | Path, tokenizer: Any, runtime_spec: RuntimeSpec
    ) -> None:
        require_vllm(spec.gpus_needed)
        self.spec = spec
        self.runtime_spec = runtime_spec
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.eos_token_id = int(tokenizer.eos_token_id)
        remote = ray.remote(VLLMWorker).options(num_gpus=spec.tensor_parallel_size)
        self.engines = [
            remote.remote(str(model_path), spec, self.eos_token_id) for _ in range(spec.num_engines)
        ]

    def generate(self, prompts: PromptBatch, spec: GenerationSpec) -> GenerationOutput:
        """Same contract as :meth:`PolicyGroup.generate` (left-padded prompts in, padded out)."""
        rows = prompts.input_ids.shape[0]
        if rows % len(self.engines):
            raise ValueError(
                f"a batch of {rows} prompts cannot be split evenly over "
                f"runtime.vllm.num_engines={len(self.engines)}"
            )
        size = rows // len(self.engines)
        prompt_ids = [
            ids[mask].tolist()
            for ids, mask in zip(prompts.input_ids, prompts.attention_mask.bool(), strict=True)
        ]
        refs = [
            engine.generate.remote(prompt_ids[i * size : (i + 1) * size], spec, i * size)
            for i, engine in enumerate(self.engines)
        ]
        responses = [
            r for chunk in ray.get(refs, timeout=self.runtime_spec.call_timeout_s) for r in chunk
        ]
        response_ids = pad_and_concat(
            [torch.tensor([r or [self.pad_token_id]], dtype=torch.long) for r in responses],
            self.pad_token_id,
        )
        valid = response_mask_from_eos(response_ids, self.eos_token_id)
        lengths = torch.tensor([len(r) for r in responses])
        valid &= torch.arange(response_ids.shape[1])[None] < lengths[:, None]
        prompt_mask = prompts.attention_mask.bool()
        return GenerationOutput(
            prompt_ids=prompts.input_ids,
            sequences=torch.cat([prompts.input_ids, response_ids], dim=1),
            attention_mask=torch.cat([prompt_mask, valid], dim=1),
            response_mask=torch.cat([torch.zeros_like(prompt_mask), valid], dim=1),
        )

    def sync_weights_from(self, policy: Any) -> None:
        """Load the policy group's current weights into every engine."""
        state_ref = ray.put(policy.full_state_dict())
        ray.get(
            [engine.load_weights.remote(state_ref) for engine in self.engines],
            timeout=self.runtime_spec.call_timeout_s,
        )

    def parameters_named(self, name: str) -> list[torch.Tensor]:
        """Each engine's copy of the parameter ``name`` (see :meth:`VLLMWorker.parameter`)."""
        return ray.get([engine.parameter.remote(name) for engine in self.engines],
                       timeout=self.runtime_spec.call_timeout_s)

    def shutdown(self) -> None:
        """Kill the engines."""
        for engine in self.engines:
            ray.kill(engine, no_restart=True)
        self.engines = []
