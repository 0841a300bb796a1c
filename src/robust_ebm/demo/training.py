"""Stage 1: WEAT_adv beside SAT, trained from scratch, with live energy dynamics.

Both objectives train the same small CNN from the same initial weights on the same seeded
Fashion-MNIST subset for ``train_evals x train_steps_per_eval`` steps (inner PGD at eps, one-cycle
LR). After every ``train_steps_per_eval`` steps the loop evaluates clean and PGD accuracy and the
energy gap dE(x) = E(x) - E(x*) on fixed test and training points (Mirza et al., arXiv
2407.06315: SAT drives dE(x) negative, i.e. E(x*) above E(x); WEAT weights samples by energy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import LABELS, DemoConfig
from .runner import Stage, StageContext

NAME = "training"
OBJECTIVES = ("pgd_at", "weat_adv")


def stage(cfg: DemoConfig) -> Stage:
    s = cfg.sizes
    params = cfg.common() | {
        "objectives": list(OBJECTIVES), "model": "small_cnn", "train_subset": s.train_subset,
        "batch_size": s.train_batch, "evals": s.train_evals,
        "steps_per_eval": s.train_steps_per_eval, "inner_steps": s.train_inner_steps,
        "inner_step_size": 2.5 * cfg.eps / s.train_inner_steps, "lr": 0.05,
        "eval_n": s.train_eval_n, "eval_steps": s.train_eval_steps,
    }
    return Stage(NAME, "training from scratch: WEAT_adv beside SAT", 2, params, (), run)


def _train_one(objective_name: str, p: dict[str, Any], train_set: Any, test_set: Any,
               out: Path, log: Any) -> list[dict[str, Any]]:
    """Train one objective; the live energy dynamics come from the loop's own callbacks
    (:class:`~robust_ebm.train.Evaluation` then :class:`~robust_ebm.train.EnergyTracking`,
    which writes ``out/energy.csv`` and ``out/energy_dynamics.png`` after every block)."""
    from ..models import create_model
    from ..objectives import make_objective
    from ..train import EnergyTracking, EvalConfig, Evaluation, TrainConfig, train

    torch.manual_seed(p["seed"])  # same initial weights for both objectives
    model = create_model(p["model"], train_set.num_classes, train_set.shape[0], train_set.mean,
                         train_set.std)
    objective = make_objective(objective_name, eps=p["eps"], step_size=p["inner_step_size"],
                               steps=p["inner_steps"])
    tcfg = TrainConfig(epochs=p["evals"], batch_size=p["batch_size"], lr=p["lr"], seed=p["seed"],
                       limit_train_batches=p["steps_per_eval"])
    ecfg = EvalConfig(eval_eps=p["eps"], eval_steps=p["eval_steps"], eval_n=p["eval_n"],
                      energy_n=p["eval_n"], eval_batch_size=500)
    callbacks = [Evaluation.from_config(ecfg, p["seed"], train_set, test_set=test_set),
                 EnergyTracking(out, title=LABELS[objective_name])]
    log(f"{objective_name}: {p['evals']} blocks of {p['steps_per_eval']} steps; after each, clean "
        f"and PGD-{p['eval_steps']} accuracy and dE(x) on {p['eval_n']} train / test points")
    return train(model, objective, train_set, tcfg, callbacks, device="cpu",
                 log=lambda s: log(f"{objective_name} {s.replace('epoch', 'block', 1)}"))


def _slim(history: list[dict[str, Any]], steps_per_eval: int) -> list[dict[str, Any]]:
    rows = []
    for rec in history:
        row: dict[str, Any] = {"step": rec["epoch"] * steps_per_eval,
                               "loss": rec["train_loss"].get("loss"),
                               "seconds": rec["epoch_seconds"]}
        for split, rep in rec.get("eval", {}).items():
            row[split] = {"accuracy": rep["accuracy"], "accuracy_adv": rep["accuracy_adv"],
                          "dE_x_mean": rep["dE_x"]["mean"], "dE_x_std": rep["dE_x"]["std"],
                          "E_x_mean": rep["E_x"]["mean"], "E_adv_mean": rep["E_adv"]["mean"]}
        rows.append(row)
    return rows


def run(ctx: StageContext) -> dict[str, Any]:
    from ..data import load_dataset

    p = ctx.params
    full = load_dataset(p["dataset"], "train", p["data_dir"])
    test = load_dataset(p["dataset"], "test", p["data_dir"])
    g = torch.Generator().manual_seed(p["seed"])
    train_set = full.subset(torch.randperm(len(full), generator=g)[: p["train_subset"]])
    curves = {}
    for name in OBJECTIVES:
        history = _train_one(name, p, train_set, test, ctx.dir / name, ctx.log)
        curves[name] = _slim(history, p["steps_per_eval"])
    plot_training(curves, ctx.dir / "dynamics.png", p["eps"])
    return {"curves": curves, "figures": {"dynamics": "dynamics.png"},
            "final": {k: v[-1] for k, v in curves.items()}}


def plot_training(curves: dict[str, list[dict[str, Any]]], path: Path, eps: float) -> Path:
    """Mean dE(x) (with std band) and clean / PGD accuracy against optimizer steps."""
    from ..reports.plots import pyplot, save_figure
    from .figures import LABELS, style

    plt = pyplot()
    with style():
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for name, rows in curves.items():
            steps = [r["step"] for r in rows]
            for split, ls in (("test", "-"), ("train", ":")):
                if split not in rows[0]:
                    continue
                m = [r[split]["dE_x_mean"] for r in rows]
                sd = [r[split]["dE_x_std"] for r in rows]
                line, = a1.plot(steps, m, ls, marker="o", ms=3, label=f"{LABELS[name]} ({split})")
                if split == "test":
                    a1.fill_between(steps, [a - b for a, b in zip(m, sd)],
                                    [a + b for a, b in zip(m, sd)], color=line.get_color(),
                                    alpha=0.12)
            a2.plot(steps, [r["test"]["accuracy"] for r in rows], "-o", ms=3,
                    label=f"{LABELS[name]} clean")
            a2.plot(steps, [r["test"]["accuracy_adv"] for r in rows], "--x", ms=3,
                    label=f"{LABELS[name]} PGD")
        a1.axhline(0, color="grey", lw=0.6)
        a1.set_xlabel("optimizer step")
        a1.set_ylabel("dE(x) = E(x) - E(x*)")
        a1.set_title("energy gap of natural vs adversarial points")
        a2.set_xlabel("optimizer step")
        a2.set_ylabel("test accuracy")
        a2.set_ylim(-0.02, 1.02)
        a2.set_title(f"clean and PGD accuracy (L-inf eps {eps:g})")
        a1.legend()
        a2.legend()
        fig.tight_layout()
    return save_figure(fig, path)
