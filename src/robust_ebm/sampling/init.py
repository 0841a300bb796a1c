"""Starting points x_0 for SGLD (arXiv 2304.04033; docs/science.md#sgld-initialisations).

Every initialiser has ``sample(y, generator) -> x0``: ``y`` (N,) class indices, ``x0``
(N, C, H, W) float32 images in [0, 1] on the CPU (the caller moves them; sampling on the CPU keeps
a seed's result independent of the device). ``generator`` is a ``torch.Generator`` (draws
depend on the whole batch), or CPU :class:`~robust_ebm.attacks.streams.SampleStreams`, one
stream per row of ``y`` (row i draws only from stream i: its x0 is the same in any batch;
:func:`robust_ebm.sampling.generate.sample_classes` keys them by chain), or None (global RNG).

* :class:`UniformInit`: U[low, high) pixels, U[0,1] by default (JEM-style; gives
  adversarial-pattern garbage). :class:`NormalInit`: N(mean, std^2) pixels.
* :class:`ClassGaussianInit`: N(mu_y, Sigma_y) fitted per class; full covariance when D is small
  enough (D <= ``max_full_dim`` and n > D), else top-``rank`` eigenvectors plus a diagonal.
* :class:`ClassPCAInit`: the papers' method, x_0 = mu_y + sum_{i<=k} s_i z_i sigma U_i.
* :class:`NoiseInjectionInit`: a real image of the class plus strong Gaussian noise.
* :class:`PCAOrGaussianInit`: per chain, a coin picks a class_pca or a class_gaussian start.
* :class:`BufferInit`: a sample of the class from an earlier run (a replay buffer, persistent
  chains), restarted from another init with probability ``reinit_freq``.

The published generation code's variants (docs/fidelity.md) are options of these classes.

Fitted statistics can be cached with :meth:`ClassStatistics.fit_cached`: one safetensors file
holding the tensors and, as metadata, the settings and a fingerprint of the data they came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..attacks.streams import SampleStreams
from ..errors import UserError
from .buffer import BufferInit, load_buffer
from .class_stats import (
    ClassGaussianInit,
    ClassPCAInit,
    ClassStatistics,
    PCAOrGaussianInit,
    blur_images,
)
from .init_base import (
    INITS,
    ChainStreams,
    Init,
    RandomSource,
    _by_class,
    _check_data,
    _index_in_class,
    _randn,
    as_unit_float,
    data_fingerprint,
)

__all__ = [
    "INITS",
    "BufferInit",
    "ChainStreams",
    "ClassGaussianInit",
    "ClassPCAInit",
    "ClassStatistics",
    "Init",
    "NoiseInjectionInit",
    "NormalInit",
    "PCAOrGaussianInit",
    "UniformInit",
    "as_unit_float",
    "blur_images",
    "data_fingerprint",
    "load_buffer",
    "make_init",
]


@INITS.register("uniform", alias="uniform", fitted=False, cached=False)
@dataclass(frozen=True)
class UniformInit:
    """x0 ~ U[low, high)^(C,H,W), ignoring the class; U[0, 1) by default.

    The published ``random_initialization`` (``noise_distribution='uniform'``) draws
    ``uniform_(mean, std)``, i.e. U[mean, std), unclipped: ``low=mean, high=std``.
    """

    shape: tuple[int, int, int]
    low: float = 0.0
    high: float = 1.0
    name: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise UserError(f"uniform init: need finite low < high; got {self.low}, {self.high}")

    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor:
        if isinstance(generator, SampleStreams):
            rows = torch.arange(y.shape[0])
            u = generator.uniform(rows, self.shape, torch.float32).cpu()
        else:
            u = torch.rand((y.shape[0], *self.shape), generator=generator)
        if (self.low, self.high) == (0.0, 1.0):
            return u
        return u.mul_(self.high - self.low).add_(self.low)

    def config(self) -> dict[str, Any]:
        return {"init": self.name, "shape": list(self.shape), "low": self.low, "high": self.high}


@INITS.register("normal", alias="normal", fitted=False, cached=False)
@dataclass(frozen=True)
class NormalInit:
    """x0 ~ N(mean, std^2)^(C,H,W), ignoring the class; not clipped unless ``clip``.

    The published ``random_initialization(noise_distribution='normal')`` draws
    ``normal_(mean, std)`` (defaults 0 and 1) and does not clip: the defaults here.
    """

    shape: tuple[int, int, int]
    mean: float = 0.0
    std: float = 1.0
    clip: bool = False
    name: ClassVar[str] = "normal"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std >= 0):
            raise UserError(f"normal init: need a finite mean and std >= 0; got "
                            f"{self.mean}, {self.std}")

    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor:
        size = math.prod(self.shape)
        x = _randn(torch.arange(y.shape[0]), size, generator).view(-1, *self.shape)
        x = x.mul_(self.std).add_(self.mean)
        return x.clamp_(0.0, 1.0) if self.clip else x

    def config(self) -> dict[str, Any]:
        return {"init": self.name, "shape": list(self.shape), "mean": self.mean,
                "std": self.std, "clip": self.clip}


@INITS.register("noise_injection", alias="noise", fitted=True, cached=False)
class NoiseInjectionInit:
    """x0 = clip01(x_real + noise_std * N(0, I)), x_real an image of class y.

    The published ``noise_injection_initialization`` (docs/fidelity.md) takes the first 1000
    test images, gives the i-th chain of a class the i-th image of that class among them and
    adds noise of std alpha * eps (alpha 50 and eps 8/255 as ``get_init_images`` calls it,
    about 1.57): ``NoiseInjectionInit(noise_std=50 * 8 / 255, pick="ordered", pool=1000)``
    fitted on the test split.

    Args:
        noise_std: standard deviation of the added noise, pixel units (0.5: strong, the image
            is barely visible; the sampler has to rebuild it).
        pick: 'random' (default): a uniformly drawn image of the class, from the chain's own
            stream; 'ordered': chain j of the class takes its j-th image (j is the chain's
            index within its class under :class:`ChainStreams`, else its position in the batch,
            as published); more chains than images is an error.
        pool: keep only the first ``pool`` images given to :meth:`fit` (None: all).
    """

    name: ClassVar[str] = "noise_injection"

    def __init__(self, noise_std: float = 0.5, pick: str = "random",
                 pool: int | None = None) -> None:
        if not noise_std >= 0:
            raise UserError(f"noise_std must be >= 0; got {noise_std}")
        if pick not in ("random", "ordered"):
            raise UserError(f"pick must be 'random' or 'ordered'; got {pick!r}")
        if pool is not None and pool < 1:
            raise UserError(f"pool must be >= 1 images; got {pool}")
        self.noise_std = float(noise_std)
        self.pick = pick
        self.pool = None if pool is None else int(pool)
        self.images: dict[int, Tensor] = {}

    def fit(self, images: Tensor, labels: Tensor) -> NoiseInjectionInit:
        _check_data(images, labels)
        images, labels = images.detach().cpu(), labels.detach().cpu().long()
        if self.pool is not None:
            images, labels = images[: self.pool], labels[: self.pool]
        self.images = {c: images[idx] for c, idx in _by_class(labels)}
        return self

    def _pick(self, c: int, pos: Tensor, y: Tensor, generator: RandomSource) -> Tensor:
        pool = self.images[c]
        if self.pick == "ordered":
            pick = _index_in_class(y, generator)[pos]
            if int(pick.max()) >= len(pool):
                raise UserError(
                    f"noise init, pick 'ordered': chain {int(pick.max())} of class {c} needs "
                    f"that many images but the pool holds {len(pool)}; ask for fewer samples "
                    "per class, a larger pool, or pick 'random'")
        elif isinstance(generator, SampleStreams):
            pick = generator.integers(pos, 0, len(pool)).cpu()
        else:
            pick = torch.randint(len(pool), (len(pos),), generator=generator)
        return as_unit_float(pool[pick])

    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor:
        if not self.images:
            raise UserError("NoiseInjectionInit: call fit(images, labels) before sample()")
        shape = next(iter(self.images.values())).shape[1:]
        out = torch.empty((y.shape[0], *shape))
        for c, pos in _by_class(y):
            if c not in self.images:
                raise UserError(f"class {c} was not in the data given to fit()")
            out[pos] = self._pick(c, pos, y, generator)
        noise = _randn(torch.arange(len(out)), out[0].numel(), generator).view(out.shape)
        out.add_(noise, alpha=self.noise_std)
        return out.clamp_(0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"init": self.name, "noise_std": self.noise_std, "pick": self.pick,
                "pool": self.pool}



def make_init(name: str, **kwargs: Any) -> Any:
    """An unfitted initialiser by registered name (``class_pca``) or alias (``pca``)."""
    by_alias = INITS.names(alias=name)
    return INITS.get(by_alias[0] if by_alias else name)(**kwargs)
