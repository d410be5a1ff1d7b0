"""The relabelling math of one-shot dualized alignment: MoCAN and PeCAN (docs/algorithms.md §1, §4).

Both methods turn the constrained problem into **one** unconstrained alignment by fixing the
multiplier at the dual optimum ``λ*`` before training:

1. solve the dual (§1) for ``λ*`` on reference samples (:func:`mocan_dual`);
2. score every response with the composite ``s = r − λ*·c`` (:func:`composite_score`);
3. relabel preference pairs with ``P(y_0 ≻ y_1) = σ(s(y_0) − s(y_1))`` — **no β inside σ**
   (:func:`pseudo_preference_prob`) — and run plain DPO with the dual's β. DPO's population
   optimum satisfies ``β(u(y_0) − u(y_1)) = s(y_0) − s(y_1)`` with ``u = log π/π_ref``, i.e.
   ``π ∝ π_ref exp(s/β) = π_λ*``.

MoCAN takes ``r`` and ``c`` from reward and cost models. PeCAN has preferences only: a DPO policy
``π_r`` (helpfulness) and ``π_g`` (safety) trained at β give implicit scores through their
log-ratios, ``r = β log(π_r/π_ref) + const(x)`` and ``g = β log(π_g/π_ref) + const(x)``
(:func:`pecan_scores`; the project's cost is ``c = −g``, converted with
:func:`saferl.core.conventions.cost_from_utility`). The ``const(x)`` cancels in ``π_λ``, in the
pseudo-preference probabilities and in a relative margin.

Departure from the published PeCAN code: it fed the raw log-ratios (no factor β) to the labels,
which makes DPO at β reach ``π ∝ π_ref exp(s/β²)`` instead of ``π_λ*``. The consistent labelling
(β inside the score) is the default here; the published one is ``consistent=False``.

Why DPO alone misses ``π_λ*`` on finite samples, and the anchor that fixes it
(:func:`sample_target_weights`): the pairs only fix log-ratio *differences* between the sampled
responses of a prompt, so the mass DPO leaves on the responses never sampled is free, and in
practice it grows (likelihood displacement). On the exact world with K = 256 reference samples
per prompt, which hold 99.7 % of ``π_λ*``'s mass, DPO run to convergence on every pair put up to
26 % of a prompt's mass outside the sample and ended at normalised Lagrangian gap 0.55. The
sample-target cross-entropy ``−Σ_{y∈S} q(y) log π(y|x)``, with ``q = π_λ(·|S)`` computed exactly
from the reference log-probs and the scores, is minimised by ``π_λ(·|S)`` itself, which also
minimises the DPO loss on those pairs: adding it leaves the target unchanged and pins the mass
outside the sample (gap 0.003 in the same experiment).

Pure functions of tensors and floats; float64 is recommended for the dual.
"""

from __future__ import annotations

import torch

from saferl.core.conventions import limit_from_margin
from saferl.core.dual import DualSolution, solve_from_samples

__all__ = [
    "composite_score",
    "pseudo_preference_prob",
    "pecan_scores",
    "mocan_dual",
    "sample_target_weights",
]


def composite_score(
    rewards: torch.Tensor, costs: torch.Tensor, multiplier: torch.Tensor | float
) -> torch.Tensor:
    """The Lagrangian score ``s = r − λ·c`` that the unconstrained stage maximises (§4).

    The constant ``λ·d`` of the Lagrangian is left out: it cancels in every pairwise label and in
    ``π_λ``.

    Args:
        rewards: ``r(x, y)``, shape ``(N, K)`` (any leading shape ``(...)`` works).
        costs: ``c(x, y)``, shape ``(N, K)`` for one constraint or ``(N, K, m)`` for ``m``.
        multiplier: ``λ ≥ 0``, a float or shape ``(m,)`` (``(1,)`` for ``(N, K)`` costs); a float
            or a one-element tensor applies the same λ to every constraint.

    Returns:
        ``s``, shape ``(N, K)``, in the promoted dtype of the inputs.

    Example (worked): ``r = [1.0, 0.5]``, ``c = [0.4, −0.2]``, ``λ = 2`` → ``s = [0.2, 0.9]``.
    """
    if costs.shape == rewards.shape:
        costs = costs.unsqueeze(-1)  # (N, K) → (N, K, 1)
    if costs.ndim != rewards.ndim + 1 or costs.shape[:-1] != rewards.shape:
        raise ValueError(
            f"costs must have shape {tuple(rewards.shape)} or {tuple(rewards.shape)} + (m,) to "
            f"match rewards; found {tuple(costs.shape)}"
        )
    m = costs.shape[-1]
    score_dtype = torch.promote_types(rewards.dtype, costs.dtype)
    if not isinstance(multiplier, torch.Tensor):
        # A Python float takes the scores' dtype (as_tensor would round it through float32).
        multiplier = torch.tensor(float(multiplier), dtype=score_dtype)
    multiplier = multiplier.to(costs.device).reshape(-1)
    if multiplier.numel() == 1:
        multiplier = multiplier.expand(m)
    if multiplier.shape != (m,):
        raise ValueError(
            f"multiplier must be a float or have shape ({m},) for costs with m={m} constraints; "
            f"found shape {tuple(multiplier.shape)}"
        )
    if bool((multiplier < 0).any()):
        raise ValueError(f"multiplier must be >= 0; found {multiplier.tolist()}")
    dtype = torch.promote_types(score_dtype, multiplier.dtype)
    penalty = costs.to(dtype) @ multiplier.to(dtype)  # (N, K, m) @ (m,) → (N, K)
    return rewards.to(dtype) - penalty


def pseudo_preference_prob(score_0: torch.Tensor, score_1: torch.Tensor) -> torch.Tensor:
    """MoCAN's soft label: the probability that **response 0** is preferred, ``σ(s_0 − s_1)``.

    docs/algorithms.md §4 writes the sampled label as ``z ~ Bernoulli(σ(s(y_1) − s(y_0)))`` with
    ``z = 1`` meaning "response 1 wins"; this function returns ``1 −`` that probability, i.e.
    ``P(y_0 ≻ y_1)``, which is what :class:`saferl.core.preference_losses.PreferenceLogps`
    expects as ``preference_prob`` when ``y_0`` is placed as "chosen". There is **no β inside σ**:
    DPO's own β turns the labels into the target ``π_λ*`` (see the module docstring).

    Args:
        score_0: ``s(x, y_0)``, shape ``(batch,)`` (any shape broadcasting with ``score_1``).
        score_1: ``s(x, y_1)``, shape ``(batch,)``.

    Returns:
        ``P(y_0 ≻ y_1)``, shape ``(batch,)``, in ``(0, 1)`` (exactly 0 or 1 only when the score gap
        overflows the dtype).

    Example (worked): ``s_0 = 0.9``, ``s_1 = 0.2`` → ``σ(0.7) = 0.668187772168166``.
    """
    return torch.sigmoid(score_0 - score_1)


def pecan_scores(
    policy_logratio: torch.Tensor, beta: float, consistent: bool = True
) -> torch.Tensor:
    """PeCAN's implicit score from a DPO policy's log-ratio ``log(π/π_ref)`` (§4).

    A DPO policy trained at β on labels ``σ(r(y_0) − r(y_1))`` has
    ``β log(π/π_ref) = r + const(x)``, so:

    * ``consistent=True`` (default): ``score = β · log(π/π_ref)``, in the units of ``r``. Used
      for both the dual and the relabelling, DPO at β then targets ``π_λ* ∝ π_ref exp(s/β)``.
    * ``consistent=False`` (the published PeCAN code): ``score = log(π/π_ref)``, i.e. ``r/β``.
      Relabelling with these and running DPO at β targets ``π ∝ π_ref exp(s/β²)`` — a
      different, more sharply tilted policy than ``π_λ*`` whenever ``β ≠ 1``.

    For a safety policy the result is a utility ``g`` (higher is safer); pass it through
    :func:`saferl.core.conventions.cost_from_utility` to get the project's cost ``c = −g``.

    Args:
        policy_logratio: ``log π(y|x) − log π_ref(y|x)`` (masked sums over response tokens),
            shape ``(N, K)`` (any shape).
        beta: the KL coefficient the DPO policy was trained with, ``> 0``.
        consistent: whether to multiply by β (see above).

    Returns:
        The implicit scores, same shape as ``policy_logratio``.

    Example (worked): log-ratio ``[2.0, −1.0]``, β = 0.1 → consistent ``[0.2, −0.1]``,
    published ``[2.0, −1.0]``.
    """
    if not beta > 0:
        raise ValueError(f"beta (the DPO policy's KL coefficient) must be > 0; found {beta!r}")
    if consistent:
        return beta * policy_logratio
    return policy_logratio.clone()


def mocan_dual(
    rewards: torch.Tensor,
    costs: torch.Tensor,
    beta: float,
    cost_limit: float | torch.Tensor | list[float] | None = None,
    margin: float | torch.Tensor | list[float] | None = None,
) -> DualSolution:
    """MoCAN step 2: ``λ*`` of the plug-in dual over K reference samples per prompt (§1, §4).

    Exactly one of ``cost_limit`` (absolute, ``E c_j ≤ d_j``) and ``margin`` (relative: be safer
    than the reference by ``b_j``) must be given. A margin is converted with
    :func:`saferl.core.conventions.limit_from_margin`, ``d = E_ref c − b``, where ``E_ref c`` is
    the samples' plain mean over prompts and samples (the samples are drawn from ``π_ref``).

    Args:
        rewards: ``r(x_i, y_ik)`` for ``y_ik ~ π_ref(·|x_i)``, shape ``(N, K)``.
        costs: shape ``(N, K)`` or ``(N, K, m)``.
        beta: KL coefficient β of the alignment stage, ``> 0`` (β stays inside the exponent).
        cost_limit: ``d``, a float or shape ``(m,)``.
        margin: ``b``, a float or shape ``(m,)``.

    Returns:
        The :class:`saferl.core.dual.DualSolution` of :func:`saferl.core.dual.solve_from_samples`
        (``multiplier`` shape ``(m,)``; its ``cost_limit`` is the absolute limit used).

    Raises:
        ValueError: both or neither of ``cost_limit`` and ``margin`` given.
        saferl.core.dual.InfeasibleConstraintError: the limit is below what the samples reach.
    """
    if (cost_limit is None) == (margin is None):
        given = "both were given" if cost_limit is not None else "neither was given"
        raise ValueError(
            "mocan_dual needs exactly one of cost_limit (absolute limit d on E[c]) and margin "
            f"(relative improvement b over the reference, d = E_ref[c] − b); {given}"
        )
    if margin is not None:
        costs64 = torch.as_tensor(costs).detach().to(device="cpu", dtype=torch.float64)
        if costs64.ndim == 2:
            reference_expected_cost = costs64.mean().reshape(1)  # (1,)
        elif costs64.ndim == 3:
            reference_expected_cost = costs64.mean(dim=(0, 1))  # (N, K, m) → (m,)
        else:
            raise ValueError(
                f"costs must have shape (N, K) or (N, K, m); found {tuple(costs64.shape)}"
            )
        if not isinstance(margin, torch.Tensor):
            margin = torch.as_tensor(margin, dtype=torch.float64)
        cost_limit = limit_from_margin(reference_expected_cost, margin)
    return solve_from_samples(rewards, costs, beta, cost_limit)


def sample_target_weights(
    prompt_index: torch.Tensor,
    response_index: torch.Tensor,
    reference_logps: torch.Tensor,
    scores: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-row weights ``w`` of the sample-target cross-entropy (see the module docstring).

    With ``S_x`` the distinct responses among prompt ``x``'s rows, ``n(x, y)`` the rows holding
    ``y`` and ``P`` the number of prompts, the target on the sample is
    ``q(y|x) = π_ref(y|x) e^{s(x,y)/β} / Σ_{y'∈S_x} π_ref(y'|x) e^{s(x,y')/β} = π_λ(y | x, S_x)``
    and the row weight is ``w = q(y|x) / (n(x, y) · P)``, so that

        ``Σ_rows w · (−log π(y|x)) = (1/P) Σ_x Σ_{y∈S_x} q(y|x) · (−log π(y|x))``,

    the mean over prompts of the cross-entropy from ``π_λ(·|x, S_x)`` to ``π``. Its minimiser over
    ``π`` is ``π_λ(·|x, S_x)`` (no mass outside the sample), which is also a minimiser of DPO on
    any pairs of ``S_x`` labelled ``σ(s_0 − s_1)``.

    Args:
        prompt_index: ``(R,)`` int, the prompt of each row.
        response_index: ``(R,)`` int, equal on two rows of the same prompt exactly when they hold
            the same response (e.g. ``torch.unique(input_ids, dim=0, return_inverse=True)``).
        reference_logps: ``(R,)`` ``log π_ref(y|x)`` (summed over the response's tokens).
        scores: ``(R,)`` the composite score ``s(x, y)``, e.g. ``r − λ·c``.
        beta: the KL weight β > 0.

    Returns:
        ``(R,)`` float64 weights, ≥ 0, summing to 1.

    Example (worked, one prompt, β = 1): rows ``y_a, y_a, y_b`` with ``log π_ref = log 0.5,
    log 0.5, log 0.25`` and ``s = 0, 0, log 2``: ``q(y_a) = 0.5 / (0.5 + 0.5) = 0.5``, ``q(y_b) =
    0.5``, so ``w = 0.25, 0.25, 0.5``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0; found {beta}")
    shapes = {tuple(t.shape) for t in (prompt_index, response_index, reference_logps, scores)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"prompt_index, response_index, reference_logps and scores must be one (R,) shape each; "
                         f"found {[tuple(t.shape) for t in (prompt_index, response_index, reference_logps, scores)]}")
    keys = torch.stack([prompt_index.long(), response_index.long()], dim=1)
    distinct, row_to_distinct, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
    logits = (reference_logps.double() + scores.double() / beta)
    # One logit per distinct (prompt, response): the rows' mean (equal up to rounding).
    distinct_logits = torch.zeros(len(distinct), dtype=torch.float64).index_add_(0, row_to_distinct, logits)
    distinct_logits = distinct_logits / counts
    # A softmax over each prompt's distinct responses (its max subtracted first, for stability).
    prompts, distinct_prompt = torch.unique(distinct[:, 0], return_inverse=True)
    prompt_max = torch.full((len(prompts),), -torch.inf, dtype=torch.float64).scatter_reduce(
        0, distinct_prompt, distinct_logits, "amax")
    unnormalised = torch.exp(distinct_logits - prompt_max[distinct_prompt])
    totals = torch.zeros(len(prompts), dtype=torch.float64).index_add_(0, distinct_prompt, unnormalised)
    q = unnormalised / totals[distinct_prompt]
    return q[row_to_distinct] / counts[row_to_distinct] / len(prompts)
