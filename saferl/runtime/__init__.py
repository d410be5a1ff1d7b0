"""saferl.runtime: Ray actor groups per role, torch.distributed inside them, DeepSpeed engines.

The driver (a learner) is a single controller: it connects to Ray (:func:`init_ray`), reserves
resources (:func:`plan_placement`, optional: a group plans its own when not colocated), starts
one group per role (:class:`PolicyGroup`, :class:`ReferenceGroup`, :class:`ScoreGroup`,
:class:`JudgeGroup` for judges and LM graders,
:class:`CriticGroup`) and calls typed methods on whole batches; each group splits a batch into
equal shards over its ranks and joins the results in order. A rank is one of two workers, by
engine kind (:class:`TrainableWorker`, :class:`InferenceWorker`), holding a head
(:class:`PolicyHead`, :class:`ScoreHead`, :class:`CriticHead`) that says which model it builds
and what its forward returns. Batches are the types of :mod:`saferl.data.batches` (the runtime
never imports the tokenising collators). Configs arrive as the frozen dataclasses of
:mod:`saferl.runtime.specs`. Imports ray, deepspeed and torch.distributed, never Hydra or W&B.

The names below load on first use (PEP 562 ``__getattr__``): importing a light module of the
package, such as :mod:`saferl.runtime.specs` for config validation, does not import Ray, DeepSpeed
or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saferl.runtime.batching import (
        batch_rows,
        batch_to,
        concat_batches,
        model_inputs,
        pad_and_concat,
        slice_batch,
        split_batch,
    )
    from saferl.runtime.cluster import PlacementPlan, RoleSlot, init_ray, plan_placement
    from saferl.runtime.ds_config import (
        deepspeed_config,
        deepspeed_inference_config,
        lr_scheduler_factory,
        resolve_precision,
        use_torch_adam,
    )
    from saferl.runtime.generation import SeededSampler, generate_sequences
    from saferl.runtime.group import ActorGroup
    from saferl.runtime.heads import CriticHead, PolicyHead, ScoreHead
    from saferl.runtime.judging import JudgeGroup, JudgeHead, JudgeWorker, LocalJudgeModel
    from saferl.runtime.roles import CriticGroup, PolicyGroup, ReferenceGroup, RoleGroup, ScoreGroup
    from saferl.runtime.specs import DeepSpeedSpec, GenerationSpec, GroupSpec, RuntimeSpec, VLLMSpec
    from saferl.runtime.types import (
        GenerationOutput,
        LossFn,
        RankInfo,
        TrainStepOutput,
        response_mask_from_eos,
    )
    from saferl.runtime.vllm_engine import VLLMEngineGroup, require_vllm
    from saferl.runtime.workers import (
        CriticWorker,
        InferenceWorker,
        PolicyWorker,
        RankSetup,
        ReferenceWorker,
        ScoreWorker,
        TrainableWorker,
    )

# name -> the module that defines it
_EXPORTS = {
    "batch_rows": "saferl.runtime.batching",
    "batch_to": "saferl.runtime.batching",
    "concat_batches": "saferl.runtime.batching",
    "model_inputs": "saferl.runtime.batching",
    "pad_and_concat": "saferl.runtime.batching",
    "slice_batch": "saferl.runtime.batching",
    "split_batch": "saferl.runtime.batching",
    "PlacementPlan": "saferl.runtime.cluster",
    "RoleSlot": "saferl.runtime.cluster",
    "init_ray": "saferl.runtime.cluster",
    "plan_placement": "saferl.runtime.cluster",
    "deepspeed_config": "saferl.runtime.ds_config",
    "deepspeed_inference_config": "saferl.runtime.ds_config",
    "lr_scheduler_factory": "saferl.runtime.ds_config",
    "resolve_precision": "saferl.runtime.ds_config",
    "use_torch_adam": "saferl.runtime.ds_config",
    "SeededSampler": "saferl.runtime.generation",
    "generate_sequences": "saferl.runtime.generation",
    "ActorGroup": "saferl.runtime.group",
    "CriticHead": "saferl.runtime.heads",
    "PolicyHead": "saferl.runtime.heads",
    "ScoreHead": "saferl.runtime.heads",
    "JudgeGroup": "saferl.runtime.judging",
    "JudgeHead": "saferl.runtime.judging",
    "JudgeWorker": "saferl.runtime.judging",
    "LocalJudgeModel": "saferl.runtime.judging",
    "CriticGroup": "saferl.runtime.roles",
    "PolicyGroup": "saferl.runtime.roles",
    "ReferenceGroup": "saferl.runtime.roles",
    "RoleGroup": "saferl.runtime.roles",
    "ScoreGroup": "saferl.runtime.roles",
    "DeepSpeedSpec": "saferl.runtime.specs",
    "GenerationSpec": "saferl.runtime.specs",
    "GroupSpec": "saferl.runtime.specs",
    "RuntimeSpec": "saferl.runtime.specs",
    "GenerationOutput": "saferl.runtime.types",
    "LossFn": "saferl.runtime.types",
    "RankInfo": "saferl.runtime.types",
    "TrainStepOutput": "saferl.runtime.types",
    "response_mask_from_eos": "saferl.runtime.types",
    "VLLMEngineGroup": "saferl.runtime.vllm_engine",
    "VLLMSpec": "saferl.runtime.specs",
    "require_vllm": "saferl.runtime.vllm_engine",
    "CriticWorker": "saferl.runtime.workers",
    "InferenceWorker": "saferl.runtime.workers",
    "PolicyWorker": "saferl.runtime.workers",
    "RankSetup": "saferl.runtime.workers",
    "ReferenceWorker": "saferl.runtime.workers",
    "ScoreWorker": "saferl.runtime.workers",
    "TrainableWorker": "saferl.runtime.workers",
}

__all__ = [
    "ActorGroup",
    "CriticGroup",
    "CriticHead",
    "CriticWorker",
    "DeepSpeedSpec",
    "GenerationOutput",
    "GenerationSpec",
    "GroupSpec",
    "InferenceWorker",
    "JudgeGroup",
    "JudgeHead",
    "JudgeWorker",
    "LocalJudgeModel",
    "LossFn",
    "PlacementPlan",
    "PolicyGroup",
    "PolicyHead",
    "PolicyWorker",
    "RankInfo",
    "RankSetup",
    "ReferenceGroup",
    "ReferenceWorker",
    "RoleGroup",
    "RoleSlot",
    "RuntimeSpec",
    "ScoreGroup",
    "ScoreHead",
    "ScoreWorker",
    "SeededSampler",
    "TrainStepOutput",
    "TrainableWorker",
    "VLLMEngineGroup",
    "VLLMSpec",
    "batch_rows",
    "batch_to",
    "concat_batches",
    "deepspeed_config",
    "deepspeed_inference_config",
    "generate_sequences",
    "init_ray",
    "lr_scheduler_factory",
    "model_inputs",
    "pad_and_concat",
    "plan_placement",
    "require_vllm",
    "resolve_precision",
    "response_mask_from_eos",
    "slice_batch",
    "split_batch",
    "use_torch_adam",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
