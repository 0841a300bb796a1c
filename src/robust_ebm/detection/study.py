"""Calibrating and evaluating the energy detector, adaptive attackers and the HE-PGD study.

Beadini & Masi (arXiv 2304.04033; docs/science.md#energy-detector): the detector flags
E_T(x) <= tau; HE-PGD (ascend CE + gamma E(x)) keeps E(x*) near clean energy and should make it
fail (TPR near FPR).
Two adaptive attackers that know the detector [our choice, docs/science.md#adaptive-attackers]:

* ``he_adaptive``: HE-PGD with gamma searched on the CALIBRATION split so that mean E_T(x*)
  lands at the clean mean E_T (:func:`search_he_gamma`);
* ``pgd_detector_aware``: PGD on CE(x') - lambda * relu(tau + margin - E_T(x')) for a 'below'
  detector (the mirror for 'above'): fool the classifier while pushing E_T past tau
  (:class:`DetectorAwareLoss`).

Every function works from logits collected by :func:`robust_ebm.analysis.analyze_energy`, so
clean and attacked inputs each cost one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..analysis.energy_analysis import EnergyAnalysis, analyze_energy
from ..energy import free_energy
from ..errors import UserError
from ..statistics import summarize
from .detector import TEMPERATURES, EnergyDetector
from .metrics import auroc, roc_curve, tpr_at_fpr

__all__ = [
    "HE_GAMMAS",
    "DetectorAwareLoss",
    "adaptive_attacks",
    "calibrate_detector",
    "calibration_positives",
    "calibration_roc_curves",
    "detection_row",
    "evaluate_detector",
    "he_attacks",
    "he_gamma_study",
    "search_he_gamma",
]

HE_GAMMAS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.2, 1.5, 2.0, 3.0)
Attack = Callable[..., Tensor]


def _positives(analysis: EnergyAnalysis, name: str, only_successful: bool) -> Tensor:
    """Logits of the x* that count as adversarial: the successful ones (or all)."""
    logits = analysis.adversarial[name]
    if not only_successful:
        return logits
    return logits[logits.argmax(1) != analysis.y]


def calibration_positives(
    analysis: EnergyAnalysis, name: str = "calibration", only_successful: bool = True
) -> tuple[Tensor, str]:
    """The positives of a calibration and what they are: the successful x* (all x* with
    ``only_successful=False``, or when the attack fooled none)."""
    pos = _positives(analysis, name, only_successful)
    kind = "successful" if only_successful else "all"
    if pos.shape[0] == 0:
        pos, kind = analysis.adversarial[name], "all (the attack fooled none)"
    return pos, kind


def calibrate_detector(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: Attack,
    temperatures: Sequence[float] = TEMPERATURES,
    direction: str = "below",
    only_successful: bool = True,
    batch_size: int = 500,
) -> tuple[EnergyDetector, EnergyAnalysis]:
    """Fit an :class:`EnergyDetector` on held-out (x, y) attacked by ``attack``.

    Never pass the points the detector will be evaluated on. Negatives: all clean x;
    positives: :func:`calibration_positives` (``info['calibration']['positives']`` says which).
    """
    analysis = analyze_energy(model, x, y, {"calibration": attack}, batch_size)
    pos, kind = calibration_positives(analysis, "calibration", only_successful)
    det = EnergyDetector(direction="below" if direction == "auto" else direction)
    det.fit(analysis.clean, pos, temperatures, direction=direction)
    det.info["calibration"]["positives"] = kind
    return det, analysis


def calibration_roc_curves(
    analysis: EnergyAnalysis, detector: EnergyDetector, temperatures: Sequence[float],
    only_successful: bool = True,
) -> dict[str, tuple[Any, Any, float]]:
    """``"T=<t>"`` -> (FPR, TPR, AUROC) of E_T on the calibration's clean logits against its
    positives, for each T of a fitted detector's grid, on the detector's side."""
    pos, _ = calibration_positives(analysis, "calibration", only_successful)
    grid = detector.info["calibration"]["grid"]
    curves = {}
    for t in temperatures:
        d = EnergyDetector(t, None, detector.direction)
        fpr, tpr, _ = roc_curve(d.score(analysis.clean).numpy(), d.score(pos).numpy())
        row = next(r for r in grid if r["temperature"] == float(t))
        curves[f"T={t:g}"] = (fpr, tpr, row[f"auroc_{detector.direction}"])
    return curves


def detection_row(
    detector: EnergyDetector,
    logits_clean: Tensor,
    logits_adv: Tensor,
    y: Tensor | None = None,
    only_successful: bool = True,
) -> dict[str, Any]:
    """AUROC, TPR and FPR at the stored tau, TPR at 5% FPR for one attack (plus the ROC)."""
    if only_successful and y is not None:
        logits_pos = logits_adv[logits_adv.argmax(1) != y]
    else:
        logits_pos = logits_adv
    flags_c = detector.predict(logits_clean)
    row: dict[str, Any] = {
        "n_clean": int(logits_clean.shape[0]),
        "n_adv": int(logits_pos.shape[0]),
        "fpr": float(flags_c.double().mean()),
        "flag_rate_all_adv": float(detector.predict(logits_adv).double().mean()),
    }
    if logits_pos.shape[0] == 0:
        row.update({"auroc": None, "tpr": None, "tpr_at_5pct_fpr": None, "roc": None})
        return row
    s_c = detector.score(logits_clean).numpy()
    s_a = detector.score(logits_pos).numpy()
    fpr, tpr, _ = roc_curve(s_c, s_a)
    row.update({
        "auroc": auroc(s_c, s_a),
        "tpr": float(detector.predict(logits_pos).double().mean()),
        "tpr_at_5pct_fpr": tpr_at_fpr(s_c, s_a, 0.05),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
    })
    return row


def evaluate_detector(
    detector: EnergyDetector, analysis: EnergyAnalysis, only_successful: bool = True
) -> dict[str, dict[str, Any]]:
    """One :func:`detection_row` per attack of ``analysis`` (clean logits = negatives)."""
    return {
        name: detection_row(detector, analysis.clean, logits, analysis.y, only_successful)
        | {"accuracy_adv": float((logits.argmax(1) == analysis.y).double().mean())}
        for name, logits in analysis.adversarial.items()
    }


@dataclass(frozen=True)
class DetectorAwareLoss:
    """Adaptive attack loss, ascended: CE(x', y) - lam * relu(tau + margin - E_T(x')) for a
    'below' detector (flags E_T <= tau), or - lam * relu(E_T(x') - tau + margin) for 'above'.

    The penalty is zero once x' sits ``margin`` on the unflagged side of tau, so the attacker
    then spends its steps on CE alone. Shape (N,).
    """

    temperature: float
    threshold: float
    direction: str = "below"
    lam: float = 1.0
    margin: float = 0.0

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, y.long(), reduction="none")
        e = free_energy(logits, self.temperature)
        if self.direction == "below":
            penalty = torch.relu(self.threshold + self.margin - e)
        else:
            penalty = torch.relu(e - self.threshold + self.margin)
        return ce - self.lam * penalty


def search_he_gamma(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    detector: EnergyDetector,
    attack_hp: Mapping[str, Any],
    hi: float = 2.0,
    iters: int = 5,
    batch_size: int = 500,
) -> tuple[float, list[dict[str, float]]]:
    """Gamma of HE-PGD at which mean E_T(x*) equals the clean mean E_T on (x, y).

    Run it on the calibration split. Assumes mean E_T(x*) grows with gamma (HE-PGD's term
    gamma * E(x') is ascended); brackets [0, hi] (doubling hi up to 4 times) then bisects.

    Returns:
        (gamma, trace) with one {gamma, gap} per run, gap = mean E_T(x*) - mean E_T(x).
    """
    from ..attacks import make_attack

    t = detector.temperature
    trace: list[dict[str, float]] = []
    clean_mean: list[float] = []

    def gap(gamma: float) -> float:
        res = analyze_energy(model, x, y, {"he": make_attack("he_pgd", gamma=gamma, **attack_hp)},
                             batch_size)
        if not clean_mean:
            clean_mean.append(free_energy(res.clean, t).mean().item())
        g = free_energy(res.adversarial["he"], t).mean().item() - clean_mean[0]
        trace.append({"gamma": gamma, "gap": g})
        return g

    lo = 0.0
    if gap(lo) >= 0:
        return lo, trace
    for _ in range(5):
        if gap(hi) >= 0:
            break
        lo, hi = hi, hi * 2
    else:
        return hi, trace  # energy never reached clean: the largest gamma tried
    for _ in range(iters):
        mid = (lo + hi) / 2
        if gap(mid) >= 0:
            hi = mid
        else:
            lo = mid
    # the end of the bracket closest to a zero gap
    best = min((r for r in trace if lo <= r["gamma"] <= hi), key=lambda r: abs(r["gap"]))
    return float(best["gamma"]), trace


def adaptive_attacks(
    detector: EnergyDetector,
    attack_hp: Mapping[str, Any],
    he_gamma: float | None,
    lam: float = 1.0,
    margin: float = 0.0,
) -> dict[str, Attack]:
    """The two adaptive attackers (see module docstring) with PGD hyperparameters
    ``attack_hp`` (eps, steps, norm, seed)."""
    from ..attacks import make_attack

    if detector.threshold is None:
        raise UserError("adaptive attacks need a fitted detector")
    loss = DetectorAwareLoss(detector.temperature, detector.threshold, detector.direction,
                             lam, margin)
    out: dict[str, Attack] = {"pgd_detector_aware": make_attack("pgd", loss=loss, **attack_hp)}
    if he_gamma is not None:
        out["he_adaptive"] = make_attack("he_pgd", gamma=he_gamma, **attack_hp)
    return out


def he_gamma_study(
    analysis: EnergyAnalysis, detector: EnergyDetector | None, gammas: Sequence[float],
    prefix: str = "he_pgd[gamma=", only_successful: bool = True,
) -> list[dict[str, Any]]:
    """Rows of the HE-PGD study from an analysis holding attacks named ``f"{prefix}{g:g}]"``:
    robust accuracy, E(x*) - E(x) (mean, std; T = 1), and the detector's TPR at its tau with
    its FPR on the clean points.

    The TPR counts the same positives as :func:`evaluate_detector` with the same
    ``only_successful``: the x* that fool the model (default), or every x* (False, the
    published notebooks' definition); ``n_adv`` says how many."""
    rows = []
    for g in gammas:
        name = f"{prefix}{g:g}]"
        if name not in analysis.adversarial:
            raise UserError(f"the analysis has no attack {name!r}")
        logits = analysis.adversarial[name]
        rel = free_energy(logits) - free_energy(analysis.clean)
        fooled = logits.argmax(1) != analysis.y
        row: dict[str, Any] = {
            "gamma": float(g),
            "accuracy_adv": float((~fooled).double().mean()),
            "E_rel_mean": float(rel.mean()),
            "E_rel_std": float(rel.std(unbiased=False)),
            "E_rel": summarize(rel),
        }
        if detector is not None:
            d = detection_row(detector, analysis.clean, logits, analysis.y, only_successful)
            row.update({"tpr": d["tpr"], "fpr": d["fpr"], "auroc": d["auroc"],
                        "n_adv": d["n_adv"], "flag_rate_all_adv": d["flag_rate_all_adv"]})
        rows.append(row)
    return rows


def he_attacks(gammas: Sequence[float], attack_hp: Mapping[str, Any],
               prefix: str = "he_pgd[gamma=") -> dict[str, Attack]:
    """HE-PGD at each gamma, named as :func:`he_gamma_study` expects."""
    from ..attacks import make_attack

    return {f"{prefix}{g:g}]": make_attack("he_pgd", gamma=float(g), **attack_hp) for g in gammas}


def roc_points(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    roc = row.get("roc")
    if not roc:
        return None
    return np.asarray(roc["fpr"]), np.asarray(roc["tpr"])
