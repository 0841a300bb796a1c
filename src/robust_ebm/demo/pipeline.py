"""The demo end to end: build the stages, run or reuse them, write the report."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import detection, energy, generation, robustness, training
from .config import DemoConfig
from .report import write_report
from .runner import Stage, StageRecord, run_stages

__all__ = ["DemoResult", "build_stages", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    html: Path
    markdown: Path
    records: list[StageRecord]
    seconds: float


def build_stages(cfg: DemoConfig) -> list[Stage]:
    """The five stages in report order, with their parameters and input files resolved."""
    return [m.stage(cfg) for m in (training, energy, detection, generation, robustness)]


def run_demo(cfg: DemoConfig, out: str | os.PathLike[str],
             log: Callable[[str], None] = print, command: str | None = None) -> DemoResult:
    """Run (or reuse) every stage into ``out`` and write ``out/report.html`` and ``report.md``.

    ``command`` is what the report's provenance names as the command (default: ``sys.argv``).
    """
    from ..provenance import run_info

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = build_stages(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        records = run_stages(stages, out, log)
    finally:
        torch.set_num_threads(threads)
    info = run_info(cfg.to_dict(), cfg.seed, "cpu") | {"threads": cfg.threads}
    if command:
        info["argv"] = [command]
    info["machine"] = (f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
                       f"torch threads {cfg.threads})")
    info["wall_time_this_run_s"] = round(time.perf_counter() - t0, 2)
    html, md = write_report(records, out, info)
    return DemoResult(html, md, records, time.perf_counter() - t0)
