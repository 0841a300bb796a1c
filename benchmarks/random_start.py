"""Cost of the per-sample random start, as a multiple of one ``torch.rand`` of the batch.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/random_start.py [--batch 512] [--repeats 31]
        [--steps 10] [--compare-with OTHER_CHECKOUT/src]

Times, round-robin in one process: PGD with a random start, PGD without, the random start
alone, and one ``torch.rand`` of the batch's shape. With ``--compare-with`` the robust_ebm
package under that folder (e.g. an export of an older commit) is imported under another name
and timed in the same rounds, so both versions see the same load. Prints per version [goal
<= 1.5]:
  pgd:   median over rounds of (PGD with start - PGD without) / median rand. This is the
         issue's measure; it leaves out what both variants pay (per-sample keys or
         generators are made for every attack call), and it is the difference of two numbers
         ~20x larger, so it is noisy on a loaded machine.
  start: median of the start alone (keys or generators, draw, scale, add, projection) /
         median rand: the whole cost of per-sample randomness, timed on its own.

Model: a linear classifier on CIFAR-shaped inputs (3x32x32 -> 10), so that the PGD steps are
cheap and the random start's share is resolved; inputs uniform in [0, 1]; L-inf, eps 8/255,
step 2/255.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from _timing import interleaved_times
from torch import nn

import robust_ebm.attacks


def load_other(src: str, alias: str = "robust_ebm_other") -> ModuleType:
    """The ``attacks`` package of the robust_ebm found under ``src``, imported as ``alias``."""
    root = Path(src) / "robust_ebm"
    spec = importlib.util.spec_from_file_location(
        alias, root / "__init__.py", submodule_search_locations=[str(root)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{alias}.attacks")


def candidates(
    attacks: ModuleType, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int
) -> dict[str, Callable[[], object]]:
    """PGD with and without random start, and the start alone, of one version."""
    common = {"eps": 8 / 255, "step_size": 2 / 255, "steps": steps}
    with_start = attacks.make_attack("pgd", random_start=True, **common)
    without = attacks.make_attack("pgd", random_start=False, **common)
    core = importlib.import_module(f"{attacks.__name__}.core")
    geometry = importlib.import_module(f"{attacks.__name__}.geometry").Linf()
    shape, eps = tuple(x.shape[1:]), torch.full((len(x), 1, 1, 1), 8 / 255)
    lo, hi = geometry.bounds(x, eps)

    def random_start() -> torch.Tensor:  # what PGD does for its start, in either version
        streams = core.sample_generators(x, y, 0)
        rows = torch.arange(len(x))

        def sample(kind: str, scale: torch.Tensor | None = None) -> torch.Tensor:
            if scale is None:  # older versions' draw takes no scale
                return core.draw(streams, rows, shape, x, kind)
            return core.draw(streams, rows, shape, x, kind, scale)

        return geometry.project_bounds(x + geometry.init(sample, eps), lo, hi)

    return {
        "pgd_random_start": lambda: with_start(model, x, y),
        "pgd_no_start": lambda: without(model, x, y),
        "random_start": random_start,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--compare-with", default=None, help="another checkout's src folder")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    versions = {"this": robust_ebm.attacks}
    if args.compare_with:
        versions["other"] = load_other(args.compare_with)
    fns: dict[str, Callable[[], object]] = {"torch_rand": lambda: torch.rand(x.shape)}
    for tag, attacks in versions.items():
        for k, fn in candidates(attacks, model, x, y, args.steps).items():
            fns[f"{tag}:{k}"] = fn
    times = interleaved_times(fns, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {}
    for tag in versions:
        paired = [
            a - b for a, b in zip(times[f"{tag}:pgd_random_start"], times[f"{tag}:pgd_no_start"])
        ]
        ratios[tag] = {
            "pgd": statistics.median(paired) / med["torch_rand"],
            "start": med[f"{tag}:random_start"] / med["torch_rand"],
        }
    setup = {
        "model": "linear 3x32x32 -> 10",
        "batch": args.batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "this": str(Path(robust_ebm.attacks.__file__).parents[1]),
        "other": args.compare_with,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps({"setup": setup, "median_seconds": med, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
