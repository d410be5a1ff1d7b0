"""The runtime's structure, checked by behaviour: two workers (trainable and inference engines)
by head, role groups that expose only their role's methods, and a runtime that does not need the
tokenising collators.

* Same weights, either engine kind: a trainable and an inference engine give identical
  token log-probs (policy head) and end scores (score head).
* A head picks what ``forward`` returns; only a policy head generates.
* ``import saferl.runtime`` and every name it exports load no collator or template module.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import pytest
import torch

from saferl.data.batches import PromptBatch
from saferl.runtime import (
    ActorGroup,
    CriticGroup,
    DeepSpeedSpec,
    GenerationSpec,
    GroupSpec,
    InferenceWorker,
    PolicyGroup,
    ReferenceGroup,
    RoleGroup,
    ScoreGroup,
    ScoreHead,
    TrainableWorker,
)


def _modules_after(code: str) -> set[str]:
    """The ``saferl`` modules loaded by ``code`` in a fresh interpreter."""
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        import sys
        print(",".join(sorted(m for m in sys.modules if m.startswith("saferl"))))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return set(completed.stdout.strip().splitlines()[-1].split(","))


def test_the_runtime_modules_import_the_batches_not_the_collators() -> None:
    # saferl.data's package __init__ is replaced by an empty package first, so that what is
    # loaded is what the runtime's own modules import.
    loaded = _modules_after(
        """
        import importlib.util, sys, types
        import saferl
        spec = importlib.util.find_spec("saferl.data")
        package = types.ModuleType("saferl.data")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["saferl.data"] = package
        import saferl.runtime
        for name in saferl.runtime.__all__:  # the package's names load on first use
            getattr(saferl.runtime, name)
        """
    )
    assert "saferl.runtime.roles" in loaded and "saferl.runtime.workers" in loaded
    data_modules = {m for m in loaded if m.startswith("saferl.data")}
    assert data_modules == {"saferl.data", "saferl.data.batches"}


def test_importing_the_runtime_loads_no_collator_or_template() -> None:
    # Every name the package exports is loaded, since they load on first use (PEP 562).
    loaded = _modules_after(
        """
        import saferl.runtime
        for name in saferl.runtime.__all__:
            getattr(saferl.runtime, name)
        """
    )
    assert "saferl.runtime.workers" in loaded
    assert not loaded & {"saferl.data.collators", "saferl.data.templates"}


def test_the_batches_are_one_set_of_classes_wherever_they_are_imported_from() -> None:
    import saferl.data
    from saferl.data import batches, collators

    for name in ("PromptBatch", "SequenceBatch", "PairBatch"):
        assert getattr(collators, name) is getattr(batches, name) is getattr(saferl.data, name)


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_each_role_group_exposes_its_role_methods_and_the_shared_ones() -> None:
    shared = {
        "load_checkpoint",
        "rank_infos",
        "save_checkpoint",
        "shutdown",
        "state_dicts",
        "wait_ready",
    }
    assert _public(RoleGroup) == shared
    own = {
        PolicyGroup: {"export_hf", "full_state_dict", "generate", "token_logprobs", "train_step"},
        ReferenceGroup: {"token_logprobs"},
        ScoreGroup: {"end_scores", "export_hf"},
        CriticGroup: {"export_hf", "train_step", "values"},
    }
    for cls, methods in own.items():
        assert _public(cls) - shared == methods, cls.__name__


def test_role_group_constructors_keep_their_arguments_and_default_roles() -> None:
    leading = ["model_spec", "tokenizer", "deepspeed_spec", "group_spec", "runtime_spec"]
    trailing = ["placement", "role", "seed", "wait"]
    expected = {
        PolicyGroup: ([], "policy"),
        ReferenceGroup: ([], "reference"),
        ScoreGroup: (["num_outputs", "kind"], "reward"),
        CriticGroup: (["init_from", "init_output_index", "value_scale"], "reward_critic"),
    }
    for cls, (extra, role) in expected.items():
        parameters = inspect.signature(cls).parameters
        assert list(parameters) == leading + extra + trailing, cls.__name__
        assert parameters["role"].default == role
        assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in extra)


# -- on the Ray cluster --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_trainable_and_inference_engines_agree_on_the_same_weights(
    tokenizer, model_spec, runtime_spec, train_batch, shutdown_after
) -> None:
    """Both engine kinds build the same model from the same seed and compute the same outputs:
    the policy head's token log-probs and a score head's end scores (a score head on a trainable
    worker is no role's, but the workers allow it)."""
    one_rank = GroupSpec(num_ranks=1, cpus_per_rank=0.5)
    spec = DeepSpeedSpec(zero_stage=0, micro_batch_size_per_rank=4)
    start = {"seed": 5, "wait": False}
    policy = PolicyGroup(model_spec, tokenizer, spec, one_rank, runtime_spec, **start)
    shutdown_after.append(policy)
    reference = ReferenceGroup(model_spec, tokenizer, spec, one_rank, runtime_spec, **start)
    shutdown_after.append(reference)
    score_head = ScoreHead(model_spec, tokenizer, num_outputs=2)
    score_groups = {}
    for worker in (TrainableWorker, InferenceWorker):
        score_groups[worker] = ActorGroup(
            f"score_{worker.__name__.lower()}",
            worker,
            one_rank,
            runtime_spec,
            {"head": score_head, "deepspeed_spec": spec},
            seed=5,
            wait=False,
        )
        shutdown_after.append(score_groups[worker])

    trained_weights, frozen_weights = policy.state_dicts()[0], reference.state_dicts()[0]
    assert trained_weights.keys() == frozen_weights.keys()
    assert all(torch.equal(trained_weights[k], frozen_weights[k]) for k in trained_weights)
    logprobs = policy.token_logprobs(train_batch)  # (batch, seq_len)
    assert logprobs.shape == train_batch.input_ids.shape
    assert torch.equal(logprobs, reference.token_logprobs(train_batch))

    scores = {w: g.call("forward", train_batch)[0] for w, g in score_groups.items()}
    assert scores[TrainableWorker].shape == (4, 2)  # (batch, m)
    assert torch.equal(scores[TrainableWorker], scores[InferenceWorker])

    # Only a policy head generates: the rank refuses, and the group names role, rank and method.
    prompt_ids = train_batch.input_ids[:, :3]  # (batch, 3): no padding in the first columns
    prompts = PromptBatch(prompt_ids, prompt_ids != tokenizer.pad_token_id)
    with pytest.raises(RuntimeError, match=r"rank 0 raised in 'generate'.*only a policy head"):
        score_groups[InferenceWorker].call("generate", prompts, GenerationSpec(), 0)


def test_a_rank_imports_deepspeeds_muon_module_without_torchinductor() -> None:
    """DeepSpeed imports its Muon module on every engine build; saferl imports it first with its
    torch.compile decorators left off (1.3 s of TorchInductor imports per rank process), and
    DeepSpeed's compile helper is restored afterwards."""
    script = textwrap.dedent(
        """
        import sys
        import deepspeed.runtime.compiler as compiler
        original = compiler.compile
        from saferl.runtime.distributed import _import_muon_uncompiled
        _import_muon_uncompiled()
        from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam
        from deepspeed.runtime.zero.muon.original_muon import muon_update
        print(compiler.compile is original, "torch._inductor.compile_fx" in sys.modules,
              type(muon_update).__name__)
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.split()[-3:] == ["True", "False", "function"]
