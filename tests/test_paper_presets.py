"""Every paper preset under configs/paper/ parses and builds the objects it describes, with the
published recipe (docs/fidelity.md)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from robust_ebm.attacks import make_attack
from robust_ebm.data.catalog import list_datasets
from robust_ebm.detection.detector import PUBLISHED_TEMPERATURES
from robust_ebm.models import list_models
from robust_ebm.objectives import make_objective
from robust_ebm.sampling import SGLD, ClassPCAInit
from robust_ebm.train.callbacks import eval_attack
from robust_ebm.train.config import (
    default_config,
    eval_config,
    load_toml,
    merge,
    model_spec,
    train_config,
)

ROOT = Path(__file__).resolve().parents[1] / "configs" / "paper"
TRAIN = sorted(p for p in (ROOT / "eccv2024").glob("*.toml") if not p.name.startswith("generate"))
EPS, STEP = 8 / 255, 2 / 255


def test_every_objective_and_data_set_has_a_preset():
    names = {p.stem for p in TRAIN}
    assert names == {f"{o}-{d}" for o in ("sat", "trades", "mart", "weat_adv", "weat_nat")
                     for d in ("cifar10", "cifar100", "svhn")}


@pytest.mark.parametrize("path", TRAIN, ids=lambda p: p.stem)
def test_eccv2024_training_preset_loads_with_the_published_recipe(path):
    cfg = merge(default_config(), load_toml(path))
    tcfg = train_config(cfg)  # unknown or invalid [train] keys raise here
    hp = {k: v for k, v in cfg["objective"].items() if k != "name"}
    obj = make_objective(cfg["objective"]["name"], **hp)
    assert cfg["data"]["dataset"] in list_datasets() and cfg["data"]["val_size"] == 0
    assert cfg["model"]["name"] == "resnet18" and "resnet18" in list_models()
    assert model_spec(cfg) == ("resnet18", False, {})  # raw [0,1] inputs, as published
    assert (tcfg.epochs, tcfg.batch_size, tcfg.lr, tcfg.momentum, tcfg.weight_decay) == (
        100, 128, 0.1, 0.9, 5e-4)
    assert (tcfg.schedule, tcfg.pct_start, tcfg.anneal, tcfg.cycle_momentum) == (
        "onecycle", 0.25, "cos", True)
    assert (tcfg.crop_padding, tcfg.flip) == (4, True)
    ecfg = eval_config(cfg)  # the evaluation keys of [train] land on the callbacks' side
    assert (ecfg.eval_steps, ecfg.eval_clip_start) == (20, False)
    assert eval_attack(ecfg, tcfg.seed).clip_start is False
    assert obj.eps == pytest.approx(EPS) and obj.step_size == pytest.approx(STEP)
    assert obj.steps == 10
    name = cfg["objective"]["name"]
    if name != "pgd_at":
        assert obj.beta == 6.0 and obj.clip_start is False
        assert obj.kl_form == ("exact" if name == "trades" else "log_eps")
    if name == "trades":
        assert obj.forward_passes == 3


def _read(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def test_beadini2023_presets_build_the_published_attacks_and_detector_grid():
    he = _read(ROOT / "beadini2023" / "he_pgd-cifar10.toml")["attack"]
    attack = make_attack(**he)
    assert (attack.steps, attack.loss.params["gamma"]) == (20, 1.5)
    assert float(attack.step_size) == pytest.approx(1 / 255)


def _cli(*words: str):
    from robust_ebm.cli.main import parse_args

    return parse_args(list(words))


def test_beadini2023_detector_flags_file_gives_the_published_protocol():
    path = str(ROOT / "beadini2023" / "detector-cifar10.toml")
    cal = _cli("detect", "calibrate", "--config", path, "--dataset", "cifar10")
    assert (cal.attack, cal.eps, cal.steps, cal.step_size) == ("pgd", pytest.approx(EPS), 40,
                                                              pytest.approx(1 / 255))
    assert (cal.temperatures, cal.positives, cal.direction) == ("published", "all", "below")
    ev = _cli("detect", "evaluate", "--config", path, "--detector", "d.json", "--steps", "7")
    assert (ev.positives, ev.step_size, ev.steps) == ("all", pytest.approx(1 / 255), 7)
    assert not hasattr(ev, "temperatures")  # the [calibrate] table stays with calibrate
    assert PUBLISHED_TEMPERATURES == (0.1, 0.2, 0.5, 1.0, 2.0, 10.0, 20.0)


def test_eccv2024_generation_flags_file_builds_sampler_and_init():
    args = _cli("generate", "--config", str(ROOT / "eccv2024" / "generate-cifar10.toml"),
                "--steps", "5")  # a flag given on the command line wins
    sgld = SGLD(step_size=args.step_size, momentum=args.momentum, noise_std=args.noise_std,
                steps=args.steps, energy=args.energy, noise_scaling=args.noise_scaling,
                energy_reduction=args.energy_reduction)
    assert (sgld.step_size, sgld.steps, sgld.momentum, sgld.noise_scaling) == (
        0.8, 5, 0.0, "sqrt_2_step")
    assert (args.init, args.pca_variance, args.pca_sigma) == ("pca", 0.95, 0.005)
    pca = ClassPCAInit(variance=args.pca_variance, sigma=args.pca_sigma,
                       component_rule=args.pca_rule)
    assert pca.component_rule == "below"


@pytest.mark.parametrize("content, needle", [
    ("noise_scaling = 'alpha'", "--noise-scaling"),
    ("no_such_flag = 1", "unrecognized arguments: --no-such-flag"),
    ("steps = [", "not valid TOML"),
])
def test_bad_flags_file_one_line_naming_the_file(tmp_path, capsys, content, needle):
    from robust_ebm.cli import main

    path = tmp_path / "bad.toml"
    path.write_text(content + "\n")
    code = main(["generate", "--config", str(path), "--out", str(tmp_path / "o")])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(path) in lines[0] and needle in lines[0], err


@pytest.mark.slow  # ResNet-18 on CPU: ~10-30 s
@pytest.mark.parametrize("preset", ["trades-cifar10"])
def test_train_command_runs_a_preset(preset, tmp_path, tiny_npz, capsys):
    """`robust-ebm train --config PRESET` end to end, on tiny data (one batch, one epoch)."""
    import json

    from robust_ebm.cli import main

    out = tmp_path / "run"
    overrides = [f"data.dataset={tiny_npz}", "train.epochs=1", "train.batch_size=16",
                 "train.limit_train_batches=1", "train.eval_n=16", "train.energy_n=16",
                 "objective.steps=1", "train.eval_steps=1"]
    argv = ["train", "--config", str(ROOT / "eccv2024" / f"{preset}.toml"), "--out", str(out),
            "--json"] + [a for o in overrides for a in ("--set", o)]
    code = main(argv)
    _, err = capsys.readouterr()
    assert code == 0, err
    run = json.loads((out / "run.json").read_text())
    cfg = run.get("config", run)
    assert cfg["train"]["anneal"] == "cos" and cfg["train"]["cycle_momentum"] is True
    assert cfg["objective"]["clip_start"] is False and cfg["model"]["name"] == "resnet18"
    assert cfg["model"]["normalize"] is False
