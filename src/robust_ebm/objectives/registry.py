"""Registry of training objectives."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import UserError
from ..registry import Registry

T = TypeVar("T")
OBJECTIVES: Registry[type] = Registry("objective")


def register_objective(name: str) -> Callable[[type[T]], type[T]]:
    return OBJECTIVES.register(name)


def list_objectives() -> list[str]:
    return OBJECTIVES.names()


def make_objective(name: str, **hyperparameters: Any) -> Any:
    """Build a registered objective; unknown names or hyperparameters raise UserError."""
    cls = OBJECTIVES.get(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(hyperparameters) - fields)
    if unknown:
        raise UserError(
            f"objective {name!r} has no hyperparameter(s) {unknown}; it takes {sorted(fields)}"
        )
    return cls(**hyperparameters)
