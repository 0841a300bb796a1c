"""Download the official files of a catalog dataset, verified by MD5 before they appear.

Each file streams into a temporary file in the destination folder while its MD5 is computed;
only a file with the official MD5 is renamed (atomically) to its final name. A wrong checksum
deletes the temporary file and raises :class:`~robust_ebm.errors.CorruptDataError`.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import CorruptDataError, UserError
from .catalog import RemoteFile, get_info
from .checksums import file_md5
from .locate import cache_dir

__all__ = ["download_dataset", "download_file"]

ProgressFn = Callable[[str, int, int | None], None]
"""``progress(filename, bytes_done, bytes_total_or_None)``, called after every chunk."""

_CHUNK = 1 << 20


def download_file(
    remote: RemoteFile,
    dest_dir: Path,
    base_url: str | None = None,
    progress: ProgressFn | None = None,
    timeout: float = 60.0,
) -> Path:
    """Fetch one official file into ``dest_dir``; skip it if a verified copy is already there.

    Args:
        remote: The catalog entry (name, URL, MD5).
        dest_dir: Destination folder (created if needed).
        base_url: Replaces the URL's folder: the file is fetched from ``base_url/filename``.
        progress: Optional callback, see :data:`ProgressFn`.
        timeout: Socket timeout in seconds.

    Raises:
        CorruptDataError: naming the file and both checksums when the MD5 is wrong.
        UserError: when the server cannot be reached or answers with an error.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / remote.filename
    if final.is_file() and file_md5(final) == remote.md5:
        return final
    url = remote.url if base_url is None else base_url.rstrip("/") + "/" + remote.filename
    fd, tmp_name = tempfile.mkstemp(prefix=f".{remote.filename}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        got = _fetch_md5(fd, url, remote.filename, dest_dir, progress, timeout)
        if got != remote.md5:
            raise CorruptDataError(
                f"{remote.filename} from {url}: md5 {got} does not match the official "
                f"{remote.md5}; the file was discarded, try again or use another mirror"
            )
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _fetch_md5(
    fd: int,
    url: str,
    filename: str,
    dest_dir: Path,
    progress: ProgressFn | None,
    timeout: float,
) -> str:
    """Stream ``url`` into the open file ``fd`` (closed after, synced); return its MD5 (hex).
    Network failures become a :class:`UserError`; disk errors pass through."""
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = resp.headers.get("Content-Length")
            total_n = int(total) if total is not None else None
            done = 0
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                md5.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(filename, done, total_n)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        if not _is_network_error(exc):
            raise  # full or read-only disk, permissions: the CLI names the errno
        raise UserError(
            f"cannot download {url} ({exc}); check the network or fetch the file by hand "
            f"into {dest_dir}"
        ) from exc
    except http.client.HTTPException as exc:  # e.g. IncompleteRead: the transfer broke off
        raise UserError(
            f"cannot download {url} ({exc}); check the network or fetch the file by hand "
            f"into {dest_dir}"
        ) from exc
    return md5.hexdigest()


def _is_network_error(exc: OSError) -> bool:
    local = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
             errno.ENOTDIR)
    return isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError)) or (
        exc.errno not in local)


def check_base_url(base_url: str) -> str:
    """A mirror URL with a scheme urllib can fetch (http, https, ftp, file)."""
    from urllib.parse import urlparse

    scheme = urlparse(base_url).scheme
    if scheme not in ("http", "https", "ftp", "file"):
        raise UserError(f"--base-url {base_url!r} has no http://, https://, ftp:// or file:// "
                        "scheme; write the full URL, e.g. https://host/folder")
    return base_url


def download_dataset(
    name: str,
    dest: str | Path | None = None,
    base_url: str | None = None,
    progress: ProgressFn | None = None,
    splits: Sequence[str] = ("train", "test"),
) -> list[Path]:
    """Download the official files of ``name`` (those needed by ``splits``).

    Args:
        name: Catalog name; ``digits`` needs no download and returns ``[]``.
        dest: Destination folder; default ``<cache>/<name>`` (see :func:`locate.cache_dir`),
            which :func:`~robust_ebm.data.load_dataset` searches.
        base_url: Host and folder to fetch from instead of the official one (mirrors, tests).
        progress: Optional callback ``(filename, bytes_done, bytes_total_or_None)``.
        splits: Splits to fetch; SVHN also has ``extra`` (1.3 GB), not fetched by default.

    Returns:
        Paths of the verified files, in catalog order.
    """
    info = get_info(name)
    if base_url is not None:
        check_base_url(base_url)
    unknown = [s for s in splits if s not in info.splits]
    if unknown:
        raise UserError(f"{info.name} has splits {', '.join(info.splits)}; got {unknown}")
    wanted = {f for s in splits for f in info.splits[s]}
    dest_dir = Path(dest).expanduser() if dest is not None else cache_dir() / info.name
    return [
        download_file(remote, dest_dir, base_url, progress)
        for remote in info.files
        if remote.filename in wanted
    ]
