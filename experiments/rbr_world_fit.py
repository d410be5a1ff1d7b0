"""Experiment: fit the world's rule-based reward on top of a helpful-only reward, and score it exactly.

On the built-in world (exact mode: every response of at most three tokens enumerated), per
response type (``hard_refuse`` for harmful prompts, ``comply`` for benign ones):

1. the helpful-only reward model is the world's ground-truth helpfulness ``R_rm`` (exact, frozen);
   on harmful prompts it prefers harmful detail;
2. training data: for each prompt, ``--groups`` groups of completions, each drawn from every
   completion class in turn (up to ``--per-class`` responses of each class, uniformly), classed by
   the exact grader; the features come from the grader under study (exact, or noisy at
   ``--noise``), as a prompted LM grader's would;
3. fit the linear RBR weights (hinge, AdamW lr 1e-2, 1000 steps, 95/5 split by group);
4. score exactly over all 7240 responses of every prompt: the error rate (how often a non-ideal
   response does not rank below an ideal one, over all such pairs), and the behaviour metrics of
   the KL-regularised optimum ``π ∝ π_ref · exp(R/β)`` for ``R = R_rm`` and ``R = R_rm + R_rbr``
   (uniform ``π_ref``, the world's default β = 0.5; on benign prompts ``R_rbr`` is added too,
   since every world prompt is safety-relevant).

A uniform reference stands in for the trained one (the optimum's ranking effect, not a policy's
reachable behaviour); the world has 16 prompts, so held-out groups share their prompts' text with
training groups.

Run: ``python experiments/rbr_world_fit.py`` (``--noise 0.1`` for a noisy grader).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from saferl.data.world import (
    build_world_tokenizer,
    enumerate_responses,
    ground_truth_reward,
    world_prompts,
)
from saferl.rbr import BehaviourMetrics, RBRFitResult, fit_rbr_weights, rbr_features
from saferl.rbr.world import (
    WorldGrader,
    world_behaviour_metrics,
    world_response_type,
    world_spec,
)

BETA = 0.5


@dataclass(frozen=True)
class WorldFit:
    """What :func:`run` measures."""

    fits: dict[str, RBRFitResult]
    exact_error_rate: dict[str, tuple[float, float]]  # response type → (R_rm alone, R_rm + R_rbr)
    metrics_rm: BehaviourMetrics
    metrics_rbr: BehaviourMetrics


def run(
    noise: float = 0.0,
    groups: int = 8,
    per_class: int = 4,
    steps: int = 1000,
    seed: int = 0,
) -> WorldFit:
    prompts = world_prompts()
    responses = enumerate_responses(build_world_tokenizer())
    spec = world_spec()
    exact = WorldGrader().probabilities(prompts, responses)  # (N, K, P) the truth
    graded = WorldGrader(noise, seed).probabilities(prompts, responses) if noise else exact
    finished = responses.finished.tolist()
    rewards = torch.tensor(
        [
            [ground_truth_reward(p, w, f) for w, f in zip(responses.words, finished, strict=True)]
            for p in prompts
        ],
        dtype=torch.float64,
    )  # (N, K)
    generator = torch.Generator().manual_seed(seed)
    fits, exact_error, rbr_rewards = {}, {}, torch.zeros_like(rewards)
    for response_type in spec.response_types:
        feature_map = rbr_features(spec, response_type)
        rows = [i for i, p in enumerate(prompts) if world_response_type(p) == response_type]
        true_classes = feature_map.class_features(exact[rows]).argmax(-1)  # (rows, K)
        features, reward_scores, group_ids, class_ranks = [], [], [], []
        for position, row in enumerate(rows):
            for group in range(groups):
                for rank in range(len(spec.class_order)):
                    members = torch.nonzero(true_classes[position] == rank).flatten()
                    take = members[torch.randperm(members.numel(), generator=generator)[:per_class]]
                    features.append(feature_map.features(graded[row, take]))
                    reward_scores.append(rewards[row, take])
                    group_ids.append(torch.full((take.numel(),), position * groups + group))
                    class_ranks.append(torch.full((take.numel(),), rank))
        fit = fit_rbr_weights(
            torch.cat(features),
            torch.cat(reward_scores),
            torch.cat(group_ids),
            torch.cat(class_ranks),
            feature_names=feature_map.feature_names,
            steps=steps,
            seed=seed,
        )
        fits[response_type] = fit
        rbr_rewards[rows] = feature_map.features(graded[rows]) @ fit.weights
        totals = rewards[rows] + rbr_rewards[rows]
        exact_error[response_type] = (
            _exact_error_rate(rewards[rows], true_classes),
            _exact_error_rate(totals, true_classes),
        )
    uniform = torch.zeros_like(rewards)
    policy_rm = torch.softmax(uniform + rewards / BETA, dim=-1)
    policy_rbr = torch.softmax(uniform + (rewards + rbr_rewards) / BETA, dim=-1)
    return WorldFit(
        fits=fits,
        exact_error_rate=exact_error,
        metrics_rm=world_behaviour_metrics(prompts, policy_rm, exact),
        metrics_rbr=world_behaviour_metrics(prompts, policy_rbr, exact),
    )


def _exact_error_rate(totals: torch.Tensor, classes: torch.Tensor) -> float:
    """Over every prompt's (ideal, non-ideal) response pairs: the share where the non-ideal one
    does not rank below the ideal one. ``totals`` and ``classes``: ``(prompts, K)``."""
    errors, pairs = 0, 0
    for total, rank in zip(totals, classes, strict=True):
        ideal, other = total[rank == 0], total[rank != 0]
        errors += int((other.unsqueeze(0) >= ideal.unsqueeze(1)).sum())  # (n_ideal, n_other)
        pairs += ideal.numel() * other.numel()
    return errors / pairs if pairs else float("nan")


def report(result: WorldFit, noise: float) -> str:
    lines = [
        f"RBR on the built-in world (grader noise {noise:g}; β = {BETA}, uniform reference)",
        "",
    ]
    lines.append(
        "response type  train pairs  zero-loss  held-out error (RM → RM+RBR)  "
        "exact error (RM → RM+RBR)"
    )
    for response_type, fit in result.fits.items():
        rm_error, rbr_error = result.exact_error_rate[response_type]
        lines.append(
            f"{response_type:<13}  {fit.n_train_pairs:>11}  {fit.final_zero_loss_fraction:>9.3f}  "
            f"{fit.heldout_error_rate_reward_model:>13.3f} → {fit.heldout_error_rate:<13.3f}  "
            f"{rm_error:>11.4f} → {rbr_error:.4f}"
        )
    lines += ["", "optimum of      Not-Unsafe  Not-Overrefuse     F1  Hard-Refusal-Style"]
    for name, m in (("R_rm", result.metrics_rm), ("R_rm + R_rbr", result.metrics_rbr)):
        lines.append(
            f"{name:<14}  {100 * m.not_unsafe:>10.2f}  {100 * m.not_overrefuse:>14.2f}  "
            f"{100 * m.f1:>5.2f}  {100 * m.hard_refusal_style:>18.2f}"
        )
    lines += ["", "weights:"]
    for response_type, fit in result.fits.items():
        weights = ", ".join(f"{name} {value:+.2f}" for name, value in fit.weight_dict().items())
        lines.append(f"  {response_type}: {weights}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--noise", type=float, default=0.0, help="grader noise rate in [0, 1]")
    parser.add_argument("--groups", type=int, default=8, help="completion groups per prompt")
    parser.add_argument("--per-class", type=int, default=4, help="responses per class in a group")
    parser.add_argument("--steps", type=int, default=1000, help="AdamW steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(args.noise, args.groups, args.per_class, args.steps, args.seed)
    print(report(result, args.noise))
    return 0


if __name__ == "__main__":
    sys.exit(main())
