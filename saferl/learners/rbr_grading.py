"""RBR's graders on sampled rows, and each prompt's response type, for every setup
(:mod:`saferl.learners.rbr`).

A grader reads a batch of rollouts (prompt + response tokens) and returns, per row, the
probability of each simple proposition of the spec, in the spec's order:

* :class:`WorldRowGrader`: the built-in world's grader (exact, or noisy at a given rate), reading
  the response as the world's words;
* :class:`LMRowGrader`: a causal LM as a Ray actor group
  (:class:`~saferl.runtime.judging.JudgeGroup`), fed the spec's prompt template with the decoded
  response (:func:`saferl.rbr.lm_grader.grade_with_group`).

:func:`prompt_response_types` says which response type each prompt has: the world's own, or a
``learner.rbr.response_types`` file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from saferl.data.batches import SequenceBatch
from saferl.learners.scorers import response_words
from saferl.rbr import RBRSpec

__all__ = [
    "LMRowGrader",
    "RowGrader",
    "WorldRowGrader",
    "prompt_response_types",
    "response_texts",
    "start_lm_grader",
]


class RowGrader(Protocol):
    """Grades the responses of sampled rows with a spec's simple propositions."""

    def grade(self, batch: SequenceBatch, prompts: Sequence[str], rows: Sequence[int]) -> torch.Tensor:
        """``(len(rows), n_propositions)`` float64 probabilities in ``[0, 1]``, in the spec's order.

        Args:
            batch: sampled rows (prompt + response; ``response_mask`` marks the response).
            prompts: the untemplated prompt of every row of ``batch``.
            rows: the rows to grade.
        """
        ...

    def shutdown(self) -> None:
        """Stop what the grader started (nothing for an in-process grader)."""
        ...


@dataclass(frozen=True)
class WorldRowGrader:
    """The world's grader (:class:`saferl.rbr.world.WorldGrader`) on rollouts of the world's policy.

    Attributes:
        noise_rate, seed: the grader's noise (0: exact) and which answers it flips.
        tokenizer: the world's tokenizer (responses are read as words).
    """

    noise_rate: float
    seed: int
    tokenizer: object

    def grade(self, batch: SequenceBatch, prompts: Sequence[str], rows: Sequence[int]) -> torch.Tensor:
        from saferl.data.world import EOS, world_prompts
        from saferl.rbr.world import WorldGrader

        grader = WorldGrader(self.noise_rate, self.seed)
        world = {prompt.text: prompt for prompt in world_prompts()}
        eos = self.tokenizer.convert_tokens_to_ids(EOS)
        graded = []
        for row in rows:
            if prompts[row] not in world:
                raise ValueError(f"learner.rbr.grader=world: prompt {prompts[row]!r} is not a prompt of the built-in "
                                 "world (the world's grader reads the world's responses only)")
            words, finished = response_words(self.tokenizer, eos, batch, row)
            graded.append(list(grader.grade(world[prompts[row]], words, finished).values()))
        return torch.tensor(graded, dtype=torch.float64).reshape(len(rows), -1)

    def shutdown(self) -> None:
        """Nothing to stop: the world's grader runs in this process."""


def response_texts(tokenizer, batch: SequenceBatch, rows: Sequence[int]) -> list[str]:
    """The decoded response of each row (its ``response_mask`` tokens, special tokens left out)."""
    return [
        tokenizer.decode(batch.input_ids[row][batch.response_mask[row]].tolist(), skip_special_tokens=True).strip()
        for row in rows
    ]


@dataclass(frozen=True)
class LMRowGrader:
    """An LM grader on rollouts: each response is decoded with the policy's tokenizer and graded
    per proposition by the group's causal LM (``P(yes)/(P(yes)+P(no))`` of its next token).

    Attributes:
        group: a running causal-LM :class:`~saferl.runtime.judging.JudgeGroup` (the grader's
            tokenizer is the group's).
        spec: the spec whose template and questions fill the grader's prompts.
        tokenizer: the policy's tokenizer (to decode responses).
        use_chat_template: wrap each prompt in the grader tokenizer's chat template.
    """

    group: object
    spec: RBRSpec
    tokenizer: object
    use_chat_template: bool = False

    def grade(self, batch: SequenceBatch, prompts: Sequence[str], rows: Sequence[int]) -> torch.Tensor:
        from saferl.rbr.lm_grader import grade_with_group

        texts = response_texts(self.tokenizer, batch, rows)
        return grade_with_group(self.group, self.spec, texts, use_chat_template=self.use_chat_template).double()

    def shutdown(self) -> None:
        self.group.shutdown()


def start_lm_grader(settings, spec: RBRSpec, policy_tokenizer, resources) -> LMRowGrader:
    """Start ``learner.rbr.grader_model`` as a one-role judge group on the learner's resources
    (inference only; its ranks are the run's ``runtime.num_ranks``)."""
    from transformers import AutoTokenizer

    from saferl.models import ModelSpec
    from saferl.models.untrusted import check_remote_code
    from saferl.runtime.judging import JudgeGroup

    # No setting lets the grader run its own code: refuse such a grader before anything loads.
    check_remote_code(settings.grader_model, False, key=None)
    grader_tokenizer = AutoTokenizer.from_pretrained(settings.grader_model)
    group = JudgeGroup(
        ModelSpec(name_or_path=settings.grader_model, trust_remote_code_key=None),
        grader_tokenizer,
        resources.engine(0.0, resources.num_ranks),
        resources.group,
        resources.runtime,
        kind="causal_lm",
        micro_batch_size=settings.grader_micro_batch_size,
        role="rbr_grader",
        seed=resources.seed,
    )
    return LMRowGrader(group, spec, policy_tokenizer, settings.grader_chat_template)


def prompt_response_types(setup_name: str, prompts: Sequence[str], spec: RBRSpec,
                          response_types_path: str | None) -> dict[str, str]:
    """The response type of every prompt that has one (the spec's spelling): on the world, each
    prompt's own (``hard_refuse`` for harmful, ``comply`` for benign); elsewhere the listed prompts
    of ``learner.rbr.response_types``.

    Raises:
        ValueError: off the world without a file, or when no prompt of ``prompts`` is listed.
    """
    if setup_name == "world":
        from saferl.data.world import world_prompts
        from saferl.rbr.world import world_response_type

        return {prompt.text: spec.response_type(world_response_type(prompt)) for prompt in world_prompts()}
    if response_types_path is None:
        raise ValueError(f"learner.rbr.response_types: missing; the {setup_name} setup's prompts carry no response "
                         "type, so RBR needs a jsonl file of {prompt, response_type} records")
    from saferl.rbr.response_types import load_response_types

    types = load_response_types(response_types_path, spec)
    if not set(prompts) & set(types):
        raise ValueError(f"learner.rbr.response_types: none of the {len(prompts)} training prompts is listed in "
                         f"{response_types_path} ({len(types)} prompts listed), so no prompt gets R_rbr")
    return types
