"""A tensor-resident loader: uint8 data in memory, batched augmentation, exact resume, sharding.

No worker processes and no per-sample Python: each batch is one index, one gather for the random
crop, one ``torch.where`` for the flip and one conversion to float32 in [0, 1] (airbench-style).

Randomness never touches the global RNG. The epoch permutation comes from a generator seeded
with (seed, epoch); the augmentation of batch b from one seeded with (seed, epoch, rank, b). So
``iterate(epoch, start_batch=b)`` reproduces a full epoch from batch b on, bit for bit.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from .dataset import ImageDataset

__all__ = ["Augment", "TensorLoader", "derive_seed"]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (stable across runs, platforms and Python versions)."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Augment:
    """Batched augmentation of uint8 images (N, C, H, W).

    Attributes:
        crop_padding: p: zero-pad by p pixels on every side, then crop back to (H, W) at a
            uniform random offset in [0, 2p] per image (so content moves by at most p pixels).
        flip: Mirror each image left-right with probability 1/2.
    """

    crop_padding: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise UserError(f"crop_padding must be >= 0; got {self.crop_padding}")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Augment ``x`` (N, C, H, W), any dtype; random draws come from ``generator`` (CPU)."""
        n, c, h, w = x.shape
        p = self.crop_padding
        if p > 0:
            padded = F.pad(x, (p, p, p, p))  # (N, C, H+2p, W+2p), zeros outside
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H)
            cols = dx[:, None] + torch.arange(w, device=x.device)  # (N, W)
            b = torch.arange(n, device=x.device)[:, None, None, None]
            ch = torch.arange(c, device=x.device)[None, :, None, None]
            x = padded[b, ch, rows[:, None, :, None], cols[:, None, None, :]]  # (N, C, H, W)
        if self.flip:
            mirror = torch.rand(n, generator=generator).lt(0.5).to(x.device)
            x = torch.where(mirror[:, None, None, None], x.flip(3), x)
        return x


class TensorLoader:
    """Iterate over an :class:`ImageDataset` in batches of float32 images in [0, 1].

    Args:
        dataset: Stays in memory as uint8 (moved once to ``device``).
        batch_size: Samples per batch (per rank).
        shuffle: Draw a new permutation each epoch from (seed, epoch); else dataset order.
        seed: Base seed of the permutation and the augmentation.
        augment: Optional :class:`Augment`, applied per batch on ``device``.
        drop_last: Drop the last incomplete batch of each rank.
        rank, world_size: Sharding. The epoch order is the same on every rank; it is padded by
            wrapping around to a multiple of ``world_size`` (so every rank gets
            ``ceil(N / world_size)`` samples and the same number of batches; a few samples are
            seen twice per epoch), then rank r takes positions r, r + W, r + 2W, ...
        device: Where batches are produced.
        host_resident: Keep the uint8 data in host memory (page-locked when CUDA is available)
            and copy each gathered batch to ``device`` asynchronously, instead of moving the
            whole dataset to ``device`` once. For data larger than the device's memory; the
            batches are the same bit for bit (augmentation runs on ``device`` after the copy).

    Yields:
        ``(x, y)``: float32 (B, C, H, W) in [0, 1] and int64 (B,), on ``device``.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        augment: Augment | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        host_resident: bool = False,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1; got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"need 0 <= rank < world_size; got rank={rank}, world={world_size}")
        if len(dataset) == 0:
            raise UserError(f"dataset {dataset.name!r} is empty; nothing to load")
        self.dataset = dataset
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.augment, self.drop_last = augment, drop_last
        self.rank, self.world_size = int(rank), int(world_size)
        self.device = torch.device(device)
        self.epoch = 0
        self.host_resident = bool(host_resident)
        store = torch.device("cpu") if host_resident else self.device
        self._images = dataset.images.to(store)  # uint8 (N, C, H, W)
        self._labels = dataset.labels.to(store)
        self._pin = host_resident and self.device.type == "cuda" and torch.cuda.is_available()
        self.samples_per_rank = math.ceil(len(dataset) / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that ``__iter__`` yields (permutation and augmentation)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.samples_per_rank // self.batch_size
        return math.ceil(self.samples_per_rank / self.batch_size)

    def indices(self, epoch: int) -> Tensor:
        """This rank's sample indices for ``epoch``, int64 (samples_per_rank,), on CPU."""
        n = len(self.dataset)
        if self.shuffle:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        total = self.samples_per_rank * self.world_size
        if total > n:  # wrap around so every rank gets the same count
            order = torch.cat([order, order.repeat(math.ceil(total / n))[: total - n]])
        return order[self.rank : total : self.world_size]

    def iterate(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the batches of ``epoch`` from batch ``start_batch`` on (for mid-epoch resume)."""
        idx = self.indices(epoch)
        for b in range(start_batch, len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size].to(self._images.device)
            x, y = self._images[sel], self._labels[sel]
            if self.host_resident:
                x, y = self._to_device(x), self._to_device(y)
            if self.augment is not None:
                gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, self.rank, b))
                x = self.augment(x, gen)  # on uint8: cheaper than on floats, exact
            yield x.to(torch.float32).div_(255.0), y

    def _to_device(self, t: Tensor) -> Tensor:
        """Host batch -> device: staged in page-locked memory on CUDA, so the copy can overlap
        with compute; the staging tensor is fresh per batch, never reused mid-copy."""
        if self._pin:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iterate(self.epoch)
