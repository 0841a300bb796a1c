"""Energies of natural and adversarial inputs, per attack (Mirza et al., arXiv 2407.06315).

For a classifier read as an EBM (:mod:`robust_ebm.energy`, lower = more likely) and a set of
attacks, :func:`analyze_energy` runs ONE forward pass on each clean batch and ONE on each attacked
batch and keeps the logits (N, K); every energy, prediction and success flag is derived from
those logits, so no extra passes are spent (and the detector can re-read them at any T).

The papers' findings this reproduces (docs/science.md#energy-under-attack): untargeted CE-type attacks lower E(x) and raise
E(x, y_true); targeted / margin attacks and Square move E(x) to or above clean; random noise of
the same norm leaves E(x) unchanged (:class:`RandomNoise`, the control).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks import core
from ..attacks.geometry import get_geometry
from ..energy import free_energy, joint_energy
from ..errors import UserError
from ..evaluation.batched import batched_logits, to_unit_float
from ..statistics import summarize

__all__ = [
    "DEFAULT_ATTACKS",
    "EnergyAnalysis",
    "TRACKED",
    "RandomNoise",
    "analyze_energy",
    "default_attacks",
    "sweep_pgd",
]

Attack = Callable[..., Tensor]

# the per-epoch record of training's energy tracking (Mirza et al. 2024, Sec. 3)
TRACKED = ("accuracy", "accuracy_adv", "share_E_adv_below", "E_x", "E_adv", "E_xy", "E_adv_y",
           "dE_x", "dE_xy", "ce", "ce_adv")

# order of the default table; 'noise' is the same-norm random control
DEFAULT_ATTACKS = (
    "fgsm", "pgd", "apgd_ce", "apgd_dlr", "apgd_t", "cw", "trades_kl", "square", "fab",
    "he_pgd", "noise",
)


@dataclass(frozen=True)
class RandomNoise:
    """Random perturbation of norm eps: the control that should leave E(x) unchanged.

    L-inf: a uniformly random corner of the ball, x + eps * sign vector; L2: a random direction
    scaled to eps. Then clipped to [0, 1] (so pixels at the border move less). Per-sample
    generators (:mod:`robust_ebm.attacks.core`) make it batch-consistent and seeded.
    """

    eps: float = 8 / 255
    norm: str = "linf"
    seed: int | None = 0

    def __post_init__(self) -> None:
        core.check_budget(self.eps)
        get_geometry(self.norm)

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, targets: Tensor | None = None
    ) -> Tensor:
        core.check_inputs(x, y)
        gens = core.sample_generators(x, y, self.seed)
        shape = tuple(x.shape[1:])
        idx = torch.arange(x.shape[0])
        if get_geometry(self.norm).name == "linf":
            u = core.draw(gens, idx, shape, x, "uniform")
            delta = torch.where(u < 0.5, -1.0, 1.0).to(x.dtype) * self.eps
        else:
            g = core.draw(gens, idx, shape, x, "normal")
            norms = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * len(shape)))
            delta = g / norms * self.eps
        return (x.detach() + delta).clamp(0.0, 1.0)


def default_attacks(
    eps: float,
    names: Sequence[str] = DEFAULT_ATTACKS,
    norm: str = "linf",
    steps: int | None = None,
    seed: int | None = 0,
    he_gamma: float = 1.5,
    square_queries: int = 1000,
    step_size: float | None = None,
) -> tuple[dict[str, Attack], list[str]]:
    """The analysis's attacks at budget ``eps``, and notes on any that were skipped.

    Defaults: FGSM; PGD-CE, CW-margin, TRADES-KL and HE-PGD (gamma 1.5) with 20 steps of
    2.5 * eps / steps; APGD-CE/-DLR/-T 100 iterations (APGD-T: 9 target classes); Square
    (``square_queries`` queries) and FAB-T (multi-targeted, 10 steps) through torchattacks,
    skipped with a note when it is missing; ``noise`` = :class:`RandomNoise`.
    ``steps`` overrides every iterative attack's count (PGD family, APGD, FAB); ``step_size``
    (pixel units) the step of the PGD family (PGD, CW, TRADES-KL, HE-PGD).
    """
    from ..attacks import make_attack
    from ..attacks.reference import import_torchattacks

    notes: list[str] = []
    out: dict[str, Attack] = {}
    pgd_steps = 20 if steps is None else steps
    apgd_steps = 100 if steps is None else steps
    base = {"eps": eps, "norm": norm, "seed": seed}
    for name in names:
        if name == "noise":
            out[name] = RandomNoise(eps=eps, norm=norm, seed=seed)
        elif name == "fgsm":
            out[name] = make_attack("fgsm", **base)
        elif name in ("pgd", "cw", "trades_kl"):
            out[name] = make_attack(name, steps=pgd_steps, step_size=step_size, **base)
        elif name == "he_pgd":
            out[name] = make_attack("he_pgd", gamma=he_gamma, steps=pgd_steps,
                                    step_size=step_size, **base)
        elif name in ("apgd_ce", "apgd_dlr", "apgd_t"):
            out[name] = make_attack(name, steps=apgd_steps, **base)
        elif name in ("square", "fab"):
            try:
                import_torchattacks()
            except UserError as exc:
                notes.append(f"{name} skipped: {exc}")
                continue
            if name == "square":
                out[name] = make_attack("ta_square", eps=eps, norm=norm, seed=seed,
                                        n_queries=square_queries)
            else:
                out[name] = make_attack("ta_fab", eps=eps, norm=norm, seed=seed,
                                        multi_targeted=True, steps=10 if steps is None else steps)
        else:
            # any registered attack by name, at this budget
            out[name] = make_attack(name, **base)
    return out, notes


@dataclass
class EnergyAnalysis:
    """Logits of clean and attacked inputs; all statistics derive from them.

    Attributes:
        y: (N,) true labels (CPU).
        clean: (N, K) logits on x.
        adversarial: attack name -> (N, K) logits on x* = attack(model, x, y).
        seconds: attack name -> wall time of the attack (including its forward pass).
        notes: attacks skipped and why.
    """

    y: Tensor
    clean: Tensor
    adversarial: dict[str, Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def per_sample(self, name: str | None = None, temperature: float = 1.0) -> dict[str, Tensor]:
        """E(x), E(x, y_true), E(x, y_pred), pred, correct of the clean logits (name None) or of
        an attack's x*, each (N,)."""
        logits = self.clean if name is None else self.adversarial[name]
        pred = logits.argmax(dim=1)
        return {
            "E": free_energy(logits, temperature),
            "E_y": joint_energy(logits, self.y),
            "E_pred": joint_energy(logits, pred),
            "pred": pred,
            "correct": pred == self.y,
        }

    def report(self, name: str, fields: Sequence[str] | None = None) -> dict[str, Any]:
        """One attack's row: accuracy, success, energy summaries, gaps, share of E(x*) < E(x).

        Args:
            name: the attack.
            fields: keys to keep, in this order, after ``n`` (e.g. :data:`TRACKED`); None gives
                the full row. Beyond the full row's keys, ``ce`` and ``ce_adv`` (summaries of
                CE = E(x,y) - E(x) on x and x*) may be asked for.
        """
        c, a = self.per_sample(None), self.per_sample(name)
        success = ~a["correct"]
        fooled = c["correct"] & ~a["correct"]
        d_e, d_ey = c["E"] - a["E"], c["E_y"] - a["E_y"]
        rep: dict[str, Any] = {
            "n": int(self.y.numel()),
            "accuracy": c["correct"].double().mean().item(),
            "accuracy_adv": a["correct"].double().mean().item(),
            "success_rate": success.double().mean().item(),
            # among points the model got right: the usual attack success rate
            "success_rate_on_correct": (
                fooled.sum() / c["correct"].sum().clamp_min(1)).item(),
            "share_E_adv_below": (a["E"] < c["E"]).double().mean().item(),
            "seconds": self.seconds.get(name),
            "E_x": summarize(c["E"]),
            "E_adv": summarize(a["E"]),
            "E_xy": summarize(c["E_y"]),
            "E_adv_y": summarize(a["E_y"]),
            "E_x_pred": summarize(c["E_pred"]),
            "E_adv_pred": summarize(a["E_pred"]),
            "dE_x": summarize(d_e),
            "dE_xy": summarize(d_ey),
        }
        if fields is not None:
            extra = {"ce": lambda: summarize(c["E_y"] - c["E"]),
                     "ce_adv": lambda: summarize(a["E_y"] - a["E"])}
            return {"n": rep["n"]} | {k: rep[k] if k in rep else extra[k]() for k in fields}
        if bool(fooled.any()):
            rep["dE_x_fooled"] = summarize(d_e[fooled])
        return rep

    def table(self) -> dict[str, dict[str, Any]]:
        return {name: self.report(name) for name in self.adversarial}

    def to_dict(self) -> dict[str, Any]:
        c = self.per_sample(None)
        return {
            "n": int(self.y.numel()),
            "clean": {
                "accuracy": c["correct"].double().mean().item(),
                "E_x": summarize(c["E"]),
                "E_xy": summarize(c["E_y"]),
                "E_x_pred": summarize(c["E_pred"]),
            },
            "attacks": self.table(),
            "notes": list(self.notes),
        }


def analyze_energy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Mapping[str, Attack],
    batch_size: int = 500,
    log: Callable[[str], None] | None = None,
) -> EnergyAnalysis:
    """Attack ``x`` with each attack and keep clean and adversarial logits.

    Any ``nn.Module`` that maps [0,1] images (N,C,H,W) to logits (N, K) works (normalization
    belongs inside the model). One forward on each clean batch, one on each x*; the attacks'
    own passes are theirs. The model's train/eval mode is restored afterwards.

    Args:
        model: the classifier.
        x: float in [0,1] or uint8 (N,C,H,W); y: (N,) labels.
        attacks: name -> ``attack(model, x, y) -> x_adv``.
        batch_size: samples per attack call.
        log: called with one line per finished attack (progress), e.g. ``print``.
    """
    x = to_unit_float(x)
    core.check_inputs(x, y)
    if x.shape[0] == 0:
        raise UserError("no samples to analyse (N = 0)")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1; got {batch_size}")
    res = batched_logits(model, x, y, attacks, batch_size=batch_size)
    if log is not None:
        for name in attacks:
            log(f"{name}: {res.seconds[name]:.1f}s")
    assert res.clean is not None
    return EnergyAnalysis(y=y.detach().cpu().long(), clean=res.clean,
                          adversarial=res.adversarial, seconds=res.seconds)


def sweep_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps_grid: Sequence[int] = (1, 2, 5, 10, 20, 50),
    eps_factors: Sequence[float] = (0.25, 0.5, 1.0, 1.5, 2.0),
    steps_at_eps: int = 20,
    norm: str = "linf",
    seed: int | None = 0,
    batch_size: int = 500,
) -> dict[str, Any]:
    """PGD-CE over step counts (at ``eps``) and over budgets (``eps_factors`` x eps, at
    ``steps_at_eps`` steps): accuracy next to mean and spread of E(x*) and dE(x).

    Step size is 2.5 * eps / steps throughout (Madry et al.), so every run can reach the
    border of its ball.

    Returns:
        {"clean": {...}, "steps": [row, ...], "eps": [row, ...]}; a row holds steps, eps,
        accuracy_adv, E_adv (mean/std/quantiles), dE_x (mean/std), share_E_adv_below.
    """
    from ..attacks import make_attack

    attacks: dict[str, Attack] = {}
    keys: list[tuple[str, int, float]] = []
    for s in steps_grid:
        k = f"steps={s}"
        attacks[k] = make_attack("pgd", eps=eps, steps=int(s), norm=norm, seed=seed)
        keys.append(("steps", int(s), eps))
    for f in eps_factors:
        k = f"eps={f:g}x"
        attacks[k] = make_attack("pgd", eps=eps * f, steps=steps_at_eps, norm=norm, seed=seed)
        keys.append(("eps", steps_at_eps, eps * f))
    res = analyze_energy(model, x, y, attacks, batch_size)
    c = res.per_sample(None)
    out: dict[str, Any] = {
        "clean": {"accuracy": c["correct"].double().mean().item(), "E_x": summarize(c["E"])},
        "steps": [],
        "eps": [],
        "base_eps": eps,
        "norm": norm,
    }
    for (kind, s, e), name in zip(keys, attacks):
        rep = res.report(name)
        out[kind].append({
            "steps": s, "eps": e, "eps_factor": e / eps if eps else None,
            "accuracy_adv": rep["accuracy_adv"], "E_adv": rep["E_adv"],
            "dE_x": rep["dE_x"], "E_adv_y": rep["E_adv_y"],
            "share_E_adv_below": rep["share_E_adv_below"],
        })
    return out
