"""The detector's two studies end to end: calibrate on held-out points, evaluate on others.

Mirza et al., ECCV 2024 (arXiv 2407.06315), Sec. 5; HE-PGD from Beadini & Masi (arXiv
2304.04033); see docs/science.md. :func:`write_calibration` fits T and tau and writes
``detector.json``, ``calibration.json`` and ``roc_calibration.png``; :func:`write_evaluation`
attacks the evaluation points (plain, adaptive and HE-PGD attacks) and writes ``detection.json``,
``detection.md``, ``roc.png`` and, with a gamma grid, ``he_study.json``/``he_study.png``.
Calibration and evaluation points never overlap (:func:`check_disjoint`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from .detector import EnergyDetector
from .study import calibrate_detector, calibration_roc_curves

__all__ = [
    "adaptive_setup", "attack_budget", "calibration_subset", "calibration_text", "check_disjoint", "write_calibration",
    "write_evaluation",
]

Attack = Callable[..., Tensor]


def calibration_subset(
    ds: Any,
    cal_split: str,
    n: int,
    checkpoint: str | os.PathLike[str] | None = None,
    val_size: int | None = None,
    val_seed: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The first ``n`` calibration points of ``ds`` and a record of where they came from.

    ``cal_split="val"`` takes them from the training run's validation split, rebuilt from the
    training split ``ds`` (:func:`robust_ebm.provenance.training_validation_split`); any other
    split uses ``ds`` as it is. The record (``dataset`` is added by the caller) holds the split,
    ``n`` and, for 'val', ``val_size`` and ``val_seed``.
    """
    from ..data import split_train_val
    from ..provenance import training_validation_split

    source: dict[str, Any] = {"split": cal_split}
    if cal_split == "val":
        if checkpoint is None and (val_size is None or val_seed is None):
            raise UserError("the validation split needs a checkpoint or val_size and val_seed")
        size, seed = training_validation_split(checkpoint or "", val_size, val_seed)
        _, ds = split_train_val(ds, size, seed=seed)
        source |= {"val_size": size, "val_seed": seed}
    n = min(n, len(ds.labels))
    source["n"] = n
    return ds.subset(torch.arange(n)), source


def check_disjoint(info: Mapping[str, Any], dataset: str, split: str) -> None:
    """UserError when evaluating on ``dataset/split`` would reuse the detector's calibration
    points (recorded in ``info['source']``)."""
    src = info.get("source", {})
    if src.get("dataset") != dataset:
        return
    cal = src.get("split")
    if cal == split or (cal == "val" and split == "train"):
        raise UserError(
            f"the detector was calibrated on {dataset}/{cal}; evaluating on {dataset}/{split} "
            "would reuse calibration points. Evaluate on another split (e.g. --split test)"
        )


def attack_budget(
    info: Mapping[str, Any], eps: float | None, norm: str | None, steps: int | None, seed: int
) -> dict[str, Any]:
    """PGD hyperparameters of an evaluation: eps, norm and steps as given, else as the
    detector was calibrated (``info``; steps default 20), and the seed."""
    eps = eps if eps is not None else info.get("eps")
    if eps is None:
        raise UserError("the detector file records no eps; pass --eps")
    return {"eps": eps, "norm": norm or info.get("norm", "linf"), "seed": seed,
            "steps": steps or int(info.get("steps") or 20)}


def write_calibration(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: Attack,
    out: str | os.PathLike[str],
    *,
    temperatures: Sequence[float],
    direction: str = "below",
    only_successful: bool = True,
    batch_size: int = 500,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit the detector on (x, y) attacked by ``attack``; write its files; return the result.

    ``info`` (checkpoint, source, attack name, eps, norm, steps, seed) is stored in the
    detector file. The result is the detector's JSON with the clean and attacked accuracy
    and the mean dE(x) of the calibration attack (``calibration.json``). ``only_successful``
    False counts every x* as a positive, as the published notebooks (docs/fidelity.md).
    """
    from ..io import atomic_write_json
    from ..reports import plot_roc

    out = Path(out)
    det, analysis = calibrate_detector(model, x, y, attack, temperatures, direction,
                                       only_successful=only_successful, batch_size=batch_size)
    det.info |= dict(info or {})
    det.save(out / "detector.json")
    cal = det.info["calibration"]
    plot_roc(calibration_roc_curves(analysis, det, temperatures, only_successful),
             out / "roc_calibration.png",
             title=f"calibration ({det.info.get('attack')}, eps {det.info.get('eps', 0):g}), "
             f"direction {det.direction}", point=(cal["fpr"], cal["tpr"]))
    rep = analysis.report("calibration")
    result = det.to_json() | {"out": str(out), "attack_accuracy_adv": rep["accuracy_adv"],
                              "clean_accuracy": rep["accuracy"],
                              "mean_dE_x": rep["dE_x"]["mean"]}
    atomic_write_json(out / "calibration.json", result)
    return result


def calibration_text(result: Mapping[str, Any]) -> str:
    """Lines for people: T, tau, AUROC, TPR/FPR of a :func:`write_calibration` result, the
    AUROC of each T, and a note when the 'below' side scores under 0.5."""
    cal = result["info"]["calibration"]
    lines = [(f"T = {result['temperature']:g}, tau = {result['threshold']:.4f} "
              f"({result['direction']}); AUROC {cal['auroc']:.4f}, TPR {cal['tpr']:.4f}, "
              f"FPR {cal['fpr']:.4f}, TPR@5%FPR {cal['tpr_at_5pct_fpr']:.4f}")]
    lines += [f"  T={r['temperature']:<5g} AUROC below {r['auroc_below']:.4f}" for r in cal["grid"]]
    if result["direction"] == "below" and cal["auroc"] < 0.5:
        lines.append("note: AUROC < 0.5: on this model adversarial energies lie ABOVE clean "
                     "ones; consider --direction above")
    return "\n".join(lines)


def adaptive_setup(
    model: nn.Module,
    detector: EnergyDetector,
    attack_hp: Mapping[str, Any],
    calibration: tuple[Tensor, Tensor] | None,
    *,
    lam: float = 1.0,
    batch_size: int = 500,
    notes: list[str] | None = None,
) -> tuple[dict[str, Attack], dict[str, Any]]:
    """The adaptive attackers of :func:`~robust_ebm.detection.adaptive_attacks`, with the
    HE-PGD gamma searched on calibration points (x, y) (never the evaluation points).

    Without ``calibration`` the gamma search is skipped and a note appended to ``notes``.
    Returns the attacks and the facts of the search (``he_adaptive_gamma``,
    ``he_gamma_search``).
    """
    from .study import adaptive_attacks, search_he_gamma

    gamma: float | None = None
    trace: list[dict[str, float]] = []
    if calibration is not None:
        gamma, trace = search_he_gamma(model, calibration[0], calibration[1], detector,
                                       attack_hp, batch_size=batch_size)
    elif notes is not None:
        notes.append("he_adaptive skipped: the detector file names no calibration source")
    return (adaptive_attacks(detector, attack_hp, gamma, lam=lam),
            {"he_adaptive_gamma": gamma, "he_gamma_search": trace})


def _energy_columns(analysis: Any) -> dict[str, dict[str, Any]]:
    """Per attack: adversarial accuracy, mean/std of dE_x, share with E(x*) below E(x)."""
    return {k: {"accuracy_adv": r["accuracy_adv"], "dE_x_mean": r["dE_x"]["mean"],
                "dE_x_std": r["dE_x"]["std"], "share_E_adv_below": r["share_E_adv_below"]}
            for k, r in analysis.table().items()}


def _write_he_study(study: list[dict[str, Any]], out: Path, eps: Any, steps: Any) -> str:
    """Write he_study.png and he_study.json; return the study's Markdown section."""
    from ..io import atomic_write_json
    from ..reports import he_study_section, plot_he_study

    plot_he_study(study, out / "he_study.png")
    atomic_write_json(out / "he_study.json", {"rows": study, "eps": eps, "steps": steps})
    return he_study_section(study)


def write_evaluation(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    detector: EnergyDetector,
    attacks: Mapping[str, Attack],
    out: str | os.PathLike[str],
    *,
    gammas: Sequence[float] = (),
    attack_hp: Mapping[str, Any],
    notes: Sequence[str] = (),
    meta: Mapping[str, Any] | None = None,
    only_successful: bool = True,
    batch_size: int = 500,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], str] | None:
    """Run the detector against ``attacks`` plus HE-PGD over ``gammas`` (built from
    ``attack_hp``); write the files; return the result (``detection.json`` less the ROC
    points) and the Markdown report.

    Under torchrun every rank attacks its shard of the points and rank 0 writes the merged
    result, identical to one process; the other ranks write nothing and return None.

    ``meta`` (dataset, split, adaptive-search facts) is merged into the result.
    ``only_successful`` False reports TPR over every x*, as the published notebooks.
    """
    from ..evaluation.sharded import sharded_energy
    from ..io import atomic_write_json, atomic_write_text
    from ..reports import detection_section, plot_roc
    from .study import evaluate_detector, he_attacks, he_gamma_study

    out = Path(out)
    eps = attack_hp["eps"]
    attacks = dict(attacks) | he_attacks(gammas, attack_hp)
    analysis = sharded_energy(model, x, y, attacks, batch_size, log=log)
    if analysis is None:  # a torchrun rank other than 0: its shard went to rank 0
        return None
    rows = evaluate_detector(detector, analysis, only_successful)
    study = (he_gamma_study(analysis, detector, gammas, only_successful=only_successful)
             if gammas else [])
    energy = _energy_columns(analysis)
    curves = {k: (r["roc"]["fpr"], r["roc"]["tpr"], r["auroc"])
              for k, r in rows.items() if r["roc"] and not k.startswith("he_pgd[")}
    plot_roc(curves, out / "roc.png", title=f"energy detector T={detector.temperature:g} "
             f"({detector.direction}), eps {eps:g}")
    md = detection_section(detector.to_json(), rows, only_successful)
    if study:
        md += "\n" + _write_he_study(study, out, eps, attack_hp["steps"])
    for note in notes:
        md += f"\nNote: {note}\n"
    slim = {k: {kk: vv for kk, vv in r.items() if kk != "roc"} for k, r in rows.items()}
    result = {"detector": detector.to_json(), "eps": eps, "norm": attack_hp["norm"],
              "n": len(y), "clean_accuracy":
              float((analysis.clean.argmax(1) == analysis.y).double().mean()),
              "attacks": slim, "energy": energy, "he_study": study, "notes": list(notes),
              "out": str(out)} | dict(meta or {})
    atomic_write_json(out / "detection.json",
                      result | {"roc": {k: r["roc"] for k, r in rows.items()}})
    atomic_write_text(out / "detection.md", md)
    return result, md
