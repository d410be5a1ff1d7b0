"""The sweep summary (``saferl.eval.sweep_load``, ``sweep_table``, ``sweep_plot`` and
``sweep_summary``): reading a Hydra multirun folder, the table, the CSV, the plot and the
``saferl-sweep-summary`` command, on a hand-built sweep with known numbers.

The sweep is ``saferl -m learner=ppo_lag,mocan cost_limit=-1.0,-0.8 seed=3``: four jobs; job 3
(mocan at −0.8) has no ``summary.json`` (it failed or is still running); job 2 (mocan at −1.0)
points at a predicted frontier CSV written by the real ``write_frontier`` from the real
``predict_frontier``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from rich.console import Console

from saferl.core.dual import DualProblem, predict_frontier, solve
from saferl.eval.frontier import frontier_table, write_frontier
from saferl.eval.sweep_load import SCORE_KEYS, SweepInputError, load_sweep
from saferl.eval.sweep_summary import main, write_sweep_summary
from saferl.eval.sweep_table import print_sweep_summary, sweep_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scores(reward: float, cost: float, kl: float, gap: float, violation: float = 0.0) -> dict:
    """A score block as ``summary.json`` holds it (``expected_cost``, ``violation``: lists, one entry
    per constraint)."""
    return {
        "expected_reward": reward,
        "expected_cost": [cost],
        "kl": kl,
        "objective": reward - 0.5 * kl,
        "safe_rate": 0.625,
        "kl_to_optimum": 0.0246 * gap,
        "lagrangian_gap": 0.0123 * gap,
        "normalised_lagrangian_gap": gap,
        "violation": [violation],
    }


def as_json(value):
    """A loaded score value as ``summary.json`` writes it (tuples are JSON lists)."""
    return list(value) if isinstance(value, tuple) else value


REFERENCE = scores(0.1000, -0.5000, 0.0, 1.0, violation=0.5)
# job → (overrides, summary.json or None)
JOBS: dict[int, tuple[list[str], dict | None]] = {
    0: (
        ["learner=ppo_lag", "cost_limit=-1.0", "seed=3"],
        {
            "method": "ppo_lag",
            "beta": 0.5,
            "cost_limit": -1.0,
            "headline": 0.2718,
            "trained": scores(0.4321, -0.9876, 0.3141, 0.2718, violation=0.0124),
            "reference": REFERENCE,
            "optimum": scores(0.5555, -1.0, 0.4444, 0.0),
            "multiplier": [1.2345],
            "optimal_multiplier": [1.1111],
            "predicted_frontier_csv": None,
        },
    ),
    1: (
        ["learner=ppo_lag", "cost_limit=-0.8", "seed=3"],
        {
            "method": "ppo_lag",
            "beta": 0.5,
            "cost_limit": -0.8,
            "headline": 0.1357,
            "trained": scores(0.6789, -0.8123, 0.2468, 0.1357),
            "reference": REFERENCE,
            "optimum": scores(0.7777, -0.8, 0.3333, 0.0),
            "multiplier": [0.9753],
            "optimal_multiplier": [0.8642],
            "predicted_frontier_csv": None,
        },
    ),
    2: (
        ["learner=mocan", "cost_limit=-1.0", "seed=3"],
        {
            "method": "mocan",
            "beta": 0.5,
            "cost_limit": -1.0,
            "headline": 0.0987,
            "trained": scores(0.5012, -1.0046, 0.4012, 0.0987, violation=0.0046),
            "reference": REFERENCE,
            "optimum": scores(0.5555, -1.0, 0.4444, 0.0),
            "multiplier": [1.0502],
            "optimal_multiplier": [1.1111],
            "predicted_frontier_csv": "mocan/frontier.csv",
        },
    ),
    3: (["learner=mocan", "cost_limit=-0.8", "seed=3"], None),
}


def write_job(folder: Path, overrides: list[str], summary: dict | None) -> None:
    hydra = folder / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    config = {"beta": 0.5, "seed": 3, "cost_limit": float(overrides[1].split("=")[1])}
    (hydra / "config.yaml").write_text(
        "".join(f"{key}: {value}\n" for key, value in config.items())
    )
    (hydra / "hydra.yaml").write_text(f"hydra:\n  mode: MULTIRUN\n  job:\n    num: {folder.name}\n")
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))


def small_frontier():
    """A sampled MoCAN-style problem: 3 prompts × 4 reference samples, one cost."""
    rewards = torch.tensor(
        [[1.0, 0.5, -0.2, 0.3], [0.8, -0.5, 0.1, 0.9], [0.2, 0.4, 1.2, -0.1]], dtype=torch.float64
    )
    costs = torch.tensor(
        [[0.5, -1.0, -1.0, 0.2], [1.0, -1.0, -0.5, 0.8], [-1.0, -1.0, 0.9, -0.2]],
        dtype=torch.float64,
    )
    problem = DualProblem.from_samples(rewards, costs, beta=0.5, cost_limit=-0.3)
    return predict_frontier(problem, [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]), solve(problem)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    folder = tmp_path / "multirun" / "2026-11-27" / "11-08-25"
    for job, (overrides, summary) in JOBS.items():
        write_job(folder / str(job), overrides, summary)
    frontier, solution = small_frontier()
    write_frontier(frontier, folder / "2" / "mocan", "MoCAN predicted frontier", solution)
    (folder / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    return folder


def test_load_sweep_reads_every_job_its_overrides_and_its_summary(sweep: Path):
    summary = load_sweep(sweep)
    assert summary.multirun
    assert summary.folder == sweep
    assert summary.swept_keys == ("learner", "cost_limit")  # seed=3 is common: not swept
    assert [run.job for run in summary.runs] == [0, 1, 2, 3]
    assert [run.status for run in summary.runs] == ["ok", "ok", "ok", "missing"]
    assert summary.missing == (summary.runs[3],)
    assert summary.notes == ()
    for run in summary.runs:
        overrides, expected = JOBS[run.job]
        assert run.run_dir == sweep / str(run.job)
        assert run.overrides == dict(item.split("=") for item in overrides)
        assert run.swept == {
            "learner": run.overrides["learner"],
            "cost_limit": run.overrides["cost_limit"],
        }
        if expected is None:
            assert run.summary is None
            continue
        result = run.summary
        assert run.run_dir == sweep / str(run.job) and (run.run_dir / "summary.json").is_file()
        assert result.method == expected["method"]
        assert result.beta == expected["beta"]
        assert result.cost_limit == (expected["cost_limit"],)
        assert result.headline == expected["headline"]
        for block in ("trained", "reference", "optimum"):
            loaded = getattr(result, block)
            assert {key: as_json(getattr(loaded, key)) for key in SCORE_KEYS} == expected[block]
        assert result.multiplier == tuple(expected["multiplier"])
        assert result.optimal_multiplier == tuple(expected["optimal_multiplier"])
    assert summary.runs[0].label() == "learner=ppo_lag, cost_limit=-1.0"

    # The MoCAN job's predicted frontier reads back exactly what write_frontier wrote.
    mocan = summary.runs[2]
    assert mocan.predicted_frontier_path == sweep / "2" / "mocan" / "frontier.csv"
    assert mocan.summary.predicted_frontier_csv == "mocan/frontier.csv"  # as written: relative to the run
    frontier, _ = small_frontier()
    rows = frontier_table(frontier)
    predicted = mocan.predicted_frontier
    assert predicted is not None and predicted.path == mocan.predicted_frontier_path
    assert predicted.multiplier == tuple(row["multiplier"] for row in rows)
    assert predicted.expected_reward == tuple(row["expected_reward"] for row in rows)
    assert predicted.expected_cost == tuple(row["expected_cost"] for row in rows)
    assert predicted.kl == tuple(row["kl"] for row in rows)
    assert all(predicted.feasible)
    assert summary.runs[0].predicted_frontier is None


def test_jobs_sort_numerically_and_a_single_run_folder_is_a_one_job_sweep(tmp_path: Path):
    _, summary = JOBS[0]
    for job, limit in ((10, "-0.6"), (2, "-1.0"), (1, "-0.8")):
        write_job(
            tmp_path / "sweep" / str(job), ["learner=ppo_lag", f"cost_limit={limit}"], summary
        )
    loaded = load_sweep(tmp_path / "sweep")
    assert [run.job for run in loaded.runs] == [1, 2, 10]
    assert loaded.swept_keys == ("cost_limit",)

    single = load_sweep(tmp_path / "sweep" / "10")
    assert not single.multirun
    assert [run.job for run in single.runs] == [10]
    assert single.swept_keys == ()
    assert single.runs[0].overrides == {"learner": "ppo_lag", "cost_limit": "-0.6"}
    assert single.runs[0].summary.trained.kl == summary["trained"]["kl"]

    # A plain run folder (no .hydra/, e.g. `saferl hydra.output_subdir=null`) is job 0.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "summary.json").write_text(json.dumps(summary))
    loaded = load_sweep(plain)
    assert [(run.job, run.overrides, run.status) for run in loaded.runs] == [(0, {}, "ok")]


def table_text(summary) -> str:
    buffer = io.StringIO()
    print_sweep_summary(summary, Console(file=buffer, width=220))
    return buffer.getvalue()


def test_table_prints_every_job_with_its_numbers_whole(sweep: Path, capsys):
    summary = load_sweep(sweep)
    text = table_text(summary)
    rows = [line for line in text.splitlines() if line.startswith("│")]
    lines = {
        job: next(line for line in rows if line.split("│")[1].strip() == str(job)) for job in JOBS
    }
    for job, (overrides, expected) in JOBS.items():
        line = lines[job]
        assert overrides[0].split("=")[1] in line and overrides[1].split("=")[1] in line
        if expected is None:
            assert "missing" in line
            continue
        trained = expected["trained"]
        for number in (
            f"{trained['expected_reward']:.4f}",
            f"{trained['expected_cost'][0]:.4f}",
            f"{trained['kl']:.4f}",
            f"{trained['safe_rate']:.3f}",
            f"{trained['violation'][0]:.4f}",
            f"{trained['normalised_lagrangian_gap']:.3f}",
            f"{expected['multiplier'][0]:.4f}",
            f"{expected['optimal_multiplier'][0]:.4f}",
            f"{expected['optimum']['expected_reward']:.4f}",
            f"{expected['optimum']['expected_cost'][0]:.4f}",
            expected["method"],
        ):
            assert number in line, (number, line)
    assert "…" not in text  # nothing cut
    # The feasible verdict states its tolerance: job 0 breaks its limit by 0.0124 > 0.001, job 2
    # by 0.0046 > 0.001, job 1 not at all.
    assert "E c ≤ d + 0.001" in text and "norm. Lagr. gap" in text
    header = next(line for line in text.splitlines() if "E c ≤ d" in line)
    column = [cell.strip() for cell in header.split("┃")].index("E c ≤ d + 0.001")
    verdicts = {job: lines[job].split("│")[column].strip() for job in (0, 1, 2)}
    assert verdicts == {0: "no", 1: "yes", 2: "no"}

    # The default console is wide enough for the whole table, whatever the terminal says.
    print_sweep_summary(summary)
    printed = capsys.readouterr().out
    assert "…" not in printed
    assert f"{JOBS[2][1]['trained']['expected_reward']:.4f}" in printed


def test_write_sweep_summary_csv_rows_equal_the_inputs_and_png_is_valid(
    sweep: Path, tmp_path: Path
):
    from matplotlib.image import imread

    summary = load_sweep(sweep)
    out = tmp_path / "report"
    csv_path, png_path = write_sweep_summary(summary, out)
    assert (csv_path, png_path) == (out / "sweep_summary.csv", out / "frontier.png")

    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["job"]) for row in rows] == list(JOBS)
    for row in rows:
        overrides, expected = JOBS[int(row["job"])]
        assert row["override.learner"] == overrides[0].split("=")[1]
        assert row["override.cost_limit"] == overrides[1].split("=")[1]
        assert row["run_dir"] == row["job"]
        if expected is None:
            assert row["status"] == "missing"
            assert row["trained_expected_reward"] == "" and row["method"] == ""
            continue
        assert row["status"] == "ok"
        assert row["method"] == expected["method"]
        assert float(row["beta"]) == expected["beta"]
        assert float(row["cost_limit"]) == expected["cost_limit"]
        assert float(row["headline"]) == expected["headline"]
        for block in ("trained", "reference", "optimum"):
            for key in SCORE_KEYS:
                value = expected[block][key]
                if isinstance(value, list):  # per constraint: ';'-separated
                    assert [float(item) for item in row[f"{block}_{key}"].split(";")] == value
                else:
                    assert float(row[f"{block}_{key}"]) == value  # exact: repr
        assert float(row["multiplier"]) == expected["multiplier"][0]
        assert float(row["optimal_multiplier"]) == expected["optimal_multiplier"][0]
        frontier = expected["predicted_frontier_csv"]
        assert row["predicted_frontier_csv"] == (
            "" if frontier is None else f"{row['job']}/{frontier}"
        )
    assert sweep_table(summary)[0]["trained_kl"] == JOBS[0][1]["trained"]["kl"]

    assert png_path.read_bytes()[:8] == PNG_MAGIC
    image = imread(png_path)
    assert image.shape == (780, 1200, 4)  # 10 × 6.5 inches at 120 dpi, RGBA
    assert image[..., :3].std() > 0.05  # something was drawn


def test_existing_outputs_are_not_overwritten_unless_asked(sweep: Path):
    summary = load_sweep(sweep)
    csv_path, png_path = write_sweep_summary(summary, sweep)
    png_path.write_bytes(b"sentinel")
    csv_path.unlink()
    with pytest.raises(FileExistsError, match="frontier.png already exists.*overwrite"):
        write_sweep_summary(summary, sweep)
    assert not csv_path.exists()  # nothing written before refusing
    assert png_path.read_bytes() == b"sentinel"
    write_sweep_summary(summary, sweep, overwrite=True)
    assert png_path.read_bytes()[:8] == PNG_MAGIC and csv_path.exists()


def test_bad_inputs_are_errors_that_name_the_file_and_key(sweep: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'} does not exist"):
        load_sweep(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    with pytest.raises(SweepInputError, match=r"empty holds no run folders.*notes\.txt"):
        load_sweep(tmp_path / "empty")

    path = sweep / "1" / "summary.json"
    original = json.loads(path.read_text())
    path.write_text('{"method": "ppo_lag", "beta": ')
    with pytest.raises(SweepInputError, match=rf"{path} is not valid JSON"):
        load_sweep(sweep)
    for key, change, message in (
        ("beta", None, rf"{path}: missing required key 'beta'"),
        ("trained", {"kl": 0.1}, rf"{path}: missing required key 'trained.expected_reward'"),
        (
            "trained",
            {key: value for key, value in original["trained"].items() if key != "lagrangian_gap"},
            rf"{path}: missing required key 'trained.lagrangian_gap'",
        ),
        (
            "trained",
            {
                **{k: v for k, v in original["trained"].items() if not k.startswith("normalised")},
                "normalised_gap": 0.5,
            },
            rf"{path}: missing required key 'trained.normalised_lagrangian_gap'.*before the Lagrangian",
        ),
        (
            "reference",
            {**original["reference"], "violation": [0.1, "x"]},
            rf"{path}: key 'reference.violation\[1\]' must be a number",
        ),
        ("beta", "half", rf"{path}: key 'beta' must be a number; found 'half'"),
        ("multiplier", [1.0, "x"], rf"{path}: key 'multiplier\[1\]' must be a number"),
    ):
        broken = dict(original)
        if change is None:
            del broken[key]
        else:
            broken[key] = change
        path.write_text(json.dumps(broken))
        with pytest.raises(SweepInputError, match=message):
            load_sweep(sweep)
    path.write_text(json.dumps(original))

    overrides = sweep / "0" / ".hydra" / "overrides.yaml"
    overrides.write_text("learner: ppo_lag\n")
    with pytest.raises(SweepInputError, match=rf"{overrides}: expected a YAML list"):
        load_sweep(sweep)


def test_unplottable_predicted_frontiers_become_notes(sweep: Path):
    # Two constraints: read, not plotted, with a note naming the file.
    rewards = torch.tensor([[1.0, 0.0, 0.5]], dtype=torch.float64)
    costs = torch.tensor([[[0.5, 0.2], [-1.0, -0.5], [0.0, 0.1]]], dtype=torch.float64)
    problem = DualProblem.from_samples(rewards, costs, beta=0.5, cost_limit=[0.0, 0.0])
    shutil.rmtree(sweep / "2" / "mocan")
    csv_path, _ = write_frontier(
        predict_frontier(problem, [0.0, 1.0]), sweep / "2" / "mocan", "m = 2"
    )
    summary = load_sweep(sweep)
    assert summary.runs[2].predicted_frontier is None
    assert summary.notes == (
        f"job 2: predicted frontier {csv_path} has m = 2 constraints; only m = 1 is plotted",
    )
    assert "only m = 1 is plotted" in table_text(summary)
    write_sweep_summary(summary, sweep)  # still plots the rest

    csv_path.unlink()
    (sweep / "2" / "mocan" / "frontier.png").unlink()
    summary = load_sweep(sweep)
    assert "does not exist; not plotted" in summary.notes[0]
    write_sweep_summary(summary, sweep, overwrite=True)


def test_main_in_process_and_through_the_console_script(sweep: Path, tmp_path: Path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("saferl-sweep-summary: error: ")
    assert f"{tmp_path / 'nowhere'} does not exist" in captured.err
    assert "Traceback" not in captured.err

    out = tmp_path / "out"
    assert main([str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{JOBS[1][1]['trained']['expected_reward']:.4f}" in printed
    assert (
        f"wrote {out / 'sweep_summary.csv'}" in printed
        and f"wrote {out / 'frontier.png'}" in printed
    )
    assert main([str(sweep), "--out", str(out)]) == 2  # refuses to overwrite, before printing
    captured = capsys.readouterr()
    assert f"{out / 'sweep_summary.csv'} already exists" in captured.err and captured.out == ""
    assert main([str(sweep), "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()

    executable = shutil.which("saferl-sweep-summary")
    assert executable is not None, "run `pip install -e . --no-deps` to install the console script"
    done = subprocess.run([executable, str(sweep)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"wrote {sweep / 'sweep_summary.csv'}" in done.stdout
    assert f"{JOBS[0][1]['trained']['kl']:.4f}" in done.stdout
    assert (sweep / "frontier.png").read_bytes()[:8] == PNG_MAGIC
    done = subprocess.run(
        [executable, str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr
    assert math.isfinite(
        float(next(csv.DictReader((sweep / "sweep_summary.csv").open()))["trained_kl"])
    )


def two_cost_scores(reward: float, costs: tuple[float, float], gap: float, violation=(0.0, 0.0)) -> dict:
    """A score block of a two-constraint run (harm, refusal): two entries per constraint key."""
    return {**scores(reward, costs[0], 0.3, gap), "expected_cost": list(costs), "violation": list(violation)}


def test_a_two_constraint_sweep_has_one_cost_column_entry_and_one_panel_per_constraint(tmp_path: Path, capsys):
    """``saferl -m experiment=world_two_costs cost_limit=[-0.8,0.02],[-0.8,0.05]``: two jobs with
    m = 2; the table and CSV hold both costs and violations, the PNG has a harm and a refusal panel."""
    from matplotlib.image import imread

    folder = tmp_path / "two_costs"
    reference = two_cost_scores(0.1, (-0.708, 0.129), 1.0, violation=(0.092, 0.109))
    jobs = {
        0: ("[-0.8,0.02]", (-0.8, 0.02), two_cost_scores(0.61, (-0.7931, 0.0312), 0.2, violation=(0.0069, 0.0112))),
        1: ("[-0.8,0.05]", (-0.8, 0.05), two_cost_scores(0.64, (-0.8012, 0.0301), 0.1)),
    }
    for job, (text, limits, trained) in jobs.items():
        run_dir = folder / str(job)
        write_job(run_dir, ["experiment=world_two_costs", "cost_limit=0"], None)
        (run_dir / ".hydra" / "overrides.yaml").write_text(f"- experiment=world_two_costs\n- cost_limit={text}\n")
        optimum = two_cost_scores(0.7, limits, 0.0)
        (run_dir / "summary.json").write_text(json.dumps({
            "method": "ppo_lag", "beta": 0.5, "cost_limit": list(limits), "headline": trained["normalised_lagrangian_gap"],
            "trained": trained, "reference": reference, "optimum": optimum, "multiplier": [0.6, 0.3],
            "optimal_multiplier": [0.61, 0.28], "cost_names": ["harm", "refusal"],
        }))
    (folder / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    summary = load_sweep(folder)
    assert [run.summary.cost_limit for run in summary.runs] == [(-0.8, 0.02), (-0.8, 0.05)]
    assert summary.runs[0].summary.cost_names == ("harm", "refusal")
    print_sweep_summary(summary, Console(width=400))
    printed = capsys.readouterr().out
    assert "-0.7931, 0.0312" in printed and "0.0069, 0.0112" in printed and "no" in printed  # job 0 breaks both
    assert "E c (per constraint)" in printed
    csv_path, png_path = write_sweep_summary(summary, tmp_path / "report")
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["cost_limit"] for row in rows] == ["-0.8;0.02", "-0.8;0.05"]
    assert [row["trained_expected_cost"] for row in rows] == ["-0.7931;0.0312", "-0.8012;0.0301"]
    assert [row["trained_violation"] for row in rows] == ["0.0069;0.0112", "0.0;0.0"]
    image = imread(png_path)
    assert image.shape == (780, 1920, 4)  # two panels: 16 × 6.5 inches at 120 dpi
    left, right = image[:, :960, :3], image[:, 960:, :3]
    assert left.std() > 0.05 and right.std() > 0.05  # both panels drawn


def test_each_job_has_one_colour_linking_its_policy_to_its_optimum_and_labels_do_not_overprint(sweep: Path):
    """The plot gives each job its own colour, shared by its trained policy, its exact optimum and
    the line between them; jobs are named in a legend outside the axes (nothing written on them)."""
    from matplotlib.colors import to_rgba

    from saferl.eval.sweep_plot import plot_sweep

    summary = load_sweep(sweep)
    figure = plot_sweep(summary)
    (axes,) = figure.axes
    by_gid = {line.get_gid(): line for line in axes.lines if line.get_gid()}
    finished = [run for run in summary.runs if run.summary is not None]
    colours = set()
    for run in finished:
        trained, optimum, link = (by_gid[f"{kind}:{run.job}"] for kind in ("trained", "optimum", "link"))
        colour = to_rgba(trained.get_color())
        assert to_rgba(optimum.get_color()) == to_rgba(link.get_color()) == colour
        # The link runs from the policy to the optimum.
        assert list(zip(link.get_xdata(), link.get_ydata(), strict=True)) == [
            (run.summary.trained.expected_cost[0], run.summary.trained.expected_reward),
            (run.summary.optimum.expected_cost[0], run.summary.optimum.expected_reward),
        ]
        colours.add(colour)
    assert len(colours) == len(finished) == 3
    legend_texts = [text.get_text() for text in axes.get_legend().get_texts()]
    for run in finished:
        assert any(run.label() in text for text in legend_texts), run.label()
    assert "learner=ppo_lag, cost_limit=-1.0 (violation 0.012)" in legend_texts
    # Nothing is written over the points, and the legend lies right of the axes.
    assert len(axes.texts) == 0
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    assert axes.get_legend().get_window_extent(renderer).x0 >= axes.get_window_extent(renderer).x1
