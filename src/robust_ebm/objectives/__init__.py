"""Training objectives: ``make_objective(name, **hyperparameters)``.

An objective is a small frozen dataclass called as ``objective(model, x, y)`` that returns
``(loss, logs)``: a scalar loss to minimise and a dict of detached per-batch scalars.
"""

from .adversarial import MART, PGDAT, TRADES, WEATAdv, WEATNat
from .registry import list_objectives, make_objective, register_objective
from .standard import Standard

__all__ = ["make_objective", "list_objectives", "register_objective", "Standard", "PGDAT", "TRADES", "MART", "WEATAdv", "WEATNat"]
