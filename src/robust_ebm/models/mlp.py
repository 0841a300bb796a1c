"""A multilayer perceptron: a fast model for small images and tests (no BatchNorm)."""

from __future__ import annotations

from torch import nn

from .registry import register_model


@register_model("mlp")
def mlp(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, hidden: int = 128) -> nn.Module:
    """Flatten -> Linear(C*S*S, hidden) -> ReLU -> Linear(hidden, K); S = ``image_size``."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )
