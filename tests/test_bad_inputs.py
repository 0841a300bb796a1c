"""Bad inputs over every subcommand and the public API: one line, exit 2, nothing left behind.

Every case runs ``robust_ebm.cli.main(argv)`` in-process (stderr captured) on a tiny 8x8 ``.npz``
dataset and a random ``mlp`` checkpoint made in a fixture, and asserts: exit code 2, no
"Traceback", exactly one line on stderr, and no ``--out`` folder left behind. API cases assert
a :class:`~robust_ebm.errors.UserError` (never a silent result).

Distinct bad inputs, by category (``test_count_is_honest`` recomputes the parametrised ones):

* numeric flags of every subcommand x malformed values (nan, inf, -inf, text, empty,
  1e308, negative) ....................................................... 229
* ``--set`` keys x mistyped, out-of-range or non-finite values, unknown names/choices . 149
* the same values written into a TOML file (every 4th) ................... 38
* damaged files as ``--checkpoint`` (empty, text, pickle, code-running .pt pickle,
  truncations, bit flips, malformed metadata, NaN weights, misfit tensors, folder,
  dangling link) ......................................................... 21
* bad ``.npz`` datasets (empty file, no arrays, zero samples, object arrays, float images,
  float labels, negative or huge labels, label count != image count, 5-D, wrong keys,
  bit flips, a non-scalar num_classes, labels beyond the model) ........... 14
* bad ``detector.json`` files ............................................. 8
* bad ``--out`` (a file, a dangling link, under a file, another run's folder, another
  training run's folder) ................................................. 5
* public API: attack budgets/steps/gamma, SGLD, detector temperature, TrainConfig fields,
  float or out-of-range labels, out-of-range/NaN/int images, uint8 into an attack,
  apgd_t on a one-class model, uint8 images into the model ................. 60
* single cases: closest-key hint, deeply nested TOML, another dataset, another image size,
  a file as --data-dir, a tampered Fashion-MNIST file, ``data verify`` with nothing matching,
  3 malformed detector objects, a second run without --overwrite, a concurrent run,
  full disk, read-only disk, bit-flipped state.pt, a file as --stats-dir, an internal
  error with and without --debug, an mlp for 28x28 images trained on 8x8,
  more samples than memory ............................................... 19
* failures of the environment: 6 errnos mapped to their names, 3 broken downloads
  (interrupted, disk full, refused) ....................................... 9
* hypothesis: random identifiers as unknown ``[train]`` keys and random bytes as a
  checkpoint ............................................................. up to 40 + 40

Total: 524 parametrised + 19 single + 9 environment = 552 fixed bad inputs, plus up to 80
generated ones.
SIGKILL-and-rerun checks (train, evaluate, attack, energy, detect calibrate, generate; 4 kill
moments each) live in
``test_kill_and_rerun`` (marked slow), the bit-flipped state.pt in ``test_bitflipped_state_refused``
(slow); without them the module runs in about a minute on one CPU core.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robust_ebm.checkpoint import save_model
from robust_ebm.cli.main import main
from robust_ebm.errors import UserError
from robust_ebm.models import create_model

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---- fixture: tiny data and a tiny model -------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 1, 8, 8), dtype=np.uint8)
    y = (np.arange(30) % 3).astype(np.int64)
    np.savez(root / "tiny.npz", x_train=x, y_train=y, x_test=x[:12], y_test=y[:12])
    torch.manual_seed(0)
    model = create_model("mlp", 3, 1, image_size=8, hidden=8)
    save_model(root / "m.safetensors", model, dataset="tiny", input_shape=[1, 8, 8])
    return root


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    finally:
        os.chdir(old)
    return code, err.getvalue()


def assert_refused(argv: list[str], cwd: Path, out: str | None = "o") -> str:
    """Exit 2, no traceback, one line on stderr, and no --out folder left."""
    if out is not None and "--out" not in argv and argv[0] not in ("data",):
        argv = [*argv, "--out", out]
    code, err = run_cli(argv, cwd)
    assert "Traceback" not in err, err
    assert code == 2, (argv, code, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("robust-ebm: "), err
    if out is not None and "--out" in argv:
        target = cwd / argv[argv.index("--out") + 1]
        assert not target.is_dir() or target.name.startswith("keep"), f"{target} left behind"
    return err


# ---- 1. numeric flags x malformed values ---------------------------------------------------

BASE = {
    "evaluate": ["evaluate", "--checkpoint", "m.safetensors", "--dataset", "tiny.npz"],
    "attack": ["attack", "--checkpoint", "m.safetensors", "--dataset", "tiny.npz", "--eps", "0.1"],
    "energy": ["energy", "--checkpoint", "m.safetensors", "--dataset", "tiny.npz", "--eps", "0.1"],
    "calibrate": ["detect", "calibrate", "--checkpoint", "m.safetensors", "--dataset", "tiny.npz",
                  "--eps", "0.1"],
    "generate": ["generate", "--checkpoint", "m.safetensors", "--dataset", "tiny.npz"],
    "train": ["train", "--dataset", "tiny.npz", "--model", "mlp", "--val-size", "0",
              "--set", "model.image_size=8", "--set", "model.hidden=8"],
}
FLAGS = {
    "evaluate": ["--n", "--batch-size", "--seed"],
    "attack": ["--eps", "--n", "--steps", "--batch-size", "--start", "--seed"],
    "energy": ["--eps", "--n", "--steps", "--he-gamma", "--batch-size"],
    "calibrate": ["--eps", "--n", "--steps", "--batch-size"],
    "generate": ["--steps", "--step-size", "--momentum", "--noise-std", "--n-per-class",
                 "--batch-size", "--pca-sigma", "--noise-init-std", "--real-n"],
    "train": ["--epochs", "--batch-size", "--lr", "--eps", "--steps", "--eval-n"],
}
BAD_VALUES = ["nan", "inf", "-inf", "abc", "", "1e308", "-1"]
# values that are valid for some flags (e.g. -1 for --he-gamma, which may be negative)
_VALID_FOR = {("--he-gamma", "-1"), ("--start", "-1")}
FLAG_CASES = [(cmd, flag, v) for cmd, flags in FLAGS.items() for flag in flags
              for v in BAD_VALUES if (flag, v) not in _VALID_FOR]


@pytest.mark.parametrize("cmd,flag,value", FLAG_CASES)
def test_bad_flag_values(world, cmd, flag, value):
    assert_refused([*BASE[cmd], f"{flag}={value}"], world)


# ---- 2. --set and TOML: name, type and range --------------------------------------------

_INT_KEYS = ["train.epochs", "train.batch_size", "train.eval_n", "train.eval_steps",
             "train.save_every", "train.crop_padding", "data.val_size", "data.train_subset"]
_FLOAT_KEYS = ["train.lr", "train.momentum", "train.weight_decay", "train.gamma",
               "train.pct_start", "objective.eps"]
_BOOL_KEYS = ["train.flip", "train.deterministic", "train.channels_last", "train.tensorboard"]
SET_CASES = (
    [(k, v) for k in _INT_KEYS for v in ["1.5", '"abc"', "true", "-5", "nan", "[1]", "{a=1}"]]
    + [(k, v) for k in _FLOAT_KEYS for v in ["nan", "inf", "-inf", '"x"', "true", "-1", "[0.1]"]]
    + [(k, v) for k in _BOOL_KEYS for v in ['"false"', "no", "1", "0", '"true"', "yes", "[true]"]]
    + [("train.schedule", v) for v in ['"cosin"', "1", "true", '"ONECYCLE"']]
    + [("train.precision", v) for v in ['"fp8"', "16", '"bf"']]
    + [("model.name", v) for v in ['"resnet"', "3", '"small-cnn"']]
    + [("objective.name", v) for v in ['"trade"', "0", '"pgd"']]
    + [("model.hidden", v) for v in ['"big"', "1.5", "true"]]
    + [("train.seed", v) for v in ["-1", "1.5", '"s"', "99999999999"]]
    + [("train.milestones", v) for v in ["[1.5]", '["a"]', "0.5"]]
)


@pytest.mark.parametrize("key,value", SET_CASES)
def test_bad_set_values(world, key, value):
    model = ["--set", "model.name=\"mlp\""] if not key.startswith("model.") else []
    err = assert_refused(["train", "--dataset", "tiny.npz", *model, "--set", f"{key}={value}"],
                         world)
    assert key in err or key.split(".")[1] in err, err


@pytest.mark.parametrize("key,value", SET_CASES[::4])
def test_bad_toml_values(world, tmp_path, key, value):
    section, name = key.split(".")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[{section}]\n{name} = {value}\n")
    assert_refused(["train", "--dataset", "tiny.npz", "--config", str(cfg)], world)


@SETTINGS
@given(st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True))
def test_unknown_set_keys(world, name):
    from robust_ebm.train.config import TrainConfig

    if name in TrainConfig.__dataclass_fields__ or name in ("eval_eps", "eval_n", "energy_n",
                                                           "eval_steps", "eval_batch_size",
                                                           "eval_step_size", "tensorboard"):
        return
    err = assert_refused(["train", "--dataset", "tiny.npz", "--set", f"train.{name}=1"], world)
    assert name in err


def test_unknown_key_names_the_closest(world):
    err = assert_refused(["train", "--dataset", "tiny.npz", "--set", "train.epohcs=2"], world)
    assert "did you mean 'epochs'" in err


def test_deeply_nested_toml(world, tmp_path):
    cfg = tmp_path / "deep.toml"
    cfg.write_text("[data]\nx = " + "[" * 3000 + "]" * 3000 + "\n")
    assert_refused(["train", "--dataset", "tiny.npz", "--config", str(cfg)], world)


# ---- 3. damaged checkpoints ----------------------------------------------------------------

def _header(path: Path) -> tuple[int, dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8:8 + n]), raw[8 + n:]


def _with_header(src: Path, dst: Path, edit) -> None:
    _, head, body = _header(src)
    edit(head)
    blob = json.dumps(head).encode()
    dst.write_bytes(struct.pack("<Q", len(blob)) + blob + body)


def _meta_edit(change):
    def edit(head):
        meta = json.loads(head["__metadata__"]["robust_ebm"])
        change(meta)
        head["__metadata__"]["robust_ebm"] = json.dumps(meta)
    return edit


def _make_ckpt(kind: str, world: Path, dst: Path) -> None:
    src = world / "m.safetensors"
    raw = src.read_bytes()
    if kind == "empty":
        dst.write_bytes(b"")
    elif kind == "text":
        dst.write_text("hello, I am not a model\n")
    elif kind == "pickle":
        dst.write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    elif kind == "pickle_pt":
        dst = dst.with_suffix(".pt")
        dst.write_bytes(pickle.dumps(os.system))
    elif kind.startswith("trunc"):
        dst.write_bytes(raw[: int(len(raw) * float(kind[5:]))])
    elif kind.startswith("flip"):
        n = struct.unpack("<Q", raw[:8])[0]
        data = bytearray(raw)
        pos = {"flip_header": 3, "flip_json": 8 + n // 2}[kind]
        data[pos] ^= 0x10
        dst.write_bytes(bytes(data))
    elif kind == "meta_not_json":
        _with_header(src, dst, lambda h: h["__metadata__"].update(robust_ebm="{not json"))
    elif kind == "meta_list":
        _with_header(src, dst, lambda h: h["__metadata__"].update(robust_ebm="[1, 2]"))
    elif kind == "meta_no_arch":
        _with_header(src, dst, _meta_edit(lambda m: m.pop("arch")))
    elif kind == "meta_arch_name":
        _with_header(src, dst, _meta_edit(lambda m: m["arch"].update(name="nonet")))
    elif kind == "meta_classes_str":
        _with_header(src, dst, _meta_edit(lambda m: m["arch"].update(num_classes="three")))
    elif kind == "meta_kwargs":
        _with_header(src, dst, _meta_edit(lambda m: m["arch"].update(kwargs={"hidden": 99})))
    elif kind == "meta_bad_kwarg":
        _with_header(src, dst, _meta_edit(lambda m: m["arch"].update(kwargs={"zzz": 1})))
    elif kind == "meta_std_zero":
        _with_header(src, dst, _meta_edit(lambda m: m["arch"].update(std=[0.0])))
    elif kind == "nan_weights":
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        state = load_file(str(src))
        first = sorted(k for k, v in state.items() if v.is_floating_point())[-1]
        state[first] = state[first].clone().fill_(float("nan"))
        with safe_open(str(src), "pt") as fh:
            meta = fh.metadata()
        save_file(state, str(dst), metadata=meta)
    elif kind == "folder":
        dst.mkdir()
    elif kind == "dangling":
        dst.symlink_to(world / "missing.safetensors")
    elif kind == "missing":
        pass
    return dst if kind != "pickle_pt" else dst


CKPT_CASES = ["empty", "text", "pickle", "pickle_pt", "trunc0.01", "trunc0.1", "trunc0.5",
              "trunc0.99", "flip_header", "flip_json", "meta_not_json", "meta_list",
              "meta_no_arch", "meta_arch_name", "meta_classes_str", "meta_kwargs",
              "meta_bad_kwarg", "meta_std_zero", "nan_weights", "folder", "dangling"]


@pytest.mark.parametrize("kind", CKPT_CASES)
def test_damaged_checkpoint(world, tmp_path, kind):
    dst = tmp_path / "bad.safetensors"
    made = _make_ckpt(kind, world, dst) or dst
    path = dst.with_suffix(".pt") if kind == "pickle_pt" else dst
    del made
    err = assert_refused(["evaluate", "--checkpoint", str(path), "--dataset", "tiny.npz"], world)
    assert "bad." in err or "checkpoint" in err, err


@SETTINGS
@given(st.binary(min_size=0, max_size=64))
def test_random_bytes_checkpoint(world, blob):
    path = world / "random.safetensors"
    path.write_bytes(blob)
    assert_refused(["evaluate", "--checkpoint", str(path), "--dataset", "tiny.npz"], world)


# ---- 4. bad datasets -------------------------------------------------------------------------

def _npz(path: Path, kind: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (12, 1, 8, 8), dtype=np.uint8)
    y = np.arange(12) % 3
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "object":
        np.savez(path, x_test=np.array([object()] * 3, dtype=object), y_test=y[:3])
    elif kind == "float_images":
        np.savez(path, x_test=x.astype(np.float32) / 255, y_test=y)
    elif kind == "float_labels":
        np.savez(path, x_test=x, y_test=y.astype(np.float32) + 0.5)
    elif kind == "five_d":
        np.savez(path, x_test=x[:, None], y_test=y)
    elif kind == "wrong_keys":
        np.savez(path, a=x, b=y)
    elif kind == "bitflip":
        np.savez(path, x_test=x, y_test=y)
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0xFF
        data[10] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == "too_many_classes":
        np.savez(path, x_test=x, y_test=np.arange(12) % 7)
    elif kind == "zero_samples":
        np.savez(path, x_test=x[:0], y_test=y[:0])
    elif kind == "num_classes_array":
        np.savez(path, x_test=x, y_test=y, num_classes=np.array([1, 2]))
    elif kind == "negative_labels":
        np.savez(path, x_test=x, y_test=-np.ones(12, np.int64))
    elif kind == "huge_labels":
        np.savez(path, x_test=x, y_test=np.full(12, 10**12, np.int64))
    elif kind == "label_count":
        np.savez(path, x_test=x, y_test=np.zeros(5, np.int64))
    elif kind == "no_arrays":
        np.savez(path)


DATA_CASES = ["empty", "object", "float_images", "float_labels", "five_d", "wrong_keys",
              "bitflip", "too_many_classes", "zero_samples", "num_classes_array",
              "negative_labels", "huge_labels", "label_count", "no_arrays"]


@pytest.mark.parametrize("kind", DATA_CASES)
def test_bad_dataset(world, tmp_path, kind):
    path = tmp_path / "tiny.npz"  # same stem as the checkpoint's dataset
    _npz(path, kind)
    assert_refused(["evaluate", "--checkpoint", str(world / "m.safetensors"), "--dataset",
                    str(path), "--force"], world)


def test_checkpoint_of_another_dataset(world, tmp_path):
    shutil.copy(world / "tiny.npz", tmp_path / "other.npz")
    err = assert_refused(["evaluate", "--checkpoint", "m.safetensors", "--dataset",
                          str(tmp_path / "other.npz")], world)
    assert "trained on tiny" in err and "--force" in err
    code, _ = run_cli(["evaluate", "--checkpoint", "m.safetensors", "--dataset",
                       str(tmp_path / "other.npz"), "--force", "--out", str(tmp_path / "f")], world)
    assert code == 0  # --force where the user really means it


def test_checkpoint_of_another_image_size(world):
    err = assert_refused(["evaluate", "--checkpoint", "m.safetensors", "--dataset", "digits"],
                         world)
    assert "classes" in err or "trained on" in err


def test_data_dir_that_is_a_file(world):
    assert_refused(["evaluate", "--checkpoint", "m.safetensors", "--dataset", "mnist",
                    "--data-dir", "m.safetensors"], world)


def test_tampered_catalog_file_refused_on_load(world, tmp_path):
    """A Fashion-MNIST copy with one flipped byte fails its content checksum on load."""
    src = Path("/usr/share/datasets/fashion-mnist")
    if not (src / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed")
    import gzip

    for name in ("t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz",
                 "train-labels-idx1-ubyte.gz"):
        (tmp_path / name).symlink_to(src / name)
    labels = bytearray(gzip.decompress((src / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels[100] = (labels[100] + 1) % 10
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(labels)))
    from robust_ebm.data import load_dataset
    from robust_ebm.errors import CorruptDataError

    with pytest.raises(CorruptDataError, match="t10k-labels"):
        load_dataset("fashion_mnist", "test", tmp_path)


def test_data_verify_fails_when_nothing_matches(world, tmp_path, formats):
    formats.write_idx_dataset(tmp_path / "mnist", n_train=3, n_test=2)
    code, err = run_cli(["data", "verify", "mnist", "--data-dir", str(tmp_path)], world)
    assert code != 0 and "Traceback" not in err


# ---- 5. detector.json ------------------------------------------------------------------------

DETECTOR_CASES = ["", "{", "[]", '{"format": "x"}', "null", '{"format": "robust-ebm/detector-1"}',
                  "[" * 5000, '"text"']


@pytest.mark.parametrize("text", DETECTOR_CASES)
def test_bad_detector_file(world, tmp_path, text):
    det = tmp_path / "detector.json"
    det.write_text(text)
    assert_refused(["detect", "evaluate", "--checkpoint", "m.safetensors", "--dataset",
                    "tiny.npz", "--eps", "0.1", "--detector", str(det)], world)


def test_detector_missing_key(tmp_path):
    from robust_ebm.detection.detector import FORMAT, EnergyDetector
    from robust_ebm.errors import CorruptDataError

    for obj in ({"format": FORMAT}, {"format": FORMAT, "temperature": "hot", "threshold": 1,
                                      "direction": "below"},
                {"format": FORMAT, "temperature": 1.0, "threshold": 0.0, "direction": 3}):
        p = tmp_path / "d.json"
        p.write_text(json.dumps(obj))
        with pytest.raises(CorruptDataError, match="d.json"):
            EnergyDetector.load(p)


# ---- 6. output folders -----------------------------------------------------------------------

OUT_CASES = ["file", "dangling", "under_file", "other_run", "other_run_train"]


@pytest.mark.parametrize("kind", OUT_CASES)
def test_bad_out(world, tmp_path, kind):
    if kind == "file":
        out = tmp_path / "f"
        out.write_text("x")
    elif kind == "dangling":
        out = tmp_path / "link"
        out.symlink_to(tmp_path / "nowhere")
    elif kind == "under_file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "sub"
    else:
        out = tmp_path / "keep_run"
        out.mkdir()
        (out / "run.json").write_text("{}")
        (out / "model.safetensors").write_text("x")
    cmd = BASE["train"] if kind == "other_run_train" else BASE["evaluate"]
    assert_refused([*cmd, "--epochs", "1", "--out", str(out)] if "train" in kind
                   else [*cmd, "--out", str(out)], world, out=None)
    if kind.startswith("other_run"):
        assert (out / "run.json").read_text() == "{}"  # the other run is untouched


def test_overwrite_replaces_and_lock_refuses(world, tmp_path):
    out = tmp_path / "e"
    argv = [*BASE["evaluate"], "--out", str(out)]
    assert run_cli(argv, world)[0] == 0
    assert run_cli(argv, world)[0] == 2
    (out / "stale.txt").write_text("old run")
    (out / ".evaluation.json.abc.tmp").write_bytes(b"x" * 100)
    assert run_cli([*argv, "--overwrite"], world)[0] == 0
    assert not list(out.glob(".*.tmp"))  # the interrupted write's leftover is gone
    assert oct((out / "evaluation.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    from robust_ebm.outputs import prepare_out, release_all

    prepare_out(out, overwrite=True)  # this process holds the lock; a second run is refused
    try:
        code = subprocess.run([sys.executable, "-m", "robust_ebm", *argv, "--overwrite"],
                              cwd=world, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
        assert code.returncode == 2 and "another robust-ebm run" in code.stderr, code.stderr
    finally:
        release_all()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# ---- 6b. the boundary's own mapping: errno, internal errors, --debug, downloads ------------

@pytest.mark.parametrize("err,expected", [
    (errno.EACCES, "permission denied"), (errno.ENOSPC, "disk full"),
    (errno.EROFS, "read-only file system"), (errno.EISDIR, "is a folder"),
    (errno.ENOENT, "not found"), (errno.EDQUOT, "quota"),
])
def test_os_errors_named_by_errno(world, monkeypatch, err, expected):
    import robust_ebm.cli.evaluate_cmd as ev

    def fail(*a, **k):
        raise OSError(err, os.strerror(err), "some/file")

    monkeypatch.setattr(ev, "clean_report", fail)
    out = assert_refused([*BASE["evaluate"]], world)
    assert expected in out and "some/file" in out and "network" not in out


def test_internal_error_one_line_and_debug_traceback(world, monkeypatch):
    import robust_ebm.cli.evaluate_cmd as ev

    def boom(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(ev, "clean_report", boom)
    code, err = run_cli([*BASE["evaluate"], "--out", "o"], world)
    assert code == 1 and "Traceback" not in err and "--debug" in err
    assert len(err.strip().splitlines()) == 1 and not (world / "o").exists()
    code, err = run_cli(["--debug", *BASE["evaluate"], "--out", "o"], world)
    assert code == 1 and "Traceback" in err and "ZeroDivisionError" in err


@pytest.mark.parametrize("failure", ["incomplete", "disk_full", "refused"])
def test_interrupted_or_failed_download(tmp_path, monkeypatch, failure):
    import http.client
    import urllib.request

    class Resp:
        headers = {"Content-Length": "100"}

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self, n):
            if failure == "incomplete":
                raise http.client.IncompleteRead(b"abc", 97)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def urlopen(url, timeout=None):
        if failure == "refused":
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        return Resp()

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    code, err = run_cli(["data", "download", "mnist", "--data-dir", str(tmp_path / "d"),
                         "--base-url", "http://mirror.invalid/x"], tmp_path)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    if failure == "disk_full":
        assert "disk full" in err and "network" not in err
    else:
        assert "check the network" in err
    assert not list((tmp_path / "d").glob(".*.part"))  # no partial download left


def test_model_that_does_not_fit_the_images(world):
    err = assert_refused(["train", "--dataset", "tiny.npz", "--model", "mlp", "--val-size", "0"],
                         world)
    assert "image_size=8" in err


def test_more_samples_than_memory(world):
    err = assert_refused([*BASE["generate"], "--n-per-class", "100000000000"], world)
    assert "GiB" in err


def test_stats_dir_that_is_a_file(world):
    assert_refused([*BASE["generate"], "--steps", "1", "--n-per-class", "1", "--init", "pca",
                    "--stats-dir", "m.safetensors", "--real-n", "0"], world)


# ---- 7. public API ---------------------------------------------------------------------------

def _api_cases():
    from robust_ebm.attacks import make_attack
    from robust_ebm.detection.detector import EnergyDetector
    from robust_ebm.sampling import SGLD
    from robust_ebm.train.config import TrainConfig

    bad = [float("nan"), float("inf"), -1.0, 1e308 * 10, "0.1"]
    cases = []
    for attack in ("pgd", "fgsm", "apgd_ce", "he_pgd"):
        for v in bad:
            cases.append((f"{attack}(eps={v!r})", lambda a=attack, v=v: make_attack(a, eps=v)))
    for v in (float("nan"), float("inf")):
        cases.append((f"he_pgd(gamma={v})", lambda v=v: make_attack("he_pgd", eps=0.1, gamma=v)))
        cases.append((f"pgd(step_size={v})",
                      lambda v=v: make_attack("pgd", eps=0.1, step_size=v, steps=2)))
    for steps in (0, -3, 1.5):
        cases.append((f"pgd(steps={steps})", lambda s=steps: make_attack("pgd", eps=0.1, steps=s)))
    for field in ("step_size", "noise_std", "momentum"):
        for v in (float("nan"), float("inf"), -1.0):
            cases.append((f"SGLD({field}={v})",
                          lambda f=field, v=v: SGLD(**{"step_size": 0.1, f: v})))
    for v in (float("nan"), float("inf"), 0.0, -2.0, "1"):
        cases.append((f"EnergyDetector(T={v!r})", lambda v=v: EnergyDetector(temperature=v)))
    for field, v in (("epochs", 0), ("lr", float("nan")), ("gamma", -1.0), ("momentum", 1.0),
                     ("pct_start", 0.0), ("milestones", (1.5,)), ("limit_train_batches", 0),
                     ("batch_size", 0), ("schedule", "x"), ("precision", "fp8")):
        cases.append((f"TrainConfig({field}={v!r})", lambda f=field, v=v: TrainConfig(**{f: v})))
    return cases


def _model_calls():
    from robust_ebm.attacks import make_attack
    from robust_ebm.statistics import clean_report

    torch.manual_seed(0)
    m = create_model("mlp", 3, 1, image_size=8, hidden=8)
    one = create_model("mlp", 1, 1, image_size=8, hidden=8)
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 0])
    return [
        ("float labels", lambda: clean_report(m, x, y.float() + 0.5)),
        ("labels out of range", lambda: clean_report(m, x, y + 5)),
        ("images > 1", lambda: clean_report(m, x * 255, y)),
        ("NaN images", lambda: clean_report(m, x * float("nan"), y)),
        ("int32 images", lambda: clean_report(m, (x * 255).int(), y)),
        ("attack on uint8", lambda: make_attack("pgd", eps=0.1)(m, (x * 255).byte(), y)),
        ("uint8 into the model", lambda: m((x * 255).byte())),
        ("attack float labels", lambda: make_attack("pgd", eps=0.1)(m, x, y.float())),
        ("apgd_t one class", lambda: make_attack("apgd_t", eps=0.1, steps=2)(
            one, x, torch.zeros(4, dtype=torch.long))),
    ]


API_CASES = [name for name, _ in _api_cases()] + [name for name, _ in _model_calls()]


@pytest.mark.parametrize("name", API_CASES)
def test_api_refuses(name):
    calls = dict(_api_cases() + _model_calls())
    with pytest.raises(UserError):
        calls[name]()


# ---- 8. disks and damaged training state -------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk(world, tmpfs):
    (tmpfs / "filler").write_bytes(b"\0" * (256 * 1024 - 4096 * 3))
    with contextlib.suppress(OSError):
        with open(tmpfs / "filler2", "wb") as fh:
            fh.write(b"\0" * 1024 * 1024)
    out = tmpfs / "run"
    code, err = run_cli(["generate", "--checkpoint", "m.safetensors", "--dataset", "tiny.npz",
                         "--steps", "2", "--n-per-class", "2", "--real-n", "0",
                         "--out", str(out)], world)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "disk full" in err or "No space" in err, err
    assert not out.exists()


def test_read_only_disk(world, tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    err = assert_refused([*BASE["evaluate"], "--out", str(tmpfs / "run")], world, out=None)
    assert "read-only" in err, err


@pytest.mark.slow
def test_bitflipped_state_refused(world, tmp_path):
    out = tmp_path / "t"
    argv = [*BASE["train"], "--epochs", "2", "--batch-size", "10", "--eval-n", "4",
            "--set", "train.energy_n=0", "--set", "train.limit_train_batches=1"]
    assert run_cli([*argv, "--out", str(out)], world)[0] == 0, "train failed"
    state = out / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))
    code, err = run_cli([*argv, "--out", str(out), "--resume"], world)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "state.pt" in err


def test_count_is_honest():
    parametrised = (len(FLAG_CASES) + len(SET_CASES) + len(SET_CASES[::4]) + len(CKPT_CASES)
                    + len(DATA_CASES) + len(DETECTOR_CASES) + len(OUT_CASES) + len(API_CASES))
    assert parametrised == 524, parametrised  # update the module docstring with this number


# ---- 9. SIGKILL during a command, then the rerun gives the same result --------------------------

def _spawn(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "robust_ebm", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


KILL_COMMANDS = {
    "evaluate": ([*BASE["evaluate"]], "evaluation.json"),
    "attack": ([*BASE["attack"], "--attacks", "pgd", "--steps", "3"], "robustness.json"),
    "train": ([*BASE["train"], "--epochs", "3", "--batch-size", "10", "--eval-n", "4",
               "--set", "train.energy_n=0", "--save-every", "1"], "model.safetensors"),
    "energy": ([*BASE["energy"], "--attacks", "pgd,noise", "--steps", "3", "--no-sweep"],
               "energy.json"),
    "calibrate": ([*BASE["calibrate"], "--steps", "3", "--cal-split", "train"], "detector.json"),
    "generate": ([*BASE["generate"], "--init", "uniform", "--steps", "3", "--n-per-class", "2"],
                 "samples.npz"),
}


def _result(out: Path, name: str):
    if name.endswith(".json"):  # everything but wall-clock times and the folder's own name
        def strip(o):
            if isinstance(o, dict):
                return {k: strip(v) for k, v in o.items() if k not in ("seconds", "out")}
            return [strip(v) for v in o] if isinstance(o, list) else o
        return strip(json.loads((out / name).read_text()))
    if name.endswith(".npz"):
        with np.load(out / name) as arrays:
            return {k: arrays[k].tolist() for k in sorted(arrays.files)}
    from safetensors.torch import load_file

    return {k: v.tolist() for k, v in load_file(str(out / name)).items()}


@pytest.mark.slow
@pytest.mark.parametrize("cmd", sorted(KILL_COMMANDS))
@pytest.mark.parametrize("delay", [0.5, 2.0, 3.5, 5.0])
def test_kill_and_rerun(world, tmp_path, cmd, delay):
    """SIGKILL at several moments (start-up, loading, computing, writing); rerunning into the
    same folder (--resume for train when its state exists, else --overwrite) gives the result of
    an uninterrupted run, and leaves no temporary file behind."""
    import signal
    import time

    argv, name = KILL_COMMANDS[cmd]
    ref = tmp_path / "ref"
    p = _spawn([*argv, "--out", str(ref)], world)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    out = tmp_path / "killed"
    p = _spawn([*argv, "--out", str(out)], world)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    again = ["--resume"] if cmd == "train" and (out / "state.pt").is_file() else ["--overwrite"]
    p = _spawn([*argv, "--out", str(out), *again], world)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert _result(out, name) == _result(ref, name)
    assert not list(out.rglob(".*.tmp"))
