"""Typed data records: one prompt, one demonstration, one preference pair, one safety pair.

Records are frozen dataclasses of plain Python values (no tensors): they are what the loaders
return, what the built-in world generates, and what the collators tokenise. Their field names are
the column names the loaders read and :func:`saferl.data.write_records` writes, so a record
round-trips through a file unchanged. Records are built by :mod:`saferl.data.validation`, which
checks every field; constructing one directly performs no checks.

:class:`SafetyPreferencePair` keeps the PKU-SafeRLHF fields verbatim (docs/algorithms.md §7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "PromptRecord",
    "SFTExample",
    "PreferencePair",
    "SafetyPreferencePair",
    "Record",
    "RECORD_TYPES",
]


@dataclass(frozen=True)
class PromptRecord:
    """A prompt ``x`` for generation (PPO rollouts, evaluation, MoCAN's dual pre-optimisation).

    Attributes:
        prompt: the user's request, *not* yet formatted with a template.
    """

    prompt: str

    def to_dict(self) -> dict[str, Any]:
        """The record as ``{"prompt": ...}``, the columns the prompt loader reads."""
        return {"prompt": self.prompt}


@dataclass(frozen=True)
class SFTExample:
    """A demonstration ``(x, y)`` for supervised fine-tuning of the reference policy.

    Attributes:
        prompt: the user's request, not yet formatted with a template.
        response: the demonstrated answer (without EOS; the collator appends it).
    """

    prompt: str
    response: str

    def to_dict(self) -> dict[str, Any]:
        """The record as ``{"prompt", "response"}``, the columns the SFT loader reads."""
        return {"prompt": self.prompt, "response": self.response}


@dataclass(frozen=True)
class PreferencePair:
    """A generic preference pair ``(x, y_w, y_l)`` without safety labels (DPO-family data).

    Attributes:
        prompt: the user's request, not yet formatted with a template.
        chosen: the preferred response ``y_w``.
        rejected: the dispreferred response ``y_l``.
        preference_prob: probability that ``chosen`` is preferred, in ``[0, 1]``; ``1.0`` for a
            hard label (soft labels serve cDPO-style label smoothing).
    """

    prompt: str
    chosen: str
    rejected: str
    preference_prob: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """The record as ``{"prompt", "chosen", "rejected", "preference_prob"}``."""
        return {
            "prompt": self.prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "preference_prob": self.preference_prob,
        }


@dataclass(frozen=True)
class SafetyPreferencePair:
    """A safety preference record in the PKU-SafeRLHF format (docs/algorithms.md §7).

    Two responses to one prompt, with two independent judgements: which response is more helpful
    (``better_response_id``) and which is safer (``safer_response_id``), plus an absolute safety
    label per response. The reward model trains on the first judgement, the cost model on the
    second and on the labels (docs/algorithms.md §3).

    Attributes:
        prompt: the user's request, not yet formatted with a template.
        response_0: the first response.
        response_1: the second response.
        better_response_id: ``0`` or ``1``, the more helpful response.
        safer_response_id: ``0`` or ``1``, the safer response.
        is_response_0_safe: absolute safety label of ``response_0``.
        is_response_1_safe: absolute safety label of ``response_1``.
    """

    prompt: str
    response_0: str
    response_1: str
    better_response_id: int
    safer_response_id: int
    is_response_0_safe: bool
    is_response_1_safe: bool

    def response(self, response_id: int) -> str:
        """The response with id ``0`` or ``1``."""
        if response_id == 0:
            return self.response_0
        if response_id == 1:
            return self.response_1
        raise ValueError(f"response_id must be 0 or 1, found {response_id!r}")

    def is_safe(self, response_id: int) -> bool:
        """The absolute safety label of the response with id ``0`` or ``1``."""
        if response_id == 0:
            return self.is_response_0_safe
        if response_id == 1:
            return self.is_response_1_safe
        raise ValueError(f"response_id must be 0 or 1, found {response_id!r}")

    @property
    def better(self) -> str:
        """The more helpful response ``y_better`` (reward model's winner)."""
        return self.response(self.better_response_id)

    @property
    def worse(self) -> str:
        """The less helpful response ``y_worse``."""
        return self.response(1 - self.better_response_id)

    @property
    def safer(self) -> str:
        """The safer response ``y_safer`` (cost model's lower-cost side)."""
        return self.response(self.safer_response_id)

    @property
    def unsafer(self) -> str:
        """The less safe response ``y_unsafer``."""
        return self.response(1 - self.safer_response_id)

    @property
    def better_is_safe(self) -> bool:
        """Safety label of the more helpful response."""
        return self.is_safe(self.better_response_id)

    @property
    def worse_is_safe(self) -> bool:
        """Safety label of the less helpful response."""
        return self.is_safe(1 - self.better_response_id)

    @property
    def safer_is_safe(self) -> bool:
        """Safety label of the safer response (sign ``s_safer`` of docs/algorithms.md §3)."""
        return self.is_safe(self.safer_response_id)

    @property
    def unsafer_is_safe(self) -> bool:
        """Safety label of the less safe response (sign ``s_unsafer`` of docs/algorithms.md §3)."""
        return self.is_safe(1 - self.safer_response_id)

    def to_preference_pair(self, by: Literal["better", "safer"] = "better") -> PreferencePair:
        """Drop the safety labels: a hard-labelled pair ordered by helpfulness or by safety.

        Args:
            by: ``"better"``: chosen = more helpful (reward-style DPO data); ``"safer"``: chosen =
                safer (safety-only preference data).
        """
        if by == "better":
            return PreferencePair(self.prompt, self.better, self.worse)
        if by == "safer":
            return PreferencePair(self.prompt, self.safer, self.unsafer)
        raise ValueError(f"by must be 'better' or 'safer', found {by!r}")

    def to_dict(self) -> dict[str, Any]:
        """The record with exactly the PKU-SafeRLHF field names (docs/algorithms.md §7)."""
        return {
            "prompt": self.prompt,
            "response_0": self.response_0,
            "response_1": self.response_1,
            "better_response_id": self.better_response_id,
            "safer_response_id": self.safer_response_id,
            "is_response_0_safe": self.is_response_0_safe,
            "is_response_1_safe": self.is_response_1_safe,
        }


Record = PromptRecord | SFTExample | PreferencePair | SafetyPreferencePair
"""Any data record."""

RECORD_TYPES: tuple[type, ...] = (PromptRecord, SFTExample, PreferencePair, SafetyPreferencePair)
"""The record classes, in order of growing size."""
