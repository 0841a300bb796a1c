"""Class-conditional generation in batches, and a PNG grid of the result.

The CLI ``generate`` command is meant to be a thin layer over :func:`generate` and
:func:`save_grid`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.loader import derive_seed
from ..errors import UserError
from ..io import atomic_write
from .init import ChainStreams, Init
from .sgld import SGLD

__all__ = ["Generation", "generate", "sample_classes", "save_grid"]


@dataclass(frozen=True)
class Generation:
    """Samples of several classes.

    Attributes:
        x: (M, C, H, W) final samples on the CPU, M = len(classes) * n_per_class, grouped by class
            in the order of ``classes``.
        y: (M,) their classes.
        energy_trajectory: (steps + 1, M) energy of each chain at each step (CPU).
        x0: (M, C, H, W) the starting points, or None when not kept.
        stopped_at: (M,) the step at which each chain stopped (``steps`` when it never did),
            when the sampler stops adaptively (``SGLD.stop_tolerance``); else None.
        config: what produced them (sampler, init, seed, batch size, device).
    """

    x: Tensor
    y: Tensor
    energy_trajectory: Tensor
    x0: Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)
    stopped_at: Tensor | None = None


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def chain_ids(classes: Sequence[int], n_per_class: int) -> Tensor:
    """(len(classes) * n_per_class,) int64 chain ids in class order: class c in the high 32
    bits, the chain's index j within its class in the low ones (a class listed twice goes on
    counting), so chain (c, j) has the same id in any request."""
    firsts: list[int] = []
    seen: dict[int, int] = {}
    for c in classes:
        firsts.append(seen.get(int(c), 0))
        seen[int(c)] = firsts[-1] + n_per_class
    within = torch.tensor(firsts).repeat_interleave(n_per_class)
    within += torch.arange(n_per_class).repeat(len(classes))
    y = torch.tensor([int(c) for c in classes], dtype=torch.long).repeat_interleave(n_per_class)
    return (y << 32) | within


def _run_config(
    sampler: SGLD,
    init: Init,
    classes: Sequence[int],
    n_per_class: int,
    batch_size: int,
    seed: int | None,
    device: torch.device,
) -> dict[str, Any]:
    """The record of a :func:`sample_classes` run (settings and seeding scheme)."""
    return {
        "sampler": sampler.config(),
        "init": init.config() if hasattr(init, "config") else type(init).__name__,
        "classes": [int(c) for c in classes],
        "n_per_class": n_per_class,
        "batch_size": batch_size,
        "seed": seed,
        "seeding": "per chain (class c, index j): streams keyed by (derive_seed(seed, 0), c, j) "
                   "for x0 and (derive_seed(seed, 1), c, j) for the noise",
        "device": str(device),
    }


def sample_classes(
    model: nn.Module,
    sampler: SGLD,
    init: Init,
    classes: Sequence[int],
    n_per_class: int,
    batch_size: int = 100,
    seed: int | None = 0,
    keep_x0: bool = False,
    chains: tuple[int, int] | None = None,
) -> Generation:
    """Draw ``n_per_class`` samples of each class in ``classes`` with ``sampler`` from ``init``.

    Chains run in batches of ``batch_size`` on the model's device. With a seed, every chain
    has its own random streams (:mod:`robust_ebm.attacks.streams`), keyed by (seed, its class,
    its index j < n_per_class within the class): one on the CPU for its starting point, one on
    the model's device for the sampler noise. Sample j of class c thus starts from the same x0
    and draws the same noise whatever the batch size, the other classes asked for, its
    position, or the rank it runs on (its samples too, where the model's per-chain arithmetic
    does not depend on the batch: docs/attacks.md). Without a seed both come from torch's
    global RNG, per batch.

    Args:
        chains: Only chains ``[start, stop)`` of the M = len(classes) * n_per_class (in class
            order), for sharding over processes; ``start`` must be a multiple of
            ``batch_size``, so that every batch is one a whole run computes and the samples
            are bit-identical to it on any device. None: all.
    """
    if n_per_class < 1 or batch_size < 1:
        raise UserError(f"n_per_class and batch_size must be >= 1; got {n_per_class}, {batch_size}")
    if len(classes) == 0:
        raise UserError("classes is empty")
    device = _model_device(model)
    y_all = torch.tensor(list(classes), dtype=torch.long).repeat_interleave(n_per_class)
    first, stop = (0, len(y_all)) if chains is None else chains
    if first % batch_size or not 0 <= first < stop <= len(y_all):
        raise UserError(f"chains must be [start, stop) inside [0, {len(y_all)}] with start a "
                        f"multiple of batch_size {batch_size}; got {chains}")
    ids_all = chain_ids(classes, n_per_class)
    noise_seed = None if seed is None else derive_seed(seed, 1)
    xs, trajs, x0s, stops = [], [], [], []
    for start in range(first, stop, batch_size):
        part = slice(start, min(start + batch_size, stop))
        y, ids = y_all[part], ids_all[part]
        streams = None if seed is None else ChainStreams.for_chains(ids, derive_seed(seed, 0))
        x0 = init.sample(y, streams)
        res = sampler(model, x0.to(device), y.to(device), seed=noise_seed, chain_ids=ids.to(device))
        xs.append(res.x.cpu())
        trajs.append(res.energy_trajectory.cpu())
        if res.stopped_at is not None:
            stops.append(res.stopped_at.cpu())
        if keep_x0:
            x0s.append(x0)
    return Generation(
        x=torch.cat(xs),
        y=y_all[first:stop],
        energy_trajectory=torch.cat(trajs, dim=1),
        x0=torch.cat(x0s) if keep_x0 else None,
        config=_run_config(sampler, init, classes, n_per_class, batch_size, seed, device),
        stopped_at=torch.cat(stops) if stops else None,
    )


def generate(
    model: nn.Module,
    init: Init,
    sampler: SGLD,
    classes: Sequence[int],
    n_per_class: int,
    batch_size: int = 100,
    seed: int | None = 0,
    keep_x0: bool = True,
) -> Generation:
    """The whole generation step of the CLI: samples, labels, trajectories and x0 (kept by
    default, so a report can show start and end). See :func:`sample_classes`."""
    return sample_classes(model, sampler, init, classes, n_per_class, batch_size, seed, keep_x0)


def save_grid(
    path: str | os.PathLike[str],
    x: Tensor,
    y: Tensor,
    max_per_class: int = 10,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    cell_inches: float = 0.8,
) -> Path:
    """Save a PNG grid, one row per class (in increasing class order), at most
    ``max_per_class`` images per row. ``x`` (M, C, H, W) in [0, 1]; C is 1 or 3. Atomic write.
    Pixels are drawn unsmoothed (nearest), which shows them as the model saw them and keeps the
    PNG small (about 150 KB for 10 x 10 images of 28 x 28).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"x must have shape (M, 1 or 3, H, W); got {tuple(x.shape)}")
    y = y.detach().cpu()
    rows = [int(c) for c in torch.unique(y)]
    cols = min(max_per_class, max(int((y == c).sum()) for c in rows))
    fig = Figure(
        figsize=(cell_inches * cols + (1.0 if class_names else 0.4), cell_inches * len(rows) + 0.4)
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    imgs = x.detach().float().cpu().clamp(0, 1)
    for r, c in enumerate(rows):
        idx = (y == c).nonzero().squeeze(1)[:cols]
        for j in range(cols):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(idx):
                img = imgs[idx[j]]
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                else:
                    ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        label = class_names[c] if class_names is not None else str(c)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
