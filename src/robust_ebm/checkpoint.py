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
from .models import Classifier, create_model, infer_architecture, load_foreign_state_dict
from .models.zoo import EXTRA, zoo_entry
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


def _read_weights(path: Path, map_location: str | torch.device) -> tuple[Any, bool]:
    """(state dict as stored, whether it is a robust-ebm checkpoint with metadata)."""
    if not _is_safetensors(path):
        return safe_torch_load(path, map_location), False
    try:
        state = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptDataError(f"{path}: cannot read safetensors file ({exc})") from exc
    check_finite_weights(path, state)
    return state, _has_metadata(path)


def _build_foreign(
    path: Path,
    fs: Any,
    create_kwargs: dict[str, Any],
    catalog: tuple[Any, Any] | None,
    strict: bool,
) -> Classifier:
    """Create the architecture named in ``create_kwargs`` (normalization from the options, the
    file or the zoo ``catalog``) and load the foreign state ``fs`` into it."""
    if "name" not in create_kwargs:
        guess = infer_architecture(fs.tensors)
        hint = f"its keys fit name={guess[0]!r} with {guess[1]}" if guess else \
            "e.g. name='wide_resnet', depth=28, widen_factor=10"
        raise UserError(f"{path}: not a robust-ebm checkpoint; say which architecture it holds: "
                        f"robustbench=ZOO_NAME (CLI --robustbench) or the architecture ({hint})")
    check_finite_weights(path, fs.tensors)
    in_channels = int(create_kwargs.get("in_channels", 3))
    mean, std, source = _normalization(path, fs, create_kwargs.pop("mean", None),
                                       create_kwargs.pop("std", None), catalog, in_channels)
    model = create_model(create_kwargs.pop("name"), mean=mean, std=std, **create_kwargs)
    report = load_foreign_state_dict(model, fs, strict=strict)
    model.load_report = {**report, "notes": list(fs.notes), "normalization": source}
    return model


def load_model(
    path: str | os.PathLike[str] | None = None,
    map_location: str | torch.device = "cpu",
    *,
    robustbench: str | None = None,
    dataset: str | None = None,
    threat_model: str = "Linf",
    strict: bool = True,
    model_dir: str | os.PathLike[str] | None = None,
    **create_kwargs: Any,
) -> Classifier:
    """Rebuild a model from a checkpoint and return it in eval mode.

    A robust-ebm ``.safetensors`` checkpoint rebuilds itself from its metadata. Any other file
    (``.pt``/``.pth`` or foreign safetensors, any layout :func:`read_foreign_state` knows) needs
    to be told what it holds, either by RobustBench name (``robustbench="Carmon2019Unlabeled"``,
    ``dataset="cifar10"``, ``threat_model="Linf"``: architecture and normalization come from
    :mod:`robust_ebm.models.zoo`) or by architecture (``name=...`` plus the other keyword
    arguments of :func:`create_model`). The input normalization comes from ``mean``/``std`` if
    given, else from the file, else from the zoo entry; if none has it the file is refused.
    ``strict=False`` loads what fits; ``model.load_report`` lists what was skipped and how the
    file was read. ``robustbench`` without ``path`` fetches through the optional robustbench
    package into ``model_dir``. Exotic zoo entries (XCiT, ensembles, ...) also need that package.
    """
    from .models.foreign import read_foreign_state

    if path is None:
        if robustbench is None:
            raise UserError("load_model needs a checkpoint path (or robustbench=NAME to fetch)")
        entry = zoo_entry(robustbench, dataset or "cifar10", threat_model)
        return _via_robustbench(entry, None, strict, model_dir).to(map_location).eval()
    path = _existing(path)
    state, own = _read_weights(path, map_location)
    if own:
        if robustbench is not None or "name" in create_kwargs:
            raise UserError(f"{path}: a robust-ebm checkpoint rebuilds itself from its "
                            "metadata; drop the architecture / zoo-name options")
        return _load_own(path, state).to(map_location).eval()
    fs = read_foreign_state(state)
    if robustbench is not None:
        if "name" in create_kwargs:
            raise UserError("give either robustbench=NAME or name=ARCH, not both")
        entry = zoo_entry(robustbench, dataset or "cifar10", threat_model)
        if not entry.native:
            return _via_robustbench(entry, state, strict, model_dir).to(map_location).eval()
        create_kwargs = {"name": entry.arch, "num_classes": entry.num_classes, "in_channels": 3,
                         **entry.kwargs, **create_kwargs}
        catalog: tuple[Any, Any] | None = (list(entry.mean), list(entry.std))
    else:
        catalog = None
    model = _build_foreign(path, fs, create_kwargs, catalog, strict)
    if robustbench is not None:
        model.arch["zoo"] = {"name": robustbench, "dataset": entry.dataset,
                             "threat_model": entry.threat_model}
    return model.to(map_location).eval()


def _has_metadata(path: Path) -> bool:
    with safe_open(str(path), framework="pt") as fh:
        return _META_KEY in (fh.metadata() or {})


def _load_own(path: Path, state: dict[str, Tensor]) -> Classifier:
    # another dataset of the same shape is allowed here on purpose (out-of-distribution studies)
    model = _model_from_metadata(path, read_metadata(path), state)
    model.load_report = {"missing": [], "unexpected": [], "notes": [], "normalization": "file"}
    return model


def _normalization(path: Path, fs: Any, mean: Any, std: Any, catalog: tuple[Any, Any] | None,
                   channels: int) -> tuple[list[float], list[float], str]:
    """mean/std from the options, else the file, else the zoo entry; never guessed."""
    if (mean is None) != (std is None):
        raise UserError("give both mean and std (--mean and --std), or neither")

    def per_channel(v: Any) -> list[float]:
        v = [float(x) for x in (v if isinstance(v, list | tuple) else [v])]
        return v * channels if len(v) == 1 else v

    if mean is not None:
        mean, std = per_channel(mean), per_channel(std)
        if fs.mean is not None and not (_close(fs.mean, mean) and _close(fs.std, std)):
            raise UserError(f"{path} stores mean {fs.mean} / std {fs.std} but mean {mean} / std "
                            f"{std} was given; drop --mean/--std to use the file's")
        return mean, std, "options"
    if fs.mean is not None:
        return per_channel(fs.mean), per_channel(fs.std), "file"
    if catalog is not None:
        return list(catalog[0]), list(catalog[1]), "zoo catalog"
    raise UserError(
        f"{path}: input normalization unknown (the file does not store it); pass it: "
        "--mean 0.4914,0.4822,0.4465 --std 0.2471,0.2435,0.2616 (mean=/std=), or --mean 0 "
        "--std 1 if the model takes raw [0,1] images, or use --robustbench NAME for a zoo model"
    )


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-6 for x, y in zip(a, b, strict=True))


def _via_robustbench(entry: Any, state: Any, strict: bool,
                     model_dir: str | os.PathLike[str] | None) -> Classifier:
    """Build an exotic zoo entry with the robustbench package's own code (optional extra)."""
    why = f" ({entry.note})" if entry.note else ""
    if "probabilities" in entry.note:  # energies need logits; log-probabilities would shift
        raise UserError(f"{entry.name} outputs averaged softmax probabilities, not logits"
                        f"{why}: its energies are undefined, so robust-ebm does not load it")
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError as exc:
        raise UserError(
            f"{entry.name}{why} is built only by the robustbench package, which is not "
            f"installed or not importable ({exc}); install it: {EXTRA}"
        ) from exc
    ds, tm = BenchmarkDataset(entry.dataset), ThreatModel(entry.threat_model)
    if state is None:
        from robustbench.utils import load_model as rb_load_model

        net = rb_load_model(entry.name, model_dir=str(model_dir or "models"), dataset=ds,
                            threat_model=tm)
        report: dict[str, Any] = {"missing": [], "unexpected": []}
    else:
        spec = model_dicts[ds][tm][entry.name]
        if isinstance(spec["gdrive_id"], list):
            raise UserError(f"{entry.name} is stored as several files; omit the checkpoint so "
                            "robustbench's own loader fetches all of them")
        net = spec["model"]()
        report = _load_exotic(net, state, strict, entry.name)
    arch = {"name": f"robustbench:{entry.name}", "num_classes": entry.num_classes,
            "in_channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3, "kwargs": {},
            "zoo": {"name": entry.name, "dataset": entry.dataset,
                    "threat_model": entry.threat_model}}
    model = Classifier(net, arch["mean"], arch["std"], arch)
    model.load_report = {**report, "notes": ["built by robustbench"], "normalization": "model"}
    return model


def _load_exotic(net: torch.nn.Module, state: Any, strict: bool, name: str) -> dict[str, Any]:
    from .models.foreign import unwrap_state

    sd = unwrap_state(state)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    # as robustbench's loader: normalization buffers absent from the file keep their defaults
    norm = {"mu", "sigma", "mean", "std", "normalize.mean", "normalize.std"}
    missing = [k for k in missing if k not in norm and not k.endswith("num_batches_tracked")]
    if strict and (missing or unexpected):
        raise UserError(f"checkpoint does not fit robustbench's {name}: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]} (--no-strict / strict=False loads it)")
    return {"missing": sorted(missing), "unexpected": sorted(unexpected)}


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
