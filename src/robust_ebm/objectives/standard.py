"""Standard training: cross-entropy on natural inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_objective


@register_objective("standard")
@dataclass(frozen=True)
class Standard:
    """CE(f(x), y) = E(x, y) - E(x), averaged over the batch."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model(x)  # (N, K)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc.detach()}
