"""Checks that flag gradient masking (Athalye et al. 2018, arXiv 1802.00420; Carlini et al.
2019, arXiv 1902.06705): accuracy falls to 0 as eps grows, more steps never help the defender,
an unbounded attack succeeds, black-box Square never beats the white-box attacks, and few
input gradients are exactly zero.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks import make_attack
from ..attacks.core import frozen_eval
from ..errors import UserError
from ..losses import ce
from .batched import batched_logits


@dataclass
class SanityCheck:
    """``passed`` is True (ok), False (flag: suspect gradient masking) or None (skipped)."""

    name: str
    passed: bool | None
    value: Any
    detail: str


def _robust_acc(model: nn.Module, attack: Any, x: Tensor, y: Tensor, batch_size: int) -> float:
    logits = batched_logits(model, x, y, {"a": attack}, batch_size=batch_size,
                            clean=False).adversarial["a"]
    correct = int((logits.argmax(1) == y.cpu()).sum()) if x.shape[0] else 0
    return correct / max(x.shape[0], 1)


def zero_gradient_share(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Share of samples whose input gradient of CE is exactly zero everywhere."""
    with frozen_eval(model), torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ce(model(xr), y).sum(), xr)
    return float((g.flatten(1).abs().amax(1) == 0).float().mean())


def sanity_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    white_box_accuracy: float | None = None,
    square_queries: int = 1000,
    batch_size: int = 256,
    seed: int = 0,
) -> list[SanityCheck]:
    """Run the gradient-masking checks on (x, y); each returns a :class:`SanityCheck`.

    Args:
        eps: the evaluation budget (pixel units).
        steps: PGD steps of the reference run (the 'more steps' run uses 5x as many).
        white_box_accuracy: robust accuracy of the white-box cascade on these points, compared
            with Square's (skipped when None or when torchattacks is missing).
    """
    if x.shape[0] == 0:
        raise UserError("sanity checks need at least one point")
    n = x.shape[0]
    tol = 1.0 / n + 1e-9  # one point of slack for ties
    pgd = "pgd" if norm == "linf" else "pgd_l2"
    big = 1.0 if norm == "linf" else float(x[0].numel()) ** 0.5
    out: list[SanityCheck] = []

    grid = sorted({min(eps * f, big) for f in (1, 2, 4, 8)} | {big})
    accs = [
        _robust_acc(model, make_attack(pgd, eps=e, steps=2 * steps, seed=seed), x, y, batch_size)
        for e in grid
    ]
    monotone = all(b <= a + tol for a, b in itertools.pairwise(accs))
    out.append(
        SanityCheck(
            "accuracy_falls_with_eps",
            monotone and accs[-1] <= tol,
            dict(zip([round(e, 6) for e in grid], accs)),
            f"PGD-{2 * steps} accuracy over eps {[round(e, 4) for e in grid]}: "
            + ", ".join(f"{a:.1%}" for a in accs),
        )
    )

    a_few = _robust_acc(model, make_attack(pgd, eps=eps, steps=steps, seed=seed), x, y, batch_size)
    a_many = _robust_acc(
        model, make_attack(pgd, eps=eps, steps=5 * steps, seed=seed), x, y, batch_size
    )
    out.append(
        SanityCheck(
            "more_steps_never_help",
            a_many <= a_few + tol,
            {"steps": [steps, 5 * steps], "accuracy": [a_few, a_many]},
            f"PGD-{steps} {a_few:.1%} vs PGD-{5 * steps} {a_many:.1%}",
        )
    )

    a_unb = _robust_acc(
        model,
        make_attack(pgd, eps=big, steps=50, step_size=big / 10, seed=seed),
        x,
        y,
        batch_size,
    )
    out.append(
        SanityCheck(
            "unbounded_attack_succeeds",
            a_unb <= tol,
            a_unb,
            f"PGD-50 with eps={big:.3g} (the whole image box) leaves {a_unb:.1%} accuracy",
        )
    )

    if white_box_accuracy is None:
        out.append(SanityCheck("black_box_not_better", None, None, "no white-box accuracy given"))
    else:
        try:
            square = make_attack(
                "ta_square", eps=eps, norm=norm, n_queries=square_queries, seed=seed
            )
            a_sq = _robust_acc(model, square, x, y, batch_size)
            out.append(
                SanityCheck(
                    "black_box_not_better",
                    a_sq + tol >= white_box_accuracy,
                    {"square": a_sq, "white_box": white_box_accuracy},
                    f"Square ({square_queries} queries) {a_sq:.1%} vs white-box "
                    f"{white_box_accuracy:.1%}",
                )
            )
        except UserError as exc:
            out.append(SanityCheck("black_box_not_better", None, None, f"skipped: {exc}"))

    share = zero_gradient_share(model, x, y)
    out.append(
        SanityCheck(
            "zero_gradients",
            share <= 0.01,
            share,
            f"{share:.1%} of points have an all-zero input gradient of CE",
        )
    )
    return out


__all__ = ["SanityCheck", "sanity_checks", "zero_gradient_share"]
