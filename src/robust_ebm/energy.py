"""Energies of a classifier read as an energy-based model.

Sign convention (stated once, used everywhere): **lower energy = more likely**
(docs/science.md#energies).

Given logits f(x) in R^K (Mirza et al., ECCV 2024, arXiv 2407.06315; Beadini & Masi,
arXiv 2304.04033):

* free (marginal) energy   E(x)   = -T * logsumexp(f(x) / T)        (T = 1 by default)
* joint energy             E(x,y) = -f(x)[y]
* cross-entropy            CE(x,y) = E(x,y) - E(x)                  (exact at T = 1)
* gaps to an adversarial x*: dE(x) = E(x) - E(x*),  dE(x,y) = E(x,y) - E(x*,y)

Every function here is a pure function of tensors and returns one value per sample, shape (N,).
Energies are in logit units (nats at T = 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "free_energy",
    "joint_energy",
    "energy_gap",
    "joint_energy_gap",
    "weat_weights",
    "cross_entropy_from_energies",
    "trades_kl_decomposition",
    "kl_divergence",
]


def _check_logits(logits: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, K); got {tuple(logits.shape)}")


def free_energy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Free energy E_T(x) = -T * logsumexp(f(x) / T), shape (N,).

    Args:
        logits: (N, K) classifier logits.
        temperature: T > 0. T -> 0 gives -max_k f_k; large T approaches -mean f - T log K.
    """
    _check_logits(logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    # logsumexp subtracts the max internally, so this is stable for huge logits.
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


def joint_energy(logits: Tensor, y: Tensor) -> Tensor:
    """Joint energy E(x, y) = -f(x)[y], shape (N,)."""
    _check_logits(logits)
    if y.shape != (logits.shape[0],):
        raise ValueError(f"y must have shape ({logits.shape[0]},); got {tuple(y.shape)}")
    return -logits.gather(1, y.long().view(-1, 1)).squeeze(1)


def energy_gap(logits_nat: Tensor, logits_adv: Tensor, temperature: float = 1.0) -> Tensor:
    """dE(x) = E(x) - E(x*), shape (N,). Positive when the attack lowered the energy."""
    return free_energy(logits_nat, temperature) - free_energy(logits_adv, temperature)


def joint_energy_gap(logits_nat: Tensor, logits_adv: Tensor, y: Tensor) -> Tensor:
    """dE(x, y) = E(x, y) - E(x*, y), shape (N,)."""
    return joint_energy(logits_nat, y) - joint_energy(logits_adv, y)


def weat_weights(energy: Tensor) -> Tensor:
    """WEAT sample weights w = 1 / log(1 + exp(|E|)) = 1 / softplus(|E|).

    Mirza et al. 2024 (arXiv 2407.06315), Sec. 4. Values lie in (0, 1/ln 2]; about 1/|E| for
    confident (large |E|) samples. The caller detaches ``energy`` if no gradient is wanted.
    """
    return 1.0 / F.softplus(energy.abs())


def cross_entropy_from_energies(logits: Tensor, y: Tensor) -> Tensor:
    """CE(x, y) written as E(x, y) - E(x), shape (N,). Equals F.cross_entropy(reduction='none')."""
    return joint_energy(logits, y) - free_energy(logits)


def kl_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(p || q) per sample for p = softmax(logits_p), q = softmax(logits_q), shape (N,)."""
    log_p = F.log_softmax(logits_p, dim=1)
    log_q = F.log_softmax(logits_q, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def trades_kl_decomposition(logits_nat: Tensor, logits_adv: Tensor) -> tuple[Tensor, Tensor]:
    """The two energy terms of KL(p(.|x) || p(.|x*)) (Mirza et al. 2024, Prop. 1).

    KL = sum_k p(k|x) [E(x*,k) - E(x,k)]  +  (E(x) - E(x*))
         '---------- joint term ---------'    '- marginal term -'

    Returns:
        (joint_term, marginal_term), each (N,); their sum is the KL divergence.
    """
    p_nat = F.softmax(logits_nat, dim=1)
    # E(x*,k) - E(x,k) = f(x)_k - f(x*)_k
    joint_term = (p_nat * (logits_nat - logits_adv)).sum(dim=1)
    marginal_term = energy_gap(logits_nat, logits_adv)
    return joint_term, marginal_term
