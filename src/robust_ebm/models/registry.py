"""Model registry: ``@register_model("name")`` and ``create_model(name, ...)`` (timm-style)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..errors import UserError
from ..registry import Registry
from .layers import Classifier

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder ``fn(num_classes, in_channels, **kwargs) -> nn.Module`` (logits out)."""
    return MODELS.register(name)


def list_models() -> list[str]:
    return MODELS.names()


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> Classifier:
    """Build a registered network behind a normalization layer.

    The result takes images in [0, 1], shape (N, in_channels, H, W), and returns logits (N, K).
    ``mean``/``std`` (per channel, pixel units of [0,1] images) default to 0 and 1 (identity).
    Extra keyword arguments go to the architecture (e.g. ``depth``, ``widen_factor``).
    """
    build = MODELS.get(name)
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1; got {num_classes}")
    if in_channels < 1:
        raise UserError(f"in_channels must be >= 1; got {in_channels}")
    mean = [0.0] * in_channels if mean is None else [float(m) for m in mean]
    std = [1.0] * in_channels if std is None else [float(s) for s in std]
    if len(mean) != in_channels or len(std) != in_channels:
        raise UserError(
            f"mean and std need one value per input channel ({in_channels}); "
            f"got {len(mean)} and {len(std)}"
        )
    if any(s <= 0 for s in std):
        raise UserError(f"std values must be > 0; got {std}")
    net = build(num_classes=num_classes, in_channels=in_channels, **kwargs)
    arch = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "mean": mean,
        "std": std,
        "kwargs": dict(kwargs),
    }
    return Classifier(net, mean, std, arch)
