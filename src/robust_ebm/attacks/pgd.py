"""The one gradient loop: projected gradient ascent on any per-sample loss of the logits.

PGD (Madry et al. 2018, arXiv 1706.06083) is the engine; FGSM, CW-margin PGD, TRADES-KL PGD,
energy attacks and HE-PGD (Beadini & Masi 2023, arXiv 2304.04033) are the same loop with another
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
    streams: core.SampleStreams  # one random stream per sample
    logits_clean: Tensor | None


def _targeted_objective(loss: LossFn, y: Tensor, t: Tensor) -> tuple[Objective, Success]:
    """Objective and success test towards the targets ``t``: the loss's targeted form if it has
    one, else the negated loss at the target; success is predicting the target."""
    tgt_form = getattr(loss, "targeted", None)
    if tgt_form is None:

        def objective(logits: Tensor, idx: Tensor | None) -> Tensor:
            return -loss(logits, _sel(t, idx))

    else:

        def objective(logits: Tensor, idx: Tensor | None) -> Tensor:
            return tgt_form(logits, _sel(y, idx), _sel(t, idx))

    def success(logits: Tensor, idx: Tensor | None) -> Tensor:
        return logits.argmax(dim=1) == _sel(t, idx)

    return objective, success


def _untargeted_objective(
    loss: LossFn, y: Tensor, logits_clean: Tensor | None
) -> tuple[Objective, Success]:
    """Objective and success test away from ``y``; ``logits_clean`` is given to losses that need
    the natural logits (TRADES-KL), None otherwise. Success is any wrong prediction."""
    if logits_clean is not None:
        nat = logits_clean.detach()

        def objective(logits: Tensor, idx: Tensor | None) -> Tensor:
            return loss(logits, _sel(y, idx), _sel(nat, idx))  # type: ignore[call-arg]

    else:

        def objective(logits: Tensor, idx: Tensor | None) -> Tensor:
            return loss(logits, _sel(y, idx))

    def success(logits: Tensor, idx: Tensor | None) -> Tensor:
        return logits.argmax(dim=1) != _sel(y, idx)

    return objective, success


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
    streams = core.sample_generators(xw, y, seed)
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
        t = core.choose_targets(targeted, logits_clean, y, streams, targets)
        objective, success = _targeted_objective(loss, y, t)
    else:
        objective, success = _untargeted_objective(loss, y, logits_clean if needs_nat else None)
    return Problem(xw, y, t, objective, success, streams, logits_clean)


def check_loss_output(value: Tensor, n: int) -> None:
    if value.shape != (n,):
        raise UserError(
            f"an attack loss must return one value per sample, shape ({n},); "
            f"got {tuple(value.shape)}"
        )


@dataclass
class BestRecord:
    """Per sample, the best adversarial point found so far over restarts.

    A point that succeeds beats one that does not; between two that agree on success the
    higher loss wins.
    """

    x_adv: Tensor  # (N, ...) work dtype
    loss: Tensor  # (N,) objective at x_adv; -inf before any run
    success: Tensor  # (N,) bool

    @classmethod
    def start_at(cls, x: Tensor) -> BestRecord:
        n = x.shape[0]
        return cls(
            x_adv=x.clone(),
            loss=torch.full((n,), float("-inf"), device=x.device, dtype=x.dtype),
            success=torch.zeros(n, dtype=torch.bool, device=x.device),
        )

    def update(self, rows: Tensor, x_adv: Tensor, loss: Tensor, success: Tensor) -> None:
        """Offer ``x_adv`` (len(rows), ...) with its ``loss`` and ``success`` for ``rows``."""
        old_success, old_loss = self.success[rows], self.loss[rows]
        better = (success & ~old_success) | ((success == old_success) & (loss > old_loss))
        improved = rows[better]
        self.x_adv[improved] = x_adv[better]
        self.loss[improved] = loss[better]
        self.success[improved] = success[better]


@dataclass
class EarlyStops:
    """Samples that stopped moving at a successful iterate, and the loss they had there."""

    stopped: Tensor  # (n,) bool
    loss: Tensor  # (n,) -inf where not stopped

    @classmethod
    def none(cls, n: int, like: Tensor) -> EarlyStops:
        return cls(
            stopped=torch.zeros(n, dtype=torch.bool, device=like.device),
            loss=torch.full((n,), float("-inf"), device=like.device, dtype=like.dtype),
        )


def starting_point(
    prob: Problem,
    geometry: Linf | L2,
    *,
    x: Tensor,
    eps: Tensor,
    bounds: tuple[Tensor, Tensor],
    rows: Tensor,
    start: str,
    start_std: float,
    clip_start: bool = True,
) -> Tensor:
    """The first iterate for samples ``rows`` (positions in the batch) whose inputs are ``x``.

    start: 'none' (x itself), 'uniform' (the geometry's random start in the ball) or 'normal'
    (x + start_std * N(0, 1), TRADES); each drawn from the samples' own random streams.
    ``clip_start=False`` leaves the random start unprojected (the published TRADES/MART/WEAT
    start: the first gradient is taken outside the box); every step still projects.
    """
    if start == "none":
        return x.clone()
    shape = tuple(x.shape[1:])

    def sample(kind: str, scale: Tensor | None = None) -> Tensor:
        return core.draw(prob.streams, rows, shape, x, kind, scale)

    if start == "uniform":
        delta = geometry.init(sample, eps)
    else:
        delta = sample("normal", None) * start_std
    x_start = delta.add_(x)  # x + delta, without a new tensor
    return geometry.project_bounds(x_start, *bounds) if clip_start else x_start


def loss_and_gradient(
    model: nn.Module, prob: Problem, x_adv: Tensor, which: Tensor | None, *, validate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Objective of samples ``which`` (None: all) at ``x_adv`` and its input gradient.

    Returns (gradient, logits, loss), the last two detached. ``validate`` checks the model's
    output and the loss's shape (done once per attack call).
    """
    x_adv = x_adv.requires_grad_(True)
    logits = model(x_adv)
    if validate:
        core.check_logits(logits.detach(), x_adv.shape[0])
        core.check_labels(prob.y, logits.shape[1])
    loss = prob.objective(logits, which)
    if validate:
        check_loss_output(loss, x_adv.shape[0])
    (gradient,) = torch.autograd.grad(loss.sum(), x_adv)
    return gradient, logits.detach(), loss.detach()


def _move(
    geometry: Linf | L2, prob: Problem, gradient: Tensor, step_size: Tensor, ids: Tensor
) -> Tensor:
    """The geometry's step from ``gradient``. With a geometry that has ``random_zero_step``
    (the published TRADES L2 procedure) a sample whose gradient is exactly zero takes
    ``-step_size * N(0, 1)`` instead (the sign as the published SGD update, which subtracts the
    noise), drawn from its own stream (``ids``: its batch positions)."""
    move = geometry.step(gradient, step_size)
    if geometry.random_zero_step:
        zero = (gradient.flatten(1) == 0).all(dim=1).nonzero().squeeze(1)
        if zero.numel():
            noise = core.draw(prob.streams, ids[zero], tuple(gradient.shape[1:]), gradient,
                              "normal")
            move[zero] = -step_size[zero] * noise  # SGD descends: delta - lr * noise
    return move


def ascend(
    model: nn.Module,
    prob: Problem,
    geometry: Linf | L2,
    *,
    x_adv: Tensor,
    bounds: tuple[Tensor, Tensor],
    step_size: Tensor,
    rows: Tensor,
    which: Tensor | None,
    steps: int,
    early_stop: bool,
    validate: bool,
) -> tuple[Tensor, EarlyStops]:
    """``steps`` projected gradient steps from ``x_adv`` for the samples ``rows``.

    ``which`` is what the objective selects with (None when ``rows`` is the whole batch).
    With ``early_stop`` a sample that succeeds keeps the iterate just evaluated and leaves the
    moving set; the loop ends when none moves. Returns the last iterate and the early stops.
    """
    stops = EarlyStops.none(x_adv.shape[0], x_adv)
    moving: Tensor | None = None  # local positions still moving; None = all (the fast path)
    for _ in range(steps):
        x_moving = x_adv if moving is None else x_adv[moving]
        which_moving = which if moving is None else rows[moving]
        gradient, logits, loss = loss_and_gradient(
            model, prob, x_moving, which_moving, validate=validate
        )
        validate = False
        x_moving = x_moving.detach()
        step = step_size if moving is None else step_size[moving]
        move = _move(geometry, prob, gradient, step, rows if moving is None else rows[moving])
        if early_stop:
            success = prob.success(logits, which_moving)
            still = ~success
            move = move * still.view(-1, *([1] * (x_adv.dim() - 1))).to(move.dtype)
        local_bounds = bounds if moving is None else (bounds[0][moving], bounds[1][moving])
        x_next = geometry.project_bounds(x_moving + move, *local_bounds)
        x_adv = x_next if moving is None else x_adv.index_copy(0, moving, x_next)
        if early_stop and bool(success.any()):
            here = torch.arange(x_adv.shape[0], device=x_adv.device) if moving is None else moving
            # successful samples keep the iterate just evaluated (their gradient was zeroed)
            stops.stopped[here[success]] = True
            stops.loss[here[success]] = loss[success]
            moving = here[still]
            if moving.numel() == 0:
                break
    return x_adv, stops


def gradient_ascent(
    model: nn.Module,
    prob: Problem,
    *,
    geometry: Linf | L2,
    eps: Tensor,
    step_size: Tensor,
    steps: int,
    start: str = "uniform",
    start_std: float = 0.0,
    restarts: int = 1,
    early_stop: bool = False,
    clip_start: bool = True,
) -> Tensor:
    """The PGD loop (Madry et al., arXiv 1706.06083). Returns x_adv in the work dtype.

    Args:
        model: the classifier, already frozen in eval mode (inside ``core.frozen_eval``).
        prob: the call's prepared state (:func:`prepare`).
        geometry: threat model (init, step, projection).
        eps, step_size: (N, 1, ..., 1) budgets in pixel units.
        steps: gradient steps per run.
        start: 'none', 'uniform' or 'normal' (see :func:`starting_point`).
        start_std: the standard deviation of the 'normal' start.
        restarts: runs; each after the first re-draws the start for samples not yet
            successful. Per sample the kept result is the successful one, else the
            highest-loss one.
        early_stop: a sample stops moving at the first iterate that succeeds.
        clip_start: project the random start (see :func:`starting_point`).
    """
    x = prob.x
    everyone = torch.arange(x.shape[0], device=x.device)
    best = BestRecord.start_at(x)
    for restart in range(restarts):
        which = None if restart == 0 else (~best.success).nonzero().squeeze(1)
        if which is not None and which.numel() == 0:
            break
        rows = everyone if which is None else which
        x_run, eps_run, step_run = (
            (x, eps, step_size) if which is None else (x[which], eps[which], step_size[which])
        )
        bounds = geometry.bounds(x_run, eps_run)
        x_adv = starting_point(
            prob, geometry, x=x_run, eps=eps_run, bounds=bounds, rows=rows,
            start=start, start_std=start_std, clip_start=clip_start,
        )  # fmt: skip
        x_adv, stops = ascend(
            model, prob, geometry, x_adv=x_adv, bounds=bounds, step_size=step_run, rows=rows,
            which=which, steps=steps, early_stop=early_stop, validate=restart == 0,
        )  # fmt: skip
        if restarts == 1 and not early_stop:
            return x_adv  # the last iterate is the result: no final evaluation needed
        with torch.no_grad():
            logits = model(x_adv)
            loss = prob.objective(logits, which).detach()
            success = prob.success(logits, which)
        loss = torch.where(stops.stopped, stops.loss, loss)
        best.update(rows, x_adv, loss, success | stops.stopped)
    return best.x_adv


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
        l2_procedure: with norm 'l2', 'ours' (default) or 'published': the L2 steps and
            projection of the published TRADES code (:class:`~.geometry.PublishedL2`; with
            init_std=0.001, clip_start=False and step_size = 2 * eps / steps it is that
            code's inner attack, docs/fidelity.md).
        restarts: runs with fresh starts for samples not yet fooled; keeps each sample's best.
        targeted: False, True/'given' (pass targets=), 'random' or 'least_likely'.
        early_stop: stop moving a sample at its first successful iterate.
        seed: seed of the per-sample random streams (:mod:`robust_ebm.attacks.streams`);
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
    l2_procedure: str = "ours"

    def __post_init__(self) -> None:
        check_common(self.eps, self.steps, self.step_size, self.restarts)
        get_geometry(self.norm, self.l2_procedure)
        object.__setattr__(self, "loss", resolve_loss(self.loss))
        resolve_targeted(self.targeted)
        if self.init_std is not None and not self.init_std >= 0:
            raise UserError(f"init_std must be >= 0; got {self.init_std}")

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, targets: Tensor | None = None
    ) -> Tensor:
        geometry = get_geometry(self.norm, self.l2_procedure)
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
                start = "normal"
            else:
                start = "uniform" if self.random_start else "none"
            x_adv = gradient_ascent(
                model,
                prob,
                geometry=geometry,
                eps=eps,
                step_size=step,
                steps=self.steps,
                start=start,
                start_std=float(self.init_std or 0.0),
                restarts=self.restarts,
                early_stop=self.early_stop,
                clip_start=self.clip_start,
            )
        return finish(x, x_adv, geometry, eps)


def field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


__all__ = [
    "PGD",
    "BestRecord",
    "EarlyStops",
    "NamedLoss",
    "Problem",
    "ascend",
    "gradient_ascent",
    "loss_and_gradient",
    "prepare",
    "starting_point",
]
