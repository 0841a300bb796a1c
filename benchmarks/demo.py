"""Wall and CPU time of ``robust-ebm demo`` per stage, and of a second run that reuses them.

Runs the demo twice into OUT (each in its own process, with the machine's load average before
and after), then prints one Markdown row per stage from OUT/stages/*/stage.json: the wall and
CPU seconds of the run that computed it. The second run must reuse every stage.

    python benchmarks/demo.py runs/demo-bench            # the full demo
    python benchmarks/demo.py /tmp/demo-quick --quick    # --quick sizes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_once(out: Path, extra: list[str]) -> tuple[float, dict]:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "robust_ebm", "demo", "--out", str(out), "--json",
                          *extra], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    info = json.loads(res.stdout)
    info["load_before"], info["load_after"] = load, os.getloadavg()[0]
    return wall, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    extra = ["--quick"] if args.quick else []
    runs = [run_once(out, extra) for _ in range(2)]
    print("| stage | wall s | CPU s |\n|---|---:|---:|")
    total_wall = total_cpu = 0.0
    for path in sorted(out.glob("stages/*/stage.json"), key=lambda p: p.stat().st_mtime):
        rec = json.loads(path.read_text())
        total_wall += rec["seconds"]
        total_cpu += rec.get("cpu_seconds", 0.0)
        print(f"| {rec['title']} | {rec['seconds']:.1f} | {rec.get('cpu_seconds', 0.0):.1f} |")
    print(f"| all stages | {total_wall:.1f} | {total_cpu:.1f} |")
    for i, (wall, info) in enumerate(runs, 1):
        reused = sum(s["reused"] for s in info["stages"].values())
        print(f"run {i}: {wall:.1f} s wall (process start to exit), {reused}/{len(info['stages'])} "
              f"stages reused, load average {info['load_before']:.1f} -> {info['load_after']:.1f}")
    if not all(s["reused"] for s in runs[1][1]["stages"].values()):
        sys.exit("the second run did not reuse every stage")


if __name__ == "__main__":
    main()
