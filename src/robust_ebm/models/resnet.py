"""CIFAR-style ResNets (He et al. 2016, arXiv 1512.03385) with a 3x3 stem and no max-pool.

Parameter names follow the layout common in adversarial-robustness code (``conv1``, ``bn1``,
``layer1.0.conv1``, ``shortcut.0``, ``linear``) so foreign checkpoints load without renaming:
ResNet-18 as in RobustBench (Sehwag2021Proxy_R18, Addepalli) and in the code of Mirza et al.
2024 (arXiv 2407.06315; CIFAR and Tiny-ImageNet, which differ only by a parameter-free pooling);
ResNet-50 (bottleneck) as in the MadryLab robustness library (Engstrom2019Robustness,
Augustin2020, the Santurkar et al. 2019 generation model); ResNet-10 of Beadini & Masi (arXiv
2304.04033), optionally without BatchNorm (``batchnorm=False``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, bn: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes, bn)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes, bn)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), _bn(planes, bn)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, bn: bool = True) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = _bn(planes, bn)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes, bn)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = _bn(out, bn)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False),
                                          _bn(out, bn))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _bn(channels: int, on: bool) -> nn.Module:
    # Beadini & Masi's no-BatchNorm variant swaps each BatchNorm for an empty Sequential.
    return nn.BatchNorm2d(channels) if on else nn.Sequential()


class ResNet(nn.Module):
    def __init__(self, num_blocks: list[int], num_classes: int = 10, in_channels: int = 3,
                 block: type[nn.Module] = BasicBlock, batchnorm: bool = True) -> None:
        super().__init__()
        self.in_planes = 64
        self.block = block
        self.batchnorm = batchnorm
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = _bn(64, batchnorm)
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        self.linear = nn.Linear(512 * block.expansion, num_classes)  # type: ignore[attr-defined]

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(self.block(self.in_planes, planes, s, self.batchnorm))
            self.in_planes = planes * self.block.expansion  # type: ignore[attr-defined]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (N, 512 * expansion)
        return self.linear(out)


@register_model("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet([2, 2, 2, 2], num_classes, in_channels)


@register_model("resnet10")
def resnet10(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True) -> nn.Module:
    return ResNet([1, 1, 1, 1], num_classes, in_channels, BasicBlock, batchnorm)


@register_model("resnet34")
def resnet34(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet([3, 4, 6, 3], num_classes, in_channels)


@register_model("resnet50")
def resnet50(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet([3, 4, 6, 3], num_classes, in_channels, Bottleneck)
