"""Tables and dE(x) curves for docs/results/training.md from the runs of the Fashion-MNIST study.

    .venv/bin/python scripts/training_report.py runs/fmnist docs/results/img/training

Reads ``<root>/<objective>-s<seed>/metrics.jsonl`` and, where present, the robustness reports
``<run>/pgd20/robustness.json`` and ``<run>/aa/robustness.json`` written by
``robust-ebm attack``. Prints Markdown tables; writes ``dE_curves.png`` into the image folder.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import matplotlib
from safetensors.torch import load_file

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["standard", "pgd_at", "trades", "mart", "weat_adv", "weat_nat"]


def load_runs(root: Path) -> dict[tuple[str, int], dict]:
    runs = {}
    for d in sorted(root.iterdir()):
        m = re.fullmatch(r"(.+)-s(\d+)", d.name)
        if not m or not (d / "metrics.jsonl").is_file():
            continue
        hist = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        # a run is complete once it wrote its final model; others were stopped early
        run = {"dir": d, "history": hist, "complete": (d / "model.safetensors").is_file()}
        for tag in ("pgd20", "aa"):
            f = d / tag / "robustness.json"
            if f.is_file():
                run[tag] = json.loads(f.read_text())
        runs[(m.group(1), int(m.group(2)))] = run
    return runs


def pgd20_on_first(run_dir: Path, n: int) -> float:
    """PGD-20 robust accuracy on the first ``n`` of the points attacked by scripts/fmnist_eval.sh."""
    robust = load_file(str(run_dir / "pgd20" / "adversarial.safetensors"))["robust"][:n]
    return float(robust.double().mean())


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def main(root: str, img_dir: str) -> None:
    every = load_runs(Path(root))
    runs = {k: r for k, r in every.items() if r["complete"]}
    for (obj, seed), r in sorted(every.items()):
        if not r["complete"]:
            print(f"stopped early (not in the tables): {obj} seed {seed} after "
                  f"{len(r['history'])} epoch(s)")
    objectives = [o for o in ORDER if any(k[0] == o for k in runs)]
    partial = [o for o in ORDER if o not in objectives and (o, 0) in every]
    print("| objective | seeds | clean (first 1000) | PGD-20 (first 1000) | AutoAttack on the first n (clean and PGD-20 on the same n) | "
          "final test dE(x) mean | final train dE(x) mean |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for obj in objectives:
        rs = [r for (o, _), r in sorted(runs.items()) if o == obj]
        seeds = [s for (o, s) in sorted(runs) if o == obj]
        clean = [r["pgd20"]["clean_accuracy"] for r in rs if "pgd20" in r]
        pgd = [r["pgd20"]["robust_accuracy"] for r in rs if "pgd20" in r]
        aa = [r["aa"]["robust_accuracy"] for r in rs if "aa" in r]
        aa_clean = [r["aa"]["clean_accuracy"] for r in rs if "aa" in r]
        pgd_same = [pgd20_on_first(r["dir"], r["aa"]["n"]) for r in rs if "aa" in r]
        de_test = [r["history"][-1]["eval"]["test"]["dE_x"]["mean"] for r in rs]
        de_train = [r["history"][-1]["eval"]["train"]["dE_x"]["mean"] for r in rs]
        print(f"| {obj} | {','.join(map(str, seeds))} | {fmt(clean)} | {fmt(pgd)} | "
              + (f"{fmt(aa)} (clean {fmt(aa_clean)}, PGD-20 {fmt(pgd_same)}, n={','.join(str(r['aa']['n']) for r in rs if 'aa' in r)})" if aa
                 else "not run") + " | "
              f"{statistics.mean(de_test):+.3f} | {statistics.mean(de_train):+.3f} |")

    print("\nPer epoch (seed 0): validation clean / PGD-10 accuracy and train-subset mean dE(x)\n")
    for obj in objectives + partial:
        r = every.get((obj, 0))
        if r is None:
            continue
        cells = [f"{h['eval']['val']['accuracy']:.3f}/{h['eval']['val']['accuracy_adv']:.3f}"
                 f" ({h['eval']['train']['dE_x']['mean']:+.2f})" for h in r["history"]]
        print(f"- {obj}{'' if r['complete'] else ' (stopped early)'}: " + ", ".join(cells))

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, split in zip(axes, ("train", "test")):
        for obj in objectives:
            for (o, s), r in sorted(runs.items()):
                if o != obj:
                    continue
                ep = [h["epoch"] for h in r["history"]]
                de = [h["eval"][split]["dE_x"]["mean"] for h in r["history"]]
                ax.plot(ep, de, marker="o", ms=3, ls="-" if s == 0 else "--",
                        color=f"C{ORDER.index(obj)}", label=f"{obj} s{s}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"mean dE(x) = E(x) - E(x*) on {split} subset (PGD-10, eps 0.1)")
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("dE(x)")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = Path(img_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "dE_curves.png", dpi=110)
    print(f"\nwrote {out / 'dE_curves.png'}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
