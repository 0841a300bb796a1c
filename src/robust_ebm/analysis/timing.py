"""Time a model's forward and backward passes from the outside (for overhead benchmarks).

``TimedModel(model)`` behaves like ``model`` (same parameters, same modes) and adds up the wall
time spent in its forward calls and in the backward passes through it. A backward pass is timed
from the moment the gradient of the output is ready (a hook on the logits) to the moment the
gradient of the input is ready (a hook on the input), so it needs an input that requires grad,
which is how every attack differentiates. Everything else (projection, bookkeeping, the
attack's own loss, Python) is overhead.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

__all__ = ["TimedModel"]


class TimedModel(nn.Module):
    """Wraps ``model``; ``forward_seconds``, ``backward_seconds``, ``calls`` accumulate."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.forward_seconds = 0.0
        self.backward_seconds = 0.0
        self.calls = 0
        self.backward_calls = 0

    def forward(self, x: Tensor) -> Tensor:
        t0 = time.perf_counter()
        out = self.model(x)
        self.forward_seconds += time.perf_counter() - t0
        self.calls += 1
        if torch.is_grad_enabled() and x.requires_grad and out.requires_grad:
            start: list[float] = []

            def on_out(grad: Tensor) -> None:
                start.append(time.perf_counter())

            def on_in(grad: Tensor) -> None:
                if start:
                    self.backward_seconds += time.perf_counter() - start.pop()
                    self.backward_calls += 1

            out.register_hook(on_out)
            x.register_hook(on_in)
        return out

    @property
    def model_seconds(self) -> float:
        return self.forward_seconds + self.backward_seconds
