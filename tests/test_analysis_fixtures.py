"""Shared tiny model for the analysis and detection tests (no tests here).

``digits_mlp()`` trains ``create_model("mlp", 10, 1, image_size=8)`` on the built-in digits
train split (1438 images, 8x8) for 5 epochs of plain SGD: about 0.1 s, 98% test accuracy.
"""

from __future__ import annotations

import functools

import torch

from robust_ebm.data import load_dataset
from robust_ebm.models import create_model


@functools.lru_cache(maxsize=1)
def digits_mlp() -> torch.nn.Module:
    tr = load_dataset("digits", "train")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("mlp", 10, 1, tr.mean, tr.std, image_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = tr.images.float() / 255, tr.labels
    for epoch in range(5):
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@functools.lru_cache(maxsize=1)
def digits_test(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    te = load_dataset("digits", "test")
    return te.images[:n].float() / 255, te.labels[:n]
