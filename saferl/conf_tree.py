"""Where saferl's Hydra config tree is, and what its root config says about itself.

The tree lives at the repository root (``conf/``); ``saferl/conf`` links to it so that it ships
inside the package. An editable install reads it through the link, a regular ``pip install .``
from the package data: ``CONFIG_DIR`` is the same expression either way.

The root config's comments are its documentation (``saferl --help`` prints them). YAML loaders
drop comments, so :func:`root_entries` reads ``config.yaml`` as text: the lines of its defaults
list (``- group: option  # what``) and its top-level keys (``key: value  # what``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

__all__ = ["CONFIG_DIR", "ConfEntry", "group_options", "root_entries"]

CONFIG_DIR = str(files("saferl") / "conf")

# "  - learner: ppo_lag     # the algorithm: ..." (also "- optional a@b: c  # ..." and "- _self_  # ...")
_DEFAULT_LINE = re.compile(r"^\s+-\s+(?:optional\s+)?(?P<name>[\w@/]+)(?::\s*(?P<value>[^#]*?))?\s*(?:#\s*(?P<comment>.*))?$")
# "beta: 0.5             # β > 0 of ..."
_KEY_LINE = re.compile(r"^(?P<name>[A-Za-z_]\w*):\s*(?P<value>[^#]*?)\s*(?:#\s*(?P<comment>.*))?$")


@dataclass(frozen=True)
class ConfEntry:
    """One line of the root config: a config group (``group=option``) or a root key.

    Attributes:
        name: the group or key name.
        default: the default option or value, as written.
        comment: the line's comment (its one-line description).
    """

    name: str
    default: str
    comment: str


def root_entries(config_dir: str | Path = CONFIG_DIR) -> tuple[list[ConfEntry], list[ConfEntry]]:
    """The root config's groups (its defaults list, without ``_self_`` and package-relocated
    entries such as ``debug_learner@learner``) and its commented top-level keys, in file order."""
    groups: list[ConfEntry] = []
    keys: list[ConfEntry] = []
    in_defaults = False
    for line in (Path(config_dir) / "config.yaml").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("defaults:"):
            in_defaults = True
            continue
        if in_defaults and line.startswith((" ", "\t")):
            match = _DEFAULT_LINE.match(line)
            if match and match["value"] is not None and "@" not in match["name"]:
                groups.append(ConfEntry(match["name"], match["value"], match["comment"] or ""))
            continue
        in_defaults = False
        match = _KEY_LINE.match(line)
        if match and match["name"] != "hydra":
            keys.append(ConfEntry(match["name"], match["value"], match["comment"] or ""))
    return groups, keys


def group_options(group: str, config_dir: str | Path = CONFIG_DIR) -> list[str]:
    """The options of config group ``group`` (the YAML files of ``conf/<group>/``), sorted."""
    return sorted(path.stem for path in (Path(config_dir) / group).glob("*.yaml"))
