"""``robust-ebm energy``: energies of clean and attacked inputs, per attack, plus a PGD sweep.

Writes to --out the files of :func:`robust_ebm.analysis.study.write_energy_study` (``energy.json``,
``energy_hist.png``, ``energy.md``, ``pgd_sweep.json``/``.png``) and ``run.json``; under torchrun
the points are sharded over the ranks and rank 0 writes (docs/scale.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import UserError
from .common import (
    add_common_args,
    add_flags_file_arg,
    add_model_args,
    emit,
    finite_float,
    float_batch,
    load_model_and_data,
    nonnegative_float,
    parse_floats,
    parse_names,
    positive_int,
    start_run,
)
from .scale_args import add_fast_args, fast_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..analysis import DEFAULT_ATTACKS

    p = sub.add_parser(
        "energy", help="energy of clean vs adversarial inputs, per attack",
        description="See how each attack moves a classifier's energy: E(x), E(x,y), "
        "E(x,y_pred) of clean and attacked inputs per attack, gaps dE = E(x) - E(x*), "
        "histograms and a PGD sweep over steps and eps (lower energy = more likely).",
        epilog="example:\n  robust-ebm energy --checkpoint artifacts/fmnist/standard-s0.safetensors "
               "--dataset fashion_mnist \\\n      --n 200 --eps 0.1 --attacks pgd,noise "
               "--no-sweep --out runs/energy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_common_args(p)
    add_flags_file_arg(p)
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--n", type=positive_int, default=1000, help="use the first N samples")
    p.add_argument("--eps", type=nonnegative_float, required=True,
                   help="budget in pixel units of [0,1] images, e.g. 0.1")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                   help="comma-separated; 'noise' is the same-norm random control")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="iterations of every iterative attack (default: PGD family 20, APGD 100)")
    p.add_argument("--he-gamma", type=finite_float, default=1.5, help="gamma of he_pgd")
    p.add_argument("--step-size", type=nonnegative_float, default=None,
                   help="step of the PGD family, pixel units (default 2.5 * eps / steps)")
    p.add_argument("--square-queries", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--no-sweep", action="store_true", help="skip the PGD steps/eps sweep")
    p.add_argument("--sweep-steps", default="1,2,5,10,20,50")
    p.add_argument("--sweep-eps", default="0.25,0.5,1,1.5,2", help="multiples of --eps")
    add_fast_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis import default_attacks
    from ..analysis.study import write_energy_study

    names = parse_names(args.attacks, "--attacks")
    steps_grid = [int(v) for v in parse_floats(args.sweep_steps, "--sweep-steps")]
    if any(s < 1 for s in steps_grid):
        raise UserError("--sweep-steps must be whole numbers >= 1")
    factors = parse_floats(args.sweep_eps, "--sweep-eps")
    if any(f < 0 for f in factors):
        raise UserError("--sweep-eps must be >= 0")
    # bad attack names fail before anything is loaded
    attacks, notes = default_attacks(args.eps, names, args.norm, args.steps, args.seed,
                                     args.he_gamma, args.square_queries, args.step_size)
    model, ds = load_model_and_data(args)
    device = next(model.parameters()).device
    x, y = float_batch(ds.subset(torch.arange(min(args.n, len(ds)))), device)
    out = start_run(args, "energy", device)
    done = write_energy_study(
        fast_model(model, args), x, y, attacks, out, eps=args.eps, norm=args.norm, notes=notes,
        sweep=None if args.no_sweep else (steps_grid, factors), seed=args.seed,
        batch_size=args.batch_size,
        meta={"checkpoint": str(args.checkpoint), "dataset": args.dataset, "split": args.split},
        title=f"Energy under attack: {Path(args.checkpoint).parent.name} "
              f"({args.dataset}/{args.split}, eps {args.eps:g})",
        log=None if args.json else (lambda s: print(f"  {s}", flush=True)))
    if done is None:  # a torchrun rank other than 0: rank 0 wrote the merged study
        return 0
    result, md = done
    emit(result, args.json, md + f"\nsaved to {out}")
    return 0
