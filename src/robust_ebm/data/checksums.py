"""MD5 of files and of their decompressed content, computed in 1 MiB chunks."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

__all__ = ["content_md5", "file_md5", "is_gzip"]

_CHUNK = 1 << 20


def file_md5(path: str | Path) -> str:
    """Hex MD5 of the bytes of ``path``."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def is_gzip(path: str | Path) -> bool:
    """Whether ``path`` starts with the gzip magic bytes."""
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def content_md5(path: str | Path) -> str:
    """Hex MD5 of the decompressed content of a gzip file (of the bytes, if not gzipped).

    A recompressed copy (e.g. Debian's) has another gz MD5 but the same content MD5.
    """
    if not is_gzip(path):
        return file_md5(path)
    h = hashlib.md5(usedforsecurity=False)
    with gzip.open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
