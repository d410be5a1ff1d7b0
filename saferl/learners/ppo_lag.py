"""Safe RLHF: PPO-Lagrangian with reward and cost critics (docs/algorithms.md §2), and its two baselines.

The learner's entry point is :func:`run` (``run(setup, settings, resources, output)``): it builds
the loop on any setup's models, scorers and critics and runs it; :class:`PPOLagrangian` is the loop.
One loop, three configurations (no copies):

* ``ppo_lag``: ``m ≥ 1`` costs, a learned multiplier (gradient ascent on log λ, or PID);
* ``ppo``: no cost (``m = 0``, no multiplier) — the RLHF baseline; with a
  :class:`~saferl.learners.scorers.ShapedRewardScorer` as its reward it is the fixed-λ
  reward-shaping baseline ``r − λc``;
* MoCAN's PPO stage: :func:`run` with a :class:`~saferl.core.multipliers.FixedMultiplier` at λ̂.

Each iteration, in this order:

1. generate one response per prompt from the policy group (sampled ahead, see below);
2. score them with the reward and cost scorers, get the reference log-probs and the critics'
   values (steps 1–2: the shared experience maker; made ahead too, see below);
3. build the per-token reward and cost streams (KL penalty + end scores, clipped);
4. GAE per stream, each with its own critic;
5. PPO update of the policy with the combined advantage ``(A_r − Σ λ_j A_cj)/(1 + Σ λ_j)``;
   with ``ptx_coeff > 0``, then one PTX step: ``ptx_coeff`` × the token-mean NLL of the
   iteration's rows of the setup's PTX set (seeded by ``(seed, iteration)``);
6. update each critic (clipped value loss), side by side with step 5 (different groups);
7. update the multiplier from the raw cost scores of this rollout (its window averages them;
   the driver holds every rank's scores, so this is the average over ranks);
8. log.

**Generation ahead.** Steps 1–2 of iteration ``k + 1`` need only the policy as step 5 of iteration
``k`` leaves it, the critics as step 6 leaves them, the frozen reference and scorers, its prompts
and its seed (both fixed by ``k + 1``). So the policy's thread samples the next responses right
after step 5 and, while the critics still train in step 6, gets their log-probs under the policy
and the reference and their scores; each critic's thread values them once that critic is updated.
Iteration ``k + 1`` then makes only the calls that are left (none, normally): the same responses
and the same numbers it would get itself (same weights, prompts and per-row seeds), but the
policy's process generates and scores while the critics' processes train instead of idling, and
the critics value while the policy's process scores. A rollout sampled ahead is dropped (and
sampled again) when the policy did not take its update and on :meth:`PPOLagrangian.load`; a
critic that refused its step values it in the next iteration; after the last iteration nothing
is sampled; a resumed run samples its first rollout itself. ``perf/generate_s`` is its generation
time wherever it ran, ``perf/rollout_s`` the time the iteration itself spent on steps 1–2, and
``perf/iteration_s`` the iteration's wall time.

**vLLM rollouts** (``runtime.vllm``, GPU and the ``vllm`` extra): step 1 runs in vLLM engines
(:class:`~saferl.runtime.vllm_engine.VLLMEngineGroup`) instead of the policy group. They start from
the policy's own folder (or an export of it, for a policy built from a config), and the loop loads
the policy's weights into them before its first iteration and after every update that a next
iteration follows. Their samples are vLLM's (seeded per row, but not the Hugging Face path's).

Numerical guards (:mod:`saferl.learners.nonfinite`): the rollout's scores and log-probs (after
step 2), the advantages and returns (after step 4), each loss in the ranks before its ``backward``
(steps 5–6) and the multiplier (after step 7) must be finite. A NaN or ±inf stops the run with a
``NonFiniteError`` naming the tensor, the iteration and the rank (or the driver) before the
iteration's checkpoint, so the last checkpoint is the last good state. With
``skip_nonfinite_batches`` the rollout is dropped instead, the iteration advances and
``perf/skipped_batches`` counts it: a rollout refused after steps 2 or 4 updates nothing; a loss
refused in steps 5–6 updates nothing in its group from that step on, and the multiplier is not
updated (steps the other groups took side by side, or earlier minibatches, stand); a non-finite
multiplier is restored to its value before step 7.

Departures from the published code: the multiplier is updated after the PPO step of the same
iteration with the costs of that iteration's rollout (the published code updates it before the
actor step); the KL-in-cost-stream term can be switched off (``kl_in_cost_stream``, see
:func:`~saferl.learners.advantages.compute_advantages`).
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from saferl.core.multipliers import Multiplier, build_multiplier
from saferl.core.ppo import explained_variance
from saferl.core.targets import TiltTarget
from saferl.data.collators import SequenceBatch
from saferl.learners.advantages import compute_advantages
from saferl.learners.nonfinite import NonFiniteGuard, last_completed
from saferl.learners.output import RunOutput
from saferl.learners.ppo_update import minibatch_steps, ptx_loss, update_critic, update_policy
from saferl.learners.result import RunResult
from saferl.learners.rollout import ExperienceMaker
from saferl.learners.run_state import (
    RunFolderInUseError,
    latest_checkpoint,
    resume_checkpoint,
    save_checkpoint_atomically,
)
from saferl.learners.settings import PPOLagSettings, PPOSettings
from saferl.learners.sft import PTXBatches
from saferl.learners.types import SFTTrainBatch
from saferl.models import ModelSpec
from saferl.runtime import CriticGroup, PolicyGroup, ReferenceGroup, ScoreGroup, init_ray
from saferl.runtime.resources import Resources
from saferl.runtime.side_by_side import side_by_side
from saferl.setups.base import CriticStart, Needs, Setup, ShapedScorerSource
from saferl.tracking import NullTracker, Tracker

__all__ = ["PPOLagSettings", "PPOSettings", "PromptSchedule", "PPOLagrangian", "needs", "run", "target"]


class PromptSchedule:
    """Which prompts iteration ``k`` uses: a fresh seeded permutation of the prompt set per pass.

    Stateless given ``(seed, k)``, so a resumed run sees exactly the prompts the uninterrupted run
    would have seen (the data position is the iteration number).
    """

    def __init__(self, prompts: Sequence[str], batch_size: int, seed: int) -> None:
        if not prompts:
            raise ValueError("the prompt set is empty")
        self.prompts = list(prompts)
        self.batch_size = batch_size
        self.seed = seed
        self._last_pass: tuple[int, list[str]] | None = None  # (index, its order): most batches share a pass

    def _pass(self, index: int) -> list[str]:
        if self._last_pass is not None and self._last_pass[0] == index:
            return self._last_pass[1]
        order = list(range(len(self.prompts)))
        random.Random(self.seed * 1_000_003 + index).shuffle(order)
        self._last_pass = (index, [self.prompts[i] for i in order])
        return self._last_pass[1]

    def batch(self, iteration: int) -> list[str]:
        """The ``batch_size`` prompts of ``iteration`` (0-based)."""
        start = iteration * self.batch_size
        prompts: list[str] = []
        while len(prompts) < self.batch_size:
            index, offset = divmod(start + len(prompts), len(self.prompts))
            prompts.extend(self._pass(index)[offset : offset + self.batch_size - len(prompts)])
        return prompts


@dataclass
class _RolloutAhead:
    """A rollout sampled ahead (the module docstring's "Generation ahead"), for iteration ``index``
    (0-based): its responses, their generation seconds and the scoring calls already made on them
    (:meth:`ExperienceMaker.scoring_calls` names; filled in by the update's threads)."""

    index: int
    responses: SequenceBatch
    generate_s: float
    ready: dict[str, torch.Tensor]


class PPOLagrangian:
    """The PPO-Lagrangian loop over runtime groups (see the module docstring for the steps).

    Args:
        maker: the experience maker (policy, reference, scorers, critics).
        reward_critic: the reward critic group (trained in step 6).
        cost_critics: one critic group per cost column.
        multiplier: the Lagrange multiplier (``None`` only when there is no cost).
        schedule: prompts per iteration.
        settings: hyper-parameters.
        policy_rows_per_step: rows of one actor optimizer step (the policy's DeepSpeed train batch).
        critic_rows_per_step: rows of one critic optimizer step.
        tracker: where metrics go.
        ptx_batches: ``iteration -> SFTTrainBatch``, the supervised rows of the PTX step (e.g.
            :class:`~saferl.learners.sft.PTXBatches`; needed when ``settings.ptx_coeff > 0``). It must
            depend on the iteration alone, so that a resumed run trains on the same rows.
        generate_ahead: sample the next rollout's responses while the critics train (the
            module docstring's "Generation ahead"; the same numbers either way). False samples
            each rollout at the start of its own iteration.
    """

    def __init__(
        self,
        maker: ExperienceMaker,
        reward_critic,
        cost_critics: Sequence,
        multiplier: Multiplier | None,
        schedule: PromptSchedule,
        settings: PPOSettings,
        policy_rows_per_step: int,
        critic_rows_per_step: int,
        tracker: Tracker | None = None,
        ptx_batches: Callable[[int], SFTTrainBatch] | None = None,
        generate_ahead: bool = True,
    ) -> None:
        num_costs = sum(scorer.num_outputs for scorer in maker.cost_scorers)
        if num_costs > 0 and multiplier is None:
            raise ValueError(
                "ppo_lag: costs are scored but no multiplier is configured (learner.multiplier)"
            )
        if multiplier is not None and multiplier.num_constraints != num_costs:
            raise ValueError(
                f"ppo_lag: the multiplier has {multiplier.num_constraints} constraint(s) but the cost "
                f"scorers give {num_costs} cost column(s)"
            )
        if settings.ptx_coeff > 0 and ptx_batches is None:
            raise ValueError("ppo_lag: learner.ptx_coeff > 0 needs a PTX data set (ptx_batches)")
        self.maker = maker
        self.reward_critic = reward_critic
        self.cost_critics = list(cost_critics)
        self.multiplier = multiplier
        self.schedule = schedule
        self.settings = settings
        self.policy_rows_per_step = policy_rows_per_step
        self.critic_rows_per_step = critic_rows_per_step
        self.tracker = tracker or NullTracker()
        self.ptx_batches = ptx_batches
        self.iteration = 0  # iterations completed
        self.history: list[dict[str, float]] = []  # metrics of every completed iteration
        self.guard = NonFiniteGuard(settings.skip_nonfinite_batches)
        self.generate_ahead = generate_ahead
        self._ahead: _RolloutAhead | None = None  # the next rollout, sampled by this iteration

    # ------------------------------------------------------------------------------------------
    def multiplier_value(self) -> torch.Tensor:
        """Current λ, shape ``(m,)`` (empty without costs)."""
        if self.multiplier is None:
            return torch.zeros(0, dtype=torch.float64)
        return self.multiplier.value

    def _rollout_seed(self, index: int) -> int:
        """The sampling seed of iteration ``index`` (0-based)."""
        return self.settings.seed * 1_000_003 + index

    def _generate(self, index: int) -> tuple[SequenceBatch, float]:
        """Step 1 of iteration ``index`` (0-based) from the policy as it is now, and its seconds."""
        started = time.perf_counter()
        generated = self.maker.generate(self.schedule.batch(index), self._rollout_seed(index))
        return generated, time.perf_counter() - started

    def _sync_rollout_engine(self) -> None:
        """Load the policy's weights into the rollout engine, when one generates (vLLM)."""
        if self.maker.rollout_engine is not None:
            self.maker.rollout_engine.sync_weights_from(self.maker.policy)

    def step(self) -> dict[str, float]:
        """Run one iteration (steps 1–8); returns its metrics."""
        s = self.settings
        timings: dict[str, float] = {}
        started = clock = time.perf_counter()
        iteration = self.iteration + 1  # 1-based, as logged and as the guards' messages say

        # 1–2. Rollout: generate (unless the previous iteration sampled it ahead), score,
        # reference log-probs, critic values.
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.index == self.iteration:
            generated, timings["perf/generate_s"], ready = ahead.responses, ahead.generate_s, ahead.ready
        else:
            (generated, timings["perf/generate_s"]), ready = self._generate(self.iteration), {}
        prompts = self.schedule.batch(self.iteration)
        experience = self.maker.make(prompts, self._rollout_seed(self.iteration), generated, ready)
        timings["perf/rollout_s"] = time.perf_counter() - clock
        rollout = {
            "reward scores": experience.reward_scores,
            **{f"cost scores (cost {j})": experience.cost_scores[:, j] for j in range(experience.num_constraints)},
            "old log-probs": experience.old_logprobs,
            "reference log-probs": experience.ref_logprobs,
        }
        if not self.guard.inputs_finite(iteration, rollout):
            return self._skip(timings)

        # 3–4. Per-token streams and GAE per stream; the combined advantage uses λ of this rollout.
        clock = time.perf_counter()
        multiplier = self.multiplier_value().detach().clone()
        advantages = compute_advantages(
            experience,
            multiplier,
            s.kl_coeff,
            s.clip_range_score,
            s.gamma,
            s.gae_lambda,
            s.kl_in_cost_stream,
        )
        timings["perf/advantages_s"] = time.perf_counter() - clock
        targets = {
            "advantages": advantages.policy_advantages,
            "reward returns": advantages.reward_returns,
            "cost returns": advantages.cost_returns,
        }
        if not self.guard.inputs_finite(iteration, targets):
            return self._skip(timings)

        # 5–6. The PPO update of the policy (optionally followed by the PTX step) and each critic's
        # update on its own stream's returns: different groups, issued side by side, each timed
        # on its own (so the two timings overlap). Once the policy is updated, its thread samples
        # the next iteration's responses and scores them (steps 1–2 but the critics' values) while
        # the critics train; each critic, once updated, values them.
        next_index = self.iteration + 1
        next_calls: Future[dict | None] = Future()  # its scoring calls; None: not sampled ahead
        ready: dict[str, torch.Tensor] = {}  # the next rollout's scoring calls made ahead
        critic_calls = self.maker.critic_call_names()

        def policy_update() -> tuple[dict[str, float] | None, float]:
            try:
                metrics, seconds = update_only()
                if metrics is not None and next_index < s.iterations:
                    self._sync_rollout_engine()
                    if self.generate_ahead:
                        responses, generate_s = self._generate(next_index)
                        self._ahead = _RolloutAhead(next_index, responses, generate_s, ready)
                        calls = self.maker.scoring_calls(responses, self.schedule.batch(next_index))
                        next_calls.set_result(calls)
                        ready.update(side_by_side({k: c for k, c in calls.items() if k not in critic_calls}))
            finally:  # never leave a critic's thread waiting
                if not next_calls.done():
                    next_calls.set_result(None)
            return metrics, seconds

        def update_only() -> tuple[dict[str, float] | None, float]:
            started = time.perf_counter()
            metrics = update_policy(
                self.maker.policy,
                experience,
                advantages,
                s.clip_eps,
                self.policy_rows_per_step,
                s.ppo_epochs,
                partial(self.guard.step_taken, loss_name="policy loss", iteration=iteration),
            )
            if metrics is not None and s.ptx_coeff > 0:
                # The PTX step: ptx_coeff × the token-mean NLL of this iteration's demonstrations.
                ptx = minibatch_steps(
                    self.maker.policy,
                    self.ptx_batches(self.iteration),
                    partial(ptx_loss, coefficient=s.ptx_coeff),
                    self.policy_rows_per_step,
                    step_taken=partial(self.guard.step_taken, loss_name="PTX loss", iteration=iteration),
                )
                if ptx is None:  # refused as non-finite and skipped: the iteration is skipped
                    return None, time.perf_counter() - started
                metrics["ptx_loss"] = ptx["loss"]
            return metrics, time.perf_counter() - started

        def critic_update(critic, old_values: torch.Tensor, returns: torch.Tensor, loss_name: str, values_name: str):
            started = time.perf_counter()
            metrics = update_critic(
                critic, experience, old_values, returns, s.clip_eps_value, self.critic_rows_per_step, s.ppo_epochs,
                partial(self.guard.step_taken, loss_name=loss_name, iteration=iteration),
            )
            seconds = time.perf_counter() - started
            if metrics is not None and (calls := next_calls.result()) is not None:
                ready[values_name] = calls[values_name]()
            return metrics, seconds

        updates = {
            "policy": policy_update,
            "reward": partial(critic_update, self.reward_critic, experience.reward_values, advantages.reward_returns,
                              "reward critic loss", critic_calls[0]),
        }
        for j, critic in enumerate(self.cost_critics):
            updates[f"cost_{j}"] = partial(
                critic_update, critic, experience.cost_values[..., j], advantages.cost_returns[..., j],
                f"cost critic {j} loss", critic_calls[1 + j],
            )
        updated = side_by_side(updates)
        policy_metrics, timings["perf/policy_update_s"] = updated["policy"]
        timings["perf/critic_update_s"] = max(seconds for name, (_, seconds) in updated.items() if name != "policy")
        if any(metrics is None for metrics, _ in updated.values()):  # a group refused a non-finite loss
            return self._skip(timings)
        critic_metrics = {}
        critic_metrics["critic/reward_loss"] = updated["reward"][0]["loss"]
        critic_metrics["critic/reward_explained_variance"] = explained_variance(
            experience.reward_values, advantages.reward_returns, experience.response_mask
        ).item()
        for j in range(len(self.cost_critics)):
            critic_metrics[f"critic/cost_{j}_loss"] = updated[f"cost_{j}"][0]["loss"]
            critic_metrics[f"critic/cost_{j}_explained_variance"] = explained_variance(
                experience.cost_values[..., j],
                advantages.cost_returns[..., j],
                experience.response_mask,
            ).item()

        # 7. Multiplier update from this rollout's raw cost scores (no KL, no clipping).
        constraint_metrics = {}
        if self.multiplier is not None:
            before = copy.deepcopy(self.multiplier.state_dict())
            self.multiplier.update(experience.cost_scores.double())
            if not self.guard.inputs_finite(iteration, {"multiplier": self.multiplier.value}):
                self.multiplier.load_state_dict(before)
                return self._skip(timings)
            estimate = self.multiplier.constraint_estimate
            for j in range(self.multiplier.num_constraints):
                constraint_metrics[f"constraint/estimate_{j}"] = float(estimate[j])
                constraint_metrics[f"constraint/limit_{j}"] = float(self.multiplier.cost_limit[j])
                constraint_metrics[f"constraint/violation_{j}"] = float(
                    estimate[j] - self.multiplier.cost_limit[j]
                )
                constraint_metrics[f"multiplier/value_{j}"] = float(self.multiplier.value[j])
                constraint_metrics[f"multiplier/used_{j}"] = float(multiplier[j])

        # 8. Log.
        self.iteration += 1
        mask = experience.response_mask
        kl_per_sequence = ((experience.old_logprobs - experience.ref_logprobs) * mask).sum(-1)
        metrics = {
            "rollout/response_length": mask.sum(-1).float().mean().item(),
            "rollout/kl": kl_per_sequence.mean().item(),
            "reward/score": experience.reward_scores.mean().item(),
            **{
                f"cost/score_{j}": experience.cost_scores[:, j].mean().item()
                for j in range(experience.num_constraints)
            },
            **{f"policy/{key}": value for key, value in policy_metrics.items()},
            **critic_metrics,
            **constraint_metrics,
            **timings,
            "perf/iteration_s": (seconds := time.perf_counter() - started),
            "perf/samples_per_s": experience.batch_size / max(1e-9, seconds),
            **self.guard.metrics(),
        }
        self.tracker.log(metrics, step=self.iteration)
        return metrics

    def _skip(self, timings: dict[str, float]) -> dict[str, float]:
        """End an iteration whose rollout held a NaN or ±inf (``skip_nonfinite_batches``): the
        rollout is dropped, the iteration advances (the next one samples fresh prompts) and only
        the timings and the running count of skipped batches are logged."""
        self.iteration += 1
        metrics = {**timings, **self.guard.skip_batch()}
        self.tracker.log(metrics, step=self.iteration)
        return metrics

    def run(self, progress=None, checkpoint=None, checkpoint_every: int | None = None) -> list[dict[str, float]]:
        """Iterate until ``settings.iterations`` iterations are done; returns every iteration's
        metrics (those restored by :meth:`load` included).

        Args:
            progress: called as ``progress(iteration, metrics)`` after each iteration.
            checkpoint: called with no argument every ``checkpoint_every`` iterations and after
                the last one (e.g. ``lambda: learner.save(folder)``).
        """
        # The running count of skipped batches goes on from the history (a resumed run's included).
        self.guard.skipped_batches = int(self.history[-1].get("perf/skipped_batches", 0)) if self.history else 0
        if self.iteration < self.settings.iterations:
            # The engine started from the policy's initial weights; a loaded checkpoint (or an
            # earlier run()) moved the policy since. Each update then syncs it again (step 5).
            self._sync_rollout_engine()
        while self.iteration < self.settings.iterations:
            self.history.append(self.step())
            if progress is not None:
                progress(self.iteration, self.history[-1])
            done = self.iteration == self.settings.iterations
            if checkpoint is not None and (done or (checkpoint_every and self.iteration % checkpoint_every == 0)):
                checkpoint()
        return list(self.history)

    # ------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Checkpoint everything a resumed run needs: the policy, the critics (weights, optimizer
        and scheduler states), the multiplier state and the iteration count (which fixes the
        data position and the sampling seeds)."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.maker.policy.save_checkpoint(folder / "policy")
        self.reward_critic.save_checkpoint(folder / "reward_critic")
        for j, critic in enumerate(self.cost_critics):
            critic.save_checkpoint(folder / f"cost_critic_{j}")
        torch.save(
            {
                "iteration": self.iteration,
                "multiplier": None if self.multiplier is None else self.multiplier.state_dict(),
            },
            folder / "learner_state.pt",
        )
        (folder / "settings.json").write_text(json.dumps(asdict(self.settings), indent=2) + "\n")
        (folder / "history.json").write_text(json.dumps(self.history) + "\n")

    def load(self, directory: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save` into this learner's groups."""
        folder = Path(directory)
        state_path = folder / "learner_state.pt"
        if not state_path.exists():
            raise FileNotFoundError(
                f"no ppo_lag checkpoint in {folder} (missing {state_path.name})"
            )
        self._ahead = None  # sampled from the weights being replaced
        self.maker.policy.load_checkpoint(folder / "policy")
        self.reward_critic.load_checkpoint(folder / "reward_critic")
        for j, critic in enumerate(self.cost_critics):
            critic.load_checkpoint(folder / f"cost_critic_{j}")
        state = torch.load(state_path, weights_only=True)
        self.iteration = int(state["iteration"])
        history = folder / "history.json"
        self.history = json.loads(history.read_text()) if history.exists() else []
        if self.multiplier is not None:
            self.multiplier.load_state_dict(state["multiplier"])


# ---------------------------------------------------------------------------------------------
# The run: the loop built on any setup
# ---------------------------------------------------------------------------------------------


def needs(settings: PPOLagSettings) -> Needs:
    """What the loop reads from its setup: scorers and critic starts (and prompts)."""
    limits = settings.cost_limit if isinstance(settings.cost_limit, (list, tuple)) else [settings.cost_limit]
    # policy, reference, reward critic and one critic per cost (learned scorers add their own)
    return Needs(scorers=True, critics=True, groups=3 + len(limits), ptx=settings.ppo.ptx_coeff > 0)


def target(setup: Setup, settings: PPOLagSettings) -> TiltTarget | None:
    """The policy the loop reaches with perfect optimisation and exact scorers (docs/algorithms.md §2,
    §8): at fixed λ the tilt ``π_ref·exp((r − λ·c)/(β·g(λ)))`` with ``g = 1 + Σλ`` for the published
    streams (``kl_in_cost_stream``) and 1 otherwise; λ is the fixed multiplier, or the point where
    every constraint's multiplier update stops (``E c_j = d_j``, within the cap; for several
    constraints with the §1 streams the box-constrained dual minimum, :mod:`saferl.core.targets`).
    Plain PPO on ``r`` (or on a shaped ``r − λ·c``) is the tilt at that λ. None for the published
    streams' fixed point with several constraints (not defined there)."""
    beta, grows = settings.ppo.kl_coeff, settings.ppo.kl_in_cost_stream
    limits = settings.cost_limit if isinstance(settings.cost_limit, (list, tuple)) else [settings.cost_limit]
    if settings.multiplier is None:
        shaped = setup.reward if isinstance(setup.reward, ShapedScorerSource) else None
        if shaped is None:
            return TiltTarget("PPO on r", beta, multiplier=(0.0,) * len(limits))
        return TiltTarget("PPO on r − λ·c", beta, multiplier=tuple(float(v) for v in shaped.multipliers))
    options = settings.multiplier
    if options["kind"] == "fixed":
        values = options["value"] if isinstance(options["value"], (list, tuple)) else [options["value"]] * len(limits)
        streams = "published streams" if grows else "§1 streams"
        return TiltTarget(f"PPO, λ fixed ({streams})", beta, multiplier=tuple(float(v) for v in values),
                          kl_grows_with_multiplier=grows)
    if len(limits) > 1 and grows:
        return None
    cap = options.get("max_value")
    label = ("the multiplier update's fixed point with the published streams (the optimum at KL weight β(1+λ))"
             if grows else "the multiplier update's fixed point with the §1 streams (π* within the cap)")
    # The fixed point of the limits this learner was given (``d − δ`` under ``scorers.cost_margin``).
    return TiltTarget(label, beta, kl_grows_with_multiplier=grows,
                      max_multiplier=tuple(cap) if isinstance(cap, (list, tuple)) else cap,
                      cost_limit=tuple(float(v) for v in limits))


def start_vllm_engines(setup: Setup, resources: Resources, policy_group: PolicyGroup, export_dir: Path):
    """vLLM engines (``resources.vllm``) for the rollouts of ``setup``'s policy.

    They load the policy's own folder (``model.*``'s ``name_or_path``), or, for a policy built from
    a config, ``policy_group``'s export to ``export_dir``; the loop then keeps their weights the
    policy's (:meth:`PPOLagrangian.run`).

    Raises:
        ValueError: a LoRA policy (the engines load full weights, and the policy group's are the
            base model's plus adapters).
        RuntimeError: ``vllm`` or the GPUs are missing (:func:`saferl.runtime.vllm_engine.require_vllm`).
    """
    from saferl.runtime.vllm_engine import VLLMEngineGroup, require_vllm

    if setup.policy.lora is not None:
        raise ValueError("runtime.vllm: vLLM rollouts load the policy's full weights, which a LoRA policy "
                         "(model.lora) does not have in one piece; set runtime.vllm=null")
    require_vllm(resources.vllm.gpus_needed)  # before exporting anything
    folder = setup.policy.name_or_path or policy_group.export_hf(export_dir)
    return VLLMEngineGroup(resources.vllm, folder, setup.tokenizer, resources.runtime)


def run(setup: Setup, settings: PPOLagSettings, resources: Resources, output: RunOutput) -> RunResult:
    """PPO-Lagrangian on ``setup`` (plain PPO on the reward when ``settings.multiplier`` is None).

    1. start the policy and the reference (both from ``setup.policy``) and one critic per stream;
    2. build the scorers from the setup's sources (their score groups run on ``resources`` and
       are shut down with the rest); every group starts in the background and all are awaited
       before the loop;
    3. the experience maker, the multiplier and the :class:`PPOLagrangian` loop;
    4. with ``output.resume``, restore ``checkpoints/<name>`` when it holds a checkpoint;
    5. run ``ppo.iterations`` iterations, checkpointing atomically every
       ``output.checkpoint_every`` iterations and after the last;
    6. export the policy to ``models/policy_<name>``; every group is shut down.

    Returns:
        The exported policy, the final λ (empty without costs), every iteration's metrics; its
        headline is the last rollout's mean reward score. ``details`` holds the last rollout's
        cost scores and the scorers' calibration (learned world scorers).
    """
    with_costs = settings.multiplier is not None
    setup.require(Needs(scorers=with_costs, critics=True, ptx=settings.ppo.ptx_coeff > 0), "ppo_lag")
    if setup.reward is None or setup.reward_critic is None:
        raise ValueError("ppo_lag needs a reward scorer and a reward critic start")
    ppo, name = settings.ppo, settings.name
    checkpoint_dir = output.folder / "checkpoints" / name
    if not output.resume and latest_checkpoint(checkpoint_dir) is not None:
        # A fresh run never overwrites another run's checkpoint (the CLI refuses the whole folder;
        # this guards a direct call too).
        raise RunFolderInUseError(
            f"{checkpoint_dir} holds a checkpoint; resume it (resume=auto) or choose another folder "
            "(nothing was changed)"
        )
    init_ray(resources.runtime)
    clock = time.perf_counter()
    rows = ppo.prompts_per_iteration  # one optimizer step per rollout and epoch
    groups: list = []
    roles: set[str] = set()

    def start(started):
        groups.append(started)
        return started

    def role(base: str) -> str:
        """``base``, or ``base_<k>`` when a group of that name already runs (several costs)."""
        candidate, k = base, 0
        while candidate in roles:
            k += 1
            candidate = f"{base}_{k}"
        roles.add(candidate)
        return candidate

    def start_score_group(spec: ModelSpec, kind: str) -> ScoreGroup:
        return start(ScoreGroup(spec, setup.tokenizer, resources.engine(0.0, rows), resources.group,
                                resources.runtime, num_outputs=1, kind=kind, role=role(kind), seed=resources.seed,
                                wait=False))

    def start_critic(critic: CriticStart, kind: str) -> CriticGroup:
        return start(CriticGroup(critic.spec, setup.tokenizer, resources.engine(settings.critic_learning_rate, rows),
                                 resources.group, resources.runtime, init_from=critic.init_from,
                                 value_scale=critic.value_scale,
                                 role=role(f"{kind}_critic"), seed=resources.seed, wait=False))

    cost_sources = list(setup.costs) if with_costs else []
    try:
        # 1. Policy, reference and critics.
        # The actor's schedule runs over the whole run's optimizer steps (a resumed run restores
        # the scheduler's position with the optimizer).
        warmup_steps, total_steps = settings.policy_schedule_steps()
        policy_engine = replace(resources.engine(settings.policy_learning_rate, rows),
                                scheduler=settings.policy_lr_schedule, warmup_steps=warmup_steps,
                                total_steps=total_steps)
        # The start order decides which groups share a process when one-rank groups share
        # (saferl.runtime.pool: each new group joins the least busy process, the first on a tie).
        # On two processes: the policy and the reference in one, the critics in the other, so
        # the policy's process generates the next rollout while the other trains the critics.
        policy_group = start(PolicyGroup(setup.policy, setup.tokenizer, policy_engine, resources.group,
                                         resources.runtime, role=role("policy"), seed=resources.seed, wait=False))
        reward_critic = start_critic(setup.reward_critic, "reward")
        reference = start(ReferenceGroup(setup.policy, setup.tokenizer, resources.engine(0.0, rows),
                                         resources.group, resources.runtime, role=role("reference"),
                                         seed=resources.seed, wait=False))
        cost_critics = [start_critic(critic, "cost") for critic in (setup.cost_critics if with_costs else ())]
        # 2. Scorers.
        reward = setup.reward.build(start_score_group)
        costs = [source.build(start_score_group) for source in cost_sources]
        for started in groups:  # they start side by side; a start-up failure surfaces here
            started.wait_ready()
        rollout_engine = None
        if resources.vllm is not None:
            rollout_engine = start(start_vllm_engines(setup, resources, policy_group, output.folder / "models" / f"rollout_start_{name}"))
        # 3. Experience maker, multiplier, loop.
        maker = ExperienceMaker(
            policy=policy_group, reference=reference, reward_scorer=reward, cost_scorers=costs,
            reward_critic=reward_critic, cost_critics=cost_critics, tokenizer=setup.tokenizer,
            generation=setup.generation, max_prompt_length=setup.max_prompt_length, template=setup.template,
            rollout_engine=rollout_engine,
        )
        lagrange = None
        if with_costs:
            options = dict(settings.multiplier)
            lagrange = build_multiplier(options.pop("kind"), settings.cost_limit, **options)
        # The PTX rows: one actor step's worth of the setup's demonstrations per iteration.
        ptx_batches = PTXBatches(setup.ptx, rows, resources.seed, setup.tokenizer, setup.max_length,
                                 setup.template) if ppo.ptx_coeff > 0 else None
        learner = PPOLagrangian(
            maker, reward_critic, cost_critics, lagrange, PromptSchedule(list(setup.prompts), rows, resources.seed),
            ppo, policy_rows_per_step=rows, critic_rows_per_step=rows, tracker=output.tracker,
            ptx_batches=ptx_batches,
        )
        progress = output.stage_progress(name, ppo.iterations)
        # 4. Resume.
        # (A damaged newest checkpoint falls back to the previous one, with a notice.)
        if output.resume and (found := resume_checkpoint(checkpoint_dir, output.notice)) is not None:
            learner.load(found)
            output.notice(f"resuming from iteration {learner.iteration} (checkpoint {found})")
            progress(learner.iteration, learner.history[-1] if learner.history else {})
        # 5. Iterate, with atomic checkpoints.
        history = learner.run(
            progress=progress,
            checkpoint=lambda: save_checkpoint_atomically(learner.save, checkpoint_dir),
            checkpoint_every=output.checkpoint_every,
        )
        # 6. Export.
        policy_dir = policy_group.export_hf(output.folder / "models" / f"policy_{name}")
        final = [] if lagrange is None else [float(v) for v in lagrange.value]
    finally:
        for running in groups:
            running.shutdown()
    last = last_completed(history, "reward/score")  # a skipped rollout has no scores
    calibration = {source.kind: source.calibration for source in (setup.reward, *cost_sources)
                   if getattr(source, "calibration", None) is not None}
    return RunResult(
        method="ppo_lag",
        target=target(setup, settings),
        headline=float(last["reward/score"]),
        policy_dir=Path(policy_dir),
        folder=output.folder,
        multiplier=final,
        history=history,
        seconds={name: time.perf_counter() - clock},
        details={
            "last_cost_scores": [float(last[f"cost/score_{j}"]) for j in range(len(final))],
            "num_prompts": len(setup.prompts),
            "max_prompt_length": setup.max_prompt_length,
            "calibration": calibration,
        },
    )
