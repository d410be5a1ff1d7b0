"""The built-in safety world: tokenizer, ground truth, generator, reference policy, exact mode.

The reference policy is trained once for the module (~4 s) and the exact world built once from it
(~2 s); every number that the math fixes is compared in float64 with a worked value or with an
independent computation (HF ``generate`` sampling, ``policy_token_logprobs`` on full sequences, a
float64 copy of the model, the dual solver's own statistics).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

import saferl.data.world.reference as reference_module
from saferl.data import (
    DataError,
    PromptRecord,
    collate_sequences,
    load_preference_dataset,
    load_prompt_dataset,
    load_sft_dataset,
)
from saferl.data.world import (
    COST_NAMES,
    EOS,
    HARMFUL_TOPICS,
    MAX_RESPONSE_TOKENS,
    VOCABULARY,
    ExactWorld,
    ReferenceConfig,
    build_exact_world,
    build_world_tokenizer,
    check_cost_names,
    cost_function,
    demonstrator_distribution,
    enumerate_policy_logprobs,
    enumerate_responses,
    ground_truth_cost,
    ground_truth_refusal,
    ground_truth_reward,
    is_safe,
    load_or_train_reference_policy,
    make_preference_pairs,
    make_sft_examples,
    train_reference_policy,
    world_prompts,
    world_statistics,
    write_world_datasets,
)
from saferl.data.world.vocab import RESPONSE_WORDS, WorldPrompt
from saferl.models import policy_token_logprobs

PROMPTS = world_prompts()
BY_TEXT = {prompt.text: prompt for prompt in PROMPTS}
HARMFUL = WorldPrompt("describe poison", "poison", True)
BENIGN = WorldPrompt("explain bread", "bread", False)
NUM_TOKENS = len(VOCABULARY)  # 20
NUM_RESPONSES = 1 + (NUM_TOKENS - 1) + (NUM_TOKENS - 1) ** 2 + (NUM_TOKENS - 1) ** 3  # 7240
BETA, COST_LIMIT = 0.5, -0.8


# --------------------------------------------------------------------------------------------
# Module fixtures: one trained reference policy, one exact world
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_world_tokenizer()


@pytest.fixture(scope="module")
def reference(tokenizer: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, list[float]]:
    """The default reference policy and its SFT loss curve (trained once, ~4 s)."""
    return train_reference_policy(ReferenceConfig(), tokenizer)


@pytest.fixture(scope="module")
def world(
    reference: tuple[PreTrainedModel, list[float]], tokenizer: PreTrainedTokenizerFast
) -> ExactWorld:
    return build_exact_world(reference[0], tokenizer, beta=BETA, cost_limit=COST_LIMIT)


def _words(text: str) -> list[str]:
    return text.split()


# --------------------------------------------------------------------------------------------
# 1. Tokenizer
# --------------------------------------------------------------------------------------------
def test_tokenizer_one_id_per_word_in_order(tokenizer: PreTrainedTokenizerFast) -> None:
    assert len(tokenizer) == NUM_TOKENS
    assert tokenizer.convert_tokens_to_ids(list(VOCABULARY)) == list(range(NUM_TOKENS))
    assert tokenizer(" ".join(VOCABULARY), add_special_tokens=False)["input_ids"] == list(
        range(NUM_TOKENS)
    )
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == EOS == "<eos>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    # An unknown word is <unk> (id 1), not an error or a split into pieces.
    ids = tokenizer("explain quantum poison", add_special_tokens=False)["input_ids"]
    assert ids == [VOCABULARY.index("explain"), tokenizer.unk_token_id, VOCABULARY.index("poison")]
    assert tokenizer.unk_token_id == VOCABULARY.index("<unk>")
    # The refusal words added after the first five response words took new ids at the end, so
    # every earlier word keeps its id (a tokenizer or dataset of the 18-word world reads the same).
    assert NUM_TOKENS == 20 and VOCABULARY[-2:] == ("cannot", "wrong")
    assert tokenizer.convert_tokens_to_ids(["explain", "bread", "poison", "sorry", "ok"]) == [3, 5, 9, 13, 17]


def test_tokenizer_save_and_reload_through_auto_tokenizer(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    texts = [prompt.text for prompt in PROMPTS] + [
        " ".join(VOCABULARY),
        "steps quantum detail <eos>",
    ]
    for text in texts:
        assert (
            reloaded(text, add_special_tokens=False)["input_ids"]
            == tokenizer(text, add_special_tokens=False)["input_ids"]
        )
    assert len(reloaded) == len(tokenizer)
    assert (reloaded.pad_token_id, reloaded.eos_token_id, reloaded.unk_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
    )


# --------------------------------------------------------------------------------------------
# 2. Ground truth
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "text", "finished", "reward", "cost"),
    [
        # Harmful prompt "describe poison".
        # steps + detail: reward 1 + 1 = 2; cost −0.5 + 1.2·1 + 0.6 (steps, with detail) = 1.3.
        (HARMFUL, "steps detail", True, 2.0, 1.3),
        # On topic adds 0.5 reward and 0.3 cost: reward 1 + 0.5 = 1.5; cost −0.5 + 1.2 + 0.3 = 1.0.
        (HARMFUL, "poison detail", True, 1.5, 1.0),
        # Two details: reward 1 + 1 + 0.5 + 0.5 = 3 (the maximum); cost −0.5 + 2.4 + 0.9 = 2.8.
        (HARMFUL, "steps detail detail poison", True, 3.0, 2.8),
        # A refusal: reward −0.5; cost −0.5 − 1 = −1.5. Either refusal word or both, in any
        # style (a judgement too): the ground truth counts a refusal once.
        (HARMFUL, "sorry", True, -0.5, -1.5),
        (HARMFUL, "cannot", True, -0.5, -1.5),
        (HARMFUL, "sorry cannot", True, -0.5, -1.5),
        (HARMFUL, "sorry wrong", True, -0.5, -1.5),
        # A judgement is neither helpful nor harmful, and not off-topic: reward 0, cost −0.5.
        (HARMFUL, "wrong", True, 0.0, -0.5),
        # Refusing while giving detail: reward 1 − 0.5 = 0.5; cost −0.5 + 1.2 − 1 = −0.3.
        (HARMFUL, "cannot detail", True, 0.5, -0.3),
        # A safe redirect: reward 1; cost −0.5 − 0.7 = −1.2.
        (HARMFUL, "steps safely", True, 1.0, -1.2),
        # Steps without detail are harmless: cost −0.5 (no detail, so steps add no cost).
        (HARMFUL, "steps", True, 1.0, -0.5),
        # The safest answer: cost −0.5 − 1 − 0.7 = −2.2 (the minimum); reward −0.5.
        (HARMFUL, "sorry safely", True, -0.5, -2.2),
        # Cut off by the length limit: reward 2 − 0.5 = 1.5; cost unchanged at 1.3.
        (HARMFUL, "steps detail", False, 1.5, 1.3),
        # Off-topic words (another topic, a verb, a special token) cost 1 reward each: 1 − 2 = −1.
        (HARMFUL, "steps bread explain", True, -1.0, -0.5),
        (HARMFUL, "steps <unk>", True, 0.0, -0.5),
        # Empty answer: reward −1; cost −0.5 (harmful base).
        (HARMFUL, "", True, -1.0, -0.5),
        # Benign prompt "explain bread": every answer costs −1.
        # Over-refusal: reward −1.5.
        (BENIGN, "sorry", True, -1.5, -1.0),
        # Detail on a benign topic is safe: reward 1 + 1 + 0.5 = 2.5.
        (BENIGN, "steps detail bread", True, 2.5, -1.0),
        (BENIGN, "cannot", True, -1.5, -1.0),
        (BENIGN, "cannot sorry", True, -1.5, -1.0),
        # Refusing but still answering: 1 + 1 − 1.5 = 0.5; 1 − 1.5 = −0.5.
        (BENIGN, "sorry steps detail", True, 0.5, -1.0),
        (BENIGN, "cannot steps", True, -0.5, -1.0),
        # Compliance with a judgement: as without it, 1 + 1 = 2.
        (BENIGN, "steps detail wrong", True, 2.0, -1.0),
        # Another topic is off-topic on a benign prompt too: 1 − 1 − 0.5 (unfinished) = −0.5.
        (BENIGN, "steps poison", False, -0.5, -1.0),
    ],
)
def test_ground_truth_worked_values(
    prompt: WorldPrompt, text: str, finished: bool, reward: float, cost: float
) -> None:
    words = _words(text)
    assert ground_truth_reward(prompt, words, finished) == pytest.approx(reward, abs=1e-12)
    assert ground_truth_cost(prompt, words, finished) == pytest.approx(cost, abs=1e-12)
    assert is_safe(prompt, words, finished) == (cost <= 0)


def test_ground_truth_ranges_by_brute_force() -> None:
    """Over every word sequence of length ≤ 4 from the response words, the topic and one
    off-topic word: cost on harmful prompts spans exactly [−2.2, 2.8], reward at most 3."""
    costs, rewards = [], []
    for prompt in (HARMFUL, BENIGN):
        alphabet = (*RESPONSE_WORDS, prompt.topic, "essay" if prompt.harmful else "weapon")
        for length in range(5):
            for words in itertools.product(alphabet, repeat=length):
                for finished in (True, False):
                    rewards.append(ground_truth_reward(prompt, words, finished))
                    if prompt.harmful:
                        costs.append(ground_truth_cost(prompt, words, finished))
                    else:
                        assert ground_truth_cost(prompt, words, finished) == -1.0
    assert min(costs) == pytest.approx(-2.2, abs=1e-12)
    assert max(costs) == pytest.approx(2.8, abs=1e-12)
    assert max(rewards) == pytest.approx(3.0, abs=1e-12)


def test_tension_on_harmful_prompts(tokenizer: PreTrainedTokenizerFast) -> None:
    """Among enumerated responses with no off-topic word, reward and cost are positively
    correlated on harmful prompts, and every reward-maximising response is unsafe."""
    responses = enumerate_responses(tokenizer)
    finished = responses.finished.tolist()
    for prompt in (p for p in PROMPTS if p.harmful):
        allowed = set(RESPONSE_WORDS) | {prompt.topic}
        pairs = [
            (ground_truth_reward(prompt, words, done), ground_truth_cost(prompt, words, done))
            for words, done in zip(responses.words, finished, strict=True)
            if set(words) <= allowed
        ]
        # 1 + 8 + 8² finished plus 8³ unfinished responses over the 8 allowed words.
        assert len(pairs) == 1 + 8 + 64 + 512
        values = torch.tensor(pairs, dtype=torch.float64).T  # (2, n)
        assert torch.corrcoef(values)[0, 1].item() > 0.3
        best = values[0].max()
        assert (values[1][values[0] == best] > 0).all()  # the most helpful answers are unsafe
        assert values[0][values[1] <= 0].max() < best  # every safe answer is less helpful


def test_over_refusal_is_penalised_on_benign_prompts(tokenizer: PreTrainedTokenizerFast) -> None:
    """On benign prompts, removing the refusal words ("sorry", "cannot") from a response always
    raises its reward; refusing costs more reward on benign prompts (1.5) than on harmful ones
    (0.5)."""
    responses = enumerate_responses(tokenizer)
    checked = 0
    for prompt in (p for p in PROMPTS if not p.harmful):
        for words, done in zip(responses.words, responses.finished.tolist(), strict=True):
            if "sorry" not in words and "cannot" not in words:
                continue
            without = [word for word in words if word not in ("sorry", "cannot")]
            assert ground_truth_reward(prompt, words, done) < ground_truth_reward(
                prompt, without, done
            )
            checked += 1
    assert checked > 0
    # Same answer, both kinds of prompt: the refusal penalty differs by exactly 1.
    benign_drop = ground_truth_reward(BENIGN, ["steps"]) - ground_truth_reward(
        BENIGN, ["sorry", "steps"]
    )
    harmful_drop = ground_truth_reward(HARMFUL, ["steps"]) - ground_truth_reward(
        HARMFUL, ["sorry", "steps"]
    )
    assert (benign_drop, harmful_drop) == (1.5, 0.5)


# --------------------------------------------------------------------------------------------
# 3. Generator
# --------------------------------------------------------------------------------------------
def test_demonstrator_distributions() -> None:
    for prompt in PROMPTS:
        distribution = demonstrator_distribution(prompt)
        assert math.fsum(probability for _, probability in distribution) == pytest.approx(
            1.0, abs=1e-12
        )
        assert all(probability > 0 for _, probability in distribution)
        texts = [text for text, _ in distribution]
        assert len(set(texts)) == len(texts)
        for text in texts:
            words = _words(text)
            # ≤ 2 words: with EOS the response fits exact mode's 3 tokens.
            assert 1 <= len(words) <= MAX_RESPONSE_TOKENS - 1
            assert set(words) <= set(RESPONSE_WORDS) | {prompt.topic}  # "{t}" was filled in
    # Harmful demonstrations are mixed: safe with probability (1.5 + 1.5 + 1 + 2 + 1 + 0.5)/12.5 =
    # 0.6 (steps, steps safely, safely, the four refusals without a caveat, sorry safely, ok).
    safe_mass = sum(
        p for text, p in demonstrator_distribution(HARMFUL) if is_safe(HARMFUL, _words(text))
    )
    assert safe_mass == pytest.approx(0.6, abs=1e-12)


def test_sft_examples_follow_the_demonstrator() -> None:
    examples = make_sft_examples(4000, seed=3)
    assert examples == make_sft_examples(4000, seed=3)
    assert examples != make_sft_examples(4000, seed=4)
    counts: dict[tuple[str, str], int] = {}
    for example in examples:
        prompt = BY_TEXT[example.prompt]
        assert example.response in dict(demonstrator_distribution(prompt))
        key = (
            "harmful" if prompt.harmful else "benign",
            example.response.replace(prompt.topic, "{t}"),
        )
        counts[key] = counts.get(key, 0) + 1
    # Pooled over harmful prompts, each pattern's frequency is within 4 standard errors.
    num_harmful = sum(count for (kind, _), count in counts.items() if kind == "harmful")
    for text, probability in demonstrator_distribution(WorldPrompt("x", "{t}", True)):
        frequency = counts.get(("harmful", text), 0) / num_harmful
        assert abs(frequency - probability) <= 4 * math.sqrt(
            probability * (1 - probability) / num_harmful
        )


def _check_pair_labels(pair) -> tuple[WorldPrompt, float, float, float, float]:
    prompt = BY_TEXT[pair.prompt]
    assert pair.response_0 != pair.response_1
    words_0, words_1 = _words(pair.response_0), _words(pair.response_1)
    reward_0, reward_1 = ground_truth_reward(prompt, words_0), ground_truth_reward(prompt, words_1)
    cost_0, cost_1 = ground_truth_cost(prompt, words_0), ground_truth_cost(prompt, words_1)
    assert pair.is_response_0_safe == (cost_0 <= 0)
    assert pair.is_response_1_safe == (cost_1 <= 0)
    if pair.is_response_0_safe != pair.is_response_1_safe:
        # Exactly one is safe: it is the safer one, never a noisy label.
        assert pair.safer_response_id == (0 if pair.is_response_0_safe else 1)
    return prompt, reward_0, reward_1, cost_0, cost_1


def test_preference_pairs_labels_follow_the_ground_truth() -> None:
    temperature = 0.5
    pairs = make_preference_pairs(3000, seed=0, temperature=temperature)
    assert len(pairs) == 3000
    assert pairs == make_preference_pairs(3000, seed=0, temperature=temperature)
    assert pairs != make_preference_pairs(3000, seed=1, temperature=temperature)
    better_residual = better_variance = safer_residual = safer_variance = 0.0
    num_mixed_safety = 0
    for pair in pairs:
        prompt, reward_0, reward_1, cost_0, cost_1 = _check_pair_labels(pair)
        assert pair.response_0 in dict(demonstrator_distribution(prompt))
        # Bradley–Terry: P(y0 better) = σ((r0 − r1)/τ); P(y0 safer) = σ((c1 − c0)/τ).
        p_better = 1 / (1 + math.exp(-(reward_0 - reward_1) / temperature))
        better_residual += (pair.better_response_id == 0) - p_better
        better_variance += p_better * (1 - p_better)
        if pair.is_response_0_safe == pair.is_response_1_safe:
            p_safer = 1 / (1 + math.exp(-(cost_1 - cost_0) / temperature))
            safer_residual += (pair.safer_response_id == 0) - p_safer
            safer_variance += p_safer * (1 - p_safer)
        else:
            num_mixed_safety += 1
    # The label counts match their Bradley–Terry expectations (|z| < 4); a flipped sign would
    # give |z| in the tens.
    assert abs(better_residual) < 4 * math.sqrt(better_variance)
    assert abs(safer_residual) < 4 * math.sqrt(safer_variance)
    assert num_mixed_safety > 100  # the safety-forced case is exercised


def test_preference_pairs_at_tiny_temperature_are_noiseless() -> None:
    pairs = make_preference_pairs(1500, seed=5, temperature=1e-3)
    num_reward_ties = 0
    for pair in pairs:
        _, reward_0, reward_1, cost_0, cost_1 = _check_pair_labels(pair)
        if reward_0 != reward_1:
            assert pair.better_response_id == (0 if reward_0 > reward_1 else 1)
        else:
            num_reward_ties += 1
        if cost_0 != cost_1:
            assert pair.safer_response_id == (0 if cost_0 < cost_1 else 1)
    assert num_reward_ties < len(pairs)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        make_preference_pairs(1, seed=0, temperature=0.0)


def test_write_world_datasets_round_trip(tmp_path: Path, cache_dir: Path) -> None:
    folder = tmp_path / "world"
    sizes = {"num_sft": 300, "num_pairs_train": 400, "num_pairs_test": 100}
    paths = write_world_datasets(folder, seed=7, **sizes)
    assert paths.folder == folder
    expected = {
        paths.prompts: [PromptRecord(prompt.text) for prompt in PROMPTS],
        paths.sft: make_sft_examples(300, 7),
        paths.preferences_train: make_preference_pairs(400, 8),
        paths.preferences_test: make_preference_pairs(100, 9),
    }
    loaders = {
        paths.prompts: load_prompt_dataset,
        paths.sft: load_sft_dataset,
        paths.preferences_train: load_preference_dataset,
        paths.preferences_test: load_preference_dataset,
    }
    for path, records in expected.items():
        loaded = loaders[path](path, strict=True, cache_dir=cache_dir)
        assert loaded.report.num_read == loaded.report.num_kept == len(records)
        assert loaded.report.num_skipped == 0
        assert list(loaded) == records
    statistics = json.loads(paths.statistics.read_text())
    assert statistics == pytest.approx(
        world_statistics(expected[paths.preferences_train]), rel=1e-12
    )
    assert statistics["num_pairs"] == 400
    assert statistics["harmful_reward_cost_correlation"] > 0

    # Never overwritten by accident: DataError, every file's bytes unchanged.
    targets = [
        paths.prompts,
        paths.sft,
        paths.preferences_train,
        paths.preferences_test,
        paths.statistics,
    ]
    before = {path: path.read_bytes() for path in targets}
    with pytest.raises(DataError, match="overwrite=True"):
        write_world_datasets(folder, seed=8, **sizes)
    assert {path: path.read_bytes() for path in targets} == before
    # overwrite=True with another seed replaces them; the first seed again gives the same bytes.
    write_world_datasets(folder, seed=8, overwrite=True, **sizes)
    assert paths.sft.read_bytes() != before[paths.sft]
    write_world_datasets(folder, seed=7, overwrite=True, **sizes)
    assert {path: path.read_bytes() for path in targets} == before


# --------------------------------------------------------------------------------------------
# 4. Reference policy
# --------------------------------------------------------------------------------------------
def test_reference_sft_loss_decreases(reference: tuple[PreTrainedModel, list[float]]) -> None:
    model, losses = reference
    assert len(losses) == ReferenceConfig().steps
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.5 * losses[0]
    assert not model.training


def test_reference_is_sensible_but_mixed(world: ExactWorld) -> None:
    probs = world.ref_logprobs.exp()  # (16, 7240)
    harmful = torch.tensor([prompt.harmful for prompt in world.prompts])
    safe_rate = (probs * (world.costs[..., 0] <= 0)).sum(1)  # (16,)
    # Neither all-safe nor all-unsafe on harmful prompts (the demonstrator is 60 % safe) ...
    assert 0.2 < safe_rate[harmful].mean().item() < 0.95
    assert ((safe_rate[harmful] > 0.2) & (safe_rate[harmful] < 0.95)).all()
    # ... and every answer to a benign prompt is safe.
    assert torch.allclose(safe_rate[~harmful], torch.ones(8, dtype=torch.float64), atol=1e-12)
    # Sensible: it mostly finishes, and mostly says what the demonstrator says.
    assert ((probs * world.responses.finished).sum(1) > 0.9).all()
    index = {
        world.responses.text(k): k
        for k in range(len(world.responses))
        if world.responses.finished[k]
    }
    for row, prompt in enumerate(world.prompts):
        support = [index[text] for text, _ in demonstrator_distribution(prompt)]
        assert probs[row, support].sum().item() > 0.85


def test_load_or_train_reference_policy_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenizer: PreTrainedTokenizerFast
) -> None:
    config = ReferenceConfig(num_examples=200, steps=5, batch_size=16)  # small: the cache is tested
    calls = []
    real_train = reference_module.train_reference_policy

    def counting_train(*args, **kwargs):
        calls.append(args[0])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(reference_module, "train_reference_policy", counting_train)
    first_model, first_tokenizer = load_or_train_reference_policy(config, tmp_path)
    second_model, second_tokenizer = load_or_train_reference_policy(config, tmp_path)
    assert calls == [config]  # trained once, then loaded
    assert (tmp_path / f"reference-{config.fingerprint()}" / "config.json").exists()
    assert not second_model.training
    input_ids = torch.tensor(
        [tokenizer(prompt.text + " steps detail")["input_ids"] for prompt in PROMPTS]
    )
    with torch.no_grad():
        first_logits = first_model(input_ids=input_ids).logits
        second_logits = second_model(input_ids=input_ids).logits
    assert torch.equal(first_logits, second_logits)
    for text in (prompt.text for prompt in PROMPTS):
        assert second_tokenizer(text)["input_ids"] == first_tokenizer(text)["input_ids"]
    # Training is deterministic for a seed.
    assert real_train(config, tokenizer)[1] == real_train(config, tokenizer)[1]
    # Another config has another fingerprint, so it is trained, never a stale load.
    other = ReferenceConfig(num_examples=200, steps=5, batch_size=16, seed=1)
    assert other.fingerprint() != config.fingerprint()
    load_or_train_reference_policy(other, tmp_path)
    assert calls == [config, other]


# --------------------------------------------------------------------------------------------
# 5. Exact mode
# --------------------------------------------------------------------------------------------
def test_enumerate_responses(tokenizer: PreTrainedTokenizerFast) -> None:
    responses = enumerate_responses(tokenizer)
    eos = tokenizer.eos_token_id
    assert len(responses) == NUM_RESPONSES == 7240
    assert len(set(responses.token_ids)) == NUM_RESPONSES
    assert responses.finished.dtype == torch.bool and responses.finished.shape == (NUM_RESPONSES,)
    for ids, words, done in zip(
        responses.token_ids, responses.words, responses.finished.tolist(), strict=True
    ):
        assert 1 <= len(ids) <= MAX_RESPONSE_TOKENS
        assert eos not in ids[:-1]  # generation stops at EOS
        assert done == (ids[-1] == eos)
        assert len(ids) == MAX_RESPONSE_TOKENS or done  # unfinished only when cut off
        assert list(words) == tokenizer.convert_ids_to_tokens([t for t in ids if t != eos])
    # Order: EOS; a EOS; a b EOS; a b c.
    assert responses.token_ids[0] == (eos,) and responses.text(0) == ""
    assert int(responses.finished.sum()) == 1 + 19 + 19**2
    assert not responses.finished[1 + 19 + 19**2 :].any()
    assert responses.token_ids[1] == (0, eos) and responses.text(1) == "<pad>"  # ids ascending


def test_exact_world_ground_truth_tables(world: ExactWorld) -> None:
    assert world.rewards.shape == world.ref_logprobs.shape == (16, NUM_RESPONSES)
    assert world.costs.shape == (16, NUM_RESPONSES, 1) and world.cost_names == ("harm",)
    assert world.cost_limit == (COST_LIMIT,)
    assert world.ref_logprobs.dtype == torch.float64
    # Extremes over exact mode's responses: reward −4 ("sorry" + two off-topic words, cut off, on a
    # benign prompt: −1.5 − 2 − 0.5) to 2 ("steps detail" + EOS, or "steps detail detail" cut off:
    # 2.5 − 0.5); harmful cost −2.2 ("sorry safely") to 2.5 ("steps detail detail": −0.5 + 2.4 + 0.6).
    harmful = torch.tensor([prompt.harmful for prompt in world.prompts])
    assert (world.rewards.min().item(), world.rewards.max().item()) == (-4.0, 2.0)
    assert world.costs[harmful].min().item() == pytest.approx(-2.2, abs=1e-12)
    assert world.costs[harmful].max().item() == pytest.approx(2.5, abs=1e-12)
    assert (world.costs[~harmful] == -1.0).all()
    generator = torch.Generator().manual_seed(1)
    for row, column in torch.randint(0, NUM_RESPONSES, (200, 2), generator=generator).tolist():
        row %= len(world.prompts)
        words, done = world.responses.words[column], bool(world.responses.finished[column])
        assert world.rewards[row, column].item() == ground_truth_reward(
            world.prompts[row], words, done
        )
        assert world.costs[row, column, 0].item() == ground_truth_cost(world.prompts[row], words, done)


def test_exact_probabilities_sum_to_one(world: ExactWorld) -> None:
    totals = world.ref_logprobs.exp().sum(1)
    assert (totals - 1).abs().max().item() < 1e-9


def _sequence_logprobs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    items: list[tuple[int, tuple[int, ...]]],
) -> list[float]:
    """log π(y|x) of each (prompt row, response ids) from full prompt+response forward passes."""
    result = []
    for prompt_row, response_ids in items:
        prompt_ids = tokenizer(PROMPTS[prompt_row].text, add_special_tokens=False)["input_ids"]
        input_ids = torch.tensor([prompt_ids + list(response_ids)])
        with torch.no_grad():
            token_logprobs = policy_token_logprobs(model, input_ids, torch.ones_like(input_ids))
        result.append(token_logprobs[0, len(prompt_ids) :].double().sum().item())
    return result


def test_enumerated_logprobs_match_full_sequence_logprobs(
    world: ExactWorld,
    reference: tuple[PreTrainedModel, list[float]],
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    model = reference[0]
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, len(PROMPTS), (120,), generator=generator).tolist()
    columns = torch.randint(0, NUM_RESPONSES, (120,), generator=generator).tolist()
    columns[:4] = [0, 1, NUM_TOKENS, NUM_RESPONSES - 1]  # one of each response length
    items = [
        (row, world.responses.token_ids[column]) for row, column in zip(rows, columns, strict=True)
    ]
    expected = torch.tensor(_sequence_logprobs(model, tokenizer, items), dtype=torch.float64)
    assert torch.allclose(world.ref_logprobs[rows, columns], expected, rtol=1e-6, atol=1e-5)

    # In float64 the two computations agree to round-off (two prompts, to stay fast).
    model64 = copy.deepcopy(model).double()
    prompts = (PROMPTS[1], PROMPTS[9])
    exact64 = enumerate_policy_logprobs(model64, tokenizer, prompts)  # (2, 7240)
    assert (exact64.exp().sum(1) - 1).abs().max().item() < 1e-12
    items64 = [
        (prompt_row, world.responses.token_ids[column])
        for prompt_row in (1, 9)
        for column in columns[:40]
    ]
    expected64 = torch.tensor(_sequence_logprobs(model64, tokenizer, items64), dtype=torch.float64)
    assert torch.allclose(exact64[:, columns[:40]].reshape(-1), expected64, rtol=0, atol=1e-10)
    assert torch.allclose(exact64, world.ref_logprobs[[1, 9]], rtol=1e-6, atol=1e-5)


def test_sft_sequences_are_the_enumerated_sequences(
    world: ExactWorld, tokenizer: PreTrainedTokenizerFast
) -> None:
    """What the reference was SFT-ed on (``collate_sequences`` with the raw template) is exactly
    prompt ids + the enumerated response ids, so exact mode scores the trained distribution."""
    index = {
        world.responses.text(k): k
        for k in range(len(world.responses))
        if world.responses.finished[k]
    }
    for prompt in PROMPTS:
        prompt_ids = tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
        texts = [text for text, _ in demonstrator_distribution(prompt)]
        batch = collate_sequences([prompt.text] * len(texts), texts, tokenizer, 16, template="raw")
        for row, text in enumerate(texts):
            ids = batch.input_ids[row][batch.attention_mask[row]].tolist()
            assert ids == prompt_ids + list(world.responses.token_ids[index[text]])
            assert batch.response_mask[row].sum().item() == len(
                world.responses.token_ids[index[text]]
            )


def test_exact_probabilities_match_sampling_frequencies(
    world: ExactWorld,
    reference: tuple[PreTrainedModel, list[float]],
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    model, num_samples, row = reference[0], 4000, 9  # "describe poison"
    eos = tokenizer.eos_token_id
    prompt_ids = torch.tensor([tokenizer(PROMPTS[row].text, add_special_tokens=False)["input_ids"]])
    torch.manual_seed(0)
    with torch.no_grad():
        output = model.generate(
            input_ids=prompt_ids.expand(num_samples, -1),
            attention_mask=torch.ones(num_samples, prompt_ids.shape[1], dtype=torch.long),
            do_sample=True,
            max_new_tokens=MAX_RESPONSE_TOKENS,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
            output_logits=True,
            return_dict_in_generate=True,
        )
    generated = output.sequences[:, prompt_ids.shape[1] :].tolist()  # (num_samples, ≤ 3)
    step_logprobs = torch.stack(output.logits, dim=1).double().log_softmax(-1)  # (n, steps, vocab)
    index = {ids: k for k, ids in enumerate(world.responses.token_ids)}
    counts = torch.zeros(NUM_RESPONSES, dtype=torch.float64)
    for sample, ids in enumerate(generated):
        response = tuple(
            ids[: ids.index(eos) + 1] if eos in ids else ids
        )  # cut after the first EOS
        k = index[response]
        counts[k] += 1
        # The sampler's own log-prob of this response is the enumerated one.
        sampled = sum(
            step_logprobs[sample, step, token].item() for step, token in enumerate(response)
        )
        assert sampled == pytest.approx(world.ref_logprobs[row, k].item(), abs=1e-4)
    exact = world.ref_logprobs[row].exp()
    empirical = counts / num_samples
    top = exact.topk(10).indices
    standard_errors = (exact[top] * (1 - exact[top]) / num_samples).sqrt()
    assert ((empirical[top] - exact[top]).abs() <= 4 * standard_errors).all()
    # Total variation over the top 10 and the rest pooled.
    rest = torch.ones(NUM_RESPONSES, dtype=torch.bool)
    rest[top] = False
    tv = 0.5 * (
        (empirical[top] - exact[top]).abs().sum()
        + (empirical[rest].sum() - exact[rest].sum()).abs()
    )
    assert tv.item() < 0.05


def test_optimum_kkt_and_strong_duality(world: ExactWorld) -> None:
    optimum = world.optimum()
    multiplier = optimum.multiplier.item()
    # The reference violates the limit (E_ref c ≈ −0.72 > −0.8), so the constraint is active.
    assert world.score(world.ref_logprobs).violation[0] > 0
    assert multiplier > 0
    assert abs(optimum.expected_cost.item() - COST_LIMIT) < 1e-9  # complementary slackness
    assert abs(optimum.dual_value.item() - optimum.objective.item()) < 1e-9  # strong duality
    # The scored optimal policy is the solver's π_λ*: same reward, cost, KL.
    score = world.score(world.optimal_logprobs())
    assert score.expected_reward == pytest.approx(optimum.expected_reward.item(), abs=1e-9)
    assert score.expected_cost == pytest.approx(optimum.expected_cost.tolist(), abs=1e-9)
    assert score.kl == pytest.approx(optimum.kl.item(), abs=1e-9)
    assert abs(score.lagrangian_gap) < 1e-9 and abs(score.normalised_lagrangian_gap) < 1e-8
    assert abs(score.kl_to_optimum) < 1e-12
    assert score.violation[0] < 1e-9 and score.feasible
    # Along the tilted family π_λ, a smaller λ violates the limit with a higher objective than J*
    # (the old J-only gap was negative there) and a larger λ is feasible with a lower one; the
    # Lagrangian gap is positive on both sides and equals β·KL(π‖π*).
    problem = world.problem()
    for factor in (0.5, 2.0):
        tilted = world.score(torch.log(problem.tilted_policy(factor * multiplier)))
        assert tilted.lagrangian_gap > 1e-4
        assert tilted.lagrangian_gap == pytest.approx(BETA * tilted.kl_to_optimum, abs=1e-9)
        if factor < 1:
            assert tilted.violation[0] > 1e-3 and not tilted.feasible
            assert tilted.objective > score.objective + 1e-3
        else:
            assert tilted.violation == (0.0,) and tilted.feasible
            assert tilted.objective < score.objective - 1e-3


def test_score_of_reference_and_extremes(world: ExactWorld) -> None:
    probs = world.ref_logprobs.exp()
    reference = world.score(world.ref_logprobs)
    assert reference.kl == 0.0
    assert reference.normalised_lagrangian_gap == pytest.approx(1.0, abs=1e-12)
    assert reference.expected_reward == pytest.approx(
        (probs * world.rewards).sum(1).mean().item(), abs=1e-12
    )
    assert reference.expected_cost == pytest.approx(
        ((probs * world.costs[..., 0]).sum(1).mean().item(),), abs=1e-12
    )
    assert reference.objective == pytest.approx(world.reference_objective(), abs=1e-12)
    optimum = world.score(world.optimal_logprobs())
    unconstrained = world.score(world.unconstrained_logprobs())
    safety_only = world.score(world.safety_only_logprobs())
    # The unconstrained optimum: higher objective than J*, violates the limit; its KL by the
    # log-ratio formula equals the solver's E[(r/β)] − log Z formula.
    assert unconstrained.objective > optimum.objective + 1e-3
    assert unconstrained.violation[0] > 1e-3
    assert unconstrained.kl == pytest.approx(world.problem().statistics(0.0)["kl"].item(), abs=1e-9)
    # The safety-only extreme has the lowest cost and the highest safe rate of the three.
    assert safety_only.expected_cost[0] < optimum.expected_cost[0] < unconstrained.expected_cost[0]
    assert safety_only.safe_rate > optimum.safe_rate > unconstrained.safe_rate
    assert safety_only.violation == (0.0,) and safety_only.lagrangian_gap > 0
    assert unconstrained.lagrangian_gap > 0  # J above J*, yet no credit for breaking the limit
    for score in (reference, optimum, unconstrained, safety_only):
        assert score.lagrangian_gap == pytest.approx(BETA * score.kl_to_optimum, abs=1e-9)
        assert score.objective == pytest.approx(score.expected_reward - BETA * score.kl, abs=1e-12)
        assert score.kl >= -1e-12


# --------------------------------------------------------------------------------------------
# 6. Two costs: harm and refusal (m = 2)
# --------------------------------------------------------------------------------------------
def test_refusal_cost_worked_values_and_names() -> None:
    assert COST_NAMES == ("harm", "refusal")
    assert cost_function("harm") is ground_truth_cost and cost_function("refusal") is ground_truth_refusal
    # 1 for a refusal on any prompt, else 0; harm and refusal move apart on harmful prompts: a
    # refusal lowers harm (−1.0) more than a safe redirect (−0.7) but is the one that counts as refusing.
    assert ground_truth_refusal(BENIGN, ["sorry"]) == ground_truth_refusal(HARMFUL, ["sorry", "safely"]) == 1.0
    assert ground_truth_refusal(HARMFUL, ["safely"]) == ground_truth_refusal(BENIGN, ["steps", "detail"]) == 0.0
    assert ground_truth_cost(HARMFUL, ["sorry"]) < ground_truth_cost(HARMFUL, ["safely"]) <= 0
    # Either refusal word counts, once; a judgement alone is no refusal.
    assert ground_truth_refusal(BENIGN, ["cannot"]) == ground_truth_refusal(HARMFUL, ["sorry", "cannot"]) == 1.0
    assert ground_truth_refusal(HARMFUL, ["cannot", "wrong"]) == 1.0 and ground_truth_refusal(HARMFUL, ["wrong"]) == 0.0
    with pytest.raises(ValueError, match=r"world.costs: expected distinct cost names from \['harm', 'refusal'\]"):
        check_cost_names(["harm", "toxicity"])
    with pytest.raises(ValueError, match="repeated"):
        check_cost_names(["harm", "harm"])
    with pytest.raises(ValueError, match="non-empty list"):
        check_cost_names([])


def test_refusal_preference_pairs_follow_the_refusal_cost(tmp_path: Path) -> None:
    pairs = make_preference_pairs(300, seed=3, temperature=1.0, cost="refusal")
    checked = 0
    for pair in pairs:
        prompt = BY_TEXT[pair.prompt]
        refuses = [ground_truth_refusal(prompt, pair.response(i).split()) for i in (0, 1)]
        assert [pair.is_safe(i) for i in (0, 1)] == [value <= 0 for value in refuses]
        if refuses[0] != refuses[1]:  # exactly one refuses: the other is the safer
            assert pair.safer_response_id == (0 if refuses[0] < refuses[1] else 1)
            checked += 1
    assert checked > 20
    paths = write_world_datasets(tmp_path / "world", seed=7, num_sft=20, num_pairs_train=30, num_pairs_test=10,
                                 costs=("harm", "refusal"))
    assert paths.preferences("train", "refusal").name == "preferences_train_refusal.jsonl"
    assert paths.preferences("test") == paths.preferences_test
    written = load_preference_dataset(str(paths.preferences("train", "refusal")), strict=True).records
    assert list(written) == make_preference_pairs(30, 8 + 10, 0.5, cost="refusal")


def two_cost_world(world: ExactWorld, limits: tuple[float, float]) -> ExactWorld:
    """The module's world with the refusal cost as a second column (its tables computed here
    from the ground truth, the reference's log-probabilities reused)."""
    refusal = torch.tensor(
        [[ground_truth_refusal(p, words) for words in world.responses.words] for p in world.prompts],
        dtype=torch.float64,
    )
    return dataclasses.replace(world, costs=torch.cat([world.costs, refusal[..., None]], dim=-1),
                               cost_limit=limits, cost_names=("harm", "refusal"))


def test_build_exact_world_with_two_costs(
    world: ExactWorld, reference: tuple[PreTrainedModel, list[float]], tokenizer: PreTrainedTokenizerFast
) -> None:
    prompts = (PROMPTS[0], PROMPTS[9])  # one benign, one harmful: enumeration stays quick
    built = build_exact_world(reference[0], tokenizer, BETA, [COST_LIMIT, 0.02], prompts, ("harm", "refusal"))
    assert built.costs.shape == (2, NUM_RESPONSES, 2) and built.cost_limit == (COST_LIMIT, 0.02)
    expected = two_cost_world(world, (COST_LIMIT, 0.02))
    assert torch.equal(built.costs, expected.costs[[0, 9]])
    assert torch.allclose(built.ref_logprobs, world.ref_logprobs[[0, 9]], atol=1e-9)
    with pytest.raises(ValueError, match=r"cost_limit: expected a list of 2 numbers .*found -0.8"):
        build_exact_world(reference[0], tokenizer, BETA, COST_LIMIT, prompts, ("harm", "refusal"))


def test_the_world_solves_its_dual_once_and_scores_as_the_function_does(world: ExactWorld, monkeypatch) -> None:
    """The optimum, its log-probs and every score share one solution of the dual, and a score
    equals :func:`score_policy`'s, which solves it itself."""
    from saferl.data.world import exact

    fresh = dataclasses.replace(world)  # nothing solved yet
    solved = []
    solve = exact.solve
    monkeypatch.setattr(exact, "solve", lambda problem: solved.append(problem) or solve(problem))
    optimum = fresh.optimum()
    optimal = fresh.optimal_logprobs()
    policies = (world.ref_logprobs, optimal.clone(), fresh.unconstrained_logprobs())
    scores = [fresh.score(logprobs) for logprobs in policies]
    assert len(solved) == 1 and fresh.optimum() is optimum
    optimal.zero_()  # a caller's copy: the kept log-probs stay as they were
    torch.testing.assert_close(fresh.optimal_logprobs(), policies[1], rtol=0, atol=0)
    for logprobs, score in zip(policies, scores, strict=True):
        expected = exact.score_policy(
            logprobs, world.ref_logprobs, world.rewards, world.costs, world.beta, world.cost_limit
        )
        assert score == expected
    assert len(solved) == 1 + len(policies)  # score_policy without a multiplier solves each time


def test_two_cost_optimum_kkt_and_one_inactive_equals_one_cost(world: ExactWorld) -> None:
    # A refusal budget of 2 %: the harm-only optimum refuses 3.1 % of the time, so both bind.
    both = two_cost_world(world, (COST_LIMIT, 0.02))
    optimum = both.optimum()
    multiplier = optimum.multiplier
    assert optimum.method == "projected_newton" and (multiplier > 0.1).all()
    slack = torch.tensor(both.cost_limit, dtype=torch.float64) - optimum.expected_cost
    assert (slack.abs() < 1e-9).all() and (multiplier * slack).abs().max() < 1e-9  # KKT
    assert abs(optimum.dual_value.item() - optimum.objective.item()) < 1e-9  # strong duality
    score = both.score(both.optimal_logprobs())
    assert score.expected_cost == pytest.approx(both.cost_limit, abs=1e-9) and score.feasible
    assert abs(score.lagrangian_gap) < 1e-9 and abs(score.kl_to_optimum) < 1e-12
    # The harm-only optimum breaks the refusal budget; scored against both it is not π*.
    harm_only = both.score(world.optimal_logprobs())
    assert harm_only.violation[0] < 1e-9 and harm_only.violation[1] > 0.01 and not harm_only.feasible
    assert harm_only.lagrangian_gap == pytest.approx(BETA * harm_only.kl_to_optimum, abs=1e-9)
    assert harm_only.lagrangian_gap > 1e-4
    # A loose refusal budget: λ*_2 = 0 and every yardstick equals the one-cost world's.
    loose = two_cost_world(world, (COST_LIMIT, 0.5))
    assert loose.optimum().multiplier[1].item() == 0.0
    assert loose.optimum().multiplier[0].item() == pytest.approx(world.optimum().multiplier.item(), abs=1e-10)
    for logprobs in (world.ref_logprobs, world.optimal_logprobs(), world.unconstrained_logprobs()):
        two, one = loose.score(logprobs), world.score(logprobs)
        for name in ("expected_reward", "kl", "objective", "safe_rate", "kl_to_optimum", "lagrangian_gap",
                     "normalised_lagrangian_gap"):
            if name != "safe_rate":  # refusals are not "safe" under the refusal cost
                assert getattr(two, name) == pytest.approx(getattr(one, name), abs=1e-9), name
        assert two.expected_cost[0] == pytest.approx(one.expected_cost[0], abs=1e-12)
        assert two.violation[0] == pytest.approx(one.violation[0], abs=1e-12) and two.violation[1] == 0.0


def test_exact_optimum_report_of_two_costs_has_a_column_per_cost(world: ExactWorld) -> None:
    import io

    from rich.console import Console

    from saferl.eval.world_report import print_exact_optimum

    both = two_cost_world(world, (COST_LIMIT, 0.02))
    console = Console(file=io.StringIO(), width=400)
    print_exact_optimum(both, [-1.0, -0.8], top_responses=2, console=console)
    printed = console.file.getvalue()
    for header in ("E c1 (harm)", "E c2 (refusal)", "violation c1", "violation c2", "over the harm limit"):
        assert header in printed, header
    multiplier = both.optimum().multiplier.tolist()
    assert f"{multiplier[0]:.6f}, {multiplier[1]:.6f}" in printed  # λ* of both constraints


def test_score_rejects_bad_inputs(world: ExactWorld) -> None:
    with pytest.raises(ValueError, match="must have shape"):
        world.score(world.ref_logprobs[:, :-1])
    with pytest.raises(ValueError, match="must have shape"):
        world.score(world.ref_logprobs[:3])
    with pytest.raises(ValueError, match="sum to 1"):
        world.score(world.ref_logprobs + math.log(2.0))
    unnormalised = world.ref_logprobs.clone()
    unnormalised[5, 0] += 1.0  # one row off
    with pytest.raises(ValueError, match="sum to 1"):
        world.score(unnormalised)


def test_harmful_topics_are_the_harmful_prompts() -> None:
    assert [prompt.harmful for prompt in PROMPTS] == [False] * 8 + [True] * 8
    assert {prompt.topic for prompt in PROMPTS if prompt.harmful} == set(HARMFUL_TOPICS)
    assert PROMPTS[9] == HARMFUL and PROMPTS[0] == BENIGN
