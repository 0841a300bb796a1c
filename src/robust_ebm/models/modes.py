"""Running a model in a temporary mode and restoring it exactly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with every parameter's requires_grad off; restore both exactly.

    Restores each submodule's own ``training`` flag (not just the root's), so a model that was
    half in train mode comes back the same. Frozen parameters let autograd skip weight
    gradients when only d(loss)/dx is needed (attacks, samplers).
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)
