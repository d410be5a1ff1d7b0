"""The world's exact evaluator reads a score model on every enumerated response as the rollouts do
(prompt tokens, the response with its EOS when it finished, the last real token)."""

from __future__ import annotations

import torch

from saferl.data.collators import collate_sequences
from saferl.data.world import build_world_tokenizer, enumerate_responses, world_prompts
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.models import ModelSpec, TinyModelConfig, build_score_model, end_scores
from saferl.setups.world import enumerate_end_scores


def test_enumerated_end_scores_match_the_collated_sequences_of_finished_responses():
    tokenizer = build_world_tokenizer()
    torch.manual_seed(0)
    model = build_score_model(ModelSpec(tiny=TinyModelConfig(vocab_size=len(tokenizer), max_position_embeddings=32)),
                              tokenizer).eval()
    prompts = world_prompts()[:2]
    responses = enumerate_responses(tokenizer)
    scores = enumerate_end_scores(model, tokenizer, prompts, responses, batch_size=1000)
    assert scores.shape == (2, len(responses)) and scores.dtype == torch.float64
    # Finished responses are what the collator builds from their text (it appends EOS).
    finished = [i for i in range(len(responses)) if responses.finished[i]][:40]
    for p, prompt in enumerate(prompts):
        batch = collate_sequences([prompt.text] * len(finished), [responses.text(i) for i in finished], tokenizer,
                                  MAX_SEQUENCE_LENGTH, template=WORLD_TEMPLATE)
        with torch.no_grad():
            expected = end_scores(model, batch.input_ids, batch.attention_mask)[:, 0].double()
        assert torch.allclose(scores[p, finished], expected, atol=1e-5)


def full_forward_end_scores(model, tokenizer, prompts, responses) -> torch.Tensor:
    """The reference: one whole forward pass per response (prompt, then the response's tokens,
    right-padded), read at its last real token."""
    pad = int(tokenizer.pad_token_id)
    width = max(len(ids) for ids in responses.token_ids)
    response_ids = torch.full((len(responses), width), pad, dtype=torch.long)
    response_mask = torch.zeros((len(responses), width), dtype=torch.bool)
    for i, ids in enumerate(responses.token_ids):
        response_ids[i, : len(ids)] = torch.tensor(ids)
        response_mask[i, : len(ids)] = True
    rows = []
    for prompt in prompts:
        prompt_ids = torch.tensor(tokenizer(prompt.text, add_special_tokens=False)["input_ids"])
        input_ids = torch.cat([prompt_ids.expand(len(responses), -1), response_ids], dim=1)
        attention_mask = torch.cat([torch.ones((len(responses), prompt_ids.numel()), dtype=torch.bool), response_mask],
                                   dim=1)
        with torch.no_grad():
            rows.append(end_scores(model, input_ids, attention_mask)[:, 0].double())
    return torch.stack(rows)


def test_the_cached_tree_reading_equals_a_whole_forward_pass_per_response_in_float64():
    """Every prompt's prefix and every tree node read once from its parent's key/value cache gives
    each response's end score as a whole forward pass over it does (float64: to rounding), with the
    nodes split into several forward passes too."""
    tokenizer = build_world_tokenizer()
    torch.manual_seed(1)
    spec = ModelSpec(tiny=TinyModelConfig(vocab_size=len(tokenizer), num_layers=2, max_position_embeddings=32))
    model = build_score_model(spec, tokenizer).double().eval()
    prompts = world_prompts()[:3]
    responses = enumerate_responses(tokenizer)
    expected = full_forward_end_scores(model, tokenizer, prompts, responses)
    assert expected.std() > 1e-3  # the responses' scores differ, so a misplaced one would show
    for batch_size in (4096, 1000):
        found = enumerate_end_scores(model, tokenizer, prompts, responses, batch_size=batch_size)
        assert found.shape == expected.shape and found.dtype == torch.float64
        assert torch.allclose(found, expected, rtol=0, atol=1e-12), (found - expected).abs().max()


def test_the_evaluator_reuses_enumerated_scores_only_while_the_score_model_is_unchanged(tmp_path):
    """The evaluator keeps a score model's enumerated scores for the next evaluation in the process
    (a sweep's jobs share their score models); a model saved again in the same folder is read
    anew."""
    from saferl.models import save_score_model
    from saferl.setups.world import WorldEvaluator, WorldScorerSource

    tokenizer = build_world_tokenizer()
    spec = ModelSpec(tiny=TinyModelConfig(vocab_size=len(tokenizer), max_position_embeddings=32))
    prompts = world_prompts()[:2]
    responses = enumerate_responses(tokenizer)

    def saved(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        model = build_score_model(spec, tokenizer).eval()
        save_score_model(model, tokenizer, tmp_path / "reward_model", overwrite=True)
        return enumerate_end_scores(model, tokenizer, prompts, responses)

    class World:  # what _learned_scores reads of the exact world
        pass

    world = World()
    world.prompts, world.responses = prompts, responses
    calibration = {"scale": 2.0, "shift": -1.0}
    source = WorldScorerSource("reward", "learned", tmp_path / "reward_model", True, [], tokenizer, 1,
                               calibration=calibration)
    cost = WorldScorerSource("cost", "learned", tmp_path / "reward_model", True, [], tokenizer, 1,
                             calibration={"scale": 1.0, "shift": 0.0})
    evaluator = WorldEvaluator(tmp_path, 0.5, (-0.8,), "learned", (source, cost))
    first_scores = saved(0)
    rewards, costs = evaluator._learned_scores(world, tokenizer)
    # A reloaded model's float32 matmuls may round differently from the one in memory (1e-7).
    torch.testing.assert_close(rewards, 2.0 * first_scores - 1.0, rtol=0, atol=1e-6)
    again, _ = evaluator._learned_scores(world, tokenizer)
    assert torch.equal(again, rewards)
    second_scores = saved(1)  # another model in the same folder
    assert not torch.allclose(second_scores, first_scores)
    rewards, costs = evaluator._learned_scores(world, tokenizer)
    torch.testing.assert_close(rewards, 2.0 * second_scores - 1.0, rtol=0, atol=1e-6)
    torch.testing.assert_close(costs[..., 0], second_scores, rtol=0, atol=1e-6)


def test_the_prefetch_fills_the_caches_the_evaluation_reads_and_a_failed_step_leaves_the_rest(tmp_path):
    """The evaluator's prefetch() computes, in a background thread, what the evaluation would compute
    first: each score model's enumerated scores (the same numbers as reading it in this thread),
    the ground-truth tables and the exact grades. A step that fails (a folder with no model) is
    left for the evaluation to redo and raise; the steps after it still run."""
    from saferl.data.world import ground_truth_tables
    from saferl.data.world.exact import _ground_truth_table
    from saferl.models import save_score_model
    from saferl.rbr.world import _exact_indicators_cached
    from saferl.setups import world as world_setup

    tokenizer = build_world_tokenizer()
    spec = ModelSpec(tiny=TinyModelConfig(vocab_size=len(tokenizer), max_position_embeddings=32))
    torch.manual_seed(0)
    model = build_score_model(spec, tokenizer).eval()
    save_score_model(model, tokenizer, tmp_path / "cost_model")
    prompts, responses = world_prompts(), enumerate_responses(tokenizer)
    world_setup._ENUMERATED_SCORES.clear()

    sources = tuple(world_setup.WorldScorerSource(kind, "learned", tmp_path / folder, True, [], tokenizer, 1)
                    for kind, folder in (("reward", "missing"), ("cost", "cost_model")))
    evaluator = world_setup.WorldEvaluator(tmp_path, 0.5, (-0.8, 0.02), "learned", sources, ("harm", "refusal"))
    evaluator.prefetch()
    evaluator.prefetch()  # once
    (prefetch,) = evaluator._prefetched
    prefetch.wait()
    key = (world_setup._folder_stamp(tmp_path / "cost_model"), tuple(prompts))
    assert list(world_setup._ENUMERATED_SCORES) == [key]
    torch.testing.assert_close(world_setup._ENUMERATED_SCORES[key],
                               enumerate_end_scores(model, tokenizer, prompts, responses), rtol=0, atol=1e-6)
    # The ground truth and the grades are in the process's caches: reading them computes nothing.
    hits, misses = _ground_truth_table.cache_info().hits, _ground_truth_table.cache_info().misses
    ground_truth_tables(prompts, responses, ("harm", "refusal"))
    assert (_ground_truth_table.cache_info().hits, _ground_truth_table.cache_info().misses) == (hits + 3, misses)
    assert _exact_indicators_cached.cache_info().currsize == 1
