"""Offline preference losses (docs/algorithms.md §5): DPO and its relatives, one pure function each.

Notation (docs/algorithms.md §0, §5): for a prompt ``x`` with a chosen response ``y_w`` and a rejected
response ``y_l``,

* ``log π(y|x)`` is the **masked sum** of the response-token log-probs (length-averaged only where
  a loss says so, using ``chosen_lengths`` / ``rejected_lengths``);
* ``u(y) = log π_θ(y|x) − log π_ref(y|x)`` is the implicit log-ratio, ``u_w = u(y_w)``,
  ``u_l = u(y_l)``;
* ``h = u_w − u_l`` is the implicit reward margin (in units of ``1/β``).

Every loss has the signature ``(logps: PreferenceLogps, *, <hyper-parameters>) -> Tensor`` and
returns the **per-example** loss of shape ``(batch,)``; the learner chooses the reduction.

Soft labels. ``PreferenceLogps.preference_prob`` ``p`` is the probability that "chosen" really is
preferred (``None`` = hard label 1). Losses defined by swapping roles (dpo, cdpo, robust_dpo,
hinge, ipo, nca, sppo, orpo, simpo) take the expectation over the label::

    loss = p · L(pair) + (1 − p) · L(pair.swapped())

so for DPO ``loss = −p log σ(βh) − (1 − p) log σ(−βh)``: a hard label with label smoothing ``ε``
is the same loss as ``p = 1 − ε``. This is the lower-variance form of MoCAN/PeCAN relabelling
(docs/algorithms.md §4). KTO and BFPO have no such symmetry and reject soft labels.

Departures from the published implementations:

* KTO's default ``z₀`` is the detached, non-negative mean of ``u`` over this batch's chosen and
  rejected responses. The paper estimates it from *mismatched* prompt/response pairs and
  all-reduces it across ranks; compute that outside and pass it as ``z0``.
* ORPO computes ``log(1 − p)`` with the two-branch ``log1mexp`` (``log(−expm1(a))`` near 0,
  ``log1p(−exp(a))`` elsewhere) instead of ``log1p(−exp(a))`` alone, which loses all precision
  when the length-averaged log-prob ``a`` is close to 0.
* SPPO with a soft label ``p`` uses the swap mixture above. Its minimiser is
  ``u_w = (p − ½)/β = −u_l``, the published soft-SPPO target; the two losses differ by the
  constant ``p(1 − p)/β²``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "PreferenceLogps",
    "PreferenceLossSpec",
    "PREFERENCE_LOSSES",
    "dpo_loss",
    "cdpo_loss",
    "robust_dpo_loss",
    "hinge_loss",
    "ipo_loss",
    "nca_loss",
    "sppo_loss",
    "kto_loss",
    "orpo_loss",
    "simpo_loss",
    "bfpo_loss",
    "get_preference_loss",
    "preference_loss",
    "implicit_reward_accuracy",
    "implicit_reward_margin",
]


@dataclass(frozen=True)
class PreferenceLogps:
    """The typed input of every preference loss: one batch of (chosen, rejected) pairs.

    All tensors have shape ``(batch,)``.

    Attributes:
        chosen_logps: ``log π_θ(y_w|x)``, masked sum over the chosen response's tokens.
        rejected_logps: ``log π_θ(y_l|x)``, masked sum over the rejected response's tokens.
        ref_chosen_logps: ``log π_ref(y_w|x)``; ``None`` when there is no reference model
            (only orpo and simpo accept that).
        ref_rejected_logps: ``log π_ref(y_l|x)``; ``None`` as above.
        chosen_lengths: ``|y_w|``, number of response tokens (float or int).
        rejected_lengths: ``|y_l|``, number of response tokens (float or int).
        chosen_is_safe: safety label of ``y_w`` (0/1 or bool); used by BFPO only.
        rejected_is_safe: safety label of ``y_l`` (0/1 or bool); used by BFPO only.
        preference_prob: soft label ``p = P(y_w ≻ y_l)`` in ``[0, 1]``; ``None`` means the hard
            label ``p = 1``. Values are not range-checked (that would synchronise a GPU); the
            data layer validates them.
    """

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    ref_chosen_logps: torch.Tensor | None
    ref_rejected_logps: torch.Tensor | None
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    chosen_is_safe: torch.Tensor | None = None
    rejected_is_safe: torch.Tensor | None = None
    preference_prob: torch.Tensor | None = None

    def swapped(self) -> PreferenceLogps:
        """The same preference with the chosen and rejected roles exchanged.

        Every chosen/rejected field pair is exchanged and the soft label maps ``p → 1 − p``. A
        hard label (``preference_prob=None``, i.e. ``p = 1``) becomes the explicit soft label
        ``0`` (a ``(batch,)`` tensor of zeros in ``chosen_logps``'s dtype), so the swapped record
        still says the original chosen response is the preferred one, and every loss that
        accepts soft labels gives the same value on ``pair`` and ``pair.swapped()``.

        Returns:
            A new ``PreferenceLogps``; tensors of shape ``(batch,)``.
        """
        if self.preference_prob is None:
            flipped = torch.zeros_like(self.chosen_logps)
        else:
            p = self.preference_prob
            if not p.is_floating_point():
                p = p.to(self.chosen_logps.dtype)
            flipped = 1 - p
        return PreferenceLogps(
            chosen_logps=self.rejected_logps,
            rejected_logps=self.chosen_logps,
            ref_chosen_logps=self.ref_rejected_logps,
            ref_rejected_logps=self.ref_chosen_logps,
            chosen_lengths=self.rejected_lengths,
            rejected_lengths=self.chosen_lengths,
            chosen_is_safe=self.rejected_is_safe,
            rejected_is_safe=self.chosen_is_safe,
            preference_prob=flipped,
        )


# ---------------------------------------------------------------------------------------------
# Shared helpers (validation, log-ratios, the soft-label mixture)
# ---------------------------------------------------------------------------------------------


def _log_ratios(logps: PreferenceLogps, loss_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u_w, u_l)``, each ``(batch,)``; raises if the reference log-probs are missing."""
    if logps.ref_chosen_logps is None or logps.ref_rejected_logps is None:
        missing = [
            name
            for name, value in (
                ("ref_chosen_logps", logps.ref_chosen_logps),
                ("ref_rejected_logps", logps.ref_rejected_logps),
            )
            if value is None
        ]
        raise ValueError(
            f"{loss_name} needs reference log-probs, but PreferenceLogps.{' and '.join(missing)} "
            "is None: compute them with the reference model, or use a reference-free loss "
            "(orpo, simpo)."
        )
    u_w = logps.chosen_logps - logps.ref_chosen_logps
    u_l = logps.rejected_logps - logps.ref_rejected_logps
    return u_w, u_l


def _require_positive(value: float, name: str, loss_name: str) -> None:
    if not value > 0:
        raise ValueError(f"{loss_name}: {name} must be > 0, got {value!r}.")


def _require_hard_labels(logps: PreferenceLogps, loss_name: str) -> None:
    if logps.preference_prob is not None:
        raise ValueError(
            f"{loss_name} does not accept soft labels, but PreferenceLogps.preference_prob is "
            "set: pass preference_prob=None (hard labels), or use a loss that accepts soft "
            "labels (dpo, cdpo, robust_dpo, hinge, ipo, nca, safe_nca, sppo, orpo, simpo)."
        )


def _mix_soft_label(
    logps: PreferenceLogps, pair_loss: Callable[[PreferenceLogps], torch.Tensor]
) -> torch.Tensor:
    """``p · L(pair) + (1 − p) · L(pair.swapped())``, or ``L(pair)`` for a hard label.

    ``pair_loss`` must ignore ``preference_prob``; it maps a ``PreferenceLogps`` to ``(batch,)``.
    """
    loss = pair_loss(logps)
    if logps.preference_prob is None:
        return loss
    p = logps.preference_prob.to(loss.dtype)
    return p * loss + (1 - p) * pair_loss(logps.swapped())


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """``log(1 − exp(a))`` for ``a < 0``, accurate everywhere (Mächler 2012).

    ``log(−expm1(a))`` for ``a > −ln 2``, ``log1p(−exp(a))`` otherwise. Each branch only sees
    inputs from its own range so the unused branch cannot put a NaN into the gradient.
    """
    cut = torch.full_like(a, -math.log(2.0))
    near_zero = a > cut
    a_near = torch.where(near_zero, a, cut)
    a_far = torch.where(near_zero, cut, a)
    return torch.where(near_zero, torch.log(-torch.expm1(a_near)), torch.log1p(-torch.exp(a_far)))


# ---------------------------------------------------------------------------------------------
# The losses
# ---------------------------------------------------------------------------------------------


def dpo_loss(
    logps: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023), and cDPO with label smoothing ``ε``.

    ``L = −(1 − ε) log σ(βh) − ε log σ(−βh)`` with ``h = u_w − u_l``. With a soft label ``p``
    the loss is ``p · L(h) + (1 − p) · L(−h)``; a hard label with ``ε`` equals ``p = 1 − ε``.

    Args:
        logps: the batch; needs ``ref_chosen_logps`` and ``ref_rejected_logps``. Tensors
            ``(batch,)``.
        beta: ``β > 0``, the KL coefficient.
        label_smoothing: ``ε ∈ [0, 1]``, the assumed probability that a label is flipped.

    Returns:
        Per-example loss, shape ``(batch,)``.
    """
    _require_positive(beta, "beta", "dpo_loss")

    def pair_loss(pair: PreferenceLogps) -> torch.Tensor:
        u_w, u_l = _log_ratios(pair, "dpo_loss")
        logits = beta * (u_w - u_l)  # βh, (batch,)
        return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(
            -logits
        )

    return _mix_soft_label(logps, pair_loss)


def cdpo_loss(
    logps: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.1
) -> torch.Tensor:
    """Conservative DPO: ``dpo_loss`` with label smoothing ``ε = 0.1`` by default.

    ``L = −(1 − ε) log σ(βh) − ε log σ(−βh)``.

    Args:
        logps: the batch; needs reference log-probs. Tensors ``(batch,)``.
        beta: ``β > 0``.
        label_smoothing: ``ε ∈ [0, 1]``.

    Returns:
        Per-example loss, shape ``(batch,)``.
    """
    return dpo_loss(logps, beta=beta, label_smoothing=label_smoothing)


def robust_dpo_loss(
    logps: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Robust DPO (rDPO, Chowdhury et al. 2024): an unbiased loss under label-flip rate ``ε``.

    ``L = [−(1 − ε) log σ(βh) + ε log σ(−βh)] / (1 − 2ε)``. It can be negative. Soft labels mix
    ``L(h)`` and ``L(−h)`` as in the module docstring.

    Args:
        logps: the batch; needs reference log-probs. Tensors ``(batch,)``.
        beta: ``β > 0``.
        label_smoothing: ``ε ∈ [0, ½)``, the label-flip rate.

    Returns:
        Per-example loss, shape ``(batch,)``.
    """
    _require_positive(beta, "beta", "robust_dpo_loss")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(
            f"robust_dpo_loss: label_smoothing must be in [0, 0.5), got {label_smoothing!r} "
            "(the loss divides by 1 − 2ε)."
        )

    def pair_loss(pair: PreferenceLogps) -> torch.Tensor:
        u_w, u_l = _log_ratios(pair, "robust_dpo_loss")
        logits = beta * (u_w - u_l)  # βh, (batch,)
        return (
            -(1 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)
        ) / (1 - 2 * label_smoothing)

    return _mix_soft_label(logps, pair_loss)


def hinge_loss(logps: PreferenceLogps, *, beta: float = 0.1) -> torch.Tensor:
    """Hinge loss of SLiC (Zhao et al. 2023) on the implicit reward: ``L = max(0, 1 − βh)``.

    Args:
        logps: the batch; needs reference log-probs. Tensors ``(batch,)``.
        beta: ``β > 0``; ``1/β`` is the margin in ``h``.

    Returns:
        Per-example loss, shape ``(batch,)``.
    """
    _require_positive(beta, "beta", "hinge_loss")

    def pair_loss(pair: PreferenceLogps) -> torch.Tensor:
        u_w, u_l = _log_ratios(pair, "hinge_loss")
        return torch.relu(1 - beta * (u_w - u_l))

    return _mix_soft_label(logps, pair_loss)


def ipo_loss(logps: PreferenceLogps, *, beta: float = 0.1) -> torch.Tensor:
    """IPO (Azar et al. 2024): ``L = (h − 1/(2β))²``.

    ``h`` uses summed log-probs (docs/algorithms.md §0); some implementations length-average them.
    With a soft label ``p`` the mixture equals ``(h − (2p − 1)/(2β))² + p(1 − p)/β²``.

    Args:
        logps: the batch; needs reference log-probs. Tensors ``(batch,)``.
        beta: ``β > 0`` (the paper's ``τ``).

    Returns:
        Per-example loss, shape ``(batch,)``.
    """
    _require_positive(beta, "beta", "ipo_loss")

    def pair_loss(pair: PreferenceLogps) -> torch.Tensor:
        u_w, u_l = _log_ratios(pair, "ipo_loss")
        return (u_w - u_l - 1 / (2 * beta)) ** 2

    return _mix_soft_label(logps, pair_loss)


def nca_loss(logps: PreferenceLogps, *, beta: float = 0.1) -> torch.Tensor:
    """Pairwise NCA (Chen et al. 2024, noise-contrastive alignment).

    ``L = −log σ(βu_w) − ½ log σ(−βu_w) − ½ log σ(−βu_l)``.

    Unlike DPO it depends on ``u_w`` and ``u_l`` separately, not only on ``h``: it always pushes
    ``u_l`` down, and pushes ``u_w`` towards its optimum ``βu_w = ln 2`` (so the chosen
    likelihood does not fall with the rejected one).

    **Safe-NCA** (registry name ``"safe_nca"``) is this same function; what makes it Safe-NCA is
    the data: pairs with a safe chosen response and an unsafe rejected one (docs/algorithms.md §5).

    Args:
        logps: the batch; needs reference log-probs. Tensors ``(batch,)``.
        beta: ``β > 0``.

    Returns:
        Per-example loss, shape ``(batch,)``.
    """
    _require_positive(beta, "beta", "nca_loss")

    def pair_loss(pair: PreferenceLogps) -> torch.Tensor:
        u_w, u_l = _log_ratios(pair, "nca_loss")
        return (
            -F.logsigmoid(beta * u_w)
            - 0.5 * F.logsigmoid(-beta * u_w)
            - 0.5 * F.logsigmoid(-beta * u_l)
        )

    return _mix_soft_label(logps, pair_loss)


def sppo_loss(logps: PreferenceLogps, *, beta: float = 0.1) -> torch.Tensor:
    """SPPO, hard-label form (Wu et al. 2024): ``L = (u_w − 1/(2β))² + (u_l + 1/(2β))²``.

    ``1/β`` is the paper's step size ``η``. With a soft label ``p`` the swap mixture equals
    ``(u_w − (2p − 1)/(2β))² + (u_l + (2p − 1)/(2β))² + 2p(1 − p)/β²``: the published soft-SPPO
    targets ``±(p − ½)/β`` plus a constant.

    Args:
        logps: the batch; needs reference log-probs (``π_ref`` is the previous iterate ``π_t``).
            Tensors ``(batch,)``.
        beta: ``β > 0``.

    Returns:
        Per-example loss, shape ``(batch,)``.
    """
    _require_positive(beta, "beta", "sppo_loss")

    def pair_loss(pair: PreferenceLogps) -> torch.Tensor:
        u_w, u_l = _log_ratios(pair, "sppo_loss")
        target = 1 / (2 * beta)
        return (u_w - target) ** 2 + (u_l + target) ** 2

    return _mix_soft_label(logps, pair_loss)


def kto_loss(
    logps: PreferenceLogps,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    z0: torch.Tensor | None = None,
) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024) on paired data: chosen = desirable, rejected = undesirable.

    ``L = λ_D (1 − σ(β(u_w − z₀))) + λ_U (1 − σ(β(z₀ − u_l)))``.

    ``z₀`` is a detached, non-negative KL estimate. Default:
    ``z₀ = max(0, mean(concat(u_w, u_l))).detach()`` over this batch (see the module docstring
    for how this departs from the paper's mismatched-pair estimate). Hard labels only.

    Args:
        logps: the batch; needs reference log-probs; ``preference_prob`` must be ``None``.
            Tensors ``(batch,)``.
        beta: ``β > 0``.
        desirable_weight: ``λ_D ≥ 0``.
        undesirable_weight: ``λ_U ≥ 0``.
        z0: the reference point, shape ``()`` or ``(batch,)``; used as given (detached).

    Returns:
        Per-example (per-pair) loss, shape ``(batch,)``.
    """
    _require_positive(beta, "beta", "kto_loss")
    _require_hard_labels(logps, "kto_loss")
    u_w, u_l = _log_ratios(logps, "kto_loss")
    if z0 is None:
        z0 = torch.cat([u_w, u_l]).mean().clamp(min=0)
    z0 = z0.detach().to(u_w.dtype)
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (u_w - z0)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - u_l)))
    return desirable + undesirable


def orpo_loss(logps: PreferenceLogps, *, odds_ratio_weight: float = 0.1) -> torch.Tensor:
    """ORPO (Hong et al. 2024), reference-free.

    With length-averaged log-probs ``a(y) = log π_θ(y|x) / |y|`` (so ``p = exp(a)``),
    ``log odds(y) = a − log(1 − exp(a))``, and

    ``L = −a(y_w) − λ log σ(log odds(y_w) − log odds(y_l))``.

    ``a`` must be ``< 0``; an exactly certain response (``a = 0``) has infinite odds.

    Args:
        logps: the batch; reference log-probs are ignored. Tensors ``(batch,)``.
        odds_ratio_weight: ``λ ≥ 0``, weight of the odds-ratio term.

    Returns:
        Per-example loss, shape ``(batch,)``.
    """

    def pair_loss(pair: PreferenceLogps) -> torch.Tensor:
        dtype = pair.chosen_logps.dtype
        avg_w = pair.chosen_logps / pair.chosen_lengths.to(dtype)  # a(y_w), (batch,)
        avg_l = pair.rejected_logps / pair.rejected_lengths.to(dtype)  # a(y_l), (batch,)
        log_odds_ratio = (avg_w - _log1mexp(avg_w)) - (avg_l - _log1mexp(avg_l))
        return -avg_w - odds_ratio_weight * F.logsigmoid(log_odds_ratio)

    return _mix_soft_label(logps, pair_loss)


def simpo_loss(logps: PreferenceLogps, *, beta: float = 2.0, gamma: float = 0.5) -> torch.Tensor:
    """SimPO (Meng et al. 2024), reference-free and length-normalised.

    ``L = −log σ((β/|y_w|) log π_θ(y_w|x) − (β/|y_l|) log π_θ(y_l|x) − γ)``.

    Args:
        logps: the batch; reference log-probs are ignored. Tensors ``(batch,)``.
        beta: ``β > 0``.
        gamma: ``γ``, the target reward margin (not divided by ``β``).

    Returns:
        Per-example loss, shape ``(batch,)``.
    """
    _require_positive(beta, "beta", "simpo_loss")

    def pair_loss(pair: PreferenceLogps) -> torch.Tensor:
        dtype = pair.chosen_logps.dtype
        reward_w = beta * pair.chosen_logps / pair.chosen_lengths.to(dtype)  # (batch,)
        reward_l = beta * pair.rejected_logps / pair.rejected_lengths.to(dtype)  # (batch,)
        return -F.logsigmoid(reward_w - reward_l - gamma)

    return _mix_soft_label(logps, pair_loss)


def bfpo_loss(
    logps: PreferenceLogps, *, tau: float = 0.01, b1: float = 3.0, alpha: float = 0.5
) -> torch.Tensor:
    """BFPO (Zhang et al. 2025, bi-factorial preference optimisation).

    ``y_w`` is the *more helpful* response; ``s_w, s_l ∈ {0, 1}`` are the safety labels of the
    more and less helpful responses (``chosen_is_safe``, ``rejected_is_safe``).

    ``g = B1·B3·s_w − B3·s_l − α`` with ``B3 = 1/(B1 − 1)``, ``L = (h − g/τ)²``.

    With the defaults the targets ``g/τ`` are +100 (safe, unsafe), +50 (safe, safe), −50
    (unsafe, unsafe), −100 (unsafe, safe); on (safe, safe) pairs BFPO is IPO with ``β = τ``.
    Hard labels only.

    Args:
        logps: the batch; needs reference log-probs, ``chosen_is_safe`` and
            ``rejected_is_safe``; ``preference_prob`` must be ``None``. Tensors ``(batch,)``.
        tau: ``τ > 0``.
        b1: ``B1 ≠ 1``.
        alpha: ``α``.

    Returns:
        Per-example loss, shape ``(batch,)``.
    """
    _require_positive(tau, "tau", "bfpo_loss")
    if b1 == 1:
        raise ValueError("bfpo_loss: b1 must differ from 1 (B3 = 1/(B1 − 1)).")
    if logps.chosen_is_safe is None or logps.rejected_is_safe is None:
        raise ValueError(
            "bfpo_loss needs safety labels, but PreferenceLogps.chosen_is_safe or "
            "rejected_is_safe is None: map the data's is_response_*_safe fields onto them."
        )
    _require_hard_labels(logps, "bfpo_loss")
    u_w, u_l = _log_ratios(logps, "bfpo_loss")
    s_w = logps.chosen_is_safe.to(u_w.dtype)
    s_l = logps.rejected_is_safe.to(u_w.dtype)
    b3 = 1 / (b1 - 1)
    g = b1 * b3 * s_w - b3 * s_l - alpha  # (batch,)
    return (u_w - u_l - g / tau) ** 2


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceLossSpec:
    """One registered preference loss and what it needs from the data.

    Attributes:
        name: registry name, e.g. ``"dpo"``.
        fn: the loss, ``fn(logps, **hparams) -> (batch,)``.
        needs_reference: it raises ``ValueError`` without ``ref_*_logps``.
        uses_safety_labels: it reads ``chosen_is_safe`` / ``rejected_is_safe``.
        accepts_soft_labels: it accepts ``preference_prob``.
        defaults: the keyword hyper-parameters of ``fn`` and their defaults (read-only mapping,
            read from ``fn``'s signature).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    needs_reference: bool
    uses_safety_labels: bool
    accepts_soft_labels: bool
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)


def _spec(
    name: str,
    fn: Callable[..., torch.Tensor],
    *,
    needs_reference: bool = True,
    uses_safety_labels: bool = False,
    accepts_soft_labels: bool = True,
) -> PreferenceLossSpec:
    defaults = {
        param.name: param.default
        for param in inspect.signature(fn).parameters.values()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }
    return PreferenceLossSpec(
        name=name,
        fn=fn,
        needs_reference=needs_reference,
        uses_safety_labels=uses_safety_labels,
        accepts_soft_labels=accepts_soft_labels,
        defaults=MappingProxyType(defaults),
    )


PREFERENCE_LOSSES: dict[str, PreferenceLossSpec] = {
    spec.name: spec
    for spec in (
        _spec("dpo", dpo_loss),
        _spec("cdpo", cdpo_loss),
        _spec("robust_dpo", robust_dpo_loss),
        _spec("hinge", hinge_loss),
        _spec("ipo", ipo_loss),
        _spec("nca", nca_loss),
        # Safe-NCA is the NCA loss; the difference is the data (safe chosen, unsafe rejected).
        _spec("safe_nca", nca_loss),
        _spec("sppo", sppo_loss),
        _spec("kto", kto_loss, accepts_soft_labels=False),
        _spec("orpo", orpo_loss, needs_reference=False),
        _spec("simpo", simpo_loss, needs_reference=False),
        _spec("bfpo", bfpo_loss, uses_safety_labels=True, accepts_soft_labels=False),
    )
}


def get_preference_loss(name: str) -> PreferenceLossSpec:
    """Look up a registered preference loss by name.

    Args:
        name: a key of ``PREFERENCE_LOSSES``.

    Returns:
        Its ``PreferenceLossSpec``.

    Raises:
        ValueError: unknown name; the message lists the valid names, sorted.
    """
    try:
        return PREFERENCE_LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown preference loss {name!r}; valid names: {', '.join(sorted(PREFERENCE_LOSSES))}"
        ) from None


def preference_loss(name: str, logps: PreferenceLogps, **hparams: Any) -> torch.Tensor:
    """Evaluate the registered loss ``name``: ``get_preference_loss(name).fn(logps, **hparams)``.

    Args:
        name: a key of ``PREFERENCE_LOSSES``.
        logps: the batch; tensors ``(batch,)``.
        **hparams: hyper-parameters overriding the loss's defaults.

    Returns:
        Per-example loss, shape ``(batch,)``.

    Raises:
        ValueError: unknown loss name, or a hyper-parameter the loss does not take (the message
            lists the valid ones).
    """
    spec = get_preference_loss(name)
    unknown = sorted(set(hparams) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"preference loss {name!r} got unknown hyper-parameter(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(spec.defaults))}"
        )
    return spec.fn(logps, **hparams)


# ---------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------


def implicit_reward_accuracy(logps: PreferenceLogps) -> torch.Tensor:
    """Fraction of pairs whose implicit reward ranks the chosen response first: ``mean[h > 0]``.

    Ties (``h = 0``) count as wrong. Needs reference log-probs.

    Args:
        logps: the batch; tensors ``(batch,)``.

    Returns:
        Scalar ``()`` in ``chosen_logps``'s dtype, detached.
    """
    u_w, u_l = _log_ratios(logps, "implicit_reward_accuracy")
    return (u_w - u_l > 0).to(u_w.dtype).mean().detach()


def implicit_reward_margin(logps: PreferenceLogps, beta: float = 0.1) -> torch.Tensor:
    """Mean implicit reward margin ``mean(β h) = mean(β (u_w − u_l))``.

    Args:
        logps: the batch; needs reference log-probs. Tensors ``(batch,)``.
        beta: ``β``.

    Returns:
        Scalar ``()`` in ``chosen_logps``'s dtype, detached.
    """
    u_w, u_l = _log_ratios(logps, "implicit_reward_margin")
    return (beta * (u_w - u_l)).mean().detach()
