"""Markdown sections for the energy analysis, the detector and the HE-PGD study."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["detection_section", "energy_section", "he_study_section", "sweep_section"]


def _f(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def energy_section(result: Mapping[str, Any], title: str = "Energy under attack") -> str:
    """Per-attack table of :meth:`EnergyAnalysis.to_dict` (energies in logit units)."""
    c = result["clean"]
    lines = [
        f"### {title}", "",
        (f"n = {result['n']}, clean accuracy {c['accuracy']:.4f}, clean E(x) mean "
         f"{c['E_x']['mean']:.3f} (std {c['E_x']['std']:.3f}); E(x) = -logsumexp f(x), lower = "
         "more likely; dE(x) = E(x) - E(x*) > 0 means the attack LOWERED the energy."), "",
        ("| attack | acc(x*) | success | E(x*) mean | E(x*) std | dE(x) mean | dE(x) std | "
         "dE(x,y) mean | share E(x*)<E(x) | s |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["attacks"].items():
        lines.append(
            f"| {name} | {r['accuracy_adv']:.3f} | {r['success_rate']:.3f} | "
            f"{r['E_adv']['mean']:.3f} | {r['E_adv']['std']:.3f} | {r['dE_x']['mean']:.3f} | "
            f"{r['dE_x']['std']:.3f} | {r['dE_xy']['mean']:.3f} | {r['share_E_adv_below']:.3f} | "
            f"{_f(r.get('seconds'), '.1f')} |"
        )
    for note in result.get("notes", []):
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


def sweep_section(sweep: Mapping[str, Any]) -> str:
    lines = ["### PGD-CE sweep over steps and eps", "",
             f"clean E(x) mean {sweep['clean']['E_x']['mean']:.3f}, base eps {sweep['base_eps']:g}",
             "", ("| steps | eps | acc(x*) | E(x*) mean | E(x*) std | dE(x) mean | "
                  "share E(x*)<E(x) |"), "|---|---|---|---|---|---|---|"]
    for kind in ("steps", "eps"):
        for r in sweep[kind]:
            lines.append(
                f"| {r['steps']} | {r['eps']:.4g} | {r['accuracy_adv']:.3f} | "
                f"{r['E_adv']['mean']:.3f} | {r['E_adv']['std']:.3f} | {r['dE_x']['mean']:.3f} | "
                f"{r['share_E_adv_below']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def detection_section(detector: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]],
                      only_successful: bool = True) -> str:
    """Detector settings and per-attack AUROC / TPR / FPR at tau / TPR at 5% FPR; the TPR's
    positives are the successful x* (or every x* with ``only_successful=False``)."""
    cal = detector.get("info", {}).get("calibration", {})
    sign = "<=" if detector["direction"] == "below" else ">="
    lines = [
        "### Energy detector", "",
        (f"flag when E_T(x) {sign} tau, T = {detector['temperature']:g}, tau = "
         f"{detector['threshold']:.4f} (direction '{detector['direction']}'); calibration AUROC "
         f"{_f(cal.get('auroc'))}, TPR {_f(cal.get('tpr'))}, FPR {_f(cal.get('fpr'))}. "
         + ("Positives are successful x* only." if only_successful
            else "Positives are every x*, successful or not.")), "",
        "| attack | acc(x*) | n adv | AUROC | TPR at tau | FPR at tau | TPR at 5% FPR |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {_f(r.get('accuracy_adv'))} | {r['n_adv']} | {_f(r['auroc'])} | "
            f"{_f(r['tpr'])} | {_f(r['fpr'])} | {_f(r['tpr_at_5pct_fpr'])} |"
        )
    return "\n".join(lines) + "\n"


def he_study_section(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["### HE-PGD over gamma", "",
             "| gamma | acc(x*) | E(x*)-E(x) mean | E(x*)-E(x) std | detector TPR | FPR |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['gamma']:g} | {r['accuracy_adv']:.3f} | {r['E_rel_mean']:.3f} | "
            f"{r['E_rel_std']:.3f} | {_f(r.get('tpr'))} | {_f(r.get('fpr'))} |"
        )
    return "\n".join(lines) + "\n"
