"""saferl.runtime: Ray actor groups per role, torch.distributed inside them, DeepSpeed engines.

The driver (a learner) is a single controller: it connects to Ray (:func:`init_ray`), reserves
resources (:func:`plan_placement`, optional: a group plans its own when not colocated), starts
one group per role (:class:`PolicyGroup`, :class:`ReferenceGroup`, :class:`ScoreGroup`,
:class:`CriticGroup`) and calls typed methods on whole batches; each group splits a batch into
equal shards over its ranks and joins the results in order. A rank is one of two workers, by
engine kind (:class:`TrainableWorker`, :class:`InferenceWorker`), holding a head
(:class:`PolicyHead`, :class:`ScoreHead`, :class:`CriticHead`) that says which model it builds
and what its forward returns. Batches are the types of :mod:`saferl.data.batches` (the runtime
never imports the tokenising collators). Configs arrive as the frozen dataclasses of
:mod:`saferl.runtime.specs`. Imports ray, deepspeed and torch.distributed, never Hydra or W&B.
"""

from __future__ import annotations

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
from saferl.runtime.roles import CriticGroup, PolicyGroup, ReferenceGroup, RoleGroup, ScoreGroup
from saferl.runtime.specs import DeepSpeedSpec, GenerationSpec, GroupSpec, RuntimeSpec
from saferl.runtime.types import (
    GenerationOutput,
    LossFn,
    RankInfo,
    TrainStepOutput,
    response_mask_from_eos,
)
from saferl.runtime.vllm_engine import VLLMEngineGroup, VLLMSpec, require_vllm
from saferl.runtime.workers import (
    CriticWorker,
    InferenceWorker,
    PolicyWorker,
    RankSetup,
    ReferenceWorker,
    ScoreWorker,
    TrainableWorker,
)

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
