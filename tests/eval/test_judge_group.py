"""Judges and the RBR grader as a Ray actor group: two ranks give the one-process numbers.

One causal-LM judge group (2 ranks, ZeRO-3: the weights partitioned, the greedy continuation
stepped in lock-step across ranks) serves the LlamaGuard judge and the RBR LM grader; a classifier
group (2 ranks, ZeRO 0) the classifier judge; it runs first, and its rank processes, handed back to
the pool, serve the causal group (same shape). Five rows of several lengths: the group pads them to
six, sorts them by length, shards them and gives them back in order.
"""

from __future__ import annotations

import pytest
import torch

from saferl.eval.judge_settings import JudgeSettings
from saferl.eval.judges import ClassifierJudge, LlamaGuardJudge, build_judge
from saferl.models import ModelSpec
from saferl.runtime import DeepSpeedSpec, GroupSpec, RuntimeSpec
from saferl.runtime.judging import JudgeGroup, LocalJudgeModel

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

PROMPTS = ["how to make a weapon", "how to bake bread", "sure", "how to bake bread", "bad"]
RESPONSES = [
    "sure here is the recipe",
    "sorry i can not help",
    "fine",
    "here is the recipe bake the bread bake the bread",
    "i can not",
]
RUNTIME = RuntimeSpec(startup_timeout_s=300, call_timeout_s=300, collective_timeout_s=200)
TWO_RANKS = GroupSpec(num_ranks=2, cpus_per_rank=0.5)


def test_the_classifier_judge_on_two_ranks_gives_the_one_process_verdicts(tmp_path, judge_models):
    tokenizer = judge_models.make_tokenizer()
    folder = judge_models.save_classifier(tmp_path / "cls", tokenizer, {0: "safe", 1: "unsafe"})
    settings = JudgeSettings(kind="classifier", path=str(folder), micro_batch_size=2)
    judge = build_judge(settings, runtime=RUNTIME, group=TWO_RANKS)
    try:
        assert isinstance(judge, ClassifierJudge) and isinstance(judge.reader, JudgeGroup)
        sharded = judge.judge(PROMPTS, RESPONSES)
    finally:
        judge.shutdown()
    expected = build_judge(settings, local=True).judge(PROMPTS, RESPONSES)
    assert sharded.p_unsafe == pytest.approx(expected.p_unsafe, abs=1e-6)
    assert max(expected.p_unsafe) - min(expected.p_unsafe) > 0.05


@pytest.fixture(scope="module")
def llama(tmp_path_factory, judge_models):
    tokenizer = judge_models.make_tokenizer()
    folder = judge_models.save_random_llama(tmp_path_factory.mktemp("llama"), tokenizer)
    spec = ModelSpec(name_or_path=str(folder))
    group = JudgeGroup(
        spec,
        tokenizer,
        DeepSpeedSpec(zero_stage=3, learning_rate=0.0),
        TWO_RANKS,
        RUNTIME,
        kind="causal_lm",
        micro_batch_size=2,
        role="test_judge",
    )
    local = LocalJudgeModel.load(spec, tokenizer, "causal_lm", micro_batch_size=2)
    yield group, local
    group.shutdown()


def test_the_llamaguard_judge_on_two_ranks_gives_the_one_process_verdicts(llama):
    group, local = llama
    on_group = LlamaGuardJudge(group, max_new_tokens=4)
    in_process = LlamaGuardJudge(local, max_new_tokens=4)
    sharded = on_group.judge(PROMPTS, RESPONSES)
    expected = in_process.judge(PROMPTS, RESPONSES)
    assert sharded.p_unsafe == pytest.approx(expected.p_unsafe, abs=1e-6)
    assert max(expected.p_unsafe) - min(expected.p_unsafe) > 0.05
    # the greedy continuations (4 tokens, EOS stops a row) are the same, row by row
    rows = [in_process.conversation_ids(p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    options = dict(max_new_tokens=4, stop_token_ids=in_process.stop_ids)
    sets = [in_process.unsafe_ids, in_process.safe_ids]
    group_readings = group.next_token_readings(rows, sets, **options)
    local_readings = local.next_token_readings(rows, sets, **options)
    assert group_readings.continuations == local_readings.continuations
    assert any(len(c) > 1 for c in local_readings.continuations)
    probabilities = group_readings.probabilities(), local_readings.probabilities()
    assert torch.allclose(*probabilities, atol=1e-6, rtol=0)
    # Rows that stop early (on a frequent first token) and rows that run to 6 tokens. (The tiny
    # model's parameters are below ZeRO-3's persistence threshold, so its forwards hold no
    # collective: a broken lock-step would not hang here; with a 352-wide Llama it times out.)
    stop = [local_readings.continuations[0][0]]
    group_readings = group.next_token_readings(rows, sets, max_new_tokens=6, stop_token_ids=stop)
    local_readings = local.next_token_readings(rows, sets, max_new_tokens=6, stop_token_ids=stop)
    assert group_readings.continuations == local_readings.continuations
    assert {len(c) for c in local_readings.continuations} >= {1, 6}


def test_the_rbr_grader_on_two_ranks_gives_grade_with_lm(llama):
    from saferl.rbr.lm_grader import grade_with_group, grade_with_lm
    from saferl.rbr.world import world_spec

    group, local = llama
    spec = world_spec()
    names = list(spec.simple_propositions)[:3]
    responses = ["sorry i can not help", "sure here is the recipe", "fine"]
    sharded = grade_with_group(group, spec, responses, names)
    expected = grade_with_lm(local.module.model, group.tokenizer, spec, responses, names)
    assert sharded.shape == (3, 3)
    assert torch.allclose(sharded, expected, atol=1e-6, rtol=0)
    assert float(expected.max() - expected.min()) > 1e-3
