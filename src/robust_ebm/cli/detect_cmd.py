"""``robust-ebm detect calibrate|evaluate``: the energy detector of adversarial inputs.

``calibrate`` fits T and tau on a held-out split (default: the training run's validation split,
rebuilt from the ``run.json`` beside the checkpoint) attacked with PGD of the given budget;
``evaluate`` attacks the evaluation points with every attack, two adaptive attackers and HE-PGD
over a gamma grid. The files are those of :mod:`robust_ebm.detection.workflow`. Under torchrun
``evaluate`` shards the points over the ranks and rank 0 writes (docs/scale.md).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..errors import UserError
from .common import (
    add_common_args,
    add_flags_file_arg,
    add_model_args,
    config_of,
    emit,
    float_batch,
    load_model_and_data,
    nonnegative_float,
    output_dir,
    parse_floats,
    parse_names,
    positive_int,
    start_run,
)
from .scale_args import add_fast_args, fast_model

_EXAMPLE = """\
example (calibrate on training images, evaluate on test images):
  robust-ebm detect calibrate --checkpoint artifacts/fmnist/standard-s0.safetensors \\
      --dataset fashion_mnist --cal-split train --n 500 --eps 0.1 --out runs/det
  robust-ebm detect evaluate --checkpoint artifacts/fmnist/standard-s0.safetensors \\
      --dataset fashion_mnist --detector runs/det/detector.json --n 200 --attacks pgd,fgsm \\
      --out runs/det-eval
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``detect`` subcommand and its options. Long on purpose: an argument table, one
    ``add_argument`` per option, read top to bottom like the ``--help`` it produces."""
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
    add_flags_file_arg(c)
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
    c.add_argument("--step-size", type=nonnegative_float, default=None,
                   help="attack step, pixel units (default 2.5 * eps / steps)")
    c.add_argument("--temperatures", default=",".join(f"{t:g}" for t in TEMPERATURES),
                   help="comma-separated grid, or 'published' (the notebooks' grid, no T = 5)")
    c.add_argument("--direction", choices=("below", "above", "auto"), default="below",
                   help="flag E_T <= tau (below, the paper), >= tau, or pick the better side")
    c.add_argument("--batch-size", type=positive_int, default=500)
    _positives_arg(c)
    c.set_defaults(func=run_calibrate)

    e = dsub.add_parser(
        "evaluate", help="detector against attacks, adaptive attacks, HE-PGD",
        description="Test a calibrated detector on points it never saw: AUROC and TPR/FPR at "
                    "tau per attack, two adaptive attackers and HE-PGD over gamma.",
        epilog=_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(e)
    add_common_args(e)
    add_flags_file_arg(e)
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
    e.add_argument("--step-size", type=nonnegative_float, default=None,
                   help="step of the PGD family, HE-PGD and adaptive attacks, pixel units "
                        "(default 2.5 * eps / steps)")
    e.add_argument("--batch-size", type=positive_int, default=500)
    _positives_arg(e)
    add_fast_args(e)
    e.set_defaults(func=run_evaluate)


def _positives_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--positives", choices=("successful", "all"), default="successful",
                   help="x* counted as adversarial: those that fool the model, or every x* "
                        "(the published protocol, docs/fidelity.md)")


def _calibration_points(args: argparse.Namespace, cal_split: str, n: int,
                        val_size: int | None, val_seed: int | None) -> tuple[Any, Any, Any, Any]:
    """(model, x, y, source) of the calibration points of ``cal_split``."""
    from ..detection.workflow import calibration_subset

    model, ds = load_model_and_data(args, "train" if cal_split == "val" else cal_split)
    ds, source = calibration_subset(ds, cal_split, n, args.checkpoint, val_size, val_seed)
    x, y = float_batch(ds, next(model.parameters()).device)
    return model, x, y, {"dataset": str(args.dataset)} | source


def run_calibrate(args: argparse.Namespace) -> int:
    from ..attacks import make_attack
    from ..detection.detector import PUBLISHED_TEMPERATURES
    from ..detection.workflow import calibration_text, write_calibration
    from ..provenance import write_run_json

    temps = (list(PUBLISHED_TEMPERATURES) if args.temperatures.strip() == "published"
             else parse_floats(args.temperatures, "--temperatures"))
    if any(t <= 0 for t in temps):
        raise UserError(f"--temperatures must be > 0; got {args.temperatures}")
    hp = {"eps": args.eps, "norm": args.norm, "seed": args.seed}
    if args.attack != "fgsm":
        hp["steps"] = args.steps
    if args.step_size is not None:
        hp["step_size"] = args.step_size
    attack = make_attack(args.attack, **hp)
    model, x, y, source = _calibration_points(args, args.cal_split, args.n, args.val_size,
                                              args.val_seed)
    out = output_dir(args, "detect-calibrate")
    write_run_json(out, config_of(args), args.seed, next(model.parameters()).device)
    info = {"checkpoint": str(args.checkpoint), "source": source, "attack": args.attack,
            "eps": args.eps, "norm": args.norm, "steps": args.steps, "seed": args.seed,
            "step_size": args.step_size}
    result = write_calibration(model, x, y, attack, out, temperatures=temps,
                               direction=args.direction, batch_size=args.batch_size, info=info,
                               only_successful=args.positives == "successful")
    emit(result, args.json, calibration_text(result) + f"\nsaved to {out / 'detector.json'}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..analysis import default_attacks
    from ..detection import EnergyDetector, workflow

    det = EnergyDetector.load(args.detector)
    info = det.info
    workflow.check_disjoint(info, str(args.dataset), args.split)
    pgd_hp = workflow.attack_budget(info, args.eps, args.norm, args.steps, args.seed)
    he_hp = pgd_hp if args.step_size is None else pgd_hp | {"step_size": args.step_size}
    names = parse_names(args.attacks, "--attacks")
    gammas = ([] if str(args.he_gammas).strip().lower() == "none"
              else parse_floats(args.he_gammas, "--he-gammas"))
    attacks, notes = default_attacks(pgd_hp["eps"], names, pgd_hp["norm"], args.steps,
                                     args.seed, square_queries=args.square_queries,
                                     step_size=args.step_size)
    model, ds = load_model_and_data(args)
    device = next(model.parameters()).device
    model = fast_model(model, args)
    x, y = float_batch(ds.subset(torch.arange(min(args.n, len(ds)))), device)
    out = start_run(args, "detect-evaluate", device)
    meta: dict[str, Any] = {"dataset": args.dataset, "split": args.split}
    if not args.no_adaptive:
        src = info.get("source")
        cal = None if not src else _calibration_points(
            args, src["split"], min(args.search_n, int(src["n"])), src.get("val_size"),
            src.get("val_seed"))[1:3]
        adaptive, extra = workflow.adaptive_setup(model, det, he_hp, cal, lam=args.lam,
                                                  batch_size=args.batch_size, notes=notes)
        attacks |= adaptive
        meta |= extra
    log = None if args.json else (lambda s: print(f"  {s}", flush=True))
    done = workflow.write_evaluation(model, x, y, det, attacks, out, gammas=gammas,
                                     attack_hp=he_hp, notes=notes, meta=meta,
                                     batch_size=args.batch_size, log=log,
                                     only_successful=args.positives == "successful")
    if done is None:  # a torchrun rank other than 0: rank 0 wrote the merged evaluation
        return 0
    result, md = done
    emit(result, args.json, md + f"\nsaved to {out}")
    return 0
