"""WideResNet (Zagoruyko & Komodakis 2016), e.g. WRN-28-10 and WRN-34-10.

Parameter names match the layout of RobustBench / TRADES WideResNet checkpoints
(``block1.layer.0.bn1``, ``convShortcut``, ``bn1``, ``fc``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .registry import register_model


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes and stride == 1
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop)
                for i in range(n)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise UserError(f"wide_resnet depth must be 6n+4 (e.g. 28, 34); got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("wide_resnet")
def wide_resnet(
    num_classes: int = 10,
    in_channels: int = 3,
    depth: int = 28,
    widen_factor: int = 10,
    drop_rate: float = 0.0,
) -> nn.Module:
    return WideResNet(depth, widen_factor, num_classes, in_channels, drop_rate)


@register_model("wide_resnet28_10")
def wide_resnet28_10(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return WideResNet(28, 10, num_classes, in_channels)


@register_model("wide_resnet34_10")
def wide_resnet34_10(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return WideResNet(34, 10, num_classes, in_channels)
