"""What a config is checked against on the built-in world, without torch or transformers: the
world's cost names, the cost limits (one per cost), the longest response of the exact mode and the
reference policy's shape and SFT recipe (:class:`ReferenceConfig`).

The modules that use them re-export them (:mod:`~saferl.data.world.ground_truth`,
:mod:`~saferl.data.world.exact`, :mod:`~saferl.data.world.reference`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = ["COST_NAMES", "MAX_RESPONSE_TOKENS", "ReferenceConfig", "check_cost_names", "cost_limits"]

#: The world's costs by name, in the order a run lists them (``world.costs``).
COST_NAMES = ("harm", "refusal")

#: The longest response the exact mode enumerates (tokens, EOS included).
MAX_RESPONSE_TOKENS = 3


def check_cost_names(names: Sequence[str], key: str = "world.costs") -> tuple[str, ...]:
    """``names`` as a tuple, or a ValueError naming ``key``: a non-empty list of distinct names
    from :data:`COST_NAMES`."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"{key}: expected a non-empty list of cost names from {list(COST_NAMES)}; found {names!r}")
    unknown = [name for name in names if name not in COST_NAMES]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f"{key}: expected distinct cost names from {list(COST_NAMES)}; found {list(names)!r}"
            + (f" (unknown: {unknown})" if unknown else " (repeated)")
        )
    return tuple(names)


def cost_limits(cost_limit: float | Sequence[float], num_constraints: int, key: str = "cost_limit") -> tuple[float, ...]:
    """``d`` as one float per constraint: a float is the single constraint's limit (m = 1); a
    list must hold ``num_constraints`` numbers. A ValueError names ``key``, the expected length and
    what was found."""
    values = [cost_limit] if isinstance(cost_limit, (int, float)) and not isinstance(cost_limit, bool) \
        else cost_limit
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != num_constraints \
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        expected = "a number" if num_constraints == 1 else f"a list of {num_constraints} numbers"
        raise ValueError(
            f"{key}: expected {expected} (one limit per cost, m = {num_constraints}); found {cost_limit!r}"
        )
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class ReferenceConfig:
    """How the reference policy is built and SFT-ed.

    Attributes:
        hidden_size, num_layers, num_heads, intermediate_size: the tiny Llama's shape.
        num_examples: demonstrations drawn from the demonstrator.
        steps: AdamW steps; batch_size: examples per step; learning_rate: AdamW step size.
        seed: seeds the demonstrations, the initialisation and the batch order.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 128
    num_examples: int = 4000
    steps: int = 300
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0

    def fingerprint(self) -> str:
        """A short hash of the config (names the cache folder)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
