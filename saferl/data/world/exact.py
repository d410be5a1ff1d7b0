"""Exact mode of the built-in world: every response enumerated, every expectation exact.

Responses are at most :data:`MAX_RESPONSE_TOKENS` = 3 generated tokens over the whole vocabulary
(20 tokens): EOS alone, one or two tokens then EOS, or three tokens without EOS (cut off by the
length limit, which the ground truth penalises as unfinished). These 1 + 19 + 19² + 19³ = 7240
responses are exactly the outcomes of sampling with ``max_new_tokens = 3``, so their
probabilities under any causal LM sum to one and equal the sampling frequencies. From one forward
pass over the 19² two-token continuations of a prompt, every response's log-probability is
assembled:

    log π(EOS)       = ℓ₀(EOS)
    log π(a EOS)     = ℓ₀(a) + ℓ₁(EOS | a)
    log π(a b EOS)   = ℓ₀(a) + ℓ₁(b | a) + ℓ₂(EOS | a b)
    log π(a b c)     = ℓ₀(a) + ℓ₁(b | a) + ℓ₂(c | a b)

With the reference's log-probabilities and the ground truth, the exact constrained optimum
``π* = π_λ*`` of docs/algorithms.md §1 comes from :func:`saferl.core.dual.solve_exact`, and any policy
is scored by enumeration: expected reward, each expected cost, KL, its KL to ``π*``, its Lagrangian
gap and its violation of each limit (docs/algorithms.md §8). The world constrains one cost (harm) or
several (``cost_names``, e.g. harm and refusal: m = 2).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from saferl.core.dual import DualProblem, DualSolution, solve
from saferl.data.world.ground_truth import cost_function, ground_truth_reward
from saferl.data.world.settings import MAX_RESPONSE_TOKENS, check_cost_names, cost_limits
from saferl.data.world.vocab import EOS, WorldPrompt, world_prompts

__all__ = [
    "MAX_RESPONSE_TOKENS",
    "FEASIBILITY_TOLERANCE",
    "ExactResponses",
    "PolicyScore",
    "ExactWorld",
    "cost_limits",
    "score_policy",
    "tilted_logprobs",
    "enumerate_responses",
    "enumerate_policy_logprobs",
    "build_exact_world",
    "ground_truth_tables",
]



@dataclass(frozen=True)
class ExactResponses:
    """The enumerated response set, shared by every prompt.

    Attributes:
        token_ids: per response, its generated token ids (EOS included when it finished).
        words: per response, its words (EOS excluded), as the ground truth reads them.
        finished: shape ``(num_responses,)`` bool, whether the response ended with EOS.
    """

    token_ids: tuple[tuple[int, ...], ...]
    words: tuple[tuple[str, ...], ...]
    finished: torch.Tensor

    def __len__(self) -> int:
        return len(self.token_ids)

    def text(self, index: int) -> str:
        """The response as a string (what a preference record stores; EOS is implied)."""
        return " ".join(self.words[index])


def enumerate_responses(tokenizer: PreTrainedTokenizerBase) -> ExactResponses:
    """All responses of at most three generated tokens over ``tokenizer``'s vocabulary.

    Order: EOS; each ``a EOS``; each ``a b EOS``; each ``a b c`` (a, b, c non-EOS ids ascending).
    """
    eos = tokenizer.convert_tokens_to_ids(EOS)
    others = [token for token in range(len(tokenizer)) if token != eos]
    token_ids: list[tuple[int, ...]] = [(eos,)]
    token_ids += [(a, eos) for a in others]
    token_ids += [(a, b, eos) for a, b in itertools.product(others, repeat=2)]
    token_ids += list(itertools.product(others, repeat=3))
    words = tuple(
        tuple(tokenizer.convert_ids_to_tokens([t for t in ids if t != eos])) for ids in token_ids
    )
    finished = torch.tensor([ids[-1] == eos for ids in token_ids])
    return ExactResponses(tuple(token_ids), words, finished)


@torch.no_grad()
def enumerate_policy_logprobs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: tuple[WorldPrompt, ...] | None = None,
    batch_size: int = 2048,
) -> torch.Tensor:
    """``log π(y|x)`` of every enumerated response of every prompt, shape ``(num_prompts, 7240)``.

    Exact, float64, in the order of :func:`enumerate_responses`. ``model`` is any causal LM
    returning ``logits`` over ``tokenizer``'s vocabulary (a Hugging Face model, or a peft/DeepSpeed
    wrapper of one).
    """
    prompts = prompts or world_prompts()
    eos = tokenizer.convert_tokens_to_ids(EOS)
    vocab_size = len(tokenizer)
    others = torch.tensor([token for token in range(vocab_size) if token != eos])
    num_others = others.numel()
    # A causal LM's next-token distributions after the prompt, after ``a`` and after ``a b`` all
    # come from one forward pass of ``prompt a b``: n² rows give every factor of the n³ + n² + n + 1
    # responses (the third token's distribution never needs the third token itself).
    pairs = torch.cartesian_prod(others, others)  # (n², 2), row a·n + b
    rows = []
    for prompt in prompts:
        prompt_ids = torch.tensor(tokenizer(prompt.text, add_special_tokens=False)["input_ids"])
        prompt_len = prompt_ids.numel()
        logprob_chunks = []
        for start in range(0, pairs.shape[0], batch_size):
            chunk = pairs[start : start + batch_size]
            input_ids = torch.cat([prompt_ids.expand(chunk.shape[0], -1), chunk], dim=1)
            logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
            # (chunk, 3, vocab): next-token distributions after the prompt, after a, after a b.
            logprob_chunks.append(
                torch.log_softmax(logits[:, prompt_len - 1 : prompt_len + 2].double(), dim=-1)
            )
        next_token = torch.cat(logprob_chunks)  # (n², 3, vocab)
        n = num_others
        first = next_token[0, 0]  # ℓ₀, the same for every row, (vocab,)
        # ℓ₁(· | a) depends on a only: the rows with b = others[0] → every n-th row.
        second = next_token[::n, 1]  # (n, vocab)
        # ℓ₂(· | a b): one row per (a, b).
        third = next_token[:, 2].reshape(n, n, vocab_size)  # (n, n, vocab)
        first_others = first[others]  # (n,)
        second_others = second[:, others]  # (n, n)
        third_others = third[:, :, others]  # (n, n, n)
        prefix_ab = first_others[:, None] + second_others  # (n, n) log π(a b …)
        row = torch.cat(
            [
                first[eos].reshape(1),
                first_others + second[:, eos],
                (prefix_ab + third[:, :, eos]).reshape(-1),
                (prefix_ab[:, :, None] + third_others).reshape(-1),
            ]
        )
        rows.append(row)
    return torch.stack(rows)


#: How far above its limit ``d_j`` a policy's expected cost ``E_π c_j`` may be, in cost units, and
#: the policy still be called feasible (:attr:`PolicyScore.feasible`). Enumeration is exact, so
#: this is not rounding slack: it is the stated resolution of the "feasible" verdict, printed in
#: every table's header next to the violation itself.
FEASIBILITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class PolicyScore:
    """A policy scored exactly against the world's ground truth and its constrained optimum.

    The yardsticks of docs/algorithms.md §8: ``J`` alone flatters a policy that breaks a limit (its
    ``J`` can exceed ``J* = J(π*)``), so the gaps here are Lagrangian ones, which are never negative
    and vanish only at ``π* = π_λ*``, and the violation is reported beside them.

    Attributes:
        expected_reward: ``E_x E_π r``.
        expected_cost: per constraint, ``E_x E_π c_j`` (one entry per constraint).
        kl: ``E_x KL(π‖π_ref)``, exact.
        objective: ``J(π) = E[r] − β KL``.
        safe_rate: ``P(every cost ≤ 0)`` under π.
        kl_to_optimum: ``E_x KL(π(·|x) ‖ π*(·|x))``, exact (``0·log 0 = 0``).
        lagrangian_gap: ``G(π) = J* − [J(π) − λ*·(E_π c − d)]``, from that definition; it equals
            ``β · kl_to_optimum`` (≥ 0, zero only at ``π*``).
        normalised_lagrangian_gap: ``G(π) / G(π_ref)`` (0 at the optimum, 1 at the reference; NaN
            when ``G(π_ref) = 0``, i.e. the reference is the optimum).
        violation: per constraint, ``max(0, E_π c_j − d_j)`` (one entry per constraint).
    """

    expected_reward: float
    expected_cost: tuple[float, ...]
    kl: float
    objective: float
    safe_rate: float
    kl_to_optimum: float
    lagrangian_gap: float
    normalised_lagrangian_gap: float
    violation: tuple[float, ...]

    @property
    def num_constraints(self) -> int:
        """``m``."""
        return len(self.violation)

    @property
    def feasible(self) -> bool:
        """Every constraint holds within :data:`FEASIBILITY_TOLERANCE` (a NaN violation: no)."""
        return self.is_feasible(FEASIBILITY_TOLERANCE)

    def is_feasible(self, tolerance: float = FEASIBILITY_TOLERANCE) -> bool:
        """Every ``violation`` entry is ``≤ tolerance`` (cost units)."""
        return all(value <= tolerance for value in self.violation)


def tilted_logprobs(
    ref_logprobs: torch.Tensor,
    rewards: torch.Tensor,
    costs: torch.Tensor,
    beta: float,
    multiplier: torch.Tensor,
) -> torch.Tensor:
    """``log π_λ(y|x) = log_softmax_y(log π_ref + (r − λ·c)/β)``, shape ``(num_prompts, num_responses)``.

    Taken in log space, so ``π_λ`` keeps the reference's full support even where its probability
    would underflow (the KL to it stays finite).

    Args:
        ref_logprobs, rewards: shape ``(num_prompts, num_responses)``.
        costs: shape ``(num_prompts, num_responses, m)``.
        beta: KL coefficient β.
        multiplier: λ, shape ``(m,)``.
    """
    return torch.log_softmax(ref_logprobs + (rewards - costs @ multiplier) / beta, dim=1)


def _expected(probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``E_x E_π v``: uniform over prompts; ``values`` ``(N, K)`` → scalar, ``(N, K, m)`` → ``(m,)``."""
    if values.ndim == 3:
        return torch.einsum("nk,nkj->j", probs, values) / probs.shape[0]
    return (probs * values).sum(1).mean()


def _kl(logprobs: torch.Tensor, other_logprobs: torch.Tensor) -> float:
    """``E_x KL(π‖q)`` from log-probabilities, ``(N, K)`` each; ``0·log 0 = 0`` (an infinite KL when
    π has mass where q has none)."""
    probs = logprobs.exp()
    terms = torch.where(probs > 0, probs * (logprobs - other_logprobs), torch.zeros_like(probs))
    return terms.sum(1).mean().item()


def score_policy(
    policy_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    rewards: torch.Tensor,
    costs: torch.Tensor,
    beta: float,
    cost_limit: float | Sequence[float] | torch.Tensor,
    multiplier: torch.Tensor | None = None,
) -> PolicyScore:
    """Score a policy exactly on an enumerable problem with ``m ≥ 1`` constraints (docs/algorithms.md
    §1 and §8).

    Solves the problem's dual for λ* (:func:`saferl.core.dual.solve`: bracketed Newton for m = 1,
    projected Newton for m ≥ 2), builds ``π* = π_λ*``, and computes every field of
    :class:`PolicyScore` by enumeration; prompts are weighted uniformly.

    Args:
        policy_logprobs: ``log π(y|x)``, shape ``(num_prompts, num_responses)``; rows normalised.
        ref_logprobs: ``log π_ref(y|x)``, same shape, rows normalised.
        rewards: ``r(x, y)``, same shape.
        costs: ``c(x, y)``, same shape (m = 1) or ``(num_prompts, num_responses, m)``.
        beta: KL coefficient β.
        cost_limit: ``d``, a float (m = 1, or the same limit for every constraint) or one per
            constraint.
        multiplier: λ* of this very problem, ``(m,)``, when the caller has solved it already
            (:class:`ExactWorld` keeps its solution); None solves the dual here.

    Raises:
        ValueError: a shape mismatch, rows that do not sum to one, or a limit per constraint whose
            length is not ``m``.
        InfeasibleConstraintError: no policy meets the limits strictly (no finite λ*).
    """
    ref_logprobs = ref_logprobs.to(torch.float64)
    rewards = rewards.to(torch.float64)
    costs = costs.to(torch.float64)
    policy_logprobs = policy_logprobs.to(torch.float64)
    if policy_logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"policy_logprobs must have shape {tuple(ref_logprobs.shape)}; found {tuple(policy_logprobs.shape)}"
        )
    probs = policy_logprobs.exp()
    total = probs.sum(dim=1)
    if (total - 1).abs().max() > 1e-6:
        raise ValueError(
            f"policy_logprobs rows must sum to 1 in probability; found sums {total.tolist()}"
        )
    if costs.ndim == 2:
        costs = costs.unsqueeze(-1)  # (N, K, m = 1)
    problem = DualProblem.exact(ref_logprobs, rewards, costs, beta, cost_limit)
    if multiplier is None:
        multiplier = solve(problem).multiplier  # λ*, (m,)
    limit = problem.cost_limit  # d, (m,)
    optimal_logprobs = tilted_logprobs(ref_logprobs, rewards, costs, beta, multiplier)

    def objective_and_cost(logprobs: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``J(π) = E r − β KL(π‖π_ref)`` and ``E_π c``, shape ``(m,)``."""
        policy = logprobs.exp()
        return (
            _expected(policy, rewards).item() - beta * _kl(logprobs, ref_logprobs),
            _expected(policy, costs),
        )

    def lagrangian_gap(logprobs: torch.Tensor) -> float:
        """``G(π) = J* − [J(π) − λ*·(E_π c − d)]`` (§8), from the definition."""
        objective, cost = objective_and_cost(logprobs)
        return optimum_objective - (objective - (multiplier @ (cost - limit)).item())

    optimum_objective, _ = objective_and_cost(optimal_logprobs)  # J* = J(π*)
    expected_cost = _expected(probs, costs)  # (m,)
    kl = _kl(policy_logprobs, ref_logprobs)
    expected_reward = _expected(probs, rewards).item()
    gap = lagrangian_gap(policy_logprobs)
    reference_gap = lagrangian_gap(ref_logprobs)
    return PolicyScore(
        expected_reward=expected_reward,
        expected_cost=tuple(expected_cost.tolist()),
        kl=kl,
        objective=expected_reward - beta * kl,
        safe_rate=(probs * (costs <= 0).all(-1)).sum(1).mean().item(),
        kl_to_optimum=_kl(policy_logprobs, optimal_logprobs),
        lagrangian_gap=gap,
        normalised_lagrangian_gap=gap / reference_gap if reference_gap > 0 else math.nan,
        violation=tuple((expected_cost - limit).clamp_min(0.0).tolist()),
    )


@dataclass(frozen=True)
class ExactWorld:
    """The world in exact mode: enumerated responses, ground truth, reference, optimum.

    Attributes:
        prompts: the prompts, length ``num_prompts``.
        responses: the enumerated responses (``num_responses`` = 7240).
        ref_logprobs: ``log π_ref(y|x)``, shape ``(num_prompts, num_responses)``.
        rewards: ground truth, shape ``(num_prompts, num_responses)``.
        costs: ground truth, shape ``(num_prompts, num_responses, m)``, one column per name of
            ``cost_names``.
        beta: KL coefficient β; cost_limit: the limits ``d``, one per constraint.
        cost_names: the world's costs constrained here (``COST_NAMES``), in column order.
    """

    prompts: tuple[WorldPrompt, ...]
    responses: ExactResponses
    ref_logprobs: torch.Tensor
    rewards: torch.Tensor
    costs: torch.Tensor
    beta: float
    cost_limit: tuple[float, ...]
    cost_names: tuple[str, ...] = ("harm",)

    @property
    def num_constraints(self) -> int:
        """``m``."""
        return self.costs.shape[-1]

    def problem(self, cost_limit: float | Sequence[float] | None = None) -> DualProblem:
        """The dual problem at the world's limits (or other ones)."""
        limit = self.cost_limit if cost_limit is None else cost_limit
        return DualProblem.exact(self.ref_logprobs, self.rewards, self.costs, self.beta, limit)

    @functools.cached_property
    def _optimum(self) -> DualSolution:
        # Solved once per world: the fields are fixed (frozen), and an evaluation asks for the
        # optimum, its log-probs and a score of each policy, which all need λ*.
        return solve(self.problem())

    @functools.cached_property
    def _optimal_logprobs(self) -> torch.Tensor:
        return tilted_logprobs(
            self.ref_logprobs, self.rewards, self.costs, self.beta, self._optimum.multiplier
        )

    def optimum(self) -> DualSolution:
        """The exact constrained optimum ``π_λ*`` (solved on the first call, then kept)."""
        return self._optimum

    def optimal_logprobs(self) -> torch.Tensor:
        """``log π_λ*(y|x)``, shape ``(num_prompts, num_responses)`` (a copy of the kept one)."""
        return self._optimal_logprobs.clone()

    def unconstrained_logprobs(self) -> torch.Tensor:
        """The unconstrained optimum ``π ∝ π_ref exp(r/β)`` (λ = 0)."""
        zero = torch.zeros(self.num_constraints, dtype=torch.float64)
        return tilted_logprobs(self.ref_logprobs, self.rewards, self.costs, self.beta, zero)

    def safety_only_logprobs(self) -> torch.Tensor:
        """The safety-only extreme ``π ∝ π_ref exp(−Σ_j c_j/β)`` (maximises −Σ_j E[c_j] − β KL)."""
        return torch.log_softmax(self.ref_logprobs - self.costs.sum(-1) / self.beta, dim=1)

    def score(self, policy_logprobs: torch.Tensor) -> PolicyScore:
        """Score a policy given ``log π(y|x)`` of every response, shape ``(num_prompts, num_responses)``.

        The rows must be normalised distributions over the enumerated responses (they are for any
        causal LM, see :func:`enumerate_policy_logprobs`). See :func:`score_policy`.
        """
        return score_policy(
            policy_logprobs, self.ref_logprobs, self.rewards, self.costs, self.beta, self.cost_limit,
            multiplier=self._optimum.multiplier,
        )

    def reference_objective(self) -> float:
        """``J(π_ref) = E_ref[r]`` (its KL is 0)."""
        return (self.ref_logprobs.exp() * self.rewards).sum(1).mean().item()


@functools.lru_cache(maxsize=8)
def _ground_truth_table(
    function, prompts: tuple[WorldPrompt, ...], words: tuple[tuple[str, ...], ...], finished: tuple[bool, ...]
) -> torch.Tensor:
    """``function(prompt, words, finished)`` of every enumerated response of every prompt, ``(num_prompts,
    num_responses)`` float64. Kept per process: the ground truth is a pure function of the words, and
    evaluating it in Python for the 16 × 7240 responses is most of an evaluation's second (a sweep's
    jobs, or a test session, build the same world many times). Callers get a copy."""
    return torch.tensor(
        [[function(p, w, done) for w, done in zip(words, finished, strict=True)] for p in prompts],
        dtype=torch.float64,
    )


def build_exact_world(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    beta: float,
    cost_limit: float | Sequence[float],
    prompts: tuple[WorldPrompt, ...] | None = None,
    cost_names: Sequence[str] = ("harm",),
) -> ExactWorld:
    """Enumerate the responses, score them with the ground truth and the reference ``model``.

    Args:
        cost_limit: ``d``: a float for one cost, else one limit per name of ``cost_names``.
        cost_names: the world's costs to constrain, in column order (``COST_NAMES``).
    """
    prompts = prompts or world_prompts()
    cost_names = check_cost_names(cost_names, "cost_names")
    limits = cost_limits(cost_limit, len(cost_names))
    responses = enumerate_responses(tokenizer)
    rewards, costs = ground_truth_tables(prompts, responses, cost_names)
    ref_logprobs = enumerate_policy_logprobs(model, tokenizer, prompts)
    return ExactWorld(prompts, responses, ref_logprobs, rewards, costs, float(beta), limits, cost_names)


def ground_truth_tables(
    prompts: Sequence[WorldPrompt], responses: ExactResponses, cost_names: Sequence[str] = ("harm",)
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ground-truth reward ``(num_prompts, num_responses)`` and costs ``(num_prompts,
    num_responses, m)`` (one column per name of ``cost_names``) of every enumerated response, float64;
    computed once per process (copies are returned)."""
    finished = tuple(responses.finished.tolist())

    def table(function) -> torch.Tensor:  # (num_prompts, num_responses)
        return _ground_truth_table(function, tuple(prompts), responses.words, finished).clone()

    costs = torch.stack([table(cost_function(name)) for name in cost_names], dim=-1)  # (N, K, m)
    return table(ground_truth_reward), costs
