"""Flags shared by the evaluation commands for speed (docs/scale.md).

``--precision bf16``, ``--channels-last`` and ``--compile`` wrap the loaded model with
:func:`robust_ebm.fastpath.wrap_model`. Sharding over torchrun ranks needs no flag: the library
calls shard themselves (:mod:`robust_ebm.evaluation.sharded`).
"""

from __future__ import annotations

import argparse

from torch import nn

from ..fastpath import PRECISIONS, wrap_model


def add_fast_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: autocast with float32 logits and losses (default fp32)")
    p.add_argument("--channels-last", action="store_true",
                   help="NHWC memory order (faster convolutions on tensor-core GPUs)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (the first batch of each shape compiles)")


def fast_model(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """The model behind the flags of :func:`add_fast_args` (itself when none is set)."""
    return wrap_model(model, precision=args.precision, channels_last=args.channels_last,
                      compile=args.compile)
