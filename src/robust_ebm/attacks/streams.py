"""Per-sample random streams computed on the inputs' device: batch-invariant randomness.

Every attack's random draws (random starts, random targets) come from one stream per sample.
A sample's stream depends only on (seed, its label, its pixel values) and on how many numbers
it has drawn so far, never on the batch around it: a sample draws the same numbers alone or
inside any batch, at any position, on any rank of a sharded run, so a batch of N gives what N
batches of 1 give. The global RNG is never touched.

How (counter-based, in the spirit of Salmon et al. 2011, "Parallel random numbers: as easy as
1, 2, 3"): a 32-bit key per sample is a position-weighted sum of the float32 bit patterns of its
pixels (exact integer arithmetic, so independent of summation order), mixed with the label and
the seed by the "lowbias32" hash (C. Wellons' hash prospector). Each draw takes a fresh block:
a block key mixes the sample's key with how many numbers it has drawn so far, and number j of
the block is two xor-shift-multiply rounds of (j * golden ratio) xor the block key, on int32
tensors whose products wrap modulo 2^32 on CPU and CUDA alike. Floats are built from the top
23 bits (a 2^-23 grid); normals come from Box-Muller (computed in float64, then cast).
Everything is a tensor op on the device, in place where it can be: no host copy of the batch
and no Python loop over samples.

Two different images share a key with probability about 2^-32. Uniform draws are bit-identical
in any batch; normal draws go through log/cos/sin, whose vectorised and scalar code paths may
differ in the last bit of a float64, which changes the float32 result with probability about
2^-28 per number.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: odd, spreads consecutive counters over all bits
_MUL1 = 0x7FEB352D
_MUL2 = 0x846CA68B
_MUL_DRAWS = 0x045D9F3B


def _i32(value: int) -> int:
    """An unsigned 32-bit constant as the int32 with the same bits."""
    value &= _MASK32
    return value - (1 << 32) if value >= 1 << 31 else value


def _shift_right(z: Tensor, bits: int) -> Tensor:
    """Logical right shift of int32 bit patterns (torch's >> is arithmetic)."""
    shifted = z >> bits
    shifted &= (1 << (32 - bits)) - 1
    return shifted


def _mix(z: Tensor, key2: Tensor | None = None) -> Tensor:
    """lowbias32 on an int32 tensor, in place; ``key2`` is xored in between the two rounds.

    For the per-sample keys (N numbers; the draws use :func:`_mix_draws_`).
    """
    z ^= _shift_right(z, 16)
    z *= _i32(_MUL1)
    if key2 is not None:
        z ^= key2
    z ^= _shift_right(z, 15)
    z *= _i32(_MUL2)
    z ^= _shift_right(z, 16)
    return z


def _fold_high_half_(z: Tensor) -> None:
    """z ^= z >>> 16 in place, without a temporary: xor each int32's high int16 into its low
    one through an int16 view (int32 words are little-endian on every torch device)."""
    halves = z.view(torch.int16)
    halves[..., 0::2] ^= halves[..., 1::2]


def _mix_draws_(z: Tensor) -> Tensor:
    """Two xor-shift-multiply rounds in place on a contiguous (rows, count) int32 tensor.

    Shifts of 16 (the multiplier 0x45D9F3B of the "16 M 16 M 16" integer hash) so that each
    fold is an in-place int16 xor: on CPU a fresh batch-sized temporary per step costs more
    than the integer op itself. The last fold of that hash is left out: it only mixes the high
    half into the low one, and the draws read the high bits, which the last multiply has mixed.
    """
    _fold_high_half_(z)
    z *= _MUL_DRAWS
    _fold_high_half_(z)
    z *= _MUL_DRAWS
    return z


def _counter_table(count: int, device: torch.device) -> Tensor:
    """(count,) int32 holding j * GOLDEN mod 2^32 for j = 0..count-1."""
    j = torch.arange(count, device=device, dtype=torch.int64)
    return _wrap32(j * _GOLDEN)


def _wrap32(v: Tensor) -> Tensor:
    """int64 -> the int32 with the same low 32 bits (well defined, unlike a plain cast)."""
    v = v & _MASK32
    return torch.where(v >= 1 << 31, v - (1 << 32), v).to(torch.int32)


def _seed_words(seed: int | None) -> tuple[int, int]:
    base = int.from_bytes(os.urandom(8), "little") if seed is None else int(seed)
    base &= (1 << 64) - 1
    return _i32(base), _i32(base >> 32)


def image_keys(x: Tensor, y: Tensor, seed: int | None) -> tuple[Tensor, Tensor]:
    """Two (N,) int32 keys per sample from (seed, y_i, the float32 bits of x_i), on x's device."""
    n, d = x.shape[0], math.prod(x.shape[1:])
    bits = x.detach().to(torch.float32).contiguous().view(torch.int32).reshape(n, d)
    weights = _mix(_counter_table(bits.shape[1], x.device)) | 1  # odd: every pixel counts
    if bits.device.type == "cpu":  # one pass, no temporary; sums wrap modulo 2^32 either way
        pixel_sum = torch.mv(bits, weights)
    else:  # integer matmul is CPU-only
        pixel_sum = (bits * weights).sum(1, dtype=torch.int32)
    lo, hi = _seed_words(seed)
    labels = _wrap32(y.detach().to(device=x.device, dtype=torch.int64) * _GOLDEN)
    key = _mix(pixel_sum + lo)
    key = _mix(key ^ labels)
    key = _mix(key + hi)
    return key, _mix(key ^ _i32(_GOLDEN))


@dataclass
class SampleStreams:
    """One counter-based random stream per sample of a batch (see the module docstring).

    Attributes:
        key, key2: (N,) int32 per-sample keys.
        drawn: (N,) int64, how many 32-bit numbers each sample has drawn so far.
    """

    key: Tensor
    key2: Tensor
    drawn: Tensor

    @classmethod
    def for_batch(cls, x: Tensor, y: Tensor, seed: int | None) -> SampleStreams:
        """Streams keyed by (seed, y_i, x_i); ``seed=None`` takes fresh OS entropy."""
        key, key2 = image_keys(x, y, seed)
        return cls(key, key2, torch.zeros_like(key, dtype=torch.int64))

    def __len__(self) -> int:
        return self.key.shape[0]

    def bits(self, rows: Tensor, count: int) -> Tensor:
        """(len(rows), count) int32 hashes: the next ``count`` numbers of each sample in rows.

        Each call draws a fresh block: its row key mixes the sample's key with how much the
        sample has drawn, and number j of the block hashes (j * GOLDEN) xor the row key.
        """
        rows = rows.to(self.key.device)
        block = _mix(self.key[rows] ^ _mix(_wrap32(self.drawn[rows])), self.key2[rows])
        self.drawn[rows] += count
        z = torch.bitwise_xor(_counter_table(count, self.key.device), block.unsqueeze(1))
        return _mix_draws_(z)

    def _unit_floats(self, rows: Tensor, shape: tuple[int, ...]) -> Tensor:
        """(len(rows), *shape) float32 uniform on [1, 2), a 2^-23 grid, built in place from the
        top 23 bits of each hash (the mantissa) under the exponent of 1.0: no int -> float
        conversion and no second batch-sized tensor."""
        z = self.bits(rows, math.prod(shape))
        z >>= 9
        z &= (1 << 23) - 1
        z |= 0x3F800000
        return z.view(torch.float32).view(len(rows), *shape)

    def uniform(self, rows: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """(len(rows), *shape) uniform on [0, 1), a 2^-23 grid."""
        return self._unit_floats(rows, shape).sub_(1.0).to(dtype)

    def symmetric(
        self,
        rows: Tensor,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        scale: Tensor | None = None,
    ) -> Tensor:
        """(len(rows), *shape) uniform on [-1, 1) times ``scale`` (broadcastable, e.g. a
        per-sample eps; the L-inf random start draws these), a 2^-22 grid: 2 (u - 1.5) with u
        on [1, 2), both steps exact, in place."""
        factor = 2.0 if scale is None else scale.to(torch.float32) * 2.0
        return self._unit_floats(rows, shape).sub_(1.5).mul_(factor).to(dtype)

    def normal(self, rows: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """(len(rows), *shape) standard normal by Box-Muller (both outputs of each pair)."""
        count = math.prod(shape)
        half = (count + 1) // 2
        wide = torch.float64 if self.key.device.type != "mps" else torch.float32
        u = self.uniform(rows, (2 * half,), wide)
        radius = (-2.0 * torch.log1p(-u[:, :half])).sqrt()
        angle = (2.0 * math.pi) * u[:, half:]
        z = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
        return z[:, :count].to(dtype).reshape(len(rows), *shape)

    def integers(self, rows: Tensor, low: int, high: int) -> Tensor:
        """(len(rows),) int64 uniform on {low, ..., high - 1}."""
        u = self.uniform(rows, (1,), torch.float64).squeeze(1)
        return (low + (u * (high - low)).floor().long()).clamp_(max=high - 1)

    def draw(
        self,
        rows: Tensor,
        shape: tuple[int, ...],
        like: Tensor,
        kind: str,
        scale: Tensor | None = None,
    ) -> Tensor:
        """Numbers of ``kind`` ('uniform', 'symmetric' or 'normal') in ``like``'s dtype and
        device, times ``scale`` if given."""
        if kind == "symmetric":
            return self.symmetric(rows, shape, like.dtype, scale).to(like.device)
        if kind not in ("uniform", "normal"):
            raise ValueError(f"unknown kind {kind!r}")
        out = getattr(self, kind)(rows, shape, like.dtype).to(like.device)
        return out if scale is None else out * scale


__all__ = ["SampleStreams", "image_keys"]
