"""Running a model over a set in batches: the one loop every evaluation goes through.

The model runs frozen (:func:`robust_ebm.models.modes.frozen_eval`: eval mode, parameters'
requires_grad off, both restored exactly afterwards) on its own device; inputs may be uint8
images (divided by 255) or floats in [0, 1]; outputs come back as float32 on the CPU.
:func:`batched_logits` also attacks each batch and keeps the logits of x* = attack(model, x, y),
so a clean pass and its attacked passes share one loop (Mirza et al., arXiv 2407.06315, read
every energy from these logits).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..attacks import core
from ..models.modes import frozen_eval

__all__ = [
    "BatchedLogits",
    "batched_logits",
    "batches",
    "map_batches",
    "model_device",
    "to_unit_float",
]

Attack = Callable[..., Tensor]


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 images in [0, 255] -> float32 in [0, 1]; float images are returned as they are."""
    return images.float().div(255) if images.dtype == torch.uint8 else images


def model_device(model: nn.Module, default: torch.device | None = None) -> torch.device:
    """The device of the model's first parameter (``default``, else the CPU, when it has none)."""
    for p in model.parameters():
        return p.device
    return default if default is not None else torch.device("cpu")


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, start + batch_size)


@torch.no_grad()
def map_batches(
    model: nn.Module,
    x: Tensor,
    forward: Callable[[Tensor], Tensor | tuple[Tensor, ...]] | None = None,
    batch_size: int = 500,
) -> tuple[Tensor, ...]:
    """``forward`` (default: ``model``) over ``x`` in batches, frozen, under no_grad.

    Args:
        model: the network whose device is used and whose mode is frozen and restored.
        x: (N, C, H, W) uint8 or float in [0, 1].
        forward: maps a float batch on the model's device to one tensor or a tuple of them.
    Returns:
        the concatenated outputs, one float32 CPU tensor per output of ``forward`` (a 1-tuple
        for a single output); empty (0, 0) tensors when N = 0.
    """
    fn = model if forward is None else forward
    device = model_device(model)
    outs: list[list[Tensor]] = []
    with frozen_eval(model):
        for s in batches(x.shape[0], batch_size):
            res = fn(to_unit_float(x[s].to(device)).float())
            res = res if isinstance(res, tuple) else (res,)
            if not outs:
                outs = [[] for _ in res]
            for acc, r in zip(outs, res):
                acc.append(r.detach().float().cpu())
    if not outs:
        return (torch.zeros(0, 0),)
    return tuple(torch.cat(acc) for acc in outs)


@dataclass
class BatchedLogits:
    """Logits of one pass over a set, clean and under each attack.

    Attributes:
        clean: (N, K) float32 CPU logits of x (None when the clean pass was skipped).
        adversarial: attack name -> (N, K) float32 CPU logits of x* = attack(model, x, y).
        inputs: attack name -> (N, C, H, W) x* on the model's device (only with ``keep_inputs``).
        seconds: attack name -> wall time of the attack and its forward pass.
    """

    clean: Tensor | None
    adversarial: dict[str, Tensor] = field(default_factory=dict)
    inputs: dict[str, Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def batched_logits(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    attacks: Mapping[str, Attack] | None = None,
    *,
    batch_size: int = 500,
    clean: bool = True,
    keep_inputs: bool = False,
) -> BatchedLogits:
    """Clean logits of ``x`` and, per attack, logits of the attacked batch, in one loop.

    Each batch goes to the model's device, is converted to float in [0, 1] when uint8, gets one
    clean forward (unless ``clean=False``) and, for every attack in order, ``attack(model, xb,
    yb)`` followed by one forward of x*. The model is frozen throughout (attacks run on the
    frozen model too; their own passes are theirs) and its mode restored afterwards. Clean
    logits are checked to be finite (N, K) and labels to lie in [0, K).

    Args:
        model: maps [0, 1] images (N, C, H, W) to logits (N, K).
        x: (N, C, H, W) uint8 or float in [0, 1]; y: (N,) labels, needed with ``attacks``.
        attacks: name -> ``attack(model, x, y) -> x_adv``.
        batch_size: samples per forward and per attack call.
        keep_inputs: also return every x* (on the model's device).
    """
    attacks = dict(attacks or {})
    if attacks and y is None:
        raise ValueError("attacks need labels y")
    device = model_device(model, x.device)
    cols: dict[str, list[Tensor]] = {name: [] for name in attacks}
    kept: dict[str, list[Tensor]] = {name: [] for name in attacks}
    seconds = dict.fromkeys(attacks, 0.0)
    clean_out: list[Tensor] = []
    with frozen_eval(model):
        for s in batches(x.shape[0], batch_size):
            xb = to_unit_float(x[s].to(device))
            yb = None if y is None else y[s].to(device)
            if clean:
                with torch.no_grad():
                    logits = model(xb)
                core.check_logits(logits, xb.shape[0])
                if yb is not None:
                    core.check_labels(yb, logits.shape[1])
                clean_out.append(logits.detach().float().cpu())
            for name, attack in attacks.items():
                t0 = time.perf_counter()
                x_adv = attack(model, xb, yb)
                with torch.no_grad():
                    cols[name].append(model(x_adv).detach().float().cpu())
                seconds[name] += time.perf_counter() - t0
                if keep_inputs:
                    kept[name].append(x_adv.detach())
    return BatchedLogits(
        clean=(torch.cat(clean_out) if clean_out else torch.zeros(0, 0)) if clean else None,
        adversarial={k: torch.cat(v) if v else torch.zeros(0, 0) for k, v in cols.items()},
        inputs={k: torch.cat(v) for k, v in kept.items() if v},
        seconds=seconds,
    )
