"""Cost of the per-sample random start, as a multiple of one ``torch.rand`` of the batch.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/random_start.py [--batch 512] [--repeats 15]

Measures, round-robin in one run: PGD-10 with a random start, PGD-10 without, the random
start alone (per-sample keys, draw, scale, projection: the work the first adds to the second)
and one ``torch.rand`` of the batch's shape. Prints two ratios [goal <= 1.5]:
  pgd: median over rounds of (with - without), divided by the median rand. Paired by round so
       that load drifts cancel, but still the difference of two numbers ~20x larger: noisy.
  start: median random start / median rand (the same work, timed on its own).
Run it with
``PYTHONPATH`` pointing at another checkout's ``src`` to measure that version (the numbers in
benchmarks/RESULTS.md compare the per-sample CPU generators of the previous release with the
on-device streams of :mod:`robust_ebm.attacks.streams`).

Model: a linear classifier on CIFAR-shaped inputs (3x32x32 -> 10), so that the PGD steps are
cheap and the random start's share is resolved; inputs uniform in [0, 1]; L-inf, eps 8/255.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import torch
from _timing import interleaved_times
from torch import nn

import robust_ebm
from robust_ebm.attacks import core, make_attack
from robust_ebm.attacks.geometry import Linf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    common = {"eps": 8 / 255, "step_size": 2 / 255, "steps": args.steps}
    with_start = make_attack("pgd", random_start=True, **common)
    without = make_attack("pgd", random_start=False, **common)
    geometry, shape = Linf(), tuple(x.shape[1:])
    eps = torch.full((len(x), 1, 1, 1), 8 / 255)
    lo, hi = geometry.bounds(x, eps)

    def random_start() -> torch.Tensor:  # what PGD does for its start, in either version
        streams = core.sample_generators(x, y, 0)
        rows = torch.arange(len(x))

        def sample(kind: str, scale: torch.Tensor | None = None) -> torch.Tensor:
            if scale is None:  # the previous release's draw takes no scale
                return core.draw(streams, rows, shape, x, kind)
            return core.draw(streams, rows, shape, x, kind, scale)

        return geometry.project_bounds(x + geometry.init(sample, eps), lo, hi)

    fns = {
        "pgd_random_start": lambda: with_start(model, x, y),
        "pgd_no_start": lambda: without(model, x, y),
        "random_start": random_start,
        "torch_rand": lambda: torch.rand(x.shape),
    }
    times = interleaved_times(fns, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = [a - b for a, b in zip(times["pgd_random_start"], times["pgd_no_start"])]
    ratios = {
        "pgd": statistics.median(paired) / med["torch_rand"],
        "start": med["random_start"] / med["torch_rand"],
    }
    print(
        json.dumps(
            {
                "setup": {
                    "model": "linear 3x32x32 -> 10",
                    "batch": args.batch,
                    "steps": args.steps,
                    "repeats": args.repeats,
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "robust_ebm": robust_ebm.__file__,
                    "cpu": platform.processor() or platform.machine(),
                },
                "median_seconds": med,
                "median_paired_difference_seconds": statistics.median(paired),
                "random_start_over_rand": ratios,
                "goal": 1.5,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
