"""What produced a result: versions, git revision, seed, device (written as run.json)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import UserError
from .io import atomic_write_json


def git_revision() -> str | None:
    """The git commit of the source tree this package runs from, or None."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    if out.returncode != 0 or not rev:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, timeout=5, check=False,
    ).stdout.strip()
    return rev + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    import numpy

    return {
        "robust_ebm": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def run_info(config: dict[str, Any], seed: int | None, device: str | torch.device) -> dict[str, Any]:
    return {
        "config": config,
        "seed": seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "git_revision": git_revision(),
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_run_json(
    out_dir: str | os.PathLike[str], config: dict[str, Any], seed: int | None, device: Any
) -> Path:
    """Write ``out_dir/run.json`` atomically and return its path."""
    return atomic_write_json(Path(out_dir) / "run.json", run_info(config, seed, device))


def training_validation_split(
    checkpoint: str | os.PathLike[str], val_size: int | None = None, val_seed: int | None = None
) -> tuple[int, int]:
    """(size, seed) of the validation split a training run held out, so it can be rebuilt with
    :func:`robust_ebm.data.split_train_val`.

    Values not given are read from the ``run.json`` beside ``checkpoint`` (``config.data.
    val_size`` and ``config.train.seed``). UserError when neither source has them.
    """
    import json

    size, seed = val_size, val_seed
    run_json = Path(checkpoint).parent / "run.json"
    if (size is None or seed is None) and run_json.is_file():
        try:
            cfg = json.loads(run_json.read_text()).get("config", {})
            size = cfg.get("data", {}).get("val_size") if size is None else size
            seed = cfg.get("train", {}).get("seed") if seed is None else seed
        except (json.JSONDecodeError, AttributeError):
            pass
    if not size or size < 1 or seed is None:
        raise UserError(
            "--cal-split val needs the training run's validation split: give --val-size and "
            "--val-seed (or keep run.json beside the checkpoint), or use --cal-split train"
        )
    return int(size), int(seed)
