"""Per-sample random streams (robust_ebm.attacks.streams): batch invariance, statistics,
the int32 arithmetic against a pure-Python reference, and no host round trip."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from robust_ebm.attacks import make_attack
from robust_ebm.attacks.streams import SampleStreams, _counter_table, image_keys

SHAPE = (3, 8, 8)


@pytest.fixture
def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, *SHAPE, generator=g), torch.randint(0, 10, (6,), generator=g)


def _draw(x: torch.Tensor, y: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    streams = SampleStreams.for_batch(x, y, seed)
    rows = torch.arange(len(x))
    first = streams.draw(rows, SHAPE, x, kind)
    second = streams.draw(rows, SHAPE, x, kind)  # the stream moves on
    return torch.stack([first, second], dim=1)


@pytest.mark.parametrize("kind", ["uniform", "symmetric", "normal"])
def test_batch_single_and_permuted_draw_the_same(images, kind):
    x, y = images
    batch = _draw(x, y, kind)
    singles = torch.cat([_draw(x[i : i + 1], y[i : i + 1], kind) for i in range(len(x))])
    assert torch.equal(batch, singles)
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    assert torch.equal(_draw(x[perm], y[perm], kind), batch[perm])
    assert not torch.equal(batch[:, 0], batch[:, 1])


def test_subset_draws_advance_only_their_rows(images):
    """A restart draws for the samples still to fool: the others' streams must not move."""
    x, y = images
    streams = SampleStreams.for_batch(x, y, 0)
    rows = torch.arange(len(x))
    streams.draw(rows, SHAPE, x, "uniform")
    streams.draw(torch.tensor([1, 4]), SHAPE, x, "uniform")
    third = streams.draw(rows, SHAPE, x, "uniform")
    for i in range(len(x)):
        alone = SampleStreams.for_batch(x[i : i + 1], y[i : i + 1], 0)
        for _ in range(3 if i in (1, 4) else 2):
            last = alone.draw(torch.arange(1), SHAPE, x, "uniform")
        assert torch.equal(last[0], third[i])


def test_dtype_of_the_input_does_not_change_the_numbers(images):
    x, y = images
    assert all(torch.equal(a, b) for a, b in zip(image_keys(x, y, 3), image_keys(x.double(), y, 3)))
    # the CPU key (integer matrix-vector product) equals the elementwise form other devices use
    bits = x.reshape(len(x), -1).view(torch.int32)
    weights = torch.arange(1, bits.shape[1] + 1, dtype=torch.int32) * 40503 | 1
    assert torch.equal(torch.mv(bits, weights), (bits * weights).sum(1, dtype=torch.int32))
    u32 = _draw(x, y, "uniform")
    u64 = _draw(x.double(), y, "uniform")
    assert u64.dtype == torch.float64
    assert torch.equal(u64.float(), u32)
    n32 = _draw(x, y, "normal")
    n64 = _draw(x.double(), y, "normal")
    assert torch.equal(n64.float(), n32)


def test_seed_label_and_one_pixel_change_the_stream(images):
    x, y = images
    ref = _draw(x, y, "uniform")
    assert not torch.equal(_draw(x, y, "uniform", seed=1)[0], ref[0])
    assert not torch.equal(_draw(x, (y + 1) % 10, "uniform")[0], ref[0])
    x2 = x.clone()
    x2[0, 2, 7, 7] = torch.nextafter(x2[0, 2, 7, 7], torch.tensor(2.0))
    changed = _draw(x2, y, "uniform")
    assert not torch.equal(changed[0], ref[0])
    assert torch.equal(changed[1:], ref[1:])
    a, b = _draw(x, y, "uniform", seed=None), _draw(x, y, "uniform", seed=None)
    assert not torch.equal(a, b)  # OS entropy


def _lowbias32(z: int, key2: int | None = None, final: bool = True) -> int:
    m = 0xFFFFFFFF
    z ^= z >> 16
    z = (z * 0x7FEB352D) & m
    if key2 is not None:
        z ^= key2
    z ^= z >> 15
    z = (z * 0x846CA68B) & m
    return z ^ (z >> 16) if final else z


def test_int32_tensor_arithmetic_matches_python_reference(images):
    """Products must wrap modulo 2^32 and shifts be logical, as in the unsigned reference."""
    x, y = images
    streams = SampleStreams.for_batch(x, y, 7)
    key, key2 = (int(t[2]) & 0xFFFFFFFF for t in (streams.key, streams.key2))
    rows = torch.tensor([2])
    streams.bits(rows, 3)  # the next block starts after 3 numbers
    got = streams.bits(rows, 5)[0].tolist()
    block = _lowbias32(key ^ _lowbias32(3), key2)
    want = []
    for j in range(5):
        z = ((j * 0x9E3779B9) & 0xFFFFFFFF) ^ block
        for _ in range(2):  # the draws' two rounds: z ^= z >>> 16, z *= 0x45D9F3B
            z = ((z ^ (z >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
        want.append(z)
    assert [g & 0xFFFFFFFF for g in got] == want
    table = _counter_table(4, torch.device("cpu")).tolist()
    assert [t & 0xFFFFFFFF for t in table] == [(j * 0x9E3779B9) & 0xFFFFFFFF for j in range(4)]


def _many(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
    streams = SampleStreams.for_batch(x, y, 0)
    return streams.draw(torch.arange(64), (3, 32, 32), x, kind).double()


def test_uniform_and_symmetric_are_uniform():
    u = _many("uniform").flatten()  # 196,608 numbers
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert stats.kstest(u.numpy(), "uniform").pvalue > 0.01
    assert abs(float(u.mean()) - 0.5) < 4 * (1 / 12) ** 0.5 / len(u) ** 0.5
    assert abs(float(u.var()) - 1 / 12) < 0.002
    s = _many("symmetric").flatten()
    assert -1.0 <= float(s.min()) and float(s.max()) < 1.0
    assert stats.kstest(s.numpy(), "uniform", args=(-1.0, 2.0)).pvalue > 0.01


def test_normal_is_standard_normal():
    z = _many("normal").flatten()
    assert stats.kstest(z.numpy(), "norm").pvalue > 0.01
    assert abs(float(z.mean())) < 4 / len(z) ** 0.5
    assert abs(float(z.var()) - 1.0) < 0.01


def test_neighbouring_numbers_and_samples_are_uncorrelated():
    u = _many("uniform").flatten(1)  # (64, 3072)
    n = u.shape[0] * (u.shape[1] - 1)
    lag1 = torch.corrcoef(torch.stack([u[:, :-1].flatten(), u[:, 1:].flatten()]))[0, 1]
    assert abs(float(lag1)) < 4 / n**0.5
    across = torch.corrcoef(torch.stack([u[:-1].flatten(), u[1:].flatten()]))[0, 1]
    assert abs(float(across)) < 4 / (u.shape[1] * 63) ** 0.5


def test_integers_cover_the_range_uniformly():
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(4000, 4, generator=g), torch.zeros(4000, dtype=torch.long)
    k = SampleStreams.for_batch(x, y, 0).integers(torch.arange(4000), 1, 10)
    counts = torch.bincount(k, minlength=10)
    assert counts[0] == 0 and int(k.max()) == 9
    assert stats.chisquare(counts[1:].numpy()).pvalue > 0.01


def test_empty_batch():
    x, y = torch.rand(0, *SHAPE), torch.zeros(0, dtype=torch.long)
    streams = SampleStreams.for_batch(x, y, 0)
    for kind in ("uniform", "symmetric", "normal"):
        assert streams.draw(torch.arange(0), SHAPE, x, kind).shape == (0, *SHAPE)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
    for name in ("pgd", "apgd_ce"):
        assert make_attack(name, steps=2)(model, x, y).shape == x.shape


def test_streams_need_no_host_copy():
    """On the meta device no data exists: any .item()/.cpu()/.tolist() would fail."""
    x = torch.empty(5, *SHAPE, device="meta")
    y = torch.empty(5, dtype=torch.long, device="meta")
    streams = SampleStreams.for_batch(x, y, 0)
    rows = torch.arange(5, device="meta")
    for kind in ("uniform", "symmetric", "normal"):
        assert streams.draw(rows, SHAPE, x, kind).shape == (5, *SHAPE)
    assert streams.integers(rows, 1, 10).shape == (5,)


def test_random_start_is_batch_invariant_bit_for_bit():
    """With one step of size 0 the result is the start itself: same alone or in a batch."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(5, *SHAPE, generator=g), torch.randint(0, 10, (5,), generator=g)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
    for name in ("pgd", "pgd_l2", "trades_kl"):
        attack = make_attack(name, steps=1, step_size=0.0)
        full = attack(model, x, y)
        singles = torch.cat([attack(model, x[i : i + 1], y[i : i + 1]) for i in range(5)])
        assert torch.equal(full, singles), name
        assert not torch.equal(full, x), name
