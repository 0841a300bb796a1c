"""Energy dynamics as a first-class record of training (Mirza et al. 2024, Sec. 3).

Each epoch, on fixed subsets, the model is attacked with PGD-k and we record clean and
adversarial accuracy and summaries of E(x), E(x*), E(x,y), E(x*,y), dE(x), dE(x,y) and CE
(the pipeline of :func:`robust_ebm.analysis.analyze_energy`). Records go to ``metrics.jsonl`` (by the loop),
``energy.csv``, ``energy_dynamics.png`` and, optionally, TensorBoard event files here.
Robust overfitting is flagged when validation
robust accuracy falls from its best while mean dE(x) on training data diverges.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from ..analysis import TRACKED, analyze_energy
from ..data import ImageDataset
from ..errors import UserError
from ..io import atomic_write_text
from ..reports.plots import pyplot, save_figure


def evaluate_subsets(
    model: nn.Module, subsets: dict[str, ImageDataset], attack: Any, batch_size: int
) -> dict[str, dict[str, Any]]:
    """For each named subset, the :data:`~robust_ebm.analysis.TRACKED` quantities of the
    energy-under-attack pipeline (:func:`robust_ebm.analysis.analyze_energy`) for ``attack``."""
    return {
        name: analyze_energy(model, ds.images, ds.labels, {"attack": attack}, batch_size)
        .report("attack", TRACKED)
        for name, ds in subsets.items()
    }


CSV_STATS = ("mean", "std", "q05", "q50", "q95")


def eval_quantities(record: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(split, quantity, value) for each evaluated quantity of one epoch record: value is a
    summary dict (mean, std, quantiles) for energies and CE, a float for accuracies; the
    sample count ``n`` is left out."""
    for split, rep in record.get("eval", {}).items():
        for key, val in rep.items():
            if key != "n":
                yield split, key, val


def write_csv(path: str | os.PathLike[str], history: list[dict[str, Any]]) -> Path:
    """One row per (epoch, split, quantity) with mean/std/quantiles; accuracies as 'mean'."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["epoch", "split", "quantity", *CSV_STATS])
    for rec in history:
        for split, key, val in eval_quantities(rec):
            if isinstance(val, dict):
                w.writerow([rec["epoch"], split, key, *(f"{val[s]:.6g}" for s in CSV_STATS)])
            else:
                w.writerow([rec["epoch"], split, key, f"{val:.6g}", "", "", "", ""])
    return atomic_write_text(path, buf.getvalue())


def plot_dynamics(path: str | os.PathLike[str], history: list[dict[str, Any]], title: str = "") -> Path:
    """Mean dE(x), dE(x,y) (with std bands) and clean/robust accuracy per epoch."""
    plt = pyplot()
    epochs = [r["epoch"] for r in history]
    splits = sorted({s for r in history for s in r.get("eval", {})})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for split in splits:
        recs = [r["eval"][split] for r in history if split in r.get("eval", {})]
        ep = [r["epoch"] for r in history if split in r.get("eval", {})]
        for ax, key in ((axes[0], "dE_x"), (axes[1], "dE_xy")):
            m = [x[key]["mean"] for x in recs]
            s = [x[key]["std"] for x in recs]
            ax.plot(ep, m, marker="o", label=split)
            ax.fill_between(ep, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.15)
        axes[2].plot(ep, [x["accuracy"] for x in recs], marker="o", label=f"{split} clean")
        axes[2].plot(ep, [x["accuracy_adv"] for x in recs], marker="x", ls="--", label=f"{split} PGD")
    for ax, t in zip(axes, ("dE(x) = E(x) - E(x*)", "dE(x,y) = E(x,y) - E(x*,y)", "accuracy")):
        ax.set_title(t)
        ax.set_xlabel("epoch")
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=7)
    if epochs:
        for ax in axes:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def overfitting_warning(
    history: list[dict[str, Any]], acc_drop: float = 0.01, de_growth: float = 0.5
) -> str | None:
    """A message when val robust accuracy fell more than ``acc_drop`` below its best while the
    train-subset |mean dE(x)| grew by more than ``de_growth`` (relative) since that best epoch."""
    recs = [r for r in history if "val" in r.get("eval", {}) and "train" in r.get("eval", {})]
    if len(recs) < 2:
        return None
    best = max(recs, key=lambda r: r["eval"]["val"]["accuracy_adv"])
    last = recs[-1]
    drop = best["eval"]["val"]["accuracy_adv"] - last["eval"]["val"]["accuracy_adv"]
    de_best = abs(best["eval"]["train"]["dE_x"]["mean"])
    de_last = abs(last["eval"]["train"]["dE_x"]["mean"])
    if drop > acc_drop and de_last > (1 + de_growth) * de_best:
        return (
            f"robust overfitting: validation PGD accuracy {last['eval']['val']['accuracy_adv']:.4f} is "
            f"{drop:.4f} below its best (epoch {best['epoch']}) while |mean dE(x)| on training data "
            f"grew from {de_best:.3f} to {de_last:.3f}"
        )
    return None


class TensorBoardLog:
    """Per-epoch scalars for TensorBoard (needs the ``tensorboard`` package).

    Tags: ``train/<loss term>``, ``lr`` and ``<split>/<quantity>`` for the evaluated subsets,
    with ``_mean``/``_std`` for energy summaries; the step is the epoch. ``purge_step`` drops
    events at or after that epoch left by an interrupted run, so a resumed run has one curve.
    """

    def __init__(self, log_dir: str | os.PathLike[str], purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "tensorboard logging needs the tensorboard package: pip install tensorboard "
                "(or train without --tensorboard)"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        step = record["epoch"]
        add = self.writer.add_scalar
        for key, val in record.get("train_loss", {}).items():
            add(f"train/{key}", val, step)
        if "lr" in record:
            add("lr", record["lr"], step)
        for split, key, val in eval_quantities(record):
            if isinstance(val, dict):
                add(f"{split}/{key}_mean", val["mean"], step)
                add(f"{split}/{key}_std", val["std"], step)
            else:
                add(f"{split}/{key}", val, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
