"""Adversarial attacks: one gradient engine, pluggable per-sample losses, a registry.

>>> from robust_ebm.attacks import make_attack
>>> attack = make_attack("pgd", eps=8 / 255, steps=10)
>>> x_adv = attack(model, x, y)  # doctest: +SKIP

See ``docs/attacks.md`` for the conventions and how to add an attack.
"""

from .apgd import APGD
from .core import frozen_eval
from .geometry import L2, Linf, get_geometry
from .pgd import PGD
from .reference import AutoAttack, TorchAttacks
from .registry import REFERENCE_ATTACKS, list_attacks, make_attack, register_attack

__all__ = [
    "APGD",
    "L2",
    "PGD",
    "REFERENCE_ATTACKS",
    "AutoAttack",
    "Linf",
    "TorchAttacks",
    "frozen_eval",
    "get_geometry",
    "list_attacks",
    "make_attack",
    "register_attack",
]
