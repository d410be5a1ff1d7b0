"""Offline preference learning (docs/algorithms.md §5) through the runtime, with any registered loss.

The policy group trains; the reference group only scores the data set, once
(:func:`attach_reference_logps`), before training. Each step of :func:`train_preference`:

1. draw ``pairs_per_step`` pairs (seeded permutations of the data set, one pass after another);
2. take their interleaved rows (chosen ``2i``, rejected ``2i + 1``) with the cached reference
   log-probs;
3. one optimizer step of the policy group on :func:`preference_pair_loss`: the core loss
   (:mod:`saferl.core.preference_losses`) on the de-interleaved pairs, averaged over pairs.

Numerical guards (:mod:`saferl.learners.nonfinite`, the same as PPO-Lagrangian's): the step's
cached reference log-probs on the driver, and the loss in the ranks before ``backward`` (a NaN
policy log-prob makes it NaN), must be finite; otherwise the run stops with a ``NonFiniteError``
naming them, the step and the rank, or (``skip_nonfinite_batches``) the step is skipped without
an optimizer step and counted under ``perf/skipped_batches``.

Summed or length-averaged log-probs (the core losses take ``log π(y|x)`` as the masked sum over
the response tokens and the lengths ``|y|`` separately):

* reference losses (dpo, cdpo, robust_dpo, hinge, ipo, nca, safe_nca, sppo, kto, bfpo): the
  **sum** by default, as docs/algorithms.md §0/§5 define them; ``average_logps=True`` passes the
  length averages of both the policy and the reference log-probs instead (the length-normalised
  variant some IPO/DPO implementations use);
* orpo and simpo: always the **sum**, with the lengths; the core divides by ``|y|`` itself (they
  are defined on length-averaged log-probs), so ``average_logps=True`` is rejected for them rather
  than dividing twice. They need no reference log-probs.

Where this departs from the papers:

* KTO's reference point ``z₀`` is the core default, the clamped mean log-ratio of the
  **micro-batch** (not the global batch, not mismatched pairs, not all-reduced over ranks).
* Safe-NCA (registry name ``safe_nca``) is NCA on the pairs of :func:`safe_pairs` (exactly one
  safe response, the safe one chosen); :func:`train_preference` refuses ``safe_nca`` on a batch
  that has any other kind of pair.
* BFPO's ``y_w`` is the more helpful response, so it needs a batch built with
  ``ordering="better"`` from safety-labelled records.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from saferl.core.logprobs import sequence_logprobs
from saferl.core.preference_losses import (
    PreferenceLogps,
    PreferenceLossSpec,
    get_preference_loss,
    implicit_reward_accuracy,
    implicit_reward_margin,
    preference_loss,
)
from saferl.data.collators import SequenceBatch, collate_sequences
from saferl.data.records import PreferencePair, SafetyPreferencePair
from saferl.learners.nonfinite import NonFiniteGuard
from saferl.runtime.batching import batch_rows
from saferl.tracking import NullTracker, Tracker

__all__ = [
    "PreferenceTrainBatch",
    "build_preference_batch",
    "attach_reference_logps",
    "group_sequence_logps",
    "safe_pairs",
    "select_pairs",
    "preference_pair_loss",
    "train_preference",
]

Ordering = Literal["better", "safer"]

#: Losses the core defines on length-averaged log-probs; it averages the sums itself.
_SELF_NORMALISING = ("orpo", "simpo")


@dataclass(frozen=True)
class PreferenceTrainBatch:
    """Preference pairs as interleaved rows: row ``2i`` is pair ``i``'s chosen response ``y_w``,
    row ``2i + 1`` its rejected response ``y_l``. Any contiguous split with an even number of rows
    (ranks, micro-batches) therefore keeps every pair together.

    Attributes:
        input_ids: ``(2P, seq_len)`` prompt + response (+ EOS), RIGHT-padded.
        attention_mask: ``(2P, seq_len)`` bool, True = real token.
        response_mask: ``(2P, seq_len)`` bool, True on the response tokens and EOS.
        response_lengths: ``(2P,)`` float32, ``|y|`` = response tokens of the row (EOS included).
        preference_prob: ``(2P,)`` float32, soft label ``p = P(y_w ≻ y_l)`` of the row's pair,
            repeated on both rows (1 = hard label).
        chosen_is_safe: ``(2P,)`` bool safety label of the pair's chosen response, repeated on
            both rows; ``None`` for records without safety labels (``PreferencePair``).
        rejected_is_safe: ``(2P,)`` bool, likewise for the rejected response.
        ref_logps: ``(2P,)`` float32 ``log π_ref(y|x)`` of each row (masked SUM over the response
            tokens), or ``None`` until :func:`attach_reference_logps` fills it.
        ordering: what "chosen" means: ``"better"`` (more helpful), ``"safer"``, or ``"chosen"``
            (a generic ``PreferencePair``'s own order). Not a tensor: kept by every split.
        likelihood_weight: ``(2P,)`` float32 weight ``b`` of each row's ``−log π(y|x)`` (summed over
            its tokens), added to its pair's loss: ``loss_pair + b_w·(−log π(y_w|x)) +
            b_l·(−log π(y_l|x))``; ``None`` (the default): no such term. MoCAN's sample-target
            anchor (:func:`saferl.core.dualized.sample_target_weights`, scaled by the number of
            pairs so that the per-step mean over pairs estimates it without bias).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    response_lengths: torch.Tensor
    preference_prob: torch.Tensor
    chosen_is_safe: torch.Tensor | None
    rejected_is_safe: torch.Tensor | None
    ref_logps: torch.Tensor | None = None
    ordering: str = "better"
    likelihood_weight: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        """``P``."""
        return int(self.input_ids.shape[0]) // 2


# ---------------------------------------------------------------------------------------------
# Data: records → interleaved batch, Safe-NCA pairs, reference log-probs
# ---------------------------------------------------------------------------------------------


def build_preference_batch(
    pairs: Sequence[SafetyPreferencePair] | Sequence[PreferencePair],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    template: str,
    ordering: Ordering = "better",
    preference_probs: Sequence[float] | torch.Tensor | None = None,
) -> PreferenceTrainBatch:
    """Tokenise pairs into an interleaved :class:`PreferenceTrainBatch` (``ref_logps=None``).

    * :class:`SafetyPreferencePair`: chosen = the more helpful response (``ordering="better"``)
      or the safer one (``"safer"``); the safety labels follow the responses; hard labels.
    * :class:`PreferencePair`: chosen/rejected as recorded, ``preference_prob`` from the record,
      no safety labels (``ordering`` must stay ``"better"``, the default).

    Args:
        pairs: ``P ≥ 1`` records, all of one type.
        tokenizer: a tokenizer with pad and EOS tokens.
        max_length: at most this many tokens per row (see ``collate_sequences``).
        template: prompt template (``"raw"`` for the built-in world).
        ordering: ``"better"`` or ``"safer"``, see above.
        preference_probs: ``P`` soft labels in ``[0, 1]`` that replace the records' (MoCAN/PeCAN
            relabelling, docs/algorithms.md §4).

    Returns:
        The batch: tensors of ``2P`` rows.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("build_preference_batch needs at least one pair, got none")
    if ordering not in ("better", "safer"):
        raise ValueError(f"ordering must be 'better' or 'safer', got {ordering!r}")
    if all(isinstance(pair, SafetyPreferencePair) for pair in pairs):
        if ordering == "better":
            chosen = [(p.better, p.better_is_safe) for p in pairs]
            rejected = [(p.worse, p.worse_is_safe) for p in pairs]
        else:
            chosen = [(p.safer, p.safer_is_safe) for p in pairs]
            rejected = [(p.unsafer, p.unsafer_is_safe) for p in pairs]
        probs = [1.0] * len(pairs)
        chosen_is_safe: torch.Tensor | None = torch.tensor(
            [s for _, s in chosen]
        ).repeat_interleave(2)
        rejected_is_safe: torch.Tensor | None = torch.tensor(
            [s for _, s in rejected]
        ).repeat_interleave(2)
        batch_ordering = ordering
    elif all(isinstance(pair, PreferencePair) for pair in pairs):
        if ordering != "better":
            raise ValueError(
                "ordering='safer' needs SafetyPreferencePair records (a safety judgement); "
                "PreferencePair records keep their own chosen/rejected order: drop ordering"
            )
        chosen = [(p.chosen, None) for p in pairs]
        rejected = [(p.rejected, None) for p in pairs]
        probs = [float(p.preference_prob) for p in pairs]
        chosen_is_safe = rejected_is_safe = None
        batch_ordering = "chosen"
    else:
        found = sorted({type(pair).__name__ for pair in pairs})
        raise TypeError(
            f"pairs must all be SafetyPreferencePair or all PreferencePair, found types {found}"
        )
    if preference_probs is not None:
        probs = [float(p) for p in preference_probs]
        if len(probs) != len(pairs):
            raise ValueError(
                f"preference_probs needs one soft label per pair: {len(pairs)} pairs, "
                f"{len(probs)} labels"
            )
    bad = [(i, p) for i, p in enumerate(probs) if not 0.0 <= p <= 1.0]
    if bad:
        raise ValueError(
            f"preference probabilities must lie in [0, 1]; pair {bad[0][0]} has {bad[0][1]!r} "
            f"({len(bad)} pairs out of range)"
        )

    # Interleave: row 2i = chosen of pair i, row 2i + 1 = its rejected response.
    prompts = [pair.prompt for pair in pairs for _ in range(2)]
    responses = [text for c, r in zip(chosen, rejected, strict=True) for text in (c[0], r[0])]
    rows = collate_sequences(prompts, responses, tokenizer, max_length, template=template)
    return PreferenceTrainBatch(
        input_ids=rows.input_ids,
        attention_mask=rows.attention_mask,
        response_mask=rows.response_mask,
        response_lengths=rows.response_mask.sum(-1).to(torch.float32),
        preference_prob=torch.tensor(probs, dtype=torch.float32).repeat_interleave(2),
        chosen_is_safe=chosen_is_safe,
        rejected_is_safe=rejected_is_safe,
        ref_logps=None,
        ordering=batch_ordering,
    )


def safe_pairs(pairs: Sequence[SafetyPreferencePair]) -> list[SafetyPreferencePair]:
    """The Safe-NCA data: pairs where exactly one response is safe, ordered safe-first.

    "Ordered safe-first" means ``safer_response_id`` points at the safe response (the absolute
    safety labels win over a ``safer_response_id`` that contradicts them), so
    ``build_preference_batch(safe_pairs(pairs), ..., ordering="safer")`` has the safe response
    chosen and the unsafe one rejected on every pair. Pairs with two safe or two unsafe
    responses are dropped. The input order is kept.

    Args:
        pairs: safety-labelled records.

    Returns:
        The selected records (possibly empty).
    """
    selected = []
    for pair in pairs:
        if not isinstance(pair, SafetyPreferencePair):
            raise TypeError(
                f"safe_pairs needs SafetyPreferencePair records, found {type(pair).__name__}"
            )
        if pair.is_response_0_safe == pair.is_response_1_safe:
            continue
        safe_id = 0 if pair.is_response_0_safe else 1
        selected.append(dataclasses.replace(pair, safer_response_id=safe_id))
    return selected


@torch.no_grad()
def group_sequence_logps(group: Any, batch: SequenceBatch, rows_per_call: int) -> torch.Tensor:
    """``log π(y|x)`` (masked sum of token log-probs over the response mask) of every row, under
    the policy a group hosts (``ReferenceGroup`` or ``PolicyGroup``).

    The rows go to ``group.token_logprobs`` in chunks of ``rows_per_call``; the last, shorter
    chunk is padded with copies of its first row up to a multiple of the group's ranks and the
    copies are dropped.

    Args:
        group: anything with ``rank_infos`` and ``token_logprobs(SequenceBatch) -> (rows, seq_len)``.
        batch: the rows (anything with ``input_ids``, ``attention_mask``, ``response_mask``).
        rows_per_call: rows per call, a multiple of the group's ranks.

    Returns:
        ``(rows,)`` float32.
    """
    num_ranks = len(group.rank_infos)
    if rows_per_call < 1 or rows_per_call % num_ranks:
        raise ValueError(
            f"rows_per_call must be a positive multiple of the reference group's {num_ranks} "
            f"ranks, got {rows_per_call}"
        )
    rows = batch_rows(batch)
    sums = []
    for start in range(0, rows, rows_per_call):
        stop = min(start + rows_per_call, rows)
        index = torch.arange(start, stop)
        short = -len(index) % num_ranks
        index = torch.cat([index, index[:1].repeat(short)])  # pad to a multiple of the ranks
        chunk = SequenceBatch(
            batch.input_ids[index], batch.attention_mask[index], batch.response_mask[index]
        )
        token_logprobs = group.token_logprobs(chunk)  # (chunk, seq_len)
        sums.append(sequence_logprobs(token_logprobs.float(), chunk.response_mask)[: stop - start])
    return torch.cat(sums)


def attach_reference_logps(
    batch: PreferenceTrainBatch, reference_group: Any, rows_per_call: int
) -> PreferenceTrainBatch:
    """The batch with ``ref_logps`` filled: ``log π_ref(y|x)`` (masked sum) of every row.

    Computed once per data set (the driver caches the returned batch; training steps only slice
    it), by :func:`group_sequence_logps` in chunks of ``rows_per_call``.

    Args:
        batch: ``2P`` rows.
        reference_group: a ``ReferenceGroup`` (anything with ``rank_infos`` and
            ``token_logprobs(SequenceBatch) -> (rows, seq_len)``).
        rows_per_call: rows per call, a multiple of the group's ranks.

    Returns:
        A new batch; ``ref_logps`` ``(2P,)`` float32.
    """
    return dataclasses.replace(
        batch, ref_logps=group_sequence_logps(reference_group, batch, rows_per_call)
    )


def select_pairs(batch: PreferenceTrainBatch, pair_indices: Sequence[int]) -> PreferenceTrainBatch:
    """The pairs ``pair_indices`` of ``batch`` in that order, still interleaved, with the padding
    columns no selected row uses trimmed off."""
    index = torch.tensor([row for i in pair_indices for row in (2 * i, 2 * i + 1)])
    width = int(batch.attention_mask[index].sum(-1).max())  # right padding: real tokens first

    def take(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        value = value[index]
        return value[:, :width] if value.dim() == 2 else value

    return dataclasses.replace(
        batch, **{f.name: take(getattr(batch, f.name)) for f in dataclasses.fields(batch)}
    )


# ---------------------------------------------------------------------------------------------
# The loss (runs on the ranks: module-level, picklable)
# ---------------------------------------------------------------------------------------------


def preference_pair_loss(
    token_logprobs: torch.Tensor,
    batch: PreferenceTrainBatch,
    loss_name: str,
    hyperparameters: Mapping[str, Any],
    average_logps: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The registered preference loss of an interleaved micro-batch, averaged over its pairs.

    Policy sequence log-probs are the masked sums of ``token_logprobs`` over the response mask;
    with ``average_logps`` the policy and reference sums are divided by the response lengths
    (reference losses only: orpo and simpo get sums and divide by the lengths themselves, and
    reject ``average_logps``). Losses without soft labels (kto, bfpo) get
    ``preference_prob=None`` and raise on a soft label; the others get the batch's labels
    (``p = 1`` gives exactly the hard-label loss).

    Args:
        token_logprobs: ``(2P, seq_len)`` the policy's token log-probs of the rows.
        batch: the micro-batch, ``2P`` interleaved rows; ``ref_logps`` needed unless the loss is
            reference-free.
        loss_name: a key of ``PREFERENCE_LOSSES``.
        hyperparameters: keyword hyper-parameters of that loss (others keep their defaults).
        average_logps: length-average the log-probs of reference losses.

    Returns:
        ``(loss, metrics)``: the mean per-pair loss ``()`` (with the batch's
        ``likelihood_weight`` term, when it has one), and detached scalars
        ``chosen_logps``/``rejected_logps`` (mean policy log-probs as fed to the loss),
        ``likelihood_term`` (that term's mean, when there is one),
        ``reward_margin`` (mean ``scale · (r_w − r_l)``) and, except for bfpo, ``reward_accuracy``
        (fraction of pairs with ``r_w > r_l``). The implicit reward ``r`` is the log-ratio ``u``
        for reference losses (``scale`` = ``beta``; bfpo: ``tau``, since it fits ``τh`` to ``g``)
        and the length-averaged log-prob for orpo (scale 1) and simpo (scale ``beta``). BFPO
        has no accuracy: its target prefers the rejected row on (unsafe, safe) pairs.
    """
    spec = get_preference_loss(loss_name)
    _check_averaging(spec, average_logps)
    lengths = batch.response_lengths.to(token_logprobs.dtype)
    logps = sequence_logprobs(token_logprobs, batch.response_mask)  # (2P,) masked sums
    summed_logps = logps
    ref_logps = None if batch.ref_logps is None else batch.ref_logps.to(logps.dtype)
    if average_logps:
        logps = logps / lengths
        ref_logps = None if ref_logps is None else ref_logps / lengths

    preference_prob = batch.preference_prob[0::2]  # (P,)
    if not spec.accepts_soft_labels:
        if bool((preference_prob != 1).any()):
            raise ValueError(_soft_label_message(spec.name))
        preference_prob = None

    # De-interleave: even rows chosen, odd rows rejected; every field (P,).
    pair = PreferenceLogps(
        chosen_logps=logps[0::2],
        rejected_logps=logps[1::2],
        ref_chosen_logps=None if ref_logps is None else ref_logps[0::2],
        ref_rejected_logps=None if ref_logps is None else ref_logps[1::2],
        chosen_lengths=lengths[0::2],
        rejected_lengths=lengths[1::2],
        chosen_is_safe=None if batch.chosen_is_safe is None else batch.chosen_is_safe[0::2],
        rejected_is_safe=None if batch.rejected_is_safe is None else batch.rejected_is_safe[0::2],
        preference_prob=preference_prob,
    )
    loss = preference_loss(spec.name, pair, **hyperparameters).mean()

    metrics = {
        "chosen_logps": pair.chosen_logps.mean().detach(),
        "rejected_logps": pair.rejected_logps.mean().detach(),
    }
    if batch.likelihood_weight is not None:
        # Per pair b_w·(−log π(y_w)) + b_l·(−log π(y_l)) on the summed log-probs, averaged like the loss.
        weighted_nll = -(batch.likelihood_weight.to(summed_logps.dtype) * summed_logps).reshape(-1, 2).sum(-1)
        likelihood_term = weighted_nll.mean()
        loss = loss + likelihood_term
        metrics["likelihood_term"] = likelihood_term.detach()
    scale = float(hyperparameters.get(_scale_name(spec), spec.defaults.get(_scale_name(spec), 1.0)))
    if spec.needs_reference:
        metrics["reward_margin"] = implicit_reward_margin(pair, beta=scale)
        if spec.name != "bfpo":
            metrics["reward_accuracy"] = implicit_reward_accuracy(pair)
    else:
        reward_w = pair.chosen_logps.detach() / pair.chosen_lengths  # (P,)
        reward_l = pair.rejected_logps.detach() / pair.rejected_lengths  # (P,)
        metrics["reward_margin"] = (scale * (reward_w - reward_l)).mean()
        metrics["reward_accuracy"] = (reward_w > reward_l).to(reward_w.dtype).mean()
    return loss, metrics


def _scale_name(spec: PreferenceLossSpec) -> str:
    """The hyper-parameter that scales the loss's implicit reward (orpo: none)."""
    return "tau" if spec.name == "bfpo" else "beta"


def _check_averaging(spec: PreferenceLossSpec, average_logps: bool) -> None:
    if average_logps and spec.name in _SELF_NORMALISING:
        raise ValueError(
            f"average_logps=True with loss {spec.name!r}: {', '.join(_SELF_NORMALISING)} divide "
            "the summed log-probs by the response lengths themselves; set average_logps=False"
        )


def _soft_label_message(loss_name: str) -> str:
    return (
        f"preference loss {loss_name!r} takes hard labels only, but the batch has preference "
        "probabilities other than 1: build it without preference_probs (and from records with "
        "preference_prob=1), or use a loss that accepts soft labels"
    )


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def train_preference(
    policy_group: Any,
    batch_with_ref: PreferenceTrainBatch,
    loss_name: str,
    hyperparameters: Mapping[str, Any] | None = None,
    *,
    steps: int,
    pairs_per_step: int,
    seed: int,
    average_logps: bool = False,
    tracker: Tracker | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    skip_nonfinite_batches: bool = False,
) -> list[dict[str, float]]:
    """Train ``policy_group`` (a ``PolicyGroup``) on preference pairs with a registered loss.

    Each step:

    1. draw ``pairs_per_step`` pairs: seeded permutations of the data set, one pass after
       another (stateless given ``(seed, step)``, so a resumed run draws the same pairs);
    2. slice their interleaved rows and cached reference log-probs out of ``batch_with_ref``;
    3. one optimizer step on :func:`preference_pair_loss` (mean over the step's pairs).

    Args:
        policy_group: the policy; its global train batch must be ``2 * pairs_per_step`` rows and
            its micro-batches an even number of rows (whole pairs).
        batch_with_ref: the data set (:func:`build_preference_batch`), with ``ref_logps`` from
            :func:`attach_reference_logps` unless the loss is reference-free (orpo, simpo).
        loss_name: a key of ``PREFERENCE_LOSSES``.
        hyperparameters: the loss's keyword hyper-parameters (``None``: its defaults).
        steps: optimizer steps.
        pairs_per_step: pairs per optimizer step.
        seed: seeds the pair order.
        average_logps: length-average the log-probs (reference losses only, see the module doc).
        tracker: receives each step's metrics.
        progress: called as ``progress(step, metrics)`` after each step.
        skip_nonfinite_batches: skip (and count) a step whose reference log-probs or loss hold
            NaN or ±inf instead of raising ``NonFiniteError``.

    Returns:
        Each step's metrics: ``preference/loss``, ``preference/grad_norm``,
        ``preference/learning_rate``, ``preference/<metric>`` of :func:`preference_pair_loss` and
        ``perf/skipped_batches`` (a skipped step's metrics hold only that).
    """
    hyperparameters = dict(hyperparameters or {})
    tracker = tracker or NullTracker()
    spec = get_preference_loss(loss_name)  # unknown name: the error lists the valid ones
    _check_training_setup(spec, hyperparameters, average_logps, batch_with_ref)
    _check_geometry(policy_group, pairs_per_step, batch_with_ref.num_pairs)
    loss_fn = partial(
        preference_pair_loss,
        loss_name=spec.name,
        hyperparameters=hyperparameters,
        average_logps=average_logps,
    )
    guard = NonFiniteGuard(skip_nonfinite_batches)
    history = []
    for step in range(steps):
        # 1. This step's pairs.
        pair_indices = _pair_indices(batch_with_ref.num_pairs, pairs_per_step, seed, step)
        # 2. Their interleaved rows, with the cached reference log-probs.
        batch = select_pairs(batch_with_ref, pair_indices)
        references = {} if batch.ref_logps is None else {"reference log-probs": batch.ref_logps}
        if not guard.inputs_finite(step + 1, references):
            metrics = guard.skip_batch()
        else:
            # 3. One optimizer step on the preference loss (refused by the ranks if non-finite).
            output = policy_group.train_step(batch, loss_fn, report_nonfinite=True)
            if not guard.step_taken(output, "preference loss", step + 1):
                metrics = guard.skip_batch()
            else:
                metrics = {
                    "preference/loss": output.loss,
                    **{f"preference/{key}": value for key, value in output.metrics.items()},
                    "preference/learning_rate": output.learning_rate,
                    **guard.metrics(),
                }
                if output.grad_norm is not None:
                    metrics["preference/grad_norm"] = output.grad_norm
        history.append(metrics)
        tracker.log(metrics, step=step + 1)
        if progress is not None:
            progress(step + 1, metrics)
    return history


def _pair_indices(num_pairs: int, pairs_per_step: int, seed: int, step: int) -> list[int]:
    """Pairs of step ``step``: position ``step * pairs_per_step`` onwards in a sequence of
    seeded permutations of ``range(num_pairs)`` (pass ``k`` shuffled with ``(seed, k)``)."""
    picked: list[int] = []
    start = step * pairs_per_step
    while len(picked) < pairs_per_step:
        epoch, offset = divmod(start + len(picked), num_pairs)
        order = list(range(num_pairs))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        picked.extend(order[offset : offset + pairs_per_step - len(picked)])
    return picked


def _check_training_setup(
    spec: PreferenceLossSpec,
    hyperparameters: Mapping[str, Any],
    average_logps: bool,
    batch: PreferenceTrainBatch,
) -> None:
    """Driver-side checks, so a misconfigured run fails before any rank computes."""
    unknown = sorted(set(hyperparameters) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"preference loss {spec.name!r} got unknown hyper-parameter(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(spec.defaults))}"
        )
    _check_averaging(spec, average_logps)
    if batch.num_pairs == 0:
        raise ValueError("the preference data set is empty")
    if spec.needs_reference and batch.ref_logps is None:
        raise ValueError(
            f"preference loss {spec.name!r} needs reference log-probs, but the batch's ref_logps "
            "is None: pass attach_reference_logps(batch, reference_group, rows_per_call)"
        )
    if not spec.accepts_soft_labels and bool((batch.preference_prob != 1).any()):
        raise ValueError(_soft_label_message(spec.name))
    if spec.uses_safety_labels and (batch.chosen_is_safe is None or batch.ordering != "better"):
        raise ValueError(
            f"preference loss {spec.name!r} needs y_w = the more helpful response and both "
            f"safety labels, but the batch has ordering={batch.ordering!r} and "
            f"{'no' if batch.chosen_is_safe is None else 'its'} safety labels: build it from "
            "SafetyPreferencePair records with ordering='better'"
        )
    if spec.name == "safe_nca" and (
        batch.chosen_is_safe is None
        or not bool(batch.chosen_is_safe.all())
        or bool(batch.rejected_is_safe.any())
    ):
        raise ValueError(
            "safe_nca trains on pairs with a safe chosen and an unsafe rejected response, but "
            "the batch has other pairs: build it with "
            "build_preference_batch(safe_pairs(pairs), ..., ordering='safer')"
        )


def _check_geometry(policy_group: Any, pairs_per_step: int, num_pairs: int) -> None:
    spec = policy_group.deepspeed_spec
    rows = spec.train_batch_size(len(policy_group.rank_infos))
    if pairs_per_step < 1 or 2 * pairs_per_step != rows:
        raise ValueError(
            f"pairs_per_step={pairs_per_step} gives {2 * pairs_per_step} rows per step, but the "
            f"policy's train batch is {rows} rows (deepspeed.micro_batch_size_per_rank x "
            "gradient_accumulation_steps x num_ranks): set pairs_per_step to "
            f"{rows // 2}"
        )
    if spec.micro_batch_size_per_rank % 2:
        raise ValueError(
            "deepspeed.micro_batch_size_per_rank must be even for preference training (a "
            f"micro-batch holds whole pairs), got {spec.micro_batch_size_per_rank}"
        )
    if pairs_per_step > num_pairs:
        raise ValueError(
            f"pairs_per_step={pairs_per_step} exceeds the data set's {num_pairs} pairs"
        )
