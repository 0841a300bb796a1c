"""``robust-ebm attack``: robust accuracy of a checkpoint under an attack cascade.

Writes to --out: ``adversarial.safetensors`` (x_adv float32 (N,C,H,W), y, index into the
split, robust and clean_correct as uint8), ``robustness.json`` (the per-attack table, sanity
checks, clean accuracy on the same points) and ``run.json`` (provenance). All writes atomic.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..errors import UserError
from ..io import atomic_write, atomic_write_json
from .common import (
    add_common_args,
    config_of,
    emit,
    float_batch,
    load_model_and_split,
    nonnegative_float,
    nonnegative_int,
    output_dir,
    positive_int,
    resolve_device,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attack",
        help="robust accuracy under an attack cascade; saves adversarial examples",
        description="Measure how many points a model still classifies correctly under "
        "attack: attacks run as a cascade (only still-robust points go on), reporting per-attack "
        "and worst-case robust accuracy with clean accuracy on the same points.",
        epilog="example:\n  robust-ebm attack --checkpoint artifacts/fmnist/pgd_at-s0.safetensors "
               "--dataset fashion_mnist \\\n      --n 200 --eps 0.1 --attacks pgd,apgd_ce "
               "--out runs/attack",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="a robust-ebm .safetensors checkpoint")
    add_common_args(p)
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--n", type=positive_int, default=1000, help="use N samples (the first N)")
    p.add_argument(
        "--start",
        type=nonnegative_int,
        default=0,
        help="index of the first sample (default 0): with --n, samples [START, START+N); "
        "shards of one evaluation can run apart and be merged with scripts/merge_attacks.py",
    )
    p.add_argument(
        "--attacks",
        default="apgd_ce,apgd_t",
        help="comma-separated names (see docs/attacks.md), e.g. pgd,apgd_ce",
    )
    p.add_argument(
        "--eps",
        type=nonnegative_float,
        required=True,
        help="budget in pixel units of [0,1] images, e.g. 0.1 or 0.0314",
    )
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="iterations for attacks that take steps (default: each attack's own)",
    )
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument(
        "--sanity",
        action="store_true",
        help="also run the gradient-masking sanity checks (on up to 200 points)",
    )
    p.set_defaults(func=run)


def _hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    hp: dict[str, Any] = {"eps": args.eps, "norm": args.norm, "seed": args.seed}
    if args.steps is not None:
        hp["steps"] = args.steps
    return hp


def _build_attacks(names: list[str], hp: dict[str, Any]) -> list[tuple[str, Any]]:
    from ..attacks import make_attack
    from ..attacks.registry import REFERENCE_ATTACKS

    out = []
    for name in names:
        kw = dict(hp)
        if name in REFERENCE_ATTACKS or name == "fgsm":
            kw.pop("steps", None)  # those attacks name their iterations differently or fix them
        out.append((name, make_attack(name, **kw)))
    return out


def run(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from ..evaluation import evaluate_robustness, sanity_checks
    from ..provenance import write_run_json

    names = [a.strip() for a in str(args.attacks).split(",") if a.strip()]
    if not names:
        raise UserError("--attacks is empty; give e.g. --attacks pgd,apgd_ce")
    attacks = _build_attacks(names, _hyperparameters(args))  # bad names fail before loading
    device = resolve_device(args.device)
    model, ds = load_model_and_split(args.checkpoint, args.dataset, args.split, args.data_dir,
                                     args.n, device, start=args.start)
    n = len(ds)
    index = torch.arange(args.start, args.start + n)
    x, y = float_batch(ds, device)
    out = output_dir(args, "attack")
    write_run_json(out, config_of(args), args.seed, device)

    report = evaluate_robustness(model, (x, y), attacks, batch_size=args.batch_size)
    if args.sanity:
        m = min(200, n)
        report.sanity = sanity_checks(
            model,
            x[:m],
            y[:m],
            eps=args.eps,
            norm=args.norm,
            white_box_accuracy=float(report.robust[:m].float().mean()) if m else None,
            batch_size=args.batch_size,
            seed=args.seed,
        )

    tensors = {
        "x_adv": report.x_adv.detach().float().cpu().contiguous(),
        "y": y.cpu().contiguous(),
        "index": index.contiguous(),
        "robust": report.robust.to(torch.uint8).cpu().contiguous(),
        "clean_correct": report.clean_correct.to(torch.uint8).cpu().contiguous(),
    }
    meta = {
        "attacks": ",".join(names),
        "eps": str(args.eps),
        "norm": args.norm,
        "dataset": str(args.dataset),
        "split": args.split,
    }
    atomic_write(
        out / "adversarial.safetensors", lambda tmp: save_file(tensors, tmp, metadata=meta)
    )
    result = report.to_dict() | {
        "checkpoint": str(args.checkpoint),
        "dataset": args.dataset,
        "split": args.split,
        "start": args.start,
        "eps": args.eps,
        "norm": args.norm,
        "attacks_requested": names,
        "fooled_by": report.fooled_by,
        "out": str(out),
    }
    atomic_write_json(out / "robustness.json", result)
    text = f"{args.dataset}/{args.split} [{args.start}, {args.start + n}) eps={args.eps:g} ({args.norm})\n" + report.table()
    emit(result, args.json, text + f"\nsaved to {out}")
    return 0
