"""``robust-ebm attack``: robust accuracy of a checkpoint under an attack cascade, and
``robust-ebm merge-attacks``: one report from shards of such a run.

``attack`` writes to --out the files of :func:`robust_ebm.evaluation.write_attack_run`
(``adversarial.safetensors``, ``robustness.json``) and ``run.json``; under torchrun the points
are sharded over the ranks and rank 0 writes (docs/scale.md); ``merge-attacks`` those of
:func:`robust_ebm.evaluation.merge_attack_runs`. All writes atomic.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..distributed_eval import rank_device
from ..errors import UserError
from .common import (
    add_common_args,
    add_model_args,
    emit,
    float_batch,
    model_and_split,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    resolve_device,
    start_run,
)
from .scale_args import add_fast_args, fast_model


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
    add_model_args(p)
    add_common_args(p)
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--n", type=positive_int, default=1000, help="use N samples (the first N)")
    p.add_argument("--start", type=nonnegative_int, default=0,
                   help="index of the first sample (default 0): with --n, samples [START, "
                        "START+N); shards of one evaluation can run apart and be merged with "
                        "'robust-ebm merge-attacks'")
    p.add_argument("--attacks", default="apgd_ce,apgd_t",
                   help="comma-separated names (see docs/attacks.md), e.g. pgd,apgd_ce")
    p.add_argument("--eps", type=nonnegative_float, required=True,
                   help="budget in pixel units of [0,1] images, e.g. 0.1 or 0.0314")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="iterations for attacks that take steps (default: each attack's own)")
    p.add_argument("--step-size", type=nonnegative_float, default=None,
                   help="step of every PGD-family attack, pixel units (default 2.5 * eps / steps)")
    p.add_argument("--gamma", type=float, default=None, help="gamma of he_pgd (default 1.5)")
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--sanity", action="store_true",
                   help="also run the gradient-masking sanity checks (on up to 200 points)")
    add_fast_args(p)
    p.set_defaults(func=run)

    m = sub.add_parser(
        "merge-attacks", help="merge shards of one 'attack' run (--start/--n) into one report",
        description="Merge the shards of one 'attack' run: check that the shard folders attacked "
        "the same checkpoint, data, budget and attacks on disjoint points, and write the report "
        "the single run would have written.",
        epilog="example (two shards of 100 points each, then the merged report):\n"
               "  robust-ebm attack --checkpoint artifacts/fmnist/pgd_at-s0.safetensors "
               "--dataset fashion_mnist \\\n      --n 100 --eps 0.1 --attacks pgd --out runs/a0\n"
               "  robust-ebm attack --checkpoint artifacts/fmnist/pgd_at-s0.safetensors "
               "--dataset fashion_mnist \\\n      --start 100 --n 100 --eps 0.1 --attacks pgd "
               "--out runs/a1\n"
               "  robust-ebm merge-attacks runs/attack runs/a0 runs/a1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("out", help="folder for the merged adversarial.safetensors and robustness.json")
    m.add_argument("shards", nargs="+", help="the --out folders of the shards (two or more)")
    m.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    m.set_defaults(func=run_merge)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import build_attacks, write_attack_run

    names = [a.strip() for a in str(args.attacks).split(",") if a.strip()]
    if not names:
        raise UserError("--attacks is empty; give e.g. --attacks pgd,apgd_ce")
    hp: dict[str, Any] = {"eps": args.eps, "norm": args.norm, "seed": args.seed}
    for key in ("steps", "step_size", "gamma"):
        if getattr(args, key) is not None:
            hp[key] = getattr(args, key)
    attacks = build_attacks(names, hp)  # bad names fail before loading
    device = rank_device(resolve_device(args.device))  # under torchrun: this rank's GPU
    model, ds = model_and_split(args, args.split, args.n, args.start)
    n = len(ds)
    x, y = float_batch(ds, device)
    out = start_run(args, "attack", device)
    done = write_attack_run(
        fast_model(model, args), x, y, attacks, out, index=torch.arange(args.start, args.start + n),
        eps=args.eps, norm=args.norm, seed=args.seed, batch_size=args.batch_size, sanity=args.sanity,
        meta={"checkpoint": str(args.checkpoint), "dataset": args.dataset,
              "split": args.split, "start": args.start})
    if done is None:  # a torchrun rank other than 0: rank 0 wrote the merged run
        return 0
    result, report = done
    text = (f"{args.dataset}/{args.split} [{args.start}, {args.start + n}) eps={args.eps:g} "
            f"({args.norm})\n" + report.table())
    emit(result, args.json, text + f"\nsaved to {out}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from ..evaluation import merge_attack_runs

    rep = merge_attack_runs(args.shards, args.out)
    emit(rep, args.json, f"n={rep['n']} clean {rep['clean_accuracy']:.4f} robust "
                         f"{rep['robust_accuracy']:.4f} -> {args.out}")
    return 0
