"""``robust-ebm demo``: the main job on the default data.

Trains a standard ``small_cnn`` on Fashion-MNIST (3 epochs), then prints clean accuracy and
energy statistics of the full test set.
"""

from __future__ import annotations

import argparse

from ..checkpoint import load_model
from ..data import load_dataset
from ..statistics import clean_report
from . import train_cmd
from .common import emit, format_report


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small CNN on Fashion-MNIST and report energies",
                       description=__doc__.splitlines()[0])
    train_cmd.add_training_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.out is None:
        args.out = "runs/demo"
    defaults = {"train": {"epochs": 3}}
    result = train_cmd.execute(args, defaults)
    if result is None:
        return 0
    model = load_model(result["checkpoint"])
    data = result["config"]["data"]
    test = load_dataset(data["dataset"], "test", data["data_dir"])
    report = clean_report(model, test.images, test.labels)
    emit(report | {"training": result}, args.json,
         format_report(f"{data['dataset']} test", report) + f"\ncheckpoint: {result['checkpoint']}")
    return 0
