"""A RobustBench checkpoint by name through every command that reads one, end to end, on a
random-weight file laid out as the zoo's Carmon2019Unlabeled file and a CIFAR-shaped .npz;
bad model options give one line on stderr, exit code 2 and no output folder.

A WRN-28-10 costs seconds per forward pass on a CPU: the default suite runs ``energy`` on
Carmon2019Unlabeled and the other commands on the ResNet-18 entry Sehwag2021Proxy_R18; the
``slow`` test runs all five commands on Carmon2019Unlabeled (about 80 s on 2 cores).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_main

from robust_ebm.models import create_model, zoo_entry


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    entry = zoo_entry("Carmon2019Unlabeled")
    torch.manual_seed(0)
    net = create_model(entry.arch, 10, 3, **entry.kwargs).net
    # the zoo's layout for this entry: {"state_dict": {"module." + key: tensor}}
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}},
               folder / "Carmon2019Unlabeled.pt")
    r18 = create_model("resnet18", 10, 3).net
    torch.save(r18.state_dict(), folder / "Sehwag2021Proxy_R18.pt")
    c100 = create_model("wide_resnet", 100, 3, depth=10, widen_factor=1).net
    torch.save(c100.state_dict(), folder / "c100.pt")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)
    y = np.arange(20) % 10
    np.savez(folder / "cifar_tiny.npz", x_train=x, y_train=y, x_test=x[:6], y_test=y[:6],
             num_classes=10)
    return folder


_run = run_main  # (exit code, stdout, stderr) of robust-ebm ARGV


def _zoo(files, name="Carmon2019Unlabeled"):
    return ["--robustbench", name, "--checkpoint", files / f"{name}.pt", "--dataset",
            files / "cifar_tiny.npz"]


def test_energy_runs_on_carmon2019(zoo_files, tmp_path, capsys):
    code, out, err = _run(capsys, "energy", *_zoo(zoo_files), "--n", 2, "--attacks", "pgd",
                          "--steps", 1, "--eps", 0.03, "--no-sweep", "--out", tmp_path / "en",
                          "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["dataset"].endswith("cifar_tiny.npz")
    assert (tmp_path / "en" / "energy.json").is_file()


def test_every_command_runs_on_a_zoo_checkpoint(zoo_files, tmp_path, capsys):
    _every_command(zoo_files, tmp_path, capsys, "Sehwag2021Proxy_R18")


@pytest.mark.slow
def test_every_command_runs_on_carmon2019(zoo_files, tmp_path, capsys):
    _every_command(zoo_files, tmp_path, capsys, "Carmon2019Unlabeled")


def _every_command(f, tmp_path, capsys, name):
    z = _zoo(f, name)
    code, out, err = _run(capsys, "evaluate", *z, "--n", 4, "--out", tmp_path / "ev",
                          "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 4
    code, out, err = _run(capsys, "attack", *z, "--n", 2, "--attacks", "pgd", "--steps",
                          1, "--eps", 0.03, "--out", tmp_path / "at", "--json")
    assert code == 0, err
    code, out, err = _run(capsys, "energy", *z, "--n", 2, "--attacks", "pgd", "--steps",
                          1, "--eps", 0.03, "--no-sweep", "--out", tmp_path / "en", "--json")
    assert code == 0, err
    assert (tmp_path / "en" / "energy.json").is_file()
    code, out, err = _run(capsys, "detect", "calibrate", *z, "--cal-split", "train",
                          "--n", 6, "--eps", 0.03, "--steps", 1, "--temperatures", "1",
                          "--out", tmp_path / "cal", "--json")
    assert code == 0, err
    code, out, err = _run(capsys, "detect", "evaluate", *z, "--detector",
                          tmp_path / "cal" / "detector.json", "--n", 4, "--attacks", "pgd",
                          "--steps", 1, "--he-gammas", "none", "--no-adaptive",
                          "--out", tmp_path / "det", "--json")
    assert code == 0, err
    code, out, err = _run(capsys, "generate", *z, "--init", "uniform", "--steps", 1,
                          "--n-per-class", 1, "--classes", "0,1", "--real-n", 0,
                          "--out", tmp_path / "gen", "--json")
    assert code == 0, err


def test_dataset_defaults_to_the_zoo_entrys(zoo_files, capsys):
    # no --dataset: the entry's (cifar10), which is not on this machine: the data error says so
    code, _, err = _run(capsys, "evaluate", "--robustbench", "Carmon2019Unlabeled",
                        "--checkpoint", zoo_files / "Carmon2019Unlabeled.pt", "--n", 2,
                        "--data-dir", zoo_files)
    assert code == 2 and "cifar10 (test split" in err and "not found" in err


@pytest.mark.parametrize("extra,needle", [
    (["--robustbench", "Carmon2019Unlabelled", "--checkpoint", "CARMON"],
     "closest: Carmon2019Unlabeled"),
    (["--arch", "resnet18", "--mean", "0", "--std", "1", "--checkpoint", "CARMON"],
     "fit --arch wide_resnet --arch-args depth=28,widen_factor=10,sub_block1=True"),
    (["--arch", "wide_resnet", "--arch-args", "depth=28,widen_factor=10,sub_block1=true",
      "--checkpoint", "CARMON"], "normalization unknown"),
    (["--robustbench", "Carmon2019Unlabeled", "--checkpoint", "CARMON", "--dataset",
      "fashion_mnist"], "is a cifar10 model"),
    (["--arch", "wide_resnet", "--arch-args", "depth=10,widen_factor=1", "--mean", "0",
      "--std", "1", "--checkpoint", "C100"], "predicts 100 classes"),
    (["--arch", "wide_resnet", "--arch-args", "depth=28,widen_factor=10,sub_block1=true",
      "--mean", "0", "--std", "inf", "--checkpoint", "CARMON"], "--std must be finite numbers"),
    (["--arch", "wide_resnet", "--arch-args", "depth=28,widen_factor=10,sub_block1=true",
      "--mean", "nan", "--std", "1", "--checkpoint", "CARMON"], "--mean must be finite numbers"),
])
def test_bad_model_options_one_line_exit_2_nothing_written(zoo_files, tmp_path, capsys, extra,
                                                           needle):
    files = {"CARMON": zoo_files / "Carmon2019Unlabeled.pt", "C100": zoo_files / "c100.pt"}
    extra = [files.get(a, a) for a in extra]
    if "--dataset" not in extra:
        extra += ["--dataset", zoo_files / "cifar_tiny.npz"]
    for command in (["evaluate"], ["energy", "--eps", "0.03", "--attacks", "pgd"]):
        out = tmp_path / command[0]
        code, _, err = _run(capsys, *command, *extra, "--out", out)
        assert code == 2, err
        assert needle in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_dataset_defaults_to_the_one_a_checkpoint_records(tmp_path, tiny_npz, capsys):
    from robust_ebm.checkpoint import save_model

    ckpt = save_model(tmp_path / "m.safetensors", create_model("small_cnn", 2, 1),
                      dataset=str(tiny_npz))
    code, out, err = _run(capsys, "evaluate", "--checkpoint", ckpt, "--out", tmp_path / "ev",
                          "--json")
    assert code == 0, err
    assert json.loads(out)["dataset"] == str(tiny_npz)


def test_fetch_without_robustbench_names_the_extra(tmp_path, capsys):
    code, _, err = _run(capsys, "evaluate", "--robustbench", "Carmon2019Unlabeled",
                        "--out", tmp_path / "ev")
    assert code == 2 and "robust-ebm[robustbench]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ev").exists()


def test_no_strict_loads_what_fits_and_says_what_it_skipped(zoo_files, tmp_path, capsys):
    args = ["evaluate", "--arch", "wide_resnet", "--arch-args", "depth=28,widen_factor=10",
            "--mean", "0", "--std", "1", "--checkpoint", zoo_files / "Carmon2019Unlabeled.pt",
            "--dataset", zoo_files / "cifar_tiny.npz", "--n", 2, "--out", tmp_path / "ev"]
    code, _, err = _run(capsys, *args)
    assert code == 2 and "sub_block1" in err
    code, _, err = _run(capsys, *args, "--no-strict")
    assert code == 0, err
    assert "--no-strict" in err and "unexpected keys skipped" in err and "sub_block1." in err
