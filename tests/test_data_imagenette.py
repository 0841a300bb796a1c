"""Imagenette from fast.ai's archive layout: catalog entry, class order, geometry, the decoded
cache, corrupted archives and missing splits (on small archives written here; no network)."""

from __future__ import annotations

import contextlib
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from robust_ebm.data import get_info, load_dataset, read_imagenette
from robust_ebm.data import imagenette as imagenette_mod
from robust_ebm.data.imagenette import center_crop_box, decode_image
from robust_ebm.errors import CorruptDataError, DataNotFoundError

ROOT = "imagenette2-160"
# created in this (unsorted) order; labels must follow the sorted WordNet ids
WNIDS = ("n03000684", "n01440764", "n02102040")


def _jpeg(value: int, size=(213, 160)) -> bytes:
    """A solid-colour JPEG whose red channel is ``value`` (green/blue fixed)."""
    buf = io.BytesIO()
    Image.new("RGB", size, (value, 100, 30)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _tree(n_train=(2, 3, 1), n_val=(1, 1, 2), splits=("train", "val")):
    """{member name: bytes} of an Imagenette-like archive; red channel = 20 * (1 + index)."""
    files: dict[str, bytes] = {f"{ROOT}/noisy_imagenette.csv": b"path,noisy_labels_0\n"}
    counts = {"train": n_train, "val": n_val}
    v = 0
    for split in splits:
        for wnid, n in zip(WNIDS, counts[split]):
            for i in reversed(range(n)):  # written out of order; read sorted by name
                v += 1
                files[f"{ROOT}/{split}/{wnid}/{wnid}_{i}.JPEG"] = _jpeg(20 * v % 250)
    return files


def _write_tgz(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _expected(files, folder):
    """(red value, label) per image in ImageFolder order: sorted wnids, then sorted names."""
    rows = []
    for label, wnid in enumerate(sorted(WNIDS)):
        prefix = f"{ROOT}/{folder}/{wnid}/"
        for name in sorted(n for n in files if n.startswith(prefix)):
            red = np.asarray(Image.open(io.BytesIO(files[name])).convert("RGB"))[..., 0].mean()
            rows.append((red, label))
    return rows


def test_catalog_entry_is_the_160px_archive():
    info = get_info("imagenette")
    assert (info.num_classes, info.shape, info.sizes) == (10, (3, 150, 150),
                                                           {"train": 9469, "test": 3925})
    (f,) = info.files
    assert f.filename == "imagenette2-160.tgz" and f.md5 == "e793b78cc4c9e9a4ccc0c1155377a412"
    assert f.url == "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz"


@pytest.mark.parametrize("layout", ["tgz", "folders"])
def test_labels_order_and_shape(isolated_data, layout):
    files = _tree()
    d = isolated_data / "data" / "imagenette"
    d.mkdir(parents=True)
    if layout == "tgz":
        _write_tgz(d / "imagenette2-160.tgz", files)
    else:
        for name, data in files.items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)
    for split, folder in (("train", "train"), ("test", "val")):
        ds = load_dataset("imagenette", split, data_dir=isolated_data / "data", verify=False)
        expected = _expected(files, folder)
        assert tuple(ds.images.shape) == (len(expected), 3, 150, 150)
        assert ds.images.dtype.is_floating_point is False and ds.num_classes == 10
        assert ds.labels.tolist() == [label for _, label in expected]
        # each image is its own solid colour: the red channel identifies it
        red = ds.images[:, 0].double().mean(dim=(1, 2)).numpy()
        np.testing.assert_allclose(red, [r for r, _ in expected], atol=0.5)


def test_center_crop_matches_the_published_rounding():
    # CenterCrop offsets: int(round((side - 150) / 2)); round(31.5) = 32, round(0.5) = 0
    assert center_crop_box(213, 160, 150) == (32, 5, 182, 155)
    assert center_crop_box(151, 160, 150) == (0, 5, 150, 155)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (160, 213, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")  # lossless: the crop must be exact
    out = decode_image(buf.getvalue(), "x.png")
    np.testing.assert_array_equal(out, arr[5:155, 32:182].transpose(2, 0, 1))


def test_larger_archives_are_resized_to_a_160px_shorter_side_first():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (320, 426, 3), dtype=np.uint8)  # a 320 px archive's image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    # Resize(160): longer side int(160 * 426 / 320) = 213, bilinear; then the 150 crop
    ref = Image.fromarray(arr).resize((213, 160), Image.Resampling.BILINEAR)
    expected = np.asarray(ref)[5:155, 32:182].transpose(2, 0, 1)
    np.testing.assert_array_equal(decode_image(buf.getvalue(), "x.png"), expected)
    gray = io.BytesIO()
    Image.new("L", (160, 170), 77).save(gray, "JPEG")
    out = decode_image(gray.getvalue(), "g.JPEG")  # grayscale JPEGs become RGB
    assert out.shape == (3, 150, 150) and np.abs(out.astype(int) - 77).max() <= 1


def test_decoded_split_is_cached_and_refreshed_when_the_archive_changes(isolated_data,
                                                                         monkeypatch):
    d = isolated_data / "data" / "imagenette"
    d.mkdir(parents=True)
    tgz = _write_tgz(d / "imagenette2-160.tgz", _tree())
    first = load_dataset("imagenette", "train", data_dir=d, verify=False)
    cached = list((isolated_data / "xdg" / "robust_ebm" / "imagenette").glob("*.safetensors"))
    assert len(cached) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    with monkeypatch.context() as patch:  # (the fixture's own patches stay)
        patch.setattr(imagenette_mod, "read_imagenette", no_decoding)
        second = load_dataset("imagenette", "train", data_dir=d, verify=False)
        assert (second.images == first.images).all() and (second.labels == first.labels).all()
        # a different archive at the same path is decoded again, never served from the old cache
        _write_tgz(tgz, _tree(n_train=(1, 1, 1)))
        with pytest.raises(AssertionError, match="decoded again"):
            load_dataset("imagenette", "train", data_dir=d, verify=False)
    assert len(load_dataset("imagenette", "train", data_dir=d, verify=False)) == 3
    assert list(cached[0].parent.glob("*.safetensors")) == cached  # replaced, not added to
    # a damaged cache file is decoded again and replaced, not trusted
    cached[0].write_bytes(b"garbage")
    assert len(load_dataset("imagenette", "train", data_dir=d, verify=False)) == 3
    assert cached[0].stat().st_size > 100


def test_an_unofficial_archive_is_refused_by_its_checksum(isolated_data):
    d = isolated_data / "data" / "imagenette"
    d.mkdir(parents=True)
    _write_tgz(d / "imagenette2-160.tgz", _tree())
    with pytest.raises(CorruptDataError, match="checksum mismatch") as err:
        load_dataset("imagenette", "train", data_dir=d)
    assert "\n" not in str(err.value) and "imagenette2-160.tgz" in str(err.value)


def test_download_refuses_a_file_with_the_wrong_md5(isolated_data):
    from robust_ebm.cli.main import main

    mirror = isolated_data / "mirror"
    mirror.mkdir()
    _write_tgz(mirror / "imagenette2-160.tgz", _tree())
    dest = isolated_data / "dest"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["data", "download", "imagenette", "--data-dir", str(dest),
                     "--base-url", mirror.as_uri()])
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1 and "does not match the official" in lines[0], lines
    assert not (dest / "imagenette2-160.tgz").exists()  # nothing partial left


def test_truncated_archive_and_undecodable_image_raise_one_line(tmp_path):
    good = _write_tgz(tmp_path / "good.tgz", _tree())
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CorruptDataError, match="truncated or damaged") as err:
        read_imagenette(cut, "train")
    assert "\n" not in str(err.value)
    files = _tree() | {f"{ROOT}/train/{WNIDS[0]}/broken.JPEG": b"not a jpeg"}
    with pytest.raises(CorruptDataError, match="broken.JPEG: cannot decode"):
        read_imagenette(_write_tgz(tmp_path / "bad.tgz", files), "train")


def test_a_missing_split_is_named(isolated_data, tmp_path):
    only_train = _write_tgz(tmp_path / "imagenette2-160.tgz", _tree(splits=("train",)))
    with pytest.raises(CorruptDataError, match=r"val/<wnid>/ \(the test split\)"):
        read_imagenette(only_train, "test")
    # extracted folders without val/: the test split is not found, and the message says so
    d = isolated_data / "data" / "imagenette"
    for name, data in _tree(splits=("train",)).items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    assert len(load_dataset("imagenette", "train", data_dir=d, verify=False)) == 6
    with pytest.raises(DataNotFoundError, match="test split"):
        load_dataset("imagenette", "test", data_dir=d, verify=False)
