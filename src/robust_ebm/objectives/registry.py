"""Registry of training objectives."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import UserError

T = TypeVar("T")
_REGISTRY: dict[str, type] = {}


def register_objective(name: str) -> Callable[[type[T]], type[T]]:
    def deco(cls: type[T]) -> type[T]:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return deco


def list_objectives() -> list[str]:
    return sorted(_REGISTRY)


def make_objective(name: str, **hyperparameters: Any) -> Any:
    """Build a registered objective; unknown names or hyperparameters raise UserError."""
    if name not in _REGISTRY:
        raise UserError(f"unknown objective {name!r}; choose one of: {', '.join(list_objectives())}")
    cls = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(hyperparameters) - fields)
    if unknown:
        raise UserError(
            f"objective {name!r} has no hyperparameter(s) {unknown}; it takes {sorted(fields)}"
        )
    return cls(**hyperparameters)
