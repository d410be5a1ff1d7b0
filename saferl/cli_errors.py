"""Hydra's composition errors, said in saferl's terms: the override, what is wrong, the nearest
valid key or option (``difflib``), and the extra to install when a launcher plugin is missing.

Hydra answers a mistyped key with ``Could not override 'learnr'. To append to your config use
+learnr=mocan``: the ``+`` advice adds a key that validation then refuses. Here the same mistake
reads ``learnr=mocan: the root config has no key or group 'learnr'; did you mean `learner`?``.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from difflib import get_close_matches
from pathlib import Path

from omegaconf import DictConfig

__all__ = ["UsageError", "LAUNCHER_PLUGINS", "explain_composition_error", "missing_launcher_plugin"]


class UsageError(Exception):
    """A mistake in the command line, the config or the data: the message is all the user needs
    (``saferl`` prints it alone and exits with status 2)."""


# Hydra launcher option -> (saferl's way of choosing it, the plugin's module, its distribution).
LAUNCHER_PLUGINS = {
    "ray": ("launcher=ray", "hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher"),
    "submitit_slurm": ("launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_local": ("hydra/launcher=submitit_local", "hydra_plugins.hydra_submitit_launcher",
                       "hydra-submitit-launcher"),
}

_COULD_NOT_OVERRIDE = re.compile(r"Could not override '([^']+)'")
_ALREADY_THERE = re.compile(r"Could not append to config\. An item is already at '([^']+)'")


def missing_launcher_plugin(option: str) -> str | None:
    """The message for Hydra launcher ``option`` when its plugin is not installed, else None."""
    if option not in LAUNCHER_PLUGINS:
        return None
    chosen, module, distribution = LAUNCHER_PLUGINS[option]
    try:
        installed = importlib.util.find_spec(module) is not None
    except ImportError:  # its parent namespace package is absent
        installed = False
    if installed:
        return None
    return (f"{chosen} needs the Hydra launcher plugin {distribution}, which is not installed; it comes with "
            "the launchers extra: pip install 'saferl[launchers]' (or pip install -e '.[launchers]' in a checkout)")


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _value_of(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


def _suggest(word: str, candidates: Sequence[str]) -> str | None:
    close = get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_key(key: str, override: str, base: DictConfig, groups: Sequence[str]) -> str:
    """``key`` is not in ``base`` (the config composed without the failing override): name the
    first missing part of the dotted path and the nearest key at that level."""
    node: object = base
    known: list[str] = []
    parts = key.split(".")
    for index, part in enumerate(parts):
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
            known.append(part)
            continue
        where = ".".join(known)
        if not isinstance(node, DictConfig):
            return f"{override}: {where} is a value, not a section (it has no key {part!r})"
        candidates = [str(k) for k in node.keys()]
        if index == 0:  # a root word may also be a group whose options live elsewhere (sweep=..., experiment=...)
            candidates = sorted(set(candidates) | set(groups))
        near = _suggest(part, candidates)
        what = "key or group" if index == 0 else "key"
        message = f"{override}: {'the root config' if not where else where} has no {what} {part!r}"
        if near is not None:
            fixed = ".".join([*known, near, *parts[index + 1:]])
            return f"{message}; did you mean `{fixed}`? ({fixed}={_value_of(override)})"
        shown = ", ".join(sorted(c for c in candidates if not c.startswith("_")))
        return f"{message}; its keys: {shown}"
    return f"{override}: could not set {key}"


def explain_composition_error(error: Exception, overrides: Sequence[str], compose: Callable[[list[str]], DictConfig],
                              config_dir: str) -> UsageError:
    """A :class:`UsageError` for a Hydra composition ``error`` raised by ``compose(overrides)``.

    Args:
        error: what Hydra's compose raised.
        overrides: the command line's overrides.
        compose: composes a list of overrides (the config the failing override was applied to).
        config_dir: the config tree (its sub-folders are the groups).
    """
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(error)
    groups = sorted(p.name for p in Path(config_dir).iterdir() if p.is_dir())
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options is not None:
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        if group == "hydra/launcher":
            plugin = missing_launcher_plugin(option)
            if plugin is not None:
                return UsageError(plugin)
        options = [str(o) for o in error.options]
        message = f"{group}={option}: {group} has no option {option!r}; its options: {', '.join(options)}"
        near = _suggest(option, options)
        return UsageError(message + (f"; did you mean `{group}={near}`?" if near else ""))
    match = _COULD_NOT_OVERRIDE.search(text)
    if match:
        key = match[1]
        override = next((o for o in overrides if _key_of(o) == key), key)
        try:
            base = compose([o for o in overrides if _key_of(o) != key])
        except Exception:  # another mistake as well: say what Hydra said about this one
            return UsageError(f"{override}: no such config key")
        return UsageError(_unknown_key(key, override, base, groups))
    match = _ALREADY_THERE.search(text)
    if match:
        key = match[1]
        override = next((o for o in overrides if _key_of(o) == key), f"+{key}")
        return UsageError(f"{override}: {key} is already in the config; set it without the +: {key}={_value_of(override)}")
    if isinstance(error, OverrideParseException):
        first = text.splitlines()[0]
        return UsageError(f"cannot read the command line's overrides ({first}); write key=value, a group as "
                          "group=option, a list as key=[a,b], a sweep with saferl -m key=a,b")
    if text.startswith("Ambiguous value for argument"):
        return UsageError(text.replace("add --multirun to your command line", "run saferl -m ..."))
    return UsageError(text)
