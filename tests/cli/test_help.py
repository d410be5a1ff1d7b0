"""``saferl --help``: every config group with its options and one-line description, and every
root key with its default and comment, from the real console entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from saferl.conf_tree import CONFIG_DIR, group_options, root_entries

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["saferl.cli", "saferl"])  # python -m saferl is the same command
def test_help_lists_the_groups_and_the_commented_root_keys(tmp_path, module):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                               cwd=tmp_path, timeout=120, env={**env, "COLUMNS": "200"})
    assert completed.returncode == 0, completed.stderr
    text = completed.stdout
    assert text.startswith("usage: saferl") and "Powered by Hydra" not in text  # not Hydra's generic text
    assert list(tmp_path.iterdir()) == []  # --help runs nothing
    flat = " ".join(text.split())  # long lines wrap at the terminal's width
    groups, keys = root_entries()
    # Every group of the root config's defaults list is shown, with the default marked and the
    # description its YAML comment gives.
    root = yaml.safe_load((Path(CONFIG_DIR) / "config.yaml").read_text())
    listed = [next(iter(entry)) for entry in root["defaults"] if isinstance(entry, dict)]
    assert [g.name for g in groups] == [name for name in listed if "@" not in name and " " not in name]
    for group in groups:
        options = " ".join(f"{o}*" if o == group.default else o for o in group_options(group.name))
        assert f" {group.name} {options} {group.comment}" in flat and group.comment
    assert "learner     cdpo mocan pecan ppo_lag* preference rbr" in text
    assert "the algorithm: ppo_lag, mocan, pecan, preference, rbr or cdpo" in text
    # Every root key with its default (as composed) and comment.
    assert {k.name for k in keys} == {k for k in root if k not in ("defaults", "hydra")}
    for key in keys:
        assert f" {key.name}={key.default} {key.comment}" in flat
    assert "beta=0.5" in text and "β > 0 of max E[r] − β KL(π‖π_ref)" in text
