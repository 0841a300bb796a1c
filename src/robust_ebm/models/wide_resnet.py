"""WideResNet (Zagoruyko & Komodakis 2016), e.g. WRN-28-10 and WRN-34-10.

Parameter names match the layout of RobustBench / TRADES WideResNet checkpoints
(``block1.layer.0.bn1``, ``convShortcut``, ``bn1``, ``fc``). Options reproduce the zoo's
variants: ``sub_block1`` builds the extra first-stage block that the TRADES code defines but
never calls (its weights sit in the Carmon2019/Zhang2019/... files and are loaded, unused);
``bias_last=False`` and ``normalized_head`` give Pang et al. 2020's hypersphere head (arXiv
2002.08619: logits are cosines, unit-length features and class weights, no scale);
``per_image_standardize`` is Ding et al. 2020's MMA input step (arXiv 1812.02637): each image
minus its own mean over (C,H,W), divided by max(std, 1/sqrt(C*H*W)).
"""

from __future__ import annotations

import torch
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


def standardize_per_image(x: Tensor) -> Tensor:
    """(x - mean) / max(std, 1/sqrt(D)) per image over D = C*H*W values (Ding et al. 2020)."""
    mu = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)  # unbiased, as in the MMA code
    floor = torch.full_like(std, 1.0 / (x[0].numel() ** 0.5))
    return (x - mu) / torch.maximum(std, floor)


class WideResNet(nn.Module):
    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
        sub_block1: bool = False,
        bias_last: bool = True,
        normalized_head: bool = False,
        per_image_standardize: bool = False,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise UserError(f"wide_resnet depth must be 6n+4 (e.g. 28, 34); got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        if sub_block1:  # defined by the TRADES code, never called in forward
            self.sub_block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes, bias=bias_last)
        self.normalized_head = normalized_head
        self.per_image_standardize = per_image_standardize

    def forward(self, x: Tensor) -> Tensor:
        if self.per_image_standardize:
            x = standardize_per_image(x)
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        feats = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (N, 64 * widen_factor)
        if self.normalized_head:  # cosine logits; the weights are normalised, never mutated
            return F.linear(F.normalize(feats, dim=1), F.normalize(self.fc.weight, dim=1),
                            self.fc.bias)
        return self.fc(feats)


@register_model("wide_resnet")
def wide_resnet(
    num_classes: int = 10,
    in_channels: int = 3,
    depth: int = 28,
    widen_factor: int = 10,
    drop_rate: float = 0.0,
    sub_block1: bool = False,
    bias_last: bool = True,
    normalized_head: bool = False,
    per_image_standardize: bool = False,
) -> nn.Module:
    return WideResNet(depth, widen_factor, num_classes, in_channels, drop_rate, sub_block1,
                      bias_last, normalized_head, per_image_standardize)


@register_model("wide_resnet28_10")
def wide_resnet28_10(num_classes: int = 10, in_channels: int = 3, sub_block1: bool = False
                     ) -> nn.Module:
    return WideResNet(28, 10, num_classes, in_channels, sub_block1=sub_block1)


@register_model("wide_resnet34_10")
def wide_resnet34_10(num_classes: int = 10, in_channels: int = 3, sub_block1: bool = False
                     ) -> nn.Module:
    return WideResNet(34, 10, num_classes, in_channels, sub_block1=sub_block1)
