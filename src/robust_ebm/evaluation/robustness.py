"""Robust accuracy over an attack cascade (the AutoAttack / RobustBench protocol).

Only points still robust after one attack go to the next; the result is a per-attack table, the
worst-case robust accuracy, and clean accuracy on the same points (Croce & Hein 2020,
arXiv 2003.01690).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks import make_attack
from ..attacks.core import check_inputs
from ..errors import UserError
from .batched import batched_logits, to_unit_float

AttackFn = Callable[..., Tensor]


@dataclass
class AttackRow:
    """One cascade stage: points attacked, newly fooled, robust accuracy after it, time."""

    name: str
    attacked: int
    fooled: int
    robust_accuracy: float
    seconds: float


@dataclass
class RobustnessReport:
    """Result of :func:`evaluate_robustness`.

    ``x_adv`` (N, ...) holds, for each point, the first successful adversarial example, or for
    points no attack fooled the last attack's output (clean x for points misclassified clean).
    ``robust`` (N,) is True where every attack failed; ``fooled_by`` names the attack that won.
    """

    n: int
    clean_accuracy: float
    robust_accuracy: float
    rows: list[AttackRow]
    robust: Tensor
    clean_correct: Tensor
    x_adv: Tensor
    fooled_by: list[str | None]
    sanity: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "attacks": [vars(r) for r in self.rows],
            "sanity_checks": [vars(c) for c in self.sanity],
        }

    def table(self) -> str:
        """A Markdown table of the cascade."""
        lines = [
            "| attack | attacked | fooled | robust accuracy | seconds |",
            "|---|---:|---:|---:|---:|",
            (
                f"| clean | {self.n} | {self.n - int(self.clean_correct.sum())} | "
                f"{self.clean_accuracy:.2%} | |"
            ),
        ]
        for r in self.rows:
            lines.append(
                f"| {r.name} | {r.attacked} | {r.fooled} | {r.robust_accuracy:.2%} | "
                f"{r.seconds:.1f} |"
            )
        lines.append(f"| **worst case** | | | **{self.robust_accuracy:.2%}** | |")
        if self.sanity:
            lines.append("")
        for c in self.sanity:
            mark = "skipped" if c.passed is None else ("ok" if c.passed else "FLAG")
            lines.append(f"- sanity {c.name}: {mark} - {c.detail}")
        return "\n".join(lines)


def as_tensors(data: Any) -> tuple[Tensor, Tensor]:
    """(x, y) from a tuple of tensors or an ImageDataset-like object (uint8 .images, .labels)."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    elif hasattr(data, "images") and hasattr(data, "labels"):
        x, y = data.images, data.labels
    else:
        raise UserError("data must be (x, y) tensors or an object with .images and .labels")
    x = to_unit_float(torch.as_tensor(x))
    y = torch.as_tensor(y)
    if y.dim() != 1:
        raise UserError(f"labels must have shape (N,); got {tuple(y.shape)}")
    return x, y.long()


def resolve_attacks(
    attacks: str | Sequence[Any] | Mapping[str, AttackFn], **hyperparameters: Any
) -> list[tuple[str, AttackFn]]:
    """Names ('pgd,apgd_ce' or a list), (name, attack) pairs, a dict, or attack objects."""
    if isinstance(attacks, str):
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    if isinstance(attacks, Mapping):
        return list(attacks.items())
    out: list[tuple[str, AttackFn]] = []
    for a in attacks:
        if isinstance(a, str):
            out.append((a, make_attack(a, **hyperparameters)))
        elif isinstance(a, tuple) and len(a) == 2:
            out.append((str(a[0]), a[1]))
        elif callable(a):
            out.append((type(a).__name__, a))
        else:
            raise UserError(f"cannot use {a!r} as an attack")
    if not out:
        raise UserError("no attacks given")
    return out


def predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Argmax predictions (N,) on ``x``'s device, frozen (mode restored)."""
    logits = batched_logits(model, x, batch_size=batch_size).clean
    assert logits is not None
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    return logits.argmax(1).to(x.device)


def _attack_survivors(
    model: nn.Module,
    name: str,
    attack: AttackFn,
    x: Tensor,
    y: Tensor,
    robust: Tensor,
    x_adv: Tensor,
    fooled_by: list[str | None],
    batch_size: int,
) -> AttackRow:
    """One cascade stage: attack the points still ``robust``, updating ``robust``, ``x_adv`` and
    ``fooled_by`` in place; return the stage's row."""
    n = x.shape[0]
    idx = robust.nonzero().squeeze(1)
    start = time.perf_counter()
    fooled = 0
    if idx.numel():
        res = batched_logits(model, x[idx], y[idx], {name: attack}, batch_size=batch_size,
                             clean=False, keep_inputs=True)
        wrong = (res.adversarial[name].argmax(1) != y[idx].cpu()).to(idx.device)
        x_adv[idx] = res.inputs[name].to(x_adv.device, x_adv.dtype)
        robust[idx[wrong]] = False
        for j in idx[wrong].tolist():
            fooled_by[j] = name
        fooled = int(wrong.sum())
    return AttackRow(
        name=name,
        attacked=int(idx.numel()),
        fooled=fooled,
        robust_accuracy=float(robust.float().mean()) if n else 0.0,
        seconds=time.perf_counter() - start,
    )


def _sanity_on_first(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    robust: Tensor,
    sanity_points: int,
    batch_size: int,
    hyperparameters: Mapping[str, Any],
) -> list[Any]:
    """Gradient-masking checks on the first ``sanity_points`` points, against the cascade's
    robust accuracy there."""
    from .sanity import sanity_checks

    if "eps" not in hyperparameters:
        raise UserError("sanity checks need eps=...")
    m = min(sanity_points, x.shape[0])
    return sanity_checks(
        model,
        x[:m],
        y[:m],
        eps=float(hyperparameters["eps"]),
        norm=str(hyperparameters.get("norm", "linf")),
        white_box_accuracy=float(robust[:m].float().mean()) if m else None,
        batch_size=batch_size,
    )


def evaluate_robustness(
    model: nn.Module,
    data: Any,
    attacks: str | Sequence[Any] | Mapping[str, AttackFn],
    batch_size: int = 256,
    sanity: bool = False,
    sanity_points: int = 200,
    **hyperparameters: Any,
) -> RobustnessReport:
    """Run the attacks as a cascade and report robust accuracy.

    Args:
        model: classifier taking [0, 1] images, returning logits.
        data: (x, y) tensors, x float in [0, 1] (N, C, H, W); or an ImageDataset (uint8).
        attacks: names (``"pgd,apgd_ce"``), (name, attack) pairs, a dict or attack objects;
            names are built with ``make_attack(name, **hyperparameters)`` (e.g. ``eps=8/255``).
        batch_size: points per attack call.
        sanity: also run :func:`robust_ebm.evaluation.sanity_checks` on the first
            ``sanity_points`` points (needs ``eps`` in hyperparameters).
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1; got {batch_size}")
    x, y = as_tensors(data)
    check_inputs(x, y)
    pairs = resolve_attacks(attacks, **hyperparameters)
    n = x.shape[0]
    clean_correct = predict(model, x, batch_size) == y.to(x.device)
    robust = clean_correct.clone()
    x_adv = x.detach().clone()
    fooled_by: list[str | None] = [None] * n
    rows = [
        _attack_survivors(model, name, attack, x, y, robust, x_adv, fooled_by, batch_size)
        for name, attack in pairs
    ]
    report = RobustnessReport(
        n=n,
        clean_accuracy=float(clean_correct.float().mean()) if n else 0.0,
        robust_accuracy=float(robust.float().mean()) if n else 0.0,
        rows=rows,
        robust=robust,
        clean_correct=clean_correct,
        x_adv=x_adv,
        fooled_by=fooled_by,
    )
    if sanity:
        report.sanity = _sanity_on_first(model, x, y, robust, sanity_points, batch_size,
                                         hyperparameters)
    return report


__all__ = ["AttackRow", "RobustnessReport", "as_tensors", "evaluate_robustness", "predict"]
