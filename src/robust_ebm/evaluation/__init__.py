"""Robust evaluation: attack cascades and gradient-masking sanity checks."""

from .attack_run import build_attacks, write_attack_run
from .batched import BatchedLogits, batched_logits, map_batches
from .merge import merge_attack_runs
from .robustness import AttackRow, RobustnessReport, as_tensors, evaluate_robustness, predict
from .sanity import SanityCheck, sanity_checks, zero_gradient_share
from .sharded import merge_reports, sharded_energy, sharded_generation, sharded_robustness

__all__ = [
    "AttackRow",
    "BatchedLogits",
    "RobustnessReport",
    "SanityCheck",
    "as_tensors",
    "batched_logits",
    "build_attacks",
    "evaluate_robustness",
    "map_batches",
    "merge_attack_runs",
    "merge_reports",
    "predict",
    "sanity_checks",
    "sharded_energy",
    "sharded_generation",
    "sharded_robustness",
    "write_attack_run",
    "zero_gradient_share",
]
