"""Callbacks of the training loop: evaluation, energy tracking, checkpoints, TensorBoard.

A callback is an object with three hooks, all optional (subclass :class:`Callback` for no-op
defaults). The loop (:func:`robust_ebm.train.train`) calls them on the main process only
(rank 0 under torchrun), in list order:

- ``on_train_start(run)`` once, after a resumed state is loaded;
- ``on_epoch_end(run, record)`` after each epoch: ``record`` is the epoch's entry of
  ``run.state.history`` (epoch, train_loss, lr, epoch_seconds); a callback may add keys to it,
  and later callbacks see them. The loop then writes ``metrics.jsonl`` and ``state.pt``;
- ``on_train_end(run)`` once, after the last epoch.

The standard set (:func:`default_callbacks`) measures clean and PGD accuracy and energies on
fixed subsets (:class:`Evaluation`), writes the energy dynamics and flags robust overfitting
(:class:`EnergyTracking`, Mirza et al. 2024, arXiv 2407.06315, Sec. 3), saves the last and the
best weights (:class:`Checkpoints`) and, optionally, TensorBoard scalars (:class:`TensorBoard`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import save_model
from ..data import ImageDataset
from ..data.loader import derive_seed
from .config import EvalConfig, TrainConfig
from .state import TrainState
from .tracking import (
    TensorBoardLog,
    evaluate_subsets,
    overfitting_warning,
    plot_dynamics,
    write_csv,
)

Record = dict[str, Any]


@dataclass
class Run:
    """What callbacks see: the unwrapped model, the objective, the loop's settings, its state
    (epoch, history, best score; saved in ``state.pt``) and the log function."""

    model: nn.Module
    objective: Any
    config: TrainConfig
    state: TrainState
    log: Callable[[str], None]


class Callback:
    """No-op hooks; override the ones you need (see the module docstring)."""

    def on_train_start(self, run: Run) -> None:
        pass

    def on_epoch_end(self, run: Run, record: Record) -> None:
        pass

    def on_train_end(self, run: Run) -> None:
        pass


def eval_attack(cfg: EvalConfig, seed: int) -> Any:
    """PGD-k on CE at ``cfg.eval_eps`` in ``cfg.eval_norm`` (None: 'linf') with a fixed seed, or
    the identity when eval_eps is None."""
    if cfg.eval_eps is None:
        return lambda model, x, y: x
    from ..attacks import make_attack

    step = cfg.eval_step_size if cfg.eval_step_size is not None else 2.5 * cfg.eval_eps / cfg.eval_steps
    return make_attack("pgd", eps=cfg.eval_eps, step_size=step, steps=cfg.eval_steps, seed=seed,
                       clip_start=cfg.eval_clip_start, norm=cfg.eval_norm or "linf")


def fixed_subsets(
    cfg: EvalConfig, seed: int, train_set: ImageDataset, val_set: ImageDataset | None = None,
    test_set: ImageDataset | None = None,
) -> dict[str, ImageDataset]:
    """``energy_n`` seeded-random training samples ('train') and the first ``eval_n`` of the
    validation ('val') and test ('test') sets; the same samples every epoch."""
    subsets: dict[str, ImageDataset] = {}
    if cfg.energy_n > 0:
        g = torch.Generator().manual_seed(derive_seed(seed, 7))
        pick = torch.randperm(len(train_set), generator=g)[: cfg.energy_n]
        subsets["train"] = train_set.subset(pick)
    for name, ds in (("val", val_set), ("test", test_set)):
        if ds is not None:
            subsets[name] = ds.subset(torch.arange(min(cfg.eval_n, len(ds))))
    return subsets


class Evaluation(Callback):
    """Each epoch: clean and attacked accuracy and energy summaries on fixed subsets
    (the energy-under-attack pipeline, :func:`robust_ebm.analysis.analyze_energy`, through
    :func:`robust_ebm.train.tracking.evaluate_subsets`), as ``record["eval"][split]``, and the
    attack's description as ``record["eval_attack"]`` (None for clean-only evaluation)."""

    def __init__(
        self, subsets: dict[str, ImageDataset], attack: Any, batch_size: int = 500,
        attack_info: dict[str, Any] | None = None,
    ) -> None:
        self.subsets, self.attack, self.batch_size = subsets, attack, batch_size
        self.attack_info = attack_info

    @classmethod
    def from_config(
        cls, cfg: EvalConfig, seed: int, train_set: ImageDataset,
        val_set: ImageDataset | None = None, test_set: ImageDataset | None = None,
    ) -> Evaluation:
        info = None if cfg.eval_eps is None else {"name": "pgd", "eps": cfg.eval_eps,
                                                  "steps": cfg.eval_steps,
                                                  "norm": cfg.eval_norm or "linf"}
        return cls(fixed_subsets(cfg, seed, train_set, val_set, test_set), eval_attack(cfg, seed),
                   cfg.eval_batch_size, info)

    def on_epoch_end(self, run: Run, record: Record) -> None:
        record["eval"] = evaluate_subsets(run.model, self.subsets, self.attack, self.batch_size)
        record["eval_attack"] = self.attack_info


class EnergyTracking(Callback):
    """The energy dynamics of training: ``energy.csv`` and ``energy_dynamics.png`` in
    ``out_dir`` (when given) from the evaluated records, and ``record["warning"]`` when robust
    overfitting shows (:func:`robust_ebm.train.tracking.overfitting_warning`; only for
    objectives with an attack budget ``eps``, since robust overfitting is a notion of
    adversarial training). Put it after :class:`Evaluation`."""

    def __init__(self, out_dir: str | Path | None = None, title: str = "") -> None:
        self.out = Path(out_dir) if out_dir is not None else None
        self.title = title

    def on_epoch_end(self, run: Run, record: Record) -> None:
        warn = overfitting_warning(run.state.history) if hasattr(run.objective, "eps") else None
        if warn:
            record["warning"] = warn
        if self.out is not None:
            write_csv(self.out / "energy.csv", run.state.history)
            plot_dynamics(self.out / "energy_dynamics.png", run.state.history, title=self.title)


def _score(record: Record) -> float:
    """Validation (else test) PGD accuracy; -1 when the record has neither."""
    ev = record.get("eval", {})
    split = ev.get("val") or ev.get("test")
    return split["accuracy_adv"] if split else -1.0


class Checkpoints(Callback):
    """``last.safetensors`` each epoch and ``best.safetensors`` at the best validation (else
    test) PGD accuracy so far, kept in ``run.state.best`` so that a resumed run continues the
    comparison. Each holds ``metadata``, the epoch, its record and ``config`` (the resolved
    [train] section; default: the loop's TrainConfig). Put it after :class:`Evaluation`."""

    def __init__(
        self, out_dir: str | Path, metadata: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.out, self.metadata, self.config = Path(out_dir), dict(metadata or {}), config

    def on_epoch_end(self, run: Run, record: Record) -> None:
        config = self.config if self.config is not None else asdict(run.config)
        kw = dict(metrics=record, config=config, **self.metadata)
        save_model(self.out / "last.safetensors", run.model, epoch=record["epoch"], **kw)
        if _score(record) > run.state.best:
            run.state.best, run.state.best_epoch = _score(record), record["epoch"]
            save_model(self.out / "best.safetensors", run.model, epoch=record["epoch"], **kw)


class TensorBoard(Callback):
    """The per-epoch record as TensorBoard scalars in ``log_dir`` (needs the ``tensorboard``
    package; see :class:`robust_ebm.train.tracking.TensorBoardLog`). A resumed run drops the
    interrupted run's events from its resumption epoch on."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.board: TensorBoardLog | None = None

    def on_train_start(self, run: Run) -> None:
        self.board = TensorBoardLog(self.log_dir, purge_step=run.state.epoch + 1)

    def on_epoch_end(self, run: Run, record: Record) -> None:
        if self.board is not None:
            self.board.write(record)

    def on_train_end(self, run: Run) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None


def default_callbacks(
    cfg: EvalConfig, seed: int, train_set: ImageDataset, *, val_set: ImageDataset | None = None,
    test_set: ImageDataset | None = None, out_dir: str | Path | None = None,
    metadata: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
) -> list[Callback]:
    """Evaluation, energy tracking and, with ``out_dir``, checkpoints and (if
    ``cfg.tensorboard``) TensorBoard: what ``robust-ebm train`` runs. ``metadata`` goes into
    every checkpoint (its 'objective' also titles the plot); ``config`` see :class:`Checkpoints`."""
    meta = dict(metadata or {})
    callbacks: list[Callback] = [
        Evaluation.from_config(cfg, seed, train_set, val_set, test_set),
        EnergyTracking(out_dir, title=str(meta.get("objective", ""))),
    ]
    if out_dir is not None:
        callbacks.append(Checkpoints(out_dir, meta, config))
        if cfg.tensorboard:
            callbacks.append(TensorBoard(Path(out_dir) / "tensorboard"))
    return callbacks
