"""A regular (non-editable) install finds its config tree: the wheel carries ``conf/`` as package
data, and ``saferl`` composes it from the installed package, not from a checkout.

The wheel is built from a copy of the sources (nothing is written into the checkout) and installed
with ``pip install --no-deps --target`` beside the environment's dependencies; the commands run
outside the checkout with the installed package first on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def pip(*args: str, cwd: Path) -> None:
    completed = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, cwd=cwd,
                               timeout=300)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("saferl", "conf"):  # saferl/conf is a link to ../conf: copied as a link
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip("wheel", "--no-deps", "--no-build-isolation", "--quiet", "--wheel-dir", str(root / "wheels"), str(source),
        cwd=root)
    (wheel,) = (root / "wheels").glob("saferl-*.whl")
    pip("install", "--no-deps", "--no-index", "--quiet", "--target", str(root / "site"), str(wheel), cwd=root)
    return root / "site"


def saferl(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = str(site)  # the installed package before any editable install of the checkout
    return subprocess.run([sys.executable, "-m", "saferl.cli", *args], capture_output=True, text=True,
                          cwd=site.parent, timeout=300, env=env)


def test_the_installed_package_carries_the_config_tree(installed):
    conf = installed / "saferl" / "conf"
    assert (conf / "config.yaml").is_file() and not conf.is_symlink()
    source = sorted(p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.yaml"))
    assert sorted(p.relative_to(conf) for p in conf.rglob("*.yaml")) == source
    where = subprocess.run(
        [sys.executable, "-c", "import saferl, saferl.cli as c; print(saferl.__file__); print(c.CONFIG_DIR)"],
        capture_output=True, text=True, cwd=installed.parent, env={**os.environ, "PYTHONPATH": str(installed)},
        timeout=300,
    )
    module, config_dir = where.stdout.split()
    assert Path(module).is_relative_to(installed) and Path(config_dir) == conf


def test_the_installed_command_composes_its_config(installed):
    composed = saferl(installed, "--cfg", "job", "learner=mocan")  # Hydra's own path (hydra.main)
    assert composed.returncode == 0, composed.stderr
    assert "Primary config directory not found" not in composed.stderr
    assert "name: mocan" in composed.stdout and "cost_limit: -0.8" in composed.stdout
    checked = saferl(installed, "learnr=mocan")  # the preflight's compose
    assert checked.returncode == 2
    assert "did you mean `learner`?" in checked.stderr
