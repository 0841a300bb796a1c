"""The one training loop: SGD with momentum and weight decay, an LR schedule, per-epoch evaluation
and checkpoints. Objectives (:mod:`robust_ebm.objectives`) decide what is minimised.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import save_model
from ..data import Augment, ImageDataset, TensorLoader
from ..errors import UserError
from ..io import atomic_write_text
from ..progress import Progress
from ..statistics import clean_report

SCHEDULES = ("onecycle", "multistep", "cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the training loop (the objective has its own).

    Defaults follow the WEAT paper's recipe (arXiv 2407.06315): SGD momentum 0.9, weight decay
    5e-4, one-cycle LR with ``pct_start`` 0.25. ``lr`` is the peak LR.
    """

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    pct_start: float = 0.25
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of training, for "multistep"
    gamma: float = 0.1  # multistep decay factor
    crop_padding: int = 0
    flip: bool = False
    seed: int = 0
    eval_batch_size: int = 500
    limit_train_batches: int | None = None  # for smoke tests
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1; got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1; got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0; got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1); got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0; got {self.weight_decay}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}; got {self.schedule!r}"),
            (0 < self.pct_start < 1, f"pct_start must be in (0, 1); got {self.pct_start}"),
            (self.crop_padding >= 0, f"crop_padding must be >= 0; got {self.crop_padding}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1; got {self.eval_batch_size}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step LR schedule (stepped once per optimizer step)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.pct_start,
            anneal_strategy="linear", cycle_momentum=False,
        )
    if cfg.schedule == "multistep":
        marks = [int(m * total) for m in cfg.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(opt, marks, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def train(
    model: nn.Module,
    objective: Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]],
    train_set: ImageDataset,
    cfg: TrainConfig,
    *,
    val_set: ImageDataset | None = None,
    test_set: ImageDataset | None = None,
    out_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    metadata: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train ``model`` in place; return one record per epoch.

    Each epoch logs the mean training loss and accuracy, and clean accuracy with energy
    statistics on ``val_set`` and ``test_set``. With ``out_dir``, writes ``metrics.jsonl``,
    ``last.safetensors`` every epoch and ``best.safetensors`` by validation accuracy.
    """
    torch.manual_seed(cfg.seed)
    model.to(device)
    augment = Augment(crop_padding=cfg.crop_padding, flip=cfg.flip)
    loader = TensorLoader(
        train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augment,
        drop_last=True, device=device,
    )
    steps = len(loader) if cfg.limit_train_batches is None else min(len(loader), cfg.limit_train_batches)
    if steps < 1:
        raise UserError(
            f"training set of {len(train_set)} samples gives no full batch of {cfg.batch_size}; "
            "lower --batch-size"
        )
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps)
    out = Path(out_dir) if out_dir is not None else None
    history: list[dict[str, Any]] = []
    best = -1.0
    meta = dict(metadata or {})
    for epoch in range(cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        with Progress(steps, f"epoch {epoch + 1}/{cfg.epochs}") as bar:
            for i, (x, y) in enumerate(loader.iterate(epoch)):
                if i >= steps:
                    break
                loss, logs = objective(model, x, y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; "
                        "lower the learning rate (the last checkpoint is intact)"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                bar.update(1, loss=float(logs.get("loss", loss)))
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train": {k: v / steps for k, v in sums.items()},
            "lr": sched.get_last_lr()[0],
            "epoch_seconds": time.perf_counter() - t0,
        }
        for name, ds in (("val", val_set), ("test", test_set)):
            if ds is not None:
                record[name] = clean_report(model, ds.images, ds.labels, cfg.eval_batch_size)
        history.append(record)
        msg = f"epoch {epoch + 1}: loss {record['train'].get('loss', float('nan')):.4f}"
        for name in ("val", "test"):
            if name in record:
                msg += f", {name} acc {record[name]['accuracy']:.4f}"
        log(msg + f" ({record['epoch_seconds']:.1f}s)")
        if out is not None:
            save_model(out / "last.safetensors", model, epoch=epoch + 1, metrics=record,
                       config=asdict(cfg), **meta)
            atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
            score = record.get("val", record.get("test", {})).get("accuracy", -1.0)
            if score > best:
                best = score
                save_model(out / "best.safetensors", model, epoch=epoch + 1, metrics=record,
                           config=asdict(cfg), **meta)
    return history

