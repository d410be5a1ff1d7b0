"""The preference learner: interleaved batches, cached reference log-probs, the per-micro-batch
loss against the core registry, and every registered loss training through the runtime.

One set of groups serves the module (a 2-rank ZeRO-2 policy and a 1-rank reference, both from a
tiny reference policy SFT-ed in-process); the policy is restored from its initial checkpoint
before each loss.
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from saferl.core.preference_losses import PREFERENCE_LOSSES, PreferenceLogps, preference_loss
from saferl.data.records import PreferencePair, SafetyPreferencePair
from saferl.data.world import (
    ReferenceConfig,
    make_preference_pairs,
)
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners.preference_update import (
    PreferenceTrainBatch,
    attach_reference_logps,
    build_preference_batch,
    preference_pair_loss,
    safe_pairs,
    select_pairs,
    train_preference,
)
from saferl.models import ModelSpec, load_policy, policy_token_logprobs
from saferl.runtime import (
    DeepSpeedSpec,
    GroupSpec,
    PolicyGroup,
    ReferenceGroup,
    RuntimeSpec,
)

pytestmark = pytest.mark.slow

RUNTIME = RuntimeSpec(local_num_cpus=8, startup_timeout_s=300, call_timeout_s=300)
SFT_REFERENCE = ReferenceConfig(steps=60, num_examples=600)  # read by conftest.sft_dir
PAIRS = 8  # pairs per optimizer step = the fixed training batch
POLICY_RANKS = 2
MICRO = 4  # rows per micro-batch per rank (2 pairs); 2 accumulation steps: 2 * 2 * 4 = 16 rows


@pytest.fixture(scope="module")
def sft_model(sft_dir):
    model, _ = load_policy(sft_dir)
    return model.eval()


def texts(tokenizer, batch: PreferenceTrainBatch, row: int) -> tuple[str, str]:
    """(prompt, response) of one row, decoded (the response ends with the EOS word)."""
    ids, real, response = batch.input_ids[row], batch.attention_mask[row], batch.response_mask[row]
    return tokenizer.decode(ids[real & ~response]), tokenizer.decode(ids[response])


def in_process_logps(model, batch: PreferenceTrainBatch) -> torch.Tensor:
    with torch.no_grad():
        token_logprobs = policy_token_logprobs(model, batch.input_ids, batch.attention_mask)
    return (token_logprobs * batch.response_mask).sum(-1)  # (2P,) masked sums


# ---------------------------------------------------------------------------------------------
# Batches (no Ray)


@pytest.mark.parametrize("ordering", ["better", "safer"])
def test_batch_interleaves_chosen_then_rejected_in_either_ordering(tokenizer, ordering):
    pairs = make_preference_pairs(12, seed=3)
    batch = build_preference_batch(pairs, tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE, ordering)
    assert batch.input_ids.shape[0] == 24 and batch.num_pairs == 12
    assert batch.ref_logps is None and batch.ordering == ordering
    for i, pair in enumerate(pairs):
        if ordering == "better":
            chosen, rejected = pair.better, pair.worse
            labels = (pair.better_is_safe, pair.worse_is_safe)
        else:
            chosen, rejected = pair.safer, pair.unsafer
            labels = (pair.safer_is_safe, pair.unsafer_is_safe)
        assert texts(tokenizer, batch, 2 * i) == (pair.prompt, f"{chosen} <eos>")
        assert texts(tokenizer, batch, 2 * i + 1) == (pair.prompt, f"{rejected} <eos>")
        for row in (2 * i, 2 * i + 1):  # pair labels repeated on both rows
            assert (bool(batch.chosen_is_safe[row]), bool(batch.rejected_is_safe[row])) == labels
            assert batch.preference_prob[row] == 1.0
        # |y| counts the response words and the EOS.
        assert batch.response_lengths[2 * i] == len(chosen.split()) + 1
        assert batch.response_lengths[2 * i + 1] == len(rejected.split()) + 1
    # The orderings disagree somewhere in these pairs, so the test tells them apart.
    assert any(pair.better_response_id != pair.safer_response_id for pair in pairs)


def test_generic_pairs_keep_their_order_and_soft_labels(tokenizer):
    pairs = [
        PreferencePair("explain bread", "bread steps", "sorry", 0.8),
        PreferencePair("describe poison", "sorry", "poison detail", 1.0),
    ]
    batch = build_preference_batch(pairs, tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE)
    assert texts(tokenizer, batch, 0) == ("explain bread", "bread steps <eos>")
    assert texts(tokenizer, batch, 3) == ("describe poison", "poison detail <eos>")
    torch.testing.assert_close(batch.preference_prob, torch.tensor([0.8, 0.8, 1.0, 1.0]))
    assert batch.chosen_is_safe is None and batch.ordering == "chosen"
    relabelled = build_preference_batch(
        pairs, tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE, preference_probs=[0.25, 0.5]
    )
    torch.testing.assert_close(relabelled.preference_prob, torch.tensor([0.25, 0.25, 0.5, 0.5]))
    with pytest.raises(ValueError, match="SafetyPreferencePair"):
        build_preference_batch(pairs, tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE, "safer")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build_preference_batch(
            pairs, tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE, preference_probs=[1.5, 0.5]
        )


def test_safe_pairs_keep_exactly_one_safe_response_chosen_first(tokenizer):
    pairs = make_preference_pairs(60, seed=5)
    # A contradictory record: response 1 is the safe one, but safer_response_id says 0.
    odd = SafetyPreferencePair("describe poison", "poison steps", "sorry", 0, 0, False, True)
    selected = safe_pairs([*pairs, odd])
    expected = [p for p in pairs if p.is_response_0_safe != p.is_response_1_safe]
    assert len(selected) == len(expected) + 1 and len(expected) >= PAIRS
    assert all(p.safer_is_safe and not p.unsafer_is_safe for p in selected)
    assert selected[-1].safer == "sorry"
    batch = build_preference_batch(
        selected, tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE, ordering="safer"
    )
    assert bool(batch.chosen_is_safe.all()) and not bool(batch.rejected_is_safe.any())
    assert texts(tokenizer, batch, batch.input_ids.shape[0] - 2)[1] == "sorry <eos>"


def test_select_pairs_keeps_pairs_together_and_trims_padding(tokenizer):
    batch = build_preference_batch(
        make_preference_pairs(6, seed=3), tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
    )
    picked = select_pairs(batch, [4, 1])
    rows = torch.tensor([8, 9, 2, 3])
    width = picked.input_ids.shape[1]
    torch.testing.assert_close(picked.input_ids, batch.input_ids[rows, :width])
    torch.testing.assert_close(picked.chosen_is_safe, batch.chosen_is_safe[rows])
    assert bool(picked.attention_mask[:, -1].any())  # no column of pure padding is left


# ---------------------------------------------------------------------------------------------
# The loss against the core registry (no Ray)


def random_micro_batch(num_pairs: int, seq_len: int, generator: torch.Generator):
    """Hand-built interleaved micro-batch: random token log-probs, masks, labels."""
    rows = 2 * num_pairs
    token_logprobs = -torch.rand(rows, seq_len, generator=generator) * 2  # (rows, seq_len)
    starts = torch.randint(1, 3, (rows,), generator=generator)
    stops = torch.randint(4, seq_len + 1, (rows,), generator=generator)
    position = torch.arange(seq_len)
    attention_mask = position < stops[:, None]
    response_mask = (position >= starts[:, None]) & attention_mask
    safe = torch.randint(0, 2, (num_pairs, 2), generator=generator).bool()
    batch = PreferenceTrainBatch(
        input_ids=torch.zeros(rows, seq_len, dtype=torch.long),
        attention_mask=attention_mask,
        response_mask=response_mask,
        response_lengths=response_mask.sum(-1).float(),
        preference_prob=torch.ones(rows),
        chosen_is_safe=safe[:, 0].repeat_interleave(2),
        rejected_is_safe=safe[:, 1].repeat_interleave(2),
        ref_logps=-torch.rand(rows, generator=generator) * 6,
    )
    return token_logprobs, batch


def hand_built_logps(token_logprobs, batch, average: bool) -> PreferenceLogps:
    """The de-interleaved pairs, computed pair by pair with Python loops."""
    token_logprobs = token_logprobs.detach()
    fields = {name: [] for name in ("w", "l", "rw", "rl", "nw", "nl", "sw", "sl")}
    for i in range(batch.num_pairs):
        for side, row in (("w", 2 * i), ("l", 2 * i + 1)):
            length = float(batch.response_mask[row].sum())
            total = float(token_logprobs[row][batch.response_mask[row]].sum())
            ref = float(batch.ref_logps[row])
            fields[side].append(total / length if average else total)
            fields[f"r{side}"].append(ref / length if average else ref)
            fields[f"n{side}"].append(length)
        fields["sw"].append(bool(batch.chosen_is_safe[2 * i]))
        fields["sl"].append(bool(batch.rejected_is_safe[2 * i]))
    t = {key: torch.tensor(values) for key, values in fields.items()}
    return PreferenceLogps(
        chosen_logps=t["w"],
        rejected_logps=t["l"],
        ref_chosen_logps=t["rw"],
        ref_rejected_logps=t["rl"],
        chosen_lengths=t["nw"],
        rejected_lengths=t["nl"],
        chosen_is_safe=t["sw"],
        rejected_is_safe=t["sl"],
    )


@pytest.mark.parametrize("loss_name", sorted(PREFERENCE_LOSSES))
def test_pair_loss_is_the_core_loss_of_the_deinterleaved_pairs(loss_name):
    generator = torch.Generator().manual_seed(7)
    token_logprobs, batch = random_micro_batch(5, 9, generator)
    token_logprobs.requires_grad_(True)
    hparams = {"tau": 0.5} if loss_name == "bfpo" else {}
    loss, metrics = preference_pair_loss(token_logprobs, batch, loss_name, hparams, False)
    expected = preference_loss(loss_name, hand_built_logps(token_logprobs, batch, False), **hparams)
    torch.testing.assert_close(loss, expected.mean())
    loss.backward()  # the gradient reaches the policy's token log-probs (response tokens only)
    assert bool(token_logprobs.grad[~batch.response_mask].eq(0).all())
    assert bool(token_logprobs.grad[batch.response_mask].ne(0).any())
    assert {"chosen_logps", "rejected_logps", "reward_margin"} <= set(metrics)
    assert ("reward_accuracy" in metrics) == (loss_name != "bfpo")
    if PREFERENCE_LOSSES[loss_name].needs_reference:  # length averaging: reference losses only
        averaged, _ = preference_pair_loss(token_logprobs, batch, loss_name, hparams, True)
        expected = preference_loss(
            loss_name, hand_built_logps(token_logprobs, batch, True), **hparams
        )
        torch.testing.assert_close(averaged, expected.mean())
    else:  # orpo/simpo divide by the lengths themselves: averaging again is refused
        with pytest.raises(ValueError, match="average_logps"):
            preference_pair_loss(token_logprobs, batch, loss_name, hparams, True)


def test_pair_loss_worked_values_and_soft_labels():
    # One pair, one response token each: u_w = 2, u_l = −1 with β = 0.1 (docs/algorithms.md §5):
    # DPO = −log σ(0.3) ≈ 0.55436, NCA = −log σ(0.2) − ½ log σ(−0.2) − ½ log σ(0.1) ≈ 1.31941.
    mask = torch.tensor([[False, True], [False, True]])
    batch = PreferenceTrainBatch(
        input_ids=torch.zeros(2, 2, dtype=torch.long),
        attention_mask=torch.ones(2, 2, dtype=torch.bool),
        response_mask=mask,
        response_lengths=torch.ones(2),
        preference_prob=torch.ones(2),
        chosen_is_safe=None,
        rejected_is_safe=None,
        ref_logps=torch.tensor([-3.0, -2.0]),
    )
    token_logprobs = torch.tensor([[0.0, -1.0], [0.0, -3.0]])  # sums −1 and −3
    dpo, metrics = preference_pair_loss(token_logprobs, batch, "dpo", {}, False)
    nca, _ = preference_pair_loss(token_logprobs, batch, "nca", {}, False)
    assert dpo.item() == pytest.approx(0.55436, abs=1e-5)
    assert nca.item() == pytest.approx(1.31941, abs=1e-5)
    assert metrics["reward_accuracy"].item() == 1.0
    assert metrics["reward_margin"].item() == pytest.approx(0.3)  # β h
    # A soft label p = 0.7 gives −0.7 log σ(0.3) − 0.3 log σ(−0.3).
    soft = replace(batch, preference_prob=torch.full((2,), 0.7))
    dpo_soft, _ = preference_pair_loss(token_logprobs, soft, "dpo", {}, False)
    expected = -0.7 * math.log(1 / (1 + math.exp(-0.3))) - 0.3 * math.log(1 / (1 + math.exp(0.3)))
    assert dpo_soft.item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="hard labels only"):
        preference_pair_loss(token_logprobs, soft, "kto", {}, False)


def test_likelihood_weight_adds_the_weighted_negative_log_likelihood_per_pair():
    # Two pairs, one response token each; policy sums −1, −3 (pair 0) and −0.5, −2 (pair 1).
    # With weights b = 0.2, 0, 1, 0.4 the term is the mean over pairs of b_w·(−log π_w) + b_l·(−log π_l):
    # ((0.2·1 + 0) + (1·0.5 + 0.4·2)) / 2 = 0.75, added to DPO's mean; average_logps leaves it on the sums.
    mask = torch.tensor([[False, True, False], [False, True, True], [False, True, False], [False, True, False]])
    batch = PreferenceTrainBatch(
        input_ids=torch.zeros(4, 3, dtype=torch.long), attention_mask=torch.ones(4, 3, dtype=torch.bool),
        response_mask=mask, response_lengths=mask.sum(-1).float(), preference_prob=torch.ones(4),
        chosen_is_safe=None, rejected_is_safe=None, ref_logps=torch.tensor([-3.0, -2.0, -1.0, -1.0]),
    )
    token_logprobs = torch.tensor([[0.0, -1.0, 0.0], [0.0, -1.0, -2.0], [0.0, -0.5, 0.0], [0.0, -2.0, 0.0]])
    weighted = replace(batch, likelihood_weight=torch.tensor([0.2, 0.0, 1.0, 0.4]))
    for average_logps in (False, True):
        plain, _ = preference_pair_loss(token_logprobs, batch, "dpo", {}, average_logps)
        anchored, metrics = preference_pair_loss(token_logprobs, weighted, "dpo", {}, average_logps)
        assert anchored.item() == pytest.approx(plain.item() + 0.75, abs=1e-6)
        assert metrics["likelihood_term"].item() == pytest.approx(0.75, abs=1e-6)
    # Its gradient reaches the policy's token log-probs: d/dℓ of b·(−ℓ)/2 on the weighted rows.
    leaf = token_logprobs.clone().requires_grad_(True)
    term = preference_pair_loss(leaf, weighted, "dpo", {}, False)[0] - preference_pair_loss(leaf, batch, "dpo", {}, False)[0]
    term.backward()
    assert torch.allclose(leaf.grad[:, 1], torch.tensor([-0.1, 0.0, -0.5, -0.2]), atol=1e-7)
    assert leaf.grad[1, 2].item() == pytest.approx(0.0, abs=1e-7)  # b = 0 on row 1


def test_train_preference_rejects_misconfiguration_before_any_step(tokenizer):
    pairs = make_preference_pairs(8, seed=3)
    batch = build_preference_batch(pairs, tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE)
    policy = SimpleNamespace(
        deepspeed_spec=DeepSpeedSpec(
            micro_batch_size_per_rank=MICRO, gradient_accumulation_steps=2
        ),
        rank_infos=[None] * POLICY_RANKS,
        train_step=lambda *_: pytest.fail("no step may run"),
    )

    def train(loss_name, data=batch, pairs_per_step=PAIRS, **kwargs):
        return train_preference(
            policy, data, loss_name, steps=1, pairs_per_step=pairs_per_step, seed=0, **kwargs
        )

    with pytest.raises(ValueError, match="valid names: bfpo, cdpo"):
        train("dpoo")
    with pytest.raises(ValueError, match="attach_reference_logps"):
        train("dpo")
    with_ref = replace(batch, ref_logps=torch.zeros(16))
    with pytest.raises(ValueError, match="set pairs_per_step to 8"):
        train("dpo", with_ref, pairs_per_step=4)
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        train("dpo", with_ref, hyperparameters={"tau": 1.0})
    with pytest.raises(ValueError, match="safe_pairs"):
        train("safe_nca", with_ref)
    safer = build_preference_batch(pairs, tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE, "safer")
    with pytest.raises(ValueError, match="ordering='better'"):
        train("bfpo", replace(safer, ref_logps=torch.zeros(16)))
    with pytest.raises(ValueError, match="average_logps"):
        train("simpo", batch, average_logps=True)


def test_reference_logps_pad_the_last_chunk_to_the_ranks(tokenizer, sft_model):
    batch = build_preference_batch(
        make_preference_pairs(7, seed=4), tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
    )
    calls = []

    def token_logprobs(chunk):  # a 2-rank reference group, in-process
        calls.append(chunk.input_ids.shape[0])
        assert chunk.input_ids.shape[0] % 2 == 0
        with torch.no_grad():
            return policy_token_logprobs(sft_model, chunk.input_ids, chunk.attention_mask)

    fake = SimpleNamespace(rank_infos=[None, None], token_logprobs=token_logprobs)
    filled = attach_reference_logps(batch, fake, rows_per_call=4)
    assert calls == [4, 4, 4, 2]  # 14 rows: three full calls and 2 left over
    torch.testing.assert_close(filled.ref_logps, in_process_logps(sft_model, batch))
    with pytest.raises(ValueError, match="multiple of the reference group's 2 ranks"):
        attach_reference_logps(batch, fake, rows_per_call=3)


# ---------------------------------------------------------------------------------------------
# Through the runtime


@pytest.fixture(scope="module")
def groups(ray_cluster, sft_dir, tokenizer, tmp_path_factory):
    spec = ModelSpec(name_or_path=str(sft_dir))
    policy = PolicyGroup(
        spec,
        tokenizer,
        DeepSpeedSpec(
            zero_stage=2,
            learning_rate=2e-3,
            micro_batch_size_per_rank=MICRO,
            gradient_accumulation_steps=2,
        ),
        GroupSpec(num_ranks=POLICY_RANKS, cpus_per_rank=0.25),
        RUNTIME,
        role="preference_policy",
        wait=False,
    )
    reference = ReferenceGroup(
        spec,
        tokenizer,
        DeepSpeedSpec(zero_stage=2, micro_batch_size_per_rank=2 * PAIRS),
        GroupSpec(num_ranks=1, cpus_per_rank=0.25),
        RUNTIME,
        role="preference_reference",
        wait=False,
    )
    try:
        initial = tmp_path_factory.mktemp("preference_initial")
        policy.save_checkpoint(initial)
        yield SimpleNamespace(policy=policy, reference=reference, initial=initial)
    finally:
        policy.shutdown()
        reference.shutdown()


@pytest.fixture(scope="module")
def datasets(groups, tokenizer):
    """The fixed training batches with cached reference log-probs: helpfulness-ordered pairs,
    and the Safe-NCA pairs (safe chosen, unsafe rejected)."""
    pairs = make_preference_pairs(60, seed=11)

    def cached(records, ordering):
        batch = build_preference_batch(
            records[:PAIRS], tokenizer, MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE, ordering
        )
        return attach_reference_logps(batch, groups.reference, rows_per_call=6)

    return {"better": cached(pairs, "better"), "safe": cached(safe_pairs(pairs), "safer")}


def test_reference_group_logps_equal_the_in_process_model(datasets, sft_model):
    for batch in datasets.values():
        torch.testing.assert_close(
            batch.ref_logps, in_process_logps(sft_model, batch), rtol=1e-4, atol=1e-4
        )


# Loss at the first step, where the policy still is the reference (u_w = u_l = 0, β = 0.1):
# DPO log 2; hinge 1; IPO (0 − 5)² = 25; NCA 2 log 2; SPPO 25 + 25; KTO (z₀ = 0) ½ + ½.
LOSS_AT_REFERENCE = {
    "dpo": math.log(2),
    "cdpo": math.log(2),
    "robust_dpo": math.log(2),
    "hinge": 1.0,
    "ipo": 25.0,
    "nca": 2 * math.log(2),
    "safe_nca": 2 * math.log(2),
    "sppo": 50.0,
    "kto": 1.0,
}


@pytest.mark.parametrize("loss_name", sorted(PREFERENCE_LOSSES))
def test_each_loss_lowers_itself_through_two_zero2_ranks(groups, datasets, loss_name):
    groups.policy.load_checkpoint(groups.initial)
    batch = datasets["safe" if loss_name == "safe_nca" else "better"]
    history = train_preference(
        groups.policy, batch, loss_name, {}, steps=5, pairs_per_step=PAIRS, seed=0
    )
    losses = [metrics["preference/loss"] for metrics in history]
    assert all(math.isfinite(value) for value in losses), losses
    assert losses[-1] < losses[0], losses
    # Before the first update the policy is the reference: the core loss of the cached
    # reference log-probs in both roles (this covers orpo, simpo and bfpo too).
    ref = batch.ref_logps
    at_reference = PreferenceLogps(
        chosen_logps=ref[0::2],
        rejected_logps=ref[1::2],
        ref_chosen_logps=ref[0::2],
        ref_rejected_logps=ref[1::2],
        chosen_lengths=batch.response_lengths[0::2],
        rejected_lengths=batch.response_lengths[1::2],
        chosen_is_safe=batch.chosen_is_safe[0::2],
        rejected_is_safe=batch.rejected_is_safe[0::2],
    )
    expected = preference_loss(loss_name, at_reference).mean().item()
    assert losses[0] == pytest.approx(expected, rel=1e-3, abs=1e-4)
    if loss_name in LOSS_AT_REFERENCE:
        assert losses[0] == pytest.approx(LOSS_AT_REFERENCE[loss_name], rel=1e-3)
        assert history[0]["preference/reward_margin"] == pytest.approx(0.0, abs=1e-3)
    for key in ("preference/reward_margin", "preference/chosen_logps", "preference/grad_norm"):
        assert math.isfinite(history[-1][key]), key


def test_a_nan_on_one_rank_is_refused_by_both_and_the_guard_stops_or_skips(groups, datasets):
    from functools import partial

    from saferl.core.finite import NonFiniteError

    def weights() -> list[dict[str, torch.Tensor]]:
        return groups.policy.state_dicts()  # one full copy per rank

    def assert_unchanged(before: list[dict[str, torch.Tensor]]) -> None:
        for got, expected in zip(weights(), before, strict=True):
            assert all(torch.equal(got[key], expected[key]) for key in expected)

    groups.policy.load_checkpoint(groups.initial)
    before = weights()
    batch = datasets["better"]  # 16 rows: rank 1 holds rows 8-15, its first micro-batch rows 8-11
    ref_logps = batch.ref_logps.clone()
    ref_logps[9] = math.nan  # pair 4's rejected row: only rank 1's loss is NaN
    poisoned = replace(batch, ref_logps=ref_logps)

    # In the ranks: rank 0's loss is finite, yet it refuses too (or it would wait alone in ZeRO-2's
    # gradient reduction); nothing is updated on either rank.
    loss_fn = partial(preference_pair_loss, loss_name="dpo", hyperparameters={}, average_logps=False)
    output = groups.policy.train_step(poisoned, loss_fn, report_nonfinite=True)
    assert output.refused is not None and output.refused.where == "preference_policy rank 1"
    assert_unchanged(before)

    # On the driver, before the ranks: stop (naming the tensor and the step), or skip and count.
    with pytest.raises(NonFiniteError, match="non-finite reference log-probs at iteration 1 on the driver: 1 NaN"):
        train_preference(groups.policy, poisoned, "dpo", {}, steps=1, pairs_per_step=PAIRS, seed=0)
    skipped = train_preference(
        groups.policy, poisoned, "dpo", {}, steps=2, pairs_per_step=PAIRS, seed=0, skip_nonfinite_batches=True
    )
    assert skipped == [{"perf/skipped_batches": 1.0}, {"perf/skipped_batches": 2.0}]
    assert_unchanged(before)

    # The group still trains on clean pairs.
    clean = train_preference(groups.policy, batch, "dpo", {}, steps=1, pairs_per_step=PAIRS, seed=0)
    assert math.isfinite(clean[0]["preference/loss"]) and clean[0]["perf/skipped_batches"] == 0.0
