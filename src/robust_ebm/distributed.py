"""Helpers for models under DistributedDataParallel that any layer may use.

Kept outside :mod:`robust_ebm.train` so that objectives and attacks need not import the
training package (:mod:`robust_ebm.train.dist` re-exports them).
"""

from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under a DDP wrapper (attacks run on it, never on the wrapper)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


__all__ = ["unwrap"]
