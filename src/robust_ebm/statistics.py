"""Clean accuracy and energy statistics of a classifier on a dataset.

Energies follow :mod:`robust_ebm.energy` (lower = more likely), in logit units.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .energy import free_energy, joint_energy
from .evaluation.batched import batched_logits

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def summarize(values: Tensor) -> dict[str, float]:
    """Mean, std, min, max and the 5/25/50/75/95% quantiles of a 1-D tensor."""
    v = values.detach().double().flatten().cpu()
    if v.numel() == 0:
        raise ValueError("cannot summarize an empty tensor")
    q = torch.quantile(v, torch.tensor(QUANTILES, dtype=torch.float64))
    out = {
        "mean": v.mean().item(),
        "std": v.std(unbiased=False).item(),
        "min": v.min().item(),
        "max": v.max().item(),
    }
    out.update({f"q{int(round(p * 100)):02d}": qv.item() for p, qv in zip(QUANTILES, q)})
    return out


def per_sample_energies(
    model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500
) -> dict[str, Tensor]:
    """E(x), E(x, y), predictions and correctness per sample, from one forward pass each.

    Args:
        model: returns logits for [0,1] inputs.
        images: uint8 (N,C,H,W) (divided by 255) or float in [0,1].
        labels: (N,) int64.

    Returns:
        dict of (N,) CPU tensors: ``free_energy``, ``joint_energy``, ``pred``, ``correct``.
    """
    logits = batched_logits(model, images, labels, batch_size=batch_size).clean
    assert logits is not None
    y = labels.cpu()
    pred = logits.argmax(1)
    return {
        "free_energy": free_energy(logits),
        "joint_energy": joint_energy(logits, y),
        "pred": pred,
        "correct": pred == y,
    }


def clean_report(
    model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500
) -> dict[str, Any]:
    """Clean accuracy with summaries of E(x) and E(x, y) over the given samples."""
    e = per_sample_energies(model, images, labels, batch_size)
    return {
        "n": int(labels.numel()),
        "accuracy": e["correct"].double().mean().item(),
        "free_energy": summarize(e["free_energy"]),
        "joint_energy": summarize(e["joint_energy"]),
    }


def format_clean_report(title: str, report: dict[str, Any]) -> str:
    """Accuracy and energy summaries as a few aligned lines."""
    lines = [f"{title}: n={report['n']}  clean accuracy {report['accuracy']:.4f}"]
    for key, label in (("free_energy", "E(x)  "), ("joint_energy", "E(x,y)")):
        s = report[key]
        lines.append(
            f"  {label} mean {s['mean']:8.3f}  std {s['std']:7.3f}  "
            f"q05 {s['q05']:8.3f}  q50 {s['q50']:8.3f}  q95 {s['q95']:8.3f}"
        )
    return "\n".join(lines)
