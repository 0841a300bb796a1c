"""Downloads against a real HTTP server on 127.0.0.1 serving official-format fixture files."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import pytest

from robust_ebm.data import catalog, download_dataset, load_dataset
from robust_ebm.errors import CorruptDataError, UserError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path / 'www'``; yields (folder, base_url); stopped after the test."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{httpd.server_address[1]}/files"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _serve_mnist(www, formats, monkeypatch):
    """Write MNIST idx.gz fixtures under www/files and make the catalog expect their md5."""
    formats.write_idx_dataset(www / "files", n_train=10, n_test=4)
    info = catalog.CATALOG["mnist"]
    files = tuple(
        catalog.RemoteFile(
            f.filename, f.url, hashlib.md5((www / "files" / f.filename).read_bytes()).hexdigest()
        )
        for f in info.files
    )
    monkeypatch.setitem(
        catalog.CATALOG, "mnist", catalog.DatasetInfo(**{**info.__dict__, "files": files})
    )
    return files


def test_download_verifies_and_loads(server, formats, monkeypatch, tmp_path, isolated_data):
    www, base = server
    _serve_mnist(www, formats, monkeypatch)
    seen = []
    dest = tmp_path / "dest"
    paths = download_dataset(
        "mnist",
        dest=dest,
        base_url=base,
        progress=lambda name, done, total: seen.append((name, done, total)),
    )
    assert [p.name for p in paths] == [f.filename for f in catalog.CATALOG["mnist"].files]
    assert all(p.read_bytes() == (www / "files" / p.name).read_bytes() for p in paths)
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in paths)  # no temp left
    assert seen and seen[-1][1] == seen[-1][2]
    assert len(load_dataset("mnist", "test", data_dir=dest)) == 4
    # a second call finds verified copies and does not fetch again
    (www / "files" / "train-images-idx3-ubyte.gz").unlink()
    assert download_dataset("mnist", dest=dest, base_url=base) == paths


def test_default_destination_is_the_cache(server, formats, monkeypatch, isolated_data):
    www, base = server
    _serve_mnist(www, formats, monkeypatch)
    download_dataset("mnist", base_url=base)
    assert (isolated_data / "xdg" / "robust_ebm" / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()
    assert len(load_dataset("mnist", "train")) == 10  # found through the cache


def test_wrong_checksum_leaves_nothing(server, formats, monkeypatch, tmp_path):
    www, base = server
    files = _serve_mnist(www, formats, monkeypatch)
    bad = catalog.RemoteFile(files[0].filename, files[0].url, "0" * 32)
    info = catalog.CATALOG["mnist"]
    monkeypatch.setitem(
        catalog.CATALOG,
        "mnist",
        catalog.DatasetInfo(**{**info.__dict__, "files": (bad,) + files[1:]}),
    )
    dest = tmp_path / "dest"
    with pytest.raises(CorruptDataError) as err:
        download_dataset("mnist", dest=dest, base_url=base)
    msg = str(err.value)
    assert files[0].filename in msg and "0" * 32 in msg and files[0].md5 in msg
    assert list(dest.iterdir()) == []


def test_missing_file_on_server(server, tmp_path):
    _, base = server
    with pytest.raises(UserError, match="cannot download"):
        download_dataset("svhn", dest=tmp_path / "d", base_url=base, splits=("test",))
    assert list((tmp_path / "d").iterdir()) == []


def test_digits_needs_no_download(tmp_path):
    assert download_dataset("digits", dest=tmp_path) == []
