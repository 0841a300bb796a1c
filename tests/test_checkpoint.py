"""Safe checkpoints: round trip, atomic writes, malicious pickles, truncation."""

import os
import pickle

import pytest
import torch

from robust_ebm.checkpoint import load_model, read_metadata, safe_torch_load, save_model
from robust_ebm.errors import CorruptDataError, UnsafeCheckpointError, UserError
from robust_ebm.models import create_model


def _model():
    torch.manual_seed(0)
    m = create_model("small_cnn", 10, 1, mean=[0.3], std=[0.4])
    # make BN statistics non-trivial so buffers matter
    m.train()
    with torch.no_grad():
        m(torch.rand(16, 1, 28, 28))
    return m.eval()


def test_round_trip_identical_outputs(tmp_path):
    m = _model()
    path = save_model(tmp_path / "m.safetensors", m, dataset="fashion_mnist", epoch=3,
                      metrics={"acc": 0.9})
    meta = read_metadata(path)
    assert meta["arch"]["name"] == "small_cnn" and meta["arch"]["mean"] == [0.3]
    assert meta["dataset"] == "fashion_mnist" and meta["epoch"] == 3
    assert meta["versions"]["torch"] == torch.__version__
    m2 = load_model(path)
    assert not m2.training
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left


def test_round_trip_wide_resnet_kwargs(tmp_path):
    m = create_model("wide_resnet", 10, 3, depth=10, widen_factor=1).eval()
    m2 = load_model(save_model(tmp_path / "w.safetensors", m))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_overwrite_is_atomic_on_failure(tmp_path, monkeypatch):
    m = _model()
    path = save_model(tmp_path / "m.safetensors", m, epoch=1)
    before = path.read_bytes()
    import robust_ebm.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        save_model(path, m, epoch=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"weight": _Evil(marker)}, fh)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        safe_torch_load(evil)
    with pytest.raises(UnsafeCheckpointError):
        load_model(evil, name="small_cnn", num_classes=10, in_channels=1)
    zipped = tmp_path / "evil_zip.pt"  # the torch.save (zip) container
    torch.save({"weight": _Evil(marker)}, zipped)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        safe_torch_load(zipped)
    assert not marker.exists()


def test_plain_pt_state_dict_loads_with_architecture(tmp_path):
    m = _model()
    pt = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in m.net.state_dict().items()}}, pt)
    with pytest.raises(UserError, match="say which architecture"):
        load_model(pt)
    m2 = load_model(pt, name="small_cnn", num_classes=10, in_channels=1, mean=[0.3], std=[0.4])
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_truncated_checkpoint(tmp_path):
    path = save_model(tmp_path / "m.safetensors", _model())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDataError, match="m.safetensors"):
        load_model(path)
    pt = tmp_path / "t.pt"
    torch.save({"w": torch.zeros(1000)}, pt)
    pt.write_bytes(pt.read_bytes()[:200])
    with pytest.raises(CorruptDataError, match="t.pt"):
        safe_torch_load(pt)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nope.safetensors")


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    from robust_ebm.io import atomic_write_text

    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "hello")
    finally:
        os.umask(umask)
    assert path.read_text() == "hello"
    assert (path.stat().st_mode & 0o777) == 0o644
