"""One name -> object registry for every named thing (timm-style).

Models, attacks, objectives, losses, SGLD energies, sampler initialisations, dataset formats
and the dataset catalog each keep one :class:`Registry`. An entry may carry metadata flags
given at registration (``@ATTACKS.register("ta_square", reference=True)``); code asks for
``registry.names(reference=True)`` instead of relying on name prefixes or special cases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")
_MISSING: Any = object()


class Registry(Generic[T]):
    """``@registry.register("name", **flags)`` on a builder; ``registry.get("name")`` returns it.

    Unknown names raise a :class:`UserError` that lists the registered ones. A registry reads
    like a mapping (``name in r``, ``r[name]``, ``r.items()``, iteration in registration order).

    Args:
        kind: what the entries are, for messages ("attack").
        hint: appended to the unknown-name message (e.g. another accepted form of input).
    """

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` with metadata ``meta``."""

        def deco(obj: T) -> T:
            return self.add(name, obj, **meta)

        return deco

    def add(self, name: str, obj: T, **meta: Any) -> T:
        """Register ``obj`` under ``name`` (ValueError when the name is taken); returns obj."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = obj
        self._meta[name] = dict(meta)
        return obj

    def names(
        self, where: Callable[[Mapping[str, Any]], bool] | None = None, **flags: Any
    ) -> list[str]:
        """Sorted names whose metadata has every ``flags`` value (a missing flag is None) and
        satisfies ``where(metadata)`` if given."""
        out = []
        for name, meta in self._meta.items():
            if any(meta.get(k) != v for k, v in flags.items()):
                continue
            if where is None or where(MappingProxyType(meta)):
                out.append(name)
        return sorted(out)

    def meta(self, name: str) -> Mapping[str, Any]:
        """The metadata registered with ``name`` (read-only)."""
        self.get(name)
        return MappingProxyType(self._meta[name])

    def get(self, name: str, default: Any = _MISSING) -> T:
        """The entry called ``name``; unknown: ``default`` if given (as ``dict.get``), else a
        UserError listing the registered names."""
        if name not in self._entries:
            if default is not _MISSING:
                return default
            hint = f" {self.hint}" if self.hint else ""
            raise UserError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}{hint}"
            )
        return self._entries[name]

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, obj: T) -> None:
        """Replace (or add) an entry, keeping its metadata: for tests that patch an entry."""
        self._entries[name] = obj
        self._meta.setdefault(name, {})

    def __delitem__(self, name: str) -> None:
        del self._entries[name]
        del self._meta[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
