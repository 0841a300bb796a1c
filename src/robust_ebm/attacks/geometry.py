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
    random_zero_step: bool = False

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
    random_zero_step: bool = False  # True: the loop gives zero-gradient samples a random step

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


@dataclass(frozen=True)
class PublishedL2(L2):
    """The L2 inner attack of the published TRADES code (Zhang et al. 2019, arXiv 1901.08573;
    ``trades.py``, ``distance='l_2'``), where SGD on delta with the gradient divided by its
    per-sample norm is an L2 step of size lr. It differs from :class:`L2` in three places:

    * the step divides by the exact norm (no 1e-12); a sample whose gradient is exactly zero
      takes ``step_size * N(0, 1)`` instead, unnormalised (norm about step_size * sqrt(d));
      the loop draws that noise (:attr:`random_zero_step`);
    * projection clips to [0, 1] first, then scales delta onto the ball as ``torch.renorm``
      does (factor eps / (||delta|| + 1e-7) when ||delta|| > eps), so the budget lost to
      clipping is not lost; ours scales first and clips after, which can end inside the ball;
    * the final clamp onto [0, 1] (a rounding-level no-op here) is kept.
    """

    random_zero_step: bool = True

    def step(self, grad: Tensor, step_size: Tensor) -> Tensor:
        norm = _flat_norm(grad)
        return step_size * (grad / torch.where(norm > 0, norm, torch.ones_like(norm)))

    def project(self, x: Tensor, x_adv: Tensor, eps: Tensor) -> Tensor:
        delta = x_adv.clamp(0.0, 1.0) - x
        norm = _flat_norm(delta)
        scale = torch.where(norm > eps, eps / (norm + 1e-7), torch.ones_like(norm))
        return (x + delta * scale).clamp_(0.0, 1.0)


GEOMETRIES: dict[str, Linf | L2] = {"linf": Linf(), "l2": L2()}
L2_PROCEDURES = ("ours", "published")


def get_geometry(norm: str, l2_procedure: str = "ours") -> Linf | L2:
    """The geometry of ``norm`` ('linf' or 'l2'); ``l2_procedure='published'`` gives the published
    TRADES L2 steps and projection (:class:`PublishedL2`), for norm 'l2' only."""
    key = norm.lower().replace("-", "").replace("_", "")
    if l2_procedure not in L2_PROCEDURES:
        raise UserError(f"l2_procedure must be one of {', '.join(L2_PROCEDURES)}; "
                        f"got {l2_procedure!r}")
    if key in ("inf", "linf"):
        if l2_procedure != "ours":
            raise UserError("l2_procedure='published' needs norm 'l2'; drop it or set norm='l2'")
        return GEOMETRIES["linf"]
    if key == "l2":
        return PublishedL2() if l2_procedure == "published" else GEOMETRIES["l2"]
    raise UserError(f"unknown norm {norm!r}; choose 'linf' or 'l2'")
