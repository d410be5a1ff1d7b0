"""``saferl`` with a mistake: the message alone on stderr, exit status 2, no run folder, quickly.

A traceback appears only with ``--verbose`` or ``HYDRA_FULL_ERROR=1``. A mistyped key or option is
answered with the nearest valid one, never with Hydra's ``+key`` advice. The command-line tests run
the real console entry point in a subprocess; the message tests call the preflight in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saferl.cli_errors import UsageError
from saferl.cli_preflight import preflight

REPO = Path(__file__).resolve().parents[2]


def saferl(*args: str, cwd: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """The console script's code path (``python -m saferl.cli``) in ``cwd``; returns it and its
    wall seconds."""
    base = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), base.get("PYTHONPATH", "")])
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "saferl.cli", *args], capture_output=True, text=True,
                               cwd=cwd, timeout=300, env={**base, **(env or {})})
    return completed, time.perf_counter() - start


def assert_usage_error(completed: subprocess.CompletedProcess, message: str) -> None:
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.strip() == f"saferl: error: {message}"
    assert "Traceback" not in completed.stderr and completed.stdout == ""


def test_a_mistyped_group_gets_the_nearest_group_no_plus_and_no_folder(tmp_path):
    completed, seconds = saferl("learnr=mocan", cwd=tmp_path)
    assert_usage_error(completed, "learnr=mocan: the root config has no key or group 'learnr'; "
                                  "did you mean `learner`? (learner=mocan)")
    assert "+learnr" not in completed.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/<date>/<time>/ left behind
    assert seconds < 30  # Hydra only: no torch (about 1 s on an idle machine)


def test_a_value_error_is_one_line_with_status_2_and_no_folder(tmp_path):
    completed, _ = saferl("beta=-0.1", cwd=tmp_path)
    assert_usage_error(completed, "beta: must be > 0.0; found -0.1")
    assert list(tmp_path.iterdir()) == []


def test_verbose_and_hydra_full_error_show_the_traceback(tmp_path):
    verbose, _ = saferl("learner.kl_coef=0.1", "--verbose", cwd=tmp_path)
    full, _ = saferl("learner.kl_coef=0.1", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    for completed in (verbose, full):
        assert completed.returncode == 2
        assert "Traceback (most recent call last)" in completed.stderr
        assert completed.stderr.rstrip().endswith(
            "saferl: error: learner.kl_coef=0.1: learner has no key 'kl_coef'; did you mean "
            "`learner.kl_coeff`? (learner.kl_coeff=0.1)")
    assert list(tmp_path.iterdir()) == []


def test_a_launcher_without_its_plugin_names_the_extra(tmp_path):
    """The plugins are hidden as when the launchers extra is not installed: a regular
    ``hydra_plugins`` package first on the path shadows the namespace package they live in."""
    shadow = tmp_path / "no_plugins" / "hydra_plugins"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    path = os.pathsep.join([str(shadow.parent), str(REPO), os.environ.get("PYTHONPATH", "")])
    completed, _ = saferl("-m", "launcher=ray", "cost_limit=-1.0,-0.8", cwd=work, env={"PYTHONPATH": path})
    assert_usage_error(completed, "launcher=ray needs the Hydra launcher plugin hydra-ray-launcher, which is not "
                                  "installed; it comes with the launchers extra: pip install 'saferl[launchers]' "
                                  "(or pip install -e '.[launchers]' in a checkout)")
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learner=mocn"], "learner=mocn: learner has no option 'mocn'; its options: cdpo, mocan, pecan, ppo_lag, "
                           "preference, rbr; did you mean `learner=mocan`?"),
        (["lerner.kl_coeff=0.5"], "lerner.kl_coeff=0.5: the root config has no key or group 'lerner'; did you "
                                  "mean `learner.kl_coeff`? (learner.kl_coeff=0.5)"),
        (["learner.mocan.margn=1"], "learner.mocan.margn=1: learner has no key 'mocan'; its keys: "),
        (["beta.x=1"], "beta.x=1: beta is a value, not a section (it has no key 'x')"),
        (["+beta=2"], "+beta=2: beta is already in the config; set it without the +: beta=2"),
        (["zzz=1"], "zzz=1: the root config has no key or group 'zzz'; its keys: beta, checkpoint_every, "),
    ],
)
def test_composition_mistakes_are_said_in_saferl_terms(overrides, message):
    with pytest.raises(UsageError) as caught:
        preflight(overrides)
    assert str(caught.value).startswith(message)
    assert "To append to your config" not in str(caught.value)


def test_every_job_of_a_sweep_is_validated_before_the_sweep_starts():
    with pytest.raises(UsageError, match=r"^sweep job beta=-1: beta: must be > 0.0; found -1$"):
        preflight(["beta=0.5,-1"], multirun=True)
    preflight(["sweep=cost_limit"])  # the preset's four jobs are valid


def _pairs(count: int) -> list[dict]:
    return [{"prompt": f"how do I bake bread {i}", "response_0": "knead the dough", "response_1": "no",
             "better_response_id": 0, "safer_response_id": 0, "is_response_0_safe": True,
             "is_response_1_safe": True} for i in range(count)]


TINY_DATA = ["model=world", "data=pku_saferlhf", "scorers.calibrate=false", "logger=none"]


def test_the_data_files_are_checked_before_the_run(tmp_path):
    """A missing field and a malformed line of a local data file are found by the preflight (no
    model, no actor, no W&B run), with the file, the line or field, and the problem."""
    missing = tmp_path / "missing.jsonl"
    missing.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "safer_response_id"}) + "\n"
                               for r in _pairs(4)))
    with pytest.raises(UsageError, match=r"missing\.jsonl, field 'safer_response_id': expected a column "
                                         r"'safer_response_id'"):
        preflight([*TINY_DATA, f"data.path={missing}"])
    lines = [json.dumps(r) for r in _pairs(6)]
    lines[4] = lines[4][:-1] + ',}'
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=r"malformed\.jsonl, line 5: expected one JSON object per line .*invalid "
                                         r"JSON \(Expecting property name"):
        preflight([*TINY_DATA, f"data.path={malformed}"])
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in _pairs(4)))
    preflight([*TINY_DATA, f"data.path={good}"])
    # A PTX file without demonstration columns: the key, the file and the missing column.
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": "bake bread?", "answer": "knead"}) + "\n")
    with pytest.raises(UsageError, match=r"data\.ptx_path: .*questions\.jsonl.*'prompt'"):
        preflight([*TINY_DATA, f"data.path={good}", "learner.ptx_coeff=1", f"data.ptx_path={questions}"])


def test_a_mistake_found_by_the_job_itself_leaves_no_folder_either(tmp_path):
    """``job.run_dir`` is read by the job, after Hydra made the run folder: the message is the
    same kind, and the folder that holds only Hydra's files is removed."""
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    completed, _ = saferl("job=evaluate", f"job.run_dir={not_a_run}", "logger=none", cwd=work)
    assert_usage_error(completed, f"job.run_dir: {str(not_a_run)!r} holds no finished saferl run (no summary.json)")
    assert list(work.iterdir()) == []  # no outputs/<date>/<time>/, nor the empty folders above it


HEAVY = ("torch", "ray", "transformers", "deepspeed", "datasets")
SECTION_ERROR_PROBE = """
import sys
from saferl.cli_errors import UsageError
from saferl.cli_preflight import preflight
try:
    preflight(sys.argv[1:])
except UsageError as error:
    print(error)
print(sorted(name for name in {heavy!r} if name in sys.modules))
"""


@pytest.mark.parametrize(("override", "message"), [
    ("learner.kl_coeff=-0.5", "learner.kl_coeff: must be > 0"),
    ("deepspeed.zero_stage=7", "deepspeed.zero_stage"),
    ("runtime.num_ranks=0", "runtime.num_ranks"),
    ("learner=mocan learner.mocan.num_samples=3", "learner.mocan.num_samples must be an even number"),
    ("model.sft.steps=0", "model.sft.steps: expected an integer >= 1"),
    ("world.costs=[harm,harm] cost_limit=[-0.8,-0.8]", "world.costs: expected distinct cost names"),
    ("multiplier.lr=-1", "multiplier.lr: expected values > 0.0, found [-1.0]"),
    ("multiplier=pid multiplier.ema_alpha_p=1.0", "multiplier.ema_alpha_p: expected values < 1.0"),
    ("multiplier.initial_value=[1,1,1] experiment=world_two_costs", "multiplier.initial_value: expected a float or 2"),
    ("experiment=beaver_v1 data.max_length=10 generation.max_new_tokens=20", "data.max_length=10 leaves no prompt"),
    ("data=pku_saferlhf data.path=pairs.jsonl", "scorers.calibrate=true: there is no ground truth"),
    ("data=pku_saferlhf data.path=/nonexistent/pairs.jsonl scorers.calibrate=false",
     "/nonexistent/pairs.jsonl: expected an existing .json, .jsonl or .parquet file, or a folder of them, "
     "found nothing there (file not found)"),
])
def test_a_mistake_in_a_section_is_found_without_importing_torch_or_ray(override, message):
    """The learners' settings, the runtime's specs, every setup's settings (world, hub, tiny) and
    the multipliers' option rules are light modules: the preflight says a mistake in the learner,
    runtime, deepspeed, model, data, world or multiplier section, or a missing data file, before
    torch, Ray or transformers load (seconds sooner)."""
    completed = subprocess.run([sys.executable, "-c", SECTION_ERROR_PROBE.format(heavy=HEAVY), *override.split()],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    error, loaded = completed.stdout.strip().splitlines()
    assert message in error
    assert loaded == "[]"


def test_a_fresh_run_in_a_folder_holding_a_run_is_refused_before_hydra_writes_there(tmp_path):
    """The other run's files, its ``.hydra/overrides.yaml`` included, stay as they were."""
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("- debug=tiny\n")
    (folder / "summary.json").write_text("{}")
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    completed, _ = saferl("debug=tiny", "seed=5", f"hydra.run.dir={folder}", cwd=tmp_path)
    assert_usage_error(completed, f"{folder} already holds a run (summary.json); pass resume=auto to "
                                  "continue it, or choose another folder (nothing was changed)")
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before
