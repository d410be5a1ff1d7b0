"""Population DPO on an enumerable world: which policy does pseudo-preference DPO reach?

MoCAN and PeCAN (docs/algorithms.md §4) relabel preference pairs with soft labels
``P(y ≻ y') = σ(s(y) − s(y'))`` and run DPO at β. In the population limit — every ordered pair of
responses of a prompt, drawn independently from ``π_ref``, with the soft label in place of a
sampled one — DPO's objective for prompt ``x`` over a tabular policy is::

    L_x(π) = Σ_{y ≠ y'} π_ref(y) π_ref(y') ℓ(β (u(y) − u(y')), σ(s(y) − s(y'))),
    ℓ(t, p) = −p log σ(t) − (1 − p) log σ(−t),          u = log π − log π_ref.

It is convex in the free logits, and every pair's term is minimised at ``β(u(y) − u(y')) =
s(y) − s(y')``; these conditions are consistent, so the minimiser is ``π ∝ π_ref exp(s/β)``.
:func:`population_dpo` minimises it numerically (Newton, float64) so that tests can check this
claim against :func:`saferl.core.dual.solve_exact`, and check that PeCAN's published labelling
(raw log-ratios as scores) lands on ``π ∝ π_ref exp(s/β²)`` instead.

Tractability: a prompt of the built-in world has 7240 responses, i.e. 52 million ordered pairs.
The fit is restricted to the ``support_size`` most likely reference responses of each prompt,
with ``π_ref`` renormalised on that support (:func:`restrict_to_support`); every comparison is then
made on the same restricted problem. Pairs with ``y = y'`` carry no information (``h = 0``) and
are left out. Prompts are independent and weighted equally.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from saferl.core.preference_losses import PreferenceLogps, dpo_loss

__all__ = ["restrict_to_support", "population_dpo", "population_dpo_loss"]

_DTYPE = torch.float64


def restrict_to_support(
    ref_logprobs: torch.Tensor, support_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``support_size`` most likely reference responses of each prompt, ``π_ref`` renormalised.

    Args:
        ref_logprobs: ``log π_ref(y|x)``, shape ``(num_prompts, num_responses)``; may be
            unnormalised per prompt; ``-inf`` marks responses off the support.
        support_size: responses kept per prompt; ``None`` keeps all of them.

    Returns:
        ``(indices, restricted_ref_logprobs)``, both shape ``(num_prompts, support_size)``:
        the kept responses' column indices in **ascending** order (so with ``support_size =
        num_responses`` the order is the input's), and their log-probabilities renormalised to
        sum to one per prompt, float64.
    """
    ref_logprobs = torch.as_tensor(ref_logprobs).detach().to(device="cpu", dtype=_DTYPE)
    if ref_logprobs.ndim != 2:
        raise ValueError(
            f"ref_logprobs must have shape (num_prompts, num_responses); found {tuple(ref_logprobs.shape)}"
        )
    if torch.isnan(ref_logprobs).any() or torch.isposinf(ref_logprobs).any():
        raise ValueError("ref_logprobs must be finite or -inf (off the support); found NaN or +inf")
    num_responses = ref_logprobs.shape[1]
    size = num_responses if support_size is None else int(support_size)
    if not 2 <= size <= num_responses:
        raise ValueError(
            f"support_size must be between 2 and num_responses={num_responses}; found {support_size!r}"
        )
    indices = ref_logprobs.topk(size, dim=1).indices.sort(dim=1).values  # (P, S)
    restricted = ref_logprobs.gather(1, indices)
    if torch.isneginf(restricted).any():
        prompt = int(torch.nonzero(torch.isneginf(restricted).any(1))[0])
        finite = int(torch.isfinite(ref_logprobs[prompt]).sum())
        raise ValueError(
            f"support_size={size} exceeds the reference's support: prompt {prompt} has only "
            f"{finite} responses with finite log-probability; lower support_size"
        )
    return indices, restricted - restricted.logsumexp(dim=1, keepdim=True)


def population_dpo(
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    beta: float,
    support_size: int | None = 64,
    max_iterations: int = 200,
    tolerance: float = 1e-11,
) -> torch.Tensor:
    """Minimise the population soft-label DPO objective over a tabular policy on a restricted support.

    The policy has one free logit per prompt and kept response; its log-probabilities are
    normalised on the support. Newton's method in float64 on the log-ratio ``v = log π − log π_ref``
    (the objective depends on ``v`` only through its differences, so the Newton system is solved
    with the constant direction fixed: ``(H + α 11ᵀ) d = −g``, Jacobi-scaled), with an Armijo
    backtracking line search per prompt, from ``π = π_ref``.

    Args:
        ref_logprobs: ``log π_ref(y|x)``, shape ``(num_prompts, num_responses)`` (see
            :func:`restrict_to_support`).
        scores: the labelling scores ``s(x, y)``, shape ``(num_prompts, num_responses)``; the soft
            label of the ordered pair ``(y, y')`` is ``σ(s(y) − s(y'))`` (no β inside σ). Only
            their values on the support are read, and they must be finite there.
        beta: DPO's KL coefficient β > 0.
        support_size: responses kept per prompt (the most likely under ``π_ref``); ``None`` keeps
            all (``num_responses²`` pairs per prompt: memory grows quadratically).
        max_iterations: Newton iterations at most.
        tolerance: stop when no logit moves by more than this in one Newton step.

    Returns:
        The fitted ``log π(y|x)`` on the support, shape ``(num_prompts, support_size)``, in the
        column order of ``restrict_to_support(ref_logprobs, support_size)[0]``; rows normalised.

    Raises:
        RuntimeError: Newton did not converge within ``max_iterations``.
    """
    if not beta > 0:
        raise ValueError(f"beta (DPO's KL coefficient) must be > 0; found {beta!r}")
    indices, log_ref = restrict_to_support(ref_logprobs, support_size)  # (P, S) each
    scores = torch.as_tensor(scores).detach().to(device="cpu", dtype=_DTYPE)
    if scores.shape != ref_logprobs.shape:
        raise ValueError(
            f"scores must have the shape of ref_logprobs {tuple(ref_logprobs.shape)}; found {tuple(scores.shape)}"
        )
    scores = scores.gather(1, indices)  # (P, S)
    if not torch.isfinite(scores).all():
        raise ValueError("scores must be finite on the kept support; found NaN or inf")
    num_prompts, size = log_ref.shape

    ref_probs = log_ref.exp()
    off_diagonal = 1.0 - torch.eye(size, dtype=_DTYPE)
    pair_weights = ref_probs[:, :, None] * ref_probs[:, None, :] * off_diagonal  # (P, S, S)
    labels = torch.sigmoid(scores[:, :, None] - scores[:, None, :])  # (P, S, S) P(y ≻ y')

    def objective(v: torch.Tensor) -> torch.Tensor:
        """``L_x(v)`` per prompt, shape ``(P,)``; ℓ(t, p) = softplus(−t) + (1 − p) t."""
        logits = beta * (v[:, :, None] - v[:, None, :])  # (P, S, S) βh
        losses = F.softplus(-logits) + (1.0 - labels) * logits
        return (pair_weights * losses).sum(dim=(1, 2))

    v = torch.zeros(num_prompts, size, dtype=_DTYPE)
    ones = torch.ones(size, size, dtype=_DTYPE)
    for _ in range(max_iterations):
        logits = beta * (v[:, :, None] - v[:, None, :])
        slope = torch.sigmoid(logits) - labels  # dℓ/dt, antisymmetric in (y, y')
        curvature = pair_weights * torch.sigmoid(logits) * torch.sigmoid(-logits)  # (P, S, S)
        # Ordered pairs (y, y') and (y', y) contribute equally: g_y = 2β Σ_{y'} w ℓ'.
        gradient = 2.0 * beta * (pair_weights * slope).sum(dim=2)  # (P, S)
        # H = 2β² (diag(Σ_{y'} W) − W), a weighted graph Laplacian (H·1 = 0).
        hessian = 2.0 * beta**2 * (torch.diag_embed(curvature.sum(dim=2)) - curvature)
        gauge = hessian.diagonal(dim1=1, dim2=2).mean(dim=1)[:, None, None] / size
        system = hessian + gauge * ones  # (P, S, S), positive definite
        scale = system.diagonal(dim1=1, dim2=2).rsqrt()  # Jacobi scaling, (P, S)
        scaled = system * scale[:, :, None] * scale[:, None, :]
        direction = -scale * torch.linalg.solve(scaled, gradient * scale)  # (P, S)

        # Armijo backtracking per prompt; a step whose predicted decrease is below the loss's
        # rounding error is taken in full (Newton converges quadratically there).
        current = objective(v)
        predicted = (gradient * direction).sum(dim=1)  # (P,) ≤ 0
        step = torch.ones(num_prompts, dtype=_DTYPE)
        tiny = -predicted <= 1e-15 * (1.0 + current.abs())
        for _ in range(60):
            accepted = tiny | (
                objective(v + step[:, None] * direction) <= current + 1e-4 * step * predicted
            )
            if accepted.all():
                break
            step = torch.where(accepted, step, 0.5 * step)
        moved = (step[:, None] * direction).abs().max()
        v = v + step[:, None] * direction
        if moved <= tolerance:
            return torch.log_softmax(log_ref + v, dim=1)
    raise RuntimeError(
        f"population_dpo: Newton did not converge in max_iterations={max_iterations} "
        f"(last step {moved.item():.3g} > tolerance {tolerance:g}); raise max_iterations"
    )


def population_dpo_loss(
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    policy_logprobs: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The population objective evaluated through the learner's own :func:`dpo_loss`.

    A cross-check of :func:`population_dpo`: every ordered pair ``y ≠ y'`` of each prompt as one
    :class:`PreferenceLogps` row (``y`` chosen, soft label ``σ(s(y) − s(y'))``), the per-pair
    losses weighted by ``π_ref(y) π_ref(y')``, summed over pairs and averaged over prompts.
    Differentiable in ``policy_logprobs``.

    Args:
        ref_logprobs: normalised ``log π_ref`` on an already restricted support, shape
            ``(num_prompts, support_size)`` (e.g. from :func:`restrict_to_support`).
        scores: shape ``(num_prompts, support_size)``.
        policy_logprobs: ``log π`` on the same support, shape ``(num_prompts, support_size)``.
        beta: DPO's β.

    Returns:
        A scalar tensor.
    """
    if not (ref_logprobs.shape == scores.shape == policy_logprobs.shape):
        raise ValueError(
            "ref_logprobs, scores and policy_logprobs must share the shape (num_prompts, support_size); "
            f"found {tuple(ref_logprobs.shape)}, {tuple(scores.shape)}, {tuple(policy_logprobs.shape)}"
        )
    num_prompts, size = ref_logprobs.shape
    first, second = torch.nonzero(~torch.eye(size, dtype=torch.bool), as_tuple=True)  # pairs y≠y'
    lengths = torch.ones(num_prompts * first.numel(), dtype=policy_logprobs.dtype)
    logps = PreferenceLogps(
        chosen_logps=policy_logprobs[:, first].reshape(-1),
        rejected_logps=policy_logprobs[:, second].reshape(-1),
        ref_chosen_logps=ref_logprobs[:, first].reshape(-1),
        ref_rejected_logps=ref_logprobs[:, second].reshape(-1),
        chosen_lengths=lengths,
        rejected_lengths=lengths,
        preference_prob=torch.sigmoid(scores[:, first] - scores[:, second]).reshape(-1),
    )
    weights = (ref_logprobs[:, first] + ref_logprobs[:, second]).exp().reshape(-1)
    return (weights * dpo_loss(logps, beta=beta)).sum() / num_prompts
