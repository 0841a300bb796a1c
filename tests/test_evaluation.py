"""Robust evaluation: the cascade, the report, sanity checks and the `attack` CLI."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

from robust_ebm.attacks import make_attack
from robust_ebm.errors import UserError
from robust_ebm.evaluation import evaluate_robustness, sanity_checks, zero_gradient_share


@pytest.fixture(scope="module")
def digits(digits_data, digits_model):
    x, y = digits_data
    return digits_model, x[:200], y[:200]


def _acc(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_cascade_is_worst_case_and_consistent(digits):
    model, x, y = digits
    report = evaluate_robustness(model, (x, y), "fgsm,pgd,apgd_ce", eps=0.1, batch_size=64)
    assert report.n == 200
    assert report.clean_accuracy == pytest.approx(_acc(model, x, y))
    accs = [r.robust_accuracy for r in report.rows]
    assert accs == sorted(accs, reverse=True)  # never rises along the cascade
    assert report.robust_accuracy == accs[-1]
    # attacked counts follow the cascade: each stage sees the survivors of the previous one
    assert report.rows[0].attacked == int(report.clean_correct.sum())
    for prev, cur in zip(report.rows, report.rows[1:]):
        assert cur.attacked == prev.attacked - prev.fooled
    # worst case is at most every single attack's own robust accuracy
    for name in ("fgsm", "pgd", "apgd_ce"):
        single = _acc(model, make_attack(name, eps=0.1)(model, x, y), y)
        assert report.robust_accuracy <= single + 1e-9
    # stored adversarial examples really fool the model where it says so, and stay in the ball
    pred = model(report.x_adv).argmax(1)
    fooled = report.clean_correct & ~report.robust
    assert bool((pred[fooled] != y[fooled]).all())
    assert float((report.x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert all(
        (f is None) == bool(r) or not c
        for f, r, c in zip(report.fooled_by, report.robust.tolist(), report.clean_correct.tolist())
    )
    d = report.to_dict()
    json.dumps(d)
    assert "| **worst case** |" in report.table()


def test_accepts_image_dataset_like_objects(digits):
    model, x, y = digits

    class DS:
        images = (x * 255).round().to(torch.uint8)
        labels = y

    report = evaluate_robustness(model, DS(), ["pgd"], eps=0.1)
    expected = evaluate_robustness(model, (DS.images.float() / 255, y), ["pgd"], eps=0.1)
    assert report.robust_accuracy == expected.robust_accuracy


def test_attack_objects_and_pairs(digits):
    model, x, y = digits
    pgd = make_attack("pgd", eps=0.1)
    a = evaluate_robustness(model, (x, y), [("mine", pgd)])
    b = evaluate_robustness(model, (x, y), {"mine": pgd})
    assert a.rows[0].name == "mine" and a.robust_accuracy == b.robust_accuracy


def test_bad_evaluation_input(digits):
    model, x, y = digits
    with pytest.raises(UserError, match="unknown attack"):
        evaluate_robustness(model, (x, y), "pgd,nope", eps=0.1)
    with pytest.raises(UserError, match="same length"):
        evaluate_robustness(model, (x, y[:-1]), "pgd", eps=0.1)
    with pytest.raises(UserError, match="no attacks"):
        evaluate_robustness(model, (x, y), [], eps=0.1)


def test_sanity_checks_pass_on_an_honest_model(digits):
    model, x, y = digits
    checks = {
        c.name: c for c in sanity_checks(model, x[:100], y[:100], eps=0.1, white_box_accuracy=0.3)
    }
    assert set(checks) == {
        "accuracy_falls_with_eps",
        "more_steps_never_help",
        "unbounded_attack_succeeds",
        "black_box_not_better",
        "zero_gradients",
    }
    for name in (
        "accuracy_falls_with_eps",
        "more_steps_never_help",
        "unbounded_attack_succeeds",
        "zero_gradients",
    ):
        assert checks[name].passed, checks[name].detail


class _Shattered(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)  # round has zero derivative


def test_sanity_checks_flag_gradient_masking(digits):
    model, x, y = digits
    masked = _Shattered(model)
    assert zero_gradient_share(masked, x[:50], y[:50]) == 1.0
    checks = {
        c.name: c for c in sanity_checks(masked, x[:50], y[:50], eps=0.1, white_box_accuracy=0.9)
    }
    assert checks["zero_gradients"].passed is False
    assert checks["unbounded_attack_succeeds"].passed is False


# -- the CLI ---------------------------------------------------------------------------------


def _parse(argv):
    from robust_ebm.cli import attack_cmd

    parser = argparse.ArgumentParser(prog="robust-ebm")
    sub = parser.add_subparsers(dest="command")
    attack_cmd.add_parser(sub)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits_data):
    from robust_ebm.checkpoint import save_model
    from robust_ebm.models import create_model

    x, y = digits_data
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(40):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_model(path, model.eval(), dataset="digits")
    return path


def test_attack_cli_end_to_end(checkpoint, tmp_path, capsys):
    from safetensors.torch import load_file

    from robust_ebm.data import load_dataset

    try:
        ds = load_dataset("digits", "test")
    except UserError as exc:  # pragma: no cover - depends on the data module
        pytest.skip(f"digits dataset unavailable: {exc}")
    out = tmp_path / "run"
    args = _parse(
        [
            "attack",
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            "digits",
            "--split",
            "test",
            "--n",
            "40",
            "--attacks",
            "fgsm,pgd",
            "--eps",
            "0.1",
            "--steps",
            "5",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in result["attacks"]] == ["fgsm", "pgd"]
    saved = json.loads((out / "robustness.json").read_text())
    assert saved["robust_accuracy"] == result["robust_accuracy"]
    assert (out / "run.json").is_file()
    t = load_file(str(out / "adversarial.safetensors"))
    assert t["x_adv"].shape == (40, *ds.images.shape[1:]) and t["y"].shape == (40,)
    assert float(t["x_adv"].min()) >= 0 and float(t["x_adv"].max()) <= 1
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--attacks", "pgd,nope"], "unknown attack"),
        (["--attacks", ","], "empty"),
        (["--steps", "5", "--attacks", "apgd_ce", "--norm", "l2"], None),
        (["--attacks", "pgd", "--dataset", "cifar10", "--data-dir", "/nonexistent"], "."),
    ],
)
def test_attack_cli_bad_input(checkpoint, tmp_path, argv, match):
    base = [
        "attack",
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        "digits",
        "--eps",
        "0.1",
        "--n",
        "8",
        "--out",
        str(tmp_path / "o"),
    ]
    args = _parse(base + argv)
    if match is None:
        assert args.func(args) == 0
        return
    with pytest.raises(UserError, match=match):
        args.func(args)


def test_attack_cli_rejects_negative_eps(checkpoint):
    with pytest.raises(SystemExit):
        _parse(["attack", "--checkpoint", str(checkpoint), "--eps", "-0.1"])


def _attack_run(checkpoint, out, *extra):
    args = _parse(["attack", "--checkpoint", str(checkpoint), "--dataset", "digits", "--split",
                   "test", "--attacks", "fgsm,pgd", "--eps", "0.1", "--steps", "5",
                   "--batch-size", "20", "--out", str(out), "--json", *extra])
    assert args.func(args) == 0


def test_sharded_attack_merges_into_the_single_run(checkpoint, tmp_path, capsys):
    """Shards at batch boundaries see the same seeded attacks as the whole run, so the merged
    report equals the unsharded one point for point."""
    from safetensors.torch import load_file

    from robust_ebm.evaluation import merge_attack_runs

    _attack_run(checkpoint, tmp_path / "all", "--n", "60")
    _attack_run(checkpoint, tmp_path / "b", "--start", "40", "--n", "20")
    _attack_run(checkpoint, tmp_path / "a", "--n", "40")
    capsys.readouterr()
    merged = merge_attack_runs([tmp_path / "b", tmp_path / "a"], tmp_path / "m")
    whole = json.loads((tmp_path / "all" / "robustness.json").read_text())
    assert merged["n"] == 60 and merged["start"] == 0 and merged["contiguous"]
    assert merged["robust_accuracy"] == pytest.approx(whole["robust_accuracy"], abs=1e-6)
    assert merged["clean_accuracy"] == pytest.approx(whole["clean_accuracy"], abs=1e-6)
    assert merged["fooled_by"] == whole["fooled_by"]
    for mine, ref in zip(merged["attacks"], whole["attacks"]):
        assert (mine["name"], mine["attacked"], mine["fooled"]) == (ref["name"], ref["attacked"], ref["fooled"])
        assert mine["robust_accuracy"] == pytest.approx(ref["robust_accuracy"], abs=1e-6)
    a, b = load_file(str(tmp_path / "m/adversarial.safetensors")), load_file(str(tmp_path / "all/adversarial.safetensors"))
    assert torch.equal(a["index"], torch.arange(60)) and torch.equal(a["robust"], b["robust"])
    torch.testing.assert_close(a["x_adv"], b["x_adv"])


def test_merge_attacks_command(checkpoint, tmp_path, capsys):
    """`robust-ebm merge-attacks OUT SHARD...` writes the library's merged report; bad shards
    give one stderr line and exit code 2."""
    from robust_ebm.cli import main

    _attack_run(checkpoint, tmp_path / "a", "--n", "20")
    _attack_run(checkpoint, tmp_path / "b", "--start", "20", "--n", "20")
    capsys.readouterr()
    assert main(["merge-attacks", str(tmp_path / "m"), str(tmp_path / "a"), str(tmp_path / "b"),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "m" / "robustness.json").read_text())
    assert printed["n"] == saved["n"] == 40 and printed["fooled_by"] == saved["fooled_by"]
    assert main(["merge-attacks", str(tmp_path / "m2"), str(tmp_path / "a"),
                 str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overlap" in err[0] and not (tmp_path / "m2").exists()


def test_merge_refuses_overlaps_and_mixed_settings(checkpoint, tmp_path, capsys):
    from robust_ebm.evaluation import merge_attack_runs

    _attack_run(checkpoint, tmp_path / "a", "--n", "20")
    _attack_run(checkpoint, tmp_path / "b", "--start", "10", "--n", "20")
    _attack_run(checkpoint, tmp_path / "c", "--start", "20", "--n", "20", "--eps", "0.2")
    with pytest.raises(UserError, match="overlap"):
        merge_attack_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    with pytest.raises(UserError, match="eps"):
        merge_attack_runs([tmp_path / "a", tmp_path / "c"], tmp_path / "m")
    assert not (tmp_path / "m").exists()
    with pytest.raises(UserError, match="past the end"):
        _attack_run(checkpoint, tmp_path / "d", "--start", "100000")


def test_attack_cli_step_size_and_gamma(checkpoint, tmp_path, capsys):
    """--step-size and --gamma reach the attacks: a vanishing step leaves PGD and HE-PGD near
    their random start; an attack that sets its own step says so in one line."""
    from robust_ebm.evaluation import build_attacks

    (_, he), = build_attacks(["he_pgd"], {"eps": 0.1, "step_size": 0.01, "gamma": 0.5})
    assert (float(he.step_size), he.loss.params["gamma"]) == (0.01, 0.5)
    robust = {}
    for name, extra in [("default", []), ("tiny", ["--step-size", "1e-9", "--gamma", "0.5"])]:
        _attack_run(checkpoint, tmp_path / name, "--n", "40", "--eps", "0.3", "--attacks",
                    "he_pgd", *extra)
        robust[name] = json.loads(capsys.readouterr().out)["robust_accuracy"]
    assert robust["tiny"] > robust["default"] + 0.2
    args = _parse(["attack", "--checkpoint", str(checkpoint), "--dataset", "digits", "--eps",
                   "0.1", "--attacks", "apgd_ce", "--step-size", "0.01", "--out", str(tmp_path / "x")])
    with pytest.raises(UserError, match="attack 'apgd_ce'.*step_size"):
        args.func(args)
