"""Kept for old instructions: same as ``robust-ebm merge-attacks OUT SHARD_DIR SHARD_DIR [...]``."""

import sys

from robust_ebm.cli import main

if __name__ == "__main__":
    sys.exit(main(["merge-attacks", *sys.argv[1:]]))
