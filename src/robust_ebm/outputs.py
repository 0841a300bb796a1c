"""Output folders: refuse to mix runs, lock against concurrent writers, clean up after crashes.

A command writes into one folder (``--out``). :func:`prepare_out` is called only after the
command's inputs were checked, so a refused run creates nothing. It

* refuses a path that is a file or a dangling symbolic link;
* refuses a non-empty folder unless the caller says ``overwrite`` (the new run's files replace
  the old ones of the same name, each atomically; other files are left as they are) or
  ``resume`` (training continues the run whose ``state.pt`` is there);
* takes an exclusive lock (``<out>/.lock``, ``flock``) held until :func:`release_all`, so a
  second run into the same folder is refused instead of interleaving its files;
* deletes the temporary files (``.*.tmp``) an interrupted atomic write left behind.

:func:`abandon` removes a folder this process created when its run fails before finishing,
so a failed run never leaves a folder that looks like a result.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from .errors import UserError
from .io import remove_stale_temps

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # folder -> fd of its lock file
_created: set[Path] = set()  # folders this process created


def _contents(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name != LOCK_NAME and not p.name.endswith(".tmp")]


def prepare_out(out: str | os.PathLike[str], *, overwrite: bool = False,
                resume: bool = False) -> Path:
    """Create (or reuse) ``out`` for one run and lock it; see the module docstring."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise UserError(f"--out {out} is a symbolic link to a missing folder "
                        f"({os.readlink(out)}); remove the link or pick another path")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; pick another path")
    existed = out.is_dir()
    if not existed:
        out.mkdir(parents=True)
        _created.add(out.resolve())
    _lock(out)
    remove_stale_temps(out)
    leftovers = _contents(out) if existed else []
    if leftovers and not resume:
        if not overwrite:
            release(out)
            what = "a run" if (out / "run.json").is_file() else "files"
            raise UserError(
                f"--out {out} already holds {what} ({', '.join(sorted(p.name for p in leftovers)[:4])}"
                f"{', ...' if len(leftovers) > 4 else ''}); pass --overwrite to replace it, "
                "--resume to continue a training run, or pick another folder")
    return out


def _lock(out: Path) -> None:
    key = out.resolve()
    if key in _held:
        return
    while True:
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"another robust-ebm run is writing into {out}; wait for it to "
                            "finish or pick another --out") from None
        # the previous holder may have unlinked the file between our open and flock
        try:
            same = os.fstat(fd).st_ino == os.stat(out / LOCK_NAME).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _held[key] = fd
            return
        os.close(fd)


def release(out: str | os.PathLike[str]) -> None:
    """Drop the lock on ``out`` (and its lock file)."""
    key = Path(out).resolve()
    fd = _held.pop(key, None)
    if fd is None:
        return
    try:
        (key / LOCK_NAME).unlink(missing_ok=True)
    finally:
        os.close(fd)  # closing releases the flock


def abandon() -> None:
    """After a failed run: remove each folder this process created, unless it holds a
    resumable training state (``state.pt``), then release all locks."""
    for key in list(_created):
        if key.is_dir() and not (key / "state.pt").is_file():
            release(key)
            shutil.rmtree(key, ignore_errors=True)
    release_all()


def release_all() -> None:
    """Release every lock this process holds (end of a command)."""
    for key in list(_held):
        release(key)
    _created.clear()
