"""Markdown table of the Fashion-MNIST fidelity runs (scripts/fidelity_fmnist.sh).

Usage: python scripts/fidelity_report.py RUNS_ROOT
Reads RUN/metrics.jsonl (last epoch, test split) of every RUN named OBJ-VARIANT-sSEED.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean


def main(root: str) -> None:
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in sorted(Path(root).glob("*-s*/metrics.jsonl")):
        obj, variant, _ = run.parent.name.rsplit("-", 2)
        last = json.loads(run.read_text().splitlines()[-1])["eval"]["test"]
        rows[(obj, variant)].append(last)
    print("| objective | variant | seeds | clean acc | PGD-10 acc | mean E(x) - E(x*) |")
    print("|---|---|---|---|---|---|")
    for (obj, variant), recs in sorted(rows.items()):
        cells = [_cell([r["accuracy"] for r in recs], "{:.3f}"),
                 _cell([r["accuracy_adv"] for r in recs], "{:.3f}"),
                 _cell([r["dE_x"]["mean"] for r in recs], "{:+.3f}")]
        print(f"| {obj} | {variant} | {len(recs)} | " + " | ".join(cells) + " |")


def _cell(values: list[float], fmt: str) -> str:
    """Mean, then the per-seed values when there are several."""
    text = fmt.format(mean(values))
    if len(values) > 1:
        text += " (" + ", ".join(fmt.format(v) for v in values) + ")"
    return text


if __name__ == "__main__":
    main(sys.argv[1])
