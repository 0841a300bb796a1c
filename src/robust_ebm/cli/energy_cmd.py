"""``robust-ebm energy``: energies of clean and attacked inputs, per attack, plus a PGD sweep.

Writes to --out: ``energy.json`` (per-attack table and the sweep), ``energy_hist.png``
(overlaid histograms of E(x) and E(x*)), ``pgd_sweep.png``/``pgd_sweep.json`` (PGD-CE over
steps and eps), ``energy.md`` (a Markdown report section) and ``run.json``. All writes atomic.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .common import (
    add_common_args,
    config_of,
    emit,
    float_batch,
    load_model_and_split,
    nonnegative_float,
    output_dir,
    positive_int,
    resolve_device,
)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a robust-ebm .safetensors checkpoint, or a foreign state dict with --arch")
    p.add_argument("--arch", default=None,
                   help="architecture of a foreign checkpoint (e.g. wide_resnet28_10)")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classes of a foreign checkpoint (default: the dataset's)")


def parse_names(text: str, flag: str) -> list[str]:
    names = [a.strip() for a in str(text).split(",") if a.strip()]
    if not names:
        raise UserError(f"{flag} is empty; give a comma-separated list")
    return names


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        vals = [float(v) for v in parse_names(text, flag)]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated numbers; got {text!r}") from None
    if any(not math.isfinite(v) for v in vals):
        raise UserError(f"{flag} must be finite numbers; got {text!r}")
    return vals


def load_model_and_data(args: argparse.Namespace, split: str | None = None) -> tuple[nn.Module, Any]:
    """The model (eval mode, on the device) and the whole dataset split, checked to fit."""
    return load_model_and_split(args.checkpoint, args.dataset, split or args.split,
                                args.data_dir, None, resolve_device(args.device), args.arch,
                                args.num_classes)


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
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--n", type=positive_int, default=1000, help="use the first N samples")
    p.add_argument("--eps", type=nonnegative_float, required=True,
                   help="budget in pixel units of [0,1] images, e.g. 0.1")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                   help="comma-separated; 'noise' is the same-norm random control")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="iterations of every iterative attack (default: PGD family 20, APGD 100)")
    p.add_argument("--he-gamma", type=float, default=1.5, help="gamma of he_pgd")
    p.add_argument("--square-queries", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--no-sweep", action="store_true", help="skip the PGD steps/eps sweep")
    p.add_argument("--sweep-steps", default="1,2,5,10,20,50")
    p.add_argument("--sweep-eps", default="0.25,0.5,1,1.5,2", help="multiples of --eps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis import analyze_energy, default_attacks, sweep_pgd
    from ..io import atomic_write_json, atomic_write_text
    from ..provenance import write_run_json
    from ..reports import energy_section, plot_energy_histograms, plot_sweep, sweep_section

    names = parse_names(args.attacks, "--attacks")
    steps_grid = [int(v) for v in parse_floats(args.sweep_steps, "--sweep-steps")]
    if any(s < 1 for s in steps_grid):
        raise UserError("--sweep-steps must be whole numbers >= 1")
    factors = parse_floats(args.sweep_eps, "--sweep-eps")
    if any(f < 0 for f in factors):
        raise UserError("--sweep-eps must be >= 0")
    # bad attack names fail before anything is loaded
    attacks, notes = default_attacks(args.eps, names, args.norm, args.steps, args.seed,
                                     args.he_gamma, args.square_queries)
    model, ds = load_model_and_data(args)
    device = next(model.parameters()).device
    x, y = float_batch(ds.subset(torch.arange(min(args.n, len(ds)))), device)
    out = output_dir(args, "energy")
    write_run_json(out, config_of(args), args.seed, device)
    log = None if args.json else (lambda s: print(f"  {s}", flush=True))
    analysis = analyze_energy(model, x, y, attacks, args.batch_size, log=log)
    analysis.notes.extend(notes)
    result: dict[str, Any] = analysis.to_dict() | {
        "checkpoint": str(args.checkpoint), "dataset": args.dataset, "split": args.split,
        "eps": args.eps, "norm": args.norm, "out": str(out),
    }
    plot_energy_histograms(
        analysis.per_sample(None)["E"].numpy(),
        {k: analysis.per_sample(k)["E"].numpy() for k in analysis.adversarial},
        out / "energy_hist.png", title=f"E(x) clean vs attacked, eps={args.eps:g}",
    )
    md = energy_section(result, f"Energy under attack: {Path(args.checkpoint).parent.name} "
                                f"({args.dataset}/{args.split}, eps {args.eps:g})")
    if not args.no_sweep:
        sweep = sweep_pgd(model, x, y, args.eps, steps_grid, factors, norm=args.norm,
                          seed=args.seed, batch_size=args.batch_size)
        atomic_write_json(out / "pgd_sweep.json", sweep)
        plot_sweep(sweep, out / "pgd_sweep.png")
        result["sweep"] = sweep
        md += "\n" + sweep_section(sweep)
    atomic_write_json(out / "energy.json", result)
    atomic_write_text(out / "energy.md", md)
    text = md + f"\nsaved to {out}"
    emit(result, args.json, text)
    return 0
