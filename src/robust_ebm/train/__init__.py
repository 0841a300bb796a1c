"""Training: the loop, its configuration, callbacks, crash-safe state, energy tracking,
torchrun support."""

from .callbacks import (
    Callback,
    Checkpoints,
    EnergyTracking,
    Evaluation,
    Run,
    TensorBoard,
    default_callbacks,
    eval_attack,
)
from .config import EvalConfig
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
    "Callback",
    "Checkpoints",
    "EnergyTracking",
    "EvalConfig",
    "Evaluation",
    "Run",
    "TensorBoard",
    "TrainConfig",
    "default_callbacks",
    "eval_attack",
    "make_optimizer",
    "make_scheduler",
    "mixed_precision",
    "train",
]
