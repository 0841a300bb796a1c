"""Shared layers: the in-model normalization and the classifier wrapper."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """(x - mean) / std per channel, so that models take [0, 1] images directly."""

    mean: Tensor  # buffers, (1, C, 1, 1)
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class Classifier(nn.Module):
    """A network behind :class:`Normalize`: [0,1] images (N,C,H,W) in, logits (N,K) out.

    ``arch`` records how the model was built (registry name and arguments); checkpoints store it
    so :func:`robust_ebm.checkpoint.load_model` can rebuild the model.
    """

    def __init__(
        self, net: nn.Module, mean: Sequence[float], std: Sequence[float], arch: dict[str, Any]
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.arch = arch
        self.load_report: dict[str, Any] = {}  # set by load_model: what was read or skipped

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))
