"""Helpers shared by the subcommands: devices, output folders, result printing."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number; got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}; got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text}")
    return value


def add_common_args(p: argparse.ArgumentParser, data: bool = True) -> None:
    if data:
        p.add_argument("--dataset", default="fashion_mnist",
                       help="dataset name (see 'robust-ebm data list') or a .npz file")
        p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/<command>-<UTC time>)")
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
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} exists and is not a folder; pick another path")
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{command}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    return out


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


def format_report(title: str, report: dict[str, Any]) -> str:
    """Accuracy and energy summaries as a few aligned lines."""
    lines = [f"{title}: n={report['n']}  clean accuracy {report['accuracy']:.4f}"]
    for key, label in (("free_energy", "E(x)  "), ("joint_energy", "E(x,y)")):
        s = report[key]
        lines.append(
            f"  {label} mean {s['mean']:8.3f}  std {s['std']:7.3f}  "
            f"q05 {s['q05']:8.3f}  q50 {s['q50']:8.3f}  q95 {s['q95']:8.3f}"
        )
    return "\n".join(lines)


def load_model_and_split(
    checkpoint: str, dataset: str, split: str, data_dir: str | None, n: int | None,
    device: torch.device, arch: str | None = None, num_classes: int | None = None,
    start: int = 0,
) -> tuple[Any, Any]:
    """Load a checkpoint (eval mode, on ``device``) and ``n`` samples of a split from index
    ``start`` on (``n=None``: to the end).

    ``arch`` (with optional ``num_classes``, default the dataset's) opens a foreign state dict
    through :func:`robust_ebm.checkpoint.load_model`. Raises UserError when the channels or the
    label range do not fit the model.
    """
    from ..checkpoint import load_model
    from ..data import load_dataset

    ds = load_dataset(dataset, split, data_dir)
    if arch:
        model = load_model(checkpoint, map_location=device, name=arch,
                           num_classes=num_classes or ds.num_classes, in_channels=ds.shape[0])
    else:
        model = load_model(checkpoint, map_location=device)
    if ds.shape[0] != model.arch["in_channels"]:
        raise UserError(
            f"checkpoint expects {model.arch['in_channels']}-channel images but {dataset} has "
            f"{ds.shape[0]}; use the dataset the model was trained on"
        )
    if ds.num_classes > model.arch["num_classes"]:
        raise UserError(
            f"{dataset} has {ds.num_classes} classes but the model predicts "
            f"{model.arch['num_classes']}; labels would be out of range"
        )
    if start >= len(ds):
        raise UserError(
            f"--start {start} is past the end of {dataset}/{split} ({len(ds)} samples); "
            f"use a start below {len(ds)}"
        )
    stop = len(ds) if n is None else min(start + n, len(ds))
    if start > 0 or stop < len(ds):
        ds = ds.subset(torch.arange(start, stop))
    return model.eval(), ds


def float_batch(ds: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``ds`` as float in [0, 1] and its labels, on ``device``."""
    return ds.images.to(device).float() / 255.0, ds.labels.to(device)
