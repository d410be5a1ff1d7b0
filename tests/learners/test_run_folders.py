"""Which folders hold a run: a fresh run refuses them, resume=auto continues them."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("left_behind", ["summary.json", "checkpoints", "mocan"])
def test_a_fresh_run_refuses_a_folder_that_holds_a_run_even_one_only_mocan_started(tmp_path, left_behind):
    """MoCAN on reused stages writes only its ``mocan/`` sub-folder (the dual's samples, then its
    PPO stage's checkpoints) before it ends: that folder holds a run too, which resume=auto
    continues and a fresh run must not start over."""
    from saferl.learners.run_state import RunFolderInUseError, claim_run_folder

    claim_run_folder(tmp_path, resume=False)  # empty: a fresh run may start
    (tmp_path / left_behind).mkdir()
    with pytest.raises(RunFolderInUseError, match=f"already holds a run \\({left_behind}\\); pass resume=auto"):
        claim_run_folder(tmp_path, resume=False)
    claim_run_folder(tmp_path, resume=True)
