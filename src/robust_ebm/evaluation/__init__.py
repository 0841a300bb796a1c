"""Robust evaluation: attack cascades and gradient-masking sanity checks."""

from .merge import merge_attack_runs
from .robustness import AttackRow, RobustnessReport, as_tensors, evaluate_robustness, predict
from .sanity import SanityCheck, sanity_checks, zero_gradient_share

__all__ = [
    "AttackRow",
    "RobustnessReport",
    "SanityCheck",
    "as_tensors",
    "evaluate_robustness",
    "merge_attack_runs",
    "predict",
    "sanity_checks",
    "zero_gradient_share",
]
