"""What every SGLD initialiser shares (docs/science.md#sgld-initialisations): the registry
``INITS``, the :class:`Init` protocol, where random numbers come from (:data:`RandomSource`,
:class:`ChainStreams`) and small helpers over images and labels. The initialisers themselves are
in :mod:`robust_ebm.sampling.init` (random and noise starts), :mod:`.class_stats` (fitted
class Gaussian and PCA starts) and :mod:`.buffer` (a replay buffer of earlier samples).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from ..attacks.streams import SampleStreams, integer_keys
from ..errors import UserError
from ..registry import Registry

CacheStatus = Literal["reused", "fitted", "refitted"]

# name -> initialiser class. Flags: ``alias`` (the short name the command line uses),
# ``fitted`` (needs fit(images, labels) on training data), ``cached`` (its fitted statistics can
# be saved and reused: ClassStatistics.fit_cached).
INITS: Registry[type] = Registry("initialisation")


# where an initialiser's random numbers come from (see the module docstring)
RandomSource = torch.Generator | SampleStreams | None


@dataclass
class ChainStreams(SampleStreams):
    """:class:`SampleStreams` of SGLD chains that also know each row's chain id (class in the
    high 32 bits, the chain's index j within its class in the low ones:
    :func:`robust_ebm.sampling.generate.chain_ids`), for inits that pick by index."""

    ids: Tensor | None = None

    @classmethod
    def for_chains(cls, ids: Tensor, seed: int | None) -> ChainStreams:
        """Streams keyed by (seed, ids_i) exactly as :meth:`SampleStreams.for_ids`."""
        key, key2 = integer_keys(ids, seed)
        return cls(key, key2, torch.zeros_like(key, dtype=torch.int64),
                   ids.detach().cpu().long())


class Init(Protocol):
    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor: ...


def as_unit_float(images: Tensor) -> Tensor:
    """uint8 images in [0, 255] -> float32 in [0, 1]; float images are taken as already in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise UserError(f"images must be uint8 or float; got {images.dtype}")
    return images.float()


def _check_data(images: Tensor, labels: Tensor) -> None:
    if images.dim() != 4:
        raise UserError(f"images must have shape (N, C, H, W); got {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise UserError(f"labels must have shape ({images.shape[0]},); got {tuple(labels.shape)}")


def data_fingerprint(images: Tensor, labels: Tensor) -> dict[str, Any]:
    """A cheap identity of a data set: N, shape, dtype, a hash of all labels and of a strided
    subset of about 2^20 pixel values. Equal data give equal fingerprints; a different split,
    subset or preprocessing almost surely does not."""
    _check_data(images, labels)
    flat = images.detach().cpu().reshape(-1)
    stride = max(1, flat.numel() // (1 << 20))
    pixels = flat[::stride].contiguous().numpy().tobytes()
    lab = labels.detach().cpu().long().contiguous().numpy().tobytes()
    return {
        "n": int(images.shape[0]),
        "shape": [int(s) for s in images.shape[1:]],
        "dtype": str(images.dtype).removeprefix("torch."),
        "labels_sha256": hashlib.sha256(lab).hexdigest(),
        "pixels_sha256": hashlib.sha256(pixels).hexdigest(),
        "pixel_stride": stride,
    }


def _randn(rows: Tensor, size: int, source: RandomSource) -> Tensor:
    """(len(rows), size) float32 standard normals for the batch rows ``rows``: from each row's
    own stream, or from a generator (or the global RNG) over the whole block."""
    if isinstance(source, SampleStreams):
        return source.normal(rows, (size,), torch.float32).cpu()
    return torch.randn((len(rows), size), generator=source, dtype=torch.float32)


def _uniform01(rows: Tensor, source: RandomSource) -> Tensor:
    """(len(rows),) float64 uniforms on [0, 1), one per row (from its own stream if given)."""
    if isinstance(source, SampleStreams):
        return source.uniform(rows, (1,), torch.float64).cpu().squeeze(1)
    return torch.rand(len(rows), generator=source, dtype=torch.float64)


def _index_in_class(y: Tensor, source: RandomSource) -> Tensor:
    """(N,) int64 index of each row among the chains of its class: the chain's own index j
    when ``source`` is :class:`ChainStreams` (the same in any batch), else its position among
    the rows of its class in this batch (a counter restarting at 0 in every batch, as the
    published code does)."""
    ids = getattr(source, "ids", None)
    if ids is not None:
        return ids & 0xFFFFFFFF
    out = torch.empty(y.shape[0], dtype=torch.long)
    for _, pos in _by_class(y):
        out[pos] = torch.arange(len(pos))
    return out


def _by_class(y: Tensor) -> list[tuple[int, Tensor]]:
    """(class, positions in y) for each class present, in increasing class order."""
    y = y.detach().cpu().long()
    return [(int(c), (y == c).nonzero().squeeze(1)) for c in torch.unique(y)]

