"""``robust-ebm generate`` in-process on the offline ``digits`` data: files, metrics naming the
feature network, the statistics cache, and bad input (one stderr line, exit code 2)."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from conftest import run_main

main_mod = importlib.import_module("robust_ebm.cli.main")


_run = run_main  # (exit code, stdout, stderr) of robust-ebm ARGV


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny digits model under test and an independent feature network (other seed/width)."""
    root = tmp_path_factory.mktemp("gen")
    paths = {}
    for name, extra in (("model", ["--seed", "0"]), ("features", ["--seed", "7", "--set",
                                                                    "model.hidden=64"])):
        code = main_mod.main(["train", "--dataset", "digits", "--epochs", "1", "--batch-size",
                              "64", "--val-size", "0", "--eval-n", "100", "--energy-n", "50",
                              "--out", str(root / name), "--json", *extra])
        assert code == 0
        paths[name] = root / name / "model.safetensors"
    return paths


def test_generate_writes_everything(tmp_path, checkpoints, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "g"
    argv = ["generate", "--checkpoint", checkpoints["model"], "--dataset", "digits",
            "--init", "pca", "--steps", "5", "--step-size", "0.5", "--n-per-class", "4",
            "--classes", "0,1,2", "--features", checkpoints["features"], "--real-n", "200",
            "--out", out, "--json"]
    code, stdout, err = _run(capsys, *argv)
    assert code == 0, err
    res = json.loads(stdout)
    for name in ("grid.png", "grid_x0.png", "samples.npz", "energy.png", "energy.json",
                 "metrics.json", "run.json"):
        assert (out / name).is_file(), name
    with np.load(out / "samples.npz") as z:
        assert z["x"].shape == (12, 1, 8, 8) and z["x"].dtype == np.uint8
        assert z["y"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert z["energy_trajectory"].shape == (6, 12)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"fid", "kid_mean", "is_mean", "precision", "recall"} <= set(metrics)
    assert "small_cnn-h64 standard digits" in metrics["features"]
    assert metrics["n_real"] == 200 and metrics["n_fake"] == 12
    assert res["stats_reused"] is False and res["pca_components"]["0"] >= 1
    energy = json.loads((out / "energy.json").read_text())
    assert len(energy["overall"]["mean"]) == 6 and set(energy["per_class"]) == {"0", "1", "2"}

    # second run: the cached PCA statistics are reused and the result is repeatable
    code, stdout2, err = _run(capsys, *argv[:-3], "--out", tmp_path / "g2", "--json")
    assert code == 0, err
    res2 = json.loads(stdout2)
    assert res2["stats_reused"] is True
    assert res2["energy_end"] == pytest.approx(res["energy_end"])


@pytest.mark.parametrize("init", ["uniform", "gaussian", "noise"])
def test_generate_other_inits_without_features(tmp_path, checkpoints, capsys, monkeypatch, init):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, out, err = _run(capsys, "generate", "--checkpoint", checkpoints["model"], "--dataset",
                          "digits", "--init", init, "--steps", "2", "--n-per-class", "2",
                          "--momentum", "0", "--out", tmp_path / "o")
    assert code == 0, err
    assert "metrics skipped" in out
    assert "skipped" in json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert (tmp_path / "o" / "grid.png").is_file()


def test_generate_published_sampler_flags(tmp_path, checkpoints, capsys, monkeypatch):
    """--noise-scaling, --energy-reduction and --pca-rule reach the sampler and the PCA init:
    the published 'below' rule keeps one component fewer per class than ours."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    flags = tmp_path / "published.toml"  # the 'below' run reads its flags from --config
    flags.write_text('pca_rule = "below"\nnoise_scaling = "sqrt_2_step"\n'
                     'energy_reduction = "mean"\nsteps = 3\n')
    runs = {}
    for rule, extra in [("reach", ["--pca-rule", "reach"]), ("below", ["--config", flags])]:
        code, out, err = _run(capsys, "generate", "--checkpoint", checkpoints["model"],
                              "--dataset", "digits", "--steps", "1", "--n-per-class", "1",
                              "--classes", "0,1", *extra, "--out", tmp_path / rule, "--json")
        assert code == 0, err
        runs[rule] = json.loads(out)
    below, reach = runs["below"], runs["reach"]
    assert below["sampler"]["noise_scaling"] == "sqrt_2_step"
    assert below["sampler"]["energy_reduction"] == "mean"
    assert reach["sampler"]["noise_scaling"] == "none"
    assert below["sampler"]["steps"] == 1  # the command line's --steps wins over the file
    assert below["init_config"]["component_rule"] == "below"
    assert {c: k - 1 for c, k in reach["pca_components"].items()} == below["pca_components"]


@pytest.mark.parametrize("extra,needle", [
    (["--init", "center"], "--init"),
    (["--noise-scaling", "alpha"], "--noise-scaling"),
    (["--pca-rule", "above"], "--pca-rule"),
    (["--classes", "0,42"], "out of range"),
    (["--classes", "a,b"], "comma-separated"),
    (["--momentum", "1.5"], "--momentum"),
    (["--step-size", "0"], "--step-size"),
    (["--n-per-class", "0"], "--n-per-class"),
    (["--energy", "nope"], "--energy"),
    (["--pca-variance", "95"], "share"),
    (["--dataset", "cifar10_typo"], "unknown dataset"),
])
def test_bad_input_one_line_exit_2(tmp_path, checkpoints, capsys, monkeypatch, extra, needle):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, _out, err = _run(capsys, "generate", "--checkpoint", checkpoints["model"], "--dataset",
                          "digits", "--steps", "1", "--n-per-class", "1", "--out",
                          tmp_path / "o", *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0] and "Traceback" not in err


def test_features_must_not_be_the_model_under_test(tmp_path, checkpoints, capsys):
    code, _out, err = _run(capsys, "generate", "--checkpoint", checkpoints["model"], "--dataset",
                          "digits", "--features", checkpoints["model"], "--out", tmp_path / "o")
    assert code == 2 and "model under test" in err and len(err.strip().splitlines()) == 1


def test_missing_checkpoint_exit_2(tmp_path, capsys):
    code, _out, err = _run(capsys, "generate", "--checkpoint", tmp_path / "nope.safetensors",
                          "--dataset", "digits", "--out", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1
