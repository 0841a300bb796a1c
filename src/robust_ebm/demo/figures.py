"""The demo's one figure style: reports.plots (Agg, atomic PNG) plus shared rc settings.

Energy sign, stated once for every figure: E(x) = -logsumexp f(x), E(x, y) = -f(x)[y];
lower energy = more likely under the classifier read as an EBM.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .config import LABELS

__all__ = ["FMNIST_CLASSES", "LABELS", "save_mosaic", "style"]

RC = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.25,
    "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 110,
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """``with style(): fig = plt.subplots(...)``: the demo's rc settings."""
    from ..reports.plots import pyplot

    with pyplot().rc_context(RC):
        yield


FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot")


def save_mosaic(path: str | os.PathLike[str], x: Tensor, y: Tensor, cols: int = 8,
                title: str = "") -> Path:
    """Grey images ``x`` (M, 1, H, W) in [0, 1] as one mosaic, one row per class of ``y``
    (at most ``cols`` per row), drawn with a single imshow (fast even on a loaded CPU)."""
    from ..reports.plots import pyplot, save_figure

    classes = sorted(int(c) for c in torch.unique(y))
    h, w = x.shape[-2:]
    canvas = np.ones(((h + 1) * len(classes) + 1, (w + 1) * cols + 1), dtype=np.float32)
    for r, c in enumerate(classes):
        for j, i in enumerate((y == c).nonzero().squeeze(1)[:cols].tolist()):
            canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + j * (w + 1): 1 + j * (w + 1) + w] = (
                x[i, 0].detach().float().clamp(0, 1).cpu().numpy())
    plt = pyplot()
    with style():
        fig, ax = plt.subplots(figsize=(0.55 * cols + 1.4, 0.55 * len(classes) + 0.5))
        ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks([1 + r * (h + 1) + h / 2 for r in range(len(classes))])
        ax.set_yticklabels([FMNIST_CLASSES[c] if c < len(FMNIST_CLASSES) else str(c)
                            for c in classes])
        ax.set_xticks([])
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
        if title:
            ax.set_title(title)
        fig.tight_layout()
    return save_figure(fig, path)


def _horizontal() -> dict[str, object]:
    """boxplot's keyword for horizontal boxes: 'orientation' from matplotlib 3.10, 'vert' before."""
    import matplotlib

    major, minor = (int(v) for v in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def plot_energy_boxes(energies: dict[str, dict[str, np.ndarray]], path: str | os.PathLike[str],
                      eps: float) -> Path:
    """One panel per model: box plots (5-95% whiskers) of E(x) for clean images and for each
    attack's x*. ``energies``: model label -> {"clean" or attack name -> (N,) energies}."""
    from ..reports.plots import pyplot, save_figure

    plt = pyplot()
    with style():
        fig, axes = plt.subplots(1, len(energies), figsize=(3.6 * len(energies), 3.8),
                                 squeeze=False)
        for ax, (model, rows) in zip(axes[0], energies.items()):
            names = list(rows)
            ax.boxplot([rows[n] for n in names], whis=(5, 95), showfliers=False, widths=0.6,
                       **_horizontal())
            ax.set_yticks(range(1, len(names) + 1))
            ax.set_yticklabels(names)
            ax.invert_yaxis()
            ax.axvline(float(np.median(rows["clean"])), color="tab:blue", ls="--", lw=0.8)
            ax.set_xlabel("E(x)  (lower = more likely)")
            ax.set_title(model)
        fig.suptitle(f"free energy of clean and attacked test images (L-inf eps {eps:g}); "
                     "dashed: clean median")
        fig.tight_layout()
    return save_figure(fig, path)
