"""The one training loop.

SGD with momentum and weight decay, a per-step LR schedule (one-cycle by default, as in
Mirza et al. 2024, arXiv 2407.06315), crash-safe state (:mod:`robust_ebm.train.state`) and
DistributedDataParallel under torchrun (:mod:`robust_ebm.train.dist`). Objectives
(:mod:`robust_ebm.objectives`) decide what is minimised; they get the (possibly DDP-wrapped)
model and run their inner attack on ``dist.unwrap(model)``. Everything watched at the end of
an epoch (evaluation, energy tracking, checkpoints, TensorBoard) is a callback
(:mod:`robust_ebm.train.callbacks`).

Randomness is keyed by position: before each step the global RNG is seeded from
(seed, epoch, batch, rank), and the loader's order and augmentation are seeded the same way, so
a run resumed from any saved step continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import Augment, ImageDataset, TensorLoader
from ..data.loader import derive_seed
from ..errors import TrainingDivergedError, UserError
from ..fastpath import wrap_model
from ..io import atomic_write_text
from ..progress import Progress
from . import dist
from .callbacks import Callback, Record, Run
from .config import PRECISIONS, SCHEDULES, EvalConfig, TrainConfig
from .state import STATE_FILE, TrainState, load_state, save_state

__all__ = ["PRECISIONS", "SCHEDULES", "TrainConfig", "check_device_options", "make_optimizer",
           "make_scheduler", "mixed_precision", "train"]
Objective = Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]]


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
            anneal_strategy="cos" if cfg.anneal == "cos" else "linear",
            cycle_momentum=cfg.cycle_momentum,
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
    if cfg.compile and cfg.precision == "fp16":
        raise UserError("--compile runs fp32 or bf16; use --precision bf16 with --compile")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise UserError(
            f"precision 'fp16' needs a CUDA device (it relies on loss scaling); on {device.type} "
            "use --precision bf16 or fp32"
        )


def train(
    model: nn.Module,
    objective: Objective,
    data: ImageDataset,
    config: TrainConfig,
    callbacks: Sequence[Callback] = (),
    *,
    out_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    run_config: dict[str, Any] | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train ``model`` in place on ``data`` (the training set); return one record per epoch.

    A record holds ``epoch``, ``train_loss`` (the objective's logs averaged over the epoch),
    ``lr`` and ``epoch_seconds``, plus what the ``callbacks`` add (e.g. ``eval`` from
    :class:`robust_ebm.train.callbacks.Evaluation`); callbacks run on the main process only.
    With ``out_dir`` the loop writes ``state.pt`` (resumable state) each epoch and every
    ``save_every`` steps, and ``metrics.jsonl`` (the records). ``resume`` continues from
    ``out_dir/state.pt``; ``run_config`` (the resolved configuration saved with the state;
    default ``{"train": asdict(config)}``) must then match the saved one.
    """
    info, dev = dist.setup(torch.device(device))
    _prepare(model, config, info, dev)
    loop = _Loop(model, objective, data, config, info, dev, out_dir, run_config)
    if resume:
        loop.resume()
        log(f"resuming at epoch {loop.state.epoch + 1}, batch {loop.state.batch}")
    # --compile: autocast moves inside the compiled module (a per-step hook would recompile)
    fast = wrap_model(model, precision=config.precision, compile=True) if config.compile else model
    loop.ddp_model = dist.wrap(fast, info, dev)
    run = Run(model, objective, config, loop.state, log)
    hooks = list(callbacks) if info.is_main else []
    for cb in hooks:
        cb.on_train_start(run)
    while loop.state.epoch < config.epochs:
        record = loop.run_epoch()
        if info.is_main:
            for cb in hooks:
                cb.on_epoch_end(run, record)
            loop.write_metrics()
            _report_epoch(record, log)
        loop.save_state()
        dist.barrier(info)
    for cb in hooks:
        cb.on_train_end(run)
    dist.teardown(info)
    return loop.state.history


def _prepare(model: nn.Module, cfg: TrainConfig, info: dist.DistInfo, device: torch.device) -> None:
    """Check the settings against the processes and the device; seed; place the model."""
    if cfg.deterministic:
        # On CUDA some backward kernels (e.g. adaptive_avg_pool2d, used by small_cnn) have no
        # deterministic implementation: there they warn instead of stopping the run
        # (docs/scale.md, "What is deterministic on a GPU"); on CPU every op used here is.
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    if cfg.batch_size % info.world_size:
        raise UserError(f"batch_size {cfg.batch_size} must divide by the {info.world_size} processes")
    check_device_options(cfg, device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if cfg.channels_last:
        # torch accepts memory_format here at run time; its typed overloads of Module.to omit it
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


class _Loop:
    """One run's moving parts: loader, optimizer, schedule, loss scaler and the saved state."""

    def __init__(
        self, model: nn.Module, objective: Objective, data: ImageDataset, cfg: TrainConfig,
        info: dist.DistInfo, device: torch.device, out_dir: str | Path | None,
        run_config: dict[str, Any] | None,
    ) -> None:
        self.model, self.ddp_model, self.objective = model, model, objective
        self.cfg, self.info, self.device = cfg, info, device
        self.loader = TensorLoader(
            data, cfg.batch_size // info.world_size, shuffle=True, seed=cfg.seed,
            augment=Augment(crop_padding=cfg.crop_padding, flip=cfg.flip), drop_last=True,
            rank=info.rank, world_size=info.world_size, device=device,
            host_resident=cfg.host_resident,
        )
        n = len(self.loader)
        self.steps = n if cfg.limit_train_batches is None else min(n, cfg.limit_train_batches)
        if self.steps < 1:
            raise UserError(
                f"training set of {len(data)} samples gives no full batch of {cfg.batch_size}; "
                "lower the batch size"
            )
        self.opt = make_optimizer(model, cfg)
        self.sched = make_scheduler(self.opt, cfg, self.steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.out = Path(out_dir) if out_dir is not None else None
        self.run_config = run_config if run_config is not None else {"train": asdict(cfg)}
        self.state = TrainState()

    def resume(self) -> None:
        """Load ``out/state.pt`` (model, optimizer, schedule, scaler, RNG, position)."""
        if self.out is None or not (self.out / STATE_FILE).is_file():
            raise UserError(f"--resume: no {STATE_FILE} in {self.out}; nothing to resume")
        # settings a state written before they existed lacks: taken at their defaults
        defaults = {"train": {**asdict(TrainConfig()), **asdict(EvalConfig())},
                    "model": {"normalize": True}}
        self.state = load_state(self.out / STATE_FILE, self.model, self.opt, self.sched,
                                self.run_config, self.scaler, defaults=defaults)

    def run_epoch(self) -> Record:
        """Train from the saved position to the end of the epoch; append its record."""
        state, cfg, epoch = self.state, self.cfg, self.state.epoch
        self.ddp_model.train()
        t0 = time.perf_counter()
        with Progress(self.steps - state.batch, f"epoch {epoch + 1}/{cfg.epochs}") as bar:
            batches = self.loader.iterate(epoch, start_batch=state.batch)
            for i, (x, y) in enumerate(batches, state.batch):
                if i >= self.steps:
                    break
                loss = self.step(epoch, i, x, y)
                state.batch = i + 1
                bar.update(1, loss=loss)
                if cfg.save_every and state.batch % cfg.save_every == 0 and state.batch < self.steps:
                    self.save_state()
        sums = dist.all_reduce_sum(state.sums, self.info, self.device)
        record: Record = {
            "epoch": epoch + 1,
            "train_loss": {k: v / (self.steps * self.info.world_size) for k, v in sums.items()},
            "lr": self.sched.get_last_lr()[0],
            "epoch_seconds": time.perf_counter() - t0,
        }
        state.history.append(record)
        state.epoch, state.batch, state.sums = epoch + 1, 0, {}
        return record

    def step(self, epoch: int, i: int, x: Tensor, y: Tensor) -> float:
        """One optimizer step on batch ``i``; adds the objective's logs to the epoch's sums."""
        torch.manual_seed(derive_seed(self.cfg.seed, epoch, i, self.info.rank))
        if self.cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        precision = "fp32" if self.cfg.compile else self.cfg.precision  # compiled: autocast inside
        with mixed_precision(self.model, precision, self.device):
            loss, logs = self.objective(self.ddp_model, x, y)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; stopped. "
                "The last saved checkpoint is intact: lower the learning rate and resume"
            )
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # the identity unless fp16
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        for k, v in logs.items():
            self.state.sums[k] = self.state.sums.get(k, 0.0) + float(v)
        return float(loss.detach())

    def save_state(self) -> None:
        if self.out is not None and self.info.is_main:
            save_state(self.out / STATE_FILE, self.state, self.model, self.opt, self.sched,
                       self.run_config, self.scaler)

    def write_metrics(self) -> None:
        if self.out is not None:
            text = "".join(json.dumps(r) + "\n" for r in self.state.history)
            atomic_write_text(self.out / "metrics.jsonl", text)


def _report_epoch(record: Record, log: Callable[[str], None]) -> None:
    """One line per epoch (loss, accuracies, mean dE(x)), then the record's warning if any."""
    msg = f"epoch {record['epoch']}: loss {record['train_loss'].get('loss', float('nan')):.4f}"
    for split, rep in record.get("eval", {}).items():
        msg += f" | {split} acc {rep['accuracy']:.4f}"
        if record.get("eval_attack"):
            msg += f" pgd {rep['accuracy_adv']:.4f} dE(x) {rep['dE_x']['mean']:+.3f}"
    log(msg + f" ({record['epoch_seconds']:.1f}s)")
    if record.get("warning"):
        log("warning: " + record["warning"])
