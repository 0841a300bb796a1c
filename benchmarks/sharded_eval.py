"""Cost of sharding an evaluation: the gather and merge of ``run_sharded`` on its own.

    torchrun --standalone --nproc_per_node=2 benchmarks/sharded_eval.py [--n 10000]

Each rank builds the robustness report of its shard of N CIFAR-shaped points (x_adv float32
3x32x32, masks, labels; no attack is run) and times ``run_sharded`` from the start of the
gather to rank 0's merged report (gloo over local TCP). Rank 0 prints the median of 3.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robust_ebm.distributed_eval import run_sharded, world
from robust_ebm.evaluation.robustness import AttackRow, RobustnessReport
from robust_ebm.evaluation.sharded import merge_reports


def fake_report(start: int, stop: int) -> RobustnessReport:
    n = stop - start
    g = torch.Generator().manual_seed(start)
    robust = torch.rand(n, generator=g) < 0.5
    rows = [AttackRow("apgd_ce", n, n - int(robust.sum()), float(robust.float().mean()), 1.0)]
    return RobustnessReport(n, 1.0, float(robust.float().mean()), rows, robust,
                            torch.ones(n, dtype=torch.bool), torch.rand(n, 3, 32, 32, generator=g),
                            [None] * n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    args = ap.parse_args()
    rank, size = world()
    times = []
    for _ in range(4):
        t = time.perf_counter()
        merged = run_sharded(args.n, fake_report, merge_reports)
        times.append(time.perf_counter() - t)
    if rank == 0:
        mb = merged.x_adv.numel() * 4 / 2**20
        print(f"| {size} ranks | {args.n} points | x_adv {mb:.0f} MiB | gather + merge "
              f"{statistics.median(times[1:]):.2f} s (median of 3 after one warm-up; includes "
              f"building each shard's report) |")


if __name__ == "__main__":
    main()
