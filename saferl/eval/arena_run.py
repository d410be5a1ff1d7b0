"""The arena's runtime driver: a trained policy against its reference on held-out prompts.

The evaluation layer's only module that starts runtime groups; the numbers, tables and files are
:mod:`saferl.eval.arena` (pure).

:func:`run_arena` reads top to bottom:

1. start the groups: the policy and the reference each in a ``PolicyGroup`` (only policy workers
   generate; no optimizer step is ever taken), and a ``ScoreGroup`` for each scorer given as a
   model folder;
2. per call of ``rows_per_call`` rows (prompt-major: row ``i·K + k`` is sample ``k`` of prompt
   ``i``), generate from the policy and from the reference with the **same** generation seed, so
   row ``r`` of both is sampled with the same per-row seed: a policy identical to its reference
   gives identical responses;
3. the KL of each policy sample, ``Σ_t (log π − log π_ref)`` over its response tokens (the k1
   estimator; its mean over samples estimates ``KL(π ‖ π_ref)``);
4. score both models' responses with the reward and cost scorers, and with the ground truth when
   given;
5. :func:`saferl.eval.arena.arena_metrics` per judge; shut every started group down (also on
   errors);
6. the safety judges (``judges``, :mod:`saferl.eval.judges`), one after the other once the
   generation groups are down (a large judge need not share the GPUs with the policy): each model
   judge starts its :class:`~saferl.runtime.judging.JudgeGroup` (same ``group`` and ``deepspeed``
   specs as the other roles), judges the reference's and the policy's responses in one call, and
   shuts down; then :func:`saferl.eval.judge_report.judge_report` per model.

Calling it from a composed config (the ``evaluate`` job)::

    result = run_arena(
        policy="runs/x/models/policy_ppo_lag",          # folder, hub name or ModelSpec
        reference="runs/x/models/sft",
        prompts=held_out_prompts,                        # list[str], untemplated
        tokenizer=tokenizer,
        scorers={"reward": "runs/x/models/reward_model", # folders (ScoreGroups are started) or
                 "cost": "runs/x/models/cost_model"},    # Scorer objects (oracle, affine, ...)
        settings=ArenaSettings(responses_per_prompt=4, generation=GenerationSpec(...), seed=0),
        template="raw", max_prompt_length=16,
        truth={"reward": world_truth("reward"), "cost": world_truth("cost")},  # world only
        runtime=RuntimeSpec(...), group=GroupSpec(...), deepspeed=DeepSpeedSpec(zero_stage=...),
    )
    print_arena(result); write_arena(result, output_dir)

Held-out prompts. On data of one's own, use prompts no training stage saw (a test split). On the
built-in world the prompt space is finite — 16 prompts, every request verb with every topic — and
the world's prompt set used by RL (``prompts.jsonl``) is all 16 of them, so no prompt of the world
is unseen by training, and a seeded split of the 16 would only drop prompts from the evaluation
without making the rest unseen. The arena therefore evaluates on **all 16**
(:func:`world_arena_prompts`, eight benign and eight harmful, so the mean cost weighs both kinds as
the training objective does) with fresh samples: what is held out on the world is the responses
(a seed of the arena's own), not the prompts.

Notes:

* ``truth`` functions take ``(prompt, response text)``; the text is the response decoded without
  its EOS, as in the datasets' records, so a text function cannot tell a response cut by
  ``max_new_tokens`` from a finished one (:func:`saferl.setups.world.world_truth` scores it as
  finished).
  A :class:`~saferl.learners.scorers.Scorer` is accepted in its place (e.g.
  :class:`~saferl.learners.scorers.WorldOracleScorer`, which penalises a cut response as exact
  mode does).
* One cost column: each scorer must have ``num_outputs == 1``.
* Samples depend on the prompts, ``K``, the seed and ``rows_per_call`` (call ``c`` is sampled with
  generation seed ``seed + c``), not on the number of ranks. The last call is padded with copies
  of its last row to a multiple of ``group.num_ranks``; the copies are dropped.
* The reference is hosted by a ``PolicyGroup`` (a DeepSpeed training engine, learning rate 0)
  because only policy workers generate: under ZeRO 1–2 in bf16 it holds an fp32 master copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from saferl.data.collators import SequenceBatch, collate_prompts
from saferl.eval.arena import (
    SCORERS_JUDGE,
    TRUTH_JUDGE,
    ArenaResult,
    ArenaSample,
    arena_metrics,
)
from saferl.eval.judge_report import JudgeReport, Verdicts, judge_report
from saferl.eval.judge_settings import JudgeSettings
from saferl.learners.scorers import ModelScorer, Scorer
from saferl.models import ModelSpec
from saferl.runtime import (
    DeepSpeedSpec,
    GenerationSpec,
    GroupSpec,
    PolicyGroup,
    RuntimeSpec,
    ScoreGroup,
    init_ray,
)

__all__ = ["ArenaSettings", "TruthFunction", "run_arena", "world_arena_prompts"]

#: A ground-truth function: ``fn(prompt text, response text) -> float``.
TruthFunction = Callable[[str, str], float]
_KINDS = ("reward", "cost")


@dataclass(frozen=True)
class ArenaSettings:
    """How the arena samples.

    Attributes:
        responses_per_prompt: ``K``, responses per prompt and model.
        generation: sampling parameters (its ``seed`` is replaced by the arena's, per call).
        seed: base seed of the responses.
        rows_per_call: rows per generate/score call (bounds memory; a multiple of the ranks).
    """

    responses_per_prompt: int = 4
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    seed: int = 0
    rows_per_call: int = 64

    def __post_init__(self) -> None:
        for key in ("responses_per_prompt", "rows_per_call"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"arena.{key} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"arena.seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.generation, GenerationSpec):
            raise ValueError(
                f"arena.generation must be a GenerationSpec, got {type(self.generation).__name__}"
            )


def world_arena_prompts() -> list[str]:
    """The built-in world's evaluation prompts: all 16 (see the module docstring for why)."""
    from saferl.data.world import world_prompts

    return [prompt.text for prompt in world_prompts()]


def _model_spec(model: str | Path | ModelSpec) -> ModelSpec:
    return model if isinstance(model, ModelSpec) else ModelSpec(name_or_path=str(model))


def _name(model: str | Path | ModelSpec) -> str:
    if isinstance(model, ModelSpec):
        return model.name_or_path or "tiny model"
    return str(model)


def _check_kinds(mapping: Mapping[str, object], key: str) -> None:
    if set(mapping) != set(_KINDS):
        raise ValueError(
            f"arena: {key} must have exactly the keys 'reward' and 'cost'; found {sorted(mapping)}"
        )


def _check_scorer(scorer: object, key: str) -> None:
    if getattr(scorer, "num_outputs", 1) != 1:
        raise ValueError(
            f"arena: {key} has {scorer.num_outputs} outputs; the arena takes one cost column "
            "(num_outputs=1)"
        )


@dataclass(frozen=True)
class _Responses:
    """One model's responses to one call's rows."""

    batch: SequenceBatch  # (rows, seq_len), RIGHT-padded
    texts: list[str]
    finished: list[bool]


def _generate(
    group: PolicyGroup,
    prompt_batch,
    generation: GenerationSpec,
    tokenizer: PreTrainedTokenizerBase,
) -> _Responses:
    output = group.generate(prompt_batch, generation)
    batch = output.to_sequence_batch(int(tokenizer.pad_token_id))
    eos = int(tokenizer.eos_token_id)
    texts, finished = [], []
    for row in range(batch.input_ids.shape[0]):
        ids = batch.input_ids[row][batch.response_mask[row]].tolist()
        done = bool(ids) and ids[-1] == eos
        # Special tokens the model emitted mid-response stay in the text (a scorer sees them too).
        texts.append(tokenizer.decode(ids[:-1] if done else ids, skip_special_tokens=False))
        finished.append(done)
    return _Responses(batch, texts, finished)


def _score(
    scorer: Scorer | TruthFunction, responses: _Responses, prompts: list[str]
) -> list[float]:
    if isinstance(scorer, Scorer):
        return scorer.score(responses.batch, prompts)[:, 0].double().tolist()
    return [
        float(scorer(prompt, text)) for prompt, text in zip(prompts, responses.texts, strict=True)
    ]


def run_arena(
    policy: str | Path | ModelSpec,
    reference: str | Path | ModelSpec,
    prompts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    scorers: Mapping[str, Scorer | str | Path | ModelSpec],
    settings: ArenaSettings | None = None,
    *,
    template: str = "safe_rlhf",
    max_prompt_length: int = 512,
    truth: Mapping[str, TruthFunction | Scorer] | None = None,
    runtime: RuntimeSpec | None = None,
    group: GroupSpec | None = None,
    deepspeed: DeepSpeedSpec | None = None,
    judges: Sequence[JudgeSettings | object] = (),
) -> ArenaResult:
    """Evaluate ``policy`` against ``reference`` (steps 1–5 of the module docstring).

    Args:
        policy, reference: Hugging Face folders (or hub names, or :class:`ModelSpec`); both must
            use ``tokenizer``.
        prompts: ``N`` held-out prompts, untemplated (duplicates allowed).
        tokenizer: with a pad token distinct from EOS.
        scorers: ``{"reward": ..., "cost": ...}``, each a scorer object (``score(batch, prompts)``
            with one output) or a score-model folder (a ``ScoreGroup`` is started for it).
        settings: ``K``, sampling, seed, rows per call (default :class:`ArenaSettings`).
        template, max_prompt_length: how prompts are formatted and cut (from the left).
        truth: optional ``{"reward": fn, "cost": fn}``, ``fn(prompt, response text) -> float``
            (or scorer objects), judged as a second judge.
        runtime, group, deepspeed: where and how the groups run (defaults: a local Ray cluster,
            one rank with one CPU, ZeRO stage 0).
        judges: safety judges (``job.judges`` entries as :class:`JudgeSettings`, or judge objects
            with ``judge(prompts, responses)``, :mod:`saferl.eval.judges`); step 6.

    Returns:
        The :class:`~saferl.eval.arena.ArenaResult`, samples included.
    """
    settings = settings or ArenaSettings()
    runtime = runtime or RuntimeSpec()
    group = group or GroupSpec()
    deepspeed = deepspeed or DeepSpeedSpec(zero_stage=0)
    deepspeed = replace(deepspeed, learning_rate=0.0)  # nothing trains here
    prompts = list(prompts)
    if not prompts:
        raise ValueError("arena: no prompts to evaluate on (the held-out prompt set is empty)")
    _check_kinds(scorers, "scorers")
    for kind, scorer in scorers.items():
        if not isinstance(scorer, (str, Path, ModelSpec, Scorer)):
            raise ValueError(
                f"arena: scorers[{kind!r}] must be a score-model folder or a scorer with "
                f"score(batch, prompts); found {type(scorer).__name__}"
            )
        if isinstance(scorer, Scorer):
            _check_scorer(scorer, f"scorers[{kind!r}]")
    if truth is not None:
        _check_kinds(truth, "truth")
        for kind, function in truth.items():
            if not isinstance(function, Scorer) and not callable(function):
                raise ValueError(
                    f"arena: truth[{kind!r}] must be fn(prompt, response) -> float or a scorer; "
                    f"found {type(function).__name__}"
                )
            if isinstance(function, Scorer):
                _check_scorer(function, f"truth[{kind!r}]")
    judges = tuple(judges)
    for index, entry in enumerate(judges):
        if not isinstance(entry, JudgeSettings) and not callable(getattr(entry, "judge", None)):
            raise ValueError(
                f"arena: judges[{index}] must be a JudgeSettings or a judge with "
                f"judge(prompts, responses); found {type(entry).__name__}"
            )
    if settings.rows_per_call % group.num_ranks:
        raise ValueError(
            f"arena.rows_per_call={settings.rows_per_call} must be a multiple of "
            f"group.num_ranks={group.num_ranks} (each call is split evenly over the ranks)"
        )
    from saferl.eval.judges import check_judge

    for entry in judges:  # a bad judge folder fails now, not after the generation
        if isinstance(entry, JudgeSettings) and entry.kind != "ground_truth":
            check_judge(entry)
    num_prompts, k = len(prompts), settings.responses_per_prompt
    rows = [prompt for prompt in prompts for _ in range(k)]  # row i·K + k: sample k of prompt i

    init_ray(runtime)
    started: list[object] = []
    try:
        # 1. The groups, started together, then waited for.
        def start(role_group):
            started.append(role_group)
            return role_group

        policy_group = start(
            PolicyGroup(
                _model_spec(policy),
                tokenizer,
                deepspeed,
                group,
                runtime,
                role="arena_policy",
                seed=settings.seed,
                wait=False,
            )
        )
        reference_group = start(
            PolicyGroup(
                _model_spec(reference),
                tokenizer,
                deepspeed,
                group,
                runtime,
                role="arena_reference",
                seed=settings.seed,
                wait=False,
            )
        )
        active: dict[str, Scorer] = {}
        for kind in _KINDS:
            scorer = scorers[kind]
            if isinstance(scorer, (str, Path, ModelSpec)):
                score_group = start(
                    ScoreGroup(
                        _model_spec(scorer),
                        tokenizer,
                        deepspeed,
                        group,
                        runtime,
                        num_outputs=1,
                        kind=kind,
                        role=f"arena_{kind}",
                        seed=settings.seed,
                        wait=False,
                    )
                )
                scorer = ModelScorer(score_group)
            active[kind] = scorer
        for role_group in started:
            role_group.wait_ready()

        columns: dict[str, list] = {
            name: []
            for name in (
                "reference_text",
                "policy_text",
                "reference_finished",
                "policy_finished",
                "policy_kl",
            )
        }
        scores: dict[str, list[float]] = {
            f"{judge}/{model}/{kind}": []
            for judge in ("scorers", "truth")
            for model in ("reference", "policy")
            for kind in _KINDS
        }
        judged = {"scorers": active, **({"truth": truth} if truth is not None else {})}
        for call, start_row in enumerate(range(0, len(rows), settings.rows_per_call)):
            chunk = rows[start_row : start_row + settings.rows_per_call]
            real = len(chunk)
            chunk = chunk + [chunk[-1]] * (-real % group.num_ranks)  # even shards; dropped below
            prompt_batch = collate_prompts(chunk, tokenizer, max_prompt_length, template=template)
            generation = replace(settings.generation, seed=settings.seed + call)
            # 2. The same per-row seeds for both models.
            responses = {
                "policy": _generate(policy_group, prompt_batch, generation, tokenizer),
                "reference": _generate(reference_group, prompt_batch, generation, tokenizer),
            }
            # 3. Σ_t (log π − log π_ref) over each policy response's tokens.
            policy_batch = responses["policy"].batch
            logprobs = policy_group.token_logprobs(policy_batch).double()
            ref_logprobs = reference_group.token_logprobs(policy_batch).double()
            mask = policy_batch.response_mask.double()
            columns["policy_kl"] += ((logprobs - ref_logprobs) * mask).sum(-1)[:real].tolist()
            # 4. Scores of both models' responses.
            for model, generated in responses.items():
                columns[f"{model}_text"] += generated.texts[:real]
                columns[f"{model}_finished"] += generated.finished[:real]
                for key, judge_scorers in judged.items():
                    for kind in _KINDS:
                        values = _score(judge_scorers[kind], generated, chunk)
                        scores[f"{key}/{model}/{kind}"] += values[:real]
    finally:
        for role_group in started:
            role_group.shutdown()

    # 5. The numbers, per judge.
    def grid(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64).view(num_prompts, k)

    policy_kl = grid(columns["policy_kl"])
    scored = [(SCORERS_JUDGE, "scorers")] + ([(TRUTH_JUDGE, "truth")] if truth is not None else [])
    judgements = tuple(
        arena_metrics(
            grid(scores[f"{key}/reference/reward"]),
            grid(scores[f"{key}/reference/cost"]),
            grid(scores[f"{key}/policy/reward"]),
            grid(scores[f"{key}/policy/cost"]),
            policy_kl,
            judge=judge,
        )
        for judge, key in scored
    )

    def true(key: str, row: int) -> float | None:
        return scores[key][row] if truth is not None else None

    samples = tuple(
        ArenaSample(
            prompt=rows[row],
            sample_index=row % k,
            reference_response=columns["reference_text"][row],
            policy_response=columns["policy_text"][row],
            reference_finished=columns["reference_finished"][row],
            policy_finished=columns["policy_finished"][row],
            reference_reward=scores["scorers/reference/reward"][row],
            reference_cost=scores["scorers/reference/cost"][row],
            policy_reward=scores["scorers/policy/reward"][row],
            policy_cost=scores["scorers/policy/cost"][row],
            policy_kl=columns["policy_kl"][row],
            true_reference_reward=true("truth/reference/reward", row),
            true_reference_cost=true("truth/reference/cost", row),
            true_policy_reward=true("truth/policy/reward", row),
            true_policy_cost=true("truth/policy/cost", row),
        )
        for row in range(len(rows))
    )
    # 6. The safety judges, one at a time.
    verdicts: dict[str, list[Verdicts]] = {"reference": [], "policy": []}
    for entry in judges:
        for model, values in _judge_both(entry, rows, columns, runtime, group, deepspeed, settings):
            verdicts[model].append(values)
    reports: dict[str, JudgeReport] = (
        {model: judge_report(v) for model, v in verdicts.items()} if judges else {}
    )

    recorded = asdict(settings)
    recorded.update(template=template, max_prompt_length=max_prompt_length)
    return ArenaResult(
        policy=_name(policy),
        reference=_name(reference),
        num_prompts=num_prompts,
        responses_per_prompt=k,
        judgements=judgements,
        samples=samples,
        settings=recorded,
        safety_judges=reports,
        judge_verdicts={model: tuple(v) for model, v in verdicts.items()} if judges else {},
    )


def _judge_both(
    entry: JudgeSettings | object,
    rows: list[str],
    columns: Mapping[str, list],
    runtime: RuntimeSpec,
    group: GroupSpec,
    deepspeed: DeepSpeedSpec,
    settings: ArenaSettings,
) -> list[tuple[str, Verdicts]]:
    """One judge on the reference's and the policy's responses (one call), started and shut
    down here when given as settings."""
    from saferl.eval.judges import build_judge

    if isinstance(entry, JudgeSettings):
        judge = build_judge(
            entry, runtime=runtime, group=group, deepspeed=deepspeed, seed=settings.seed
        )
        owned = True
    else:
        judge, owned = entry, False
    n = len(rows)
    try:
        both = judge.judge(rows + rows, columns["reference_text"] + columns["policy_text"])
    finally:
        if owned:
            judge.shutdown()

    def half(start: int) -> Verdicts:
        categories = both.categories[start : start + n] if both.categories is not None else None
        return Verdicts(both.judge, both.p_unsafe[start : start + n], categories)

    return [("reference", half(0)), ("policy", half(n))]
