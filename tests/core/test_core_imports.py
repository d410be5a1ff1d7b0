"""``saferl/core`` is pure tensor math: it must import no distributed, config or tracking library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import saferl.core

FORBIDDEN = ("torch.distributed", "ray", "deepspeed", "hydra", "omegaconf", "wandb")
CORE_DIR = Path(saferl.core.__file__).parent


def forbidden_imports(source: str) -> list[str]:
    """Every module named by an import statement of ``source`` that is or lies under FORBIDDEN."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            # `from torch import distributed` imports torch.distributed too.
            names = [node.module] if _is_forbidden(node.module) else [
                f"{node.module}.{alias.name}" for alias in node.names
            ]
        else:
            continue
        found += [name for name in names if _is_forbidden(name)]
    return found


def _is_forbidden(name: str) -> bool:
    return any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)


def test_the_checker_catches_each_forbidden_form():
    assert forbidden_imports("import ray") == ["ray"]
    assert forbidden_imports("import torch.distributed as dist") == ["torch.distributed"]
    assert forbidden_imports("from torch import distributed") == ["torch.distributed"]
    assert forbidden_imports("from omegaconf import DictConfig") == ["omegaconf"]
    assert forbidden_imports("def f():\n    import wandb\n") == ["wandb"]
    assert forbidden_imports("import torch\nimport rayon\nfrom torch.nn import functional") == []


def test_no_core_module_imports_a_forbidden_library():
    modules = sorted(CORE_DIR.rglob("*.py"))
    assert len(modules) >= 2
    offenders = {
        str(path.relative_to(CORE_DIR)): names
        for path in modules
        if (names := forbidden_imports(path.read_text()))
    }
    assert offenders == {}


def test_importing_core_loads_no_forbidden_package():
    # torch itself loads torch.distributed, so the run-time check covers the other packages.
    code = (
        "import sys, saferl.core, saferl.core.dual\n"
        "bad = {'ray', 'deepspeed', 'hydra', 'omegaconf', 'wandb'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & bad))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]"
