"""The paper-scale configs (configs/cifar10, configs/cifar100) parse with the run loader and
build their objective and model; every file states its reported numbers (or "not verified")
and a wall-time estimate labelled as one."""

from __future__ import annotations

from pathlib import Path

import pytest

from robust_ebm.models import create_model
from robust_ebm.objectives import make_objective
from robust_ebm.train.config import default_config, eval_config, load_toml, merge, train_config

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "configs").glob("cifar10*/*.toml"))
OBJECTIVES = {"pgd_at", "trades", "mart", "weat_adv", "weat_nat"}


def test_every_objective_and_architecture_is_covered():
    seen = {(f.parent.name, load_toml(f)["model"]["name"], load_toml(f)["objective"]["name"])
            for f in FILES}
    want = {(d, a, o) for d in ("cifar10", "cifar100") for a in ("resnet18", "wide_resnet34_10")
            for o in OBJECTIVES}
    assert seen == want


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses_and_builds(path):
    cfg = merge(default_config(), load_toml(path))
    tcfg = train_config(cfg)  # unknown or invalid [train] keys raise
    ecfg = eval_config(cfg)
    assert cfg["data"]["dataset"] == path.parent.name
    obj = dict(cfg["objective"])
    objective = make_objective(obj.pop("name"), **obj)
    # the papers' CIFAR budgets: L-inf 8/255, step 2/255, 10 steps; PGD-20 per-epoch check
    assert (objective.eps, objective.step_size, objective.steps) == (8 / 255, 2 / 255, 10)
    assert (ecfg.eval_eps, ecfg.eval_step_size, ecfg.eval_steps) == (8 / 255, 2 / 255, 20)
    assert (tcfg.epochs, tcfg.batch_size, tcfg.lr, tcfg.schedule) == (100, 128, 0.1, "onecycle")
    text = path.read_text()
    assert "Reported" in text and ("AutoAttack" in text or "not verified" in text)
    assert "ESTIMATE" in text and "not measured" in text


@pytest.mark.parametrize("arch", ["resnet18", "wide_resnet34_10"])
def test_config_models_build_for_both_datasets(arch):
    for k in (10, 100):
        model = create_model(arch, num_classes=k)
        assert model.arch["num_classes"] == k
