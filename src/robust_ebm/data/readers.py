"""Readers for the official dataset formats, written here (no torchvision).

Each reader returns ``(images, labels)``: a uint8 tensor (N, C, H, W) and an int64 tensor (N,).

* idx (MNIST, Fashion-MNIST): gzipped or raw; magic number, dims and exact byte count checked.
* CIFAR-10/100 python batches: from the ``cifar-10-batches-py`` folder or straight from the
  official ``.tar.gz`` (members are read in memory, never extracted). The batches are pickles; a
  restricted unpickler allows only the three numpy globals needed to rebuild an array.
* SVHN ``*_32x32.mat`` (MATLAB v5, via scipy); label 10 means digit 0.
* scikit-learn digits (8x8, values 0..16), split 80/20 stratified with seed 0.
* Generic ``.npz`` with uint8 images (see :func:`read_npz` for the accepted layouts).
* Tiny-ImageNet-200 as the ``.npz`` repack the ECCV 2024 code reads (``image`` (N, 64, 64, 3)
  uint8, ``label`` (N,)); the validation set serves as the test split, as there.
* Imagenette from fast.ai's ``.tgz`` of JPEGs or its extracted folders, decoded with Pillow to
  (N, 3, 150, 150) and cached: :mod:`robust_ebm.data.imagenette`.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import io
import pickle
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CorruptDataError, UserError
from ..registry import Registry
from .imagenette import find_imagenette, read_imagenette_cached

__all__ = [
    "FORMATS",
    "Format",
    "npz_to_nchw",
    "read_cifar",
    "read_digits",
    "read_idx",
    "read_idx_split",
    "read_npz",
    "read_svhn",
    "read_tiny_imagenet",
    "restricted_unpickle",
]

Pair = tuple[Tensor, Tensor]


# ----------------------------------------------------------------------------------------- idx
def _read_maybe_gz(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(2)
    try:
        if head == b"\x1f\x8b":  # gzip magic, whatever the file is called
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (EOFError, OSError, gzip.BadGzipFile) as exc:
        raise CorruptDataError(
            f"{path}: cannot decompress ({exc}); the file is truncated or damaged, "
            "delete it and download it again"
        ) from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (uint8 payload), gzipped or raw.

    Format: two zero bytes, a type byte (0x08 = uint8), a byte with the number of dims, then one
    big-endian int32 per dim, then the payload in C order.

    Raises:
        CorruptDataError: naming the file, on a bad magic number or a byte count that does not
            match the header exactly (truncated or padded file).
    """
    path = Path(path)
    raw = _read_maybe_gz(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise CorruptDataError(f"{path}: not an idx file (bad magic number {raw[:4].hex()})")
    if raw[2] != 0x08:
        raise CorruptDataError(f"{path}: idx type 0x{raw[2]:02x} is not uint8 (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise CorruptDataError(f"{path}: idx header is truncated ({len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise CorruptDataError(
            f"{path}: idx header says {dims} ({expected} bytes) but the content has "
            f"{len(raw)} bytes; the file is truncated or damaged, delete it and download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_split(images_path: str | Path, labels_path: str | Path) -> Pair:
    """Read an idx image file (N, H, W) and its idx label file (N,) into (N, 1, H, W), (N,)."""
    x = read_idx(images_path)
    y = read_idx(labels_path)
    if x.ndim != 3 or y.ndim != 1:
        raise CorruptDataError(
            f"{images_path}, {labels_path}: expected images (N, H, W) and labels (N,); "
            f"got {x.shape} and {y.shape}"
        )
    if len(x) != len(y):
        raise CorruptDataError(
            f"{images_path} has {len(x)} images but {labels_path} has {len(y)} labels"
        )
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


# -------------------------------------------------------------------------------------- pickle
def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2 moved the module; pickles name either spelling of the same function
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # pragma: no cover - numpy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
    _reconstruct = multiarray._reconstruct
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _reconstruct
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global except the three numpy ones that rebuild an ndarray."""

    source = "<bytes>"

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise CorruptDataError(
            f"{self.source}: refused to unpickle global {module}.{name}; a CIFAR batch holds "
            "only dicts, lists, bytes and numpy arrays. Do not use this file; download the "
            "official archive again"
        )


def restricted_unpickle(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` (``encoding='bytes'``) allowing only numpy array reconstruction.

    Allowed globals: ``numpy.core.multiarray._reconstruct`` (also spelled
    ``numpy._core.multiarray._reconstruct`` by numpy 2), ``numpy.ndarray``, ``numpy.dtype``.
    Anything else (``os.system``, ``builtins.eval``...) raises before it is called.
    """
    unpickler = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes")
    unpickler.source = source
    try:
        return unpickler.load()
    except CorruptDataError:
        raise
    except Exception as exc:  # truncated or malformed pickles raise many types
        raise CorruptDataError(f"{source}: not a valid pickle ({exc!r})") from exc


# --------------------------------------------------------------------------------------- CIFAR
_CIFAR: dict[str, tuple[str, dict[str, tuple[str, ...]], bytes]] = {
    # variant: (folder inside the archive, {split: member names}, label key)
    "cifar10": (
        "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        b"labels",
    ),
    "cifar100": ("cifar-100-python", {"train": ("train",), "test": ("test",)}, b"fine_labels"),
}


def cifar_members(variant: str, split: str) -> tuple[str, tuple[str, ...]]:
    """(folder name, batch file names) of a CIFAR variant's split."""
    if variant not in _CIFAR:
        raise UserError(f"unknown CIFAR variant {variant!r}; use cifar10 or cifar100")
    folder, splits, _ = _CIFAR[variant]
    if split not in splits:
        raise UserError(f"{variant} has splits {sorted(splits)}; got {split!r}")
    return folder, splits[split]


def _decode_cifar_batch(blob: bytes, source: str, label_key: bytes) -> Pair:
    batch = restricted_unpickle(blob, source)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise CorruptDataError(f"{source}: expected a dict with data and {label_key!r}; got {keys}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CorruptDataError(
            f"{source}: data must be uint8 (N, 3072); got {data.dtype} {data.shape}"
        )
    if len(labels) != len(data):
        raise CorruptDataError(f"{source}: {len(data)} images but {len(labels)} labels")
    # rows are the R, G, B planes of a 32x32 image, each row-major: that is C, H, W order
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def read_cifar(source: str | Path, variant: str = "cifar10", split: str = "train") -> Pair:
    """Read a CIFAR split from the official tar.gz or from a folder of python batches.

    Args:
        source: ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, or a folder holding the
            batch files (``data_batch_1``...``test_batch``, or ``train``/``test`` for CIFAR-100),
            directly or inside ``cifar-10-batches-py`` / ``cifar-100-python``.
        variant: ``cifar10`` (labels under ``labels``) or ``cifar100`` (``fine_labels``).
        split: ``train`` or ``test``.
    """
    source = Path(source)
    folder, names = cifar_members(variant, split)
    label_key = _CIFAR[variant][2]
    blobs: dict[str, bytes] = {}
    if source.is_dir():
        base = source / folder if (source / folder).is_dir() else source
        for n in names:
            if not (base / n).is_file():
                raise CorruptDataError(f"{base}: CIFAR batch {n} is missing")
            blobs[n] = (base / n).read_bytes()
    else:
        try:
            with tarfile.open(source, "r:*") as tar:
                for member in tar:  # one sequential pass; the gz stream is not seekable cheaply
                    parts = member.name.split("/")
                    if member.isfile() and parts[-1] in names and parts[-2:-1] in ([folder], []):
                        fh = tar.extractfile(member)
                        assert fh is not None
                        blobs[parts[-1]] = fh.read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise CorruptDataError(
                f"{source}: cannot read the archive ({exc}); it is truncated or damaged, "
                "delete it and download it again"
            ) from exc
        missing = [n for n in names if n not in blobs]
        if missing:
            raise CorruptDataError(f"{source}: archive lacks {folder}/{', '.join(missing)}")
    parts_ = [_decode_cifar_batch(blobs[n], f"{source}:{n}", label_key) for n in names]
    return torch.cat([p[0] for p in parts_]), torch.cat([p[1] for p in parts_])


# ---------------------------------------------------------------------------------------- SVHN
def read_svhn(path: str | Path) -> Pair:
    """Read an SVHN ``*_32x32.mat``: X is (H, W, C, N) uint8, y is (N, 1) with 10 for digit 0."""
    from scipy.io import loadmat  # scipy is slow to import; only pay for it when reading SVHN

    path = Path(path)
    try:
        mat = loadmat(path)
    except Exception as exc:
        raise CorruptDataError(f"{path}: cannot read the .mat file ({exc})") from exc
    if "X" not in mat or "y" not in mat:
        raise CorruptDataError(f"{path}: expected variables X and y in the .mat file")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.dtype != np.uint8 or x.shape[3] != len(y):
        raise CorruptDataError(f"{path}: X must be uint8 (H, W, C, N={len(y)}); got {x.shape}")
    y = np.where(y == 10, 0, y)
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (N, C, H, W)
    return torch.from_numpy(images), torch.from_numpy(y)


# -------------------------------------------------------------------------------------- digits
@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as uint8 (N, 8, 8) and int64 (N,); cached (sklearn parses a CSV)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(np.asarray(bunch.images, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)
    y = np.asarray(bunch.target, dtype=np.int64)
    return x, y


def read_digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> Pair:
    """scikit-learn's 8x8 digits as uint8 (N, 1, 8, 8): value v in 0..16 -> round(v * 255 / 16).

    The split is deterministic: a stratified hold-out of ``test_fraction`` (default 20%: 359 of
    1797) with ``seed`` (default 0), via :func:`~robust_ebm.data.dataset.stratified_split_indices`.
    """
    from .dataset import stratified_split_indices

    if split not in ("train", "test"):
        raise UserError(f"digits has splits train and test; got {split!r}")
    x, y = _digits_arrays()
    images, labels = torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)
    train_idx, test_idx = stratified_split_indices(labels, test_fraction, seed)
    idx = train_idx if split == "train" else test_idx
    return images[idx], labels[idx]


# ----------------------------------------------------------------------------------------- npz
def npz_to_nchw(x: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Bring uint8 images to (N, C, H, W).

    Layouts: (N, H, W) gets one channel; (N, H, W, C) is recognised when the last axis has 1, 3
    or 4 entries; otherwise (N, C, H, W) when axis 1 has 1, 3 or 4 entries. NHWC wins when both
    fit (e.g. (N, 3, 32, 3) is read as 3-wide images).
    """
    if x.dtype != np.uint8:
        raise UserError(
            f"{source}: images must be uint8 (0..255); got {x.dtype}. "
            "Save (x * 255).round().astype('uint8') instead"
        )
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[3] in (1, 3, 4):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim == 4 and x.shape[1] in (1, 3, 4):
        return x
    raise UserError(
        f"{source}: cannot tell the image layout of shape {x.shape}; "
        "save images as (N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4"
    )


_MAX_CLASSES = 100_000  # a larger label is a mistake (an id, not a class index)


def read_npz(path: str | Path, split: str = "train") -> tuple[Tensor, Tensor, int]:
    """Read a split from a ``.npz``: ``x_<split>``/``y_<split>`` or ``images``/``labels``.

    With ``images``/``labels`` the file holds one set, returned for any ``split``. The number of
    classes is the file's ``num_classes`` entry if present, else 1 + the largest label in the
    file (all splits).

    Returns:
        (images uint8 (N, C, H, W), labels int64 (N,), num_classes).
    """
    path = Path(path)
    npz = _open_npz(path)
    with npz:
        keys = set(npz.files)
        if {f"x_{split}", f"y_{split}"} <= keys:
            xk, yk = f"x_{split}", f"y_{split}"
        elif {"images", "labels"} <= keys:
            xk, yk = "images", "labels"
        else:
            raise UserError(
                f"{path}: found keys {sorted(keys)}; expected x_{split}/y_{split} or images/labels"
            )
        try:
            x_raw, y_raw = npz[xk], npz[yk]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # object arrays, damage
            raise CorruptDataError(f"{path}: cannot read {xk}/{yk} ({exc}); save plain "
                                   "uint8 images and integer labels with numpy.savez") from None
        x = npz_to_nchw(x_raw, f"{path}:{xk}")
        y = np.asarray(y_raw).reshape(-1)
        if not np.issubdtype(y.dtype, np.integer):
            raise UserError(f"{path}:{yk}: labels must be integers; got {y.dtype}")
        if len(y) == 0:
            raise UserError(f"{path}:{yk}: holds no samples; save at least one image and label")
        if "num_classes" in keys:
            nc = np.asarray(npz["num_classes"])
            if nc.size != 1 or not np.issubdtype(nc.dtype, np.integer):
                raise UserError(f"{path}: num_classes must be one integer; got {nc!r}")
            k = int(nc.reshape(-1)[0])
        else:
            label_keys = [key for key in keys if key == "labels" or key.startswith("y_")]
            k = 1 + max(int(npz[key].max()) for key in label_keys if npz[key].size)
        if k > _MAX_CLASSES:
            raise UserError(f"{path}: labels go up to {k - 1}; class indices must be 0..K-1 "
                            f"with K <= {_MAX_CLASSES} (remap the labels)")
    return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64)), k


def _open_npz(path: Path) -> Any:
    """``np.load`` of an ``.npz`` without pickles; CorruptDataError naming the file otherwise."""
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise CorruptDataError(f"{path}: cannot read the .npz file ({exc})") from exc


# ------------------------------------------------------------------------------ tiny-imagenet
def read_tiny_imagenet(path: str | Path) -> Pair:
    """Read one split of the Tiny-ImageNet ``.npz`` repack: keys ``image`` and ``label``."""
    path = Path(path)
    npz = _open_npz(path)
    with npz:
        if not {"image", "label"} <= set(npz.files):
            raise CorruptDataError(
                f"{path}: found keys {sorted(npz.files)}; a Tiny-ImageNet file has image and label"
            )
        x = npz_to_nchw(npz["image"], f"{path}:image")
        y = np.asarray(npz["label"]).reshape(-1)
    if y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise CorruptDataError(f"{path}: {x.shape[0]} images but labels of shape {y.shape}, {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= 200):
        raise CorruptDataError(f"{path}: labels must lie in [0, 200); got {y.min()}..{y.max()}")
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))


# ------------------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class Format:
    """How one catalog format is found in a folder and read.

    Attributes:
        find: ``find(files, fmt, split, folder) -> paths | None``: the paths holding a split
            whose official files are ``files`` in ``folder``, or None if any is missing.
        read: ``read(paths, fmt, split) -> (images, labels)``.
    """

    find: Callable[[tuple[str, ...], str, str, Path], list[Path] | None]
    read: Callable[[list[Path], str, str], Pair]


def _find_idx(files: tuple[str, ...], fmt: str, split: str, d: Path) -> list[Path] | None:
    found = []
    for gz_name in files:  # gzipped as published, or decompressed
        hits = [p for p in (d / gz_name, d / gz_name.removesuffix(".gz")) if p.is_file()]
        if not hits:
            return None
        found.append(hits[0])
    return found


def _find_cifar(files: tuple[str, ...], fmt: str, split: str, d: Path) -> list[Path] | None:
    tar = d / files[0]
    if tar.is_file():
        return [tar]
    folder, names = cifar_members(fmt, split)
    for base in (d / folder, d):
        if all((base / n).is_file() for n in names):
            return [base]
    return None


def _find_files(files: tuple[str, ...], fmt: str, split: str, d: Path) -> list[Path] | None:
    paths = [d / n for n in files]
    return paths if all(p.is_file() for p in paths) else None


# name -> Format. Flags: ``on_disk`` (False: bundled with a package, nothing to find or verify),
# ``raw_copies`` (copies are often recompressed or stored raw, so a differing md5 without a
# content md5 is undecided rather than failed), ``location`` (where a format without files
# comes from, for status reports).
FORMATS: Registry[Format] = Registry("dataset format")
FORMATS.add(
    "idx",
    Format(_find_idx, lambda paths, fmt, split: read_idx_split(paths[0], paths[1])),
    on_disk=True,
    raw_copies=True,
)
for _variant in ("cifar10", "cifar100"):
    FORMATS.add(
        _variant,
        Format(_find_cifar, lambda paths, fmt, split: read_cifar(paths[0], fmt, split)),
        on_disk=True,
    )
FORMATS.add(
    "svhn", Format(_find_files, lambda paths, fmt, split: read_svhn(paths[0])), on_disk=True
)
FORMATS.add(
    "tiny_imagenet",
    Format(_find_files, lambda paths, fmt, split: read_tiny_imagenet(paths[0])),
    on_disk=True,
)
FORMATS.add(
    "imagenette",
    Format(lambda files, fmt, split, d: find_imagenette(files[0], split, d),
           lambda paths, fmt, split: read_imagenette_cached(paths[0], split)),
    on_disk=True,
)
FORMATS.add(
    "digits",
    Format(lambda files, fmt, split, d: [], lambda paths, fmt, split: read_digits(split)),
    on_disk=False,
    location="scikit-learn (bundled, no files)",
)
