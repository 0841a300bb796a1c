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



@dataclass(frozen=True)
class _Setup:
    """What every check shares: the points, the PGD variant and the one-point slack ``tol``."""

    model: nn.Module
    x: Tensor
    y: Tensor
    norm: str
    batch_size: int
    seed: int

    @property
    def tol(self) -> float:
        return 1.0 / self.x.shape[0] + 1e-9  # one point of slack for ties

    @property
    def pgd(self) -> str:
        return "pgd" if self.norm == "linf" else "pgd_l2"

    @property
    def big(self) -> float:
        """A budget covering the whole image box (pixel units)."""
        return 1.0 if self.norm == "linf" else float(self.x[0].numel()) ** 0.5

    def acc(self, attack: Any) -> float:
        return _robust_acc(self.model, attack, self.x, self.y, self.batch_size)

    def pgd_acc(self, eps: float, steps: int, **kw: Any) -> float:
        return self.acc(make_attack(self.pgd, eps=eps, steps=steps, seed=self.seed, **kw))


def _check_accuracy_falls_with_eps(s: _Setup, eps: float, steps: int) -> SanityCheck:
    grid = sorted({min(eps * f, s.big) for f in (1, 2, 4, 8)} | {s.big})
    accs = [s.pgd_acc(e, 2 * steps) for e in grid]
    monotone = all(b <= a + s.tol for a, b in itertools.pairwise(accs))
    return SanityCheck(
        "accuracy_falls_with_eps",
        monotone and accs[-1] <= s.tol,
        dict(zip([round(e, 6) for e in grid], accs)),
        f"PGD-{2 * steps} accuracy over eps {[round(e, 4) for e in grid]}: "
        + ", ".join(f"{a:.1%}" for a in accs),
    )


def _check_more_steps_never_help(s: _Setup, eps: float, steps: int) -> SanityCheck:
    a_few = s.pgd_acc(eps, steps)
    a_many = s.pgd_acc(eps, 5 * steps)
    return SanityCheck(
        "more_steps_never_help",
        a_many <= a_few + s.tol,
        {"steps": [steps, 5 * steps], "accuracy": [a_few, a_many]},
        f"PGD-{steps} {a_few:.1%} vs PGD-{5 * steps} {a_many:.1%}",
    )


def _check_unbounded_attack_succeeds(s: _Setup) -> SanityCheck:
    big = s.big
    a_unb = s.pgd_acc(big, 50, step_size=big / 10)
    return SanityCheck(
        "unbounded_attack_succeeds",
        a_unb <= s.tol,
        a_unb,
        f"PGD-50 with eps={big:.3g} (the whole image box) leaves {a_unb:.1%} accuracy",
    )


def _check_black_box_not_better(
    s: _Setup, eps: float, white_box_accuracy: float | None, square_queries: int
) -> SanityCheck:
    if white_box_accuracy is None:
        return SanityCheck("black_box_not_better", None, None, "no white-box accuracy given")
    try:
        square = make_attack(
            "ta_square", eps=eps, norm=s.norm, n_queries=square_queries, seed=s.seed
        )
        a_sq = s.acc(square)
    except UserError as exc:
        return SanityCheck("black_box_not_better", None, None, f"skipped: {exc}")
    return SanityCheck(
        "black_box_not_better",
        a_sq + s.tol >= white_box_accuracy,
        {"square": a_sq, "white_box": white_box_accuracy},
        f"Square ({square_queries} queries) {a_sq:.1%} vs white-box "
        f"{white_box_accuracy:.1%}",
    )


def _check_zero_gradients(s: _Setup) -> SanityCheck:
    share = zero_gradient_share(s.model, s.x, s.y)
    return SanityCheck(
        "zero_gradients",
        share <= 0.01,
        share,
        f"{share:.1%} of points have an all-zero input gradient of CE",
    )


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
    s = _Setup(model, x, y, norm, batch_size, seed)
    return [
        _check_accuracy_falls_with_eps(s, eps, steps),
        _check_more_steps_never_help(s, eps, steps),
        _check_unbounded_attack_succeeds(s),
        _check_black_box_not_better(s, eps, white_box_accuracy, square_queries),
        _check_zero_gradients(s),
    ]


__all__ = ["SanityCheck", "sanity_checks", "zero_gradient_share"]
