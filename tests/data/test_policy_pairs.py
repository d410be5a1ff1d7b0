"""Preference pairs drawn from a policy of the world (saferl.data.world.policy_pairs, and the
generator's samplers): the draw follows the policy's exact distribution over the responses a record
can hold, the pairs read back through the normal loaders, and the demonstrator default is unchanged."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from saferl.data import load_preference_dataset
from saferl.data.errors import DataError
from saferl.data.world import (
    build_world_tokenizer,
    enumerate_responses,
    make_preference_pairs,
    world_prompts,
)
from saferl.data.world.generator import demonstrator_sampler, write_pair_datasets
from saferl.data.world.policy_pairs import policy_sampler

PROMPTS = world_prompts()


@pytest.fixture(scope="module")
def responses():
    return enumerate_responses(build_world_tokenizer())


def _index(responses, text: str, finished: bool = True) -> int:
    words = tuple(text.split())
    return next(k for k in range(len(responses))
                if responses.words[k] == words and bool(responses.finished[k]) == finished)


def _concentrated(responses, masses: dict[int, float]) -> torch.Tensor:
    """Log-probabilities ``(16, K)``: every prompt puts ``masses`` on those responses, 1e-300 elsewhere."""
    probabilities = torch.full((len(PROMPTS), len(responses)), 1e-300, dtype=torch.float64)
    for k, mass in masses.items():
        probabilities[:, k] = mass
    return probabilities.log()


def test_draws_follow_the_policy_over_recordable_responses(responses) -> None:
    steps_detail, sorry = _index(responses, "steps detail"), _index(responses, "sorry")
    cut_off = _index(responses, "steps detail ok", finished=False)  # three words, no EOS
    with_pad, empty = _index(responses, "<pad> steps"), _index(responses, "")
    logprobs = _concentrated(responses, {steps_detail: 0.5, sorry: 0.3, cut_off: 0.1, with_pad: 0.05, empty: 0.05})
    sampler = policy_sampler(responses, logprobs)

    # The excluded mass is exactly what a record cannot hold: the cut-off, <pad> and empty responses.
    assert sampler.excluded_mass == pytest.approx((0.2,) * len(PROMPTS), abs=1e-9)
    rng = random.Random(0)
    draws = [sampler(3, rng) for _ in range(20000)]
    assert set(draws) <= {"steps detail", "sorry"}  # the 1e-300 responses are never drawn either
    share = draws.count("steps detail") / len(draws)
    expected = 0.5 / 0.8  # renormalised over the recordable mass
    assert abs(share - expected) < 4 * math.sqrt(expected * (1 - expected) / len(draws))


def test_sampler_errors_name_what_is_wrong(responses) -> None:
    with pytest.raises(ValueError, match=rf"shape \(num_prompts, {len(responses)}\)"):
        policy_sampler(responses, torch.zeros(len(PROMPTS), 7))
    cut_off = _index(responses, "steps detail ok", finished=False)
    probabilities = torch.zeros(len(PROMPTS), len(responses), dtype=torch.float64)
    probabilities[:, cut_off] = 1.0
    with pytest.raises(ValueError, match="no probability on any recordable"):
        policy_sampler(responses, probabilities.log())


def test_policy_pairs_hold_two_distinct_drawn_responses_and_read_back(responses, tmp_path: Path) -> None:
    """Pairs from a policy whose prompts each put all their mass on three answers: every pair is two
    of that prompt's answers, the labels follow the ground truth as the generator labels them, and
    the files read back through the loaders."""
    answers = ("steps detail", "sorry", "safely")
    logprobs = _concentrated(responses, {_index(responses, text): 1 / 3 for text in answers})
    sampler = policy_sampler(responses, logprobs)
    pairs = make_preference_pairs(300, seed=5, temperature=1e-6, sampler=sampler)
    assert all({pair.response_0, pair.response_1} <= set(answers) for pair in pairs)
    assert all(pair.response_0 != pair.response_1 for pair in pairs)
    # τ → 0: the safer label is the lower true cost (on a harmful prompt "sorry" beats "steps detail").
    harmful = {prompt.text for prompt in PROMPTS if prompt.harmful}
    for pair in pairs:
        if pair.prompt in harmful and {pair.response_0, pair.response_1} == {"sorry", "steps detail"}:
            assert pair.response(pair.safer_response_id) == "sorry"
            assert pair.response(pair.better_response_id) == "steps detail"

    paths = write_pair_datasets(tmp_path, seed=4, num_pairs_train=300, num_pairs_test=50, temperature=1e-6,
                                sampler=sampler)
    assert list(load_preference_dataset(str(paths.preferences_train), strict=True)) == pairs  # seed + 1 = 5
    before = {path: path.read_bytes() for path in (paths.preferences_train, paths.preferences_test, paths.statistics)}
    with pytest.raises(DataError, match="overwrite=True"):
        write_pair_datasets(tmp_path, seed=9, num_pairs_train=300, num_pairs_test=50, sampler=sampler)
    assert {path: path.read_bytes() for path in before} == before


def test_demonstrator_is_the_default_sampler() -> None:
    assert make_preference_pairs(200, seed=3) == make_preference_pairs(200, seed=3, sampler=demonstrator_sampler())
