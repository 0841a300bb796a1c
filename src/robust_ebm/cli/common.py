"""Helpers shared by the subcommands: argument types, model and data loading, devices, output
folders, result printing."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..loading import float_batch, load_model_and_split  # noqa: F401  (used by commands)
from ..statistics import format_clean_report as format_report  # noqa: F401  (used by commands)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number; got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}; got {value}")
    return value


def seed_int(text: str) -> int:
    value = _int_at_least(text, 0)
    if value > 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be <= 2**32-1; got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # values are cast to float32 tensors


def finite_float(text: str) -> float:
    """A finite number (NaN, Inf and values beyond float32 refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not abs(value) <= _FLOAT32_MAX:
        raise argparse.ArgumentTypeError(f"must be a finite number; got {text}")
    return value


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not value >= 0 or value > _FLOAT32_MAX:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text}")
    return value


def positive_float(text: str) -> float:
    value = nonnegative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def add_common_args(p: argparse.ArgumentParser, data: bool = True, force: bool = True) -> None:
    if data:
        p.add_argument("--dataset", default="fashion_mnist",
                       help="dataset name (see 'robust-ebm data list') or a .npz file")
        p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    if data and force:
        p.add_argument("--force", action="store_true",
                       help="run even when the checkpoint records another dataset or image size")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed, 0 .. 2**32-1")
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/<command>-<UTC time>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (default: refuse a non-empty --out)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available; use --device cpu")
    return dev


def output_dir(args: argparse.Namespace, command: str) -> Path:
    """The run's output folder, created and locked (:func:`robust_ebm.outputs.prepare_out`).

    Call it only after the inputs were checked: a refused run must create nothing.
    """
    from ..outputs import prepare_out

    if args.out:
        out = Path(args.out)
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{command}-{stamp}"
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 checks and locks the folder
        out.mkdir(parents=True, exist_ok=True)
        return out
    return prepare_out(out, overwrite=bool(getattr(args, "overwrite", False)),
                       resume=bool(getattr(args, "resume", False)))


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved arguments of a run, JSON-friendly."""
    return {k: v for k, v in vars(args).items() if k != "func" and not callable(v)}


def emit(result: dict[str, Any], as_json: bool, text: str) -> None:
    """Print ``result`` as JSON (``--json``) or ``text`` for people."""
    if as_json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--checkpoint, and --arch/--num-classes for a foreign state dict."""
    p.add_argument("--checkpoint", required=True,
                   help="a robust-ebm .safetensors checkpoint, or a foreign state dict with --arch")
    p.add_argument("--arch", default=None,
                   help="architecture of a foreign checkpoint (e.g. wide_resnet28_10)")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classes of a foreign checkpoint (default: the dataset's)")


def parse_names(text: str, flag: str) -> list[str]:
    """A comma-separated list of names; UserError naming ``flag`` when it is empty."""
    names = [a.strip() for a in str(text).split(",") if a.strip()]
    if not names:
        raise UserError(f"{flag} is empty; give a comma-separated list")
    return names


def parse_floats(text: str, flag: str) -> list[float]:
    """A comma-separated list of finite numbers; UserError naming ``flag`` otherwise."""
    try:
        vals = [float(v) for v in parse_names(text, flag)]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated numbers; got {text!r}") from None
    if any(not math.isfinite(v) for v in vals):
        raise UserError(f"{flag} must be finite numbers; got {text!r}")
    return vals


def load_model_and_data(args: argparse.Namespace, split: str | None = None) -> tuple[Any, Any]:
    """The model of ``add_model_args`` (eval mode, on ``--device``) and the whole dataset split
    (default ``--split``), checked to fit."""
    return load_model_and_split(args.checkpoint, args.dataset, split or args.split,
                                args.data_dir, None, resolve_device(args.device), args.arch,
                                args.num_classes, force=bool(getattr(args, "force", False)))
