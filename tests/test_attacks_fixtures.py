"""Shared tiny models for the attack and evaluation tests (no tests here).

``digits_model()`` trains an MLP on sklearn's 8x8 digits (pixels scaled to [0, 1]) in about
a second and is cached for the session; the test modules wrap it in fixtures.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv 8 - pool - fc: per-sample independent in eval mode (BatchNorm uses running stats)."""

    def __init__(self, k: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.1),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, k),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@functools.lru_cache(maxsize=1)
def digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


@functools.lru_cache(maxsize=1)
def digits_model() -> nn.Module:
    """An MLP with >= 95% train accuracy on digits; eval mode, seeded."""
    x, y = digits_data()
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        idx = torch.randint(0, x.shape[0], (256,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


@functools.lru_cache(maxsize=1)
def _tiny_cnn_state() -> dict[str, torch.Tensor]:
    x, y = digits_data()
    g = torch.Generator().manual_seed(1)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = TinyCNN()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()  # dropout draws from the forked global RNG
        for _ in range(150):
            idx = torch.randint(0, x.shape[0], (128,), generator=g)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tiny_cnn() -> nn.Module:
    """A fresh (mutable) copy of a trained conv net with BatchNorm and Dropout; eval mode."""
    model = TinyCNN()
    model.load_state_dict(_tiny_cnn_state())
    model.eval()
    return model
