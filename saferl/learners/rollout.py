"""The experience maker shared by every on-policy learner (PPO, PPO-Lagrangian, MoCAN's PPO stage).

One call (:meth:`ExperienceMaker.make`) turns prompts into a scored
:class:`~saferl.learners.types.Experience`:

1. generate responses in the policy group (seeded per row);
2. the policy's log-probs of its own samples (``old_logprobs``) and the reference's;
3. reward and cost scores at the end of each response (pluggable scorers);
4. the critics' values at rollout time.

Steps 2–4 ask different groups and need nothing from each other, so they are issued side by side
(:func:`saferl.runtime.side_by_side.side_by_side`): the groups' ranks work at the same time.
Step 1 alone is :meth:`ExperienceMaker.generate`, and steps 2–4 are :meth:`ExperienceMaker.scoring_calls`,
one call per group or scorer: a loop may sample the next rollout's responses as soon as the policy is
updated, make some of its calls early (each critic's once that critic is updated), and hand the
responses and what it already has to ``make``, which makes the calls that are left.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from saferl.data.collators import SequenceBatch, collate_prompts
from saferl.learners.scorers import Scorer
from saferl.learners.types import Experience
from saferl.runtime.side_by_side import side_by_side

__all__ = ["ExperienceMaker", "values_before_tokens"]


def values_before_tokens(raw_values: torch.Tensor) -> torch.Tensor:
    """Align a critic's outputs with the actions they value.

    A critic run over a sequence gives at position ``t`` the value of the state *after* reading
    token ``t``; the action at position ``t`` (generating token ``t``) is taken in the state
    after token ``t − 1``. So the value of action ``t`` is the raw output at ``t − 1``
    (the log-prob of token ``t`` sits at ``t`` too, see ``saferl.models.policy_token_logprobs``).

    Args:
        raw_values: ``(batch, seq_len)`` critic outputs per position.

    Returns:
        ``(batch, seq_len)`` shifted right by one (position 0 gets 0).
    """
    return F.pad(raw_values[:, :-1], (1, 0), value=0.0)


@dataclass
class ExperienceMaker:
    """Everything a rollout needs; ``make`` runs steps 1–4 of the module docstring.

    Attributes:
        policy: a ``PolicyGroup`` (generate, token_logprobs).
        reference: a ``ReferenceGroup`` (token_logprobs).
        reward_scorer: scores ``(batch, 1)``.
        cost_scorers: each scores ``(batch, k)``; together the ``m`` costs (empty for plain PPO).
        reward_critic: a ``CriticGroup`` (values).
        cost_critics: one ``CriticGroup`` per cost column.
        tokenizer: the policy's tokenizer (pad ≠ EOS).
        generation: a ``GenerationSpec``; its seed is replaced per rollout.
        max_prompt_length: prompts are cut from the left to this many tokens.
        template: prompt template (``"safe_rlhf"``, ``"chat"`` or ``"raw"``).
        rollout_engine: generates step 1 in place of the policy group when set (e.g. a
            :class:`~saferl.runtime.vllm_engine.VLLMEngineGroup`: ``generate(prompts, spec)`` and
            ``sync_weights_from(policy)``); the loop keeps its weights the policy's.
    """

    policy: object
    reference: object
    reward_scorer: Scorer
    cost_scorers: Sequence[Scorer]
    reward_critic: object
    cost_critics: Sequence[object]
    tokenizer: PreTrainedTokenizerBase
    generation: object
    max_prompt_length: int
    template: str
    rollout_engine: object | None = None

    def __post_init__(self) -> None:
        num_costs = sum(scorer.num_outputs for scorer in self.cost_scorers)
        if len(self.cost_critics) != num_costs:
            raise ValueError(
                f"experience maker: {num_costs} cost column(s) from the cost scorers but "
                f"{len(self.cost_critics)} cost critic(s); each cost needs its own critic"
            )

    def generate(self, prompts: Sequence[str], seed: int) -> SequenceBatch:
        """Step 1: one response per prompt from the policy as it is now (its group, or the
        rollout engine holding its weights), sampled with ``seed``; the prompts and responses as
        one ``(batch, seq_len)`` sequence batch."""
        prompt_batch = collate_prompts(
            list(prompts), self.tokenizer, self.max_prompt_length, template=self.template
        )
        generator = self.policy if self.rollout_engine is None else self.rollout_engine
        generated = generator.generate(prompt_batch, replace(self.generation, seed=seed))
        return generated.to_sequence_batch(int(self.tokenizer.pad_token_id))

    def scoring_calls(
        self, batch: SequenceBatch, prompts: Sequence[str]
    ) -> dict[str, Callable[[], torch.Tensor]]:
        """Steps 2–4 on ``batch`` (rows as in ``prompts``), one call without arguments per group or
        scorer, named by what it gives: ``old_logprobs``, ``ref_logprobs``, ``reward_scores``,
        ``cost_scores_{j}`` (one per cost scorer), then the critics' (:meth:`critic_call_names`)."""
        calls: dict[str, Callable[[], torch.Tensor]] = {
            "old_logprobs": partial(self.policy.token_logprobs, batch),
            "ref_logprobs": partial(self.reference.token_logprobs, batch),
            "reward_scores": partial(self.reward_scorer.score, batch, prompts),
        }
        for j, scorer in enumerate(self.cost_scorers):
            calls[f"cost_scores_{j}"] = partial(scorer.score, batch, prompts)
        critics = (self.reward_critic, *self.cost_critics)
        for name, critic in zip(self.critic_call_names(), critics, strict=True):
            calls[name] = partial(critic.values, batch)
        return calls

    def critic_call_names(self) -> list[str]:
        """The names :meth:`scoring_calls` gives the critics' values: ``reward_values``, then
        ``cost_values_{j}`` per cost critic."""
        return ["reward_values", *(f"cost_values_{j}" for j in range(len(self.cost_critics)))]

    def make(
        self,
        prompts: Sequence[str],
        seed: int,
        generated: SequenceBatch | None = None,
        ready: Mapping[str, torch.Tensor] | None = None,
    ) -> Experience:
        """A scored rollout of one response per prompt, sampled with ``seed``.

        Args:
            generated: step 1's output when it was already sampled (:meth:`generate` with these
                prompts and this seed, from the policy as it is now); None samples it here.
            ready: results of :meth:`scoring_calls` on ``generated`` already made, by name (each
                from its group as it is now); the others are made here.
        """
        ready = dict(ready or {})
        if ready and generated is None:
            raise ValueError("experience maker: results made ahead (ready) need the responses they scored (generated)")
        # 1. Generate.
        batch = self.generate(prompts, seed) if generated is None else generated
        # 2–4. Log-probs under the policy and the reference, the scores at the end of each
        # response and the critics' values: each from its own group, issued side by side.
        calls = self.scoring_calls(batch, prompts)
        if unknown := sorted(set(ready) - set(calls)):
            raise ValueError(f"experience maker: ready results {unknown} are none of the calls {list(calls)}")
        done = {**ready, **side_by_side({name: call for name, call in calls.items() if name not in ready})}
        old_logprobs = done["old_logprobs"].float()
        ref_logprobs = done["ref_logprobs"].float()
        reward_scores = done["reward_scores"][:, 0].float()
        rows = batch.input_ids.shape[0]
        if self.cost_scorers:
            cost_scores = torch.cat(
                [done[f"cost_scores_{j}"].float() for j in range(len(self.cost_scorers))], dim=-1
            )
        else:
            cost_scores = torch.zeros(rows, 0)
        # Critic values of each action.
        reward_values = values_before_tokens(done["reward_values"].float())
        if self.cost_critics:
            cost_values = torch.stack(
                [
                    values_before_tokens(done[f"cost_values_{j}"].float())
                    for j in range(len(self.cost_critics))
                ],
                dim=-1,
            )
        else:
            cost_values = torch.zeros(*batch.input_ids.shape, 0)
        return Experience(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            response_mask=batch.response_mask,
            old_logprobs=old_logprobs,
            ref_logprobs=ref_logprobs,
            reward_scores=reward_scores,
            cost_scores=cost_scores,
            reward_values=reward_values * batch.response_mask,
            cost_values=cost_values * batch.response_mask.unsqueeze(-1),
            prompts=tuple(prompts),
        )
