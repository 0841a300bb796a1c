"""Threat-model geometries: random init, steepest-ascent step and projection for L-inf and L2.

One gradient loop (:mod:`robust_ebm.attacks.pgd`) serves every norm by composing one of these.
``eps`` and ``step_size`` are (N, 1, ..., 1) tensors in pixel units of [0, 1] images.
Projection always ends with a clamp onto [0, 1], which can only move a point closer to x (x is
in the box), so the result stays in the eps-ball.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UserError

Sampler = Callable[[str, Tensor | None], Tensor]  # (kind, scale or None) -> noise shaped like x


def _flat_norm(t: Tensor) -> Tensor:
    """Per-sample L2 norm, shape (N, 1, ..., 1)."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class Linf:
    """||delta||_inf <= eps: uniform start in the cube, signed-gradient steps, box clipping."""

    name: str = "linf"

    def init(self, sample: Sampler, eps: Tensor) -> Tensor:
        """A random delta in the ball: ``sample(kind, scale)`` draws per-sample noise shaped
        like x ('uniform' on [0, 1), 'symmetric' on [-1, 1], 'normal'), times scale."""
        return sample("symmetric", eps)

    def step(self, grad: Tensor, step_size: Tensor) -> Tensor:
        return step_size * grad.sign()

    def project(self, x: Tensor, x_adv: Tensor, eps: Tensor) -> Tensor:
        return self.project_bounds(x_adv, *self.bounds(x, eps))

    def bounds(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Ball and box intersect in a box: precompute its corners once per attack."""
        return (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)

    def project_bounds(self, x_adv: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.clamp(x_adv, lo, hi)

    def normalize(self, t: Tensor) -> Tensor:
        """t scaled to unit L-inf norm per sample (APGD's init)."""
        return t / (t.flatten(1).abs().amax(dim=1).view(-1, *([1] * (t.dim() - 1))) + 1e-12)

    def norm(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).abs().amax(dim=1)


@dataclass(frozen=True)
class L2:
    """||delta||_2 <= eps: start uniform in radius along a Gaussian direction, normalized
    gradient steps, radial projection then box clipping."""

    name: str = "l2"

    def init(self, sample: Sampler, eps: Tensor) -> Tensor:
        direction = self.normalize(sample("normal", None))
        # radius r * eps, r uniform in [0, 1] (first uniform draw of each sample)
        u = sample("uniform", None)
        r = u.flatten(1)[:, :1].view(-1, *([1] * (u.dim() - 1)))
        return direction * r * eps

    def step(self, grad: Tensor, step_size: Tensor) -> Tensor:
        return step_size * self.normalize(grad)

    def project(self, x: Tensor, x_adv: Tensor, eps: Tensor) -> Tensor:
        delta = x_adv - x
        scale = torch.clamp(eps / (_flat_norm(delta) + 1e-12), max=1.0)
        return (x + delta * scale).clamp_(0.0, 1.0)

    def bounds(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        return x, eps

    def project_bounds(self, x_adv: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        return self.project(x, x_adv, eps)

    def normalize(self, t: Tensor) -> Tensor:
        return t / (_flat_norm(t) + 1e-12)

    def norm(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).norm(dim=1)


GEOMETRIES: dict[str, Linf | L2] = {"linf": Linf(), "l2": L2()}


def get_geometry(norm: str) -> Linf | L2:
    key = norm.lower().replace("-", "").replace("_", "")
    if key in ("inf", "linf"):
        return GEOMETRIES["linf"]
    if key == "l2":
        return GEOMETRIES["l2"]
    raise UserError(f"unknown norm {norm!r}; choose 'linf' or 'l2'")
