"""Command line interface; see :mod:`robust_ebm.cli.main`."""

from .main import build_parser, entry, main

__all__ = ["build_parser", "entry", "main"]
