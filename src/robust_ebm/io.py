"""Atomic file writes: write to a temporary file in the same folder, fsync, rename.

A reader never sees a half-written file, and a crash leaves the previous version intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move ``tmp_path`` over ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600 and some writers (safetensors) replace the file by their own
        # rename: give the final file the mode a plain open() would (0666 & ~umask)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # persist the rename itself
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files (``.<name>.*.tmp``) an interrupted atomic write left behind.

    Called by a command before it writes into ``folder``; the caller holds the folder's lock
    (:func:`robust_ebm.outputs.prepare_out`), so no live writer owns them.
    """
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_npz(path: str | os.PathLike[str], **arrays: Any) -> Path:
    """Write numpy ``arrays`` as one compressed ``.npz`` file, atomically."""
    import numpy as np

    def write(tmp: str) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        with open(tmp, "wb") as fh:
            fh.write(buf.getvalue())

    return atomic_write(path, write)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_tagged_safetensors(path: str | os.PathLike[str], fmt: str,
                            what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a safetensors file whose metadata ``format`` is ``fmt``.

    Raises:
        FileNotFoundError: no file at ``path`` (callers treat it as "not cached yet").
        CorruptDataError: an unreadable file, or one of another format (``what`` names the
            kind expected, e.g. "class statistics").
    """
    from safetensors import safe_open

    from .errors import CorruptDataError

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own error types
        raise CorruptDataError(f"cannot read {what} from {path}: {exc}") from exc
    if meta.get("format") != fmt:
        raise CorruptDataError(f"{path} is not a {what} file (format {meta.get('format')!r})")
    return tensors, meta
