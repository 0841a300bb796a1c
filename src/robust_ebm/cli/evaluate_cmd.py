"""``robust-ebm evaluate``: clean accuracy and energy statistics of a checkpoint."""

from __future__ import annotations

import argparse

from ..io import atomic_write_json
from ..provenance import write_run_json
from ..statistics import clean_report
from .common import (
    add_common_args,
    add_model_args,
    config_of,
    emit,
    format_report,
    model_and_split,
    output_dir,
    positive_int,
    resolve_device,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="clean accuracy and energy statistics",
                       description="Clean accuracy and E(x), E(x,y) statistics of a checkpoint.")
    add_model_args(p)
    add_common_args(p)
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--n", type=positive_int, default=None, help="use the first N samples")
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, ds = model_and_split(args, args.split, args.n)
    out = output_dir(args, "evaluate")
    write_run_json(out, config_of(args), args.seed, device)
    report = clean_report(model, ds.images, ds.labels, args.batch_size)
    report |= {"checkpoint": str(args.checkpoint), "dataset": args.dataset, "split": args.split}
    atomic_write_json(out / "evaluation.json", report)
    emit(report, args.json, format_report(f"{args.dataset}/{args.split}", report))
    return 0
