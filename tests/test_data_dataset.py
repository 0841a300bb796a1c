"""ImageDataset validation, subset and the stratified train/val split."""

from __future__ import annotations

import pytest
import torch

from robust_ebm.data import ImageDataset, split_train_val
from robust_ebm.errors import UserError


def make(n=40, k=4, **kw):
    gen = torch.Generator().manual_seed(0)
    args = {
        "images": torch.randint(0, 256, (n, 1, 5, 5), dtype=torch.uint8, generator=gen),
        "labels": torch.arange(n) % k,
        "num_classes": k,
        "name": "toy",
        "mean": (0.5,),
        "std": (0.25,),
    }
    args.update(kw)
    return ImageDataset(**args)


def test_basic_properties():
    ds = make()
    assert len(ds) == 40 and ds.shape == (1, 5, 5)
    sub = ds.subset([3, 1])
    assert len(sub) == 2 and sub.labels.tolist() == [3, 1] and sub.mean == ds.mean
    assert torch.equal(sub.images[0], ds.images[3])


@pytest.mark.parametrize(
    "override, match",
    [
        ({"images": torch.zeros(40, 1, 5, 5)}, "uint8"),
        ({"images": torch.zeros(40, 5, 5, dtype=torch.uint8)}, r"\(N, C, H, W\)"),
        ({"labels": torch.zeros(40, dtype=torch.int32)}, "int64"),
        ({"labels": torch.zeros(39, dtype=torch.int64)}, "one label per image"),
        ({"labels": torch.full((40,), 4)}, r"\[0, 4\)"),
        ({"labels": torch.full((40,), -1)}, r"\[0, 4\)"),
        ({"mean": (0.1, 0.2)}, "per channel"),
    ],
)
def test_validation_names_problem(override, match):
    with pytest.raises(UserError, match=match):
        make(**override)


@pytest.mark.parametrize("val_size", [10, 0.25])
def test_split_train_val_stratified_and_seeded(val_size):
    ds = make(n=40, k=4)
    train, val = split_train_val(ds, val_size, seed=3)
    assert len(val) == 10 and len(train) == 30
    assert set(torch.bincount(val.labels).tolist()) == {2, 3}  # each of 4 classes owes 2.5
    _again_train, again_val = split_train_val(ds, val_size, seed=3)
    assert torch.equal(val.images, again_val.images)
    other = split_train_val(ds, val_size, seed=4)[1]
    assert not torch.equal(val.images, other.images)
    # disjoint and covering: every image appears once across the two parts
    both = torch.cat([train.images, val.images]).flatten(1)
    assert torch.unique(both, dim=0).shape[0] == torch.unique(ds.images.flatten(1), dim=0).shape[0]
    assert len(both) == len(ds)


def test_split_rejects_bad_sizes():
    ds = make()
    for bad in (0, 40, 1.0, -0.1):
        with pytest.raises(UserError):
            split_train_val(ds, bad)
