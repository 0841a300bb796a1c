"""The prepared GPU check runs end to end on a CPU in --smoke mode (its numbers mean nothing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_smoke_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
           "GPU_CHECK_TESTS": "tests/test_fastpath.py::test_cuda_fast_paths_match_fp32"}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--smoke", "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "gpu_check.md").read_text()
    assert md in proc.stdout  # the same block on stdout and in $OUT/gpu_check.md
    assert "`pytest -m gpu`: 1 skipped" in md
    rows = [r for r in md.splitlines() if r.startswith("| ") and not r.startswith("| variant")
            and not r.startswith("| model")]
    assert not any("error" in r or "skipped" in r for r in rows), rows
    train = {r.split("|")[1].strip(): r for r in rows if r.count("|") == 7}
    assert set(train) == {"fp32", "bf16", "channels_last", "compiled"}
    attacks = [r for r in rows if r.count("|") == 10]
    assert len(attacks) == 4  # small_cnn x (pgd, apgd_ce) x (fp32, bf16)
    for r in attacks:
        cells = [c.strip() for c in r.split("|")[1:-1]]
        assert float(cells[4]) > 0  # images/s
    assert all(float(r.split("|")[2]) > 0 for r in train.values())  # ms/step
    assert "Measured epoch (fp32, end to end, first step included): **" in md
    assert "for 24 images (3 steps)" in md


def test_gpu_check_refuses_to_run_without_cuda_unless_smoke():
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
    assert "run with --smoke" in proc.stderr
