"""``robust-ebm`` command line: ``main(argv) -> int``.

Each subcommand lives in its own module of this package with ``add_parser(subparsers)`` (which
sets ``func`` to its ``run(args) -> int``). This module is the CLI's one error boundary
(see docs/reliability.md): bad input (:class:`~robust_ebm.errors.UserError`) and failures of the
environment (permissions, full or read-only disks, missing files, interrupted downloads) become
one line on stderr and exit code 2; anything else is an internal error, exit code 1, with the
traceback only under the global ``--debug`` flag.
"""

from __future__ import annotations

import argparse
import errno
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__
from ..distributed_eval import ShardError
from ..errors import TrainingDivergedError, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit code 2, as for every bad input
        raise UserError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    from . import (
        attack_cmd,
        data_cmd,
        demo_cmd,
        detect_cmd,
        energy_cmd,
        evaluate_cmd,
        generate_cmd,
        train_cmd,
    )

    parser = _Parser(
        prog="robust-ebm",
        description="Read any image classifier as an energy-based model (lower energy = more "
                    "likely): attack it, train it robustly, detect attacks by their energy and "
                    "generate images from it.",
        epilog="example:\n"
               "  robust-ebm demo --out runs/demo   # everything on Fashion-MNIST, minutes; "
               "open runs/demo/report.html\n"
               "  robust-ebm COMMAND --help         # what a command does, with an example",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"robust-ebm {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an internal error")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    sub.required = True
    for module in (demo_cmd, train_cmd, evaluate_cmd, attack_cmd, energy_cmd, detect_cmd,
                   generate_cmd, data_cmd):
        module.add_parser(sub)
    return parser


# errno -> (what happened, what to do); anything not listed names the OS message.
_ERRNO = {
    errno.ENOENT: ("not found", "check the path"),
    errno.EACCES: ("permission denied", "check the file's permissions or pick another path"),
    errno.EPERM: ("operation not permitted", "check the file's permissions or pick another path"),
    errno.ENOSPC: ("disk full", "free some space or write to another disk (--out)"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write to another disk (--out)"),
    errno.EROFS: ("read-only file system", "write to a writable folder (--out)"),
    errno.EISDIR: ("is a folder, expected a file", "pass a file"),
    errno.ENOTDIR: ("a part of the path is a file, expected a folder", "check the path"),
    errno.EEXIST: ("exists but is not a folder", "pass a folder or another path"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter path"),
    errno.ELOOP: ("too many symbolic links", "check the symbolic links on the path"),
    errno.EMFILE: ("too many open files", "raise the open-file limit (ulimit -n)"),
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the file, what happened (by errno) and the fix."""
    what, fix = _ERRNO.get(exc.errno or -1, (exc.strerror or str(exc), "check the path"))
    name = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        name = f"{name} -> {exc.filename2}"
    return f"{name}: {what}; {fix}" if name else f"{what}; {fix}"


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return (type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in text
            or "out of memory" in text.lower())


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) or "unknown error"


def parse_args(words: list[str]) -> argparse.Namespace:
    """The parsed command line; a ``--config FILE`` of detect, energy or generate supplies flags
    that the command line did not give (:func:`robust_ebm.cli.common.with_flags_file`)."""
    path = None
    if words and words[0] in ("detect", "energy", "generate"):
        for i, word in enumerate(words):
            if word == "--config" and i + 1 < len(words):
                path = words[i + 1]
            elif word.startswith("--config="):
                path = word.split("=", 1)[1]
    if path is None:
        return build_parser().parse_args(words)
    from .common import with_flags_file

    try:
        return build_parser().parse_args(with_flags_file(words, path))
    except UserError as exc:
        raise UserError(f"{exc} (flags from {path})") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 2 bad input or environment, 1 internal error)."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    debug = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
    from .. import outputs

    code = 1
    try:
        args = parse_args(list(argv) if argv is not None else sys.argv[1:])
        code = int(args.func(args))
        return code
    except UserError as exc:
        return _fail(f"error: {exc}", 2)
    except (TrainingDivergedError, ShardError) as exc:
        return _fail(f"error: {exc}", 1)
    except OSError as exc:  # FileNotFoundError, PermissionError, ENOSPC, EROFS, ...
        if debug:
            traceback.print_exc()
        return _fail(f"error: {describe_os_error(exc)}", 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except MemoryError:
        return _fail("error: out of memory; use a smaller --batch-size or fewer samples", 2)
    except RuntimeError as exc:
        if _is_out_of_memory(exc):  # torch.OutOfMemoryError and the CPU allocator's error
            return _fail("error: out of memory; use a smaller --batch-size or fewer samples", 2)
        if debug:
            traceback.print_exc()
            return 1
        return _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
                     "traceback and report it)", 1)
    except Exception as exc:  # noqa: BLE001 - the boundary: internal errors, one line unless --debug
        if debug:
            traceback.print_exc()
            return 1
        return _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
                     "traceback and report it)", 1)
    finally:
        if code != 0:
            outputs.abandon()  # a failed run leaves no folder that looks like a result
        outputs.release_all()


def _fail(message: str, code: int) -> int:
    print(f"robust-ebm: {_one_line(message)}", file=sys.stderr)
    return code


def entry() -> None:
    sys.exit(main())
