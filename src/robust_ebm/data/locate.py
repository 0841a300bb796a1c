"""Find a dataset's files on disk, load a split, report status and verify checksums.

Every file of a split is checked against the catalog's checksums on every load (a failing
file is a CorruptDataError); a passed check is cached by (path, size, mtime) in
``<cache>/verified.json``, so it costs nothing the second time.

Search order (first hit wins), each root tried as ``<root>/<name>/`` and then as ``<root>/``
itself (``<name>`` also with dashes, e.g. ``fashion-mnist``):

1. the explicit ``data_dir`` argument (``--data-dir`` on the CLI); when it is given, a split
   missing there is an error naming where another copy is (never a silent fallback);
2. the ``ROBUST_EBM_DATA`` environment variable (several roots separated by ``os.pathsep``);
3. system locations: ``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist`` installs
   ``/usr/share/datasets/fashion-mnist``);
4. the cache ``$XDG_CACHE_HOME/robust_ebm`` (default ``~/.cache/robust_ebm``), where
   ``robust-ebm data download NAME`` puts files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import CorruptDataError, DataNotFoundError, UserError
from .catalog import CATALOG, DatasetInfo, get_info
from .checksums import content_md5, file_md5
from .dataset import ImageDataset
from .readers import FORMATS, read_npz

__all__ = [
    "cache_dir",
    "candidate_dirs",
    "dataset_status",
    "find_split",
    "load_dataset",
    "verify_dataset",
]

SYSTEM_ROOTS: tuple[Path, ...] = (Path("/usr/share/datasets"),)
"""Roots searched after ``ROBUST_EBM_DATA``; tests replace this to hide installed data."""

_REQUIRED_SPLITS = ("train", "test")


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/robust_ebm``, or ``~/.cache/robust_ebm`` when it is unset."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "robust_ebm"


def candidate_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Every folder searched for dataset ``name``, in order, without duplicates."""
    roots: list[Path] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if root.exists() and not root.is_dir():
            raise UserError(f"--data-dir {root} is a file; pass the folder that holds the "
                            "dataset files")
        roots.append(root)
    env = os.environ.get("ROBUST_EBM_DATA", "")
    roots += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    system = list(SYSTEM_ROOTS)
    roots += system
    roots.append(cache_dir())
    aliases = dict.fromkeys([name, name.replace("_", "-")])
    dirs: list[Path] = []
    for root in roots:
        for alias in aliases:
            dirs.append(root / alias)
        if root not in system:  # the bare system root holds other datasets, not ours
            dirs.append(root)
    return list(dict.fromkeys(dirs))


def _find_in_dir(info: DatasetInfo, split: str, d: Path) -> list[Path] | None:
    """The files of ``split`` in folder ``d``, or None if any is missing."""
    return FORMATS.get(info.format).find(info.splits[split], info.format, split, d)


def _on_disk(info: DatasetInfo) -> bool:
    return bool(FORMATS.meta(info.format).get("on_disk", True))


def find_split(
    name: str, split: str = "train", data_dir: str | Path | None = None
) -> list[Path] | None:
    """Paths that hold ``split`` of catalog dataset ``name``, or None when not found."""
    info = get_info(name)
    _check_split(info, split)
    if not _on_disk(info):
        return []
    dirs = candidate_dirs(info.name, data_dir)
    explicit = dirs[: 3 if info.name != info.name.replace("_", "-") else 2] if data_dir else []
    for d in dirs:
        if d.is_dir():
            hit = _find_in_dir(info, split, d)
            if hit is not None:
                if data_dir is not None and d not in explicit:
                    # never a silent fallback from the folder the user named to another copy
                    raise DataNotFoundError(
                        f"--data-dir {data_dir} lacks the {split} split of {info.name} (another "
                        f"copy is at {d}); put the files there or drop --data-dir to use {d}")
                return hit
    return None


def _check_split(info: DatasetInfo, split: str) -> None:
    if split not in info.splits:
        raise UserError(f"{info.name} has splits {', '.join(info.splits)}; got {split!r}")


def _not_found(info: DatasetInfo, split: str, data_dir: str | Path | None) -> DataNotFoundError:
    looked = ", ".join(str(d) for d in candidate_dirs(info.name, data_dir))
    files = ", ".join(info.splits[split])
    how = f"run 'robust-ebm data download {info.name}'"
    package = CATALOG.meta(info.name).get("system_package") if info.name in CATALOG else None
    if package:
        how += f" or 'apt-get install {package}'"
    return DataNotFoundError(
        f"{info.name} ({split} split: {files}) not found; looked in: {looked}. To get it, "
        f"{how}, or put the official files in a folder and pass --data-dir or set "
        "ROBUST_EBM_DATA"
    )


def _stats(images: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.double() / 255.0
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    # constant images (std 0) still get a usable normalization
    return tuple(round(m, 4) for m in mean), tuple(max(round(s, 4), 1e-4) for s in std)


_VERIFIED: dict[str, bool] = {}  # "path|size|mtime_ns" -> passed, this process


def _verified_cache_file() -> Path:
    return cache_dir() / "verified.json"


def _load_verified() -> None:
    import json

    if _VERIFIED:
        return
    try:
        data = json.loads(_verified_cache_file().read_text())
    except (OSError, ValueError):
        return
    if isinstance(data, dict):
        _VERIFIED.update({str(k): True for k, v in data.items() if v is True})


def _save_verified() -> None:
    from ..io import atomic_write_json

    try:
        atomic_write_json(_verified_cache_file(), dict(_VERIFIED))
    except OSError:
        pass  # a read-only home only costs the check again next time


def check_files(info: DatasetInfo, paths: list[Path]) -> None:
    """CorruptDataError when a file of ``paths`` fails the catalog checksum.

    Files without a decidable checksum (a non-official name, an extracted folder, a
    recompressed idx file whose content MD5 the catalog lacks) pass unverified, as in
    :func:`verify_dataset`. Passed files are cached by (path, size, mtime).
    """
    _load_verified()
    new = False
    for path in paths:
        if path.is_dir():
            continue
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key in _VERIFIED:
            continue
        row = _verify_file(info, path)
        if row["ok"] is False:
            raise CorruptDataError(
                f"{path}: {row['note']}; the file is damaged or not the official one. Delete it "
                f"and run 'robust-ebm data download {info.name}' (or check it with 'robust-ebm "
                f"data verify {info.name}')")
        if row["ok"] is True:
            _VERIFIED[key] = new = True
    if new:
        _save_verified()


def load_dataset(
    name: str, split: str = "train", data_dir: str | Path | None = None, verify: bool = True
) -> ImageDataset:
    """Load one split of a catalog dataset, or of a ``.npz`` file, as an :class:`ImageDataset`.

    Args:
        name: A catalog name (``fashion_mnist``, ``mnist``, ``cifar10``, ``cifar100``, ``svhn``,
            ``tiny_imagenet``, ``digits``) or the path of a ``.npz`` file (see :func:`readers.read_npz`; its
            mean/std are computed from the loaded images).
        split: ``train`` or ``test`` (``extra`` for SVHN).
        data_dir: Searched first; see the module docstring for the full search order.
        verify: Check the files against the catalog checksums (cached; see
            :func:`check_files`). ``verify_dataset`` turns it off to report instead of raise.

    Raises:
        DataNotFoundError: listing every folder searched and how to get the data.
        CorruptDataError: if a file is truncated or malformed.
    """
    is_catalog_name = str(name).lower().replace("-", "_") in CATALOG
    if not is_catalog_name and (str(name).endswith(".npz") or Path(name).is_file()):
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataNotFoundError(f"{path}: no such .npz file; check the path")
        images, labels, k = read_npz(path, split)
        mean, std = _stats(images)
        return ImageDataset(images, labels, k, path.stem, mean, std)
    info = get_info(name)
    _check_split(info, split)
    paths = find_split(info.name, split, data_dir)
    if paths is None:
        raise _not_found(info, split, data_dir)
    if verify:
        check_files(info, paths)
    images, labels = FORMATS.get(info.format).read(paths, info.format, split)
    if tuple(images.shape[1:]) != info.shape:
        raise CorruptDataError(
            f"{info.name} ({split}): images have shape {tuple(images.shape[1:])}, "
            f"expected {info.shape}; the files are not the official ones"
        )
    return ImageDataset(images, labels, info.num_classes, info.name, info.mean, info.std)


def dataset_status(name: str, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Where each split of ``name`` was found (or not), without reading the data.

    Returns:
        ``{"name", "found" (train and test both found), "location" (folder of the train files,
        or None), "splits": {split: {"found", "paths"}}, "searched": [folders]}``.
    """
    info = get_info(name)
    dirs = candidate_dirs(info.name, data_dir)
    splits: dict[str, dict[str, Any]] = {}
    for split in info.splits:
        paths = find_split(info.name, split, data_dir)
        splits[split] = {"found": paths is not None, "paths": [str(p) for p in paths or []]}
    first = splits["train"]["paths"][:1] if splits["train"]["found"] else []
    location = str(Path(first[0]).parent) if first else None
    if not _on_disk(info):
        location = FORMATS.meta(info.format).get("location")
    return {
        "name": info.name,
        "found": all(splits[s]["found"] for s in _REQUIRED_SPLITS),
        "location": location,
        "splits": splits,
        "searched": [str(d) for d in dirs] if _on_disk(info) else [],
    }


def _verify_file(info: DatasetInfo, path: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"path": str(path), "ok": None, "note": ""}
    if path.is_dir():
        row["note"] = "extracted folder: no official checksum per batch; sample counts checked"
        return row
    official = next(
        (f for f in info.files if path.name in (f.filename, f.filename.removesuffix(".gz"))), None
    )
    if official is None:
        row["note"] = "not an official file name; sample counts checked"
        return row
    row["md5"] = md5 = file_md5(path)
    row["expected_md5"] = official.md5
    if md5 == official.md5:
        row["ok"], row["note"] = True, "official md5"
        return row
    if official.content_md5 is None:
        # idx files are often recompressed or stored raw; without a content md5 we cannot tell
        # such a copy from a damaged one, so leave it undecided rather than failing it
        idx_copy = bool(FORMATS.meta(info.format).get("raw_copies"))
        row["ok"] = None if idx_copy else False
        row["note"] = "md5 differs; no content md5 recorded" if idx_copy else "checksum mismatch"
        return row
    try:
        row["content_md5"] = got = content_md5(path)
    except (EOFError, OSError) as exc:
        row["ok"], row["note"] = False, f"cannot decompress: {exc}"
        return row
    row["expected_content_md5"] = official.content_md5
    row["ok"] = got == official.content_md5
    row["note"] = "content md5 (recompressed or raw copy)" if row["ok"] else "checksum mismatch"
    return row


def verify_dataset(name: str, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Check the found files against the catalog checksums and the expected sample counts.

    A file passes with the official MD5 or, for idx files, with the MD5 of its decompressed
    content (so recompressed or decompressed copies pass). Extracted CIFAR folders have no
    official per-file checksum: only their counts are checked (``ok`` is None for the file).

    Returns:
        ``{"name", "ok", "files": [{"path", "ok", "note", "md5", ...}],
        "splits": {split: {"count", "expected", "ok", "error"}}}``; ``ok`` is True when no file
        failed and every found split has the expected count.

    Raises:
        DataNotFoundError: if the train or test split is not found.
    """
    info = get_info(name)
    files: dict[Path, dict[str, Any]] = {}
    splits: dict[str, dict[str, Any]] = {}
    for split in info.splits:
        paths = find_split(info.name, split, data_dir)
        if paths is None:
            if split in _REQUIRED_SPLITS:
                raise _not_found(info, split, data_dir)
            continue
        for p in paths:
            if p not in files:
                files[p] = _verify_file(info, p)
        row: dict[str, Any] = {"expected": info.sizes.get(split), "count": None, "error": ""}
        try:
            row["count"] = len(load_dataset(info.name, split, data_dir, verify=False))
        except CorruptDataError as exc:
            row["error"] = str(exc)
        row["ok"] = row["count"] is not None and row["count"] == row["expected"]
        splits[split] = row
    ok = all(f["ok"] is not False for f in files.values()) and all(s["ok"] for s in splits.values())
    if files and not any(f["ok"] is True for f in files.values()):
        ok = False  # nothing matched a checksum: "unverified" is not "OK"
    return {"name": info.name, "ok": ok, "files": list(files.values()), "splits": splits}
