"""Loading a checkpoint together with the data it is evaluated on, checked to fit."""

from __future__ import annotations

from typing import Any

import torch

from .errors import UserError
from .evaluation.batched import to_unit_float

__all__ = ["float_batch", "load_model_and_split"]


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
    from .checkpoint import load_model
    from .data import load_dataset

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
    return to_unit_float(ds.images.to(device)), ds.labels.to(device)
