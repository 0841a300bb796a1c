"""Pre-activation ResNet-18 (He et al. 2016, "Identity mappings"), CIFAR layout.

Parameter names match the common robustness layout (``layer1.0.bn1``, ``shortcut.0``, ``bn``,
``linear``) used by RobustBench PreActResNet-18 checkpoints. Two switches give the zoo's
variants: ``final_bn`` (a BatchNorm + ReLU before pooling; Rice et al. 2020 L2, Addepalli et al.
2021 have it, Wong et al. 2020 "Fast is better than free" and Andriushchenko & Flammarion 2020
do not) and ``shortcut_from_input`` (the projection shortcut reads the raw block input, as in
Wong2020Fast/Andriushchenko2020, instead of the pre-activated one).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_model


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 shortcut_from_input: bool = False) -> None:
        super().__init__()
        self.shortcut_from_input = shortcut_from_input
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        if hasattr(self, "shortcut"):
            shortcut = self.shortcut(x if self.shortcut_from_input else out)
        else:
            shortcut = x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, num_blocks: list[int], num_classes: int = 10, in_channels: int = 3,
                 final_bn: bool = True, shortcut_from_input: bool = False) -> None:
        super().__init__()
        self.in_planes = 64
        self.shortcut_from_input = shortcut_from_input
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        if final_bn:
            self.bn = nn.BatchNorm2d(512)
        self.final_bn = final_bn
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(PreActBlock(self.in_planes, planes, s, self.shortcut_from_input))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        if self.final_bn:
            out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int = 10, in_channels: int = 3, final_bn: bool = True,
                    shortcut_from_input: bool = False) -> nn.Module:
    return PreActResNet([2, 2, 2, 2], num_classes, in_channels, final_bn, shortcut_from_input)
