"""Checkpoints that are safe to open.

Model weights are stored with safetensors (no code runs on load); the metadata (architecture
and its arguments, normalization, dataset, objective, epoch, metrics, resolved config, versions)
is a JSON string inside the safetensors header under the key ``robust_ebm``. One file, written
atomically (temporary file, fsync, rename).

Plain PyTorch files (``.pt``/``.pth``, e.g. a RobustBench checkpoint the user has on disk) are
opened only with ``torch.load(weights_only=True)``; a pickle that would import or call anything
else is refused with :class:`~robust_ebm.errors.UnsafeCheckpointError` before it runs.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from .errors import CorruptDataError, UnsafeCheckpointError, UserError
from .io import atomic_write
from .models import Classifier, create_model, load_foreign_state_dict
from .provenance import versions

FORMAT = "robust-ebm/1"
_META_KEY = "robust_ebm"


def save_model(path: str | os.PathLike[str], model: nn.Module, **metadata: Any) -> Path:
    """Save ``model`` (weights + normalization) and JSON metadata to ``path`` atomically.

    Args:
        path: destination, conventionally ``*.safetensors``.
        model: a :class:`Classifier` from :func:`robust_ebm.models.create_model` (typed as any
            module because training holds it as one; anything else is a UserError).
        **metadata: JSON-serialisable facts (dataset, objective, epoch, metrics, config, ...).
    """
    if not isinstance(model, Classifier):
        raise UserError("save_model needs a robust_ebm Classifier (built by create_model)")
    meta = {"format": FORMAT, "arch": model.arch, "versions": versions(), **metadata}
    header = {_META_KEY: json.dumps(meta, sort_keys=True, default=str)}
    # safetensors refuses shared or non-contiguous storage: store independent copies.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata of a robust-ebm checkpoint, without loading the weights."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptDataError(
            f"{path}: not a readable safetensors checkpoint ({exc}); the file may be truncated"
        ) from exc
    if _META_KEY not in header:
        raise UserError(
            f"{path}: safetensors file without robust-ebm metadata; load it with "
            "load_model(path, name=ARCH, num_classes=K, in_channels=C) instead"
        )
    try:
        meta = json.loads(header[_META_KEY])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CorruptDataError(f"{path}: its robust-ebm metadata is not valid JSON ({exc}); "
                               "the file is damaged: re-save or re-download it") from None
    if not isinstance(meta, dict):
        raise CorruptDataError(f"{path}: its robust-ebm metadata is not a JSON object; the file "
                               "is damaged: re-save or re-download it")
    return meta


def check_finite_weights(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Refuse weights holding NaN or Inf (a diverged or damaged model gives NaN energies)."""
    bad = [k for k, v in state.items()
           if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CorruptDataError(f"{path}: weights hold NaN or Inf values ({', '.join(bad[:3])}); "
                               "the model diverged or the file is damaged: use another checkpoint")


def _model_from_metadata(path: Path, meta: dict[str, Any], state: dict[str, Tensor]) -> Classifier:
    """The Classifier the metadata records, with ``state`` loaded; malformed metadata or
    weights that do not fit it are a CorruptDataError naming the file."""
    try:
        arch = meta["arch"]
        model = create_model(
            arch["name"], arch["num_classes"], arch["in_channels"], arch["mean"],
            arch["std"], **arch.get("kwargs", {}),
        )
        missing, unexpected = model.load_state_dict(state, strict=False)
    except UserError as exc:
        raise CorruptDataError(f"{path}: recorded architecture is invalid ({exc})") from None
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CorruptDataError(
            f"{path}: malformed metadata or weights that do not fit the recorded architecture "
            f"({type(exc).__name__}: {exc}); re-save or re-download the checkpoint"
        ) from None
    if missing or unexpected:
        raise CorruptDataError(
            f"{path}: weights do not match the recorded architecture "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model


def load_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", **create_kwargs: Any
) -> Classifier:
    """Rebuild a model from a checkpoint and return it in eval mode.

    A robust-ebm ``.safetensors`` checkpoint rebuilds itself from its metadata. Any other file
    (foreign safetensors, ``.pt``/``.pth`` state dicts) needs the architecture given as keyword
    arguments of :func:`create_model` (``name``, ``num_classes``, ``in_channels``, ``mean``,
    ``std``, ...); its keys go through :func:`load_foreign_state_dict`.
    """
    path = _existing(path)
    if _is_safetensors(path):
        try:
            state = load_file(str(path), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CorruptDataError(f"{path}: cannot read safetensors file ({exc})") from exc
        check_finite_weights(path, state)
        if not create_kwargs:
            model = _model_from_metadata(path, read_metadata(path), state)
            return model.to(map_location).eval()
    else:
        state = safe_torch_load(path, map_location)
    if "name" not in create_kwargs:
        raise UserError(
            f"{path}: not a robust-ebm checkpoint; say which architecture it holds, e.g. "
            "load_model(path, name='wide_resnet28_10', num_classes=10, in_channels=3)"
        )
    name = create_kwargs.pop("name")
    model = create_model(name, **create_kwargs)
    if not isinstance(state, Mapping):
        raise UserError(f"{path}: expected a state dict (a mapping of tensors); got {type(state)}")
    check_finite_weights(path, state)
    load_foreign_state_dict(model, state)
    return model.to(map_location).eval()


def safe_torch_load(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with clear errors; never executes pickled code."""
    path = _existing(path)
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path}: refused to open: the pickle asks to run or import code that is not plain "
            "tensor data. Only open it if you trust its source, and convert it to safetensors"
        ) from exc
    except SafetensorError as exc:  # torch hands a *.safetensors name to safetensors itself
        raise CorruptDataError(
            f"{path}: not a valid safetensors file ({exc}); it may be empty, truncated or another "
            "format under a .safetensors name: re-save or re-download it"
        ) from exc
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CorruptDataError(f"{path}: cannot read checkpoint ({exc}); is it truncated?") from exc


def load_state_tensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """All tensors of a safetensors file (for saved adversarial examples and samples)."""
    path = _existing(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptDataError(f"{path}: cannot read safetensors file ({exc})") from exc


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UserError(f"checkpoint {p} is a folder; pass the checkpoint file inside it "
                        "(e.g. model.safetensors)")
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p} (check the path)")
    return p


def _is_safetensors(path: Path) -> bool:
    # A safetensors file starts with an 8-byte little-endian header size and then '{'.
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"
