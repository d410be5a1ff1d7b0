"""Trackers, the ``logger`` config section, run metadata, and an offline W&B run read back."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saferl.tracking import (
    LOGGER_DEFAULTS,
    METRIC_NAMESPACES,
    JsonlTracker,
    MultiTracker,
    NullTracker,
    build_tracker,
    check_metric_names,
    run_metadata,
)

REPO = Path(__file__).resolve().parents[1]

# Names the learners emit today (learners/sft.py, score_model.py, preference.py, ppo_lag.py,
# pipeline.py): every one must pass the namespace check.
EMITTED_NAMES = [
    "sft/loss",
    "sft/learning_rate",
    "reward_model/loss",
    "reward_model/accuracy",
    "cost_model/loss",
    "cost_model/test_sign_accuracy",
    "preference/loss",
    "preference/grad_norm",
    "preference/learning_rate",
    "rollout/response_length",
    "rollout/kl",
    "reward/score",
    "cost/score_0",
    "policy/loss",
    "policy/approx_kl",
    "policy/clipfrac",
    "policy/ptx_loss",
    "critic/reward_loss",
    "critic/cost_0_explained_variance",
    "constraint/estimate_0",
    "constraint/violation_0",
    "multiplier/value_0",
    "multiplier/used_0",
    "perf/rollout_s",
    "perf/samples_per_s",
    "eval/normalised_lagrangian_gap",
    "eval/kl",
]


# ------------------------------------------------------------------------------------------
# Metric namespaces


def test_namespaces_are_the_rl_ones_plus_the_stages():
    assert METRIC_NAMESPACES[:8] == (
        "rollout", "reward", "cost", "constraint", "multiplier", "policy", "critic", "perf"
    )  # fmt: skip
    assert set(METRIC_NAMESPACES[8:]) == {"sft", "reward_model", "cost_model", "preference", "eval"}


def test_every_emitted_name_is_accepted():
    check_metric_names(dict.fromkeys(EMITTED_NAMES, 1.0))


@pytest.mark.parametrize("name", ["loss", "train/loss", "policy/", "/loss", "Policy/loss"])
@pytest.mark.parametrize("make", [NullTracker, "jsonl", "multi"])
def test_names_outside_the_namespaces_are_rejected_by_every_tracker(tmp_path, name, make):
    path = tmp_path / "metrics.jsonl"
    tracker = {
        "jsonl": lambda: JsonlTracker(path),
        "multi": lambda: MultiTracker([NullTracker(), JsonlTracker(path)]),
    }.get(make, make)()
    with pytest.raises(ValueError) as error:
        tracker.log({"policy/loss": 0.5, name: 1.0}, step=1)
    message = str(error.value)
    assert repr(name) in message
    for namespace in METRIC_NAMESPACES:
        assert namespace in message
    assert not path.exists()  # nothing half-written


def test_the_step_leaf_is_reserved():
    with pytest.raises(ValueError, match=r"'perf/step'.*reserved"):
        NullTracker().log({"perf/step": 1.0}, step=1)


# ------------------------------------------------------------------------------------------
# JSONL


def test_jsonl_round_trip(tmp_path):
    tracker = JsonlTracker(tmp_path / "deep" / "metrics.jsonl")
    tracker.log({"policy/loss": torch.tensor(0.25), "policy/clipfrac": 0.5}, step=1)
    tracker.log({"critic/reward_loss": float("nan"), "perf/rollout_s": 2}, step=2)
    tracker.finish()

    rows = tracker.read()
    assert rows == [
        {"step": 1, "policy/loss": 0.25, "policy/clipfrac": 0.5},
        # Non-finite floats are strings, so each line is strict JSON.
        {"step": 2, "critic/reward_loss": "nan", "perf/rollout_s": 2},
    ]
    for line in (tmp_path / "deep" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=pytest.fail)


def test_build_tracker_jsonl_writes_metrics_and_metadata(tmp_path):
    run_dir = tmp_path / "run"
    metadata = {"git_revision": "abc", "command": "saferl job=mocan"}
    tracker = build_tracker({"kind": "jsonl"}, run_dir, {"seed": 1, "job": {"x": [1, 2]}}, metadata)
    tracker.log({"sft/loss": 1.0}, step=1)
    tracker.finish()

    assert JsonlTracker(run_dir / "metrics.jsonl").read() == [{"step": 1, "sft/loss": 1.0}]
    recorded = json.loads((run_dir / "run_metadata.json").read_text())
    assert recorded == {**metadata, "config": {"seed": 1, "job": {"x": [1, 2]}}}
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl", "run_metadata.json"]


def test_kind_none_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    tracker = build_tracker({"kind": "none", "jsonl": True}, run_dir, {"seed": 0})
    tracker.log({"policy/loss": 1.0}, step=1)
    tracker.finish()
    assert not run_dir.exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="outside the fixed namespaces"):
        tracker.log({"loss": 1.0}, step=2)  # the null tracker checks names too


# ------------------------------------------------------------------------------------------
# The logger section


@pytest.mark.parametrize(
    "logger, key, shown",
    [
        ({"projekt": "x"}, "logger.projekt", "allowed keys: kind, jsonl, project"),
        ({"kind": "tensorboard"}, "logger.kind", "'tensorboard'"),
        ({"mode": "disabled"}, "logger.mode", "logger.kind: none"),
        ({"mode": "shared"}, "logger.mode", "offline | online"),
        ({"jsonl": "yes"}, "logger.jsonl", "true or false"),
        ({"kind": "jsonl", "jsonl": False}, "logger.jsonl", "False"),
        ({"project": ""}, "logger.project", "a non-empty string"),
        ({"project": None}, "logger.project", "None"),
        ({"entity": 3}, "logger.entity", "a non-empty string or null"),
        ({"name": ["a"]}, "logger.name", "['a']"),
        ({"group": ""}, "logger.group", "a non-empty string or null"),
        ({"tags": "a,b"}, "logger.tags", "a list of strings"),
        ({"tags": ["a", 1]}, "logger.tags", "['a', 1]"),
    ],
)
def test_logger_section_errors_name_the_key_and_value(tmp_path, logger, key, shown):
    with pytest.raises(ValueError) as error:
        build_tracker(logger, tmp_path / "run", {})
    assert key in str(error.value)
    assert shown in str(error.value)
    assert not (tmp_path / "run").exists()  # validated before anything is written


def test_config_run_key_is_reserved_for_the_metadata(tmp_path):
    with pytest.raises(ValueError, match="top-level 'run' key"):
        build_tracker({"kind": "jsonl"}, tmp_path / "run", {"run": {}}, {})


def test_logger_defaults_are_the_documented_schema():
    assert LOGGER_DEFAULTS == {
        "kind": "wandb",
        "jsonl": True,
        "project": "saferl",
        "entity": None,
        "mode": "offline",
        "name": None,
        "group": None,
        "tags": [],
    }


# ------------------------------------------------------------------------------------------
# Run metadata


def _git_head() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_run_metadata_inside_the_repo():
    metadata = run_metadata(REPO)
    assert metadata["git_revision"] == _git_head()
    assert len(metadata["git_revision"]) == 40
    assert isinstance(metadata["git_dirty"], bool)
    assert metadata["command"]  # sys.orig_argv of this pytest process, shell-quoted
    assert metadata["python"] == ".".join(map(str, sys.version_info[:3]))
    assert metadata["torch"] == torch.__version__
    assert metadata["saferl"]
    assert metadata["start_time"].endswith("+00:00")  # UTC
    json.dumps(metadata)  # plain values only


def test_run_metadata_outside_a_repo(tmp_path, monkeypatch):
    # Stop git's search for a repository at tmp_path, whatever holds the temporary folder.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    metadata = run_metadata(tmp_path)
    assert metadata["git_revision"] is None
    assert metadata["git_dirty"] is None
    assert metadata["git_branch"] is None
    assert metadata["hostname"]


def test_run_metadata_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable to be found
    metadata = run_metadata(REPO)
    assert (metadata["git_revision"], metadata["git_dirty"]) == (None, None)


# ------------------------------------------------------------------------------------------
# An offline W&B run, in a subprocess without network, account or WANDB_MODE

_WANDB_RUN = """
import sys
from pathlib import Path
from saferl.tracking import build_tracker, offline_run_folders, run_metadata

config = {"seed": 3, "world": {"beta": 0.5}, "tags": ["x"]}
logger = {"kind": "wandb", "group": "sweep-1", "tags": ["test"]}
tracker = build_tracker(logger, Path(sys.argv[1]), config, run_metadata())
tracker.log({"sft/loss": 1.5, "perf/step_s": 0.25}, step=1)
tracker.log({"sft/loss": 1.25}, step=2)
tracker.log({"policy/approx_kl": 0.01}, step=1)  # a later stage restarts its step count
tracker.finish()
print("OFFLINE", *offline_run_folders(tracker))
"""


def _no_network_prefix() -> list[str]:
    """``unshare -rn`` (a private network namespace with no interfaces) where it works."""
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=30)
    return ["unshare", "-rn"] if probe.returncode == 0 else []


def _wandb_records(path: Path):
    """The records of a ``.wandb`` transaction log: a 7-byte header (``:W&B``, magic 0xBEE1,
    version 0), then LevelDB-log chunks (crc32 u32, length u16, type u8: 1 full, 2 first,
    3 middle, 4 last) in 32 KiB blocks, each record a ``wandb_internal.Record`` protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (2, 3):
            pending += chunk
            continue
        if kind not in (1, 4):
            continue  # zero padding
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending + chunk)
        pending = b""
        yield record


def _read_offline_run(folder: Path) -> tuple[dict, list[dict], object]:
    """The config, the history rows (without W&B's ``_`` keys) and the run record."""
    (log,) = folder.glob("run-*.wandb")
    config, history, run = {}, [], None
    for record in _wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({i.key: json.loads(i.value_json) for i in run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            row = {
                (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                for i in record.history.item
            }
            history.append({k: v for k, v in row.items() if not k.startswith("_")})
    return config, history, run


@pytest.mark.parametrize("wandb_mode", [None, "online"])
def test_offline_wandb_run_records_config_metadata_and_history(tmp_path, wandb_mode):
    run_dir = tmp_path / "run"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("WANDB_") and key.lower() not in ("http_proxy", "https_proxy")
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"),  # no saved login or settings
        WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"),
        WANDB_DATA_DIR=str(tmp_path / "wandb_data"),
        # Without unshare, any attempt to reach a server fails at once instead of going out.
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        WANDB_BASE_URL="http://127.0.0.1:9",
    )
    if wandb_mode is not None:
        env["WANDB_MODE"] = wandb_mode  # the config's mode wins over the environment
    command = [sys.executable, "-c", _WANDB_RUN, str(run_dir), "job=tracking_test"]
    result = subprocess.run(
        [*_no_network_prefix(), *command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,  # a login prompt would fail, not wait
    )
    assert result.returncode == 0, result.stderr[-4000:]

    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    # The tracker names the folder it wrote (the CLI prints it with the `wandb sync` command),
    # through the jsonl + W&B MultiTracker the default logger builds.
    assert f"OFFLINE {folder}" in result.stdout.splitlines()
    config, history, run = _read_offline_run(folder)
    assert config["seed"] == 3
    assert config["world"] == {"beta": 0.5}
    assert config["tags"] == ["x"]
    assert config["run"]["git_revision"] == _git_head()
    assert "job=tracking_test" in config["run"]["command"]
    assert list(run.tags) == ["test"]
    assert run.run_group == "sweep-1"
    assert run.project == "saferl"
    # Each namespace is charted against its own step: the stage that restarts at 1 is kept.
    assert history == [
        {"sft/step": 1, "sft/loss": 1.5, "perf/step": 1, "perf/step_s": 0.25},
        {"sft/step": 2, "sft/loss": 1.25},
        {"policy/step": 1, "policy/approx_kl": 0.01},
    ]
    assert JsonlTracker(run_dir / "metrics.jsonl").read() == [
        {"step": 1, "sft/loss": 1.5, "perf/step_s": 0.25},
        {"step": 2, "sft/loss": 1.25},
        {"step": 1, "policy/approx_kl": 0.01},
    ]
    metadata = json.loads((run_dir / "run_metadata.json").read_text())
    assert metadata["git_revision"] == config["run"]["git_revision"]
    assert metadata["config"]["world"] == {"beta": 0.5}


# ------------------------------------------------------------------------------------------
# Resumed runs: metrics.jsonl without repeated iterations, the first launch's metadata kept


def test_a_resumed_runs_relogged_steps_replace_the_killed_runs_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    killed = JsonlTracker(path)
    killed.log({"sft/loss": 2.0}, step=1)
    killed.log({"sft/loss": 1.0}, step=2)
    for step in (1, 2, 3):  # iterations 1-3 logged; the checkpoint it resumes from holds 1
        killed.log({"reward/score": float(step), "perf/rollout_s": 0.5}, step=step)
    killed.log({"reward_model/heldout_accuracy": 0.75}, step=0)

    resumed = JsonlTracker(path)  # a new launch on the same file
    resumed.log({"reward/score": 20.0, "perf/rollout_s": 0.25}, step=2)
    resumed.log({"reward/score": 30.0, "perf/rollout_s": 0.25}, step=3)
    resumed.log({"perf/stage_ppo_lag_s": 9.0}, step=3)  # a new key at a step already logged: kept
    rows = resumed.read()
    assert rows == [
        {"step": 1, "sft/loss": 2.0},
        {"step": 2, "sft/loss": 1.0},  # another stage's rows at the same steps stay
        {"step": 1, "reward/score": 1.0, "perf/rollout_s": 0.5},
        {"step": 0, "reward_model/heldout_accuracy": 0.75},
        {"step": 2, "reward/score": 20.0, "perf/rollout_s": 0.25},
        {"step": 3, "reward/score": 30.0, "perf/rollout_s": 0.25},
        {"step": 3, "perf/stage_ppo_lag_s": 9.0},
    ]
    # A stage run again from its start (it had not finished) replaces all its rows.
    resumed.log({"sft/loss": 5.0}, step=1)
    assert [row for row in resumed.read() if "sft/loss" in row] == [{"step": 1, "sft/loss": 5.0}]
    assert not path.with_name("metrics.jsonl.tmp").exists()


def test_a_resumed_run_keeps_its_first_launchs_metadata_and_records_restarts(tmp_path):
    from saferl.tracking import record_restart, recorded_restarts

    run_dir = tmp_path / "run"
    first = {"git_revision": "abc", "command": "saferl seed=1"}
    build_tracker({"kind": "jsonl"}, run_dir, {"seed": 1}, first).finish()
    record_restart(run_dir, {"number": 1, "role": "policy", "rank": 0})
    second = {"git_revision": "def", "command": "saferl seed=1 resume=auto"}
    build_tracker({"kind": "jsonl"}, run_dir, {"seed": 1, "resume": "auto"}, second, resume=True).finish()
    recorded = json.loads((run_dir / "run_metadata.json").read_text())
    assert recorded["git_revision"] == "abc" and recorded["config"] == {"seed": 1}
    assert recorded["resumes"] == [second]
    assert recorded_restarts(run_dir) == [{"number": 1, "role": "policy", "rank": 0}]
    # A fresh run (not resume) writes its own record: the CLI refuses a folder holding a run first.
    build_tracker({"kind": "jsonl"}, tmp_path / "other", {"seed": 2}, first).finish()
    assert "resumes" not in json.loads((tmp_path / "other" / "run_metadata.json").read_text())


def test_credentials_are_redacted_by_name_and_by_value(monkeypatch):
    from saferl.tracking import REDACTED, redact_secrets

    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "t" * 30)
    command = ("saferl hydra.job.env_set.WANDB_API_KEY=abcdefgh1234 +model.hub_token=xyz "
               f"generation.max_new_tokens=64 note={'k' * 40}")
    redacted = redact_secrets({"command": command, "api_key": "secret-value", "pad_token": "<pad>",
                               "nested": [{"tokenizer": "gpt2", "path": f"/models/{'hf_' + 't' * 30}"}]})
    assert redacted["command"] == (f"saferl hydra.job.env_set.WANDB_API_KEY={REDACTED} +model.hub_token={REDACTED} "
                                   f"generation.max_new_tokens=64 note={REDACTED}")
    assert redacted["api_key"] == REDACTED and redacted["pad_token"] == "<pad>"
    assert redacted["nested"] == [{"tokenizer": "gpt2", "path": f"/models/{REDACTED}"}]
    assert redact_secrets("env_set:\n  HF_TOKEN: abc\n  OMP_NUM_THREADS: 1\n") == (
        f"env_set:\n  HF_TOKEN: {REDACTED}\n  OMP_NUM_THREADS: 1\n")


_WANDB_RESUMED_RUN = """
import sys
from pathlib import Path
from saferl.tracking import build_tracker, run_metadata

resume = sys.argv[2] == "resume"
config = {"seed": 3, "logger": {"kind": "wandb"}, "hub_token": "hf_" + "inconfig12345"}  # not in the command
tracker = build_tracker({"kind": "wandb"}, Path(sys.argv[1]), config, run_metadata(), resume=resume)
tracker.log({"reward/score": 1.0 if not resume else 2.0}, step=1 if not resume else 2)
tracker.finish()
print("ID", tracker.trackers[0].run.id)
"""


def test_a_resumed_run_continues_its_wandb_run_and_no_credential_is_written(tmp_path):
    run_dir = tmp_path / "run"
    api_key, hub_token = "0123456789abcdef" * 2 + "01234567", "hf_" + "Q" * 34
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"), WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"),
        WANDB_DATA_DIR=str(tmp_path / "wandb_data"), WANDB_BASE_URL="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
        WANDB_API_KEY=api_key, HF_TOKEN=hub_token,
    )
    ids = []
    for launch in ("first", "resume"):
        result = subprocess.run(
            [*_no_network_prefix(), sys.executable, "-c", _WANDB_RESUMED_RUN, str(run_dir), launch,
             f"hydra.job.env_set.WANDB_API_KEY={api_key}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        ids += [line.split()[1] for line in result.stdout.splitlines() if line.startswith("ID ")]
    first_id, resumed_id = ids
    assert resumed_id == first_id  # the resumed launch continues the same W&B run
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(folder.name.split("-")[-1] == first_id or
                                     folder.name.split("-")[-2] == first_id for folder in folders)
    metadata = json.loads((run_dir / "run_metadata.json").read_text())
    assert metadata["wandb_run_id"] == first_id and len(metadata["resumes"]) == 1
    assert JsonlTracker(run_dir / "metrics.jsonl").read() == [{"step": 1, "reward/score": 1.0},
                                                              {"step": 2, "reward/score": 2.0}]
    # Neither the key nor the token (from the environment, the command line or the config) is in
    # any file the runs wrote: metadata, metrics, W&B's offline records and logs.
    for path in run_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert api_key.encode() not in content and hub_token.encode() not in content, path
            assert b"hf_inconfig12345" not in content, path
