"""Imagenette (fast.ai's 10-class ImageNet subset) from its official archive, decoded once.

Official files (https://github.com/fastai/imagenette): ``imagenette2.tgz`` (full size),
``imagenette2-320.tgz`` and ``imagenette2-160.tgz`` (shorter side resized to 320 / 160 px). Each
holds ``<root>/train/<wnid>/*.JPEG`` (9469 images), ``<root>/val/<wnid>/*.JPEG`` (3925) and
``<root>/noisy_imagenette.csv`` (not read here), with one folder per WordNet id.

The Beadini & Masi notebooks (arXiv 2304.04033, ``detector_imagenette_update.ipynb``) read
``imagenette2-160`` with ``ImageFolder`` and the test transform ``CenterCrop(150)``, then
``ToTensor`` (no normalization). This reader gives the same images as uint8 (N, 3, 150, 150):

* decoding: Pillow, converted to RGB (a few Imagenette JPEGs are grayscale or CMYK);
* geometry: when the shorter side is not 160 px (the 320 px and full-size archives), it is first
  resized to 160 px, bilinear, the longer side to ``int(160 * long / short)`` (as
  ``Resize(160)``); then a centered 150 x 150 crop with the offsets ``int(round((side - 150) / 2))``
  of ``CenterCrop``. On ``imagenette2-160`` no resize happens, so the pixels are the notebook's;
* classes: the WordNet ids sorted (label 0 = ``n01440764``, tench), images sorted by path within
  a class: ``ImageFolder``'s order;
* splits: ``train`` = the archive's ``train/``; ``test`` = its ``val/`` (the notebook's test set;
  its 500-image validation split is a random split of ``train/``).

Decoding 13k JPEGs takes tens of seconds, so the decoded split is cached as safetensors in
``<cache>/imagenette/`` (see :func:`robust_ebm.data.locate.cache_dir`), keyed by the source's
path, size and modification time and by the geometry; a second load reads the cache.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import CorruptDataError, UserError

__all__ = ["IMAGE_EXTENSIONS", "SPLIT_FOLDERS", "center_crop_box", "decode_image",
           "find_imagenette", "read_imagenette", "read_imagenette_cached"]

Pair = tuple[Tensor, Tensor]

SPLIT_FOLDERS = {"train": "train", "test": "val"}
"""Our split name -> the archive's folder."""
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File endings read as images (case-insensitive; ``ImageFolder``'s list)."""
SHORT_SIDE = 160
CROP = 150
_CACHE_VERSION = "1"


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a centered ``size`` x ``size`` crop, offsets rounded as
    ``CenterCrop`` (Python's round: halves go to the even integer)."""
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def decode_image(data: bytes, source: str, short_side: int = SHORT_SIDE,
                 size: int = CROP) -> np.ndarray:
    """One image file's bytes -> uint8 (3, size, size): RGB, shorter side to ``short_side``
    (bilinear, only when it differs), centered crop (see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptDataError(f"{source}: cannot decode the image ({exc}); the archive is "
                               "damaged, delete it and download it again") from exc
    w, h = rgb.size
    if min(w, h) != short_side:
        if w <= h:
            w, h = short_side, int(short_side * h / w)
        else:
            w, h = int(short_side * w / h), short_side
        rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
    if min(w, h) < size:
        raise CorruptDataError(f"{source}: {w}x{h} pixels is smaller than the {size}px crop")
    arr = np.asarray(rgb.crop(center_crop_box(w, h, size)), dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _parse_member(name: str, folder: str) -> tuple[str, str] | None:
    """(wnid, path) of an image member ``[<root>/]<folder>/<wnid>/<file>``, else None."""
    parts = name.strip("/").split("/")
    if len(parts) < 3 or parts[-3] != folder or len(parts) > 4:
        return None
    if not parts[-1].lower().endswith(IMAGE_EXTENSIONS) or parts[-1].startswith("."):
        return None
    return parts[-2], name


def _tar_images(path: Path, folder: str) -> Iterator[tuple[str, str, bytes]]:
    """(wnid, member name, bytes) of every image of ``folder`` in the archive, one pass."""
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                hit = _parse_member(member.name, folder) if member.isfile() else None
                if hit is not None:
                    fh = tar.extractfile(member)
                    assert fh is not None
                    yield hit[0], hit[1], fh.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise CorruptDataError(f"{path}: cannot read the archive ({exc}); it is truncated or "
                               "damaged, delete it and download it again") from exc


def _folder_images(path: Path) -> Iterator[tuple[str, str, bytes]]:
    for wnid_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        for f in sorted(wnid_dir.iterdir()):
            if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS):
                yield wnid_dir.name, str(f), f.read_bytes()


def read_imagenette(source: str | Path, split: str = "train", short_side: int = SHORT_SIDE,
                    size: int = CROP) -> Pair:
    """Decode one split of Imagenette from an official ``.tgz`` or an extracted split folder.

    Args:
        source: ``imagenette2-160.tgz`` (or the 320 px / full-size archive), or the extracted
            split folder itself (``.../imagenette2-160/val``, one sub-folder per WordNet id).
        split: ``train`` or ``test`` (the archive's ``val/``).
        short_side, size: geometry in pixels (module docstring); defaults 160 and 150.

    Returns:
        uint8 images (N, 3, size, size) and int64 labels (N,), label = index of the WordNet id
        among the sorted ids of the split.

    Raises:
        CorruptDataError: naming the archive and the missing split folder, or the file that
            does not decode.
    """
    source = Path(source)
    if split not in SPLIT_FOLDERS:
        raise UserError(f"imagenette has splits {', '.join(SPLIT_FOLDERS)}; got {split!r}")
    folder = SPLIT_FOLDERS[split]
    items = _folder_images(source) if source.is_dir() else _tar_images(source, folder)
    decoded: dict[str, list[tuple[str, np.ndarray]]] = {}
    for wnid, name, data in items:
        decoded.setdefault(wnid, []).append((name, decode_image(data, name, short_side, size)))
    if not decoded:
        raise CorruptDataError(f"{source}: no images under {folder}/<wnid>/ (the {split} split); "
                               "not an Imagenette archive or an incomplete one, download it again")
    images, labels = [], []
    for label, wnid in enumerate(sorted(decoded)):
        for _, arr in sorted(decoded[wnid], key=lambda item: item[0]):
            images.append(arr)
            labels.append(label)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


def find_imagenette(archive: str, split: str, d: Path) -> list[Path] | None:
    """The source of ``split`` in folder ``d``: the archive ``d/<archive>``, else the extracted
    ``d/<archive stem>/<train|val>`` or ``d/<train|val>`` folder; None when none is there."""
    if (d / archive).is_file():
        return [d / archive]
    folder = SPLIT_FOLDERS[split]
    stem = archive.removesuffix(".tgz").removesuffix(".tar.gz")
    for base in (d / stem / folder, d / folder):
        if base.is_dir():
            return [base]
    return None


def _cache_path(source: Path, split: str, short_side: int, size: int) -> tuple[Path, str]:
    """Cache file (named by the source's path, the split and the geometry) and the key stored
    in it (adding the size and mtime of the source, for a folder of every file in it)."""
    from .locate import cache_dir

    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    listing = hashlib.sha256()
    for f in files:
        st = f.stat()
        listing.update(f"{f.relative_to(source) if source.is_dir() else ''}|{st.st_size}|"
                       f"{st.st_mtime_ns}\n".encode())
    where = "|".join([_CACHE_VERSION, str(source.resolve()), split, str(short_side), str(size)])
    # one file per source and split: a changed archive replaces its stale cache
    name = f"{split}-{size}px-{hashlib.sha256(where.encode()).hexdigest()[:16]}.safetensors"
    return cache_dir() / "imagenette" / name, f"{where}|{listing.hexdigest()}"


def read_imagenette_cached(source: str | Path, split: str = "train",
                           short_side: int = SHORT_SIDE, size: int = CROP) -> Pair:
    """:func:`read_imagenette` through the decoded-array cache (module docstring).

    A cache file whose stored key differs, or that does not load, is decoded again and
    replaced; the cache is written atomically, and a cache folder that cannot be written only
    costs the decoding next time.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file, save_file

    source = Path(source)
    path, key = _cache_path(source, split, short_side, size)
    if path.is_file():
        try:
            with safe_open(str(path), "pt") as fh:
                stored = (fh.metadata() or {}).get("key")
            if stored == key:
                cached = load_file(str(path))
                return cached["images"], cached["labels"]
        except (SafetensorError, OSError, KeyError, ValueError):
            pass  # unreadable cache: decode again below
    images, labels = read_imagenette(source, split, short_side, size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.close(fd)
        try:
            save_file({"images": images, "labels": labels}, tmp, metadata={"key": key})
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError:
        pass
    return images, labels
