"""Training options for GPUs (mixed precision, channels_last), TensorBoard logging, and
resuming a state saved before a setting existed. CPU checks here; the CUDA ones are marked gpu."""

import json

import pytest
import torch
from conftest import write_tiny_npz
from safetensors.torch import load_file
from torch import nn

from robust_ebm.cli import main
from robust_ebm.models import create_model
from robust_ebm.train import mixed_precision
from robust_ebm.train.state import STATE_FILE, read_state


def _args(npz, out, *extra):
    return ["train", "--dataset", str(npz), "--model", "small_cnn", "--epochs", "2",
            "--batch-size", "16", "--val-size", "32", "--eval-n", "16", "--energy-n", "16",
            "--deterministic", "--out", str(out), "--json", *extra]


TRADES = ("--objective", "trades", "--eps", "0.1", "--step-size", "0.05", "--steps", "2")


def _history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_mixed_precision_autocasts_inside_and_returns_float32_logits():
    model = create_model("small_cnn", 10, 1).eval()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    seen = []
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.rand(4, 1, 28, 28)
    with mixed_precision(model, "bf16", torch.device("cpu")):
        logits = model(x)
    assert seen == [torch.bfloat16]  # the convolution ran in bf16
    assert logits.dtype == torch.float32  # the losses see float32 logits
    assert not model._forward_hooks  # the cast hook is gone afterwards
    assert model(x).dtype == torch.float32
    seen.clear()
    with mixed_precision(model, "fp32", torch.device("cpu")):
        assert not model._forward_hooks  # fp32: no cast hook, no autocast
        model(x)
    assert seen == [torch.float32]
    handle.remove()


def test_bf16_and_channels_last_train_on_cpu(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "t.npz")
    assert main(_args(npz, tmp_path / "ref", "--epochs", "1")) == 0
    assert main(_args(npz, tmp_path / "cl", "--epochs", "1", "--channels-last")) == 0
    # bf16 with an inner attack: the attack also runs under autocast
    assert main(_args(npz, tmp_path / "bf", *TRADES, "--precision", "bf16")) == 0
    capsys.readouterr()
    ref, cl = load_file(str(tmp_path / "ref/model.safetensors")), load_file(str(tmp_path / "cl/model.safetensors"))
    # NHWC changes only the order of float32 sums: the same run up to rounding
    for k in ref:
        if ref[k].is_floating_point():
            assert (ref[k] - cl[k]).norm() <= 1e-4 * ref[k].norm() + 1e-6, k
    hist = _history(tmp_path / "bf")
    losses = [h["train_loss"]["loss"] for h in hist]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert hist[-1]["eval"]["test"]["accuracy"] > 0.8  # two easy classes
    assert json.loads((tmp_path / "bf/run.json").read_text())["config"]["train"]["precision"] == "bf16"


def test_fp16_without_cuda_is_a_clear_error(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "t.npz")
    out = tmp_path / "r"
    assert main(_args(npz, out, "--precision", "fp16", "--device", "cpu")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fp16" in err and "bf16" in err
    assert not out.exists()  # refused before anything was written


def test_tensorboard_scalars_match_metrics(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    npz = write_tiny_npz(tmp_path / "t.npz")
    out = tmp_path / "r"
    assert main(_args(npz, out, "--tensorboard")) == 0
    capsys.readouterr()
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    hist = _history(out)
    tags = acc.Tags()["scalars"]
    for tag in ("train/loss", "lr", "test/accuracy_adv", "val/dE_x_mean", "train/E_x_std"):
        assert tag in tags, tag
    events = acc.Scalars("test/dE_x_mean")
    assert [e.step for e in events] == [1, 2]
    assert [e.value for e in events] == pytest.approx(
        [h["eval"]["test"]["dE_x"]["mean"] for h in hist], rel=1e-6)


def test_state_from_before_a_setting_existed_resumes(tmp_path, capsys):
    """A state.pt whose saved config lacks the new [train] keys resumes when the new run
    leaves them at their defaults, and is refused (naming the key) when it does not."""
    npz = write_tiny_npz(tmp_path / "t.npz")
    out = tmp_path / "r"
    assert main(_args(npz, out)) == 0
    before = _history(out)
    payload = read_state(out / STATE_FILE)  # rewritten below without a checksum (old format)
    for key in ("precision", "channels_last", "tensorboard"):
        del payload["config"]["train"][key]
    torch.save(payload, out / STATE_FILE)
    capsys.readouterr()
    assert main(_args(npz, out, "--precision", "bf16", "--resume")) == 2
    err = capsys.readouterr().err
    assert "train.precision: 'fp32' -> 'bf16'" in err and "channels_last" not in err
    assert main(_args(npz, out, "--resume")) == 0
    assert _history(out) == before  # the finished run stays as it was


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_channels_last_on_cuda(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "t.npz")
    out = tmp_path / "r"
    assert main(_args(npz, out, "--precision", "fp16", "--channels-last", "--device", "cuda")) == 0
    capsys.readouterr()
    losses = [h["train_loss"]["loss"] for h in _history(out)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert "scaler" in read_state(out / STATE_FILE)


def test_host_resident_training_gives_identical_weights(tmp_path, capsys, monkeypatch):
    """--host-resident (train.host_resident) reaches the loader and changes nothing: a 1-epoch
    run ends with the same weights bit for bit; a run may resume with the other setting."""
    import robust_ebm.train.loop as loop_mod

    built = []

    class Spy(loop_mod.TensorLoader):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            built.append(self.host_resident)

    monkeypatch.setattr(loop_mod, "TensorLoader", Spy)
    npz = write_tiny_npz(tmp_path / "t.npz")
    assert main(_args(npz, tmp_path / "dev", "--epochs", "1")) == 0
    assert main(_args(npz, tmp_path / "host", "--epochs", "1", "--host-resident")) == 0
    assert built == [False, True]
    capsys.readouterr()
    dev = load_file(str(tmp_path / "dev/model.safetensors"))
    host = load_file(str(tmp_path / "host/model.safetensors"))
    assert sorted(dev) == sorted(host) and all(torch.equal(dev[k], host[k]) for k in dev)
    run = json.loads((tmp_path / "host/run.json").read_text())
    assert run["config"]["train"]["host_resident"] is True
    assert main(_args(npz, tmp_path / "host", "--epochs", "1", "--resume")) == 0
