"""Checkpoint integrity (``saferl.learners.run_state``): every checkpoint carries a manifest of its
files' sizes and sha256; at resume a damaged newest checkpoint is named and the previous one used;
a save that fails half-way (disk full, permissions) leaves the last good checkpoint as it was.

Real files in ``tmp_path``: each checkpoint is a torch-saved state, a JSON history and a nested
file, written by :func:`save_iteration` the way a learner's ``save`` writes them.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from saferl.learners.run_state import (
    CorruptCheckpointError,
    latest_checkpoint,
    resume_checkpoint,
    save_checkpoint_atomically,
    saved_state,
    verify_checkpoint,
)


def save_iteration(iteration: int):
    """A learner-like ``save(staging)`` for iteration ``iteration``: three files, one of them a
    real ``torch.save``."""

    def save(staging: Path) -> None:
        staging.mkdir(parents=True)
        torch.save({"weight": torch.full((4, 8), float(iteration)), "iteration": iteration}, staging / "state.pt")
        (staging / "history.json").write_text(json.dumps([{"loss": 1.0 / (k + 1)} for k in range(iteration)]))
        (staging / "optimizer").mkdir()
        (staging / "optimizer" / "moments.bin").write_bytes(bytes(range(256)) * (iteration + 1))

    return save


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative path, with its bytes."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


@pytest.fixture
def two_checkpoints(tmp_path) -> tuple[Path, Path]:
    """``checkpoints/ppo_lag`` after iterations 1 and 2: (newest, previous)."""
    folder = tmp_path / "checkpoints" / "ppo_lag"
    save_checkpoint_atomically(save_iteration(1), folder)
    save_checkpoint_atomically(save_iteration(2), folder)
    return folder, folder.with_name("ppo_lag.previous")


def loaded_iteration(checkpoint: Path) -> int:
    return torch.load(checkpoint / "state.pt", weights_only=True)["iteration"]


def test_a_save_writes_a_manifest_and_keeps_exactly_one_previous_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints" / "ppo_lag"
    for iteration in (1, 2, 3):
        save_checkpoint_atomically(save_iteration(iteration), folder)
    assert sorted(path.name for path in folder.parent.iterdir()) == ["ppo_lag", "ppo_lag.previous"]
    assert loaded_iteration(folder) == 3 and loaded_iteration(folder.with_name("ppo_lag.previous")) == 2
    manifest = json.loads((folder / "COMPLETE").read_text())
    assert sorted(manifest["files"]) == ["history.json", "optimizer/moments.bin", "state.pt"]
    assert manifest["files"]["optimizer/moments.bin"]["size"] == 256 * 4
    assert verify_checkpoint(folder) == [] and verify_checkpoint(folder.with_name("ppo_lag.previous")) == []
    notices = []
    assert resume_checkpoint(folder, notices.append) == folder and notices == []  # good: nothing to say
    assert saved_state(tmp_path) == f"iteration 3 (checkpoint {folder})"  # the newest, not .previous


def test_a_truncated_file_is_named_and_the_previous_checkpoint_used(two_checkpoints):
    newest, previous = two_checkpoints
    state = newest / "state.pt"
    size = state.stat().st_size
    with open(state, "r+b") as stream:
        stream.truncate(size // 2)
    (problem,) = verify_checkpoint(newest)
    assert problem == f"{state}: expected {size} bytes, found {size // 2} (truncated or overwritten)"
    notices = []
    found = resume_checkpoint(newest, notices.append)
    assert found == previous and loaded_iteration(found) == 1
    damaged = newest.with_name("ppo_lag.damaged")
    assert notices == [f"the checkpoint {newest} is damaged ({problem}); resuming from the previous "
                       f"checkpoint {previous} instead (the damaged one is kept at {damaged})"]
    # The damaged one is set aside, so the next save keeps the good one as the previous checkpoint.
    assert not newest.exists() and (damaged / "state.pt").stat().st_size == size // 2
    good = snapshot(previous)
    save_checkpoint_atomically(save_iteration(2), newest)
    assert snapshot(previous) == good and loaded_iteration(newest) == 2


def test_a_flipped_byte_is_detected_by_its_checksum(two_checkpoints):
    newest, previous = two_checkpoints
    moments = newest / "optimizer" / "moments.bin"
    data = bytearray(moments.read_bytes())
    data[100] ^= 0x01  # same size: only the checksum can tell
    moments.write_bytes(bytes(data))
    (problem,) = verify_checkpoint(newest)
    assert problem.startswith(f"{moments}: expected sha256 ") and problem.endswith("(corrupted)")
    notices = []
    assert resume_checkpoint(newest, notices.append) == previous
    assert len(notices) == 1 and str(moments) in notices[0] and f"previous checkpoint {previous}" in notices[0]


def test_a_missing_file_or_manifest_falls_back_to_the_previous_checkpoint(two_checkpoints):
    newest, previous = two_checkpoints
    size = (newest / "history.json").stat().st_size
    (newest / "history.json").unlink()
    assert verify_checkpoint(newest) == [f"{newest / 'history.json'}: missing (expected {size} bytes)"]
    (newest / "COMPLETE").unlink()
    assert verify_checkpoint(newest) == [
        f"{newest / 'COMPLETE'}: missing (the manifest, written last, marks a complete checkpoint)"]
    notices = []
    assert resume_checkpoint(newest, notices.append) == previous
    assert len(notices) == 1 and str(newest / "COMPLETE") in notices[0]


def test_an_unreadable_manifest_is_named(two_checkpoints):
    newest, _ = two_checkpoints
    (newest / "COMPLETE").write_text("")  # also what saferl wrote before checkpoints had checksums
    (problem,) = verify_checkpoint(newest)
    assert problem.startswith(f"{newest / 'COMPLETE'}: not a readable checkpoint manifest (JSONDecodeError")


def test_a_checkpoint_from_before_checksums_still_resumes_and_says_it_is_unverified(tmp_path):
    """saferl wrote an empty ``COMPLETE`` last before checkpoints had manifests: a run saved then
    resumes from it (nothing to verify), saying so, rather than being refused as corrupt."""
    folder = tmp_path / "checkpoints" / "ppo_lag"
    save_iteration(3)(folder)
    (folder / "COMPLETE").write_text("")
    notices: list[str] = []
    assert resume_checkpoint(folder, notices.append) == folder and loaded_iteration(folder) == 3
    assert notices == [f"the checkpoint {folder} was written before checkpoints had checksums: its files are not verified"]
    # A non-empty manifest that does not parse is damage, not an old checkpoint.
    (folder / "COMPLETE").write_text("{trunc")
    with pytest.raises(CorruptCheckpointError, match="not a readable checkpoint manifest"):
        resume_checkpoint(folder, notices.append)


def test_no_good_checkpoint_left_is_an_error_naming_every_bad_file(two_checkpoints):
    newest, previous = two_checkpoints
    with open(newest / "state.pt", "r+b") as stream:
        stream.truncate(10)
    (previous / "history.json").write_text("[]")
    before = {folder: snapshot(folder) for folder in (newest, previous)}
    notices = []
    with pytest.raises(CorruptCheckpointError) as raised:
        resume_checkpoint(newest, notices.append)
    message = str(raised.value)
    assert str(newest / "state.pt") in message and str(previous / "history.json") in message
    assert f"delete {newest} and {previous} and run again with resume=auto" in message
    assert "fresh run folder" in message and notices == []
    # Nothing is moved or deleted when there is nothing to fall back to.
    assert {folder: snapshot(folder) for folder in (newest, previous)} == before
    # Only the newest one, damaged, and no previous: the same error, naming it.
    newest_only = newest.parent / "cdpo"
    save_checkpoint_atomically(save_iteration(1), newest_only)
    (newest_only / "state.pt").unlink()
    with pytest.raises(CorruptCheckpointError, match=f"{newest_only / 'state.pt'}: missing"):
        resume_checkpoint(newest_only, notices.append)


def test_nothing_saved_is_a_fresh_start_and_a_killed_swap_uses_the_previous_checkpoint(two_checkpoints):
    newest, previous = two_checkpoints
    assert resume_checkpoint(newest.parent / "never_saved", print) is None
    # A kill between a save's two renames leaves the previous checkpoint alone: used, no notice.
    newest.rename(newest.with_name("ppo_lag.staging"))
    notices = []
    assert resume_checkpoint(newest, notices.append) == previous and notices == []
    assert latest_checkpoint(newest) == previous


@pytest.mark.parametrize("failing_file", ["the second file", "the manifest"])
def test_a_disk_full_save_leaves_the_last_good_checkpoint_untouched(two_checkpoints, monkeypatch, failing_file):
    newest, previous = two_checkpoints
    before = {folder: snapshot(folder) for folder in (newest, previous)}
    staging = newest.with_name("ppo_lag.staging")

    def fills_the_disk(staging_folder: Path) -> None:
        staging_folder.mkdir(parents=True)
        torch.save({"weight": torch.zeros(4, 8)}, staging_folder / "state.pt")  # one file made it
        raise OSError(errno.ENOSPC, "No space left on device", str(staging_folder / "history.json"))

    save = fills_the_disk
    if failing_file == "the manifest":
        import saferl.learners.run_state as run_state

        def no_space_for_the_manifest(checkpoint: Path) -> None:
            (checkpoint / "COMPLETE").write_text('{"format": 1, "fi')  # half-written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(checkpoint / "COMPLETE"))

        monkeypatch.setattr(run_state, "_write_manifest", no_space_for_the_manifest)
        save = save_iteration(3)
    with pytest.raises(OSError) as raised:
        save_checkpoint_atomically(save, newest)
    assert raised.value.errno == errno.ENOSPC
    assert f"could not save the checkpoint {newest}" in str(raised.value) and "No space left" in str(raised.value)
    assert f"the last good checkpoint is {newest}" in str(raised.value)
    assert not staging.exists()
    assert {folder: snapshot(folder) for folder in (newest, previous)} == before
    assert latest_checkpoint(newest) == newest and resume_checkpoint(newest, print) == newest
    assert loaded_iteration(newest) == 2


def test_a_permission_error_while_saving_names_the_folder_and_keeps_the_checkpoints(two_checkpoints):
    newest, previous = two_checkpoints
    before = {folder: snapshot(folder) for folder in (newest, previous)}
    if os.geteuid() == 0:
        # root ignores folder permissions: the save callable raises what a read-only folder would.
        def refused(staging: Path) -> None:
            raise PermissionError(errno.EACCES, "Permission denied", str(staging))

        save = refused
    else:
        save = save_iteration(3)
    os.chmod(newest.parent, 0o555)  # read-only: the staging folder cannot be created
    try:
        with pytest.raises(PermissionError) as raised:
            save_checkpoint_atomically(save, newest)
    finally:
        os.chmod(newest.parent, 0o755)
    assert raised.value.errno == errno.EACCES and f"could not save the checkpoint {newest}" in str(raised.value)
    assert not newest.with_name("ppo_lag.staging").exists()
    assert {folder: snapshot(folder) for folder in (newest, previous)} == before
    assert resume_checkpoint(newest, print) == newest


def test_an_interrupted_save_removes_its_staging_folder(two_checkpoints):
    newest, previous = two_checkpoints
    before = snapshot(newest)

    def interrupted(staging: Path) -> None:
        staging.mkdir(parents=True)
        (staging / "state.pt").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomically(interrupted, newest)
    assert not newest.with_name("ppo_lag.staging").exists() and snapshot(newest) == before
