"""DeepMind WideResNet and PreActResNet (Gowal et al. 2020, arXiv 2010.03593; Rebuffi et al.
2021, arXiv 2103.01946), as shipped in RobustBench for the Gowal, Rebuffi, Rade, Pang, Wang2023,
Xu, Cui2023 and Bartoldson checkpoints.

They differ from the TRADES WideResNet in three ways that change the logits: a strided 3x3
convolution pads only right/bottom (TensorFlow "SAME"), the activation is Swish/SiLU (or ReLU),
and the PreActResNet shortcut is a 3x3 convolution of the un-activated input. Parameter names
match the checkpoints (``init_conv``, ``layer.0.block.0.batchnorm_0``, ``logits``; ``conv_2d``,
``layer_0.0.conv_2d_1``). Normalization is our :class:`~robust_ebm.models.layers.Normalize`
(the originals keep mean/std as non-persistent buffers, so the files do not hold them).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .registry import register_model

ACTIVATIONS = {"swish": nn.SiLU, "silu": nn.SiLU, "relu": nn.ReLU}


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _same_pad(x: Tensor, stride: int) -> Tensor:
    # TensorFlow "SAME" for a 3x3 kernel: symmetric at stride 1, right/bottom only at stride 2.
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


class _Block(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = act()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = act()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False) \
            if self.has_shortcut else None
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu_0(self.batchnorm_0(x))
        # with a projection shortcut the block (and the projection) sees the activated input
        residual = self.shortcut(act) if self.shortcut is not None else x
        out = self.conv_0(_same_pad(act, self.stride))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return residual + out


class _BlockGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int,
                 act: type[nn.Module]) -> None:
        super().__init__()
        self.block = nn.Sequential(*[
            _Block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, act)
            for i in range(n)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """WRN-depth-width; depth = 6n + 4 (28, 34, 70, 82, 94, 106 in the zoo)."""

    def __init__(self, depth: int = 28, width: int = 10, activation: str = "swish",
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise UserError(f"dm_wide_resnet depth must be 6n+4 (e.g. 28, 70); got {depth}")
        act = _activation(activation)
        n = (depth - 4) // 6
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(
            _BlockGroup(n, ch[0], ch[1], 1, act),
            _BlockGroup(n, ch[1], ch[2], 2, act),
            _BlockGroup(n, ch[2], ch[3], 2, act),
        )
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = act()
        self.logits = nn.Linear(ch[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.batchnorm(self.layer(self.init_conv(x))))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))  # (N, K)


class _PreActBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int,
                 act: type[nn.Module]) -> None:
        super().__init__()
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = act()
        self.conv_2d_1 = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = act()
        self.conv_2d_2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.has_shortcut = stride != 1 or in_planes != out_planes
        if self.has_shortcut:  # a 3x3 convolution of the raw (not activated) input
            self.shortcut = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu_0(self.batchnorm_0(x))
        residual = self.shortcut(_same_pad(x, self.stride)) if self.has_shortcut else x
        out = self.conv_2d_1(_same_pad(out, self.stride))
        out = self.conv_2d_2(self.relu_1(self.batchnorm_1(out)))
        return out + residual


class DMPreActResNet(nn.Module):
    """PreActResNet-18 or -34 of the DeepMind code (Rebuffi/Rade/Gowal R18 checkpoints)."""

    def __init__(self, depth: int = 18, activation: str = "swish", num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
        if depth not in blocks:
            raise UserError(f"dm_preact_resnet depth must be 18 or 34; got {depth}")
        act = _activation(activation)
        self.conv_2d = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        widths, n = (64, 128, 256, 512), blocks[depth]
        in_planes = 64
        for i, (w, k) in enumerate(zip(widths, n, strict=True)):
            layers = [_PreActBlock(in_planes if j == 0 else w, w, (1 if i == 0 else 2) if j == 0
                                   else 1, act) for j in range(k)]
            setattr(self, f"layer_{i}", nn.Sequential(*layers))
            in_planes = w
        self.batchnorm = nn.BatchNorm2d(512)
        self.relu = act()
        self.logits = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_2d(x)
        for i in range(4):
            out = getattr(self, f"layer_{i}")(out)
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))  # (N, K)


@register_model("dm_wide_resnet")
def dm_wide_resnet(num_classes: int = 10, in_channels: int = 3, depth: int = 28,
                   widen_factor: int = 10, activation: str = "swish") -> nn.Module:
    return DMWideResNet(depth, widen_factor, activation, num_classes, in_channels)


@register_model("dm_preact_resnet")
def dm_preact_resnet(num_classes: int = 10, in_channels: int = 3, depth: int = 18,
                     activation: str = "swish") -> nn.Module:
    return DMPreActResNet(depth, activation, num_classes, in_channels)
