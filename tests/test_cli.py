"""The CLI in-process, end to end, on tiny data; bad input gives one line and exit code 2."""

import json

import pytest
from conftest import run_main

_run = run_main  # (exit code, stdout, stderr) of robust-ebm ARGV


def test_train_then_evaluate(tmp_path, tiny_npz, capsys):
    out_dir = tmp_path / "run"
    code, out, err = _run(capsys, "train", "--dataset", tiny_npz, "--epochs", "2",
                          "--batch-size", "16", "--val-size", "32", "--out", out_dir, "--json",
                          "--lr", "0.05")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["history"]) == 2
    assert result["test"]["accuracy"] >= 0.9
    for name in ("run.json", "model.safetensors", "best.safetensors", "last.safetensors",
                 "metrics.jsonl"):
        assert (out_dir / name).is_file(), name
    run = json.loads((out_dir / "run.json").read_text())
    assert run["seed"] == 0 and run["device"] == "cpu" and "torch" in run["versions"]
    assert len((out_dir / "metrics.jsonl").read_text().splitlines()) == 2

    code, out, err = _run(capsys, "evaluate", "--checkpoint", out_dir / "model.safetensors",
                          "--dataset", tiny_npz, "--out", tmp_path / "ev", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["n"] == 40
    # the epoch evaluation saw the same 40 test points (eval_n defaults to 1000)
    assert report["accuracy"] == pytest.approx(result["test"]["accuracy"])
    assert set(report["free_energy"]) >= {"mean", "std", "q05", "q50", "q95"}
    assert (tmp_path / "ev" / "run.json").is_file()

    code, out, err = _run(capsys, "evaluate", "--checkpoint", out_dir / "model.safetensors",
                          "--dataset", tiny_npz, "--out", tmp_path / "ev2")
    assert code == 0 and "clean accuracy" in out and "E(x,y)" in out


@pytest.mark.parametrize("argv,needle", [
    (["train", "--model", "nope"], "unknown model"),
    (["train", "--objective", "nope"], "unknown objective"),
    (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--schedule", "weird"], "--schedule"),
    (["evaluate", "--checkpoint", "/nonexistent/x.safetensors"], "not found"),
    (["frobnicate"], "invalid choice"),
    (["train", "--dataset", "/nonexistent/file.npz"], "nonexistent"),
    (["train", "--device", "cuda:7"], "cuda"),
])
def test_bad_input_one_line_exit_2(argv, needle, capsys, tmp_path):
    code, out, err = _run(capsys, *argv, *(["--out", tmp_path / "o"] if argv[0] != "frobnicate" else []))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_bad_dataset_name_lists_choices(capsys, tmp_path):
    code, out, err = _run(capsys, "train", "--dataset", "imagenet", "--out", tmp_path / "o")
    assert code == 2 and "imagenet" in err and len(err.strip().splitlines()) == 1
