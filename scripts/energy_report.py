"""Cross-model tables for docs/results/energy.md from the outputs of scripts/energy_study.sh.

    .venv/bin/python scripts/energy_report.py runs/energy docs/results/img/energy

Reads ``<root>/<model>-s0/energy/energy.json`` and ``<root>/<model>-s0/detect-eval/detection.json``
and prints Markdown tables: mean dE(x) (and its std) per attack and model, accuracy under each
attack, the detector's AUROC per attack and model, and HE-PGD against PGD. Copies the
per-model plots into the image folder.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

MODELS = ["standard", "pgd_at", "trades", "weat_adv"]
ORDER = ["fgsm", "pgd", "apgd_ce", "cw", "trades_kl", "apgd_dlr", "apgd_t", "square", "fab",
         "he_pgd", "noise", "pgd_detector_aware", "he_adaptive"]
LABEL = {"standard": "standard", "pgd_at": "SAT", "trades": "TRADES", "weat_adv": "WEAT_adv"}


def load(root: Path, name: str, sub: str, file: str) -> dict | None:
    p = root / f"{name}-s0" / sub / file
    return json.loads(p.read_text()) if p.is_file() else None


def main(root_arg: str, img_arg: str) -> None:
    root, img = Path(root_arg), Path(img_arg)
    img.mkdir(parents=True, exist_ok=True)
    energy = {m: load(root, m, "energy", "energy.json") for m in MODELS}
    detect = {m: load(root, m, "detect-eval", "detection.json") for m in MODELS}
    have = [m for m in MODELS if energy[m]]
    attacks = sorted(energy[have[0]]["attacks"], key=ORDER.index) if have else []

    print("clean: " + ", ".join(
        f"{LABEL[m]} acc {energy[m]['clean']['accuracy']:.3f}, E(x) mean "
        f"{energy[m]['clean']['E_x']['mean']:.2f} (std {energy[m]['clean']['E_x']['std']:.2f})"
        for m in have))
    print("\n| attack | " + " | ".join(f"{LABEL[m]} acc / dE(x) mean ± std / share below"
                                      for m in have) + " |")
    print("|---|" + "---|" * len(have))
    for a in attacks:
        cells = []
        for m in have:
            r = energy[m]["attacks"].get(a)
            cells.append("-" if r is None else
                         f"{r['accuracy_adv']:.3f} / {r['dE_x']['mean']:+.2f} ± {r['dE_x']['std']:.2f}"
                         f" / {r['share_E_adv_below']:.2f}")
        print(f"| {a} | " + " | ".join(cells) + " |")

    dhave = [m for m in MODELS if detect[m]]
    if dhave:
        print("\nDetector (T, tau from calibration on the validation split; AUROC / TPR at tau):\n")
        print("| attack | " + " | ".join(LABEL[m] for m in dhave) + " |")
        print("|---|" + "---|" * len(dhave))
        print("| T, tau, FPR | " + " | ".join(
            f"{detect[m]['detector']['temperature']:g}, {detect[m]['detector']['threshold']:.2f}, "
            f"{next(iter(detect[m]['attacks'].values()))['fpr']:.3f}" for m in dhave) + " |")
        names = sorted((a for a in detect[dhave[0]]["attacks"] if not a.startswith("he_pgd[")),
                       key=ORDER.index)
        for a in names:
            cells = []
            for m in dhave:
                r = detect[m]["attacks"].get(a)
                cells.append("-" if r is None else f"{r['auroc']:.3f} / {r['tpr']:.3f}")
            print(f"| {a} | " + " | ".join(cells) + " |")
        print("\nHE-PGD over gamma (accuracy / mean E(x*) - E(x) / detector TPR at tau):\n")
        print("| gamma | " + " | ".join(LABEL[m] for m in dhave) + " |")
        print("|---|" + "---|" * len(dhave))
        gammas = [row["gamma"] for row in detect[dhave[0]]["he_study"]]
        for i, g in enumerate(gammas):
            cells = []
            for m in dhave:
                rows = detect[m]["he_study"]
                r = rows[i] if i < len(rows) else None
                cells.append("-" if r is None else
                             f"{r['accuracy_adv']:.3f} / {r['E_rel_mean']:+.2f} / {r['tpr']:.3f}")
            print(f"| {g:g} | " + " | ".join(cells) + " |")

    for m in have:
        for sub, f in (("energy", "energy_hist.png"), ("energy", "pgd_sweep.png"),
                       ("detect-eval", "roc.png"), ("detect-eval", "he_study.png")):
            src = root / f"{m}-s0" / sub / f
            if src.is_file():
                shutil.copyfile(src, img / f"{m}-{f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
