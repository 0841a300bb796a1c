"""Merge shards of one ``robust-ebm attack`` evaluation into a single report.

    .venv/bin/python scripts/merge_attacks.py OUT SHARD_DIR SHARD_DIR [...]

Each shard is the --out folder of ``robust-ebm attack ... --start S --n N`` on disjoint
ranges; see :func:`robust_ebm.evaluation.merge_attack_runs`.
"""

from __future__ import annotations

import sys

from robust_ebm.errors import UserError
from robust_ebm.evaluation import merge_attack_runs


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        rep = merge_attack_runs(argv[1:], argv[0])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"n={rep['n']} clean {rep['clean_accuracy']:.4f} robust {rep['robust_accuracy']:.4f} "
          f"-> {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
