"""The demo's report: summary numbers first, one section per stage, provenance last.

Builds a :class:`~robust_ebm.reports.document.Document` from the stage records and writes
``report.html`` (self-contained) and ``report.md`` (its twin) into the output folder.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from ..reports.document import Code, Document, Figure, Paragraph, Section, Table, render_markdown
from ..reports.html import render_html
from .config import LABELS
from .runner import StageRecord

__all__ = ["SECTIONS", "build_document", "write_report"]

SIGN = ("Energy convention, used everywhere below: E(x) = -logsumexp f(x) (free energy), "
        "E(x, y) = -f(x)[y] (joint energy), f the logits; lower energy = more likely. "
        "dE(x) = E(x) - E(x*) for a natural x and its attacked x*: positive when the attack "
        "lowered the energy. Budgets: L-inf eps in [0, 1] pixel units.")
# anchor -> title, in report order (tests check that every one is present)
SECTIONS = {
    "summary": "Summary",
    "training": "1. Adversarial training from scratch: WEAT_adv beside SAT",
    "energy": "2. Energy of clean and attacked images",
    "detection": "3. Energy detector, HE-PGD and adaptive attacks",
    "generation": "4. Generation with SGLD",
    "robustness": "5. AutoAttack (committed) beside a fresh PGD",
    "provenance": "Provenance",
}


def _f(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _lab(m: str) -> str:
    return LABELS.get(m, m)


def _fig(rec: StageRecord, key: str, caption: str, out: Path) -> Figure:
    return Figure(str((rec.dir / rec.result["figures"][key]).relative_to(out)), caption)


def summary(r: dict[str, StageRecord]) -> Section:
    rob, en, det, gen, tr = (r[k].result for k in
                             ("robustness", "energy", "detection", "generation", "training"))
    acc = Table(
        ["objective", "clean %", f"PGD-{rob['steps']} %", "AutoAttack % (committed)"],
        [[_lab(m), _f(f["clean"], ".1f"), _f(f["pgd"], ".1f"),
          _f(rob["committed"].get(m, {}).get("autoattack"), ".1f")]
         for m, f in rob["fresh"].items()],
        f"committed models, first {rob['n']} test points (AutoAttack: first "
        f"{next(iter(rob['committed'].values()))['n']})")
    attacks = list(next(iter(en["models"].values()))["attacks"])
    gaps = Table(["attack", *(_lab(m) for m in en["models"])],
                 [[a, *(_f(res["attacks"][a]["dE_x"]["mean"]) for res in en["models"].values())]
                  for a in attacks],
                 "mean dE(x) = E(x) - E(x*) per attack (> 0: the attack lowered E(x))")
    rows = det["rows"]
    dtab = Table(["attack", "AUROC", "TPR at tau", "FPR at tau"],
                 [[k, _f(v["auroc"]), _f(v["tpr"]), _f(v["fpr"])] for k, v in rows.items()
                  if not k.startswith("he_pgd[")],
                 f"energy detector on the standard model, tau calibrated on {det['n_cal']} "
                 "held-out test points")
    he = min(det["he_study"], key=lambda s: s["tpr"] if s["tpr"] is not None else 2.0)
    fid = Table(["model", "FID", "KID", "IS"],
                [[_lab(m), _f(v["fid"], ".1f"), _f(v["kid_mean"], ".4f"), _f(v["is_mean"], ".2f")]
                 for m, v in gen["models"].items()]
                + [[k, _f(v["fid"], ".1f"), _f(v["kid_mean"], ".4f"), _f(v["is_mean"], ".2f")]
                   for k, v in gen["references"].items()],
                "SGLD samples scored on the committed feature network (lower FID/KID = closer "
                "to real images)")
    trained = "; ".join(
        f"{_lab(k)} clean {v['test']['accuracy']:.3f}, PGD {v['test']['accuracy_adv']:.3f}, "
        f"dE(x) {v['test']['dE_x_mean']:+.3f}" for k, v in tr["final"].items())
    return Section(SECTIONS["summary"], "summary", [
        Paragraph(SIGN), acc, gaps, dtab,
        Paragraph(f"HE-PGD evasion: at gamma {he['gamma']:g} the detector flags "
                  f"{_f(he['tpr'])} of the successful x* (FPR {_f(he['fpr'])}), against "
                  f"{_f(rows['pgd']['tpr'])} for plain PGD; the adaptive HE-PGD (gamma "
                  f"{_f(det['he_adaptive_gamma'], '.3g')} searched on the calibration points) "
                  f"gets TPR {_f(rows.get('he_adaptive', {}).get('tpr'))}."),
        fid,
        Paragraph(f"Trained from scratch in this run (after {tr['curves']['pgd_at'][-1]['step']} "
                  f"steps, test points): {trained}."),
    ])


def _training(rec: StageRecord, out: Path) -> Section:
    res, p = rec.result, rec.params
    blocks: list[Any] = [
        Paragraph(f"Both objectives train small_cnn from the same initial weights on {p['train_subset']} "
                  f"training images, batch {p['batch_size']}, {p['evals']} x {p['steps_per_eval']} "
                  f"SGD steps (one-cycle LR, peak {p['lr']}), inner PGD-{p['inner_steps']} at eps "
                  f"{p['eps']:g}. After every {p['steps_per_eval']} steps: clean and PGD-"
                  f"{p['eval_steps']} accuracy and dE(x) on {p['eval_n']} test and "
                  f"{p['eval_n']} training images (lines: mean; band: +- std on test)."),
        _fig(rec, "dynamics", "energy dynamics during adversarial training", out)]
    for name, rows in res["curves"].items():
        blocks.append(Table(
            ["step", "loss", "test clean", "test PGD", "test dE(x) mean", "test dE(x) std",
             "train dE(x) mean", "s"],
            [[str(r["step"]), _f(r["loss"]), _f(r["test"]["accuracy"]),
              _f(r["test"]["accuracy_adv"]), _f(r["test"]["dE_x_mean"]),
              _f(r["test"]["dE_x_std"]), _f(r.get("train", {}).get("dE_x_mean")),
              _f(r["seconds"], ".1f")] for r in rows], _lab(name)))
    return Section(SECTIONS["training"], "training", blocks)


def _energy(rec: StageRecord, out: Path) -> Section:
    res, p = rec.result, rec.params
    blocks: list[Any] = [Paragraph(
        f"{p['n']} test images, L-inf eps {p['eps']:g}; iterative attacks {p['steps']} steps, "
        f"Square {p['square_queries']} queries; 'noise' is a random corner of the same ball "
        "(the control: it should leave E(x) unchanged).")]
    for m, r in res["models"].items():
        c = r["clean"]
        blocks.append(Table(
            ["attack", "acc(x*)", "E(x*) mean", "dE(x) mean", "dE(x) std", "dE(x,y) mean",
             "share E(x*) < E(x)", "s"],
            [[a, _f(v["accuracy_adv"]), _f(v["E_adv"]["mean"]), _f(v["dE_x"]["mean"]),
              _f(v["dE_x"]["std"]), _f(v["dE_xy"]["mean"]), _f(v["share_E_adv_below"]),
              _f(v["seconds"], ".1f")] for a, v in r["attacks"].items()],
            f"{_lab(m)}: clean accuracy {c['accuracy']:.3f}, clean E(x) mean "
            f"{c['E_x']['mean']:.3f} (std {c['E_x']['std']:.3f})"))
        blocks += [Paragraph(f"Note: {n}") for n in r.get("notes", [])]
    blocks.append(_fig(rec, "boxes", "E(x) of clean and attacked test images per model", out))
    return Section(SECTIONS["energy"], "energy", blocks)


def _detection(rec: StageRecord, out: Path) -> Section:
    res, p = rec.result, rec.params
    d = res["detector"]
    cal = d["info"]["calibration"]
    sign = "<=" if d["direction"] == "below" else ">="
    return Section(SECTIONS["detection"], "detection", [
        Paragraph(f"Standard model (clean accuracy {res['clean_accuracy']:.3f} on the "
                  f"{res['n']} evaluation points). The detector flags E_T(x) {sign} tau with T = "
                  f"{d['temperature']:g}, tau = {d['threshold']:.4f}, calibrated on test images "
                  f"{p['cal_start']}-{p['cal_start'] + res['n_cal'] - 1} attacked by PGD-"
                  f"{p['steps']} (calibration AUROC {_f(cal.get('auroc'))}); evaluated on test "
                  f"images 0-{res['n'] - 1}. Positives are successful x* only."),
        Table(["attack", "acc(x*)", "n adv", "AUROC", "TPR at tau", "FPR at tau",
               "TPR at 5% FPR"],
              [[k, _f(v.get("accuracy_adv")), str(v["n_adv"]), _f(v["auroc"]), _f(v["tpr"]),
                _f(v["fpr"]), _f(v["tpr_at_5pct_fpr"])] for k, v in res["rows"].items()
               if not k.startswith("he_pgd[")]),
        _fig(rec, "roc", "ROC of the energy detector (star: its operating point on PGD)", out),
        Paragraph("HE-PGD ascends CE + gamma E(x): larger gamma keeps E(x*) near clean energy "
                  "and hides x* from the detector (Mirza et al., arXiv 2407.06315). Adaptive "
                  f"HE-PGD used gamma {_f(res['he_adaptive_gamma'], '.3g')}, where mean E_T(x*) "
                  f"meets the clean mean on {p['search_n']} calibration points; "
                  "pgd_detector_aware adds a penalty for crossing tau to the CE loss."),
        Table(["gamma", "acc(x*)", "E(x*)-E(x) mean", "E(x*)-E(x) std", "detector TPR", "FPR"],
              [[f"{r['gamma']:g}", _f(r["accuracy_adv"]), _f(r["E_rel_mean"]),
                _f(r["E_rel_std"]), _f(r.get("tpr")), _f(r.get("fpr"))]
               for r in res["he_study"]], "HE-PGD over gamma"),
        _fig(rec, "he_study", "HE-PGD over gamma: accuracy, detector TPR/FPR, energy shift",
             out),
    ])


def _generation(rec: StageRecord, out: Path) -> Section:
    res, p = rec.result, rec.params
    rows = [[_lab(m), _f(v["fid"], ".1f"), _f(v["kid_mean"], ".4f"), _f(v["is_mean"], ".2f"),
             f"{v['energy_start']:.2f} -> {v['energy_end']:.2f}"]
            for m, v in res["models"].items()]
    rows += [[k, _f(v["fid"], ".1f"), _f(v["kid_mean"], ".4f"), _f(v["is_mean"], ".2f"), "-"]
             for k, v in res["references"].items()]
    blocks: list[Any] = [
        Paragraph(f"SGLD on E(x, y): {p['steps']} steps, eta {p['step_size']:g}, momentum "
                  f"{p['momentum']:g}, noise std {p['noise_std']:g}, from class-Gaussian "
                  f"starting points (fitted on {p['stats_n']} training images), "
                  f"{p['n_per_class']} samples per class; metrics against {p['real_n']} other "
                  f"training images on {res['features']}."),
        Table(["model", "FID", "KID", "IS", "mean E(x,y): x0 -> end"], rows),
        _fig(rec, "energy", "mean joint energy of the chains per SGLD step", out),
    ]
    for m in res["models"]:
        blocks.append(_fig(rec, m, f"{_lab(m)}: samples, one row per class", out))
    blocks.append(_fig(rec, "x0", "the starting points (same for every model)", out))
    return Section(SECTIONS["generation"], "generation", blocks)


def _robustness(rec: StageRecord) -> Section:
    res = rec.result
    rows = []
    for m, f in res["fresh"].items():
        c = res["committed"].get(m, {})
        rows.append([_lab(m), _f(c.get("clean"), ".1f"), _f(c.get("pgd20"), ".1f"),
                     _f(c.get("autoattack"), ".1f"), _f(f["clean"], ".1f"), _f(f["pgd"], ".1f"),
                     _f(f["seconds"], ".1f")])
    return Section(SECTIONS["robustness"], "robustness", [
        Paragraph("AutoAttack (standard version: APGD-CE, APGD-T, FAB-T, Square; eps 0.1) took "
                  "45-62 minutes per robust model on this CPU, so its committed results are "
                  "read from docs/results/training.md. The PGD columns are measured now on the "
                  f"first {res['n']} of the same test points (PGD-{res['steps']}, step 2.5 eps / "
                  "steps, random start); PGD should not fall below AutoAttack."),
        Table(["objective", "committed clean %", "committed PGD-20 %", "committed AutoAttack %",
               "clean % (now)", f"PGD-{res['steps']} % (now)", "s"], rows),
    ])


def _provenance(records: Sequence[StageRecord], info: dict[str, Any]) -> Section:
    rows = [[r.title, "reused" if r.reused else "computed", f"{r.seconds:.1f}",
             f"{r.cpu_seconds:.1f}", f"{r.wall_this_run:.1f}", r.fingerprint[:12]]
            for r in records]
    return Section(SECTIONS["provenance"], "provenance", [
        Paragraph("Each stage is cached in stages/<name>/ under a fingerprint of its inputs "
                  "(parameters, seed, SHA-256 of the checkpoints and tables it reads); a later run "
                  "reuses it while they are unchanged."),
        Table(["stage", "this run", "compute wall time s", "compute CPU time s", "this run s",
               "fingerprint"], rows, "CPU time: this process, all its threads; on an idle "
               "machine the wall time of a 1-thread run is close to it"),
        Code("command: " + " ".join(info["argv"]) + "\n" + "\n".join(
            f"{k}: {v}" for k, v in info.items() if k not in ("argv", "config"))),
        Code(json.dumps(info["config"], indent=2, default=str)),
    ])


def build_document(records: Sequence[StageRecord], out: Path, info: dict[str, Any]) -> Document:
    r = {rec.name: rec for rec in records}
    sections = [summary(r), _training(r["training"], out), _energy(r["energy"], out),
                _detection(r["detection"], out), _generation(r["generation"], out),
                _robustness(r["robustness"]), _provenance(records, info)]
    intro = ("A classifier read as an energy-based model, on Fashion-MNIST with the committed "
             "small CNNs: adversarial training moves the energy of attacked points, attacks "
             "move energies in characteristic directions, the energy detects attacks until "
             "the attacker controls it, and robust models generate recognisable images. "
             f"Machine: {info.get('machine', platform.node())}.")
    return Document("robust-ebm demo report", intro, sections)


def write_report(records: Sequence[StageRecord], out: Path, info: dict[str, Any]
                 ) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``out``; return their paths."""
    doc = build_document(records, out, info)
    html_path = atomic_write_text(out / "report.html", render_html(doc, out))
    md_path = atomic_write_text(out / "report.md", render_markdown(doc))
    return html_path, md_path
