"""Plots of the energy analysis and the detector (matplotlib, Agg backend, atomic PNG writes)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write

__all__ = [
    "plot_energy_histograms", "plot_energy_trajectory", "plot_he_study", "plot_roc", "plot_sweep",
    "pyplot", "save_figure",
]


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    plt = pyplot()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110,
                                                          bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_energy_histograms(
    clean: np.ndarray, adversarial: Mapping[str, np.ndarray], path: str | os.PathLike[str],
    title: str = "E(x): clean vs attacked",
) -> Path:
    """One panel per attack: histogram of E(x) (clean) overlaid with E(x*)."""
    plt = pyplot()
    names = list(adversarial)
    cols = min(4, max(1, len(names)))
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    allv = np.concatenate([np.asarray(clean)] + [np.asarray(v) for v in adversarial.values()])
    bins = np.linspace(float(allv.min()), float(allv.max()) + 1e-9, 41)
    for ax, name in zip(axes.flat, names):
        ax.hist(clean, bins=bins, alpha=0.55, label="clean", color="tab:blue")
        ax.hist(adversarial[name], bins=bins, alpha=0.55, label=name, color="tab:red")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("E(x)  (lower = more likely)", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_sweep(sweep: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """PGD over steps and over eps: mean +- std of E(x*) (left axis) next to accuracy (right)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    clean_e = sweep["clean"]["E_x"]["mean"]
    for ax, kind, xlabel in ((axes[0], "steps", "PGD steps"), (axes[1], "eps", "eps")):
        rows = sweep[kind]
        xs = [r[kind] for r in rows]
        m = np.array([r["E_adv"]["mean"] for r in rows])
        s = np.array([r["E_adv"]["std"] for r in rows])
        ax.plot(xs, m, "o-", color="tab:red", label="E(x*) mean")
        ax.fill_between(xs, m - s, m + s, color="tab:red", alpha=0.2, label="+- std")
        ax.axhline(clean_e, color="tab:blue", ls="--", label="clean E(x) mean")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("energy")
        if kind == "steps":
            ax.set_xscale("log")
        ax2 = ax.twinx()
        ax2.plot(xs, [r["accuracy_adv"] for r in rows], "s:", color="k", label="accuracy")
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_ylabel("robust accuracy")
        ax.legend(fontsize=7, loc="upper left")
        ax2.legend(fontsize=7, loc="upper right")
    fig.suptitle("PGD-CE: energy of x* vs steps and budget")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_roc(
    curves: Mapping[str, tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray,
                               float | None]],
    path: str | os.PathLike[str], title: str = "energy detector ROC",
    point: tuple[float, float] | None = None,
) -> Path:
    """ROC curves ``name -> (fpr, tpr, auroc)``; ``point`` marks (FPR, TPR) at tau."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for name, (fpr, tpr, auc) in curves.items():
        label = name if auc is None else f"{name} (AUROC {auc:.3f})"
        ax.plot(fpr, tpr, label=label, lw=1.3)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    if point is not None:
        ax.plot([point[0]], [point[1]], "k*", ms=10, label="tau")
    ax.set_xlabel("FPR (clean flagged)")
    ax.set_ylabel("TPR (adversarial flagged)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_he_study(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """HE-PGD over gamma: robust accuracy, detector TPR/FPR, mean +- std of E(x*) - E(x)."""
    plt = pyplot()
    g = [r["gamma"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot(g, [r["accuracy_adv"] for r in rows], "o-", label="robust accuracy")
    if any(r.get("tpr") is not None for r in rows):
        a1.plot(g, [np.nan if r.get("tpr") is None else r["tpr"] for r in rows], "s-",
                label="detector TPR")
        a1.plot(g, [r.get("fpr", np.nan) for r in rows], "k:", label="detector FPR")
    a1.set_xlabel("gamma")
    a1.set_ylim(-0.02, 1.02)
    a1.legend(fontsize=7)
    m = np.array([r["E_rel_mean"] for r in rows])
    s = np.array([r["E_rel_std"] for r in rows])
    a2.plot(g, m, "o-", color="tab:red")
    a2.fill_between(g, m - s, m + s, color="tab:red", alpha=0.2)
    a2.axhline(0, color="grey", ls=":")
    a2.set_xlabel("gamma")
    a2.set_ylabel("E(x*) - E(x)")
    fig.suptitle("HE-PGD: CE + gamma E(x)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_energy_trajectory(
    path: str | os.PathLike[str],
    summary: Mapping[str, Any],
    energy: str,
    title: str,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Mean +- std of the SGLD energy at each step, overall and per class (two panels).

    ``summary`` is :func:`robust_ebm.sampling.study.energy_summary`'s dict; ``energy`` names the
    energy descended (joint, free or ce) for the axis label.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_all, ax_cls = fig.subplots(1, 2)
    label = {"joint": "E(x, y)", "free": "E(x)", "ce": "CE(x, y)"}.get(energy, "energy")
    m = np.asarray(summary["overall"]["mean"])
    s = np.asarray(summary["overall"]["std"])
    steps = np.arange(len(m))
    ax_all.plot(steps, m, color="k", label="all classes")
    ax_all.fill_between(steps, m - s, m + s, color="k", alpha=0.2, label="+- std")
    ax_all.set_title("overall")
    for c, st in summary["per_class"].items():
        cm, cs = np.asarray(st["mean"]), np.asarray(st["std"])
        name = class_names[int(c)] if class_names and int(c) < len(class_names) else c
        (line,) = ax_cls.plot(steps, cm, lw=1, label=str(name))
        ax_cls.fill_between(steps, cm - cs, cm + cs, color=line.get_color(), alpha=0.08)
    ax_cls.set_title("per class (mean, band +- std)")
    for ax in (ax_all, ax_cls):
        ax.set_xlabel("SGLD step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_all.legend(fontsize=7)
    ax_cls.legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
