"""The settings of the arena's safety judges (``job.judges``), checked without torch.

Each entry of ``job.judges`` is one judge:

* ``ground_truth`` (or ``{kind: ground_truth}``): the built-in world's exact harm cost, a
  response is unsafe when its cost is ``> 0`` (the arena's own "ground truth" judge);
* ``{kind: llamaguard, path: <folder or hub name>}``: a LlamaGuard-style causal LM, prompted with
  its tokenizer's chat template on (user prompt, assistant response); ``P(unsafe)`` from its first
  answer token, categories (``S1``, ``S10``, ...) from a short greedy continuation;
* ``{kind: classifier, path: ...}``: a sequence classifier (HarmBench-classifier style);
  ``P(unsafe)`` is the softmax of its label named unsafe/harmful/yes (or ``unsafe_label``).

:func:`parse_judges` turns the config's list into :class:`JudgeSettings`; its errors name the key
(``job.judges[1].path: ...``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from saferl.runtime.specs import DTYPE_NAMES

__all__ = ["JUDGE_KINDS", "JudgeSettings", "parse_judges"]

#: The judges ``job.judges`` knows.
JUDGE_KINDS = ("ground_truth", "llamaguard", "classifier")


@dataclass(frozen=True)
class JudgeSettings:
    """One judge of ``job.judges``.

    Attributes:
        kind: ``ground_truth``, ``llamaguard`` or ``classifier``.
        path: the model (folder or hub name); required for the model judges.
        name: how reports call it (default: ``kind``, or ``kind:<folder name>``).
        micro_batch_size: rows per forward pass on a rank.
        max_new_tokens: llamaguard: greedy tokens of the answer (verdict and categories).
        add_generation_prompt: llamaguard: passed to ``apply_chat_template`` (LlamaGuard's own
            template ignores it; a generic chat model needs True to get its assistant header).
        unsafe_label: classifier: the label (of ``config.id2label``) that means unsafe, when its
            name does not say so.
        template: classifier: the input text with ``{prompt}`` and ``{response}``; None: the
            tokenizer's text pair ``(prompt, response)``.
        dtype: the judge's weights (``float32``, ``bfloat16``, ``float16``).
        trust_remote_code: passed to transformers.
    """

    kind: str
    path: str | None = None
    name: str | None = None
    micro_batch_size: int = 8
    max_new_tokens: int = 10
    add_generation_prompt: bool = False
    unsafe_label: str | None = None
    template: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False

    @property
    def display_name(self) -> str:
        """The judge's name in reports."""
        if self.name:
            return self.name
        if self.path is None:
            return self.kind
        return f"{self.kind}:{self.path.rstrip('/').rsplit('/', 1)[-1]}"


_MODEL_ONLY = {"path", "micro_batch_size", "dtype", "trust_remote_code"}
_KIND_KEYS = {
    "ground_truth": {"kind", "name"},
    "llamaguard": {"kind", "name", "max_new_tokens", "add_generation_prompt"} | _MODEL_ONLY,
    "classifier": {"kind", "name", "unsafe_label", "template"} | _MODEL_ONLY,
}


def _judge(entry: object, key: str) -> JudgeSettings:
    if isinstance(entry, str):
        entry = {"kind": entry}
    if not isinstance(entry, Mapping):
        raise ValueError(
            f"{key}: expected a judge kind ({', '.join(JUDGE_KINDS)}) or a mapping with a kind; "
            f"found {entry!r}"
        )
    values = dict(entry)
    kind = values.get("kind")
    if kind not in JUDGE_KINDS:
        raise ValueError(f"{key}.kind: expected one of {list(JUDGE_KINDS)}; found {kind!r}")
    unknown = sorted(set(values) - _KIND_KEYS[kind])
    if unknown:
        raise ValueError(
            f"{key}: unknown key(s) {unknown} for kind={kind}; allowed: {sorted(_KIND_KEYS[kind])}"
        )
    if kind != "ground_truth":
        path = values.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ValueError(
                f"{key}.path: a {kind} judge needs its model (a folder or hub name); found {path!r}"
            )
    for name in ("micro_batch_size", "max_new_tokens"):
        if name in values:
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}.{name}: expected an integer >= 1; found {value!r}")
    for name in ("add_generation_prompt", "trust_remote_code"):
        if name in values and not isinstance(values[name], bool):
            raise ValueError(f"{key}.{name}: expected true or false; found {values[name]!r}")
    for name in ("name", "unsafe_label", "template"):
        value = values.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"{key}.{name}: expected a non-empty string or null; found {value!r}")
    template = values.get("template")
    if template is not None and ("{prompt}" not in template or "{response}" not in template):
        raise ValueError(
            f"{key}.template: must contain {{prompt}} and {{response}}; found {template!r}"
        )
    if "dtype" in values and values["dtype"] not in DTYPE_NAMES:
        raise ValueError(f"{key}.dtype: expected one of {list(DTYPE_NAMES)}; found {values['dtype']!r}")
    known = {f.name for f in fields(JudgeSettings)}
    return JudgeSettings(**{k: v for k, v in values.items() if k in known})


def parse_judges(value: object, key: str = "job.judges") -> tuple[JudgeSettings, ...]:
    """The judges of a config list (None or ``[]``: none).

    Raises:
        ValueError: a malformed entry, or two judges with one name; the message names the key
            (``job.judges[i].<field>``).
    """
    if value is None:
        return ()
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        raise ValueError(f"{key}: expected a list of judges; found {value!r}")
    judges = tuple(_judge(entry, f"{key}[{index}]") for index, entry in enumerate(value))
    names = [judge.display_name for judge in judges]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ValueError(
                f"{key}[{index}]: a second judge named {name!r}; give each a distinct name"
            )
    return judges
