"""Training: the loop, its configuration, schedules."""

from .loop import SCHEDULES, TrainConfig, make_optimizer, make_scheduler, train

__all__ = ["SCHEDULES", "TrainConfig", "make_optimizer", "make_scheduler", "train"]
