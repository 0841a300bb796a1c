"""``robust-ebm`` command line: ``main(argv) -> int``.

Each subcommand lives in its own module of this package with ``add_parser(subparsers)`` (which
sets ``func`` to its ``run(args) -> int``). Bad input raises :class:`~robust_ebm.errors.UserError`
(or ``FileNotFoundError``/``ValueError`` from argument checks) and becomes one line on stderr with
exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import sys
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

    parser = _Parser(prog="robust-ebm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"robust-ebm {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    sub.required = True
    for module in (demo_cmd, train_cmd, evaluate_cmd, attack_cmd, energy_cmd, detect_cmd,
                   generate_cmd, data_cmd):
        module.add_parser(sub)
    return parser


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
    """Run the CLI; return the exit code (0 ok, 2 bad input, 1 other failure)."""
    try:
        args = parse_args(list(argv) if argv is not None else sys.argv[1:])
        return int(args.func(args))
    except UserError as exc:
        print(f"robust-ebm: error: {exc}", file=sys.stderr)
        return 2
    except (TrainingDivergedError, ShardError) as exc:
        print(f"robust-ebm: error: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"robust-ebm: error: file not found: {exc.filename or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robust-ebm: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
