"""``robust-ebm demo``: the toolkit's whole story on Fashion-MNIST, as one report.

Runs every capability on the committed models (artifacts/fmnist) and writes OUT/report.html and
OUT/report.md; finished stages are cached in OUT and reused by the next run.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from .common import emit, positive_int

EPILOG = """\
stages: adversarial training from scratch (WEAT_adv beside SAT), energies under attack,
the energy detector with HE-PGD and adaptive attacks, SGLD generation with FID/KID/IS, and
the committed AutoAttack table beside a fresh PGD. About 6 minutes on a busy 2-core CPU;
a second run reuses every finished stage.

example:
  robust-ebm demo --out runs/demo      # then open runs/demo/report.html
  robust-ebm demo --quick --out /tmp/d # tiny sizes, under 2 minutes
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run every capability on Fashion-MNIST and write one HTML report",
        description="Show what the toolkit does, on real Fashion-MNIST and the committed "
                    "models, in one report (OUT/report.html).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo",
                   help="output folder (default: runs/demo); an earlier demo there is resumed, "
                        "its finished stages reused")
    p.add_argument("--overwrite", action="store_true",
                   help="use --out even when it holds files of something other than a demo")
    p.add_argument("--quick", action="store_true",
                   help="every stage on tiny sizes (under 2 minutes; numbers are not meaningful)")
    p.add_argument("--retrain", action="store_true",
                   help="first rebuild the committed models from their configs (hours on a CPU)")
    p.add_argument("--seed", type=int, default=0, help="seeds attacks, samplers and training")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads (default 1: fastest on a shared CPU)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: found)")
    p.add_argument("--root", default=None,
                   help="repository clone with artifacts/fmnist (default: found from here)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def _command(args: argparse.Namespace, out: object) -> str:
    """The command line that reproduces this run (whatever called main())."""
    words = ["robust-ebm", "demo", "--out", str(out)]
    words += [flag for flag, on in (("--quick", args.quick), ("--retrain", args.retrain)) if on]
    for flag, value, default in (("--seed", args.seed, 0), ("--threads", args.threads, 1),
                                 ("--data-dir", args.data_dir, None), ("--root", args.root, None)):
        if value != default:
            words += [flag, str(value)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..demo import FULL, QUICK, DemoConfig, find_root, run_demo
    from ..demo.retrain import retrain
    from ..outputs import prepare_out

    root = find_root(Path(args.root) if args.root else None)
    # a folder holding an earlier demo (its stage cache) is resumed, anything else is refused
    out = prepare_out(args.out, overwrite=args.overwrite,
                      resume=(Path(args.out) / "stages").is_dir())
    cfg = DemoConfig(root=root, sizes=QUICK if args.quick else FULL, seed=args.seed,
                     data_dir=args.data_dir, threads=args.threads)

    def log(line: str) -> None:  # progress on stderr, so --json stays clean on stdout
        print(line, file=sys.stderr, flush=True)

    if args.retrain:
        cfg = retrain(cfg, out, quick=args.quick, log=log)
    res = run_demo(cfg, out, log, command=_command(args, out))
    result = {"html": str(res.html), "markdown": str(res.markdown), "seconds": res.seconds,
              "stages": {r.name: {"reused": r.reused, "seconds": r.seconds,
                                  "cpu_seconds": r.cpu_seconds,
                                  "wall_this_run": r.wall_this_run} for r in res.records}}
    emit(result, args.json, f"report: {res.html}\n        {res.markdown}\n"
                            f"({res.seconds:.1f}s this run)")
    return 0
