"""Shared test helpers: writers of tiny dataset files in the official formats, and the tiny
trained models the attack, evaluation, analysis and detection tests share.

Two digits MLPs are kept on purpose, because the tests' measured thresholds belong to each:

* ``digits_model``: ``nn.Sequential`` MLP trained with Adam on all 1797 scikit-learn digits
  (pixels / 16), used by the attack, oracle and evaluation tests;
* ``digits_mlp``: ``create_model("mlp")`` trained with SGD on the package's digits train split
  (1438 images, uint8 / 255) for 5 epochs, 98% test accuracy; the analysis and detection tests'
  numbers (e.g. mean dE(x) about +4.9 at eps 0.5) were measured on it.

Every model is built once per session, seeded, without touching the global RNG.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


class OfficialFormats:
    """Write small files exactly as the official datasets lay them out."""

    @staticmethod
    def idx_bytes(array: np.ndarray) -> bytes:
        array = np.ascontiguousarray(array, dtype=np.uint8)
        head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
        return head + array.tobytes()

    @classmethod
    def write_idx(cls, path: Path, array: np.ndarray, gz: bool = True) -> Path:
        data = cls.idx_bytes(array)
        path.write_bytes(gzip.compress(data) if gz else data)
        return path

    @classmethod
    def write_idx_dataset(cls, folder: Path, n_train=12, n_test=6, gz=True, seed=0) -> dict:
        """Four idx files (official names) with 28x28 images; returns the arrays written."""
        rng = np.random.default_rng(seed)
        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for prefix, n in (("train", n_train), ("t10k", n_test)):
            x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            y = (np.arange(n) % 10).astype(np.uint8)
            sfx = ".gz" if gz else ""
            cls.write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}", x, gz)
            cls.write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}", y, gz)
            out[prefix] = (x, y)
        return out

    @staticmethod
    def cifar_batch(n: int, seed: int, label_key: bytes = b"labels", k: int = 10) -> tuple:
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, k, n)]
        batch = {
            b"batch_label": b"fixture",
            label_key: y,
            b"data": x,
            b"filenames": [b"img%d.png" % i for i in range(n)],
        }
        return pickle.dumps(batch, protocol=4), x, y

    @classmethod
    def write_cifar10(cls, root: Path, as_tar: bool, n: int = 4) -> dict:
        """CIFAR-10 python batches (5 train + test); a tar.gz or the extracted folder."""
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        blobs, arrays = {}, {}
        for i, name in enumerate(names):
            blobs[name], x, y = cls.cifar_batch(n, seed=i)
            arrays[name] = (x, y)
        blobs["batches.meta"] = pickle.dumps({b"label_names": [b"a"] * 10}, protocol=4)
        cls.write_members(root, "cifar-10-batches-py", "cifar-10-python.tar.gz", blobs, as_tar)
        return arrays

    @staticmethod
    def write_members(root: Path, folder: str, tar_name: str, blobs: dict, as_tar: bool) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        if not as_tar:
            (root / folder).mkdir(exist_ok=True)
            for name, blob in blobs.items():
                (root / folder / name).write_bytes(blob)
            return root / folder
        with tarfile.open(root / tar_name, "w:gz") as tar:
            for name, blob in blobs.items():
                info = tarfile.TarInfo(f"{folder}/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        return root / tar_name


@pytest.fixture
def formats() -> type[OfficialFormats]:
    return OfficialFormats


@pytest.fixture
def isolated_data(monkeypatch, tmp_path):
    """Hide every real data location: no env var, no system roots, cache under tmp_path."""
    from robust_ebm.data import locate

    monkeypatch.delenv("ROBUST_EBM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(locate, "SYSTEM_ROOTS", (tmp_path / "system",))
    return tmp_path


@pytest.fixture()
def tiny_npz(tmp_path):
    """A two-class 1x12x12 .npz (160 train, 40 test): bright top half vs bright bottom half."""
    return write_tiny_npz(tmp_path / "tiny.npz")


def write_tiny_npz(path, n_train=160, n_test=40, seed=0):
    rng = np.random.default_rng(seed)
    # two easy classes: bright top half vs bright bottom half, plus noise
    def make(n):
        y = rng.integers(0, 2, n)
        x = rng.integers(0, 60, (n, 1, 12, 12))
        x[y == 0, 0, :6] += 150
        x[y == 1, 0, 6:] += 150
        return x.astype(np.uint8), y.astype(np.int64)

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path


# -- tiny trained models -----------------------------------------------------------------------


class TinyCNN(nn.Module):
    """conv 8 - pool - fc: per-sample independent in eval mode (BatchNorm uses running stats)."""

    def __init__(self, k: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.1),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, k),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="session")
def digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as (1797, 1, 8, 8) floats in [0, 1] and (1797,) labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator, *,
         steps: int, batch: int) -> None:
    """``steps`` Adam steps (lr 1e-2) of cross-entropy on random batches drawn with ``g``."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="session")
def digits_model(digits_data) -> nn.Module:
    """An MLP with >= 95% train accuracy on digits; eval mode, seeded. Shared: do not mutate."""
    x, y = digits_data
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    _fit(model, x, y, g, steps=300, batch=256)
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_cnn(digits_data):
    """A factory: ``tiny_cnn()`` is a fresh (mutable) copy of a trained conv net with BatchNorm
    and Dropout, in eval mode; the training runs once per session."""
    x, y = digits_data
    g = torch.Generator().manual_seed(1)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        trained = TinyCNN()
        trained.train()  # dropout draws from the forked global RNG
        _fit(trained, x, y, g, steps=150, batch=128)
    state = {k: v.detach().clone() for k, v in trained.state_dict().items()}

    def fresh() -> nn.Module:
        model = TinyCNN()
        model.load_state_dict(state)
        return model.eval()

    return fresh


@pytest.fixture(scope="session")
def digits_mlp() -> nn.Module:
    """``create_model("mlp", 10, 1, image_size=8)`` after 5 epochs of SGD on the digits train
    split: about 0.1 s, 98% test accuracy. Shared: do not mutate."""
    from robust_ebm.data import load_dataset
    from robust_ebm.models import create_model

    tr = load_dataset("digits", "train")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("mlp", 10, 1, tr.mean, tr.std, image_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = tr.images.float() / 255, tr.labels
    for epoch in range(5):
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits_test():
    """A factory: ``digits_test(n=300)`` -> the first n digits test images in [0, 1], labels."""
    from robust_ebm.data import load_dataset

    te = load_dataset("digits", "test")

    def first(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
        return te.images[:n].float() / 255, te.labels[:n]

    return first


def run_main(capsys, *argv):
    """``robust-ebm ARGV`` in this process (arguments str()'d): (exit code, stdout, stderr)."""
    from robust_ebm.cli.main import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
