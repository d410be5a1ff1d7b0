"""PPO-Lagrangian and MoCAN's PPO stage share one rollout, advantage and update path (DESIGN.md).

Static checks over the learners' source: each piece of RL math is called from exactly one module,
the PPO loop is built in exactly one place, and MoCAN's PPO stage reaches it through that place
with a fixed multiplier. A copy of the rollout, the advantages or the update anywhere else — or a
MoCAN that bypasses the shared loop — fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import torch

import saferl.learners
from saferl.core.multipliers import FixedMultiplier, build_multiplier

LEARNERS = Path(saferl.learners.__file__).parent


def calls_by_module() -> dict[str, set[str]]:
    """For each learners module, the names it calls (``f(...)`` and ``x.f(...)``)."""
    result = {}
    for path in sorted(LEARNERS.glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                function = node.func
                if isinstance(function, ast.Name):
                    names.add(function.id)
                elif isinstance(function, ast.Attribute):
                    names.add(function.attr)
        result[path.name] = names
    return result


def callers(name: str) -> set[str]:
    return {module for module, names in calls_by_module().items() if name in names}


def test_each_piece_of_rl_math_has_one_caller():
    # Streams, GAE and the combined advantage: only the shared advantage stage.
    for name in ("safe_rlhf_token_streams", "gae", "combined_advantage"):
        assert callers(name) == {"advantages.py"}, name
    # PPO losses: only the shared update.
    for name in ("ppo_policy_loss", "ppo_value_loss"):
        assert callers(name) == {"ppo_update.py"}, name
    # The shared stages themselves: only the PPO loop calls them.
    for name in ("compute_advantages", "update_policy", "update_critic"):
        assert callers(name) == {"ppo_lag.py"}, name
    # Generation for rollouts happens in the experience maker (MoCAN/PeCAN sample the reference
    # for the dual, not for PPO).
    assert "make" in calls_by_module()["ppo_lag.py"]


def test_the_ppo_loop_is_built_in_one_place_and_mocan_reaches_it():
    assert callers("PPOLagrangian") == {"pipeline.py"}
    assert callers("ExperienceMaker") == {"pipeline.py"}
    # MoCAN's PPO stage goes through the pipeline's PPO stage, with a fixed multiplier.
    assert "run_ppo_stage" in calls_by_module()["mocan.py"]
    mocan_source = (LEARNERS / "mocan.py").read_text()
    assert '"kind": "fixed"' in mocan_source
    for forbidden in (
        "saferl.core.advantages",
        "saferl.core.ppo",
        "saferl.learners.ppo_update",
        "saferl.learners.advantages",
    ):
        assert forbidden not in mocan_source, forbidden


def test_the_fixed_multiplier_config_builds_a_fixed_multiplier():
    multiplier = build_multiplier("fixed", -0.8, value=[0.65])
    assert isinstance(multiplier, FixedMultiplier)
    assert multiplier.value.tolist() == [0.65]
    multiplier.update(torch.tensor([5.0, 5.0]))  # far above the limit: λ stays
    assert multiplier.value.tolist() == [0.65]
