"""Named attacks: ``make_attack(name, **hyperparameters)`` and ``@register_attack(name)``.

Registration flags: ``reference=True`` marks adapters of other libraries (AutoAttack,
torchattacks), which need optional packages; ``requires`` names that package.

Hyperparameters that are fields of the attack's dataclass go to it; the rest are parameters of
its loss (``kappa``, ``gamma``, ``temperature``), e.g. ``make_attack("apgd", loss="he",
gamma=1.5)``. Unknown names raise a UserError listing the choices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UserError
from ..losses import make_loss
from ..registry import Registry
from .apgd import APGD
from .pgd import PGD, field_names
from .reference import AutoAttack, TorchAttacks

Attack = Callable[..., Any]
ATTACKS: Registry[Callable[..., Attack]] = Registry("attack")


def register_attack(
    name: str, **flags: Any
) -> Callable[[Callable[..., Attack]], Callable[..., Attack]]:
    """Register a factory ``fn(**hyperparameters) -> attack`` under ``name``, with metadata
    ``flags`` (see the module docstring)."""
    return ATTACKS.register(name, **flags)


def list_attacks() -> list[str]:
    return ATTACKS.names()


def make_attack(name: str, **hyperparameters: Any) -> Attack:
    """Build a registered attack, called as ``attack(model, x, y, targets=None) -> x_adv``."""
    return ATTACKS.get(name)(**hyperparameters)


def _build(cls: type, defaults: dict[str, Any], hp: dict[str, Any]) -> Attack:
    """Split hyperparameters into dataclass fields and loss parameters; build the attack."""
    fields = field_names(cls)
    merged = {**defaults, **hp}
    loss_params = {k: v for k, v in merged.items() if k not in fields}
    kw = {k: v for k, v in merged.items() if k in fields}
    loss = kw.get("loss", "ce")
    if isinstance(loss, str):
        kw["loss"] = make_loss(loss, sign=loss_params.pop("sign", 1.0), **loss_params)
    elif loss_params:
        raise UserError(f"unknown hyperparameter(s) for a custom loss: {', '.join(loss_params)}")
    return cls(**kw)


def _fixed(name: str, hp: dict[str, Any], *keys: str) -> None:
    bad = [k for k in keys if k in hp]
    if bad:
        raise UserError(f"attack {name!r} fixes {', '.join(bad)}; use 'pgd' to change it")


@register_attack("pgd")
def _pgd(**hp: Any) -> Attack:
    """L-inf PGD on CE (Madry et al., arXiv 1706.06083); any loss via loss=..."""
    return _build(PGD, {"norm": "linf", "loss": "ce"}, hp)


@register_attack("pgd_l2")
def _pgd_l2(**hp: Any) -> Attack:
    return _build(PGD, {"norm": "l2", "loss": "ce", "eps": 0.5}, hp)


@register_attack("fgsm")
def _fgsm(**hp: Any) -> Attack:
    """One step of size eps from x (Goodfellow et al., arXiv 1412.6572)."""
    _fixed("fgsm", hp, "steps", "random_start", "restarts", "step_size")
    hp = {"steps": 1, "random_start": False, "loss": "ce", **hp}
    hp["step_size"] = hp.get("eps", 8 / 255)
    return _build(PGD, {}, hp)


@register_attack("cw")
def _cw(**hp: Any) -> Attack:
    """PGD on the CW margin max_{k!=y} f_k - f_y, clipped at kappa if given."""
    return _build(PGD, {"loss": "cw"}, hp)


@register_attack("trades_kl")
def _trades_kl(**hp: Any) -> Attack:
    """TRADES inner attack (Zhang et al., arXiv 1901.08573): x + 0.001 N(0,1), ascend KL."""
    return _build(PGD, {"loss": "trades_kl", "random_start": False, "init_std": 0.001}, hp)


@register_attack("energy")
def _energy(
    energy: str = "free", direction: str = "ascend", temperature: float = 1.0, **hp: Any
) -> Attack:
    """Ascend or descend E(x) (energy='free') or E(x, y) (energy='joint')."""
    if energy not in ("free", "joint"):
        raise UserError(f"energy must be 'free' or 'joint'; got {energy!r}")
    if direction not in ("ascend", "descend"):
        raise UserError(f"direction must be 'ascend' or 'descend'; got {direction!r}")
    sign = 1.0 if direction == "ascend" else -1.0
    if energy == "free":
        loss = make_loss("energy", sign=sign, temperature=temperature)
    else:
        loss = make_loss("joint_energy", sign=sign)
    return _build(PGD, {}, {**hp, "loss": loss})


@register_attack("he_pgd")
def _he_pgd(gamma: float = 1.5, **hp: Any) -> Attack:
    """High-Energy PGD: ascend CE(x', y) + gamma E(x') (Beadini & Masi, arXiv 2304.04033)."""
    return _build(PGD, {}, {**hp, "loss": make_loss("he", gamma=gamma)})


@register_attack("apgd")
def _apgd(**hp: Any) -> Attack:
    """APGD with any loss: make_attack('apgd', loss='he', gamma=1.5)."""
    return _build(APGD, {"loss": "ce"}, hp)


@register_attack("apgd_ce")
def _apgd_ce(**hp: Any) -> Attack:
    return _build(APGD, {"loss": "ce"}, hp)


@register_attack("apgd_dlr")
def _apgd_dlr(**hp: Any) -> Attack:
    return _build(APGD, {"loss": "dlr"}, hp)


@register_attack("apgd_t")
def _apgd_t(**hp: Any) -> Attack:
    """APGD-T: targeted DLR over the 9 highest non-top classes (AutoAttack standard)."""
    return _build(APGD, {"loss": "dlr", "targeted": "top"}, hp)


@register_attack("autoattack", reference=True, requires="autoattack")
def _autoattack(**hp: Any) -> Attack:
    if "attacks" in hp and hp["attacks"] is not None:
        hp = {"version": "custom", **hp, "attacks": tuple(hp["attacks"])}
    return AutoAttack(**hp)


@register_attack("torchattacks", reference=True, requires="torchattacks")
def _torchattacks(attack: str = "PGD", **hp: Any) -> Attack:
    own = {"eps", "norm", "seed"}
    kwargs = {k: v for k, v in hp.items() if k not in own}
    return TorchAttacks(attack=attack, kwargs=kwargs, **{k: v for k, v in hp.items() if k in own})


def _ta(cls_name: str, norm: str) -> Callable[..., Attack]:
    def factory(**hp: Any) -> Attack:
        return _torchattacks(attack=cls_name, **{"norm": norm, **hp})

    factory.__doc__ = f"torchattacks.{cls_name} behind our conventions."
    return factory


# name -> (torchattacks class, the norm its result is projected in by default)
for _name, (_cls, _norm) in {
    "ta_square": ("Square", "linf"),
    "ta_fab": ("FAB", "linf"),
    "ta_deepfool": ("DeepFool", "l2"),
    "ta_pgd": ("PGD", "linf"),
    "ta_pgd_l2": ("PGDL2", "l2"),
    "ta_apgd": ("APGD", "linf"),
    "ta_apgdt": ("APGDT", "linf"),
    "ta_cw": ("CW", "l2"),
    "ta_fgsm": ("FGSM", "linf"),
    "ta_autoattack": ("AutoAttack", "linf"),
}.items():
    register_attack(_name, reference=True, requires="torchattacks")(_ta(_cls, _norm))

# attacks that need optional packages (skipped by the invariant tests when missing)
REFERENCE_ATTACKS = frozenset(ATTACKS.names(reference=True))

__all__ = ["ATTACKS", "REFERENCE_ATTACKS", "list_attacks", "make_attack", "register_attack"]
