"""``robust-ebm detect calibrate|evaluate``: the energy detector of adversarial inputs.

``calibrate`` fits T and tau on a held-out split (default: the training run's validation split,
rebuilt from the ``run.json`` beside the checkpoint) attacked with PGD of the given budget and
writes ``detector.json``, ``calibration.json``, ``roc_calibration.png``.

``evaluate`` loads the detector, attacks the evaluation points with every attack, two adaptive
attackers and HE-PGD over a gamma grid, and writes ``detection.json``, ``he_study.json``,
``roc.png``, ``he_study.png``, ``detection.md``. Calibration and evaluation points never overlap.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .common import (
    add_common_args,
    config_of,
    emit,
    float_batch,
    nonnegative_float,
    output_dir,
    positive_int,
)
from .energy_cmd import add_model_args, load_model_and_data, parse_floats, parse_names

_EXAMPLE = """\
example (calibrate on training images, evaluate on test images):
  robust-ebm detect calibrate --checkpoint artifacts/fmnist/standard-s0.safetensors \\
      --dataset fashion_mnist --cal-split train --n 500 --eps 0.1 --out runs/det
  robust-ebm detect evaluate --checkpoint artifacts/fmnist/standard-s0.safetensors \\
      --dataset fashion_mnist --detector runs/det/detector.json --n 200 --attacks pgd,fgsm \\
      --out runs/det-eval
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..analysis import DEFAULT_ATTACKS
    from ..detection import HE_GAMMAS, TEMPERATURES

    p = sub.add_parser(
        "detect", help="energy-based detector of adversarial inputs",
        description="Flag adversarial inputs by their energy: 'calibrate' fits the detector on "
                    "held-out points, 'evaluate' tests it against attacks, adaptive attackers "
                    "and HE-PGD.",
        epilog=_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="detect_command", metavar="ACTION", parser_class=type(p))
    dsub.required = True

    c = dsub.add_parser(
        "calibrate", help="fit temperature and threshold on held-out data",
        description="Fit the detector's temperature T and threshold tau on held-out points "
                    "attacked with PGD; writes detector.json.", epilog=_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(c)
    add_common_args(c)
    c.add_argument("--cal-split", choices=("val", "train", "test"), default="val",
                   help="held-out points: 'val' = the training run's validation split")
    c.add_argument("--val-size", type=int, default=None,
                   help="validation size of the training run (default: from its run.json)")
    c.add_argument("--val-seed", type=int, default=None,
                   help="seed of the training run's split (default: from its run.json)")
    c.add_argument("--n", type=positive_int, default=1000, help="calibration points")
    c.add_argument("--eps", type=nonnegative_float, required=True)
    c.add_argument("--norm", choices=("linf", "l2"), default="linf")
    c.add_argument("--attack", default="pgd", help="calibration attack (default pgd)")
    c.add_argument("--steps", type=positive_int, default=20)
    c.add_argument("--temperatures", default=",".join(f"{t:g}" for t in TEMPERATURES))
    c.add_argument("--direction", choices=("below", "above", "auto"), default="below",
                   help="flag E_T <= tau (below, the paper), >= tau, or pick the better side")
    c.add_argument("--batch-size", type=positive_int, default=500)
    c.set_defaults(func=run_calibrate)

    e = dsub.add_parser(
        "evaluate", help="detector against attacks, adaptive attacks, HE-PGD",
        description="Test a calibrated detector on points it never saw: AUROC and TPR/FPR at "
                    "tau per attack, two adaptive attackers and HE-PGD over gamma.",
        epilog=_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(e)
    add_common_args(e)
    e.add_argument("--detector", required=True, help="detector.json from 'detect calibrate'")
    e.add_argument("--split", choices=("train", "test"), default="test")
    e.add_argument("--n", type=positive_int, default=1000)
    e.add_argument("--eps", type=nonnegative_float, default=None,
                   help="attack budget (default: the calibration budget)")
    e.add_argument("--norm", choices=("linf", "l2"), default=None)
    e.add_argument("--attacks", default=",".join(a for a in DEFAULT_ATTACKS if a != "noise"))
    e.add_argument("--steps", type=positive_int, default=None,
                   help="iterations of every iterative attack (default: PGD 20, APGD 100)")
    e.add_argument("--square-queries", type=positive_int, default=1000)
    e.add_argument("--he-gammas", default=",".join(f"{g:g}" for g in HE_GAMMAS),
                   help="HE-PGD study grid; 'none' skips it")
    e.add_argument("--no-adaptive", action="store_true", help="skip the adaptive attackers")
    e.add_argument("--lam", type=nonnegative_float, default=1.0,
                   help="weight of the detector penalty of the detector-aware attack")
    e.add_argument("--search-n", type=positive_int, default=200,
                   help="calibration points used to search the adaptive HE-PGD gamma")
    e.add_argument("--batch-size", type=positive_int, default=500)
    e.set_defaults(func=run_evaluate)


def _val_split_args(args: argparse.Namespace) -> tuple[int, int]:
    size, seed = args.val_size, args.val_seed
    run_json = Path(args.checkpoint).parent / "run.json"
    if (size is None or seed is None) and run_json.is_file():
        try:
            cfg = json.loads(run_json.read_text()).get("config", {})
            size = cfg.get("data", {}).get("val_size") if size is None else size
            seed = cfg.get("train", {}).get("seed") if seed is None else seed
        except (json.JSONDecodeError, AttributeError):
            pass
    if not size or size < 1 or seed is None:
        raise UserError(
            "--cal-split val needs the training run's validation split: give --val-size and "
            "--val-seed (or keep run.json beside the checkpoint), or use --cal-split train"
        )
    return int(size), int(seed)


def _calibration_points(args: argparse.Namespace, n: int) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(model, x, y, source) of the calibration points described by ``args``."""
    from ..data import split_train_val

    split = "train" if args.cal_split == "val" else args.cal_split
    model, ds = load_model_and_data(args, split)
    source: dict[str, Any] = {"dataset": str(args.dataset), "split": args.cal_split}
    if args.cal_split == "val":
        size, seed = _val_split_args(args)
        _, ds = split_train_val(ds, size, seed=seed)
        source |= {"val_size": size, "val_seed": seed}
    n = min(n, len(ds.labels))
    source["n"] = n
    x, y = float_batch(ds.subset(torch.arange(n)), next(model.parameters()).device)
    return model, x, y, source


def run_calibrate(args: argparse.Namespace) -> int:
    from ..attacks import make_attack
    from ..detection import calibrate_detector, roc_curve
    from ..io import atomic_write_json
    from ..provenance import write_run_json
    from ..reports import plot_roc

    temps = parse_floats(args.temperatures, "--temperatures")
    if any(t <= 0 for t in temps):
        raise UserError(f"--temperatures must be > 0; got {args.temperatures}")
    hp = {"eps": args.eps, "norm": args.norm, "seed": args.seed}
    if args.attack != "fgsm":
        hp["steps"] = args.steps
    attack = make_attack(args.attack, **hp)
    model, x, y, source = _calibration_points(args, args.n)
    out = output_dir(args, "detect-calibrate")
    write_run_json(out, config_of(args), args.seed, next(model.parameters()).device)
    det, analysis = calibrate_detector(model, x, y, attack, temps, args.direction,
                                       batch_size=args.batch_size)
    det.info |= {"checkpoint": str(args.checkpoint), "source": source, "attack": args.attack,
                 "eps": args.eps, "norm": args.norm, "steps": args.steps, "seed": args.seed}
    det.save(out / "detector.json")
    cal = det.info["calibration"]
    logits_adv = analysis.adversarial["calibration"]
    pos = logits_adv[logits_adv.argmax(1) != analysis.y]
    if pos.shape[0] == 0:
        pos = logits_adv
    curves = {}
    from ..detection import EnergyDetector

    for t in temps:
        d = EnergyDetector(t, None, det.direction)
        fpr, tpr, _ = roc_curve(d.score(analysis.clean).numpy(), d.score(pos).numpy())
        row = next(r for r in cal["grid"] if r["temperature"] == float(t))
        curves[f"T={t:g}"] = (fpr, tpr, row[f"auroc_{det.direction}"])
    plot_roc(curves, out / "roc_calibration.png", title=f"calibration ({args.attack}, "
             f"eps {args.eps:g}), direction {det.direction}", point=(cal["fpr"], cal["tpr"]))
    rep = analysis.report("calibration")
    result = det.to_json() | {"out": str(out), "attack_accuracy_adv": rep["accuracy_adv"],
                              "clean_accuracy": rep["accuracy"],
                              "mean_dE_x": rep["dE_x"]["mean"]}
    atomic_write_json(out / "calibration.json", result)
    warn = ""
    if det.direction == "below" and cal["auroc"] < 0.5:
        warn = ("\nnote: AUROC < 0.5: on this model adversarial energies lie ABOVE clean ones; "
                "consider --direction above")
    lines = [(f"T = {det.temperature:g}, tau = {det.threshold:.4f} ({det.direction}); AUROC "
              f"{cal['auroc']:.4f}, TPR {cal['tpr']:.4f}, FPR {cal['fpr']:.4f}, TPR@5%FPR "
              f"{cal['tpr_at_5pct_fpr']:.4f}")]
    lines += [f"  T={r['temperature']:<5g} AUROC below {r['auroc_below']:.4f}" for r in cal["grid"]]
    emit(result, args.json, "\n".join(lines) + warn + f"\nsaved to {out / 'detector.json'}")
    return 0


def _check_disjoint(info: dict[str, Any], dataset: str, split: str) -> None:
    src = info.get("source", {})
    if src.get("dataset") != dataset:
        return
    cal = src.get("split")
    if cal == split or (cal == "val" and split == "train"):
        raise UserError(
            f"the detector was calibrated on {dataset}/{cal}; evaluating on {dataset}/{split} "
            "would reuse calibration points. Evaluate on another split (e.g. --split test)"
        )


def run_evaluate(args: argparse.Namespace) -> int:
    from ..analysis import analyze_energy, default_attacks
    from ..detection import (
        EnergyDetector,
        adaptive_attacks,
        evaluate_detector,
        he_attacks,
        he_gamma_study,
        search_he_gamma,
    )
    from ..io import atomic_write_json, atomic_write_text
    from ..provenance import write_run_json
    from ..reports import detection_section, he_study_section, plot_he_study, plot_roc

    det = EnergyDetector.load(args.detector)
    info = det.info
    _check_disjoint(info, str(args.dataset), args.split)
    eps = args.eps if args.eps is not None else info.get("eps")
    norm = args.norm or info.get("norm", "linf")
    if eps is None:
        raise UserError("the detector file records no eps; pass --eps")
    names = parse_names(args.attacks, "--attacks")
    gammas = ([] if str(args.he_gammas).strip().lower() == "none"
              else parse_floats(args.he_gammas, "--he-gammas"))
    attacks, notes = default_attacks(eps, names, norm, args.steps, args.seed,
                                     square_queries=args.square_queries)
    pgd_hp = {"eps": eps, "norm": norm, "seed": args.seed,
              "steps": args.steps or int(info.get("steps") or 20)}
    model, ds = load_model_and_data(args)
    device = next(model.parameters()).device
    x, y = float_batch(ds.subset(torch.arange(min(args.n, len(ds)))), device)
    out = output_dir(args, "detect-evaluate")
    write_run_json(out, config_of(args), args.seed, device)
    extra: dict[str, Any] = {}
    if not args.no_adaptive:
        gamma, trace = None, []
        src = info.get("source")
        if src:
            cal_args = argparse.Namespace(**vars(args))
            cal_args.cal_split = src["split"]
            cal_args.val_size, cal_args.val_seed = src.get("val_size"), src.get("val_seed")
            _, xc, yc, _ = _calibration_points(cal_args, min(args.search_n, int(src["n"])))
            gamma, trace = search_he_gamma(model, xc, yc, det, pgd_hp,
                                           batch_size=args.batch_size)
        else:
            notes.append("he_adaptive skipped: the detector file names no calibration source")
        extra = {"he_adaptive_gamma": gamma, "he_gamma_search": trace}
        attacks |= adaptive_attacks(det, pgd_hp, gamma, lam=args.lam)
    attacks |= he_attacks(gammas, pgd_hp)
    log = None if args.json else (lambda s: print(f"  {s}", flush=True))
    analysis = analyze_energy(model, x, y, attacks, args.batch_size, log=log)
    rows = evaluate_detector(det, analysis)
    study = he_gamma_study(analysis, det, gammas) if gammas else []
    energy = {k: {"accuracy_adv": r["accuracy_adv"], "dE_x_mean": r["dE_x"]["mean"],
                  "dE_x_std": r["dE_x"]["std"], "share_E_adv_below": r["share_E_adv_below"]}
              for k, r in analysis.table().items()}
    curves = {k: (r["roc"]["fpr"], r["roc"]["tpr"], r["auroc"])
              for k, r in rows.items() if r["roc"] and not k.startswith("he_pgd[")}
    plot_roc(curves, out / "roc.png", title=f"energy detector T={det.temperature:g} "
             f"({det.direction}), eps {eps:g}")
    md = detection_section(det.to_json(), rows)
    if study:
        plot_he_study(study, out / "he_study.png")
        atomic_write_json(out / "he_study.json", {"rows": study, "eps": eps, "steps": pgd_hp["steps"]})
        md += "\n" + he_study_section(study)
    for note in notes:
        md += f"\nNote: {note}\n"
    slim = {k: {kk: vv for kk, vv in r.items() if kk != "roc"} for k, r in rows.items()}
    result = {"detector": det.to_json(), "eps": eps, "norm": norm, "n": len(y),
              "dataset": args.dataset, "split": args.split, "clean_accuracy":
              float((analysis.clean.argmax(1) == analysis.y).double().mean()),
              "attacks": slim, "energy": energy, "he_study": study, "notes": notes,
              "out": str(out)} | extra
    atomic_write_json(out / "detection.json", result | {"roc": {k: r["roc"] for k, r in rows.items()}})
    atomic_write_text(out / "detection.md", md)
    emit(result, args.json, md + f"\nsaved to {out}")
    return 0
