"""Training: the loop, its configuration, crash-safe state, energy tracking, torchrun support."""

from .loop import (
    PRECISIONS,
    SCHEDULES,
    TrainConfig,
    make_optimizer,
    make_scheduler,
    mixed_precision,
    train,
)

__all__ = [
    "PRECISIONS",
    "SCHEDULES",
    "TrainConfig",
    "make_optimizer",
    "make_scheduler",
    "mixed_precision",
    "train",
]
