"""The training loop: loss goes down, crash-safe resume (real SIGKILL), config checks,
NaN stop, TOML/--set configuration, and torchrun/gloo against one process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import write_tiny_npz
from safetensors.torch import load_file

from robust_ebm.cli import main
from robust_ebm.train.state import STATE_FILE, read_state

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _cli(*argv):
    return [sys.executable, "-m", "robust_ebm", *map(str, argv)]


def _train_args(npz, out, *extra):
    return ["train", "--dataset", npz, "--model", "small_cnn", "--epochs", "3",
            "--batch-size", "16", "--val-size", "32", "--eval-n", "16", "--energy-n", "16",
            "--crop-padding", "1", "--flip", "--deterministic", "--save-every", "2",
            "--out", out, "--json", *extra]


def _weights(path):
    return load_file(str(path))


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _state_position(out):
    try:
        payload = read_state(out / STATE_FILE)
    except Exception:  # not written yet
        return None
    return payload["epoch"], payload["batch"]


def test_short_run_lowers_loss(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "t.npz")
    code = main(["train", "--dataset", str(npz), "--epochs", "3", "--batch-size", "16",
                 "--val-size", "32", "--out", str(tmp_path / "r"), "--json", "--lr", "0.05"])
    out, err = capsys.readouterr()
    assert code == 0, err
    hist = json.loads(out)["history"]
    assert hist[-1]["train_loss"]["loss"] < hist[0]["train_loss"]["loss"]
    for name in ("energy.csv", "energy_dynamics.png", STATE_FILE, "metrics.jsonl", "run.json"):
        assert (tmp_path / "r" / name).is_file(), name


@pytest.mark.parametrize("moment,objective", [
    ((0, 2), ["--objective", "standard"]),
    ((1, 4), ["--objective", "pgd_at", "--eps", "0.1", "--step-size", "0.05", "--steps", "2"]),
])
def test_sigkill_and_resume_is_bit_identical(tmp_path, moment, objective):
    """Kill the process for real once a state at ``moment`` (epoch, batch) or later exists;
    the PGD-AT case also covers the inner attack's randomness."""
    npz = write_tiny_npz(tmp_path / "t.npz", n_train=320)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    subprocess.run(_cli(*_train_args(npz, ref, *objective)), env=ENV, check=True, capture_output=True)
    proc = subprocess.Popen(_cli(*_train_args(npz, cut, *objective)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        pos = _state_position(cut)
        if pos is not None and pos >= moment:
            proc.send_signal(signal.SIGKILL)
            killed_at = pos
            break
        time.sleep(0.005)
    proc.wait()
    if killed_at is None:
        pytest.fail("the run finished before it could be killed; make it longer")
    assert proc.returncode == -signal.SIGKILL
    assert not (cut / "model.safetensors").exists()
    res = subprocess.run(_cli(*_train_args(npz, cut, *objective, "--resume")), env=ENV, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    _assert_same_weights(ref / "model.safetensors", cut / "model.safetensors")
    ref_hist = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    cut_hist = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [h["train_loss"] for h in ref_hist] == [h["train_loss"] for h in cut_hist]


def test_resume_with_other_config_is_refused(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "t.npz")
    out = tmp_path / "r"
    args = ["train", "--dataset", str(npz), "--epochs", "1", "--batch-size", "16",
            "--val-size", "32", "--out", str(out), "--json"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args[:-1] + ["--lr", "0.2", "--set", "train.weight_decay=0.001", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "train.lr: 0.05 -> 0.2" in err and "train.weight_decay: 0.0005 -> 0.001" in err


def test_nan_loss_stops_with_checkpoint_intact(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "t.npz")
    out = tmp_path / "r"
    base = ["train", "--dataset", str(npz), "--batch-size", "16", "--val-size", "32",
            "--out", str(out), "--json", "--schedule", "constant"]
    assert main(base + ["--epochs", "1"]) == 0
    before = (out / STATE_FILE).read_bytes()
    capsys.readouterr()
    shutil.rmtree(out)
    out.mkdir()
    (out / STATE_FILE).write_bytes(before)
    # an absurd learning rate makes the loss overflow within the next epoch
    code = main(base + ["--epochs", "1", "--lr", "1e30", "--overwrite"])
    err = capsys.readouterr().err
    assert code == 1 and "loss became" in err and len(err.strip().splitlines()) == 1
    assert (out / STATE_FILE).read_bytes() == before


def test_toml_config_and_set(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "t.npz")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\ndataset = "{npz}"\nval_size = 32\n[train]\nepochs = 2\n'
                   'batch_size = 16\nlr = 0.02\n[model]\nname = "mlp"\nimage_size = 12\n')
    out = tmp_path / "r"
    code = main(["train", "--config", str(cfg), "--set", "train.epochs=1", "--epochs", "2",
                 "--set", "model.hidden=32", "--out", str(out), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0
    assert res["config"]["train"]["epochs"] == 1  # --set wins over the flag and the file
    assert res["config"]["train"]["lr"] == 0.02 and res["config"]["model"]["hidden"] == 32
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["model"] == {"name": "mlp", "image_size": 12, "hidden": 32}
    for bad, needle in ((["--set", "nonsense"], "section.key=value"),
                        (["--set", "train.bogus=1"], "bogus"),
                        (["--config", str(tmp_path / "missing.toml")], "not found")):
        assert main(["train", "--dataset", str(npz), "--out", str(tmp_path / "b"), *bad]) == 2
        assert needle in capsys.readouterr().err


def test_torchrun_two_processes_match_one(tmp_path):
    """Same global batch on 2 gloo processes and on 1: weights agree within 1e-5 (float32
    gradient averaging order; the MLP has no BatchNorm, whose batch statistics would differ)."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not found next to the interpreter")
    npz = write_tiny_npz(tmp_path / "t.npz", n_train=192)
    common = ["train", "--dataset", npz, "--model", "mlp", "--set", "model.image_size=12",
              "--epochs", "2", "--batch-size", "16", "--val-size", "32", "--eval-n", "16",
              "--energy-n", "0", "--json", "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cli(*common, "--out", one), env=ENV, check=True, capture_output=True)
    res = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "robust_ebm",
         *map(str, common), "--out", str(two)],
        env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    wa, wb = _weights(one / "model.safetensors"), _weights(two / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
    h1 = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    h2 = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert h1[-1]["train_loss"]["loss"] == pytest.approx(h2[-1]["train_loss"]["loss"], rel=1e-4)


@pytest.mark.parametrize("schedule", ["onecycle", "multistep", "cosine", "constant"])
@pytest.mark.parametrize("steps_per_epoch", [1, 4, 50])
def test_schedules_work_for_any_run_length(schedule, steps_per_epoch):
    from robust_ebm.models import create_model
    from robust_ebm.train import TrainConfig, make_optimizer, make_scheduler

    cfg = TrainConfig(epochs=1, schedule=schedule, lr=0.1)
    opt = make_optimizer(create_model("mlp", 2, 1, image_size=4), cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch)
    used = []  # the LR each optimizer step runs with
    for _ in range(steps_per_epoch):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(0 < lr <= 0.1 + 1e-12 for lr in used), used
