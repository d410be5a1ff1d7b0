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
