"""Stage 3: the energy detector, the HE-PGD gamma sweep and adaptive attackers.

On the standard model (where PGD lowers E(x), Mirza et al., arXiv 2407.06315) the detector
flags E_T(x) <= tau. It is calibrated on test images 5000 onwards attacked by PGD and evaluated
on the first test images, which it never saw: PGD, FGSM and APGD-CE, HE-PGD (ascend CE + gamma
E(x), which keeps E(x*) near clean energy) over a sweep of gamma, and two attackers that know
the detector (HE-PGD with gamma searched on the calibration points; PGD with a penalty for
crossing tau).
"""

from __future__ import annotations

from typing import Any

from .config import DemoConfig
from .energy import test_points
from .runner import Stage, StageContext

NAME = "detection"
MODEL = "standard"
CAL_START = 5000  # calibration points: test images from here on (evaluation: from 0)
ATTACKS = ("pgd", "fgsm", "apgd_ce")


def stage(cfg: DemoConfig) -> Stage:
    s = cfg.sizes
    ckpt = cfg.checkpoint(MODEL)
    params = cfg.common() | {
        "model": MODEL, "checkpoint": str(ckpt), "cal_start": CAL_START, "cal_n": s.det_cal_n,
        "n": s.det_n, "search_n": s.det_search_n, "steps": s.det_steps,
        "gammas": list(s.det_gammas), "attacks": list(ATTACKS), "calibration_attack": "pgd",
    }
    return Stage(NAME, "energy detector, HE-PGD sweep and adaptive attacks", 2, params,
                 (ckpt,), run)


def run(ctx: StageContext) -> dict[str, Any]:
    from ..analysis import analyze_energy, default_attacks
    from ..attacks import make_attack
    from ..checkpoint import load_model
    from ..detection import (
        adaptive_attacks,
        calibrate_detector,
        evaluate_detector,
        he_attacks,
        he_gamma_study,
        search_he_gamma,
    )
    from ..reports import plot_he_study, plot_roc

    p = ctx.params
    model = load_model(p["checkpoint"]).eval()
    hp = {"eps": p["eps"], "steps": p["steps"], "seed": p["seed"], "norm": "linf"}
    xc, yc = test_points(p, p["cal_n"], p["cal_start"])
    x, y = test_points(p, p["n"])
    ctx.log(f"calibrating on {len(yc)} test images from {p['cal_start']} (PGD-{p['steps']})")
    det, _ = calibrate_detector(model, xc, yc, make_attack("pgd", **hp))
    cal = det.info["calibration"]
    ctx.log(f"T = {det.temperature:g}, tau = {det.threshold:.3f}; calibration AUROC "
            f"{cal['auroc']:.3f}")
    gamma, trace = search_he_gamma(model, xc[: p["search_n"]], yc[: p["search_n"]], det, hp)
    ctx.log(f"adaptive HE-PGD gamma {gamma:.3g} ({len(trace)} searches)")
    attacks, notes = default_attacks(p["eps"], p["attacks"], steps=p["steps"], seed=p["seed"])
    attacks |= adaptive_attacks(det, hp, gamma)
    attacks |= he_attacks(p["gammas"], hp)
    analysis = analyze_energy(model, x, y, attacks, log=ctx.log)
    rows = evaluate_detector(det, analysis)
    study = he_gamma_study(analysis, det, p["gammas"])
    curves = {k: (r["roc"]["fpr"], r["roc"]["tpr"], r["auroc"])
              for k, r in rows.items() if r["roc"] and not k.startswith("he_pgd[")}
    plot_roc(curves, ctx.dir / "roc.png", point=(rows["pgd"]["fpr"], rows["pgd"]["tpr"])
             if rows["pgd"]["tpr"] is not None else None,
             title=f"energy detector on the standard model: T={det.temperature:g}, flag E_T(x) "
                   f"{'<=' if det.direction == 'below' else '>='} tau")
    plot_he_study(study, ctx.dir / "he_study.png")
    slim = {k: {kk: vv for kk, vv in r.items() if kk != "roc"} for k, r in rows.items()}
    return {
        "detector": det.to_json(), "clean_accuracy": float(
            (analysis.clean.argmax(1) == analysis.y).double().mean()),
        "n": len(y), "n_cal": len(yc), "rows": slim, "he_study": study,
        "he_adaptive_gamma": gamma, "he_gamma_search": trace, "notes": notes,
        "figures": {"roc": "roc.png", "he_study": "he_study.png"},
    }
