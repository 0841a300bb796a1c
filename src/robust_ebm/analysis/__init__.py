"""Energy analysis of a classifier under attack (Mirza et al., ECCV 2024, arXiv 2407.06315).

>>> from robust_ebm.analysis import analyze_energy, default_attacks
>>> attacks, notes = default_attacks(eps=0.1, names=("pgd", "noise"))
>>> result = analyze_energy(model, x, y, attacks)          # doctest: +SKIP
>>> result.report("pgd")["dE_x"]["mean"]                   # doctest: +SKIP
"""

from .energy_analysis import (
    DEFAULT_ATTACKS,
    TRACKED,
    EnergyAnalysis,
    RandomNoise,
    analyze_energy,
    default_attacks,
    sweep_pgd,
)
from .timing import TimedModel

__all__ = [
    "DEFAULT_ATTACKS",
    "TRACKED",
    "EnergyAnalysis",
    "RandomNoise",
    "TimedModel",
    "analyze_energy",
    "default_attacks",
    "sweep_pgd",
]
