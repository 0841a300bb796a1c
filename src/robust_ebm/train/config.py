"""Run configuration: defaults, TOML files and ``--set section.key=value`` overrides.

A run is described by four sections::

    [data]       dataset, data_dir, val_size, train_subset
    [model]      name, plus architecture keyword arguments (e.g. depth, widen_factor)
    [objective]  name, plus the objective's hyperparameters (eps, step_size, steps, beta, ...)
    [train]      the fields of TrainConfig (epochs, lr, schedule, eval_eps, ...)

Later sources win: defaults < --config file < explicit CLI flags < --set.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from ..errors import UserError
from .loop import TrainConfig

SECTIONS = ("data", "model", "objective", "train")


def default_config() -> dict[str, Any]:
    return {
        "data": {"dataset": "fashion_mnist", "data_dir": None, "val_size": 5000, "train_subset": None},
        "model": {"name": "small_cnn"},
        "objective": {"name": "standard"},
        "train": asdict(TrainConfig()),
    }


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise UserError(f"{p}: unknown section(s) {unknown}; use {list(SECTIONS)}")
    return data


def parse_value(text: str) -> Any:
    """A TOML value (number, bool, string, array), else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_set(cfg: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.key=value`` in place."""
    if "=" not in assignment or "." not in assignment.split("=", 1)[0]:
        raise UserError(f"--set expects section.key=value (e.g. objective.beta=6); got {assignment!r}")
    key, value = assignment.split("=", 1)
    section, name = key.strip().split(".", 1)
    if section not in SECTIONS:
        raise UserError(f"--set {assignment!r}: unknown section {section!r}; use {list(SECTIONS)}")
    cfg[section][name] = parse_value(value.strip())


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for section, values in update.items():
        if not isinstance(values, dict):
            raise UserError(f"config section {section!r} must be a table")
        out.setdefault(section, {}).update(values)
    return out


def train_config(cfg: dict[str, Any]) -> TrainConfig:
    """The [train] section as a validated TrainConfig (unknown keys are an error)."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(cfg["train"]) - known)
    if unknown:
        raise UserError(f"unknown [train] setting(s) {unknown}; known: {sorted(known)}")
    values = dict(cfg["train"])
    if isinstance(values.get("milestones"), list):
        values["milestones"] = tuple(values["milestones"])
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise UserError(f"bad [train] setting: {exc}") from None
