"""Training: the loop, its configuration, crash-safe state, energy tracking, torchrun support."""

from .loop import SCHEDULES, TrainConfig, make_optimizer, make_scheduler, train

__all__ = ["SCHEDULES", "TrainConfig", "make_optimizer", "make_scheduler", "train"]
