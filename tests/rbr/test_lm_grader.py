"""grade_with_lm with a tiny causal LM built in code (no download): batching and padding change
nothing, each row is read at its own last token, and P(yes) is read as the spec says."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from saferl.rbr import load_spec
from saferl.rbr.lm_grader import answer_token_ids, grade_with_lm

WORDS = ["<unk>", "<pad>", "yes", "no", "Yes", "Q", "A", ":", "Is", "it", "polite", "harmful", "?"]
WORDS += ["{", "}", "not", "a", "placeholder", "sorry", "thanks", "help", "me"]


def tokenizer(words=WORDS) -> PreTrainedTokenizerFast:
    vocab = {word: index for index, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")


def tiny_lm(vocab_size: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).eval()


RESPONSES = ["sorry", "thanks help me please", "help me"]  # different lengths; "please" is <unk>


def test_batched_grades_equal_one_prompt_at_a_time_and_a_direct_reading(small_spec_path):
    spec = load_spec(small_spec_path)
    tok = tokenizer()
    model = tiny_lm(len(WORDS))
    batched = grade_with_lm(model, tok, spec, RESPONSES, batch_size=4)
    single = grade_with_lm(model, tok, spec, RESPONSES, batch_size=1)
    assert batched.shape == (3, 2)
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-6)
    # Directly: "harmful" about "thanks help me please"; yes spellings "yes", "Yes"; no: "no".
    ids = tok.encode(spec.grader_prompt("harmful", RESPONSES[1]))
    probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1], dim=-1)
    yes = probs[tok.convert_tokens_to_ids("yes")] + probs[tok.convert_tokens_to_ids("Yes")]
    no = probs[tok.convert_tokens_to_ids("no")]
    assert abs(batched[1, 1].item() - (yes / (yes + no)).item()) < 1e-6


class PositionLM(torch.nn.Module):
    """Logits that say which position they were read at: yes = position / 4, no = 0."""

    def __init__(self, vocab_size: int, yes_id: int) -> None:
        super().__init__()
        self.vocab_size, self.yes_id = vocab_size, yes_id
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        batch, width = input_ids.shape
        logits = torch.zeros(batch, width, self.vocab_size)
        logits[:, :, self.yes_id] = torch.arange(width, dtype=torch.float32) / 4
        return SimpleNamespace(logits=logits)


def test_each_row_is_read_at_its_own_last_token(small_spec_path):
    spec = load_spec(small_spec_path)
    words = [w for w in WORDS if w != "Yes"]  # one yes spelling, one no spelling
    tok = tokenizer(words)
    model = PositionLM(len(words), tok.convert_tokens_to_ids("yes"))
    got = grade_with_lm(model, tok, spec, RESPONSES, ["polite"], batch_size=3)
    lengths = [len(tok.encode(spec.grader_prompt("polite", r))) for r in RESPONSES]
    expected = torch.sigmoid(torch.tensor([(n - 1) / 4 for n in lengths]))
    torch.testing.assert_close(got[:, 0], expected, rtol=0, atol=1e-6)
    assert len(set(lengths)) == 3  # the rows really have different lengths


def test_a_tokenizer_without_an_answer_token_is_refused(small_spec_path):
    spec = load_spec(small_spec_path)
    tok = tokenizer([w for w in WORDS if w not in ("no",)])
    with pytest.raises(ValueError, match="no single token for any of \\['no'"):
        grade_with_lm(tiny_lm(len(WORDS)), tok, spec, ["sorry"])
    assert answer_token_ids(tokenizer(), ["yes", " yes", "Yes", "maybe"]).tolist() == [2, 4]
