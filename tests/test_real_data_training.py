"""Slow: standard training on the real Fashion-MNIST through the CLI (CI runs `-m slow`)."""

import json
from pathlib import Path

import pytest

from robust_ebm.cli import main

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_small_cnn_reaches_88_percent_in_two_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "fashion_mnist", "--epochs", "2", "--out", str(out),
                 "--json"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "model.safetensors"), "--dataset",
                 "fashion_mnist", "--out", str(tmp_path / "ev"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 10000
    # 5 epochs give 92.2% (benchmarks/RESULTS.md); 2 epochs reliably exceed 88%.
    assert report["accuracy"] >= 0.88
    assert report["free_energy"]["mean"] < 0  # confident logits: negative free energy
