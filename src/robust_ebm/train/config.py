"""Run configuration: defaults, TOML files and ``--set section.key=value`` overrides.

A run is described by four sections::

    [data]       dataset, data_dir, val_size, train_subset
    [model]      name, normalize, plus architecture keyword arguments (e.g. depth, widen_factor)
    [objective]  name, plus the objective's hyperparameters (eps, step_size, steps, beta, ...)
    [train]      the fields of TrainConfig (epochs, lr, schedule, eval_eps, ...)

Later sources win: defaults < --config file < explicit CLI flags < --set.

The ``[train]`` section holds two groups: the loop's own settings (:class:`TrainConfig`:
optimiser, schedule, seed, precision, data order) and what the callbacks watch each epoch
(:class:`EvalConfig`: the evaluation attack, subset sizes, TensorBoard). Users write one flat
``[train]`` table; :func:`train_config` and :func:`eval_config` split it.
"""

from __future__ import annotations

import copy
import inspect
import math
import tomllib
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..validate import check_choice, check_number, check_typed, closest, unknown_key

SECTIONS = ("data", "model", "objective", "train")
SCHEDULES = ("onecycle", "multistep", "cosine", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
EVAL_NORMS = ("linf", "l2")


def _raise_failed(checks: list[tuple[bool, str]]) -> None:
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)


@dataclass(frozen=True)
class TrainConfig:
    """The loop's settings: optimiser, LR schedule, seed, precision and data order.

    Defaults follow the WEAT recipe (Mirza et al. 2024, arXiv 2407.06315): SGD momentum 0.9,
    weight decay 5e-4, one-cycle LR with ``pct_start`` 0.25; ``lr`` is the peak LR.

    GPU options: ``precision`` 'bf16' or 'fp16' runs each training step (inner attack
    included) under autocast, with the logits cast back to float32 before any loss or energy
    is computed; 'fp16' needs CUDA and uses dynamic loss scaling. ``channels_last`` stores
    weights and batches in NHWC memory order. ``compile`` runs the training steps (inner attack
    included) through ``torch.compile`` (:func:`robust_ebm.fastpath.wrap_model`; fp32 or bf16;
    the per-epoch evaluation stays uncompiled). ``host_resident`` keeps the training images in
    host memory (page-locked on CUDA) and copies each batch to the device asynchronously,
    instead of moving the whole set to the device once: for training sets larger than the
    device's memory; the batches, and so the run, are the same bit for bit
    (:class:`robust_ebm.data.TensorLoader`). ``save_every`` also writes the resumable state
    every N optimizer steps (0: at the end of each epoch only).

    Published one-cycle (PyTorch's OneCycleLR defaults, docs/fidelity.md): ``anneal='cos'``
    and ``cycle_momentum=True`` (momentum 0.95 -> 0.85 -> 0.95, overriding ``momentum``); ours
    anneals linearly at fixed momentum.
    """

    epochs: int = 5
    batch_size: int = 128  # global batch; each of W processes takes batch_size / W
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    pct_start: float = 0.25
    anneal: str = "linear"  # one-cycle annealing: 'linear' or 'cos' (published)
    cycle_momentum: bool = False  # one-cycle momentum 0.95 -> 0.85 -> 0.95 (published)
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of training, for "multistep"
    gamma: float = 0.1  # multistep decay factor
    crop_padding: int = 0
    flip: bool = False
    seed: int = 0
    save_every: int = 0  # also save the training state every N steps (0: each epoch only)
    deterministic: bool = False
    limit_train_batches: int | None = None
    precision: str = "fp32"  # 'fp32', 'bf16' or 'fp16' (CUDA only)
    channels_last: bool = False
    compile: bool = False  # torch.compile the model for the training steps (fp32 or bf16)
    host_resident: bool = False  # training data in (pinned) host memory, batches copied over

    def __post_init__(self) -> None:
        _raise_failed([
            (self.epochs >= 1, f"epochs must be >= 1; got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1; got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0; got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1); got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0; got {self.weight_decay}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}; got {self.schedule!r}"),
            (0 < self.pct_start < 1, f"pct_start must be in (0, 1); got {self.pct_start}"),
            (self.anneal in ("linear", "cos"), f"anneal must be 'linear' or 'cos'; got {self.anneal!r}"),
            (self.crop_padding >= 0, f"crop_padding must be >= 0; got {self.crop_padding}"),
            (self.save_every >= 0, f"save_every must be >= 0; got {self.save_every}"),
            (self.gamma > 0 and math.isfinite(self.gamma), f"gamma must be > 0; got {self.gamma}"),
            (all(0 < m < 1 for m in self.milestones),
             f"milestones must be fractions in (0, 1); got {self.milestones}"),
            (self.limit_train_batches is None or self.limit_train_batches >= 1,
             f"limit_train_batches must be >= 1; got {self.limit_train_batches}"),
            (self.precision in PRECISIONS,
             f"precision must be one of {PRECISIONS}; got {self.precision!r}"),
        ])


@dataclass(frozen=True)
class EvalConfig:
    """What the callbacks watch each epoch (:mod:`robust_ebm.train.callbacks`).

    The evaluation attack is PGD-``eval_steps`` on CE at ``eval_eps`` with step
    ``eval_step_size`` (None: 2.5 * eps / steps), all in pixel units of [0,1] images;
    ``eval_eps=None`` evaluates clean accuracy only. ``eval_n`` validation/test samples and
    ``energy_n`` fixed training samples are evaluated, ``eval_batch_size`` at a time, always
    in float32. ``tensorboard`` also writes the per-epoch record to ``<out>/tensorboard``.
    ``eval_clip_start=False`` starts the evaluation PGD unclipped, as the published evaluation
    does (docs/fidelity.md). ``eval_norm`` is its threat model, 'linf' or 'l2'; None: the
    training objective's ``norm`` (set by :func:`robust_ebm.train.run.run_training`; 'linf'
    for objectives without one).
    """

    eval_eps: float | None = None
    eval_step_size: float | None = None  # None: 2.5 * eps / steps
    eval_steps: int = 10
    eval_clip_start: bool = True
    eval_norm: str | None = None  # None: the objective's norm
    eval_n: int = 1000  # validation/test samples evaluated each epoch
    energy_n: int = 500  # fixed training samples tracked each epoch
    eval_batch_size: int = 500
    tensorboard: bool = False

    def __post_init__(self) -> None:
        _raise_failed([
            (self.eval_eps is None or self.eval_eps >= 0, f"eval_eps must be >= 0; got {self.eval_eps}"),
            (self.eval_step_size is None or self.eval_step_size >= 0,
             f"eval_step_size must be >= 0; got {self.eval_step_size}"),
            (self.eval_steps >= 1, f"eval_steps must be >= 1; got {self.eval_steps}"),
            (self.eval_norm in (None, *EVAL_NORMS),
             f"eval_norm must be one of {', '.join(EVAL_NORMS)}; got {self.eval_norm!r}"),
            (self.eval_n >= 1 and self.energy_n >= 0, "eval_n must be >= 1 and energy_n >= 0"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1; got {self.eval_batch_size}"),
        ])


def default_config() -> dict[str, Any]:
    return {
        "data": {"dataset": "fashion_mnist", "data_dir": None, "val_size": 5000, "train_subset": None},
        "model": {"name": "small_cnn"},  # normalize: true unless set (see model_spec)
        "objective": {"name": "standard"},
        "train": {**asdict(TrainConfig()), **asdict(EvalConfig())},
    }


def model_spec(cfg: dict[str, Any]) -> tuple[str, bool, dict[str, Any]]:
    """The [model] section as (name, normalize, architecture keyword arguments).

    ``normalize`` (default true) puts the training set's per-channel mean/std inside the model;
    false feeds the network raw [0, 1] inputs, as the published ECCV 2024 training code
    (Mirza et al., arXiv 2407.06315; docs/fidelity.md).
    """
    section = dict(cfg["model"])
    name = section.pop("name")
    normalize = section.pop("normalize", True)
    if not isinstance(normalize, bool):
        raise UserError(f"model.normalize must be true or false; got {normalize!r}")
    return name, normalize, section


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: not valid TOML ({exc})") from None
    except RecursionError:
        raise UserError(f"{p}: TOML nested too deeply; use flat [section] tables") from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise UserError(f"{p}: unknown section {unknown[0]!r}{closest(unknown[0], SECTIONS)} "
                        f"(sections: {', '.join(SECTIONS)})")
    for section, values in data.items():
        if not isinstance(values, dict):
            raise UserError(f"{p}: {section} must be a [{section}] table; got {values!r}")
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
        raise UserError(f"--set {assignment!r}: unknown section {section!r}"
                        f"{closest(section, SECTIONS)} (sections: {', '.join(SECTIONS)})")
    cfg[section][name] = parse_value(value.strip())


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for section, values in update.items():
        if not isinstance(values, dict):
            raise UserError(f"config section {section!r} must be a table")
        out.setdefault(section, {}).update(values)
    return out


def train_config(cfg: dict[str, Any]) -> TrainConfig:
    """The loop's part of the [train] section as a validated TrainConfig (unknown keys are an
    error)."""
    values = _train_section(cfg, TrainConfig)
    if isinstance(values.get("milestones"), list):
        values["milestones"] = tuple(values["milestones"])
    return _build(TrainConfig, values)


def eval_config(cfg: dict[str, Any]) -> EvalConfig:
    """The callbacks' part of the [train] section as a validated EvalConfig."""
    return _build(EvalConfig, _train_section(cfg, EvalConfig))


def _train_section(cfg: dict[str, Any], cls: type) -> dict[str, Any]:
    """The keys of [train] that are fields of ``cls``; a key of neither class is an error."""
    known = {f.name for f in fields(TrainConfig)} | {f.name for f in fields(EvalConfig)}
    unknown = sorted(set(cfg["train"]) - known)
    if unknown:
        raise UserError(f"unknown [train] setting(s) {unknown}; known: {sorted(known)}")
    mine = {f.name for f in fields(cls)}
    return {k: v for k, v in cfg["train"].items() if k in mine}


def _build(cls: type, values: dict[str, Any]) -> Any:
    try:
        return cls(**values)
    except TypeError as exc:
        raise UserError(f"bad [train] setting: {exc}") from None


# ---- the one schema: every key of every section, with its type and range -------------------

# Ranges beyond the type: key -> keyword arguments of check_number (the dataclasses'
# __post_init__ checks the rest, e.g. choices and cross-field rules).
_DATA_TYPES: dict[str, Any] = {"dataset": str, "data_dir": str | None, "val_size": int,
                               "train_subset": int | None}
_RANGES: dict[str, dict[str, Any]] = {
    "data.val_size": {"low": 0}, "data.train_subset": {"low": 1},
    "train.epochs": {"low": 1}, "train.seed": {"low": 0, "high": 2**32 - 1}, "train.batch_size": {"low": 1},
    "train.lr": {"low": 0, "low_open": True}, "train.momentum": {"low": 0, "high": 1, "high_open": True},
    "train.weight_decay": {"low": 0}, "train.pct_start": {"low": 0, "high": 1, "low_open": True,
                                                          "high_open": True},
    "train.gamma": {"low": 0, "low_open": True}, "train.crop_padding": {"low": 0},
    "train.save_every": {"low": 0}, "train.limit_train_batches": {"low": 1},
    "train.eval_eps": {"low": 0}, "train.eval_step_size": {"low": 0},
    "train.eval_steps": {"low": 1}, "train.eval_n": {"low": 1}, "train.energy_n": {"low": 0},
    "train.eval_batch_size": {"low": 1},
}
_CHOICES = {"train.schedule": SCHEDULES, "train.precision": PRECISIONS,
            "train.eval_norm": EVAL_NORMS}


def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def schema(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{section: {key: type annotation}}`` for the model and objective named in ``cfg``."""
    from ..models.registry import MODELS
    from ..objectives.registry import OBJECTIVES

    train_types = {f.name: _hints(TrainConfig)[f.name] for f in fields(TrainConfig)}
    train_types.update({f.name: _hints(EvalConfig)[f.name] for f in fields(EvalConfig)})
    out: dict[str, dict[str, Any]] = {"data": dict(_DATA_TYPES), "train": train_types,
                                      "model": {"name": str, "normalize": bool},
                                      "objective": {"name": str}}
    model = cfg.get("model", {}).get("name")
    if isinstance(model, str) and model in MODELS.names():
        build = MODELS.get(model)
        hints = typing.get_type_hints(build)
        for p in inspect.signature(build).parameters.values():
            if p.name not in ("num_classes", "in_channels") and p.kind is p.POSITIONAL_OR_KEYWORD:
                out["model"][p.name] = hints.get(p.name, Any)
    objective = cfg.get("objective", {}).get("name")
    if isinstance(objective, str) and objective in OBJECTIVES.names():
        cls = OBJECTIVES.get(objective)
        out["objective"].update({f.name: _hints(cls)[f.name] for f in fields(cls)})
    return out


def validate_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check every key of ``cfg`` for name, type and range against :func:`schema`.

    Raises a UserError naming ``section.key`` (unknown keys with the closest valid one) before
    anything runs; returns ``cfg`` with ints standing in for integral floats nowhere: types are
    exact (``epochs = 1.5``, ``flip = "false"`` and NaN are all refused).
    """
    from ..models import list_models
    from ..objectives import list_objectives

    for section in cfg:
        if section not in SECTIONS:
            raise UserError(f"unknown config section {section!r}{closest(section, SECTIONS)}")
    for section, names in (("model", list_models()), ("objective", list_objectives())):
        name = cfg[section].get("name")
        if not isinstance(name, str) or name not in names:
            raise UserError(f"unknown {section} {name!r} ({section}.name){closest(str(name), names)};"
                            f" choose one of {', '.join(names)}")
    types_ = schema(cfg)
    for section in SECTIONS:
        for key, value in cfg[section].items():
            if key not in types_[section]:
                raise unknown_key(f"[{section}]", key, types_[section])
            name = f"{section}.{key}"
            value = check_typed(name, value, types_[section][key])
            if name in _CHOICES and value is not None:
                check_choice(name, value, _CHOICES[name])
            if value is not None and name in _RANGES:
                check_number(name, value, integer=isinstance(value, int), **_RANGES[name])
            if section == "objective" and isinstance(value, (int, float)) and not isinstance(
                    value, bool):
                check_number(name, value, low=0)
            cfg[section][key] = value
    return cfg
