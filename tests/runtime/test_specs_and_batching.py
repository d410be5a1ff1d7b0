"""Fast runtime tests without Ray: specs, DeepSpeed config rendering, batch splitting,
seeded generation on one process, masks, placement validation, the vLLM error."""

from __future__ import annotations

import math
import os

import pytest
import torch
from deepspeed.runtime.config import DeepSpeedConfig

from saferl.data.collators import PairBatch, PromptBatch, SequenceBatch
from saferl.models import build_policy
from saferl.runtime import (
    DeepSpeedSpec,
    GenerationOutput,
    GenerationSpec,
    GroupSpec,
    RuntimeSpec,
    VLLMSpec,
    batch_rows,
    concat_batches,
    deepspeed_config,
    deepspeed_inference_config,
    generate_sequences,
    lr_scheduler_factory,
    model_inputs,
    require_vllm,
    response_mask_from_eos,
    split_batch,
)
from saferl.runtime.cluster import colocation_sets, worker_env_vars
from saferl.runtime.generation import row_seed
from saferl.runtime.pool import shared_process_limit

# -- specs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"zero_stage": 4}, "deepspeed.zero_stage"),
        ({"zero_stage": 2, "offload_params": True}, "deepspeed.offload_params"),
        ({"zero_stage": 0, "offload_optimizer": True}, "deepspeed.offload_optimizer"),
        ({"precision": "fp8"}, "deepspeed.precision"),
        ({"scheduler": "cosine"}, "deepspeed.total_steps"),
        ({"scheduler": "exp"}, "deepspeed.scheduler"),
        ({"warmup_steps": -1}, "deepspeed.warmup_steps"),
        ({"adam_betas": (0.9,)}, "deepspeed.adam_betas"),
        ({"micro_batch_size_per_rank": 0}, "deepspeed.micro_batch_size_per_rank"),
        ({"gradient_clipping": -1.0}, "deepspeed.gradient_clipping"),
        ({"optimizer_impl": "apex"}, "deepspeed.optimizer_impl"),
    ],
)
def test_deepspeed_spec_errors_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        DeepSpeedSpec(**kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs", "key"),
    [
        (GroupSpec, {"num_ranks": 0}, "group.num_ranks"),
        (GroupSpec, {"cpus_per_rank": 1.5}, "group.cpus_per_rank"),
        (GroupSpec, {"gpus_per_rank": 2.0}, "group.gpus_per_rank"),
        (GroupSpec, {"colocate_with": ""}, "group.colocate_with"),
        (RuntimeSpec, {"address": "nohost"}, "runtime.address"),
        (RuntimeSpec, {"backend": "mpi"}, "runtime.backend"),
        (RuntimeSpec, {"placement_strategy": "STRICT_PACK"}, "runtime.placement_strategy"),
        (RuntimeSpec, {"call_timeout_s": 0}, "runtime.call_timeout_s"),
        (RuntimeSpec, {"max_single_rank_processes": -1}, "runtime.max_single_rank_processes"),
        (RuntimeSpec, {"max_single_rank_processes": "x"}, "runtime.max_single_rank_processes"),
        (RuntimeSpec, {"max_single_rank_processes": 1.5}, "runtime.max_single_rank_processes"),
        (GenerationSpec, {"temperature": 0.0}, "generation.temperature"),
        (GenerationSpec, {"top_p": 0.0}, "generation.top_p"),
        (GenerationSpec, {"max_new_tokens": 0}, "generation.max_new_tokens"),
    ],
)
def test_spec_errors_name_the_key(cls: type, kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        cls(**kwargs)


def test_runtime_spec_addresses_and_backend() -> None:
    for address in (None, "auto", "10.0.0.1:6379", "ray://head:10001"):
        RuntimeSpec(address=address)
    spec = RuntimeSpec()
    assert spec.resolve_backend(uses_gpus=False) == "gloo"
    assert spec.resolve_backend(uses_gpus=True) == "nccl"
    with pytest.raises(ValueError, match="runtime.backend='nccl'"):
        RuntimeSpec(backend="nccl").resolve_backend(uses_gpus=False)


def test_only_one_rank_cpu_groups_share_processes() -> None:
    one_cpu_rank = GroupSpec(1, 0.25)
    # Unset on a local cluster: this machine's cores (not the cluster's logical CPUs).
    assert shared_process_limit(RuntimeSpec(local_num_cpus=8), one_cpu_rank) == (os.cpu_count() or 1)
    assert shared_process_limit(RuntimeSpec(max_single_rank_processes=3), one_cpu_rank) == 3
    assert shared_process_limit(RuntimeSpec(max_single_rank_processes=0), one_cpu_rank) == 0
    # Several ranks, GPUs, or no reuse at all: every group has processes of its own.
    three = RuntimeSpec(max_single_rank_processes=3)
    assert shared_process_limit(three, GroupSpec(2, 0.25)) == 0
    assert shared_process_limit(three, GroupSpec(1, 1, 1.0)) == 0
    no_reuse = RuntimeSpec(reuse_workers=False, max_single_rank_processes=3)
    assert shared_process_limit(no_reuse, one_cpu_rank) == 0


def test_worker_env_puts_this_tree_on_the_path_of_local_clusters_only() -> None:
    local = worker_env_vars(RuntimeSpec(env_vars={"NCCL_DEBUG": "WARN"}))
    assert "PYTHONPATH" in local and local["NCCL_DEBUG"] == "WARN"
    joined = worker_env_vars(RuntimeSpec(address="auto"))
    assert "PYTHONPATH" not in joined  # the package is shipped with the job instead


# -- DeepSpeed config ---------------------------------------------------------------------------


def test_deepspeed_config_uses_deepspeeds_keys_and_parses() -> None:
    spec = DeepSpeedSpec(
        zero_stage=3,
        offload_optimizer=True,
        offload_params=True,
        precision="bf16",
        gradient_clipping=0.5,
        learning_rate=3e-4,
        weight_decay=0.1,
        scheduler="cosine",
        warmup_steps=2,
        total_steps=10,
        micro_batch_size_per_rank=2,
        gradient_accumulation_steps=3,
    )
    config = deepspeed_config(spec, world_size=1, device="cpu")
    assert config["train_batch_size"] == 6
    assert config["train_micro_batch_size_per_gpu"] == 2
    assert config["gradient_accumulation_steps"] == 3
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"] == {"enabled": True}
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert config["optimizer"]["type"] == "AdamW"
    assert config["optimizer"]["params"]["torch_adam"] is True  # no compiled cpu_adam here
    assert config["zero_force_ds_cpu_optimizer"] is False
    assert "scheduler" not in config  # a client scheduler, see lr_scheduler_factory
    # DeepSpeed's own parser (pydantic models that forbid unknown ZeRO keys) accepts it.
    parsed = DeepSpeedConfig(config)
    assert parsed.zero_optimization_stage == 3
    assert parsed.train_batch_size == 6
    assert parsed.bfloat16_config.enabled
    assert parsed.zero_config.offload_param.device == "cpu"
    assert parsed.zero_config.offload_optimizer.device == "cpu"
    assert parsed.zero_force_ds_cpu_optimizer is False
    assert parsed.gradient_clipping == 0.5
    assert deepspeed_config(spec, world_size=4, device="cpu")["train_batch_size"] == 24


def test_deepspeed_precision_auto_and_inference_config() -> None:
    spec = DeepSpeedSpec(zero_stage=2)
    assert "bf16" not in deepspeed_config(spec, 1, "cpu")
    assert deepspeed_config(spec, 1, "cuda")["bf16"] == {"enabled": True}
    with pytest.raises(ValueError, match="deepspeed.precision='fp16'"):
        deepspeed_config(DeepSpeedSpec(precision="fp16"), 1, "cpu")
    assert deepspeed_config(DeepSpeedSpec(precision="fp16"), 1, "cuda")["fp16"]["loss_scale"] == 0
    inference = deepspeed_inference_config(spec, 2, "cpu")
    assert inference["zero_optimization"]["stage"] == 0  # stage 1/2 have nothing to partition
    assert "optimizer" not in inference and "scheduler" not in inference
    assert (
        deepspeed_inference_config(DeepSpeedSpec(zero_stage=3), 2, "cpu")["zero_optimization"][
            "stage"
        ]
        == 3
    )
    DeepSpeedConfig(deepspeed_inference_config(DeepSpeedSpec(zero_stage=3), 1, "cpu"))


def _learning_rates(spec: DeepSpeedSpec, steps: int) -> list[float]:
    """Learning rates of the first ``steps`` optimizer steps (DeepSpeed steps the scheduler
    after each optimizer step)."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=spec.learning_rate)
    scheduler = lr_scheduler_factory(spec)(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_schedules_warm_up_linearly_from_zero_and_decay_to_zero() -> None:
    lr = 1.0
    assert _learning_rates(DeepSpeedSpec(learning_rate=lr), 3) == [1.0, 1.0, 1.0]
    constant = _learning_rates(DeepSpeedSpec(learning_rate=lr, warmup_steps=4), 6)
    assert constant == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    linear = _learning_rates(DeepSpeedSpec(learning_rate=lr, scheduler="linear", total_steps=4), 5)
    assert linear == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    cosine = _learning_rates(DeepSpeedSpec(learning_rate=lr, scheduler="cosine", total_steps=4), 5)
    assert cosine == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, 0.1464466, 0.0])
    warm_cosine = _learning_rates(
        DeepSpeedSpec(learning_rate=lr, scheduler="cosine", warmup_steps=2, total_steps=6), 7
    )
    assert warm_cosine[:2] == pytest.approx([0.0, 0.5])
    assert warm_cosine[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(warm_cosine[2:], warm_cosine[3:], strict=False))


# -- batching -----------------------------------------------------------------------------------


def test_split_and_concat_round_trip(train_batch: SequenceBatch) -> None:
    shards = split_batch(train_batch, 2)
    assert [batch_rows(s) for s in shards] == [2, 2]
    assert torch.equal(shards[1].input_ids, train_batch.input_ids[2:])
    joined = concat_batches(shards)
    assert isinstance(joined, SequenceBatch)
    for name in ("input_ids", "attention_mask", "response_mask"):
        assert torch.equal(getattr(joined, name), getattr(train_batch, name))


def test_split_names_batch_size_and_ranks(train_batch: SequenceBatch) -> None:
    with pytest.raises(ValueError, match=r"4 rows.*num_ranks=3"):
        split_batch(train_batch, 3)


def test_pair_batches_split_and_feed_chosen_then_rejected(train_batch: SequenceBatch) -> None:
    pairs = PairBatch(
        chosen=train_batch,
        rejected=train_batch,
        preference_prob=torch.ones(4),
        chosen_is_safe=None,
    )
    shards = split_batch(pairs, 2)
    assert shards[0].chosen_is_safe is None and batch_rows(shards[0]) == 2
    input_ids, attention_mask = model_inputs(shards[0])
    assert input_ids.shape[0] == 4 and attention_mask.dtype == torch.bool
    with pytest.raises(TypeError, match="input_ids"):
        model_inputs(torch.zeros(2, 3))


# -- masks and generation -----------------------------------------------------------------------


def test_response_mask_ends_at_the_first_eos_not_at_pad_ids() -> None:
    eos, pad = 1, 0
    response = torch.tensor([[5, pad, 1, pad, pad], [5, 6, 7, 8, 9], [1, pad, pad, pad, pad]])
    mask = response_mask_from_eos(response, eos)
    assert mask.tolist() == [
        [True, True, True, False, False],  # a pad id before EOS is an ordinary token
        [True] * 5,  # no EOS: cut at the limit, all valid
        [True, False, False, False, False],
    ]


def test_to_sequence_batch_moves_rows_left() -> None:
    out = GenerationOutput(
        prompt_ids=torch.tensor([[0, 7], [8, 9]]),
        sequences=torch.tensor([[0, 7, 5, 1, 0], [8, 9, 6, 6, 6]]),
        attention_mask=torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool(),
        response_mask=torch.tensor([[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]).bool(),
    )
    batch = out.to_sequence_batch(pad_token_id=0)
    assert batch.input_ids.tolist() == [[7, 5, 1, 0, 0], [8, 9, 6, 6, 6]]
    assert batch.attention_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch.response_mask.tolist() == [
        [False, True, True, False, False],
        [False, False, True, True, True],
    ]
    assert out.response_lengths().tolist() == [2, 3]


def test_seeded_generation_is_independent_of_the_batch_split(
    tokenizer, model_spec, prompts: PromptBatch
) -> None:
    torch.manual_seed(0)
    model = build_policy(model_spec, tokenizer).eval()
    spec = GenerationSpec(max_new_tokens=10, temperature=0.8, top_k=12, top_p=0.9, seed=5)
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    full = generate_sequences(model, prompts, spec, **ids)
    again = generate_sequences(model, prompts, spec, **ids)
    assert torch.equal(full.sequences, again.sequences)
    # one row at a time, each with its global index
    for row in range(prompts.input_ids.shape[0]):
        single = PromptBatch(
            prompts.input_ids[row : row + 1], prompts.attention_mask[row : row + 1]
        )
        out = generate_sequences(model, single, spec, row_offset=row, **ids)
        width = out.sequences.shape[1]
        assert torch.equal(out.sequences[0], full.sequences[row, :width])
        assert not full.response_mask[row, width:].any()
    other = generate_sequences(model, prompts, GenerationSpec(max_new_tokens=10, seed=6), **ids)
    assert not torch.equal(other.sequences, full.sequences)
    assert row_seed(5, 0, 0) != row_seed(5, 1, 0) != row_seed(5, 0, 1)


def test_greedy_generation_matches_plain_generate(tokenizer, model_spec, prompts) -> None:
    torch.manual_seed(0)
    model = build_policy(model_spec, tokenizer).eval()
    spec = GenerationSpec(max_new_tokens=6, do_sample=False)
    out = generate_sequences(
        model,
        prompts,
        spec,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    plain = model.generate(
        input_ids=prompts.input_ids,
        attention_mask=prompts.attention_mask.long(),
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    assert torch.equal(out.sequences, plain)


# -- placement and vLLM -------------------------------------------------------------------------


def test_colocation_validation() -> None:
    sets = colocation_sets(
        {
            "policy": GroupSpec(2),
            "reference": GroupSpec(2, colocate_with="policy"),
            "reward": GroupSpec(1, colocate_with="reference"),
            "critic": GroupSpec(1),
        }
    )
    assert sets == {"policy": ["policy", "reference", "reward"], "critic": ["critic"]}
    with pytest.raises(ValueError, match=r"groups\.a\.colocate_with='zzz'"):
        colocation_sets({"a": GroupSpec(1, colocate_with="zzz")})
    with pytest.raises(ValueError, match="cycle"):
        colocation_sets(
            {"a": GroupSpec(1, colocate_with="b"), "b": GroupSpec(1, colocate_with="a")}
        )
    with pytest.raises(ValueError, match=r"groups\.b\.num_ranks=2"):
        colocation_sets({"a": GroupSpec(1), "b": GroupSpec(2, colocate_with="a")})


def test_vllm_request_without_vllm_or_gpus_says_what_is_missing() -> None:
    with pytest.raises(RuntimeError, match=r"'vllm' package is not installed.*GPU"):
        require_vllm(VLLMSpec(num_engines=2).gpus_needed)
