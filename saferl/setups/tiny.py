"""The world's tiny models trained on your own PKU-SafeRLHF-format data (``model=world`` with a hub
data group, e.g. ``data=pku_saferlhf data.path=my_pairs/``): the model source and the data source
are independent.

:func:`build` runs, each through the runtime and recorded in ``<run>/stages.json`` (so
``resume=auto`` skips a finished stage):

1. load the training pairs and prompts of ``data.path`` (``data.train_split``) and the held-out
   pairs (``data.test_split``); pairs whose formatted prompt fills ``data.max_length`` are dropped
   and counted;
2. build a word-level tokenizer over the words of the training prompts, responses and template
   (``<pad>``, ``<unk>``, ``<eos>`` as in the world's), saved with every exported model;
3. SFT a tiny Llama of the ``world.reference`` shape on the demonstrations taken from the pairs:
   each pair's more helpful response when it is safe, else its safer response when that is safe
   (pairs with no safe response give none);
4. train the reward and 5. the cost model on the pairs (held-out pairwise and sign accuracies),
   when the learner's scorers or critics use them.

With ``learner.ptx_coeff > 0``, step 1 also loads the PTX demonstrations of ``data.ptx_path`` (as the
hub setup does; their words outside the training data's vocabulary read as ``<unk>``).

The scorers are the trained models in their own units (``scorers.kind=learned``,
``scorers.calibrate=false``): there is no ground truth to calibrate against or to evaluate with,
so the setup has no evaluator (``job=evaluate`` runs the arena on the result).
"""

from __future__ import annotations

import time
from functools import partial

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from saferl.data import format_prompt, load_preference_dataset
from saferl.data.records import SafetyPreferencePair, SFTExample
from saferl.data.world.vocab import EOS, PAD, UNK
from saferl.learners.output import RunOutput
from saferl.learners.run_state import StageRecords
from saferl.models import ModelSpec, TinyModelConfig, load_tokenizer
from saferl.runtime import init_ray
from saferl.runtime.pool import prestart_workers
from saferl.runtime.resources import Resources
from saferl.setups.base import CriticStart, ModelScorerSource, Needs, Setup
from saferl.setups.hub import (
    load_training_pairs,
    max_prompt_length,
    ptx_examples,
    training_pairs,
    training_prompts,
)
from saferl.setups.settings import TinySettings  # light: config validation reads it
from saferl.setups.stages import run_score_stage, run_sft_stage, run_stages_side_by_side

__all__ = ["TinySettings", "build", "demonstrations", "word_tokenizer"]

TOKENIZER_DIR = "tokenizer"


def word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the whitespace-separated words of ``texts`` (sorted, after the
    special tokens ``<pad>``, ``<unk>``, ``<eos>``); ``<pad>`` is distinct from ``<eos>``."""
    words = sorted({word for text in texts for word in text.split()} - {PAD, UNK, EOS})
    vocab = {word: index for index, word in enumerate((PAD, UNK, EOS, *words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, unk_token=UNK, eos_token=EOS,
                                   padding_side="right", clean_up_tokenization_spaces=False)


def demonstrations(pairs: list[SafetyPreferencePair]) -> list[SFTExample]:
    """Step 3's demonstrations: per pair, the more helpful response when it is safe, else the safer
    one when it is safe; none from a pair without a safe response."""
    examples = []
    for pair in pairs:
        responses = (pair.response_0, pair.response_1)
        safe = (pair.is_response_0_safe, pair.is_response_1_safe)
        for index in (pair.better_response_id, pair.safer_response_id):
            if safe[index]:
                examples.append(SFTExample(prompt=pair.prompt, response=responses[index]))
                break
    return examples


def build(settings: TinySettings, resources: Resources, output: RunOutput, needs: Needs) -> Setup:
    """Steps 1–5 of the module docstring (those ``needs`` asks for); returns the setup."""
    folder = output.folder
    folder.mkdir(parents=True, exist_ok=True)
    records = StageRecords(folder, output.resume)
    init_ray(resources.runtime)
    prestart_workers(resources.runtime, resources.group, needs.groups)  # while the stages run
    seconds: dict[str, float] = {}

    # 1–2. The data, and the tokenizer over its words (the saved one when resuming).
    clock = time.perf_counter()
    tokenizer_dir = folder / "models" / TOKENIZER_DIR
    raw = load_training_pairs(settings)
    if (tokenizer_dir / "tokenizer.json").exists() and output.resume:
        tokenizer = load_tokenizer(str(tokenizer_dir))
    else:
        texts = [format_prompt(pair.prompt, None, settings.template) for pair in raw]
        texts += [response for pair in raw for response in (pair.response_0, pair.response_1)]
        tokenizer = word_tokenizer(texts)
        tokenizer.save_pretrained(tokenizer_dir)
    pairs, dropped = training_pairs(settings, tokenizer, raw)
    test_pairs = list(load_preference_dataset(settings.path, split=settings.test_split,
                                              revision=settings.data_revision).records)
    prompts = training_prompts(settings)
    ptx = ptx_examples(settings, tokenizer) if needs.ptx else []  # before any stage: a bad path fails early
    seconds["data"] = time.perf_counter() - clock

    # 3. SFT of the tiny policy on the pairs' safe demonstrations.
    sft_dir = folder / "models" / "sft"
    clock = time.perf_counter()
    if (done := records.finished("sft", settings.stage_settings("sft"))) is not None:
        seconds["sft"] = done["seconds"]
    else:
        examples = demonstrations(pairs)
        if not examples:
            raise ValueError(f"data.path: {settings.path!r} has no pair with a safe response to SFT on")
        run_sft_stage(_model_spec(settings, tokenizer), settings.sft, examples, tokenizer, template=settings.template,
                      max_length=settings.max_length, seed=settings.seed, resources=resources, output=output,
                      export_dir=sft_dir)
        seconds["sft"] = time.perf_counter() - clock
        records.mark("sft", {"seconds": seconds["sft"]}, settings.stage_settings("sft"))

    # 4–5. Reward and cost models, from the SFT backbone, when the learner reads them; they need
    # nothing from each other, so they train side by side.
    metrics: dict[str, dict[str, float]] = {}
    score_dirs = {kind: folder / "models" / f"{kind}_model" for kind in ("reward", "cost")}
    if needs.scorers or needs.critics:
        def train(kind: str, stage) -> dict[str, float]:
            return run_score_stage(
                kind, stage, sft_dir, pairs, test_pairs, tokenizer, template=settings.template,
                max_length=settings.max_length, regularization=settings.regularization, seed=settings.seed,
                resources=resources, output=output, export_dir=score_dirs[kind],
                sign_weight=settings.sign_weight,  # only the cost loss reads it
            )

        by_name, score_seconds = run_stages_side_by_side(records, {
            f"{kind}_model": (settings.stage_settings(f"{kind}_model"), partial(train, kind, stage))
            for kind, stage in (("reward", settings.reward_model), ("cost", settings.cost_model))
        })
        metrics = {name.removesuffix("_model"): value for name, value in by_name.items()}
        seconds.update(score_seconds)

    sft_spec = ModelSpec(name_or_path=str(sft_dir))
    score = {kind: ModelSpec(name_or_path=str(path)) for kind, path in score_dirs.items()}
    return Setup(
        name="tiny",
        policy=sft_spec,
        tokenizer=tokenizer,
        template=settings.template,
        max_length=settings.max_length,
        max_prompt_length=max_prompt_length(settings.max_length, settings.generation.max_new_tokens),
        generation=settings.generation,
        prompts=prompts,
        pairs=pairs if needs.pairs else [],
        num_dropped_pairs=dropped,
        pairs_source=f"data.path={settings.path!r}",
        ptx=ptx,
        ptx_source=f"data.ptx_path={settings.ptx_path!r}",
        reward=ModelScorerSource(score["reward"], "reward") if needs.scorers else None,
        costs=(ModelScorerSource(score["cost"], "cost"),) if needs.scorers else (),
        reward_critic=CriticStart(sft_spec, init_from=str(score_dirs["reward"])) if needs.critics else None,
        cost_critics=(CriticStart(sft_spec, init_from=str(score_dirs["cost"])),) if needs.critics else (),
        evaluator=None,
        score_units="cost-model units",
        details={f"{kind}_model": value for kind, value in metrics.items()},
        seconds=seconds,
    )


def _model_spec(settings: TinySettings, tokenizer: PreTrainedTokenizerBase) -> ModelSpec:
    """The tiny Llama of the ``world.reference`` shape, long enough for ``data.max_length``."""
    reference = settings.reference
    return ModelSpec(tiny=TinyModelConfig(
        vocab_size=len(tokenizer), hidden_size=reference.hidden_size, num_layers=reference.num_layers,
        num_heads=reference.num_heads, intermediate_size=reference.intermediate_size,
        max_position_embeddings=max(32, settings.max_length),
    ))
