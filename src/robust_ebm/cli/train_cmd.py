"""``robust-ebm train``: train a classifier with a registered objective."""

from __future__ import annotations

import argparse
from dataclasses import asdict

import torch

from ..checkpoint import save_model
from ..data import ImageDataset, load_dataset, split_train_val
from ..models import create_model, list_models
from ..objectives import list_objectives, make_objective
from ..provenance import write_run_json
from ..train import SCHEDULES, TrainConfig, train
from .common import (
    add_common_args, config_of, emit, format_report, nonnegative_float, output_dir, positive_int,
    resolve_device,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a classifier",
                       description="Train a classifier; writes checkpoints, metrics and run.json.")
    add_training_args(p)
    p.set_defaults(func=run)


def add_training_args(p: argparse.ArgumentParser, epochs: int = 5) -> None:
    add_common_args(p)
    p.add_argument("--model", default="small_cnn", help=f"one of {', '.join(list_models())}")
    p.add_argument("--objective", default="standard", help=f"one of {', '.join(list_objectives())}")
    p.add_argument("--epochs", type=positive_int, default=epochs)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=nonnegative_float, default=0.05, help="peak learning rate")
    p.add_argument("--weight-decay", type=nonnegative_float, default=5e-4)
    p.add_argument("--schedule", choices=SCHEDULES, default="onecycle")
    p.add_argument("--crop-padding", type=int, default=0, help="random-crop padding in pixels")
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument("--val-size", type=int, default=5000,
                   help="training samples held out for validation (0: none)")
    p.add_argument("--train-subset", type=positive_int, default=None,
                   help="train on this many (seeded, random) training samples")
    p.add_argument("--eval-subset", type=positive_int, default=None,
                   help="evaluate on the first N validation/test samples")


def _prefix(ds: ImageDataset, n: int | None) -> ImageDataset:
    return ds if n is None or n >= len(ds) else ds.subset(torch.arange(n))


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError

    if args.crop_padding < 0:
        raise UserError(f"--crop-padding must be >= 0; got {args.crop_padding}")
    if args.val_size < 0:
        raise UserError(f"--val-size must be >= 0; got {args.val_size}")
    device = resolve_device(args.device)
    objective = make_objective(args.objective)
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule, crop_padding=args.crop_padding,
        flip=args.flip, seed=args.seed,
    )
    full = load_dataset(args.dataset, "train", args.data_dir)
    test = _prefix(load_dataset(args.dataset, "test", args.data_dir), args.eval_subset)
    if args.val_size >= len(full):
        raise UserError(f"--val-size {args.val_size} leaves no training data ({len(full)} samples)")
    train_set, val = split_train_val(full, args.val_size, seed=args.seed) if args.val_size else (full, None)
    if args.train_subset is not None and args.train_subset < len(train_set):
        g = torch.Generator().manual_seed(args.seed)
        train_set = train_set.subset(torch.randperm(len(train_set), generator=g)[: args.train_subset])
    val = _prefix(val, args.eval_subset) if val is not None else None
    c, _, _ = train_set.shape
    model = create_model(args.model, train_set.num_classes, c, train_set.mean, train_set.std)
    out = output_dir(args, "train")
    write_run_json(out, config_of(args) | {"train_config": asdict(cfg)}, args.seed, device)
    meta = {"dataset": args.dataset, "objective": args.objective}
    log = (lambda s: None) if args.json else print
    history = train(model, objective, train_set, cfg, val_set=val, test_set=test, out_dir=out,
                    device=device, metadata=meta, log=log)
    final = history[-1]
    save_model(out / "model.safetensors", model, epoch=cfg.epochs, metrics=final,
               config=asdict(cfg), **meta)
    result = {"out": str(out), "history": history, "test": final.get("test")}
    emit(result, args.json, format_report("test", final["test"]) + f"\ncheckpoint: {out / 'model.safetensors'}")
    return 0
