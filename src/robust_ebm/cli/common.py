"""Helpers shared by the subcommands: argument types, model and data loading, devices, output
folders, result printing."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ..distributed_eval import is_main
from ..errors import UserError
from ..loading import (  # noqa: F401  (used by commands)
    float_batch,
    load_model_and_split,
    model_and_split,
    model_from_args,
    parse_arch_args,
    resolve_device,
)
from ..statistics import format_clean_report as format_report  # noqa: F401  (used by commands)
from ..validate import parse_floats, parse_names  # noqa: F401  (used by commands)


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
        # commands that read a checkpoint default to its own dataset (see add_model_args)
        own = p.get_default("dataset_from_checkpoint")
        p.add_argument("--dataset", default=None if own else "fashion_mnist",
                       help="dataset name (see 'robust-ebm data list') or a .npz file"
                       + (" (default: the checkpoint's own)" if own else ""))
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


def output_dir(args: argparse.Namespace, command: str, create: bool = True) -> Path:
    """The run's output folder (``--out``, else ``runs/<command>-<time>``), created and locked
    by :func:`open_output`; ``create=False`` only names it.

    Call it only after the inputs were checked: a refused run must create nothing.
    """
    if args.out:
        out = Path(args.out)
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{command}-{stamp}"
    return open_output(args, out) if create else out


def open_output(args: argparse.Namespace, out: Path) -> Path:
    """Create and lock ``out`` under the ``--overwrite``/``--resume`` rules
    (:func:`robust_ebm.outputs.prepare_out`); torchrun ranks other than 0 only get the path."""
    from ..outputs import prepare_out

    if not is_main():
        return out
    return prepare_out(out, overwrite=bool(getattr(args, "overwrite", False)),
                       resume=bool(getattr(args, "resume", False)))


def start_run(args: argparse.Namespace, command: str, device: torch.device) -> Path:
    """The output folder with ``run.json`` written. Under torchrun only rank 0 creates and
    writes it; the other ranks get the path and write nothing (docs/scale.md)."""
    from ..provenance import write_run_json

    out = output_dir(args, command, create=is_main())
    if is_main():
        write_run_json(out, config_of(args), args.seed, device)
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


def load_model_and_data(args: argparse.Namespace, split: str | None = None) -> tuple[Any, Any]:
    """The model of ``add_model_args`` (eval mode, on ``--device``; under torchrun on CUDA, this
    rank's GPU) and the whole dataset split (default ``--split``), checked to fit."""
    return model_and_split(args, split)


# -- the model options shared by every command that reads a checkpoint -------------------------


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--checkpoint`` and how to read it: by zoo name or by architecture (one definition)."""
    g = p.add_argument_group("model", "what the checkpoint holds (robust-ebm checkpoints know)")
    g.add_argument("--checkpoint", default=None,
                   help="a robust-ebm .safetensors checkpoint or a foreign .pt/.pth/.safetensors")
    g.add_argument("--robustbench", default=None, metavar="NAME",
                   help="RobustBench zoo name of the checkpoint, e.g. Carmon2019Unlabeled "
                        "(architecture and normalization from the catalog; docs/models.md)")
    g.add_argument("--threat-model", default="Linf", choices=("Linf", "L2"),
                   help="zoo leaderboard of --robustbench (default Linf)")
    g.add_argument("--arch", default=None,
                   help="architecture of a foreign checkpoint, e.g. wide_resnet, dm_wide_resnet")
    g.add_argument("--arch-args", default="", metavar="K=V,...",
                   help="architecture arguments, e.g. depth=70,widen_factor=16,activation=silu")
    g.add_argument("--num-classes", type=positive_int, default=None,
                   help="classes of a foreign checkpoint (default: the dataset's)")
    g.add_argument("--mean", default=None, help="input mean per channel, e.g. 0.4914,0.4822,0.4465")
    g.add_argument("--std", default=None, help="input std per channel, e.g. 0.2471,0.2435,0.2616")
    g.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                   help="refuse a file whose keys do not match exactly (--no-strict loads what "
                        "fits and reports what it skipped)")
    # --dataset defaults to the checkpoint's own dataset where it records one (either order)
    p.set_defaults(dataset=None, dataset_from_checkpoint=True)


def add_flags_file_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", dest="flags_file", default=None, metavar="FILE",
                   help="TOML of this command's flags (key = flag name; a [calibrate], "
                        "[evaluate], ... table applies to that action); flags given win")


def with_flags_file(argv: list[str], path: str) -> list[str]:
    """``argv`` with the flags of the TOML file ``path`` inserted after the command words, so
    that flags given on the command line (later) win. Keys are flag names (``step_size`` or
    ``step-size``); true adds a switch, false leaves it off, a list is joined by commas; a
    table named after a command word (``[calibrate]``) adds its keys for that action only."""
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    n_words = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    words = argv[:n_words]
    flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for name, table in ((k, v) for k, v in data.items() if isinstance(v, dict)):
        if name in words:
            flat |= table
    extra: list[str] = []
    for key, value in flat.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            extra += [flag] if value else []
        else:
            text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
            extra += [flag, text]
    return words + extra + argv[n_words:]
