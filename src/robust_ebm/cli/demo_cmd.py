"""``robust-ebm demo``: the main job on the default data.

Trains a standard ``small_cnn`` on Fashion-MNIST and prints clean accuracy and energy
statistics of the test set (later milestones extend the demo with attacks and generation).
"""

from __future__ import annotations

import argparse

from . import train_cmd


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small CNN on Fashion-MNIST and report energies",
                       description=__doc__.splitlines()[0])
    train_cmd.add_training_args(p, epochs=3)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.out is None:
        args.out = "runs/demo"
    return train_cmd.run(args)
