"""Open a data source as one ``datasets.Dataset`` split, through ``datasets.load_dataset``.

A source is one of:

* a **local file** ``*.json`` (one JSON array of objects, or JSON lines), ``*.jsonl`` or
  ``*.parquet``: loaded with the ``json``/``parquet`` builder and ``data_files``; a single file is
  the split ``"train"`` (slices such as ``"train[:100]"`` work; another split name is an error);
* a **local folder** of such files, all of one format (``.json`` and ``.jsonl`` mix, both being
  JSON): loaded with ``data_dir``, so ``datasets``' split naming applies (``train.jsonl`` and
  ``test.jsonl`` are the splits ``train`` and ``test``; files without a split name all form
  ``train``). Hidden files, files starting with ``_``, and ``*.md`` / ``LICENSE*`` files are
  ignored; anything else (another format, ``.csv``, mixed JSON and parquet) is an error that names
  the folder and the extensions found, rather than a guess;
* a **hub dataset name** (``"PKU-Alignment/PKU-SafeRLHF"``), with ``revision`` to pin a commit,
  tag or branch, and ``name`` for a configuration;
* an in-memory ``datasets.Dataset`` or ``datasets.DatasetDict`` (the built-in world, tests).

A string is taken as a local path, and never sent to the hub, when it exists, or ends with a
supported extension, or starts with ``/``, ``.`` or ``~``, or has more than one ``/`` (hub ids
are ``"name"`` or ``"owner/name"``: the single ``/`` that is ``os.sep`` on POSIX cannot be the
test), or contains a Windows separator. A missing local path is a :class:`DataError`
("file not found"), not a hub lookup.

Nothing is written next to the input files: ``datasets`` writes its Arrow cache to ``cache_dir``
(default: the ``datasets`` cache, ``~/.cache/huggingface/datasets``), and a ``cache_dir`` inside a
source folder is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from saferl.data.errors import DataError, ErrorReason
from saferl.data.json_lines import first_json_problem
from saferl.data.local_paths import SUPPORTED_EXTENSIONS, looks_like_local_path, require_existing

__all__ = ["SUPPORTED_EXTENSIONS", "SourceLike", "looks_like_local_path", "open_source"]

SourceLike = str | os.PathLike | datasets.Dataset | datasets.DatasetDict
"""What the loaders accept as ``source``."""

_IGNORED_SUFFIXES = (".md",)
_IGNORED_PREFIXES = (".", "_", "LICENSE", "README")


def _is_ignored(path: Path) -> bool:
    return path.name.startswith(_IGNORED_PREFIXES) or path.suffix.lower() in _IGNORED_SUFFIXES


def _folder_builder(folder: Path) -> str:
    """The builder for a folder's files; every file must be of one supported format."""
    extensions: set[str] = set()
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        for name in files:
            path = Path(root, name)
            if not _is_ignored(path):
                extensions.add(path.suffix.lower() or "(no extension)")
    builders = {SUPPORTED_EXTENSIONS.get(ext) for ext in extensions}
    if not extensions or None in builders or len(builders) > 1:
        found = ", ".join(sorted(extensions)) if extensions else "no data files"
        raise DataError(
            str(folder),
            expected="a folder of data files all of one format: .json/.jsonl, or .parquet",
            found=f"extensions {found}" if extensions else found,
        )
    (builder,) = builders
    return builder


def _check_cache_dir(cache_dir: str | os.PathLike | None, data_path: Path) -> None:
    if cache_dir is None:
        return
    folder = data_path if data_path.is_dir() else data_path.parent
    cache = Path(cache_dir).expanduser().resolve()
    if cache == folder or folder in cache.parents:
        raise DataError(
            str(data_path),
            field="cache_dir",
            expected="a cache folder outside the source's folder (nothing is written next to "
            "the input files)",
            found=str(cache),
        )


def _load_local(path: Path, split: str, cache_dir: str | os.PathLike | None) -> datasets.Dataset:
    label = str(path)
    require_existing(path)
    _check_cache_dir(cache_dir, path.resolve())
    cache = None if cache_dir is None else str(cache_dir)
    if path.is_dir():
        kwargs = {"data_dir": str(path)}
        builder = _folder_builder(path)
    else:
        builder = SUPPORTED_EXTENSIONS.get(path.suffix.lower())
        if builder is None:
            raise DataError(
                label,
                expected="a file ending in .json, .jsonl or .parquet",
                found=f"extension {path.suffix or '(none)'!r}",
            )
        kwargs = {"data_files": {"train": str(path)}}
    try:
        return datasets.load_dataset(builder, split=split, cache_dir=cache, **kwargs)
    except ValueError as error:
        if "split" in str(error).lower():
            raise DataError(
                label,
                field="split",
                expected="a split the source has (a single file is the split 'train')",
                found=f"{split!r} ({error})",
            ) from error
        raise DataError(label, expected=f"a readable {builder} source", found=f"{error}") from error
    except Exception as error:  # datasets wraps parse errors in several exception types
        if builder == "json":  # datasets drops the file, line and parse error: find them again
            problem = _first_json_problem(path)
            if problem is not None:
                file, line, what = problem
                raise DataError(
                    f"{file}, line {line}",
                    expected="one JSON object per line (a JSON-lines record)",
                    found=what,
                    reason=ErrorReason.INVALID_VALUE,
                ) from error
        raise DataError(
            label,
            expected=f"a readable {builder} source",
            found=f"{type(error).__name__}: {error}",
        ) from error


def _first_json_problem(path: Path) -> tuple[Path, int, str] | None:
    """The first unreadable line of a JSON file, or of a folder's JSON files (in name order)."""
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".json", ".jsonl") and not _is_ignored(p)
    )
    for file in files:
        problem = first_json_problem(file)
        if problem is not None:
            return (file, *problem)
    return None


def _load_hub(
    name_or_path: str,
    split: str,
    revision: str | None,
    config_name: str | None,
    cache_dir: str | os.PathLike | None,
) -> datasets.Dataset:
    kwargs: dict[str, object] = {"split": split, "revision": revision}
    if config_name is not None:
        kwargs["name"] = config_name
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    try:
        dataset = datasets.load_dataset(name_or_path, **kwargs)
    except Exception as error:  # offline, unknown name, unknown revision, unknown split
        raise DataError(
            name_or_path,
            expected="a hub dataset that can be loaded (network, name, revision and split), or "
            "an existing local path",
            found=f"{type(error).__name__}: {error}",
        ) from error
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(
            name_or_path,
            expected="one split as a datasets.Dataset",
            found=type(dataset).__name__,
        )
    return dataset


def _select_split(dataset: datasets.DatasetDict, split: str, label: str) -> datasets.Dataset:
    if split not in dataset:
        raise DataError(
            label, field="split", expected=f"one of {sorted(dataset)}", found=repr(split)
        )
    return dataset[split]


def open_source(
    source: SourceLike,
    *,
    split: str = "train",
    revision: str | None = None,
    name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[datasets.Dataset, str]:
    """Open one split of a source (see the module docstring for what a source is).

    Args:
        source: a local file or folder, a hub dataset name, or an in-memory dataset.
        split: the split to read; ``datasets`` slice syntax (``"train[:1000]"``) works.
        revision: hub only: the git revision (commit sha, tag or branch) to pin.
        name: hub only: the dataset configuration name.
        cache_dir: where ``datasets`` writes its Arrow cache (``None``: its default cache).

    Returns:
        ``(dataset, label)``: the split, and the source label used in messages.

    Raises:
        DataError: the path is missing, the folder mixes formats, the split does not exist,
            ``revision``/``name`` were given for a local source, or loading failed.
    """
    if isinstance(source, datasets.DatasetDict):
        return _select_split(source, split, "<DatasetDict>"), "<DatasetDict>"
    if isinstance(source, datasets.Dataset):
        return source, "<Dataset>"
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(
            repr(source),
            field="source",
            expected="a path, a hub dataset name, or a datasets.Dataset",
            found=type(source).__name__,
        )
    if looks_like_local_path(source):
        path = Path(source).expanduser()
        for option, value in (("revision", revision), ("name", name)):
            if value is not None:
                raise DataError(
                    str(path),
                    field=option,
                    expected=f"no {option} for a local source ({option} pins hub datasets)",
                    found=repr(value),
                )
        return _load_local(path, split, cache_dir), str(path)
    return _load_hub(str(source), split, revision, name, cache_dir), str(source)
