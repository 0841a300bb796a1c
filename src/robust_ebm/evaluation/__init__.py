"""Robust evaluation: attack cascades and gradient-masking sanity checks."""

from .robustness import AttackRow, RobustnessReport, as_tensors, evaluate_robustness, predict
from .sanity import SanityCheck, sanity_checks, zero_gradient_share

__all__ = [
    "AttackRow",
    "RobustnessReport",
    "SanityCheck",
    "as_tensors",
    "evaluate_robustness",
    "predict",
    "sanity_checks",
    "zero_gradient_share",
]
