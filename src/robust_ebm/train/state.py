"""Crash-safe training state: everything needed to continue a run bit for bit.

``state.pt`` holds the model, optimizer and scheduler state dicts, the RNG states, the position
in the data order (epoch and next batch), the partial sums of the running epoch, the history,
the best score so far and the resolved configuration. It is written atomically and opened
with ``torch.load(weights_only=True)`` (plain tensors and containers; no code runs).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import safe_torch_load
from ..errors import UserError
from ..io import atomic_write_bytes

STATE_FILE = "state.pt"
# Keys that may differ between the interrupted run and its resumption.
RESUME_IGNORED = ("resume", "json", "out", "device", "tensorboard")


@dataclass
class TrainState:
    """Where a run stands. ``batch`` is the next batch index within ``epoch``."""

    epoch: int = 0
    batch: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float = float("-inf")
    best_epoch: int = 0


def save_state(
    path: str | os.PathLike[str], state: TrainState, model: nn.Module,
    optimizer: torch.optim.Optimizer, scheduler: Any, config: dict[str, Any],
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    payload = {
        "format": "robust-ebm-train/1",
        "epoch": state.epoch,
        "batch": state.batch,
        "sums": dict(state.sums),
        "history": state.history,
        "best": state.best,
        "best_epoch": state.best_epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "config": config,
    }
    if scaler is not None and scaler.is_enabled():
        payload["scaler"] = scaler.state_dict()
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_state(
    path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: Any, config: dict[str, Any], scaler: torch.amp.GradScaler | None = None,
    defaults: dict[str, Any] | None = None,
) -> TrainState:
    """Restore model, optimizer, scheduler, loss scaler and RNG from ``path``; refuse a
    changed config. ``defaults`` stand in for settings the saved config lacks (a state written
    before the setting existed resumes as long as the new run leaves it at its default)."""
    payload = safe_torch_load(path, map_location="cpu")
    if not isinstance(payload, dict) or payload.get("format") != "robust-ebm-train/1":
        raise UserError(f"{path}: not a robust-ebm training state; pass the run's folder")
    diffs = config_differences(payload["config"], config, defaults)
    if diffs:
        raise UserError(
            "cannot resume: the configuration differs from the interrupted run's ("
            + "; ".join(diffs) + "). Resume with the same settings or start a new --out folder"
        )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and "scaler" in payload:
        scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["rng_cpu"])
    if payload["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng_cuda"])
    return TrainState(
        epoch=payload["epoch"], batch=payload["batch"], sums=payload["sums"],
        history=payload["history"], best=payload["best"], best_epoch=payload["best_epoch"],
    )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def config_differences(
    old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[str]:
    """``key: old -> new`` for every setting that differs (ignoring RESUME_IGNORED keys);
    a key of ``new`` missing from ``old`` takes its value from ``defaults`` when given there."""
    b = _flatten(new)
    a = {**{k: v for k, v in _flatten(defaults or {}).items() if k in b}, **_flatten(old)}
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[-1] in RESUME_IGNORED:
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            diffs.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return diffs
