"""Loading a checkpoint together with the data it is evaluated on, checked to fit."""

from __future__ import annotations

from typing import Any

import torch

from .errors import UserError
from .evaluation.batched import to_unit_float

__all__ = ["check_model_accepts", "check_model_fits_data", "float_batch", "load_model_and_split", "recorded_metadata"]


def recorded_metadata(checkpoint: str | Any) -> dict[str, Any]:
    """The robust-ebm metadata of ``checkpoint``, or {} for a foreign file or none (nothing
    recorded)."""
    from .checkpoint import read_metadata

    if checkpoint is None:
        return {}
    try:
        return read_metadata(checkpoint)
    except UserError:
        return {}


def _dataset_key(name: Any) -> str:
    text = str(name)
    if text.endswith(".npz"):
        text = text.rsplit("/", 1)[-1].removesuffix(".npz")
    return text.lower().replace("-", "_")


def check_model_fits_data(
    model: Any, metadata: dict[str, Any], ds: Any, dataset: str, force: bool = False
) -> None:
    """Refuse data the checkpoint was not made for (the one check every command runs).

    Always an error: another channel count than the model reads, more classes than it predicts.
    An error unless ``force`` (``--force``): another dataset than the one recorded in the
    checkpoint (``metadata['dataset']``) or another image size (``metadata['input_shape']``,
    written by ``train`` since this check exists). Checkpoints without these records pass.
    """
    arch = model.arch
    if ds.shape[0] != arch["in_channels"]:
        raise UserError(
            f"checkpoint expects {arch['in_channels']}-channel images but {dataset} has "
            f"{ds.shape[0]}; use the dataset the model was trained on"
        )
    if ds.num_classes > arch["num_classes"]:
        raise UserError(
            f"{dataset} has {ds.num_classes} classes but the model predicts "
            f"{arch['num_classes']}; labels would be out of range"
        )
    if force:
        return
    recorded = metadata.get("dataset")
    if isinstance(recorded, str) and _dataset_key(recorded) != _dataset_key(ds.name):
        raise UserError(
            f"the checkpoint was trained on {recorded} but the data are {dataset}; use "
            "--dataset " + recorded + " or pass --force if you really mean to run it on other data"
        )
    shape = metadata.get("input_shape")
    if isinstance(shape, list) and tuple(shape) != tuple(ds.shape):
        raise UserError(
            f"the checkpoint was trained on images of shape {tuple(shape)} but {dataset} has "
            f"{tuple(ds.shape)}; use matching data or pass --force"
        )


def load_model_and_split(
    checkpoint: str, dataset: str, split: str, data_dir: str | None, n: int | None,
    device: torch.device, arch: str | None = None, num_classes: int | None = None,
    start: int = 0, force: bool = False,
) -> tuple[Any, Any]:
    """Load a checkpoint (eval mode, on ``device``) and ``n`` samples of a split from index
    ``start`` on (``n=None``: to the end).

    ``arch`` (with optional ``num_classes``, default the dataset's) opens a foreign state dict
    through :func:`robust_ebm.checkpoint.load_model`. Raises UserError when the data do not fit
    the model (:func:`check_model_fits_data`; ``force`` lets a recorded dataset or image size
    differ).
    """
    from .checkpoint import load_model
    from .data import load_dataset

    ds = load_dataset(dataset, split, data_dir)
    if arch:
        model = load_model(checkpoint, map_location=device, name=arch,
                           num_classes=num_classes or ds.num_classes, in_channels=ds.shape[0])
    else:
        model = load_model(checkpoint, map_location=device)
    check_model_fits_data(model, recorded_metadata(checkpoint), ds, dataset, force)
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


def check_model_accepts(model: Any, shape: tuple[int, ...], what: str) -> None:
    """UserError when ``model`` cannot take one image of ``shape`` (C, H, W), e.g. an ``mlp``
    built for 28x28 images given 8x8 ones; one forward pass on zeros, mode restored."""
    from .models import frozen_eval

    x = torch.zeros(1, *shape, device=next(model.parameters()).device)
    try:
        with frozen_eval(model), torch.no_grad():
            model(x)
    except RuntimeError as exc:
        raise UserError(
            f"the model does not fit the images of {what} (shape {tuple(shape)}): "
            f"{str(exc).splitlines()[0]}; set the architecture's size (e.g. --set "
            f"model.image_size={shape[-1]} for mlp) or pick another model"
        ) from None
