"""Tiny-ImageNet-200 in the .npz repack the ECCV 2024 code reads: catalog entry, reader, lookup,
checksum verification (on small files written here in that layout)."""

from __future__ import annotations

import numpy as np
import pytest

from robust_ebm.data import get_info, load_dataset, read_tiny_imagenet, verify_dataset
from robust_ebm.errors import CorruptDataError


def _write(folder, n_train=6, n_val=4, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in (("train.npz", n_train), ("val.npz", n_val)):
        x = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)  # NHWC, as the repack
        y = rng.integers(0, 200, n).astype(np.int64)
        np.savez(folder / name, image=x, label=y)
        out[name] = (x, y)
    return out


def test_catalog_entry_has_the_published_files_and_checksums():
    info = get_info("tiny-imagenet")
    assert (info.num_classes, info.shape, info.sizes) == (200, (3, 64, 64),
                                                           {"train": 100000, "test": 10000})
    assert {f.filename: f.md5 for f in info.files} == {
        "train.npz": "db414016436353892fdf00cb30b9ee57",
        "val.npz": "7762694b6217fec8ba1a7be3c20ef218",
    }


def test_load_both_splits_from_a_data_dir(tmp_path):
    arrays = _write(tmp_path / "tiny_imagenet")
    for split, name in (("train", "train.npz"), ("test", "val.npz")):
        # fixture files carry the official names but not the official bytes
        ds = load_dataset("tiny_imagenet", split, data_dir=tmp_path, verify=False)
        x, y = arrays[name]
        assert ds.images.shape == (len(x), 3, 64, 64) and ds.num_classes == 200
        np.testing.assert_array_equal(ds.images.numpy(), x.transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(ds.labels.numpy(), y)


def test_verify_flags_files_that_are_not_the_published_ones(tmp_path):
    _write(tmp_path / "tiny_imagenet")
    with pytest.raises(CorruptDataError, match="checksum mismatch"):  # refused on every load
        load_dataset("tiny_imagenet", "train", data_dir=tmp_path)
    report = verify_dataset("tiny_imagenet", data_dir=tmp_path)
    assert report["ok"] is False
    assert all(f["note"] == "checksum mismatch" for f in report["files"])
    assert report["splits"]["train"]["count"] == 6 and report["splits"]["train"]["expected"] == 100000


@pytest.mark.parametrize("bad, match", [
    ({"images": np.zeros((2, 64, 64, 3), np.uint8), "labels": np.zeros(2, np.int64)}, "keys"),
    ({"image": np.zeros((2, 64, 64, 3), np.uint8), "label": np.zeros(3, np.int64)}, "labels"),
    ({"image": np.zeros((2, 64, 64, 3), np.uint8), "label": np.array([0, 200])}, r"\[0, 200\)"),
])
def test_malformed_files_raise_one_line(tmp_path, bad, match):
    path = tmp_path / "train.npz"
    np.savez(path, **bad)
    with pytest.raises(CorruptDataError, match=match):
        read_tiny_imagenet(path)
