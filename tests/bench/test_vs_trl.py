"""experiments/bench/vs_trl.py's pure helpers: the world's reward read off token ids (as saferl's
oracle scorer reads it), the steady-state rates, the median, the table and the ratio line; and its
exit status without TRL. The one test that runs TRL is skipped where TRL is not installed (the
``dev`` extra does not install it; ``bench`` does)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch

from saferl.data.batches import SequenceBatch
from saferl.data.world import build_world_tokenizer, ground_truth_reward, world_prompts
from saferl.learners.scorers import WorldOracleScorer

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "bench" / "vs_trl.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("vs_trl_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer():
    return build_world_tokenizer()


def ids(tokenizer, words: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(words.split())


# (prompt, response tokens, the world's reward worked by hand)
CASES = [
    # steps +1, one detail +1; finished
    ("explain bread", "steps detail <eos>", 2.0),
    # + on topic 0.5, but unfinished (no EOS) −0.5
    ("explain bread", "bread steps detail", 2.0),
    # nothing before EOS: empty −1; what follows EOS is not read
    ("describe bread", "<eos> detail detail", -1.0),
    # a refusal on a harmful prompt −0.5
    ("describe poison", "sorry <eos>", -0.5),
    # a refusal on a benign prompt −1.5, plus on topic 0.5
    ("explain garden", "sorry garden <eos>", -1.0),
    # a special token and another topic are off-topic words, −1 each
    ("explain weapon", "<unk> bread <eos>", -2.0),
    # steps +1, two details +1.5, on topic +0.5; finished
    ("explain theft", "steps detail theft detail <eos>", 3.0),
]


@pytest.mark.parametrize(("prompt", "response", "expected"), CASES)
def test_the_reward_adapter_gives_the_worlds_exact_reward(
    bench, tokenizer, prompt, response, expected
):
    assert bench.world_reward_of_ids(prompt, ids(tokenizer, response), tokenizer) == pytest.approx(
        expected
    )


def test_the_reward_adapter_agrees_with_saferls_oracle_scorer_and_the_ground_truth(
    bench, tokenizer
):
    prompts = {p.text: p for p in world_prompts()}
    rows, texts = [], []
    for prompt, response, _ in CASES:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = ids(tokenizer, response)
        eos = tokenizer.eos_token_id
        # The rollout's response mask stops at the first EOS (included).
        kept = response_ids[: response_ids.index(eos) + 1] if eos in response_ids else response_ids
        rows.append((prompt_ids, kept))
        texts.append(prompt)
    width = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        response_mask[i, len(p) : len(p) + len(r)] = True
    batch = SequenceBatch(input_ids, input_ids != tokenizer.pad_token_id, response_mask)
    oracle = WorldOracleScorer("reward", tokenizer).score(batch, texts)[:, 0].tolist()
    reward = bench.WorldReward(tokenizer)
    adapter = reward(
        prompts=texts,
        completions=["?"] * len(rows),
        completion_ids=[r for _, r in rows],
        trainer_state=None,
    )
    assert adapter == pytest.approx(oracle)
    assert adapter == pytest.approx([expected for _, _, expected in CASES])
    # what it counted: one call, its completions and their tokens (EOS included)
    assert reward.calls == [(len(rows), sum(len(r) for _, r in rows))]
    assert reward.__name__ == "world_ground_truth"
    # and the ground truth itself, on the words
    assert ground_truth_reward(prompts["explain bread"], ["steps", "detail"], True) == 2.0


def test_the_reward_adapter_refuses_a_prompt_outside_the_world(bench, tokenizer):
    with pytest.raises(ValueError, match="not a prompt of the built-in world"):
        bench.world_reward_of_ids("explain cake", [], tokenizer)


def test_steady_rate_times_from_the_end_of_the_first_update(bench):
    rate = bench.steady_rate([10.0, 11.0, 13.0], [16, 16, 16], [40, 48, 32])
    assert rate.samples_per_s == pytest.approx(32 / 3)
    assert rate.tokens_per_s == pytest.approx(80 / 3)
    assert rate.seconds_per_update == pytest.approx(1.5)
    assert rate.timed_updates == 2
    assert rate.cpu_seconds_per_update is None
    with_cpu = bench.steady_rate([10.0, 11.0, 13.0], [16, 16, 16], [40, 48, 32], [100.0, 101.5, 103.5])
    assert with_cpu.cpu_seconds_per_update == pytest.approx(3.5 / 2)
    assert bench.steady_rate([10.0, 11.0], [16, 16], [4, 4], [None, None]).cpu_seconds_per_update is None
    with pytest.raises(ValueError, match="at least 2 updates"):
        bench.steady_rate([1.0], [16], [3])
    with pytest.raises(ValueError, match="at least 2 updates"):
        bench.steady_rate([1.0, 2.0], [16], [3, 3])
    with pytest.raises(ValueError, match="do not increase"):
        bench.steady_rate([2.0, 2.0], [16, 16], [3, 3])


def test_median_ratio_line_and_table(bench):
    Rate = bench.Rate
    rates = [Rate(10.0, 30.0, 1.6, 7, 2.0), Rate(30.0, 90.0, 0.5, 7, None), Rate(20.0, 50.0, 0.8, 7, 1.0)]
    assert bench.median_rate(rates) == Rate(20.0, 50.0, 0.8, 7, 1.5)  # CPU: of the repeats that know it
    assert bench.median_rate(rates[1:2]).cpu_seconds_per_update is None
    assert bench.ratio_line(183.0, 100.0, 107.0) == "ratio vs TRL RLOO: 1.83, vs TRL GRPO: 1.71"
    assert bench.ratio_line(50.0, 100.0, 200.0) == "ratio vs TRL RLOO: 0.50, vs TRL GRPO: 0.25"
    lines = bench.table({"saferl PPO-Lag": rates, "TRL RLOO": rates[:1]}, {"TRL RLOO": "no critic"})
    assert lines[0].startswith("| side ") and len(lines) == 4
    assert lines[2].startswith(
        "| saferl PPO-Lag |      20.0 |     50.0 |    0.800 |        1.500 | 10.0, 30.0, 20.0"
    )
    assert lines[3].endswith("| no critic") and "|        2.000 |" in lines[3]


def test_the_machines_busy_time_grows_with_work_in_this_process(bench):
    before, started = bench.machine_busy_s(), time.process_time()
    if before is None:
        pytest.skip("no /proc/stat on this machine")
    while time.process_time() - started < 0.3:  # 0.3 s of this process's CPU
        pass
    # Every process counts, so the machine's busy time grew by at least this process's.
    assert bench.machine_busy_s() - before >= 0.3 - 0.02


def test_settings_are_checked(bench):
    with pytest.raises(ValueError, match="multiple of --generations"):
        bench.BenchSettings(batch=10, generations=4)
    with pytest.raises(ValueError, match="warm-up"):
        bench.BenchSettings(updates=1)
    with pytest.raises(ValueError, match="group per prompt"):
        bench.BenchSettings(batch=4, generations=1)


def test_without_trl_it_says_so_and_exits_2(bench, monkeypatch, capsys):
    monkeypatch.setattr(bench, "trl_version", lambda: None)
    assert bench.main([]) == bench.MISSING_TRL == 2
    assert "TRL is not installed" in capsys.readouterr().err


@pytest.mark.slow  # about a minute on a loaded 2-core machine, mostly importing and building TRL
def test_trl_runs_with_the_worlds_reward_of_its_own_completions(bench, tokenizer):
    pytest.importorskip(
        "trl", reason="TRL is in the bench extra (pip install -e '.[bench]'), not in dev"
    )
    settings = bench.BenchSettings(batch=4, new_tokens=3, updates=2, generations=2, repeats=1)
    rate = bench.run_trl("grpo", settings)
    assert rate.timed_updates == 1 and rate.samples_per_s > 0 and rate.tokens_per_s > 0


def test_the_next_side_waits_until_the_machine_is_quiet(bench):
    cores = bench.os.cpu_count() or 1
    clock = {"busy": 0.0}

    def busy_for(shares):  # each call after the first adds the next share of a 0.01 s window
        shares = iter(shares)

        def busy():
            clock["busy"] += next(shares, 0.0) * 0.01 * cores
            return clock["busy"]

        return busy

    # Busy (90 %) for two windows, then quiet: it waits three windows.
    waited = bench.wait_until_quiet(busy_for([0, 0.9, 0, 0.9, 0, 0.05]), window_s=0.01, limit_s=5.0)
    assert 0.03 <= waited < 1.0
    # Always busy: it gives up at the limit.
    always = busy_for([1.0] * 1000)
    assert 0.1 <= bench.wait_until_quiet(always, window_s=0.01, limit_s=0.1) < 1.0
    # No /proc/stat: no wait.
    assert bench.wait_until_quiet(lambda: None, window_s=0.5) < 0.1
