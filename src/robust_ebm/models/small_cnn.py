"""A small CNN for 28x28 (or 32x32) images: conv 32 - conv 64 - fc 128.

Trains to about 91% on Fashion-MNIST in a few CPU epochs (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 14 -> 7
            nn.AdaptiveAvgPool2d(7),  # 7x7 for 28x28 inputs; also accepts 32x32
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))  # (N, K)


@register_model("small_cnn")
def small_cnn(num_classes: int = 10, in_channels: int = 1, hidden: int = 128) -> nn.Module:
    return SmallCNN(num_classes, in_channels, hidden)
