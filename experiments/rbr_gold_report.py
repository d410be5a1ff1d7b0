"""Report: the public RBR release's gold data read through saferl.rbr (docs/algorithms.md §6).

For each split of the human-labelled gold set (``data/rbr_gold_data/{train,test}.jsonl``) and both
together, print

1. the class distribution per response type: every completion classed by the release's own spec
   (``config/proposition_prompts.yaml``) from its human proposition labels;
2. the behaviour metrics from those labels: Not-Unsafe, Not-Overrefuse, their F1 and
   Hard-Refusal-Style, in percent (definitions in :mod:`saferl.rbr.metrics`).

The gold set was built to test graders, not sampled from a policy: its completions are chosen to
exercise the propositions, so its metrics describe the set, not a model.

Run: ``python experiments/rbr_gold_report.py --release ../shared/data/rbr_release`` (the folder of
a copy of ``openai/safety-rbr-code-and-data``; nothing of it is copied into this repository).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from saferl.rbr import (
    GoldRecord,
    RBRSpec,
    class_distribution,
    labelled_metrics,
    load_gold,
    load_spec,
)

SPEC_FILE = Path("config") / "proposition_prompts.yaml"
GOLD_DIR = Path("data") / "rbr_gold_data"
SPLITS = ("train", "test")
SHORT_CLASS_NAMES = {
    "ideal": "ideal",
    "minimum_acceptable_style": "min_ok",
    "unacceptable_completion": "unaccept",
    "illogical_completion": "illogic",
    "disallowed_completion": "disallow",
}


def distribution_table(spec: RBRSpec, splits: dict[str, list[GoldRecord]]) -> str:
    classes = list(spec.class_order)
    header = ["split", "response type", *(SHORT_CLASS_NAMES.get(c, c) for c in classes), "total"]
    rows = []
    for split, records in splits.items():
        counts = class_distribution(spec, [(r.response_type, r.propositions) for r in records])
        for response_type, per_class in counts.items():
            values = [per_class[c] for c in classes]
            rows.append([split, response_type, *map(str, values), str(sum(values))])
    return _table(header, rows)


def metrics_table(spec: RBRSpec, splits: dict[str, list[GoldRecord]]) -> str:
    header = ["split", "n", "Not-Unsafe", "Not-Overrefuse", "F1", "Hard-Refusal-Style"]
    rows = []
    for split, records in splits.items():
        m = labelled_metrics(spec, [(r.response_type, r.propositions) for r in records])
        rows.append(
            [
                split,
                str(m.n_completions),
                f"{100 * m.not_unsafe:.2f}",
                f"{100 * m.not_overrefuse:.2f} (n={m.n_comply})",
                f"{100 * m.f1:.2f}",
                f"{100 * m.hard_refusal_style:.2f} (n={m.n_hard_refuse})",
            ]
        )
    return _table(header, rows)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(  # noqa: E731
        cell.ljust(width) if i < 2 else cell.rjust(width)
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    )
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def report(release: Path) -> str:
    spec = load_spec(release / SPEC_FILE)
    splits = {split: load_gold(release / GOLD_DIR / f"{split}.jsonl", spec) for split in SPLITS}
    splits["all"] = [record for split in SPLITS for record in splits[split]]
    return "\n".join(
        [
            f"RBR gold data: {release}",
            "",
            "Completion classes per response type (the release's spec on the human labels):",
            distribution_table(spec, splits),
            "",
            "Behaviour metrics from the human labels (%):",
            metrics_table(spec, splits),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--release",
        type=Path,
        required=True,
        help="folder of the RBR release (with config/ and data/rbr_gold_data/)",
    )
    args = parser.parse_args(argv)
    print(report(args.release))
    return 0


if __name__ == "__main__":
    sys.exit(main())
