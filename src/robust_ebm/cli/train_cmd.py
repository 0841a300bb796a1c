"""``robust-ebm train``: train a classifier with a registered objective.

Settings come from defaults, an optional TOML file (``--config``), the flags below and
``--set section.key=value`` (see :mod:`robust_ebm.train.config`). Works the same under
``torchrun --nproc_per_node=N`` (DistributedDataParallel, logging and files on rank 0).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import UserError
from ..models import list_models
from ..objectives import list_objectives
from ..train import PRECISIONS, SCHEDULES
from ..train.config import apply_set, default_config, load_toml, merge, validate_config
from .common import (
    add_common_args,
    emit,
    is_main,
    nonnegative_float,
    open_output,
    output_dir,
    positive_int,
    resolve_device,
)

# flag -> (section, key)
_FLAGS = {
    "dataset": ("data", "dataset"), "data_dir": ("data", "data_dir"),
    "val_size": ("data", "val_size"), "train_subset": ("data", "train_subset"),
    "model": ("model", "name"), "objective": ("objective", "name"),
    "eps": ("objective", "eps"), "step_size": ("objective", "step_size"),
    "steps": ("objective", "steps"), "beta": ("objective", "beta"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "weight_decay": ("train", "weight_decay"), "schedule": ("train", "schedule"),
    "crop_padding": ("train", "crop_padding"), "flip": ("train", "flip"), "seed": ("train", "seed"),
    "eval_eps": ("train", "eval_eps"), "eval_steps": ("train", "eval_steps"),
    "eval_n": ("train", "eval_n"), "energy_n": ("train", "energy_n"),
    "save_every": ("train", "save_every"), "deterministic": ("train", "deterministic"),
    "precision": ("train", "precision"), "channels_last": ("train", "channels_last"),
    "compile": ("train", "compile"), "host_resident": ("train", "host_resident"),
    "tensorboard": ("train", "tensorboard"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a classifier (standard, PGD-AT, TRADES, MART, WEAT)",
        description="Train an image classifier with a standard or adversarial objective and "
                    "track its energies; writes checkpoints, metrics and run.json.",
        epilog="example (PGD-AT on Fashion-MNIST, one epoch, a few minutes on a CPU):\n"
               "  robust-ebm train --config configs/fmnist/base.toml --objective pgd_at \\\n"
               "      --eps 0.1 --step-size 0.05 --steps 5 --epochs 1 --out runs/sat",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(p)
    p.set_defaults(func=run)


def add_training_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p, force=False)
    # Every setting defaults to None here so that only flags given explicitly override the
    # config file; the real defaults live in robust_ebm.train.config.default_config.
    p.set_defaults(dataset=None, seed=None)
    p.add_argument("--config", default=None, help="TOML file with [data] [model] [objective] [train]")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from state.pt")
    p.add_argument("--model", default=None, help=f"one of {', '.join(list_models())}")
    p.add_argument("--objective", default=None, help=f"one of {', '.join(list_objectives())}")
    p.add_argument("--eps", type=nonnegative_float, default=None, help="attack budget, [0,1] pixel units")
    p.add_argument("--step-size", type=nonnegative_float, default=None, help="inner attack step size")
    p.add_argument("--steps", type=positive_int, default=None, help="inner attack steps")
    p.add_argument("--beta", type=nonnegative_float, default=None, help="TRADES/MART/WEAT beta")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=nonnegative_float, default=None, help="peak learning rate")
    p.add_argument("--weight-decay", type=nonnegative_float, default=None)
    p.add_argument("--schedule", choices=SCHEDULES, default=None)
    p.add_argument("--crop-padding", type=int, default=None, help="random-crop padding, pixels")
    p.add_argument("--flip", action="store_const", const=True, default=None, help="random h-flips")
    p.add_argument("--val-size", type=int, default=None,
                   help="training samples held out for validation (default 5000; 0: none)")
    p.add_argument("--train-subset", type=positive_int, default=None,
                   help="train on this many (seeded, random) training samples")
    p.add_argument("--eval-eps", type=nonnegative_float, default=None,
                   help="PGD budget of the per-epoch evaluation (default: the objective's eps)")
    p.add_argument("--eval-steps", type=positive_int, default=None)
    p.add_argument("--eval-n", type=positive_int, default=None, help="val/test samples per epoch")
    p.add_argument("--energy-n", type=int, default=None, help="train samples tracked per epoch")
    p.add_argument("--save-every", type=int, default=None, help="also save state every N steps")
    p.add_argument("--deterministic", action="store_const", const=True, default=None)
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="autocast for training steps: bf16, or fp16 on CUDA (default fp32)")
    p.add_argument("--channels-last", action="store_const", const=True, default=None,
                   help="NHWC memory order for weights and batches (faster convolutions on GPUs)")
    p.add_argument("--compile", action="store_const", const=True, default=None,
                   help="torch.compile the model for the training steps (fp32 or bf16)")
    p.add_argument("--host-resident", action="store_const", const=True, default=None,
                   help="keep the training data in (pinned) host memory and copy each batch "
                        "to the device: for data larger than the GPU's memory; same results")
    p.add_argument("--tensorboard", action="store_const", const=True, default=None,
                   help="also write per-epoch scalars to OUT/tensorboard (needs tensorboard)")


def resolve_config(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = default_config()
    if defaults:
        cfg = merge(cfg, defaults)
    if args.config:
        cfg = merge(cfg, load_toml(args.config))
    for flag, (section, key) in _FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            cfg[section][key] = value
    for assignment in args.overrides:
        apply_set(cfg, assignment)
    return validate_config(cfg)


def run(args: argparse.Namespace) -> int:
    result = execute(args)
    if result is None:  # a non-main rank under torchrun
        return 0
    test_rep = result["test"]
    text = f"checkpoint: {result['checkpoint']}"
    if test_rep:
        text = (f"test ({test_rep['n']} samples): clean accuracy {test_rep['accuracy']:.4f}, "
                f"PGD accuracy {test_rep['accuracy_adv']:.4f}\n"
                f"  E(x) mean {test_rep['E_x']['mean']:.3f} std {test_rep['E_x']['std']:.3f}; "
                f"E(x,y) mean {test_rep['E_xy']['mean']:.3f} std {test_rep['E_xy']['std']:.3f}\n" + text)
    emit(result, args.json, text)
    return 0


def execute(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Train as configured (:func:`robust_ebm.train.run.run_training`); the result dict (None on
    non-main ranks)."""
    from ..train.run import run_training

    cfg = resolve_config(args, defaults)
    if args.resume and not args.out:
        raise UserError("--resume needs --out pointing at the interrupted run's folder")
    out = output_dir(args, "train", create=False)
    log = (lambda s: None) if (args.json or not is_main()) else print
    # the folder is created only once run_training has checked the data and the model
    return run_training(cfg, out, device=resolve_device(args.device), resume=args.resume,
                        log=log, prepare=lambda: open_output(args, out))
