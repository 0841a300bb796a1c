"""Finding, loading, status and verification of datasets; the real Fashion-MNIST."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from robust_ebm.data import (
    catalog,
    dataset_status,
    list_datasets,
    load_dataset,
    verify_dataset,
)
from robust_ebm.errors import DataNotFoundError, UserError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_catalog_is_complete():
    assert list_datasets() == [
        "cifar10", "cifar100", "digits", "fashion_mnist", "imagenette", "mnist", "svhn",
        "tiny_imagenet",
    ]
    for info in catalog.CATALOG.values():
        assert len(info.mean) == len(info.std) == info.shape[0]
        for split, names in info.splits.items():
            assert split in info.sizes
            for n in names:
                f = info.file(n)
                assert f.url.endswith(n) and len(f.md5) == 32


def test_not_found_lists_every_place(isolated_data, monkeypatch):
    monkeypatch.setenv("ROBUST_EBM_DATA", str(isolated_data / "env"))
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", "train", data_dir=isolated_data / "explicit")
    msg = str(err.value)
    for place in ("explicit/mnist", "explicit", "env/mnist", "system/mnist", "xdg/robust_ebm"):
        assert place in msg
    assert "robust-ebm data download mnist" in msg and "\n" not in msg
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", data_dir=isolated_data)


def test_unknown_name_and_split(isolated_data):
    with pytest.raises(UserError, match="choose one of"):
        load_dataset("imagenet")
    with pytest.raises(UserError, match="splits"):
        load_dataset("digits", "val")


@pytest.mark.parametrize("layout", ["root", "root/name", "env", "cache", "system"])
def test_search_locations(isolated_data, formats, monkeypatch, layout):
    folders = {
        "root": isolated_data / "d",
        "root/name": isolated_data / "d" / "mnist",
        "env": isolated_data / "env" / "mnist",
        "cache": isolated_data / "xdg" / "robust_ebm" / "mnist",
        "system": isolated_data / "system" / "mnist",
    }
    arrays = formats.write_idx_dataset(folders[layout], gz=layout != "root")
    monkeypatch.setenv("ROBUST_EBM_DATA", str(isolated_data / "env"))
    data_dir = isolated_data / "d" if layout.startswith("root") else None
    ds = load_dataset("mnist", "test", data_dir=data_dir)
    assert len(ds) == 6 and ds.name == "mnist" and ds.num_classes == 10
    assert np.array_equal(ds.images[:, 0].numpy(), arrays["t10k"][0])
    status = dataset_status("mnist", data_dir=data_dir)
    assert status["found"] and status["splits"]["train"]["found"]
    assert str(folders[layout]) in status["splits"]["train"]["paths"][0]
    assert status["location"] == str(folders[layout])


def test_explicit_dir_wins(isolated_data, formats, monkeypatch):
    formats.write_idx_dataset(isolated_data / "explicit", n_test=3)
    formats.write_idx_dataset(isolated_data / "env", n_test=5)
    monkeypatch.setenv("ROBUST_EBM_DATA", str(isolated_data / "env"))
    # fixture files under official names fail the checksum (tests/test_bad_inputs.py checks
    # that refusal); this test is about the search order only
    assert len(load_dataset("fashion_mnist", "test", isolated_data / "explicit", verify=False)) == 3
    assert len(load_dataset("fashion_mnist", "test", verify=False)) == 5


@pytest.mark.parametrize("as_tar", [True, False])
def test_cifar_through_load_dataset(isolated_data, formats, as_tar):
    formats.write_cifar10(isolated_data / "cifar10", as_tar=as_tar, n=3)
    ds = load_dataset("cifar10", "train", data_dir=isolated_data, verify=False)  # fixture tar
    assert len(ds) == 15 and ds.shape == (3, 32, 32) and ds.mean == catalog.CATALOG["cifar10"].mean
    report = verify_dataset("cifar10", data_dir=isolated_data)
    assert report["splits"]["train"] == {"expected": 50000, "count": 15, "error": "", "ok": False}
    assert not report["ok"]
    file_ok = report["files"][0]["ok"]
    assert file_ok is (False if as_tar else None)  # fixture tar has another md5; folder: none


def test_verify_accepts_official_or_content_md5(isolated_data, formats, monkeypatch):
    folder = isolated_data / "fm"
    formats.write_idx_dataset(folder, n_train=20, n_test=10)
    # pretend the catalog lists our fixture: official gz md5 for train, content md5 for test
    info = catalog.CATALOG["fashion_mnist"]
    files = []
    for f in info.files:
        path = folder / f.filename
        if f.filename.startswith("train"):
            f = catalog.RemoteFile(f.filename, f.url, hashlib.md5(path.read_bytes()).hexdigest())
        else:
            content = hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest()
            f = catalog.RemoteFile(f.filename, f.url, "0" * 32, content)
        files.append(f)
    fake = catalog.DatasetInfo(
        **{**info.__dict__, "files": tuple(files), "sizes": {"train": 20, "test": 10}}
    )
    monkeypatch.setitem(catalog.CATALOG, "fashion_mnist", fake)
    report = verify_dataset("fashion_mnist", data_dir=folder)
    assert report["ok"], report
    notes = [r["note"] for r in report["files"]]
    assert notes.count("official md5") == 2 and len(notes) == 4
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(formats.idx_bytes(np.full(10, 9, np.uint8)))
    )
    assert not verify_dataset("fashion_mnist", data_dir=folder)["ok"]


def test_npz_path_as_name(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", x_train=x, y_train=np.arange(6) % 3)
    ds = load_dataset(str(tmp_path / "mine.npz"))
    assert ds.name == "mine" and ds.shape == (3, 8, 8) and ds.num_classes == 3
    assert len(ds.mean) == 3 and all(s > 0 for s in ds.std)


def test_digits_needs_no_files(isolated_data):
    ds = load_dataset("digits", "test")
    assert len(ds) == 359 and ds.shape == (1, 8, 8) and dataset_status("digits")["found"]
    assert verify_dataset("digits")["ok"]


@pytest.mark.skipif(
    not FASHION.is_dir(), reason=f"{FASHION} absent (apt-get install dataset-fashion-mnist)"
)
def test_real_fashion_mnist():
    train = load_dataset("fashion_mnist", "train")
    test = load_dataset("fashion_mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.shape == (1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    mean = train.images.double().mean().item() / 255
    assert abs(mean - train.mean[0]) < 1e-3
    report = verify_dataset("fashion_mnist")
    assert report["ok"] and all(f["ok"] for f in report["files"])
