"""The one training loop.

SGD with momentum and weight decay, a per-step LR schedule (one-cycle by default, as in
Mirza et al. 2024, arXiv 2407.06315), per-epoch clean and PGD-k evaluation with energy tracking
(:mod:`robust_ebm.train.tracking`), the best checkpoint by validation robust accuracy, crash-safe
state (:mod:`robust_ebm.train.state`) and DistributedDataParallel under torchrun
(:mod:`robust_ebm.train.dist`). Objectives (:mod:`robust_ebm.objectives`) decide what is
minimised; they get the (possibly DDP-wrapped) model and run their inner attack on
``dist.unwrap(model)``.

Randomness is keyed by position: before each step the global RNG is seeded from
(seed, epoch, batch, rank), and the loader's order and augmentation are seeded the same way, so
a run resumed from any saved step continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import save_model
from ..data import Augment, ImageDataset, TensorLoader
from ..data.loader import derive_seed
from ..errors import TrainingDivergedError, UserError
from ..io import atomic_write_text
from ..progress import Progress
from . import dist
from .state import STATE_FILE, TrainState, load_state, save_state
from .tracking import (
    TensorBoardLog,
    evaluate_subsets,
    overfitting_warning,
    plot_dynamics,
    write_csv,
)

SCHEDULES = ("onecycle", "multistep", "cosine", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
Objective = Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the loop (the objective has its own).

    Defaults follow the WEAT recipe: SGD momentum 0.9, weight decay 5e-4, one-cycle LR with
    ``pct_start`` 0.25; ``lr`` is the peak LR. Budgets (``eval_eps``, ``eval_step_size``) are in
    pixel units of [0,1] images; ``eval_eps=None`` evaluates clean accuracy only.

    GPU options: ``precision`` 'bf16' or 'fp16' runs each training step (inner attack
    included) under autocast, with the logits cast back to float32 before any loss or energy
    is computed; 'fp16' needs CUDA and uses dynamic loss scaling. ``channels_last`` stores
    weights and batches in NHWC memory order. The per-epoch evaluation always runs in float32.
    ``tensorboard`` also writes the per-epoch record to ``<out>/tensorboard``.

    Published one-cycle (PyTorch's OneCycleLR defaults, docs/fidelity.md): ``anneal='cos'``
    and ``cycle_momentum=True`` (momentum 0.95 -> 0.85 -> 0.95, overriding ``momentum``); ours
    anneals linearly at fixed momentum. ``eval_clip_start=False`` starts the evaluation PGD
    unclipped, as the published evaluation does.
    """

    epochs: int = 5
    batch_size: int = 128  # global batch; each of W processes takes batch_size / W
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    pct_start: float = 0.25
    anneal: str = "linear"  # one-cycle annealing: 'linear' or 'cos' (published)
    cycle_momentum: bool = False  # one-cycle momentum 0.95 -> 0.85 -> 0.95 (published)
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of training, for "multistep"
    gamma: float = 0.1  # multistep decay factor
    crop_padding: int = 0
    flip: bool = False
    seed: int = 0
    eval_eps: float | None = None
    eval_step_size: float | None = None  # None: 2.5 * eps / steps
    eval_steps: int = 10
    eval_clip_start: bool = True
    eval_n: int = 1000  # validation/test samples evaluated each epoch
    energy_n: int = 500  # fixed training samples tracked each epoch
    eval_batch_size: int = 500
    save_every: int = 0  # also save the training state every N steps (0: each epoch only)
    deterministic: bool = False
    limit_train_batches: int | None = None
    precision: str = "fp32"  # 'fp32', 'bf16' or 'fp16' (CUDA only)
    channels_last: bool = False
    tensorboard: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1; got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1; got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0; got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1); got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0; got {self.weight_decay}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}; got {self.schedule!r}"),
            (0 < self.pct_start < 1, f"pct_start must be in (0, 1); got {self.pct_start}"),
            (self.anneal in ("linear", "cos"), f"anneal must be 'linear' or 'cos'; got {self.anneal!r}"),
            (self.crop_padding >= 0, f"crop_padding must be >= 0; got {self.crop_padding}"),
            (self.eval_eps is None or self.eval_eps >= 0, f"eval_eps must be >= 0; got {self.eval_eps}"),
            (self.eval_steps >= 1, f"eval_steps must be >= 1; got {self.eval_steps}"),
            (self.eval_n >= 1 and self.energy_n >= 0, "eval_n must be >= 1 and energy_n >= 0"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1; got {self.eval_batch_size}"),
            (self.save_every >= 0, f"save_every must be >= 0; got {self.save_every}"),
            (self.precision in PRECISIONS,
             f"precision must be one of {PRECISIONS}; got {self.precision!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)

    def eval_attack(self) -> Any:
        """PGD-k on CE at ``eval_eps`` (fixed seed), or the identity when eval_eps is None."""
        if self.eval_eps is None:
            return lambda model, x, y: x
        from ..attacks import make_attack

        step = self.eval_step_size if self.eval_step_size is not None else 2.5 * self.eval_eps / self.eval_steps
        return make_attack("pgd", eps=self.eval_eps, step_size=step, steps=self.eval_steps,
                           seed=self.seed, clip_start=self.eval_clip_start)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step LR schedule (stepped once per optimizer step)."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.pct_start * total
    if cfg.schedule == "onecycle" and (warm <= 1 or total - warm <= 1):
        # too few steps for a warm-up phase (OneCycleLR divides by zero): linear decay only
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(1.0 - s / total, 1e-4))
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.pct_start,
            anneal_strategy=cfg.anneal, cycle_momentum=cfg.cycle_momentum,
        )
    if cfg.schedule == "multistep":
        marks = [int(m * total) for m in cfg.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(opt, marks, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


@contextlib.contextmanager
def mixed_precision(model: nn.Module, precision: str, device: torch.device) -> Iterator[None]:
    """Autocast to ``precision`` ('bf16'/'fp16'; 'fp32' does nothing) with ``model``'s output
    cast back to float32, so losses, energies and the inner attack's gradients of the loss are
    computed from float32 logits."""
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    hook = model.register_forward_hook(lambda module, inputs, output: output.float())
    try:
        with torch.autocast(device.type, dtype=dtype):
            yield
    finally:
        hook.remove()


def check_device_options(cfg: TrainConfig, device: torch.device) -> None:
    """Raise UserError for options the device cannot run."""
    if cfg.precision == "fp16" and device.type != "cuda":
        raise UserError(
            f"precision 'fp16' needs a CUDA device (it relies on loss scaling); on {device.type} "
            "use --precision bf16 or fp32"
        )


def _fixed_subsets(
    cfg: TrainConfig, train_set: ImageDataset, val_set: ImageDataset | None,
    test_set: ImageDataset | None,
) -> dict[str, ImageDataset]:
    subsets: dict[str, ImageDataset] = {}
    if cfg.energy_n > 0:
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, 7))
        pick = torch.randperm(len(train_set), generator=g)[: cfg.energy_n]
        subsets["train"] = train_set.subset(pick)
    for name, ds in (("val", val_set), ("test", test_set)):
        if ds is not None:
            subsets[name] = ds.subset(torch.arange(min(cfg.eval_n, len(ds))))
    return subsets


def train(
    model: nn.Module,
    objective: Objective,
    train_set: ImageDataset,
    cfg: TrainConfig,
    *,
    val_set: ImageDataset | None = None,
    test_set: ImageDataset | None = None,
    out_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    metadata: dict[str, Any] | None = None,
    run_config: dict[str, Any] | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train ``model`` in place; return one record per epoch.

    With ``out_dir``: ``state.pt`` (resumable state) each epoch and every ``save_every`` steps,
    ``last.safetensors``, ``best.safetensors`` (by validation PGD accuracy, else test),
    ``metrics.jsonl``, ``energy.csv`` and ``energy_dynamics.png``. ``resume`` continues from
    ``out_dir/state.pt``; ``run_config`` (the resolved configuration) must then match.
    """
    device = torch.device(device)
    info, device = dist.setup(device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    if cfg.batch_size % info.world_size:
        raise UserError(f"batch_size {cfg.batch_size} must divide by the {info.world_size} processes")
    check_device_options(cfg, device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = TensorLoader(
        train_set, cfg.batch_size // info.world_size, shuffle=True, seed=cfg.seed,
        augment=Augment(crop_padding=cfg.crop_padding, flip=cfg.flip), drop_last=True,
        rank=info.rank, world_size=info.world_size, device=device,
    )
    steps = len(loader) if cfg.limit_train_batches is None else min(len(loader), cfg.limit_train_batches)
    if steps < 1:
        raise UserError(
            f"training set of {len(train_set)} samples gives no full batch of {cfg.batch_size}; "
            "lower the batch size"
        )
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    out = Path(out_dir) if out_dir is not None else None
    config = run_config if run_config is not None else {"train": asdict(cfg)}
    state = TrainState()
    if resume:
        if out is None or not (out / STATE_FILE).is_file():
            raise UserError(f"--resume: no {STATE_FILE} in {out}; nothing to resume")
        state = load_state(out / STATE_FILE, model, opt, sched, config, scaler,
                           defaults={"train": asdict(TrainConfig())})
        log(f"resuming at epoch {state.epoch + 1}, batch {state.batch}")
    ddp_model = dist.wrap(model, info, device)
    subsets = _fixed_subsets(cfg, train_set, val_set, test_set)
    attack = cfg.eval_attack()
    meta = dict(metadata or {})
    board = (TensorBoardLog(out / "tensorboard", purge_step=state.epoch + 1)
             if cfg.tensorboard and out is not None and info.is_main else None)

    def checkpoint() -> None:
        if out is not None and info.is_main:
            save_state(out / STATE_FILE, state, model, opt, sched, config, scaler)

    while state.epoch < cfg.epochs:
        epoch = state.epoch
        ddp_model.train()
        t0 = time.perf_counter()
        with Progress(steps - state.batch, f"epoch {epoch + 1}/{cfg.epochs}") as bar:
            for i, (x, y) in enumerate(loader.iterate(epoch, start_batch=state.batch), state.batch):
                if i >= steps:
                    break
                torch.manual_seed(derive_seed(cfg.seed, epoch, i, info.rank))
                if cfg.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with mixed_precision(model, cfg.precision, device):
                    loss, logs = objective(ddp_model, x, y)
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; stopped. "
                        "The last saved checkpoint is intact: lower the learning rate and resume"
                    )
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()  # the identity unless fp16
                scaler.step(opt)
                scaler.update()
                sched.step()
                for k, v in logs.items():
                    state.sums[k] = state.sums.get(k, 0.0) + float(v)
                state.batch = i + 1
                bar.update(1, loss=float(loss.detach()))
                if cfg.save_every and state.batch % cfg.save_every == 0 and state.batch < steps:
                    checkpoint()
        sums = dist.all_reduce_sum(state.sums, info, device)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": {k: v / (steps * info.world_size) for k, v in sums.items()},
            "lr": sched.get_last_lr()[0],
            "epoch_seconds": time.perf_counter() - t0,
        }
        if info.is_main:
            record["eval"] = evaluate_subsets(model, subsets, attack, cfg.eval_batch_size)
            record["eval_attack"] = (
                None if cfg.eval_eps is None else
                {"name": "pgd", "eps": cfg.eval_eps, "steps": cfg.eval_steps}
            )
        state.history.append(record)
        state.epoch, state.batch, state.sums = epoch + 1, 0, {}
        if info.is_main:
            _report_epoch(record, state, log)
            # robust overfitting is a notion of adversarial training: objectives with a budget
            warn = overfitting_warning(state.history) if hasattr(objective, "eps") else None
            if warn:
                record["warning"] = warn
                log("warning: " + warn)
            if out is not None:
                _write_outputs(out, model, record, state, cfg, meta)
            if board is not None:
                board.write(record)
        checkpoint()
        dist.barrier(info)
    if board is not None:
        board.close()
    dist.teardown(info)
    return state.history


def _score(record: dict[str, Any]) -> float:
    ev = record.get("eval", {})
    split = ev.get("val") or ev.get("test")
    return split["accuracy_adv"] if split else -1.0


def _report_epoch(record: dict[str, Any], state: TrainState, log: Callable[[str], None]) -> None:
    msg = f"epoch {record['epoch']}: loss {record['train_loss'].get('loss', float('nan')):.4f}"
    for split, rep in record.get("eval", {}).items():
        msg += f" | {split} acc {rep['accuracy']:.4f}"
        if record.get("eval_attack"):
            msg += f" pgd {rep['accuracy_adv']:.4f} dE(x) {rep['dE_x']['mean']:+.3f}"
    log(msg + f" ({record['epoch_seconds']:.1f}s)")


def _write_outputs(
    out: Path, model: nn.Module, record: dict[str, Any], state: TrainState, cfg: TrainConfig,
    meta: dict[str, Any],
) -> None:
    kw = dict(metrics=record, config=asdict(cfg), **meta)
    save_model(out / "last.safetensors", model, epoch=record["epoch"], **kw)
    if _score(record) > state.best:
        state.best, state.best_epoch = _score(record), record["epoch"]
        save_model(out / "best.safetensors", model, epoch=record["epoch"], **kw)
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state.history))
    write_csv(out / "energy.csv", state.history)
    plot_dynamics(out / "energy_dynamics.png", state.history, title=str(meta.get("objective", "")))
