"""Loading a checkpoint together with the data it is evaluated on, checked to fit."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from .distributed_eval import rank_device
from .errors import UserError
from .evaluation.batched import to_unit_float
from .validate import parse_floats

__all__ = ["check_model_accepts", "check_model_fits_data", "float_batch", "load_model_and_split",
           "model_and_split", "model_from_args", "parse_arch_args", "recorded_metadata"]


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> a device; UserError when it is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available; use --device cpu")
    return dev


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
    check_model_fits_data(model, recorded_metadata(checkpoint), ds, dataset, force)
    return model.eval(), _fit(ds, model, dataset, split, n, start)


def float_batch(ds: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``ds`` as float in [0, 1] and its labels, on ``device``."""
    return to_unit_float(ds.images.to(device)), ds.labels.to(device)


def parse_arch_args(text: str) -> dict[str, Any]:
    """``depth=70,widen_factor=16,sub_block1=true`` -> typed keyword arguments (no eval)."""
    out: dict[str, Any] = {}
    for item in [t.strip() for t in str(text or "").split(",") if t.strip()]:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UserError(f"--arch-args wants KEY=VALUE pairs separated by commas; got {item!r}")
        v = value.strip()
        if v.lower() in ("true", "false"):
            out[key.strip()] = v.lower() == "true"
            continue
        for cast in (int, float):
            try:
                out[key.strip()] = cast(v)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = v
    return out


def _floats(text: str | None, flag: str) -> list[float] | None:
    """``--mean``/``--std``: None when not given, else finite numbers (:func:`parse_floats`)."""
    return None if text is None else parse_floats(text, flag)


def _zoo_dataset(args: argparse.Namespace) -> str:
    from .models.zoo import DATASETS, zoo_entry

    given = args.dataset
    zoo_ds = given if given in DATASETS else "cifar10"
    entry = zoo_entry(args.robustbench, zoo_ds, args.threat_model)  # bad names fail here
    if given is not None and given not in DATASETS and not str(given).endswith(".npz"):
        raise UserError(f"{entry.name} is a {entry.dataset} model; --dataset {given} does not "
                        f"fit it: omit --dataset (default {entry.dataset}) or give a "
                        f"{entry.dataset}-shaped .npz")
    if given is None:
        args.dataset = entry.dataset
    return entry.dataset


def model_from_args(args: argparse.Namespace, device: torch.device) -> Any:
    """The model described by the shared model options, in eval mode on ``device``.

    Also settles ``args.dataset`` when it was not given: the zoo entry's dataset, or the one a
    robust-ebm checkpoint records (else ``fashion_mnist``). With ``--no-strict`` one line on
    stderr reports the keys that were skipped.
    """
    from .checkpoint import load_model, read_metadata
    from .data import load_dataset

    if args.checkpoint is None and args.robustbench is None:
        raise UserError("--checkpoint FILE is required (or --robustbench NAME to fetch it "
                        "with the robustbench package)")
    if args.robustbench and args.arch:
        raise UserError("give either --robustbench NAME or --arch ARCH, not both")
    mean, std = _floats(args.mean, "--mean"), _floats(args.std, "--std")
    norm: dict[str, Any] = {} if mean is None and std is None else {"mean": mean, "std": std}
    if args.robustbench:
        zoo_ds = _zoo_dataset(args)
        model = load_model(args.checkpoint, device, robustbench=args.robustbench,
                           dataset=zoo_ds, threat_model=args.threat_model, strict=args.strict,
                           **norm)
    elif args.arch:
        if args.dataset is None:
            args.dataset = "fashion_mnist"
        ds = load_dataset(args.dataset, "test", args.data_dir)
        kwargs = {"num_classes": args.num_classes or ds.num_classes, "in_channels": ds.shape[0],
                  **parse_arch_args(args.arch_args), **norm}
        model = load_model(args.checkpoint, device, name=args.arch, strict=args.strict, **kwargs)
    else:
        if args.arch_args or norm:
            raise UserError("--arch-args/--mean/--std describe a foreign checkpoint: add --arch "
                            "(or --robustbench NAME)")
        if args.dataset is None:
            recorded = None
            if str(args.checkpoint).endswith(".safetensors"):
                recorded = read_metadata(args.checkpoint).get("dataset")
            args.dataset = recorded or "fashion_mnist"
        model = load_model(args.checkpoint, device)
    report = getattr(model, "load_report", {}) or {}
    skipped = (report.get("missing") or []) + (report.get("unexpected") or [])
    if skipped:
        print(f"robust-ebm: warning: --no-strict: {len(report['missing'])} missing and "
              f"{len(report['unexpected'])} unexpected keys skipped: {skipped[:8]}",
              file=sys.stderr)
    return model


def model_and_split(args: argparse.Namespace, split: str | None = None, n: int | None = None,
                    start: int = 0) -> tuple[Any, Any]:
    """:func:`model_from_args` plus ``n`` samples of ``split`` from ``start`` on, checked to
    fit the model (channels, label range). Under torchrun on CUDA the model goes to this
    rank's GPU (:func:`robust_ebm.distributed_eval.rank_device`)."""
    from .data import load_dataset

    device = rank_device(resolve_device(args.device))  # under torchrun on CUDA: this rank's GPU
    model = model_from_args(args, device)
    ds = load_dataset(args.dataset, split or args.split, args.data_dir)
    meta = recorded_metadata(args.checkpoint) if args.checkpoint else {}
    check_model_fits_data(model, meta, ds, args.dataset, bool(getattr(args, "force", False)))
    return model.eval(), _fit(ds, model, args.dataset, split or args.split, n, start)


def _fit(ds: Any, model: Any, dataset: str, split: str, n: int | None, start: int) -> Any:
    if start >= len(ds):
        raise UserError(
            f"--start {start} is past the end of {dataset}/{split} ({len(ds)} samples); "
            f"use a start below {len(ds)}"
        )
    stop = len(ds) if n is None else min(start + n, len(ds))
    if start > 0 or stop < len(ds):
        ds = ds.subset(torch.arange(start, stop))
    return ds


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
