"""``torchrun --nproc_per_node=2`` (gloo, CPU) ``attack``, ``energy``, ``generate`` and
``detect evaluate`` write what one process writes: the same adversarial examples, tables and
samples.

Bit-identity holds between processes that run the same kernels: on a CPU the float results of
a convolution depend on the number of threads (torchrun gives each rank OMP_NUM_THREADS=1), so
the one-process reference runs in a subprocess with the same setting, not inside pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_npz
from safetensors.torch import load_file

from robust_ebm.checkpoint import save_model
from robust_ebm.cli.main import main
from robust_ebm.models import create_model

ROOT = Path(__file__).resolve().parents[1]
TIMES = {"seconds", "out"}  # wall times and output paths differ between runs


def _commands(npz: Path, ckpt: Path, out: Path, detector: Path) -> list[list[str]]:
    common = ["--checkpoint", str(ckpt), "--dataset", str(npz), "--device", "cpu", "--json"]
    return [
        ["detect", "evaluate", *common, "--detector", str(detector), "--n", "30",
         "--attacks", "fgsm,pgd", "--steps", "2", "--he-gammas", "0", "--no-adaptive",
         "--batch-size", "4", "--out", str(out / "detect")],
        ["attack", *common, "--eps", "0.05", "--steps", "3", "--n", "30", "--batch-size", "4",
         "--attacks", "pgd,apgd_ce", "--out", str(out / "attack")],
        ["energy", *common, "--eps", "0.05", "--steps", "2", "--n", "30", "--batch-size", "4",
         "--attacks", "pgd,apgd_ce", "--sweep-steps", "1,2", "--sweep-eps", "1",
         "--out", str(out / "energy")],
        ["generate", "--checkpoint", str(ckpt), "--dataset", str(npz), "--device", "cpu",
         "--init", "uniform", "--steps", "3", "--n-per-class", "5", "--batch-size", "3",
         "--stats-dir", str(out / "stats"), "--out", str(out / "generate")],
    ]


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMES}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _json(path: Path):
    return _strip(json.loads(path.read_text()))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    npz = write_tiny_npz(root / "tiny.npz")
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=2, in_channels=1)
    ckpt = save_model(root / "model.safetensors", model, dataset="tiny")
    code = main(["detect", "calibrate", "--checkpoint", str(ckpt), "--dataset", str(npz),
                 "--cal-split", "train", "--n", "40", "--eps", "0.1", "--steps", "2",
                 "--device", "cpu", "--out", str(root / "cal")])
    assert code == 0
    return root, npz, ckpt, root / "cal" / "detector.json"


def _drive(commands: list[list[str]], env: dict[str, str], *launcher: str) -> None:
    proc = subprocess.run(
        [sys.executable, *launcher, str(ROOT / "tests" / "sharded_cli_driver.py"),
         json.dumps(commands)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_torchrun_attack_energy_generate_equal_one_process(setup):
    root, npz, ckpt, detector = setup
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
           "XDG_CACHE_HOME": str(root / "cache")}
    _drive(_commands(npz, ckpt, root / "one", detector), env)
    _drive(_commands(npz, ckpt, root / "two", detector), env,
           "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    one, two = root / "one", root / "two"
    a, b = (load_file(str(d / "attack" / "adversarial.safetensors")) for d in (one, two))
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rob = _json(one / "attack" / "robustness.json")
    assert rob == _json(two / "attack" / "robustness.json")
    assert rob["n"] == 30 and 0 < rob["clean_accuracy"]  # a real cascade ran
    for name in ("energy.json", "pgd_sweep.json"):
        assert _json(one / "energy" / name) == _json(two / "energy" / name), name
    s1, s2 = (np.load(d / "generate" / "samples.npz") for d in (one, two))
    assert sorted(s1.files) == sorted(s2.files) and len(s1["y"]) == 10
    for k in s1.files:
        assert np.array_equal(s1[k], s2[k]), k
    assert _json(one / "generate" / "energy.json") == _json(two / "generate" / "energy.json")
    det = _json(one / "detect" / "detection.json")
    assert det == _json(two / "detect" / "detection.json") and det["n"] == 30
