"""Training callbacks: hook order and record sharing, the robust-overfitting warning, the
[train] section's split into TrainConfig and EvalConfig, and objectives' inner attack built
once."""

import json

import pytest
import torch
from conftest import write_tiny_npz

from robust_ebm.attacks import make_attack
from robust_ebm.data import load_dataset
from robust_ebm.errors import UserError
from robust_ebm.models import create_model
from robust_ebm.objectives import make_objective
from robust_ebm.train import (
    Callback,
    EnergyTracking,
    EvalConfig,
    Evaluation,
    Run,
    TrainConfig,
    default_callbacks,
    train,
)
from robust_ebm.train.config import default_config, eval_config, train_config
from robust_ebm.train.state import TrainState


class _Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_start(self, run):
        self.calls.append(("start", run.state.epoch))

    def on_epoch_end(self, run, record):
        self.calls.append(("epoch", record["epoch"], sorted(record)))
        record["custom"] = record["epoch"] * 10

    def on_train_end(self, run):
        self.calls.append(("end", len(run.state.history)))


def test_hooks_run_in_order_and_share_the_record(tmp_path):
    ds = load_dataset(str(write_tiny_npz(tmp_path / "t.npz")), "train")
    model = create_model("mlp", 2, 1, image_size=12)
    cfg = TrainConfig(epochs=2, batch_size=32)
    rec = _Recorder()
    cbs = [Evaluation.from_config(EvalConfig(energy_n=8, eval_n=8), cfg.seed, ds, test_set=ds), rec]
    out = tmp_path / "r"
    hist = train(model, make_objective("standard"), ds, cfg, cbs, out_dir=out, log=lambda s: None)
    keys = ["epoch", "epoch_seconds", "eval", "eval_attack", "lr", "train_loss"]
    assert rec.calls == [("start", 0), ("epoch", 1, keys), ("epoch", 2, keys), ("end", 2)]
    assert [h["custom"] for h in hist] == [10, 20]
    assert set(hist[0]["eval"]) == {"train", "test"} and hist[0]["eval_attack"] is None
    saved = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["custom"] for h in saved] == [10, 20]  # the loop writes after the callbacks
    assert not (out / "last.safetensors").exists()  # no Checkpoints callback: no weights


def _record(epoch, val_adv, train_de):
    return {"epoch": epoch, "eval": {"val": {"accuracy_adv": val_adv},
                                     "train": {"dE_x": {"mean": train_de}}}}


@pytest.mark.parametrize("objective,warns", [("pgd_at", True), ("standard", False)])
def test_energy_tracking_flags_robust_overfitting(objective, warns):
    history = [_record(1, 0.50, -1.0), _record(2, 0.45, -2.0)]  # acc -5 points, |dE| x2
    run = Run(None, make_objective(objective), TrainConfig(), TrainState(history=history), print)
    EnergyTracking().on_epoch_end(run, history[-1])
    assert ("warning" in history[-1]) == warns
    if warns:
        assert "robust overfitting" in history[-1]["warning"] and "epoch 1" in history[-1]["warning"]
    calm = [_record(1, 0.50, -1.0), _record(2, 0.45, -1.2)]  # accuracy fell, dE did not grow
    run.state.history = calm
    EnergyTracking().on_epoch_end(run, calm[-1])
    assert "warning" not in calm[-1]


def test_train_section_splits_into_loop_and_eval_settings():
    cfg = default_config()
    cfg["train"].update(lr=0.2, eval_eps=0.1, milestones=[0.3, 0.6], tensorboard=True)
    tcfg, ecfg = train_config(cfg), eval_config(cfg)
    assert tcfg.lr == 0.2 and tcfg.milestones == (0.3, 0.6)
    assert ecfg.eval_eps == 0.1 and ecfg.tensorboard
    assert not hasattr(tcfg, "eval_eps") and not hasattr(ecfg, "lr")
    cfg["train"]["bogus"] = 1
    for build in (train_config, eval_config):
        with pytest.raises(UserError, match="bogus"):
            build(cfg)
    with pytest.raises(UserError, match="eval_steps"):
        EvalConfig(eval_steps=0)


def test_default_callbacks_follow_the_settings(tmp_path):
    ds = load_dataset(str(write_tiny_npz(tmp_path / "t.npz")), "train")
    names = lambda cbs: [type(c).__name__ for c in cbs]  # noqa: E731
    assert names(default_callbacks(EvalConfig(), 0, ds)) == ["Evaluation", "EnergyTracking"]
    assert names(default_callbacks(EvalConfig(tensorboard=True), 0, ds, out_dir=tmp_path)) == [
        "Evaluation", "EnergyTracking", "Checkpoints", "TensorBoard"]


@pytest.mark.parametrize("name,inner,options", [
    ("trades", "trades_kl", {}),
    ("mart", "pgd", {"random_start": False, "init_std": 0.001}),
])
def test_inner_attack_is_built_once_and_reseeded_per_call(monkeypatch, name, inner, options):
    import robust_ebm.objectives.adversarial as adv

    built = []
    monkeypatch.setattr(adv, "make_attack", lambda *a, **k: built.append(a) or make_attack(*a, **k))
    budget = {"eps": 0.1, "step_size": 0.05, "steps": 3}
    obj = make_objective(name, **budget)
    model = create_model("small_cnn", 10, 1)
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    torch.manual_seed(5)
    first = obj._attack(model, x, y)
    second = obj._attack(model, x, y)
    assert built == [(inner,)]  # at construction, not per call
    torch.manual_seed(5)  # the same as building the attack with the step's seed
    seed = int(torch.randint(0, 2**62, (1,)).item())
    ref = make_attack(inner, **budget, **options, seed=seed)(model, x, y)
    assert torch.equal(first, ref)
    assert not torch.equal(first, second)  # each call draws a fresh seed
