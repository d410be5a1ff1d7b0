"""``saferl --help``: the config groups with their options and one-line descriptions, and the
root keys with their defaults and comments — all read from ``conf/config.yaml``, whose comments
are the documentation (:mod:`saferl.conf_tree`), so the help cannot drift from the config."""

from __future__ import annotations

import shutil
import textwrap

from saferl.conf_tree import CONFIG_DIR, group_options, root_entries

__all__ = ["render_help"]

_USAGE = """\
usage: saferl [group=option ...] [key=value ...] [dotted.key=value ...] [-m] [--verbose]

Constrained RLHF: max E[r] − β KL(π‖π_ref) subject to E[c] ≤ d. With no arguments, the whole Safe
RLHF pipeline (SFT, reward and cost models, PPO-Lagrangian, exact evaluation) on the built-in
safety world, on a CPU in minutes. Every key is checked before anything runs."""

_OPTIONS = """\
options:
  -m, --multirun      run a sweep: saferl -m cost_limit=-1.0,-0.8 (sweep=<preset> sets it itself)
  --cfg job           print the composed config (every key of every group) and exit
  --verbose           print an error's traceback as well (or set HYDRA_FULL_ERROR=1)
  --hydra-help        Hydra's own options (run folders, launchers, shell completion)
  -h, --help          this text

examples:
  saferl scorers=oracle                    judge the optimiser with the ground-truth scorers
  saferl learner=mocan cost_limit=-1.0     MoCAN at another cost limit
  saferl debug=tiny                        every stage, seconds each
  saferl --cfg job learner=pecan           the keys of a group, with their values

More: README.md (the entry point) and docs/ (algorithms, architecture, extending)."""


def _wrapped(label: str, text: str, width: int, indent: int) -> list[str]:
    """``label`` padded to ``indent`` columns, then ``text`` wrapped under it."""
    lines = textwrap.wrap(text, width=max(width - indent, 30)) or [""]
    first = label.ljust(indent) if len(label) < indent else label + "\n" + " " * indent
    return [first + lines[0], *(" " * indent + line for line in lines[1:])]


def render_help(config_dir: str = CONFIG_DIR, width: int | None = None) -> str:
    """The text ``saferl --help`` prints."""
    width = width or min(shutil.get_terminal_size((100, 24)).columns, 110)
    groups, keys = root_entries(config_dir)
    out = [_USAGE, "", "config groups (group=option; * marks the default):"]
    for group in groups:
        options = [f"{o}*" if o == group.default else o for o in group_options(group.name, config_dir)]
        out += _wrapped(f"  {group.name}", " ".join(options), width, 14)
        out += _wrapped("", group.comment, width, 14)
    out += ["", "root keys (key=value; default after =):"]
    for key in keys:
        out += _wrapped(f"  {key.name}={key.default}", key.comment, width, 26)
    out += ["", "Any key of a group is set with its dotted name, e.g. learner.iterations=300.", "", _OPTIONS]
    return "\n".join(out)
