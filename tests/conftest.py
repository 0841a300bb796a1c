"""Shared test helpers: writers of tiny dataset files in the official formats."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest


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
