"""The one gradient loop: projected gradient ascent on any per-sample loss of the logits.

PGD (Madry et al. 2018, arXiv 1706.06083) is the engine; FGSM, CW-margin PGD, TRADES-KL PGD,
energy attacks and HE-PGD (Beadini & Masi, arXiv 2304.04033) are the same loop with another
loss or start. The loop is geometry-agnostic (:mod:`robust_ebm.attacks.geometry`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..losses import LossFn, NamedLoss, make_loss
from . import core
from .geometry import L2, Linf, get_geometry

# objective(logits, idx) -> (n,) ascended; idx selects the samples (None = all of them)
Objective = Callable[[Tensor, Tensor | None], Tensor]
Success = Callable[[Tensor, Tensor | None], Tensor]


def _sel(t: Tensor, idx: Tensor | None) -> Tensor:
    return t if idx is None else t[idx]


def resolve_loss(loss: str | LossFn) -> LossFn:
    if isinstance(loss, str):
        return make_loss(loss)
    if not callable(loss):
        raise UserError(f"loss must be a registered name or a callable; got {loss!r}")
    return loss


def resolve_targeted(targeted: bool | str) -> str | None:
    """False -> None; True -> 'given'; or one of core.TARGET_MODES (UserError otherwise)."""
    if targeted is False or targeted is None:
        return None
    if targeted is True:
        return "given"
    if targeted in core.TARGET_MODES:
        return str(targeted)
    raise UserError(
        f"unknown targeted mode {targeted!r}; use False, True or one of {core.TARGET_MODES}"
    )


def check_common(eps: Any, steps: int, step_size: Any = None, restarts: int = 1) -> None:
    core.check_budget(eps, "eps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UserError(f"steps must be an integer >= 1; got {steps!r}")
    if step_size is not None:
        core.check_budget(step_size, "step_size")
    if not isinstance(restarts, int) or restarts < 1:
        raise UserError(f"restarts must be an integer >= 1; got {restarts!r}")


@dataclass
class Problem:
    """One call's prepared state: work-dtype inputs, labels, targets, objective, success test."""

    x: Tensor  # (N, ...) work dtype
    y: Tensor  # (N,)
    targets: Tensor | None  # (N,) in targeted mode
    objective: Objective
    success: Success
    gens: list[torch.Generator]
    logits_clean: Tensor | None


def prepare(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss: LossFn,
    targeted: str | None,
    targets: Tensor | None,
    seed: int | None,
) -> Problem:
    """Validate inputs, pick targets, build the objective. Call inside core.frozen_eval."""
    core.check_inputs(x, y)
    if targets is not None and targeted is None:
        targeted = "given"
    if targets is not None and targeted != "given":
        raise UserError(f"targets=... was passed but the attack's targeted mode is {targeted!r}")
    xw = x.detach().to(core.work_dtype(model, x))
    y = y.detach().to(x.device).long()
    gens = core.sample_generators(xw, y, seed)
    needs_nat = bool(getattr(loss, "needs_natural_logits", False))
    logits_clean = None
    if needs_nat or targeted in ("random", "least_likely") or targeted == "given":
        with torch.no_grad():
            logits_clean = model(xw)
        core.check_logits(logits_clean, xw.shape[0])
        core.check_labels(y, logits_clean.shape[1])
    t = None
    if targeted is not None:
        if needs_nat:
            raise UserError("the trades_kl loss has no targeted form")
        assert logits_clean is not None
        t = core.choose_targets(targeted, logits_clean, y, gens, targets)
        tgt_form = getattr(loss, "targeted", None)
        if tgt_form is None:

            def objective(logits: Tensor, idx: Tensor | None) -> Tensor:
                return -loss(logits, _sel(t, idx))

        else:

            def objective(logits: Tensor, idx: Tensor | None) -> Tensor:
                return tgt_form(logits, _sel(y, idx), _sel(t, idx))

        def success(logits: Tensor, idx: Tensor | None) -> Tensor:
            return logits.argmax(dim=1) == _sel(t, idx)

    else:
        if needs_nat:
            assert logits_clean is not None
            nat = logits_clean.detach()

            def objective(logits: Tensor, idx: Tensor | None) -> Tensor:
                return loss(logits, _sel(y, idx), _sel(nat, idx))  # type: ignore[call-arg]

        else:

            def objective(logits: Tensor, idx: Tensor | None) -> Tensor:
                return loss(logits, _sel(y, idx))

        def success(logits: Tensor, idx: Tensor | None) -> Tensor:
            return logits.argmax(dim=1) != _sel(y, idx)

    return Problem(xw, y, t, objective, success, gens, logits_clean)


def check_loss_output(value: Tensor, n: int) -> None:
    if value.shape != (n,):
        raise UserError(
            f"an attack loss must return one value per sample, shape ({n},); "
            f"got {tuple(value.shape)}"
        )


def gradient_ascent(
    model: nn.Module,
    prob: Problem,
    geometry: Linf | L2,
    eps: Tensor,
    step_size: Tensor,
    steps: int,
    init: str,
    init_std: float,
    restarts: int,
    early_stop: bool,
    clip_start: bool = True,
) -> Tensor:
    """The PGD loop. Returns x_adv in the work dtype.

    init: 'none' (start at x), 'uniform' (geometry's random start in the ball) or 'normal'
    (x + init_std * N(0, 1), TRADES). Each restart re-draws the start for samples not yet
    successful; per sample the kept result is the successful one, else the highest-loss one.
    ``clip_start=False`` leaves the random start unprojected (the published TRADES/MART/WEAT
    start: the first gradient is taken outside the box); every step still projects.
    With early_stop a sample stops moving at the first iterate that succeeds.
    """
    x, n = prob.x, prob.x.shape[0]
    shape = tuple(x.shape[1:])
    best = x.clone()
    best_loss = torch.full((n,), float("-inf"), device=x.device, dtype=x.dtype)
    best_ok = torch.zeros(n, dtype=torch.bool, device=x.device)
    need_final = restarts > 1 or early_stop
    checked = False
    for restart in range(restarts):
        if restart == 0:
            idx: Tensor | None = None
            xs, es, ss = x, eps, step_size
        else:
            idx = (~best_ok).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xs, es, ss = x[idx], eps[idx], step_size[idx]
        rows = torch.arange(n, device=x.device) if idx is None else idx
        bounds = geometry.bounds(xs, es)
        if init == "none":
            x_adv = xs.clone()
        else:

            def sample(kind: str, rows: Tensor = rows, like: Tensor = xs) -> Tensor:
                return core.draw(prob.gens, rows.cpu(), shape, like, kind)

            if init == "uniform":
                x_adv = xs + geometry.init(sample, es)
            else:
                x_adv = xs + init_std * sample("normal")
            if clip_start:
                x_adv = geometry.project_bounds(x_adv, *bounds)
        # act: local positions (in xs) still moving; None = all of them (the fast path)
        act: Tensor | None = None
        frozen_loss = torch.full((xs.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        frozen_ok = torch.zeros(xs.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(steps):
            gidx = idx if act is None else rows[act]
            xa = (x_adv if act is None else x_adv[act]).requires_grad_(True)
            logits = model(xa)
            if not checked:
                core.check_logits(logits.detach(), xa.shape[0])
                core.check_labels(prob.y, logits.shape[1])
            value = prob.objective(logits, gidx)
            if not checked:
                check_loss_output(value, xa.shape[0])
                checked = True
            (grad,) = torch.autograd.grad(value.sum(), xa)
            xa = xa.detach()
            if early_stop:
                ok = prob.success(logits.detach(), gidx)
                moving = ~ok
                grad = grad * moving.view(-1, *([1] * len(shape))).to(grad.dtype)
            loc_bounds = bounds if act is None else tuple(b[act] for b in bounds)
            s = ss if act is None else ss[act]
            new = geometry.project_bounds(xa + geometry.step(grad, s), *loc_bounds)
            if act is None:
                x_adv = new
            else:
                x_adv = x_adv.index_copy(0, act, new)
            if early_stop:
                here = torch.arange(xs.shape[0], device=x.device) if act is None else act
                if bool(ok.any()):
                    # successful samples keep the iterate just evaluated (grad was zeroed)
                    frozen_ok[here[ok]] = True
                    frozen_loss[here[ok]] = value.detach()[ok]
                    act = here[moving]
                    if act.numel() == 0:
                        break
        if not need_final:
            return x_adv
        with torch.no_grad():
            logits = model(x_adv)
            fin_loss = prob.objective(logits, idx).detach()
            fin_ok = prob.success(logits, idx)
        fin_loss = torch.where(frozen_ok, frozen_loss, fin_loss)
        fin_ok = fin_ok | frozen_ok
        prev_ok = best_ok[rows]
        prev_loss = best_loss[rows]
        better = (fin_ok & ~prev_ok) | ((fin_ok == prev_ok) & (fin_loss > prev_loss))
        upd = rows[better]
        best[upd] = x_adv[better]
        best_loss[upd] = fin_loss[better]
        best_ok[upd] = fin_ok[better]
    return best


def finish(x: Tensor, x_adv: Tensor, geometry: Linf | L2, eps: Tensor) -> Tensor:
    """Cast back to the input's dtype and device; re-project in that dtype (rounding)."""
    out = x_adv.detach().to(device=x.device, dtype=x.dtype)
    if out.dtype != x_adv.dtype:
        out = geometry.project(x, out, eps.to(x.dtype))
    return out


@dataclass(frozen=True)
class PGD:
    """Projected gradient ascent of a per-sample loss of the logits.

    Called as ``attack(model, x, y, targets=None) -> x_adv``. ``x`` is a float batch in [0, 1];
    the result has its device and dtype, lies in the eps-ball around x and in [0, 1]. The model
    runs in eval mode with parameters frozen; both are restored afterwards.

    Args:
        eps: budget in pixel units of [0, 1] images; a float or an (N,) tensor.
        steps: gradient steps (>= 1).
        step_size: pixel units; a float or an (N,) tensor. None: 2.5 * eps / steps (Madry).
        norm: 'linf' or 'l2'.
        loss: a registered loss name (:func:`robust_ebm.losses.make_loss`) or any callable
            ``loss(logits, y) -> (N,)``, ascended.
        random_start: start uniformly in the ball (else at x).
        init_std: if set, start at x + init_std * N(0, 1) instead (TRADES uses 0.001).
        clip_start: project the random start onto the ball and [0, 1] (default). False keeps
            it unclipped, as the published TRADES, MART and WEAT code (docs/fidelity.md).
        restarts: runs with fresh starts for samples not yet fooled; keeps each sample's best.
        targeted: False, True/'given' (pass targets=), 'random' or 'least_likely'.
        early_stop: stop moving a sample at its first successful iterate.
        seed: seed of the per-sample generators (see :mod:`robust_ebm.attacks.core`);
            None draws fresh OS entropy.
    """

    eps: float | Tensor = 8 / 255
    steps: int = 10
    step_size: float | Tensor | None = None
    norm: str = "linf"
    loss: str | LossFn = "ce"
    random_start: bool = True
    init_std: float | None = None
    restarts: int = 1
    targeted: bool | str = False
    early_stop: bool = False
    seed: int | None = 0
    clip_start: bool = True

    def __post_init__(self) -> None:
        check_common(self.eps, self.steps, self.step_size, self.restarts)
        get_geometry(self.norm)
        object.__setattr__(self, "loss", resolve_loss(self.loss))
        resolve_targeted(self.targeted)
        if self.init_std is not None and not self.init_std >= 0:
            raise UserError(f"init_std must be >= 0; got {self.init_std}")

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, targets: Tensor | None = None
    ) -> Tensor:
        geometry = get_geometry(self.norm)
        loss = resolve_loss(self.loss)
        with core.frozen_eval(model), torch.enable_grad():
            prob = prepare(model, x, y, loss, resolve_targeted(self.targeted), targets, self.seed)
            eps = core.per_sample_eps(self.eps, prob.x, "eps")
            if self.step_size is None:
                step = eps * (2.5 / self.steps)
            else:
                step = core.per_sample_eps(self.step_size, prob.x, "step_size")
            if prob.x.shape[0] == 0:
                return x.detach().clone()
            if self.init_std is not None:
                init = "normal"
            else:
                init = "uniform" if self.random_start else "none"
            x_adv = gradient_ascent(
                model,
                prob,
                geometry,
                eps,
                step,
                self.steps,
                init,
                float(self.init_std or 0.0),
                self.restarts,
                self.early_stop,
                self.clip_start,
            )
        return finish(x, x_adv, geometry, eps)


def field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


__all__ = ["PGD", "NamedLoss", "Problem", "gradient_ascent", "prepare"]
