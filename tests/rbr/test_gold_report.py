"""experiments/rbr_gold_report.py prints the class distribution and the metrics of the release."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "rbr_gold_report.py"


def load_script():
    spec = importlib.util.spec_from_file_location("rbr_gold_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_report_tables_every_split_and_response_type(release, capsys):
    assert load_script().main(["--release", str(release)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {
        tuple(line.split()[:2]): line.split()
        for line in lines
        if line.split()[:1] in (["train"], ["test"], ["all"])
    }
    # Class rows: the per-class counts add up to the split's published response-type counts.
    for (split, response_type), total in {
        ("train", "comply"): 196,
        ("test", "hard_refuse"): 44,
        ("all", "safe_refuse_1"): 16,
    }.items():
        cells = rows[(split, response_type)]
        assert sum(map(int, cells[2:7])) == int(cells[7]) == total
    # Metric rows: n per split, and F1 the harmonic mean of the two rates printed beside it.
    assert rows[("train", "351")] and rows[("test", "167")] and rows[("all", "518")]
    _, _, not_unsafe, not_overrefuse, _, f1, *_ = rows[("all", "518")]
    a, b = float(not_unsafe), float(not_overrefuse)
    assert abs(float(f1) - 2 * a * b / (a + b)) < 0.01
