"""Shared checks of user-given values: one place for names, types, ranges and tensors.

Every check raises :class:`~robust_ebm.errors.UserError` with one line that names the setting,
what was wrong and what is expected, so the CLI can print it as is (exit code 2). The TOML
schema of :mod:`robust_ebm.train.config`, the CLI's argument types and the frozen dataclasses of
the public API (attacks, samplers, the detector) all use these, so a value is refused the same
way wherever it enters (see docs/reliability.md).
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .errors import UserError

__all__ = [
    "check_bool",
    "check_choice",
    "check_images",
    "check_labels",
    "check_number",
    "check_typed",
    "closest",
    "parse_floats",
    "parse_names",
    "unknown_key",
]


def closest(name: str, known: Iterable[str]) -> str:
    """'; did you mean X?' for the nearest known name (difflib), else ''."""
    hits = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {hits[0]!r}?" if hits else ""


def unknown_key(where: str, name: str, known: Iterable[str]) -> UserError:
    known = sorted(known)
    return UserError(f"unknown {where} setting {name!r}{closest(name, known)} (known: "
                     f"{', '.join(known)})")


def check_number(
    name: str, value: Any, *, integer: bool = False, low: float | None = None,
    high: float | None = None, low_open: bool = False, high_open: bool = False,
) -> Any:
    """``value`` as int (``integer``) or float, finite and in [low, high] (open ends on request).

    Booleans and strings are refused rather than converted (``epochs = 1.5``, ``"abc"``,
    ``true`` all fail); an integral float is refused where a whole number is expected.
    """
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} must be {kind}; got {value!r} ({type(value).__name__})")
    if integer and not isinstance(value, int):
        raise UserError(f"{name} must be a whole number; got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number; got {value!r}")
    lo_bad = low is not None and (value <= low if low_open else value < low)
    hi_bad = high is not None and (value >= high if high_open else value > high)
    if lo_bad or hi_bad:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise UserError(f"{name} must be in {left}{lo}, {hi}{right}; got {value!r}")
    return int(value) if integer else float(value)


def check_bool(name: str, value: Any) -> bool:
    """A real boolean: ``"false"``, ``"no"``, 0 and 1 are refused (write true or false)."""
    if not isinstance(value, bool):
        raise UserError(f"{name} must be true or false (unquoted); got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}"
                        f"{closest(str(value), choices)}")
    return value


def check_typed(name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a type annotation (int, float, bool, str, Optional, tuple[...]).

    Numbers must also be finite. Anything the annotation does not constrain is returned as is.
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return check_typed(name, value, inner[0])
        return value
    if annotation is bool:
        return check_bool(name, value)
    if annotation is int:
        return check_number(name, value, integer=True)
    if annotation is float:
        return check_number(name, value)
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"{name} must be a string; got {value!r}")
        return value
    if origin is tuple or annotation is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{name} must be a list; got {value!r}")
        args = typing.get_args(annotation)
        item = args[0] if args else Any
        return tuple(check_typed(f"{name}[{i}]", v, item) for i, v in enumerate(value))
    return value


def check_labels(y: Any, num_classes: int, name: str = "y") -> Tensor:
    """Integer labels (N,) in [0, num_classes); float labels are refused, not truncated."""
    if not isinstance(y, Tensor):
        raise UserError(f"{name} must be a torch tensor of class indices; got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise UserError(f"{name} must hold integer class indices; got dtype {y.dtype} "
                        "(use y.long() only if the values are whole numbers)")
    if y.ndim != 1:
        raise UserError(f"{name} must have shape (N,); got {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise UserError(f"{name} must be in [0, {num_classes}); got values "
                        f"{int(y.min())}..{int(y.max())}")
    return y


def check_images(x: Any, name: str = "x", channels: int | None = None) -> Tensor:
    """Float images (N, C, H, W) in [0, 1], finite; uint8 is refused with the conversion."""
    if not isinstance(x, Tensor):
        raise UserError(f"{name} must be a torch tensor; got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise UserError(f"{name} must be float images in [0, 1]; got dtype {x.dtype} "
                        "(convert uint8 with x.float() / 255)")
    if x.ndim != 4:
        raise UserError(f"{name} must have shape (N, C, H, W); got {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise UserError(f"{name} has {x.shape[1]} channels; the model takes {channels}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise UserError(f"{name} holds NaN or infinite values")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise UserError(f"{name} must be in [0, 1]; got values in [{float(x.min()):.3g}, "
                        f"{float(x.max()):.3g}]")
    return x


def parse_names(text: str, flag: str) -> list[str]:
    """A comma-separated list of names; UserError naming ``flag`` when it is empty."""
    names = [a.strip() for a in str(text).split(",") if a.strip()]
    if not names:
        raise UserError(f"{flag} is empty; give a comma-separated list")
    return names


def parse_floats(text: str, flag: str) -> list[float]:
    """A comma-separated list of finite numbers; UserError naming ``flag`` otherwise."""
    try:
        vals = [float(v) for v in parse_names(text, flag)]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated numbers; got {text!r}") from None
    if any(not math.isfinite(v) for v in vals):
        raise UserError(f"{flag} must be finite numbers; got {text!r}")
    return vals
