"""Per-sample attack losses of logits: ``loss(logits, y) -> (N,)``, to be ASCENDED.

Every function is pure and returns one value per sample, so an attack can sum them (the gradient
of the sum w.r.t. an input is that sample's own gradient) and keep per-sample bests.
Energies come from :mod:`robust_ebm.energy` (lower energy = more likely).

Targeted forms take ``(logits, y, target)`` and are also ascended (they rise as the prediction
moves to ``target``). A loss without its own targeted form is used as ``-loss(logits, target)``.

The second half of the module holds training losses (batch scalars to minimise): TRADES, WEAT
and MART, usable in any training loop.

Names for :func:`make_loss`: ``ce``, ``cw`` (margin), ``dlr``, ``trades_kl``, ``energy``
(E(x)), ``joint_energy`` (E(x,y)), ``he`` (CE + gamma * E(x)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import energy as _energy
from .errors import UserError
from .registry import Registry

__all__ = [
    "KL_FORMS",
    "LOSSES",
    "LossFn",
    "NamedLoss",
    "ce",
    "ce_targeted",
    "cw_margin",
    "cw_margin_targeted",
    "dlr",
    "dlr_targeted",
    "free_energy_loss",
    "he_loss",
    "joint_energy_loss",
    "kl_divergence",
    "list_losses",
    "make_loss",
    "mart_loss",
    "trades_kl",
    "trades_loss",
    "weat_loss",
    "weighted_trades_loss",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _other_max(logits: Tensor, y: Tensor) -> Tensor:
    """max_{k != y} f_k, shape (N,)."""
    mask = F.one_hot(y.long(), logits.shape[1]).bool()
    return logits.masked_fill(mask, float("-inf")).amax(dim=1)


def _true_logit(logits: Tensor, y: Tensor) -> Tensor:
    return logits.gather(1, y.long().view(-1, 1)).squeeze(1)


def ce(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy CE(x, y) = E(x, y) - E(x), shape (N,) (Madry et al., arXiv 1706.06083)."""
    return F.cross_entropy(logits, y.long(), reduction="none")


def ce_targeted(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """-CE(x, target): rises as the target class gains probability. ``y`` is unused."""
    return -F.cross_entropy(logits, target.long(), reduction="none")


def cw_margin(logits: Tensor, y: Tensor, kappa: float | None = None) -> Tensor:
    """Carlini-Wagner margin max_{k!=y} f_k - f_y, clipped above at ``kappa`` if given.

    Carlini & Wagner 2017 (arXiv 1608.04644) minimise max(f_y - max_{k!=y} f_k, -kappa); this is
    its negative. Positive means misclassified.
    """
    margin = _other_max(logits, y) - _true_logit(logits, y)
    return margin if kappa is None else margin.clamp(max=kappa)


def cw_margin_targeted(
    logits: Tensor, y: Tensor, target: Tensor, kappa: float | None = None
) -> Tensor:
    """f_t - max_{k!=t} f_k (clipped above at ``kappa``): positive once ``target`` wins."""
    margin = _true_logit(logits, target) - _other_max(logits, target)
    return margin if kappa is None else margin.clamp(max=kappa)


def dlr(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of logits ratio -(f_y - max_{k!=y} f_k) / (f_pi1 - f_pi3 + 1e-12).

    Croce & Hein 2020 (arXiv 2003.01690), eq. (5); pi sorts the logits in decreasing order.
    Shift- and scale-invariant. Needs K >= 3.
    """
    if logits.shape[1] < 3:
        raise UserError(f"the DLR loss needs at least 3 classes; got {logits.shape[1]}")
    top = logits.topk(3, dim=1).values  # (N, 3), decreasing
    return -(_true_logit(logits, y) - _other_max(logits, y)) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR -(f_y - f_t) / (f_pi1 - (f_pi3 + f_pi4) / 2 + 1e-12) (Croce & Hein 2020).

    Needs K >= 4.
    """
    if logits.shape[1] < 4:
        raise UserError(f"the targeted DLR loss needs at least 4 classes; got {logits.shape[1]}")
    top = logits.topk(4, dim=1).values
    num = _true_logit(logits, y) - _true_logit(logits, target)
    return -num / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


KL_FORMS = ("exact", "log_eps")


def kl_divergence(logits_p: Tensor, logits_q: Tensor, kl_form: str = "exact") -> Tensor:
    """KL(p || q) per sample, shape (N,), for p = softmax(logits_p), q = softmax(logits_q).

    ``kl_form``: 'exact' (log-softmax, our default) or 'log_eps', the published WEAT and MART
    form sum_k p_k (log p_k - log(q_k + 1e-12)) (TRADES itself uses the exact form). The two
    differ only where some q_k falls below about 1e-8, where 'log_eps' saturates.
    """
    if kl_form == "exact":
        return _energy.kl_divergence(logits_p, logits_q)
    if kl_form != "log_eps":
        raise UserError(f"kl_form must be one of {', '.join(KL_FORMS)}; got {kl_form!r}")
    log_p = F.log_softmax(logits_p, dim=1)
    log_q = torch.log(F.softmax(logits_q, dim=1) + 1e-12)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def trades_kl(logits: Tensor, y: Tensor, logits_nat: Tensor, kl_form: str = "exact") -> Tensor:
    """KL(p(.|x) || p(.|x')) with x the natural input, shape (N,) (Zhang et al., arXiv 1901.08573).

    ``logits`` are those of x', ``logits_nat`` those of x (computed once per batch by the
    attack); ``y`` is unused. Equals the sum of the two terms of
    :func:`robust_ebm.energy.trades_kl_decomposition`. ``kl_form`` as in :func:`kl_divergence`
    ('log_eps' is the published WEAT inner attack).
    """
    return kl_divergence(logits_nat, logits, kl_form)


def free_energy_loss(logits: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
    """E(x) = -T logsumexp(f/T); ascending it makes x less likely. ``y`` is unused."""
    return _energy.free_energy(logits, temperature)


def joint_energy_loss(logits: Tensor, y: Tensor) -> Tensor:
    """E(x, y) = -f_y; ascending it lowers the true logit."""
    return _energy.joint_energy(logits, y)


def he_loss(logits: Tensor, y: Tensor, gamma: float = 1.5) -> Tensor:
    """High-Energy PGD objective J = CE(x', y) + gamma * E(x') (Beadini & Masi, arXiv 2304.04033).

    J = E(x',y) - (1 - gamma) E(x'): gamma=0 is PGD-CE, gamma=1 lowers only the true logit,
    gamma > 1 also raises E(x') (so the attack evades energy-based detectors).
    """
    return ce(logits, y) + gamma * _energy.free_energy(logits)


# name -> per-sample loss; flags: ``targeted`` (its own targeted form or None), ``params``
# (keyword parameters it takes), ``needs_natural_logits`` (called as loss(logits, y, logits_nat))
LOSSES: Registry[Callable[..., Tensor]] = Registry("loss")
LOSSES.add("ce", ce, targeted=ce_targeted, params=())
LOSSES.add("cw", cw_margin, targeted=cw_margin_targeted, params=("kappa",))
LOSSES.add("dlr", dlr, targeted=dlr_targeted, params=())
LOSSES.add("trades_kl", trades_kl, targeted=None, params=("kl_form",), needs_natural_logits=True)
LOSSES.add("energy", free_energy_loss, targeted=None, params=("temperature",))
LOSSES.add("joint_energy", joint_energy_loss, targeted=None, params=())
LOSSES.add("he", he_loss, targeted=None, params=("gamma",))


def list_losses() -> list[str]:
    return LOSSES.names()


@dataclass(frozen=True)
class NamedLoss:
    """A registered loss with its parameters: ``loss(logits, y) -> (N,)``, ascended.

    ``sign=-1`` descends the loss instead (e.g. lowering the energy). ``loss.targeted(logits,
    y, target)`` is the targeted form. Losses with ``needs_natural_logits`` (``trades_kl``) are
    called as ``loss(logits, y, logits_nat)``.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    sign: float = 1.0

    @property
    def needs_natural_logits(self) -> bool:
        return bool(LOSSES.meta(self.name).get("needs_natural_logits"))

    def __call__(self, logits: Tensor, y: Tensor, *extra: Tensor) -> Tensor:
        out = LOSSES.get(self.name)(logits, y, *extra, **self.params)
        return out if self.sign == 1.0 else self.sign * out

    def targeted(self, logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
        if self.needs_natural_logits:
            raise UserError(f"loss {self.name!r} has no targeted form")
        targeted_form = LOSSES.meta(self.name)["targeted"]
        if targeted_form is None:
            out = -LOSSES.get(self.name)(logits, target, **self.params)
        else:
            out = targeted_form(logits, y, target, **self.params)
        return out if self.sign == 1.0 else self.sign * out

    def __hash__(self) -> int:  # params is a dict; hash its items
        return hash((self.name, tuple(sorted(self.params.items())), self.sign))


def make_loss(name: str, sign: float = 1.0, **params: Any) -> NamedLoss:
    """Look up a registered loss by name and bind its parameters (UserError when unknown)."""
    allowed = LOSSES.meta(name)["params"]
    bad = sorted(set(params) - set(allowed))
    if bad:
        raise UserError(
            f"loss {name!r} takes no parameter(s) {', '.join(bad)}; "
            f"it takes: {', '.join(allowed) or 'none'}"
        )
    if "kappa" in params and params["kappa"] is not None and not params["kappa"] >= 0:
        raise UserError(f"kappa must be >= 0; got {params['kappa']}")
    if "kl_form" in params and params["kl_form"] not in KL_FORMS:
        raise UserError(f"kl_form must be one of {', '.join(KL_FORMS)}; got {params['kl_form']!r}")
    if "temperature" in params and not params["temperature"] > 0:
        raise UserError(f"temperature must be > 0; got {params['temperature']}")
    if sign not in (1.0, -1.0):
        raise UserError(f"sign must be +1 (ascend) or -1 (descend); got {sign}")
    return NamedLoss(name, dict(params), float(sign))


# ---------------------------------------------------------------------------------------------
# Training losses: batch scalars to MINIMISE, pure functions of logits, for the objectives in
# robust_ebm.objectives and for anyone's own training loop. x* is the adversarial input.
# ---------------------------------------------------------------------------------------------


def _check_beta(beta: float) -> None:
    if not beta >= 0:
        raise UserError(f"beta must be >= 0; got {beta}")


def weighted_trades_loss(
    logits_nat: Tensor, logits_adv: Tensor, y: Tensor, beta: float, weights: Tensor | None = None,
    ce_on: str = "nat", normalize: str = "batch", kl_form: str = "exact",
    logits_p: Tensor | None = None,
) -> Tensor:
    """sum_i w_i [CE(f(x_i or x*_i), y_i) + beta KL(p(.|x_i) || p(.|x*_i))] / Z.

    The common form of TRADES (w = 1, CE on x) and WEAT (w = WEAT weights). ``normalize``:
    'batch' (Z = B, as published) or 'weight_sum' (Z = sum w). ``weights`` None means all ones.
    ``kl_form``: see :func:`kl_divergence`. ``logits_p``: logits of x for the KL's p when they
    come from another forward pass than ``logits_nat`` (published TRADES); default logits_nat.
    """
    _check_beta(beta)
    if ce_on not in ("nat", "adv"):
        raise UserError(f"ce_on must be 'nat' or 'adv'; got {ce_on!r}")
    if normalize not in ("batch", "weight_sum"):
        raise UserError(f"normalize must be 'batch' or 'weight_sum'; got {normalize!r}")
    ce_term = F.cross_entropy(logits_nat if ce_on == "nat" else logits_adv, y, reduction="none")
    p_logits = logits_nat if logits_p is None else logits_p
    per_sample = ce_term + beta * kl_divergence(p_logits, logits_adv, kl_form)
    if weights is None:
        return per_sample.mean()
    total = (weights * per_sample).sum()
    return total / (weights.sum() if normalize == "weight_sum" else per_sample.shape[0])


def trades_loss(
    logits_nat: Tensor, logits_adv: Tensor, y: Tensor, beta: float = 6.0, kl_form: str = "exact",
    logits_p: Tensor | None = None,
) -> Tensor:
    """TRADES (Zhang et al. 2019, arXiv 1901.08573): CE(f(x), y) + beta KL(p(.|x) || p(.|x*)),
    batch mean. By Prop. 1 of arXiv 2407.06315 the KL holds the marginal gap E(x) - E(x*).
    ``kl_form`` and ``logits_p`` as in :func:`weighted_trades_loss`."""
    return weighted_trades_loss(logits_nat, logits_adv, y, beta, kl_form=kl_form,
                                logits_p=logits_p)


def weat_loss(
    logits_nat: Tensor, logits_adv: Tensor, y: Tensor, beta: float = 6.0, variant: str = "adv",
    normalize: str = "batch", kl_form: str = "exact",
) -> Tensor:
    """WEAT (Mirza et al. 2024, arXiv 2407.06315, Sec. 4): TRADES terms weighted per sample by
    w = 1/softplus(|E(x)|) of the NATURAL input, detached. ``variant`` 'adv' puts the CE on x*
    (WEAT_adv), 'nat' on x (WEAT_nat). ``normalize`` 'batch' divides by B as published.
    ``kl_form`` 'log_eps' is the published KL (see :func:`kl_divergence`)."""
    if variant not in ("adv", "nat"):
        raise UserError(f"WEAT variant must be 'adv' or 'nat'; got {variant!r}")
    w = _energy.weat_weights(_energy.free_energy(logits_nat)).detach()
    return weighted_trades_loss(logits_nat, logits_adv, y, beta, w, variant, normalize, kl_form)


def mart_loss(
    logits_nat: Tensor, logits_adv: Tensor, y: Tensor, beta: float = 6.0, kl_form: str = "exact"
) -> Tensor:
    """MART (Wang et al. 2020, ICLR): boosted CE on x* + beta KL(p(.|x)||p(.|x*)) (1 - p(y|x)).

    Boosted CE = CE(f(x*), y) - log(1 - max_{k != y} p(k|x*)). ``kl_form`` 'log_eps' is the
    published KL (see :func:`kl_divergence`).
    """
    _check_beta(beta)
    p_adv = F.softmax(logits_adv, dim=1)
    top2 = p_adv.topk(2, dim=1).indices
    other = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    boost = -torch.log(1.0001 - p_adv.gather(1, other[:, None]).squeeze(1) + 1e-12)
    bce = F.cross_entropy(logits_adv, y, reduction="none") + boost
    p_true = F.softmax(logits_nat, dim=1).gather(1, y[:, None]).squeeze(1)
    kl = kl_divergence(logits_nat, logits_adv, kl_form)
    return bce.mean() + beta * (kl * (1.0000001 - p_true)).mean()
