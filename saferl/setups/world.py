"""The built-in world as a setup: its datasets, the SFT and score-model stages, calibration and exact
evaluation (the default ``saferl`` job's models and data).

:func:`build` runs only the stages the learner needs, each through the runtime (Ray actor groups
hosting DeepSpeed engines), each recorded in ``<run>/stages.json`` so that ``resume=auto`` skips it:

1. write the world's prompts and SFT demonstrations (PKU-SafeRLHF format, loaded back with the
   normal loaders);
2. SFT a tiny Llama on the demonstrations: the reference policy and every learner's start, then
   write the preference pairs, each response drawn exactly from that SFT policy
   (``data.pair_source=policy``; :mod:`saferl.data.world.policy_pairs`) or from the demonstrator;
3. train the reward model and 4. one cost model per cost of ``world.costs`` (harm: ``cost_model``,
   another cost c: ``cost_<c>_model``, each on pairs labelled by that cost; held-out accuracies),
   when the learner's scorers or critics use them (``scorers.kind=oracle`` still trains them for
   the critics' start; MoCAN's DPO stage with oracle scorers, PeCAN and the preference losses
   never read them, so they are skipped);
5. the scorers, one reward and one per cost: the world's ground truth (``scorers.kind=oracle``) or
   the learned models, mapped into ground-truth units on the held-out responses
   (``scorers.calibrate``; by a monotone or an affine map, ``scorers.calibration``);
6. the exact evaluator: every response of the reference and of a trained policy is enumerated and
   compared with the exact constrained optimum ``π_λ*`` of the same problem.

With ``learner.ptx_coeff > 0`` the PTX set is the world's own SFT demonstrations (stage 1's
``data.num_sft`` set, loaded back with the SFT loader).

``model.from_run`` reuses another run's stages 1–4 in place (their settings must match); a run with
several costs may reuse a harm-only run, and then makes the other costs' pairs and models itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from saferl.core.dual import DualProblem, InfeasibleConstraintError, solve
from saferl.core.targets import TiltTarget, target_logprobs
from saferl.data import load_preference_dataset, load_prompt_dataset, load_sft_dataset
from saferl.data.world import (
    EOS,
    build_exact_world,
    build_world_tokenizer,
    enumerate_policy_logprobs,
    enumerate_responses,
    ground_truth_tables,
    world_dataset_paths,
    world_model_spec,
    write_demonstrations,
    write_pair_datasets,
)
from saferl.data.world.reference import MAX_SEQUENCE_LENGTH, WORLD_TEMPLATE
from saferl.learners.output import RunOutput
from saferl.learners.run_state import StageRecords
from saferl.learners.scorers import (
    CalibratedScorer,
    ModelScorer,
    Scorer,
    WorldOracleScorer,
    apply_calibration,
    fit_calibration,
)
from saferl.models import ModelSpec, load_policy
from saferl.rbr.world import behaviour_record, exact_world_behaviour
from saferl.runtime import init_ray
from saferl.runtime.pool import prestart_workers
from saferl.runtime.resources import Resources
from saferl.setups.base import CriticStart, Evaluation, Needs, ScoreGroupStarter, Setup
from saferl.setups.settings import StageSettings, WorldSettings, cost_model_name
from saferl.setups.stages import run_score_stage, run_sft_stage, run_stages_side_by_side

__all__ = [
    "EvaluationPrefetch",
    "StageSettings",
    "WorldEvaluator",
    "WorldScorerSource",
    "WorldSettings",
    "build",
    "InProcessScores",
    "calibrate",
    "critic_value_scale",
    "enumerated_scores",
    "prefetch_evaluation",
    "world_truth",
]


def world_truth(kind: str, cost: str = "harm") -> Callable[[str, str], float]:
    """The world's ground-truth reward, or the cost called ``cost``, of a (prompt, response text) pair."""
    from saferl.data.world import cost_function, ground_truth_reward, world_prompts

    prompts = {prompt.text: prompt for prompt in world_prompts()}
    function = ground_truth_reward if kind == "reward" else cost_function(cost)
    return lambda prompt, response: function(prompts[prompt], response.split())


def calibrate(score_group, pairs, truth, tokenizer, num_ranks: int, kind: str = "isotonic") -> dict:
    """Fit the ``kind`` map (``scorers.calibration``: isotonic or affine) of a score group's outputs
    to the ground truth on held-out responses (:func:`saferl.learners.scorers.fit_calibration`)."""
    from saferl.data.collators import collate_sequences

    unique = sorted({(pair.prompt, response) for pair in pairs for response in (pair.response_0, pair.response_1)})
    unique = unique[: len(unique) - len(unique) % num_ranks]
    batch = collate_sequences(
        [p for p, _ in unique], [r for _, r in unique], tokenizer, MAX_SEQUENCE_LENGTH, template=WORLD_TEMPLATE
    )
    model_scores = score_group.end_scores(batch)[:, 0]
    true_scores = torch.tensor([truth(p, r) for p, r in unique])
    return fit_calibration(kind, model_scores, true_scores)


class InProcessScores:
    """A score model in this process, read as a score group is (``end_scores(batch) → (rows, m)``)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    @torch.no_grad()
    def end_scores(self, batch) -> torch.Tensor:
        from saferl.models import end_scores

        return end_scores(self.model, batch.input_ids, batch.attention_mask)


def critic_value_scale(model_dir: Path, pairs, truth, tokenizer) -> float:
    """The scale of a score model's least-squares affine fit to the ground truth on held-out
    responses (read in this process): a critic started from that model is multiplied by it, so
    that its first values are in the ground-truth units of the rewards it will predict. Learned
    cost models come out about 5× the ground truth's size (scale ≈ 0.2 on the default job's
    stages). The fit's shift stays out: Llama's score head has no bias to hold it."""
    from saferl.models import load_score_model

    model, _ = load_score_model(model_dir)
    return float(calibrate(InProcessScores(model), pairs, truth, tokenizer, 1, "affine")["scale"])


@dataclass
class WorldScorerSource:
    """The world's reward or one of its costs during RL: the ground truth, or the learned model
    (mapped into ground-truth units when calibrating). ``calibration`` holds the fitted map once
    built; ``cost`` names the cost (``COST_NAMES``) of a cost source."""

    kind: str
    scorers: str
    model_dir: Path | None
    calibrate: bool
    test_pairs: list
    tokenizer: object
    num_ranks: int
    calibration: dict | None = None
    cost: str = "harm"
    calibration_map: str = "isotonic"

    @classmethod
    def oracle(cls, kind: str, tokenizer, cost: str = "harm") -> WorldScorerSource:
        """The ground truth as a source (no score model, nothing to calibrate)."""
        return cls(kind, "oracle", None, False, [], tokenizer, 1, cost=cost)

    def build(self, start_group: ScoreGroupStarter) -> Scorer:
        if self.scorers == "oracle":
            return WorldOracleScorer(self.kind, self.tokenizer, self.cost)
        score_group = start_group(ModelSpec(name_or_path=str(self.model_dir)), self.kind)
        if not self.calibrate:
            return ModelScorer(score_group)
        self.calibration = calibrate(score_group, self.test_pairs, world_truth(self.kind, self.cost), self.tokenizer,
                                     self.num_ranks, self.calibration_map)
        return CalibratedScorer(ModelScorer(score_group), self.calibration)


@torch.no_grad()
def enumerate_end_scores(model, tokenizer, prompts, responses, batch_size: int = 4096) -> torch.Tensor:
    """A score model's end score of every enumerated response of every prompt, ``(num_prompts,
    num_responses)`` float64, read as the rollouts are: prompt tokens, then the response's tokens
    (EOS included when it finished), at the last real token.

    The responses form a tree of depth 3 over the vocabulary, and a causal model's hidden state
    at a token depends only on the tokens up to it; so the prompt is read once, then each level
    of the tree one token per node, from the key/value cache of its parent: every
    ``prompt x₁``, ``prompt a x₂``, ``prompt a b x₃`` (a, b non-EOS), about one token per response
    instead of the whole sequence. The same numbers as one full forward pass per response up to
    float rounding (float64: 1e-12, tests/setups/test_world_evaluator.py).

    Args:
        model: a score model (optionally LoRA-wrapped), with a key/value cache.
        prompts: the world's prompts; responses: :func:`enumerate_responses` of ``tokenizer``.
        batch_size: the most tree nodes read in one forward pass.
    """
    import inspect

    from transformers import DynamicCache

    from saferl.models.scoring import score_backbone, score_head

    backbone, head = score_backbone(model), score_head(model)
    # The cache's keyword: ``cache`` from transformers 5, ``past_key_values`` before.
    cache_keyword = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
    eos = tokenizer.convert_tokens_to_ids(EOS)
    vocab = torch.arange(len(tokenizer))  # every next token, EOS included
    others = vocab[vocab != eos]
    n, v = others.numel(), vocab.numel()
    # The response each tree node ends, by level (enumerate_responses' order: EOS; a EOS; a b EOS; a b c).
    index = {ids: i for i, ids in enumerate(responses.token_ids)}
    others_list = others.tolist()
    eos_row = index[(eos,)]
    a_eos_rows = torch.tensor([index[(a, eos)] for a in others_list])  # (n,)
    a_b_x_rows = torch.tensor([index[(a, b, x)] for a in others_list for b in others_list
                               for x in vocab.tolist()])  # (n·n·v,), rows (a, b, x₃)

    def read(cache, tokens: torch.Tensor) -> torch.Tensor:
        """Scores ``(rows,)`` after one more token per row (``tokens`` ``(rows,)``); the cache
        grows by that token in place."""
        rows = tokens.numel()
        past = cache.get_seq_length()
        outputs = backbone(input_ids=tokens[:, None], attention_mask=torch.ones((rows, past + 1), dtype=torch.long),
                           use_cache=True, **{cache_keyword: cache})
        return head(outputs.last_hidden_state[:, -1]).double()[:, 0]

    def chunked(cache, tokens: torch.Tensor) -> torch.Tensor:
        """:func:`read` over row chunks of one level (the cache's rows pair with ``tokens``)."""
        import copy

        if tokens.numel() <= batch_size:
            return read(cache, tokens)
        scores = []
        for start in range(0, tokens.numel(), batch_size):
            part = copy.deepcopy(cache)
            part.batch_select_indices(torch.arange(start, min(start + batch_size, tokens.numel())))
            scores.append(read(part, tokens[start : start + batch_size]))
        return torch.cat(scores)

    table = torch.empty((len(prompts), len(responses)), dtype=torch.float64)
    for p, prompt in enumerate(prompts):
        prompt_ids = torch.tensor(tokenizer(prompt.text, add_special_tokens=False)["input_ids"])[None]
        cache = DynamicCache()
        backbone(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), use_cache=True, **{cache_keyword: cache})
        # Level 1: prompt x₁ for every token (EOS ends the response "EOS").
        cache.batch_repeat_interleave(v)
        level_1 = read(cache, vocab)  # (v,), rows x₁
        table[p, eos_row] = level_1[eos]
        # Level 2: prompt a x₂ for a non-EOS; x₂ = EOS ends "a EOS".
        cache.batch_select_indices(others)
        cache.batch_repeat_interleave(v)
        level_2 = read(cache, vocab.repeat(n))  # (n·v,), rows (a, x₂)
        table[p, a_eos_rows] = level_2.reshape(n, v)[:, eos]
        # Level 3: prompt a b x₃ for a, b non-EOS: "a b EOS" and "a b c".
        cache.batch_select_indices((torch.arange(n)[:, None] * v + others[None, :]).flatten())  # rows (a, b)
        cache.batch_repeat_interleave(v)
        table[p, a_b_x_rows] = chunked(cache, vocab.repeat(n * n))  # rows (a, b, x₃)
    return table


@dataclass(frozen=True)
class WorldEvaluator:
    """Exact scores of the reference, a trained policy and the exact optimum (ground truth), the
    learner's own target and, with learned scorers, the exact optimum of the *learned* problem.

    Attributes:
        sft_dir: the reference policy; beta, cost_limit: the problem (one limit per cost).
        scorers: ``scorers.kind`` (``"learned"`` or ``"oracle"``).
        sources: the run's reward source then one source per cost (their calibration, once built,
            maps the learned models into ground-truth units); None when the learner read no scorer.
        costs: the world's costs the run constrains (``world.costs``), in column order.
    """

    sft_dir: Path
    beta: float
    cost_limit: tuple[float, ...]
    scorers: str = "oracle"
    sources: tuple[WorldScorerSource, ...] | None = None
    costs: tuple[str, ...] = ("harm",)
    # The background computation prefetch() started (a holder, so that the evaluator stays frozen).
    _prefetched: list[EvaluationPrefetch] = field(default_factory=list, compare=False, repr=False)

    def prefetch(self) -> None:
        """Start computing the evaluation's training-independent inputs in a background thread
        (:class:`EvaluationPrefetch`: the ground truth and grades of every enumerated response and
        each learned score model's enumerated scores); :meth:`evaluate` waits for it. Once."""
        if not self._prefetched:
            learned = [Path(source.model_dir) for source in self.sources or () if source.scorers == "learned"]
            self._prefetched.append(prefetch_evaluation(self.costs, learned))

    def evaluate(self, policy_dir: Path, target: TiltTarget | None = None) -> Evaluation:
        """Enumerate every response; with learned scorers the target is taken on the calibrated
        learned scores (the problem the learner optimised) and every row is scored on the truth."""
        for started in self._prefetched:
            started.wait()  # what it computed is in this process's caches now
        tokenizer = build_world_tokenizer()
        reference_model, _ = load_policy(self.sft_dir)
        trained_model, _ = load_policy(policy_dir)
        world = build_exact_world(reference_model.eval(), tokenizer, self.beta, self.cost_limit,
                                  cost_names=self.costs)
        trained_logprobs = enumerate_policy_logprobs(trained_model.eval(), tokenizer, world.prompts)
        trained = world.score(trained_logprobs)
        optimum = world.optimum()
        optimal_logprobs = world.optimal_logprobs()
        # The problem the learner saw: the ground truth, or the calibrated learned scores.
        learned = self._learned_scores(world, tokenizer)
        rewards, costs = learned if learned is not None else (world.rewards, world.costs)
        learned_optimum = learned_multiplier = None
        if learned is not None:
            try:
                solution = solve(DualProblem.exact(world.ref_logprobs, rewards, costs, self.beta, self.cost_limit))
                learned_multiplier = [float(v) for v in solution.multiplier]
                learned_optimum = world.score(torch.log_softmax(
                    world.ref_logprobs + (rewards - costs @ solution.multiplier) / self.beta, dim=1))
            except InfeasibleConstraintError:  # the learned costs cannot meet d: no learned optimum
                pass
        target_score = target_multiplier = target_logprobs_ = None
        if target is not None:
            target_multiplier, target_logprobs_ = target_logprobs(world.ref_logprobs, rewards, costs, target,
                                                                  self.cost_limit)
            target_score = world.score(target_logprobs_)
        # Not-Unsafe, Not-Overrefuse, F1, Hard-Refusal-Style of each policy, by the exact grader.
        indicators = exact_world_behaviour(world.prompts, world.responses)
        policies = {"trained": trained_logprobs, "reference": world.ref_logprobs,
                    "optimum": optimal_logprobs, "target": target_logprobs_}
        behaviour = {name: behaviour_record(indicators.metrics(logprobs.exp()))
                     for name, logprobs in policies.items() if logprobs is not None}
        return Evaluation(
            reference=world.score(world.ref_logprobs),
            trained=trained,
            optimum=world.score(optimal_logprobs),
            optimal_multiplier=[float(v) for v in optimum.multiplier],
            target=target_score,
            target_label=None if target is None else self._target_label(target, learned is not None),
            target_multiplier=None if target_multiplier is None else list(target_multiplier),
            learned_optimum=learned_optimum,
            learned_optimal_multiplier=learned_multiplier,
            cost_names=self.costs,
            behaviour=behaviour,
        )

    def _target_label(self, target: TiltTarget, learned: bool) -> str:
        """The target's label, saying where its problem differs from the one the table scores: the
        learned scores, and limits of the learner's own (``scorers.cost_margin``)."""
        label = target.label + (", on the learned scores" if learned else "")
        if target.cost_limit is not None and tuple(target.cost_limit) != tuple(self.cost_limit):
            label += (f", at its own limit E c ≤ {', '.join(f'{v:g}' for v in target.cost_limit)} "
                      f"(d = {', '.join(f'{v:g}' for v in self.cost_limit)} less scorers.cost_margin)")
        return label

    def _learned_scores(self, world, tokenizer) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The calibrated learned reward ``(N, K)`` and costs ``(N, K, m)`` of every enumerated
        response, or None (oracle scorers, no scorers read, or a scorer never built)."""
        if self.scorers != "learned" or self.sources is None:
            return None
        if any(source.calibration is None for source in self.sources):
            return None
        scores = [apply_calibration(source.calibration,
                                    enumerated_scores(Path(source.model_dir), tokenizer, world.prompts, world.responses))
                  for source in self.sources]
        return scores[0], torch.stack(scores[1:], dim=-1)


def enumerated_scores(model_dir: Path, tokenizer, prompts, responses) -> torch.Tensor:
    """:func:`enumerate_end_scores` of the score model saved in ``model_dir``, ``(num_prompts,
    num_responses)``, kept per process by the folder's stamp and the prompts."""
    from saferl.models import load_score_model

    key = (_folder_stamp(model_dir), tuple(prompts))
    raw = _ENUMERATED_SCORES.get(key)
    if raw is None:
        model, _ = load_score_model(model_dir)
        raw = enumerate_end_scores(model.eval(), tokenizer, prompts, responses)
        if len(_ENUMERATED_SCORES) >= 8:  # a few runs' models at a time
            _ENUMERATED_SCORES.clear()
        _ENUMERATED_SCORES[key] = raw
    return raw


class EvaluationPrefetch:
    """The evaluation's inputs that no training changes, computed in one background thread of the
    driver while the learner trains: the ground truth and the exact grades of every enumerated
    response, and each score model's enumerated scores (a few seconds of a world run's evaluation).
    The driver mostly waits on its rank processes then, so on a small machine this work takes
    cores that would idle. The results land in this process's caches, where :meth:`WorldEvaluator.evaluate`
    finds them after :meth:`wait`. A step that fails here is skipped: the evaluation computes it
    again and raises its own error, in the driver's thread."""

    def __init__(self, steps: Sequence[Callable[[], object]]):
        self._thread = threading.Thread(target=self._run, args=(tuple(steps),), name="saferl-evaluation-prefetch",
                                        daemon=True)
        self._thread.start()

    @staticmethod
    def _run(steps: tuple[Callable[[], object], ...]) -> None:
        for step in steps:
            try:
                step()
            except Exception:  # noqa: BLE001 -- evaluate() redoes the step and raises in the driver's thread
                pass

    def wait(self) -> None:
        """Block until every step has run."""
        self._thread.join()


def prefetch_evaluation(costs: Sequence[str], score_model_dirs: Sequence[Path]) -> EvaluationPrefetch:
    """Start computing the world evaluation's training-independent inputs (:class:`EvaluationPrefetch`)
    for the constrained ``costs`` and the learned score models in ``score_model_dirs`` (none with
    oracle scorers)."""
    from saferl.data.world import world_prompts

    tokenizer = build_world_tokenizer()
    prompts = world_prompts()
    responses = enumerate_responses(tokenizer)
    steps = [partial(ground_truth_tables, prompts, responses, tuple(costs)),
             partial(exact_world_behaviour, prompts, responses)]
    steps += [partial(enumerated_scores, Path(folder), tokenizer, prompts, responses) for folder in score_model_dirs]
    return EvaluationPrefetch(steps)


#: A score model's enumerated end scores, by its folder's stamp and the prompts: a sweep's jobs (and
#: the presets run with ``model.from_run``) evaluate with the same score models, one process after
#: the other; each enumeration is 115,840 forward rows (16 prompts × 7240 responses).
_ENUMERATED_SCORES: dict[tuple, torch.Tensor] = {}


def _folder_stamp(folder: Path) -> tuple:
    """The folder's path and each file's name, size, inode and change times: a model saved again
    in the same folder gets a new stamp."""
    folder = folder.resolve()
    files = sorted((path.name, path.stat()) for path in folder.iterdir() if path.is_file())
    return (str(folder), tuple((name, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns) for name, st in files))


def _score_models_needed(settings: WorldSettings, needs: Needs) -> bool:
    """The score models serve the learned scorers and every critic's start."""
    return needs.critics or (needs.scorers and settings.scorers == "learned")


def build(settings: WorldSettings, resources: Resources, output: RunOutput, needs: Needs) -> Setup:
    """Stages 1–6 of the module docstring (those ``needs`` asks for); returns the world's setup."""
    tokenizer = build_world_tokenizer()
    score_models = _score_models_needed(settings, needs)
    # The learner's rank processes start while the stages below run (on a small machine their
    # imports otherwise come after them, all at once).
    init_ray(resources.runtime)
    prestart_workers(resources.runtime, resources.group, needs.groups)
    if settings.from_run is not None:
        folder, metrics, seconds, own_costs = _reuse(settings, Path(settings.from_run), score_models)
        if own_costs:  # costs the reused run lacks: their pairs and models are made in this run's folder
            more_metrics, more_seconds = _cost_stages_here(settings, own_costs, folder / "models" / "sft", resources,
                                                           output, score_models)
            metrics, seconds = {**metrics, **more_metrics}, {**seconds, **more_seconds}
    else:
        folder, own_costs = output.folder, ()
        metrics, seconds = _run_stages(settings, resources, output, tokenizer, score_models)

    def home(cost: str) -> Path:
        """The run folder holding ``cost``'s pairs and model."""
        return output.folder if cost in own_costs else folder

    # Stage 1's outputs, loaded back through the normal loaders.
    paths = world_dataset_paths(folder / "data")
    prompts = [record.prompt for record in load_prompt_dataset(str(paths.prompts)).records]
    pairs = list(load_preference_dataset(str(paths.preferences_train)).records) if needs.pairs else []
    ptx = list(load_sft_dataset(str(paths.sft)).records) if needs.ptx else []
    sft_dir = folder / "models" / "sft"
    sft_spec = ModelSpec(name_or_path=str(sft_dir))
    models = folder / "models"
    cost_dirs = [home(cost) / "models" / cost_model_name(cost) for cost in settings.costs]

    held_out: dict[str, list] = {}

    def held_out_pairs(cost: str) -> list:
        """The held-out pairs labelled by ``cost``, read once (the scorers' calibration and the
        critics' scale both fit on them; the reward shares harm's file)."""
        if cost not in held_out:
            test_path = world_dataset_paths(home(cost) / "data").preferences("test", cost)
            held_out[cost] = list(load_preference_dataset(str(test_path)).records)
        return held_out[cost]

    # 5. The scorers (the evaluator reads their calibration once the learner has built them); each
    # is calibrated on the held-out pairs of its own labels.
    def source(kind: str, model_dir: Path, cost: str = "harm") -> WorldScorerSource:
        return WorldScorerSource(kind, settings.scorers, model_dir, settings.calibrate, held_out_pairs(cost), tokenizer,
                                 resources.num_ranks, cost=cost, calibration_map=settings.calibration)

    sources = None
    if needs.scorers:
        sources = (source("reward", models / "reward_model"),
                   *(source("cost", path, cost) for cost, path in zip(settings.costs, cost_dirs, strict=True)))

    # Critics start from the score models (docs/algorithms.md §2), scaled into ground-truth units.
    def critic(kind: str, model_dir: Path, cost: str = "harm") -> CriticStart:
        scale = critic_value_scale(model_dir, held_out_pairs(cost), world_truth(kind, cost), tokenizer)
        return CriticStart(sft_spec, init_from=str(model_dir), value_scale=scale)

    return Setup(
        name="world",
        policy=sft_spec,
        tokenizer=tokenizer,
        template=WORLD_TEMPLATE,
        max_length=MAX_SEQUENCE_LENGTH,
        max_prompt_length=MAX_SEQUENCE_LENGTH,
        generation=settings.generation,
        prompts=prompts,
        pairs=pairs,
        pairs_source=str(paths.preferences_train),
        ptx=ptx,
        ptx_source=f"the world's SFT demonstrations ({paths.sft})",
        reward=sources[0] if sources else None,
        costs=sources[1:] if sources else (),
        reward_critic=critic("reward", models / "reward_model") if needs.critics else None,
        # One cost critic per cost, each from its own cost model (docs/algorithms.md §2).
        cost_critics=tuple(critic("cost", path, cost) for cost, path in zip(settings.costs, cost_dirs, strict=True))
        if needs.critics else (),
        # 6. The exact evaluator.
        evaluator=WorldEvaluator(sft_dir, settings.beta, settings.cost_limit, settings.scorers, sources,
                                 settings.costs),
        rows_per_call=None,
        label_temperature=settings.label_temperature,
        score_units="ground-truth units" if settings.scorers == "oracle" or settings.calibrate else "cost-model units",
        details=metrics,
        seconds=seconds,
    )


def _run_stages(
    settings: WorldSettings, resources: Resources, output: RunOutput, tokenizer, score_models: bool
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Stages 1–4 in ``output.folder`` (finished ones skipped with ``output.resume``); returns the
    score models' held-out metrics by stage name (``reward_model``, ``cost_model``, ...) and each
    stage's wall seconds."""
    folder = output.folder
    folder.mkdir(parents=True, exist_ok=True)
    records = StageRecords(folder, output.resume)
    seconds: dict[str, float] = {}
    init_ray(resources.runtime)

    # 1. The world's prompts and demonstrations.
    clock = time.perf_counter()
    if records.finished("data", settings.stage_settings("data")) is None:
        # This run's own folder: a stage that did not finish is redone.
        write_demonstrations(folder / "data", seed=settings.seed, num_sft=settings.num_sft, overwrite=True)
        records.mark("data", {"seconds": time.perf_counter() - clock}, settings.stage_settings("data"))
    paths = world_dataset_paths(folder / "data")
    seconds["data"] = time.perf_counter() - clock

    # 2. SFT of the reference policy.
    clock = time.perf_counter()
    sft_dir = folder / "models" / "sft"
    if (done := records.finished("sft", settings.stage_settings("sft"))) is not None:
        seconds["sft"] = done["seconds"]
    else:
        run_sft_stage(world_model_spec(settings.reference, tokenizer), settings.sft,
                      load_sft_dataset(str(paths.sft)).records, tokenizer, template=WORLD_TEMPLATE,
                      max_length=MAX_SEQUENCE_LENGTH, seed=settings.seed, resources=resources, output=output,
                      export_dir=sft_dir)
        seconds["sft"] = time.perf_counter() - clock
        records.mark("sft", {"seconds": seconds["sft"]}, settings.stage_settings("sft"))

    # 2b. The preference pairs, from the SFT policy (or the demonstrator).
    clock = time.perf_counter()
    if (done := records.finished("pairs", settings.stage_settings("pairs"))) is not None:
        seconds["pairs"] = done["seconds"]
    else:
        write_pair_datasets(folder / "data", seed=settings.seed, num_pairs_train=settings.num_pairs_train,
                            num_pairs_test=settings.num_pairs_test, temperature=settings.label_temperature,
                            overwrite=True, costs=settings.costs,
                            sampler=pair_sampler(settings.pair_source, sft_dir, tokenizer))
        seconds["pairs"] = time.perf_counter() - clock
        records.mark("pairs", {"seconds": seconds["pairs"]}, settings.stage_settings("pairs"))
    if not score_models:
        return {}, seconds

    # 3–4. The reward model and one model per cost, initialised from the SFT backbone; a cost's
    # model learns from the pairs labelled by that cost (the reward model from the harm pairs').
    # They need nothing from each other, so they train side by side.
    models = [("reward", "harm", "reward_model", settings.reward_model)]
    models += [("cost", cost, cost_model_name(cost), settings.cost_model) for cost in settings.costs]

    def train(kind: str, cost: str, name: str, stage) -> dict[str, float]:
        train_pairs = load_preference_dataset(str(paths.preferences("train", cost))).records
        test_pairs = list(load_preference_dataset(str(paths.preferences("test", cost))).records)
        return run_score_stage(
            kind, stage, sft_dir, train_pairs, test_pairs, tokenizer, template=WORLD_TEMPLATE,
            max_length=MAX_SEQUENCE_LENGTH, regularization=settings.regularization, seed=settings.seed,
            resources=resources, output=output, export_dir=folder / "models" / name, truth=world_truth(kind, cost),
            name=name, sign_weight=settings.sign_weight,  # only the cost loss reads it
        )

    metrics, score_seconds = run_stages_side_by_side(records, {
        name: (settings.stage_settings(name), partial(train, kind, cost, name, stage))
        for kind, cost, name, stage in models
    })
    seconds.update(score_seconds)
    return metrics, seconds


def pair_sampler(source: str, sft_dir: Path, tokenizer):
    """The preference pairs' response sampler of ``data.pair_source``: the SFT policy's exact
    distribution (``policy``; its log-probabilities enumerated in-process, about a second) or the
    demonstrator."""
    from saferl.data.world.generator import demonstrator_sampler
    from saferl.data.world.policy_pairs import policy_sampler

    if source == "demonstrator":
        return demonstrator_sampler()
    policy, _ = load_policy(sft_dir)
    return policy_sampler(enumerate_responses(tokenizer), enumerate_policy_logprobs(policy.eval(), tokenizer))


def _cost_stages_here(settings: WorldSettings, costs: tuple[str, ...], sft_dir: Path, resources: Resources,
                      output: RunOutput, score_models: bool) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """The pairs (``pairs_<cost>``) and, when needed, the models (``cost_<cost>_model``) of costs that
    a reused run lacks, made in this run's folder from the reused SFT policy; returns their metrics
    and seconds (finished ones skipped with ``output.resume``)."""
    from saferl.data.world import write_cost_pairs

    folder = output.folder
    folder.mkdir(parents=True, exist_ok=True)
    records = StageRecords(folder, output.resume)
    tokenizer = build_world_tokenizer()
    metrics: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    init_ray(resources.runtime)
    sampler = None
    for cost in costs:
        clock, stage = time.perf_counter(), f"pairs_{cost}"
        stage_settings = {**settings.stage_settings("pairs"), "costs": [cost]}
        if records.finished(stage, stage_settings) is None:
            sampler = sampler or pair_sampler(settings.pair_source, sft_dir, tokenizer)
            write_cost_pairs(folder / "data", cost, settings.seed, settings.num_pairs_train, settings.num_pairs_test,
                             settings.label_temperature, overwrite=True, sampler=sampler)
            records.mark(stage, {"seconds": time.perf_counter() - clock}, stage_settings)
        seconds[stage] = time.perf_counter() - clock
        if not score_models:
            continue
        clock, name = time.perf_counter(), cost_model_name(cost)
        if (done := records.finished(name, settings.stage_settings(name))) is not None:
            metrics[name], seconds[name] = done["metrics"], done["seconds"]
            continue
        paths = world_dataset_paths(folder / "data")
        metrics[name] = run_score_stage(
            "cost", settings.cost_model, sft_dir, load_preference_dataset(str(paths.preferences("train", cost))).records,
            list(load_preference_dataset(str(paths.preferences("test", cost))).records), tokenizer,
            template=WORLD_TEMPLATE, max_length=MAX_SEQUENCE_LENGTH, regularization=settings.regularization,
            seed=settings.seed, resources=resources, output=output, export_dir=folder / "models" / name,
            truth=world_truth("cost", cost), name=name, sign_weight=settings.sign_weight,
        )
        seconds[name] = time.perf_counter() - clock
        records.mark(name, {"metrics": metrics[name], "seconds": seconds[name]}, settings.stage_settings(name))
    return metrics, seconds


def _reuse(
    settings: WorldSettings, folder: Path, score_models: bool
) -> tuple[Path, dict[str, dict[str, float]], dict[str, float], tuple[str, ...]]:
    """Stages 1–4 of the finished run in ``folder`` (``model.from_run``), checked against ours.

    A run with several costs may reuse a harm-only run: its data, SFT, reward and harm models are
    used in place, and the other costs (returned last) get their pairs and models in this run's
    folder (:func:`_cost_stages_here`)."""
    if not (folder / "stages.json").exists():
        raise FileNotFoundError(
            f"model.from_run: {folder} holds no finished run (no stages.json); give a run folder "
            "whose stages 1–4 (data, SFT, pairs, reward and cost models) finished"
        )
    records = StageRecords(folder, resume=True)
    own_costs: tuple[str, ...] = ()
    harm_only = WorldSettings(**{**{f: getattr(settings, f) for f in settings.__dataclass_fields__},
                                 "costs": ("harm",), "cost_limit": (0.0,)})  # read for its stage settings only
    if settings.costs != ("harm",) and records.recorded_settings("pairs") == harm_only.stage_settings("pairs"):
        own_costs = tuple(cost for cost in settings.costs if cost != "harm")
        settings = harm_only
    stages = settings.prepared_stages if score_models else settings.prepared_stages[:3]  # data, SFT, pairs
    done = {}
    for stage in stages:
        done[stage] = records.finished(stage, settings.stage_settings(stage))
        if done[stage] is None:
            raise ValueError(f"model.from_run: stage {stage!r} of {folder} did not finish (or ran with other "
                             "settings); resume that run first")
    metrics = {stage: done[stage]["metrics"] for stage in stages[3:]}
    return folder, metrics, {stage: 0.0 for stage in stages}, own_costs
