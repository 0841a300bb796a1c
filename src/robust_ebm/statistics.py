"""Clean accuracy and energy statistics of a classifier on a dataset.

Energies follow :mod:`robust_ebm.energy` (lower = more likely), in logit units.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .energy import free_energy, joint_energy
from .models.modes import frozen_eval

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


@torch.no_grad()
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
    device = next(model.parameters()).device
    outs: dict[str, list[Tensor]] = {k: [] for k in ("free_energy", "joint_energy", "pred")}
    with frozen_eval(model):
        for start in range(0, len(labels), batch_size):
            xb = images[start : start + batch_size].to(device)
            xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()
            yb = labels[start : start + batch_size].to(device)
            logits = model(xb)
            outs["free_energy"].append(free_energy(logits).cpu())
            outs["joint_energy"].append(joint_energy(logits, yb).cpu())
            outs["pred"].append(logits.argmax(1).cpu())
    res = {k: torch.cat(v) for k, v in outs.items()}
    res["correct"] = res["pred"] == labels.cpu()
    return res


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


def attacked_energies(
    model: nn.Module, images: Tensor, labels: Tensor, attack: Any, batch_size: int = 500
) -> dict[str, Tensor]:
    """Per-sample energies of natural x and adversarial x* = attack(model, x, y).

    Energies come from the same forward passes that give the predictions.

    Returns:
        dict of (N,) CPU tensors: ``E_x``, ``E_adv`` (free energies), ``E_xy``, ``E_adv_y``
        (joint energies at the true label), ``ce``, ``ce_adv``, ``correct``, ``correct_adv``,
        ``pred_adv``.
    """
    device = next(model.parameters()).device
    cols: dict[str, list[Tensor]] = {}
    with frozen_eval(model):
        for start in range(0, len(labels), batch_size):
            xb = images[start : start + batch_size].to(device)
            xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()
            yb = labels[start : start + batch_size].to(device)
            x_adv = attack(model, xb, yb)
            with torch.no_grad():
                for tag, inp in (("", xb), ("_adv", x_adv)):
                    logits = model(inp)
                    e, ej = free_energy(logits), joint_energy(logits, yb)
                    name_e = "E_x" if tag == "" else "E_adv"
                    name_ej = "E_xy" if tag == "" else "E_adv_y"
                    for key, val in ((name_e, e), (name_ej, ej), ("ce" + tag, ej - e),
                                     ("correct" + tag, logits.argmax(1) == yb),
                                     ("pred" + tag, logits.argmax(1))):
                        cols.setdefault(key, []).append(val.detach().cpu())
    return {k: torch.cat(v) for k, v in cols.items()}


def attacked_report(per_sample: dict[str, Tensor]) -> dict[str, Any]:
    """Accuracies and summaries of energies, gaps dE(x) = E(x) - E(x*) and CE."""
    p = per_sample
    rep: dict[str, Any] = {
        "n": int(p["correct"].numel()),
        "accuracy": p["correct"].double().mean().item(),
        "accuracy_adv": p["correct_adv"].double().mean().item(),
        "share_E_adv_below": (p["E_adv"] < p["E_x"]).double().mean().item(),
    }
    series = {
        "E_x": p["E_x"], "E_adv": p["E_adv"], "E_xy": p["E_xy"], "E_adv_y": p["E_adv_y"],
        "dE_x": p["E_x"] - p["E_adv"], "dE_xy": p["E_xy"] - p["E_adv_y"],
        "ce": p["ce"], "ce_adv": p["ce_adv"],
    }
    rep.update({k: summarize(v) for k, v in series.items()})
    return rep
