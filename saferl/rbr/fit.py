"""Fitting one response type's linear RBR weights (Mu et al. 2024; docs/algorithms.md §6).

Steps:

1. pair every two completions of the same prompt whose classes differ (the better class first);
   the margin of a pair is ``margin × factor[class of the better completion]``;
2. split the *prompts* 95/5 into training and held-out prompts (seeded);
3. from weights 0, take ``steps`` full-batch AdamW steps on the mean hinge loss
   ``max(0, m_ab + R_tot(y_b) − R_tot(y_a))``, ``R_tot = R_rm + features · w``, with the frozen
   reward model's scores ``R_rm`` as a fixed offset, logging the loss, the fraction of training
   pairs with zero loss and the held-out loss before every step (and once after the last);
4. on the held-out prompts, report the error rate: how often a non-ideal completion does not rank
   below an ideal completion of the same prompt, with the fitted weights and (for comparison)
   with the reward model alone.

Departures from the release's ``rbr_weight_fitter.py``:

* the split is by prompt, not by pair, so that held-out pairs come from prompts the fit never saw;
* the error rate counts ties as errors (see :func:`saferl.core.rbr.ideal_outranked`);
* the fit runs in float64 by default and is deterministic given ``seed``.

Pure torch on the CPU; no logging library: the per-step metrics are returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from saferl.core.rbr import ideal_outranked, linear_rbr_reward, ranked_pairs, rbr_hinge_loss

__all__ = ["RBRFitResult", "fit_rbr_weights"]


@dataclass(frozen=True)
class RBRFitResult:
    """The fitted weights of one response type's linear RBR and the fit's diagnostics.

    Attributes:
        weights: ``(n_features,)``.
        feature_names: the features' names, when given.
        loss: the mean training hinge loss before each step, ``(steps,)`` floats.
        zero_loss_fraction: the fraction of training pairs with zero loss before each step.
        heldout_loss: the mean held-out hinge loss before each step (NaN without held-out
            pairs).
        final_loss, final_zero_loss_fraction: the same after the last step.
        heldout_error_rate: with the fitted weights, the share of held-out (ideal, non-ideal)
            pairs where the non-ideal completion does not rank below the ideal one (NaN when
            no held-out prompt has both).
        heldout_error_rate_reward_model: the same with the reward model alone (weights 0).
        train_prompts, heldout_prompts: the prompt ids of each side of the split.
        n_train_pairs, n_heldout_pairs, n_heldout_ideal_pairs: pair counts.
    """

    weights: torch.Tensor
    feature_names: tuple[str, ...] | None
    loss: tuple[float, ...]
    zero_loss_fraction: tuple[float, ...]
    heldout_loss: tuple[float, ...]
    final_loss: float
    final_zero_loss_fraction: float
    heldout_error_rate: float
    heldout_error_rate_reward_model: float
    train_prompts: tuple[int, ...]
    heldout_prompts: tuple[int, ...]
    n_train_pairs: int
    n_heldout_pairs: int
    n_heldout_ideal_pairs: int

    def weight_dict(self) -> dict[str, float]:
        """Feature name → weight (names ``feature_0``, ... when none were given)."""
        names = self.feature_names or tuple(f"feature_{i}" for i in range(len(self.weights)))
        return {name: float(weight) for name, weight in zip(names, self.weights, strict=True)}


def fit_rbr_weights(
    features: torch.Tensor,
    reward_scores: torch.Tensor,
    prompt_ids: torch.Tensor,
    class_ranks: torch.Tensor,
    *,
    feature_names: Sequence[str] | None = None,
    margin: float = 1.0,
    class_margin_factors: Sequence[float] | None = None,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    steps: int = 1000,
    heldout_fraction: float = 0.05,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> RBRFitResult:
    """Fit one response type's linear RBR weights by the hinge loss over ranked completions.

    Args:
        features: ``(n, n_features)``, e.g. from :meth:`saferl.rbr.RBRFeatures.features`.
        reward_scores: ``(n,)``, the frozen reward model's scores (the offset).
        prompt_ids: ``(n,)`` integers; completions of the same prompt share an id.
        class_ranks: ``(n,)`` integers, the position of each completion's class in the class
            order (0 = ideal).
        feature_names: ``n_features`` names, kept on the result.
        margin: the hinge margin (1 in the paper).
        class_margin_factors: one factor per class rank (scales the margin of pairs whose better
            completion has that class); default 1 for every class.
        lr: AdamW's learning rate (1e-2).
        weight_decay: AdamW's weight decay (0, as in the release's fitter).
        steps: full-batch optimiser steps (1000).
        heldout_fraction: the share of prompts held out (0.05), at least one prompt.
        seed: seeds the prompt split.
        dtype: the fit's float type.

    Raises:
        ValueError: shapes that do not agree, fewer than two prompts, no training pairs, or a
            bad setting.
    """
    n = features.shape[0]
    if features.dim() != 2 or any(
        t.shape != (n,) for t in (reward_scores, prompt_ids, class_ranks)
    ):
        raise ValueError(
            "expected features (n, n_features) and reward_scores, prompt_ids, class_ranks (n,), "
            f"got {tuple(features.shape)}, {tuple(reward_scores.shape)}, "
            f"{tuple(prompt_ids.shape)}, {tuple(class_ranks.shape)}."
        )
    if feature_names is not None and len(feature_names) != features.shape[1]:
        raise ValueError(
            f"{len(feature_names)} feature names for {features.shape[1]} feature columns."
        )
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}.")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    if n and int(class_ranks.min()) < 0:
        raise ValueError(
            "class_ranks must be positions in the class order (0 = ideal), found "
            f"{int(class_ranks.min())}."
        )
    features = features.to(dtype)
    reward_scores = reward_scores.to(dtype)
    class_ranks = class_ranks.long()
    n_classes = int(class_ranks.max()) + 1 if n else 0
    factors = torch.ones(n_classes, dtype=dtype)
    if class_margin_factors is not None:
        factors = torch.as_tensor(list(class_margin_factors), dtype=dtype)
        if factors.shape[0] < n_classes:
            raise ValueError(
                f"{factors.shape[0]} class margin factors for class ranks up to {n_classes - 1}."
            )

    # 1. every ranked pair of the same prompt, and its margin
    better, worse = ranked_pairs(prompt_ids, class_ranks)
    margins = margin * factors[class_ranks[better]]

    # 2. the 95/5 split by prompt
    prompts = torch.unique(prompt_ids)
    if prompts.numel() < 2:
        raise ValueError(
            f"the fit needs at least two prompts to hold one out, got {prompts.numel()}."
        )
    generator = torch.Generator().manual_seed(seed)
    shuffled = prompts[torch.randperm(prompts.numel(), generator=generator)]
    n_heldout = max(1, round(heldout_fraction * prompts.numel()))
    heldout_prompts = shuffled[:n_heldout]
    heldout_pair = torch.isin(prompt_ids[better], heldout_prompts)
    train_pair = ~heldout_pair
    if not train_pair.any():
        raise ValueError(
            "no training pair: the training prompts need completions of at least two classes."
        )

    # 3. full-batch AdamW from weights 0; R_rm enters as a fixed offset
    weights = torch.zeros(features.shape[1], dtype=dtype, requires_grad=True)
    # One small tensor: the single-tensor AdamW path is the faster one here.
    optimizer = torch.optim.AdamW([weights], lr=lr, weight_decay=weight_decay, foreach=False)

    losses, zero_fractions, heldout_losses = [], [], []
    for _ in range(steps):
        optimizer.zero_grad()
        total_rewards = reward_scores + linear_rbr_reward(features, weights)  # (n,)
        pair_losses = rbr_hinge_loss(total_rewards, better, worse, margins)  # (n_pairs,)
        train_losses = pair_losses[train_pair]
        loss = train_losses.mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        zero_fractions.append((train_losses == 0).double().mean().item())
        heldout_losses.append(_mean_or_nan(pair_losses[heldout_pair].detach()))

    # 4. the held-out error rate: ideal completions against the rest of their prompt
    with torch.no_grad():
        fitted = reward_scores + linear_rbr_reward(features, weights)
        final_train_losses = rbr_hinge_loss(fitted, better, worse, margins)[train_pair]
        ideal_pair = heldout_pair & (class_ranks[better] == 0)
        errors = ideal_outranked(fitted, better[ideal_pair], worse[ideal_pair])
        errors_rm = ideal_outranked(reward_scores, better[ideal_pair], worse[ideal_pair])
    heldout_set = set(heldout_prompts.tolist())
    return RBRFitResult(
        weights=weights.detach().clone(),
        feature_names=None if feature_names is None else tuple(feature_names),
        loss=tuple(losses),
        zero_loss_fraction=tuple(zero_fractions),
        heldout_loss=tuple(heldout_losses),
        final_loss=final_train_losses.mean().item(),
        final_zero_loss_fraction=(final_train_losses == 0).double().mean().item(),
        heldout_error_rate=_mean_or_nan(errors),
        heldout_error_rate_reward_model=_mean_or_nan(errors_rm),
        train_prompts=tuple(sorted(p for p in prompts.tolist() if p not in heldout_set)),
        heldout_prompts=tuple(sorted(heldout_set)),
        n_train_pairs=int(train_pair.sum()),
        n_heldout_pairs=int(heldout_pair.sum()),
        n_heldout_ideal_pairs=int(ideal_pair.sum()),
    )


def _mean_or_nan(values: torch.Tensor) -> float:
    return values.double().mean().item() if values.numel() else math.nan
