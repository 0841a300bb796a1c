"""Reference attacks from other libraries behind our conventions (oracles and breadth).

* AutoAttack through ``pyautoattack`` (Croce & Hein 2020, arXiv 2003.01690); import name
  ``pyautoattack`` (older forks: ``autoattack``). Runs on the input's device ('cpu' here).
* torchattacks (Kim 2020, arXiv 2010.01950) for FAB, Square, DeepFool, CW, ...

Both are optional and imported lazily; when missing, a UserError names the pip command.
Install them WITHOUT dependencies (torchattacks' metadata pulls torchvision, which neither
needs at import): ``pip install --no-deps torchattacks pyautoattack``; they need scipy and
numpy, which robust-ebm already depends on. torchattacks 3.5.1 imports no torchvision.

Conventions added by the adapter: model in eval mode with frozen parameters (restored after);
the global RNG is forked and seeded with ``seed`` for the call, so same seed gives the same
result and the caller's RNG stream is untouched; the result is cast to the input's dtype and
projected onto the eps-ball and [0, 1] (DeepFool and CW are minimal-perturbation attacks, so
this makes them attacks at budget eps). Not batch-consistent: these libraries draw their
randomness for the whole batch.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..errors import UserError
from . import core
from .geometry import get_geometry

_PIP = "pip install --no-deps torchattacks pyautoattack  (then: pip install scipy numpy)"


def import_torchattacks() -> ModuleType:
    try:
        return importlib.import_module("torchattacks")
    except ImportError as exc:
        raise UserError(f"torchattacks is not installed ({exc}); run: {_PIP}") from exc


def import_autoattack() -> ModuleType:
    for name in ("pyautoattack", "autoattack"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise UserError(f"pyautoattack is not installed; run: {_PIP}")


def _norm_name(norm: str) -> str:
    return "Linf" if get_geometry(norm).name == "linf" else "L2"


def _seeded(seed: int | None) -> Any:
    """Fork the global CPU (and current CUDA) RNG and seed it; restored on exit."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    ctx = torch.random.fork_rng(devices=devices)

    class _Ctx:
        def __enter__(self) -> None:
            ctx.__enter__()
            if seed is not None:
                torch.manual_seed(int(seed))

        def __exit__(self, *exc: Any) -> None:
            ctx.__exit__(*exc)

    return _Ctx()


def _finish(x: Tensor, x_adv: Tensor, norm: str, eps: float) -> Tensor:
    geometry = get_geometry(norm)
    x_adv = x_adv.detach().to(device=x.device, dtype=x.dtype)
    return geometry.project(x, x_adv, core.per_sample_eps(eps, x))


def _check_model(model: nn.Module, x: Tensor, y: Tensor) -> int:
    with torch.no_grad():
        logits = model(x[:1]) if x.shape[0] else None
    if logits is None:
        return 0
    core.check_logits(logits, 1)
    core.check_labels(y, logits.shape[1])
    return int(logits.shape[1])


@dataclass(frozen=True)
class TorchAttacks:
    """Any torchattacks attack class by name: ``TorchAttacks(attack="Square", eps=8/255)``.

    ``eps`` and ``norm`` are passed when the class accepts them; other keyword arguments go in
    ``kwargs`` (e.g. ``{"n_queries": 1000}``). The result is projected onto the eps-ball.
    """

    attack: str = "PGD"
    eps: float = 8 / 255
    norm: str = "linf"
    kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int | None = 0

    def __post_init__(self) -> None:
        core.check_budget(self.eps)
        get_geometry(self.norm)

    def __hash__(self) -> int:
        return hash((self.attack, self.eps, self.norm, tuple(sorted(self.kwargs.items()))))

    def build(self, model: nn.Module, num_classes: int) -> Any:
        ta = import_torchattacks()
        cls = getattr(ta, self.attack, None)
        if cls is None or not inspect.isclass(cls):
            names = [n for n in getattr(ta, "__all__", []) if n[:1].isupper()]
            raise UserError(
                f"torchattacks has no attack {self.attack!r}; choose one of: {', '.join(names)}"
            )
        params = inspect.signature(cls.__init__).parameters
        kw = dict(self.kwargs)
        if "eps" in params:
            kw.setdefault("eps", self.eps)
        if "norm" in params:
            kw.setdefault("norm", _norm_name(self.norm))
        if "n_classes" in params:
            kw.setdefault("n_classes", num_classes)
        if "seed" in params and self.seed is not None:
            kw.setdefault("seed", self.seed)
        if "verbose" in params:
            kw.setdefault("verbose", False)
        bad = sorted(set(kw) - set(params))
        if bad:
            raise UserError(f"torchattacks.{self.attack} takes no argument(s) {', '.join(bad)}")
        return cast(Any, cls)(model, **kw)  # inspect.isclass narrows it to type[object]

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, targets: Tensor | None = None
    ) -> Tensor:
        core.check_inputs(x, y)
        if x.shape[0] == 0:
            return x.detach().clone()
        with core.frozen_eval(model), torch.enable_grad(), _seeded(self.seed):
            xw = x.detach().to(core.work_dtype(model, x))
            k = _check_model(model, xw, y)
            atk = self.build(model, k)
            if targets is not None:
                atk.set_mode_targeted_by_label(quiet=True)
                out = atk(xw, targets.to(x.device).long())
            else:
                out = atk(xw, y.to(x.device).long())
            model.eval()  # torchattacks restores train mode itself; keep ours for the finish
        return _finish(x, out, self.norm, self.eps)


@dataclass(frozen=True)
class AutoAttack:
    """AutoAttack (pyautoattack): version 'standard' = APGD-CE, APGD-T, FAB-T, Square.

    ``attacks`` (with version='custom') picks a subset, e.g. ('apgd-ce', 'apgd-t').
    ``device`` defaults to the input's device ('cpu' on CPU).
    """

    eps: float = 8 / 255
    norm: str = "linf"
    version: str = "standard"
    attacks: tuple[str, ...] | None = None
    batch_size: int = 500
    seed: int | None = 0
    device: str | None = None

    def __post_init__(self) -> None:
        core.check_budget(self.eps)
        get_geometry(self.norm)
        if self.version not in ("standard", "plus", "rand", "custom"):
            raise UserError(f"unknown AutoAttack version {self.version!r}")
        if self.attacks is not None and self.version != "custom":
            raise UserError("AutoAttack: pass version='custom' together with attacks=(...)")

    def build(self, model: nn.Module, device: str) -> Any:
        aa = import_autoattack()
        kw: dict[str, Any] = {
            "eps": self.eps,
            "norm": _norm_name(self.norm),
            "version": self.version,
            "seed": self.seed,
            "device": device,
        }
        if self.attacks is not None:
            kw["attacks"] = list(self.attacks)
        try:
            adversary = aa.AutoAttack(model, **kw)
        except TypeError:  # the original (non-PyPI) signature: attacks_to_run
            kw["attacks_to_run"] = kw.pop("attacks", [])
            adversary = aa.AutoAttack(model, **kw)
        return adversary

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, targets: Tensor | None = None
    ) -> Tensor:
        if targets is not None:
            raise UserError("AutoAttack picks its own targets; do not pass targets=")
        core.check_inputs(x, y)
        if x.shape[0] == 0:
            return x.detach().clone()
        device = self.device or str(x.device)
        logging.getLogger("auto-attack").setLevel(logging.WARNING)
        with core.frozen_eval(model), torch.enable_grad(), _seeded(self.seed):
            xw = x.detach().to(core.work_dtype(model, x))
            _check_model(model, xw, y)
            adversary = self.build(model, device)
            out = adversary.run_standard_evaluation(
                xw, y.to(x.device).long(), batch_size=self.batch_size
            )
            if isinstance(out, tuple):  # pyautoattack returns (x_adv, y_adv)
                out = out[0]
        return _finish(x, out, self.norm, self.eps)


__all__ = ["AutoAttack", "TorchAttacks", "import_autoattack", "import_torchattacks"]
