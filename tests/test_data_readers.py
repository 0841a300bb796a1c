"""Readers of the official formats, on tiny fixture files written in those formats."""

from __future__ import annotations

import gzip
import io
import os
import pickle

import numpy as np
import pytest
import torch

from robust_ebm.data.readers import (
    _RestrictedUnpickler,
    read_cifar,
    read_digits,
    read_idx,
    read_idx_split,
    read_npz,
    read_svhn,
    restricted_unpickle,
)
from robust_ebm.errors import CorruptDataError, UserError


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, formats, gz):
    arrays = formats.write_idx_dataset(tmp_path, gz=gz)
    sfx = ".gz" if gz else ""
    x, y = read_idx_split(
        tmp_path / f"train-images-idx3-ubyte{sfx}", tmp_path / f"train-labels-idx1-ubyte{sfx}"
    )
    assert x.dtype == torch.uint8 and x.shape == (12, 1, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (12,)
    assert np.array_equal(x[:, 0].numpy(), arrays["train"][0])
    assert np.array_equal(y.numpy(), arrays["train"][1])


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx_names_the_file(tmp_path, formats, gz):
    data = formats.idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-10]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte"):
        read_idx(path)


def test_truncated_gzip_stream(tmp_path, formats):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(formats.idx_bytes(np.ones((5, 28, 28), np.uint8)))[:-20])
    with pytest.raises(CorruptDataError, match="t10k-images-idx3-ubyte.gz"):
        read_idx(path)


def test_idx_bad_magic_and_padding(tmp_path, formats):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(CorruptDataError, match="magic"):
        read_idx(bad)
    padded = tmp_path / "padded"
    padded.write_bytes(formats.idx_bytes(np.zeros(3, np.uint8)) + b"\x00")
    with pytest.raises(CorruptDataError, match="padded"):
        read_idx(padded)


def test_idx_count_mismatch(tmp_path, formats):
    formats.write_idx(tmp_path / "x.gz", np.zeros((4, 28, 28), np.uint8))
    formats.write_idx(tmp_path / "y.gz", np.zeros(3, np.uint8))
    with pytest.raises(CorruptDataError, match="3 labels"):
        read_idx_split(tmp_path / "x.gz", tmp_path / "y.gz")


@pytest.mark.parametrize("as_tar", [True, False])
def test_cifar10(tmp_path, formats, as_tar):
    arrays = formats.write_cifar10(tmp_path, as_tar=as_tar, n=4)
    source = tmp_path / ("cifar-10-python.tar.gz" if as_tar else "cifar-10-batches-py")
    x, y = read_cifar(source, "cifar10", "train")
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    first = arrays["data_batch_1"][0][0]  # 3072 bytes: R plane, G plane, B plane
    assert np.array_equal(x[0].numpy(), first.reshape(3, 32, 32))
    assert np.array_equal(x[0, 1, 0].numpy(), first[1024:1056])  # first row of green
    assert y[-4:].tolist() == arrays["data_batch_5"][1]
    xt, yt = read_cifar(source, "cifar10", "test")
    assert xt.shape == (4, 3, 32, 32) and yt.tolist() == arrays["test_batch"][1]
    assert (tmp_path / "cifar-10-batches-py").is_dir() != as_tar  # nothing extracted


@pytest.mark.parametrize("as_tar", [True, False])
def test_cifar100_fine_labels(tmp_path, formats, as_tar):
    blobs, truth = {}, {}
    for i, split in enumerate(("train", "test")):
        blobs[split], _x, y = formats.cifar_batch(6, seed=i, label_key=b"fine_labels", k=100)
        truth[split] = y
    formats.write_members(tmp_path, "cifar-100-python", "cifar-100-python.tar.gz", blobs, as_tar)
    source = tmp_path / ("cifar-100-python.tar.gz" if as_tar else "cifar-100-python")
    for split in ("train", "test"):
        _, y = read_cifar(source, "cifar100", split)
        assert y.tolist() == truth[split]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("as_tar", [True, False])
def test_malicious_cifar_pickle_is_refused(tmp_path, formats, as_tar):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}, protocol=4)
    blobs = {f"data_batch_{i}": evil for i in range(1, 6)}
    formats.write_members(tmp_path, "cifar-10-batches-py", "cifar-10-python.tar.gz", blobs, as_tar)
    source = tmp_path / ("cifar-10-python.tar.gz" if as_tar else "cifar-10-batches-py")
    with pytest.raises(CorruptDataError, match=r"refused to unpickle global (os|posix)\.system"):
        read_cifar(source, "cifar10", "train")
    assert not marker.exists()


def test_restricted_unpickle_allows_only_arrays():
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    out = restricted_unpickle(pickle.dumps({b"a": arr, b"b": [1, b"x"]}, protocol=4))
    assert np.array_equal(out[b"a"], arr) and out[b"b"] == [1, b"x"]
    # the official (Python 2) batches name numpy 1's module; numpy 2 pickles name numpy._core
    unpickler = _RestrictedUnpickler(io.BytesIO(b""), encoding="bytes")
    assert unpickler.find_class("numpy.core.multiarray", "_reconstruct") is (
        unpickler.find_class("numpy._core.multiarray", "_reconstruct")
    )
    for obj in (eval, collections_ordered_dict()):
        with pytest.raises(CorruptDataError, match="refused"):
            restricted_unpickle(pickle.dumps(obj))
    with pytest.raises(CorruptDataError, match="not a valid pickle"):
        restricted_unpickle(pickle.dumps({b"a": arr})[:-7])


def collections_ordered_dict():
    from collections import OrderedDict

    return OrderedDict(a=1)


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3, 7), dtype=np.uint8)  # H, W, C, N as in the .mat
    y = np.array([[10], [1], [2], [10], [9], [5], [3]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    images, labels = read_svhn(tmp_path / "train_32x32.mat")
    assert images.shape == (7, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 2, 0, 9, 5, 3]
    assert np.array_equal(images[4].numpy(), x[..., 4].transpose(2, 0, 1))


@pytest.mark.parametrize(
    "layout, shape",
    [("NHW", (5, 9, 7)), ("NHWC", (5, 9, 7, 3)), ("NCHW", (5, 3, 9, 7)), ("NHWC1", (5, 9, 7, 1))],
)
def test_npz_layouts(tmp_path, layout, shape):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    y = np.array([0, 1, 2, 3, 1])
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:2], y_test=np.array([4, 0]))
    images, labels, k = read_npz(tmp_path / "d.npz", "train")
    c = 1 if layout in ("NHW", "NHWC1") else 3
    assert images.shape == (5, c, 9, 7) and k == 5 and labels.tolist() == y.tolist()
    if layout == "NHWC":
        assert np.array_equal(images[2, 1].numpy(), x[2, :, :, 1])
    images_t, _, _ = read_npz(tmp_path / "d.npz", "test")
    assert len(images_t) == 2


def test_npz_images_labels_and_errors(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((3, 4, 4), np.uint8), labels=[0, 1, 1])
    images, _labels, k = read_npz(tmp_path / "a.npz", "test")
    assert images.shape == (3, 1, 4, 4) and k == 2
    np.savez(tmp_path / "f.npz", images=np.zeros((3, 4, 4), np.float32), labels=[0, 1, 1])
    with pytest.raises(UserError, match="uint8"):
        read_npz(tmp_path / "f.npz")
    np.savez(tmp_path / "k.npz", pixels=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(UserError, match="images/labels"):
        read_npz(tmp_path / "k.npz")


def test_digits_split_is_deterministic_and_stratified():
    x_tr, y_tr = read_digits("train")
    x_te, y_te = read_digits("test")
    assert x_tr.shape == (1438, 1, 8, 8) and x_te.shape == (359, 1, 8, 8)
    assert x_tr.dtype == torch.uint8 and int(x_tr.max()) == 255 and int(x_tr.min()) == 0
    assert torch.equal(read_digits("test")[0], x_te)
    share = torch.bincount(y_te, minlength=10).double() / torch.bincount(y_tr, minlength=10)
    assert float(share.min()) > 0.22 and float(share.max()) < 0.28  # ~20/80 in every class
