"""Run by tests/test_scale_cli.py under torchrun: the CLI commands given as argument lists
(JSON) in sequence, in every rank, as ``robust-ebm`` would run them. Exits with the first
non-zero code."""

from __future__ import annotations

import json
import sys

from robust_ebm.cli.main import main

if __name__ == "__main__":
    for argv in json.loads(sys.argv[1]):
        code = main(argv)
        if code:
            sys.exit(code)
