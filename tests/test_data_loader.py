"""TensorLoader: determinism, augmentation, sharding, resume, value range."""

from __future__ import annotations

import pytest
import torch

from robust_ebm.data import Augment, ImageDataset, TensorLoader
from robust_ebm.errors import UserError


def toy(n=50, c=1, h=6, w=7):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (n, c, h, w), dtype=torch.uint8, generator=gen)  # no zeros
    return ImageDataset(images, torch.arange(n) % 10, 10, "toy", (0.5,) * c, (0.25,) * c)


def epoch_batches(loader, epoch, start=0):
    return list(loader.iterate(epoch, start))


def test_shapes_range_and_len():
    ds = toy()
    loader = TensorLoader(ds, 16)
    batches = list(loader)
    assert len(loader) == len(batches) == 4 and [len(y) for _, y in batches] == [16, 16, 16, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (16, 1, 6, 7)
    allx = torch.cat([b[0] for b in batches])
    assert 0.0 <= float(allx.min()) and float(allx.max()) <= 1.0
    assert len(TensorLoader(ds, 16, drop_last=True)) == 3
    # every sample exactly once, values exactly image / 255
    ys = torch.cat([b[1] for b in batches])
    assert sorted(ys.tolist()) == sorted(ds.labels.tolist())
    ordered = TensorLoader(ds, 50, shuffle=False)
    assert torch.equal(next(iter(ordered))[0], ds.images.float() / 255)


def test_determinism_and_epochs_differ():
    ds = toy()
    aug = Augment(crop_padding=2, flip=True)
    a = epoch_batches(TensorLoader(ds, 8, seed=1, augment=aug), 0)
    torch.manual_seed(123)  # global RNG must not matter
    b = epoch_batches(TensorLoader(ds, 8, seed=1, augment=aug), 0)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    c = epoch_batches(TensorLoader(ds, 8, seed=1, augment=aug), 1)
    assert not torch.equal(a[0][1], c[0][1])
    loader = TensorLoader(ds, 8, seed=1, augment=aug)
    loader.set_epoch(1)
    assert torch.equal(next(iter(loader))[0], c[0][0])


def test_resume_from_batch_equals_full_epoch():
    loader = TensorLoader(toy(), 8, seed=5, augment=Augment(crop_padding=1, flip=True))
    full = epoch_batches(loader, 3)
    resumed = epoch_batches(loader, 3, start=4)
    assert len(resumed) == len(full) - 4
    for (x, y), (xr, yr) in zip(full[4:], resumed):
        assert torch.equal(x, xr) and torch.equal(y, yr)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_sharding_covers_epoch(world):
    ds = toy(n=50)
    shards = [TensorLoader(ds, 5, seed=2, rank=r, world_size=world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # same number of batches on every rank
    idx = [s.indices(0) for s in shards]
    assert len({len(i) for i in idx}) == 1
    union = torch.cat(idx)
    assert set(union.tolist()) == set(range(50))
    assert len(union) - 50 < world  # padding by wrapping adds fewer than W repeats
    # same permutation on every rank: interleaving the shards gives the unsharded order
    full = TensorLoader(ds, 5, seed=2).indices(0)
    interleaved = torch.stack(idx, dim=1).flatten()
    assert torch.equal(interleaved[:50], full)


def test_crop_shifts_content_within_bounds():
    # a single bright pixel: after a crop with padding p it moves by at most p (or leaves)
    images = torch.zeros(64, 1, 9, 9, dtype=torch.uint8)
    images[:, 0, 4, 4] = 255
    p = 2
    out = Augment(crop_padding=p)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    shifts = set()
    for img in out[:, 0]:
        ((r, c),) = torch.nonzero(img).tolist()  # padding 2 keeps the centre pixel in view
        assert abs(r - 4) <= p and abs(c - 4) <= p
        shifts.add((r - 4, c - 4))
    assert len(shifts) > 10  # offsets vary per image
    # content that enters from outside is zero padding
    ones = torch.full((32, 1, 5, 5), 7, dtype=torch.uint8)
    cropped = Augment(crop_padding=2)(ones, torch.Generator().manual_seed(1))
    assert set(cropped.unique().tolist()) <= {0, 7} and (cropped == 0).any()
    # each crop is an exact window of the zero-padded image
    padded = torch.nn.functional.pad(ones, (2, 2, 2, 2))
    windows = padded.unfold(2, 5, 1).unfold(3, 5, 1)  # (N, C, 5, 5, 5, 5)
    for i in range(4):
        assert any(torch.equal(windows[i, :, a, b], cropped[i]) for a in range(5) for b in range(5))


def test_flip_mirrors():
    ds = toy(n=200, c=3)
    out = Augment(flip=True)(ds.images, torch.Generator().manual_seed(0))
    flipped = (out == ds.images.flip(3)).flatten(1).all(1)
    same = (out == ds.images).flatten(1).all(1)
    assert bool((flipped | same).all())
    assert 60 < int(flipped.sum()) < 140  # about half
    assert torch.equal(Augment()(ds.images, torch.Generator()), ds.images)


def test_bad_arguments():
    with pytest.raises(UserError):
        Augment(crop_padding=-1)
    with pytest.raises(UserError):
        TensorLoader(toy(), 0)
    with pytest.raises(UserError):
        TensorLoader(toy(), 4, rank=2, world_size=2)
