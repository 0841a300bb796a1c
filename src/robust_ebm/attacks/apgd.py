"""Auto-PGD (Croce & Hein 2020, arXiv 2003.01690) on any per-sample loss of the logits.

Follows the paper and its reference code: start on the surface of the ball, step size 2*eps,
momentum 0.75 (eq. 4), checkpoints w_j with first interval 0.22*steps shrinking by 0.03*steps
to at least 0.06*steps, step halving when the loss increased in at most rho=0.75 of the steps
since the last checkpoint or when neither the step was halved nor the best loss improved at
the last one, and on halving a restart from the best point. Everything is per sample, so a
batch gives what single samples give.

Differences from the reference, on purpose: samples the attack cannot fool come back as their
highest-loss iterate (the reference returns the clean input), and randomness is per sample
(:mod:`robust_ebm.attacks.core`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..losses import LossFn
from . import core
from .geometry import L2, Linf, get_geometry
from .pgd import (
    Objective,
    Problem,
    Success,
    _sel,
    check_common,
    check_loss_output,
    finish,
    prepare,
    resolve_loss,
    resolve_targeted,
)


def _grad_at(
    model: nn.Module, objective: Objective, rows: Tensor, z: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(input gradient of the summed objective, logits, per-sample objective) at ``z``."""
    z = z.detach().requires_grad_(True)
    logits = model(z)
    value = objective(logits, rows)
    check_loss_output(value, z.shape[0])
    (g,) = torch.autograd.grad(value.sum(), z)
    return g.detach(), logits.detach(), value.detach()


def _momentum_step(
    geometry: Linf | L2,
    x_adv: Tensor,
    x_old: Tensor,
    grad: Tensor,
    step: Tensor,
    lo_hi: tuple[Tensor, Tensor],
    i: int,
) -> Tensor:
    """APGD's step with momentum 0.75 (none at step 0), projected onto the budget and box."""
    grad2 = x_adv - x_old
    a = 0.75 if i > 0 else 1.0
    z = geometry.project_bounds(x_adv + geometry.step(grad, step), *lo_hi)
    return geometry.project_bounds(x_adv + a * (z - x_adv) + (1.0 - a) * grad2, *lo_hi)


def _should_halve_step(
    loss_steps: Tensor,
    i: int,
    k: int,
    rho: float,
    reduced_last: Tensor,
    loss_best_last: Tensor,
    loss_best: Tensor,
) -> Tensor:
    """APGD's checkpoint test per sample: the loss rose in at most ``rho`` of the last k steps,
    or the step was not halved last time and the best loss has not improved since."""
    # count increases over the last k steps; like the reference, index i-k wraps to
    # the (still zero) last row at the first checkpoint
    incr = torch.zeros(loss_steps.shape[1], device=loss_steps.device, dtype=loss_steps.dtype)
    for c in range(k):
        incr += (loss_steps[i - c] > loss_steps[i - c - 1]).to(loss_steps.dtype)
    oscillating = incr <= k * rho
    no_progress = ~reduced_last & (loss_best_last >= loss_best)
    return oscillating | no_progress


def _apgd_run(
    model: nn.Module,
    objective: Objective,
    success: Success,
    streams: core.SampleStreams,
    geometry: Linf | L2,
    xs: Tensor,
    es: Tensor,
    rows: Tensor,
    steps: int,
    rho: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One APGD run on the samples ``rows``. Returns (x_best, loss_best, x_best_adv, fooled)."""
    n, shape = xs.shape[0], tuple(xs.shape[1:])
    bcast = (-1, *([1] * len(shape)))
    n_iter_2 = max(int(0.22 * steps), 1)
    n_iter_min = max(int(0.06 * steps), 1)
    size_decr = max(int(0.03 * steps), 1)
    lo_hi = geometry.bounds(xs, es)

    kind = "symmetric" if isinstance(geometry, Linf) else "normal"
    t = core.draw(streams, rows, shape, xs, kind)
    x_adv = (xs + es * geometry.normalize(t)).clamp(0.0, 1.0)

    grad, logits, loss = _grad_at(model, objective, rows, x_adv)
    fooled = success(logits, rows)
    x_best, x_best_adv = x_adv.clone(), x_adv.clone()
    loss_best, grad_best = loss.clone(), grad.clone()
    loss_steps = torch.zeros(steps, n, device=xs.device, dtype=loss.dtype)
    step = 2.0 * es
    x_old = x_adv.clone()
    counter, k = 0, n_iter_2
    loss_best_last = loss_best.clone()
    reduced_last = torch.ones(n, dtype=torch.bool, device=xs.device)
    for i in range(steps):
        x_adv, x_old = _momentum_step(geometry, x_adv, x_old, grad, step, lo_hi, i), x_adv

        grad, logits, loss = _grad_at(model, objective, rows, x_adv)
        ok = success(logits, rows)
        fooled = fooled | ok
        x_best_adv[ok] = x_adv[ok]
        loss_steps[i] = loss
        up = loss > loss_best
        x_best[up], grad_best[up], loss_best[up] = x_adv[up], grad[up], loss[up]

        counter += 1
        if counter == k:
            reduce = _should_halve_step(loss_steps, i, k, rho, reduced_last, loss_best_last,
                                        loss_best)
            reduced_last = reduce
            loss_best_last = loss_best.clone()
            if bool(reduce.any()):
                step = torch.where(reduce.view(bcast), step / 2.0, step)
                x_adv = torch.where(reduce.view(bcast), x_best, x_adv)
                grad = torch.where(reduce.view(bcast), grad_best, grad)
            counter = 0
            k = max(k - size_decr, n_iter_min)
    return x_best, loss_best, x_best_adv, fooled


@dataclass(frozen=True)
class APGD:
    """Auto-PGD with a pluggable loss (default CE); ``attack(model, x, y, targets=None)``.

    Args:
        eps: budget in pixel units ([0, 1] images); float or (N,) tensor.
        steps: iterations per run (the paper uses 100).
        norm: 'linf' or 'l2'.
        loss: registered name or callable ``loss(logits, y) -> (N,)``; 'dlr' for APGD-DLR.
        restarts: runs per target, each only on samples not yet fooled.
        rho: step-halving threshold (0.75).
        targeted: False; 'top' (APGD-T: for each of the ``n_target_classes`` highest clean
            logits other than the top one, ascend the loss's targeted form; success =
            misclassified); or True/'given', 'random', 'least_likely' (success = target hit).
        n_target_classes: classes tried by 'top' (AutoAttack standard: 9).
        seed: seed of the per-sample random streams; None draws OS entropy.
    """

    eps: float | Tensor = 8 / 255
    steps: int = 100
    norm: str = "linf"
    loss: str | LossFn = "ce"
    restarts: int = 1
    rho: float = 0.75
    targeted: bool | str = False
    n_target_classes: int = 9
    seed: int | None = 0

    def __post_init__(self) -> None:
        check_common(self.eps, self.steps, None, self.restarts)
        get_geometry(self.norm)
        object.__setattr__(self, "loss", resolve_loss(self.loss))
        if self.targeted != "top":
            resolve_targeted(self.targeted)
        if not 0 < self.rho < 1:
            raise UserError(f"rho must be in (0, 1); got {self.rho}")
        if self.n_target_classes < 1:
            raise UserError(f"n_target_classes must be >= 1; got {self.n_target_classes}")

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, targets: Tensor | None = None
    ) -> Tensor:
        geometry = get_geometry(self.norm)
        loss = resolve_loss(self.loss)
        top = self.targeted == "top"
        if top and targets is not None:
            raise UserError("targeted='top' chooses its own targets; do not pass targets=")
        mode = None if top else resolve_targeted(self.targeted)
        with core.frozen_eval(model), torch.enable_grad():
            prob = prepare(model, x, y, loss, mode, targets, self.seed)
            eps = core.per_sample_eps(self.eps, prob.x, "eps")
            if prob.x.shape[0] == 0:
                return x.detach().clone()
            if top:
                x_adv = self._run_top(model, prob, loss, geometry, eps)
            else:
                # points the model already gets wrong (or that already hit their target) stay x
                logits_clean = prob.logits_clean
                if logits_clean is None:
                    with torch.no_grad():
                        logits_clean = model(prob.x)
                    core.check_logits(logits_clean, prob.x.shape[0])
                    core.check_labels(prob.y, logits_clean.shape[1])
                n = prob.x.shape[0]
                state = (
                    prob.x.clone(),
                    torch.full((n,), float("-inf"), device=prob.x.device, dtype=prob.x.dtype),
                    prob.success(logits_clean, None),
                )
                x_adv = self._run(model, prob, prob.objective, prob.success, geometry, eps, state)
        return finish(x, x_adv, geometry, eps)

    def _run(
        self,
        model: nn.Module,
        prob: Problem,
        objective: Objective,
        success: Success,
        geometry: Linf | L2,
        eps: Tensor,
        state: tuple[Tensor, Tensor, Tensor] | None,
    ) -> Tensor:
        """Restarts on not-yet-fooled samples; ``state`` = (best, best_loss, fooled) to extend."""
        x, n = prob.x, prob.x.shape[0]
        if state is None:
            best = x.clone()
            best_loss = torch.full((n,), float("-inf"), device=x.device, dtype=x.dtype)
            fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        else:
            best, best_loss, fooled = state
        for _ in range(self.restarts):
            rows = (~fooled).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            xb, lb, xadv, ok = _apgd_run(
                model,
                objective,
                success,
                prob.streams,
                geometry,
                x[rows],
                eps[rows],
                rows,
                self.steps,
                self.rho,
            )
            bcast = (-1, *([1] * (x.dim() - 1)))
            better = ok | (lb > best_loss[rows])
            chosen = torch.where(ok.view(bcast), xadv, xb)
            best[rows[better]] = chosen[better]
            best_loss[rows[better]] = lb[better].to(best_loss.dtype)
            fooled[rows[ok]] = True
        return best

    def _run_top(
        self, model: nn.Module, prob: Problem, loss: LossFn, geometry: Linf | L2, eps: Tensor
    ) -> Tensor:
        with torch.no_grad():
            logits_clean = model(prob.x)
        core.check_logits(logits_clean, prob.x.shape[0])
        core.check_labels(prob.y, logits_clean.shape[1])
        if logits_clean.shape[1] < 2:
            raise UserError("targeted APGD (apgd_t) needs a model with >= 2 classes; "
                            f"this one predicts {logits_clean.shape[1]}")
        order = logits_clean.argsort(dim=1)  # increasing
        n_cls = min(self.n_target_classes, logits_clean.shape[1] - 1)
        tgt_form = getattr(loss, "targeted", None)
        y = prob.y
        n = prob.x.shape[0]
        best = prob.x.clone()
        best_loss = torch.full((n,), float("-inf"), device=prob.x.device, dtype=prob.x.dtype)
        fooled = logits_clean.argmax(dim=1) != y
        for rank in range(2, n_cls + 2):
            t = order[:, -rank]

            def objective(logits: Tensor, idx: Tensor | None, t: Tensor = t) -> Tensor:
                if tgt_form is None:
                    return -loss(logits, _sel(t, idx))
                return tgt_form(logits, _sel(y, idx), _sel(t, idx))

            # a new target's loss is not comparable with the last one's: reset the loss record
            best_loss.fill_(float("-inf"))
            best = self._run(
                model, prob, objective, prob.success, geometry, eps, (best, best_loss, fooled)
            )
        return best


__all__ = ["APGD"]
