"""SGLD with momentum on a classifier's energy (Beadini & Masi, arXiv 2304.04033; Mirza et al.,
arXiv 2407.06315; docs/science.md#sgld).

One step, for inputs x in [0, 1] (pixel units) and the wanted classes y:

    v_{n+1} = zeta * v_n - (eta / 2) * grad_x E(x_n, y)
    x_{n+1} = clip01(x_n + v_{n+1} + noise_n),      noise_n ~ N(0, s^2 I)

with eta = ``step_size``, zeta = ``momentum`` (0 gives plain SGLD) and s = ``noise_std``, a
standard deviation. The published code calls s a variance but uses it as a std; so do we, and we
name it for what it is. Lower energy = more likely (see :mod:`robust_ebm.energy`).

Two options reproduce the published sampler where it differs (docs/fidelity.md):
``noise_scaling='sqrt_2_step'`` multiplies the noise by alpha = sqrt(2 * step_size), and
``energy_reduction='mean'`` takes the gradient of the batch MEAN of the energy (the published
'ce' energy), which divides every chain's step by the batch size N.

Further options of the published generation code (docs/fidelity.md, docs/science.md#sgld):

* ``step_clip`` c with ``clip_norm``: the update u = v_{n+1} + noise_n is clamped before it is
  added: "linf" clamps each pixel of u to [-c, c] (the published Linf mode); "l2" rescales each
  chain's u to L2 norm <= c; "l2_published" is the published L2 mode: the Linf clamp, then
  each SAMPLE x_{n+1} (not its update) rescaled to L2 norm <= c (``torch.renorm``), an evident
  slip kept under an explicit name.
* ``integrator="heun"``: Heun's predictor-corrector on the gradient, with g1 = grad E(x_n),
  g2 = grad E(x_n - (eta/2) g1), v_{n+1} = zeta v_n - (eta/2) (g1 + g2) / 2, then x as above.
  ``"heun_published"`` is the published sampler: predictor x_n - eta g1, v_{n+1} = zeta v_n -
  eta (g1 + g2) / 2 and x_{n+1} = clip01(x_n - v_{n+1} + noise_n), which ASCENDS the energy (a
  sign slip); ``heun`` at step 2 eta is it with the sign fixed.
* ``stop_tolerance`` tol: adaptive stopping; a chain stops for good at the first step where
  (E(x_n, y) - ref_y)^2 < tol, E(x, y) = -f(x)[y] the joint energy (whatever the sampled energy)
  and ref_y a reference energy (the mean E(x, y) of real class-y images:
  :mod:`robust_ebm.sampling.reference`). A stopped chain keeps its sample; its later
  trajectory rows repeat its last energy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks.streams import SampleStreams
from ..energy import cross_entropy_from_energies, free_energy, joint_energy
from ..errors import UserError
from ..models.modes import frozen_eval
from ..registry import Registry

EnergyFn = Callable[[Tensor, Tensor | None], Tensor]  # (logits (N,K), y (N,) | None) -> (N,)
# named energies for SGLD; flag ``needs_labels``: the energy needs the wanted classes y
SGLD_ENERGIES: Registry[EnergyFn] = Registry("energy", hint="or pass a callable")
NOISE_SCALINGS = ("none", "sqrt_2_step")
REDUCTIONS = ("sum", "mean")
INTEGRATORS = ("euler", "heun", "heun_published")
CLIP_NORMS = ("linf", "l2", "l2_published")

__all__ = [
    "CLIP_NORMS",
    "ENERGIES",
    "INTEGRATORS",
    "NOISE_SCALINGS",
    "REDUCTIONS",
    "SGLD",
    "SGLD_ENERGIES",
    "EnergyFn",
    "SampleResult",
    "clip_update",
    "frozen_eval",
    "resolve_energy",
]


@SGLD_ENERGIES.register("joint", needs_labels=True)
def _joint(logits: Tensor, y: Tensor | None) -> Tensor:
    if y is None:
        raise UserError("energy 'joint' needs the wanted classes y")
    return joint_energy(logits, y)


@SGLD_ENERGIES.register("free", needs_labels=False)
def _free(logits: Tensor, y: Tensor | None) -> Tensor:
    return free_energy(logits)


@SGLD_ENERGIES.register("ce", needs_labels=True)
def _ce(logits: Tensor, y: Tensor | None) -> Tensor:
    if y is None:
        raise UserError("energy 'ce' needs the wanted classes y")
    return cross_entropy_from_energies(logits, y)


ENERGIES = tuple(SGLD_ENERGIES)  # the registered names, in registration order (the CLI lists them)


def resolve_energy(energy: str | EnergyFn) -> EnergyFn:
    """Map ``"joint"`` (E(x,y)), ``"free"`` (E(x)), ``"ce"`` (E(x,y) - E(x)) or a callable
    ``energy_fn(logits, y) -> (N,)`` to a callable."""
    if callable(energy):
        return energy
    if energy in ("reference", "mahalanobis") and energy not in SGLD_ENERGIES:
        raise UserError(f"energy {energy!r} needs class statistics of real data: pass "
                        f"robust_ebm.sampling.reference.make_reference_energy({energy!r}, "
                        "reference_statistics(model, images, labels))")
    return SGLD_ENERGIES.get(energy)


def _energy_name(energy: str | EnergyFn) -> str:
    if isinstance(energy, str):
        return energy
    return str(getattr(energy, "name", None) or getattr(energy, "__qualname__", repr(energy)))


def _check_optional_positive(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not value > 0:
        raise UserError(f"SGLD {name} must be a finite number > 0 or None; got {value!r}")


@dataclass(frozen=True)
class SampleResult:
    """Samples and the energy of every chain at every step.

    Attributes:
        x: (N, ...) final samples, same shape, dtype and device as x0.
        energy_trajectory: (steps + 1, N); row n is the energy at x_n (row 0 at x0).
        stopped_at: (N,) int64, the step at which each chain stopped (adaptive stopping), or
            ``steps`` for chains that ran to the end; None without ``stop_tolerance``.
    """

    x: Tensor
    energy_trajectory: Tensor
    stopped_at: Tensor | None = None


@dataclass(frozen=True)
class SGLD:
    """SGLD with momentum; see the module docstring for the update and the options.

    Args:
        step_size: eta > 0, in pixel units per unit of energy gradient (the step is eta/2 * grad).
            Values seen in the papers: 0.025 to 1.
        momentum: zeta in [0, 1); 0 is plain SGLD, the papers use 0.8.
        noise_std: s >= 0, standard deviation of the Gaussian noise added each step (0.001).
        steps: number of updates (50).
        clamp: clip x to [0, 1] after each step.
        energy: "joint" E(x,y) (default), "free" E(x), "ce" CE(x,y), or a callable
            ``energy_fn(logits (N,K), y (N,) | None) -> (N,)`` (the reference and Mahalanobis
            energies of :mod:`robust_ebm.sampling.reference` are such callables).
        noise_scaling: "none" (noise std is ``noise_std``) or "sqrt_2_step" (std is
            sqrt(2 * step_size) * noise_std, the published default alpha).
        energy_reduction: "sum" (each chain follows its own energy gradient) or "mean" (the
            gradient of the batch mean, as the published 'ce' energy: steps shrink by 1/N).
        integrator: "euler" (default), "heun" or "heun_published" (module docstring).
        step_clip: c > 0, bound on each step's update in pixel units (None: no bound; the
            published code uses eps = 1 when not given).
        clip_norm: how ``step_clip`` bounds it: "linf" (default), "l2", "l2_published".
        stop_tolerance: tol > 0 in squared energy units, adaptive stopping (None: off).
        stop_reference: where the stopping targets come from when the call gives none and the
            energy has no ``reference_energy(y)``: any object with ``reference_energy(y) ->
            (N,)``, e.g. :class:`robust_ebm.sampling.reference.ReferenceStatistics`.
    """

    step_size: float
    momentum: float = 0.0
    noise_std: float = 0.001
    steps: int = 50
    clamp: bool = True
    energy: str | EnergyFn = "joint"
    noise_scaling: str = "none"
    energy_reduction: str = "sum"
    integrator: str = "euler"
    step_clip: float | None = None
    clip_norm: str = "linf"
    stop_tolerance: float | None = None
    stop_reference: Any = None

    def __post_init__(self) -> None:
        for name in ("step_size", "momentum", "noise_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"SGLD {name} must be a finite number; got {value!r}")
        if not self.step_size > 0:
            raise UserError(f"step_size must be > 0; got {self.step_size}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"momentum must be in [0, 1); got {self.momentum}")
        if not self.noise_std >= 0:
            raise UserError(f"noise_std must be >= 0; got {self.noise_std}")
        if self.steps < 0:
            raise UserError(f"steps must be >= 0; got {self.steps}")
        resolve_energy(self.energy)  # fail early on a bad name
        for name, choices in (("noise_scaling", NOISE_SCALINGS), ("energy_reduction", REDUCTIONS),
                              ("integrator", INTEGRATORS), ("clip_norm", CLIP_NORMS)):
            if getattr(self, name) not in choices:
                raise UserError(f"{name} must be one of {', '.join(choices)}; "
                                f"got {getattr(self, name)!r}")
        _check_optional_positive("step_clip", self.step_clip)
        _check_optional_positive("stop_tolerance", self.stop_tolerance)
        if self.step_clip is None and self.clip_norm != "linf":
            raise UserError(f"clip_norm={self.clip_norm!r} has no effect without step_clip; "
                            "give step_clip (the published code's eps is 1 when not given)")
        if self.stop_reference is not None and not hasattr(self.stop_reference, "reference_energy"):
            raise UserError("stop_reference must have reference_energy(y), e.g. "
                            "ReferenceStatistics; got " + type(self.stop_reference).__name__)

    def config(self) -> dict[str, object]:
        """Hyperparameters as a JSON-friendly dict (for run.json)."""
        cfg: dict[str, object] = {
            "sampler": "sgld",
            "step_size": self.step_size,
            "momentum": self.momentum,
            "noise_std": self.noise_std,
            "steps": self.steps,
            "clamp": self.clamp,
            "energy": _energy_name(self.energy),
            "noise_scaling": self.noise_scaling,
            "energy_reduction": self.energy_reduction,
            "integrator": self.integrator,
            "step_clip": self.step_clip,
            "clip_norm": self.clip_norm,
            "stop_tolerance": self.stop_tolerance,
        }
        sources: tuple[tuple[str, Any], ...] = (
            ("energy_statistics", getattr(self.energy, "statistics", None)),
            ("stop_reference", self.stop_reference))
        for key, obj in sources:
            if hasattr(obj, "describe"):
                cfg[key] = obj.describe()
        return cfg

    def __call__(
        self,
        model: nn.Module,
        x0: Tensor,
        y: Tensor | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        chain_ids: Tensor | None = None,
        reference: Tensor | None = None,
    ) -> SampleResult:
        """Run ``steps`` updates from ``x0`` (N, ...) towards low energy of classes ``y`` (N,).

        Where the noise comes from:

        * ``seed`` (and no ``generator``): each chain's own counter-based stream on x0's device,
          keyed by (seed, ``chain_ids[i]``) (:meth:`robust_ebm.attacks.streams.SampleStreams.
          for_ids`; ``chain_ids`` (N,) integers, default 0..N-1, used with ``seed`` only). A
          chain draws the same noise alone or in any batch, at any position, on any rank; no
          host copy, no loop over chains. Its samples are bit-identical too where the model
          computes the chain's gradient the same way (always for the same batch; a convolution
          at another batch size may round differently: docs/attacks.md).
        * ``generator``: one ``normal_`` over the whole batch from it (the noise of a chain then
          depends on the batch around it).
        * neither: torch's global RNG, likewise per batch.

        With ``stop_tolerance``, ``reference`` (N,) gives each chain's target energy; without
        it the energy's ``reference_energy(y)`` is used, else ``stop_reference``'s. Every chain
        draws its noise each step, stopped or not, so stopping never shifts another chain's
        noise.

        ``x0`` is not modified. Works when the caller is under ``torch.no_grad()``.
        """
        energy_fn = resolve_energy(self.energy)
        if not x0.is_floating_point():
            raise UserError(f"x0 must be a float tensor of images in [0, 1]; got {x0.dtype}")
        if y is not None:
            y = y.to(x0.device)
            if y.shape != (x0.shape[0],):
                raise UserError(f"y must have shape ({x0.shape[0]},); got {tuple(y.shape)}")
        ref = self._stop_targets(x0, y, reference)
        half_eta = self.step_size / 2
        if self.energy_reduction == "mean":
            half_eta /= max(x0.shape[0], 1)
        noise_std = self.noise_std
        if self.noise_scaling == "sqrt_2_step":
            noise_std *= math.sqrt(2 * self.step_size)
        draw_noise = self._noise_source(x0, noise_std, seed, generator, chain_ids)
        with frozen_eval(model), torch.enable_grad():
            return self._run(model, energy_fn, x0, y, ref, half_eta, draw_noise)

    def _run(
        self,
        model: nn.Module,
        energy_fn: EnergyFn,
        x0: Tensor,
        y: Tensor | None,
        ref: Tensor | None,
        half_eta: float,
        draw_noise: Callable[[], Tensor] | None,
    ) -> SampleResult:
        """The step loop (model already frozen, gradients enabled)."""
        x = x0.detach().clone()
        v = torch.zeros_like(x)
        n_chains = x.shape[0]
        traj = torch.empty(self.steps + 1, n_chains, dtype=x.dtype, device=x.device)
        stopped_at = torch.full((n_chains,), self.steps, dtype=torch.long, device=x.device)
        active = torch.ones(n_chains, dtype=torch.bool, device=x.device)
        for n in range(self.steps):
            logits, e, grad = _energy_grad(model, energy_fn, x, y)
            traj[n] = e if n == 0 else torch.where(active, e, traj[n - 1])
            if ref is not None:
                assert y is not None and self.stop_tolerance is not None
                near = (joint_energy(logits.detach(), y) - ref).square() < self.stop_tolerance
                stopped_at[active & near] = n
                active &= ~near
                if not bool(active.any()):
                    traj[n + 1:] = traj[n]
                    return SampleResult(x=x, energy_trajectory=traj, stopped_at=stopped_at)
            v = self._velocity(model, energy_fn, x, y, grad, v, half_eta)
            step = -v if self.integrator == "heun_published" else v
            noise = draw_noise() if draw_noise is not None else None
            x = self._apply(x, step, noise, active if ref is not None else None)
        with torch.no_grad():
            e = energy_fn(model(x), y)
            traj[self.steps] = e if self.steps == 0 else torch.where(active, e, traj[self.steps - 1])
        return SampleResult(x=x, energy_trajectory=traj,
                            stopped_at=stopped_at if ref is not None else None)

    def _velocity(
        self,
        model: nn.Module,
        energy_fn: EnergyFn,
        x: Tensor,
        y: Tensor | None,
        grad: Tensor,
        v: Tensor,
        half_eta: float,
    ) -> Tensor:
        """v_{n+1} from v_n and g1 = ``grad`` at x_n: Euler, or Heun with a second gradient at
        the predictor (step eta/2, or eta for the published Heun). Updates ``v`` in place."""
        if self.integrator == "euler":
            return v.mul_(self.momentum).add_(grad, alpha=-half_eta)
        h = 2 * half_eta if self.integrator == "heun_published" else half_eta
        x_pred = x - h * grad  # not clipped to [0, 1], as the published predictor
        g2 = _energy_grad(model, energy_fn, x_pred, y)[2]
        return v.mul_(self.momentum).add_(grad + g2, alpha=-h / 2)

    def _apply(self, x: Tensor, step: Tensor, noise: Tensor | None,
               active: Tensor | None) -> Tensor:
        """x_{n+1} = clip01((x_n + step) + noise), or with ``step_clip`` clip01(x_n +
        clip(step + noise)) (the published order; its L2 mode then renormalises the sample);
        chains not ``active`` keep x_n."""
        if self.step_clip is None:
            new = x + step
            if noise is not None:
                new.add_(noise)
        else:
            update = step if noise is None else step + noise
            update = clip_update(update, self.step_clip,
                                 "linf" if self.clip_norm == "l2_published" else self.clip_norm)
            new = x + update
            if self.clip_norm == "l2_published":
                new = new.renorm(p=2, dim=0, maxnorm=self.step_clip)  # the published slip
        if self.clamp:
            new.clamp_(0.0, 1.0)
        if active is None:
            return new
        return torch.where(active.view(-1, *([1] * (x.dim() - 1))), new, x)

    def _stop_targets(self, x0: Tensor, y: Tensor | None, reference: Tensor | None) -> Tensor | None:
        """(N,) reference energies of adaptive stopping on x0's device (None when off)."""
        if self.stop_tolerance is None:
            if reference is not None:
                raise UserError("reference energies were given but stop_tolerance is None")
            return None
        if y is None:
            raise UserError("adaptive stopping (stop_tolerance) needs the wanted classes y")
        if reference is None:
            source = next((s for s in (self.energy, self.stop_reference)
                           if hasattr(s, "reference_energy")), None)
            if source is None:
                raise UserError("stop_tolerance needs reference energies: pass reference=, an "
                                "energy built on ReferenceStatistics, or stop_reference=")
            reference = source.reference_energy(y)
        reference = reference.to(device=x0.device, dtype=x0.dtype)
        if reference.shape != (x0.shape[0],) or not bool(torch.isfinite(reference).all()):
            raise UserError(f"reference energies must be ({x0.shape[0]},) finite numbers; got "
                            f"{tuple(reference.shape)}")
        return reference

    def _noise_source(
        self,
        x0: Tensor,
        std: float,
        seed: int | None,
        generator: torch.Generator | None,
        chain_ids: Tensor | None,
    ) -> Callable[[], Tensor] | None:
        """A function giving one step's noise (N(0, std^2), x0's shape, dtype and device), or
        None when ``std`` is 0. See :meth:`__call__` for the three sources."""
        if std == 0:
            return None
        n, shape = x0.shape[0], tuple(x0.shape[1:])
        if generator is not None or seed is None:
            noise = torch.empty_like(x0)
            return lambda: noise.normal_(0.0, std, generator=generator)
        ids = torch.arange(n, device=x0.device) if chain_ids is None else chain_ids.to(x0.device)
        if ids.shape != (n,) or ids.is_floating_point():
            raise UserError(f"chain_ids must be ({n},) integers; got {ids.dtype} {tuple(ids.shape)}")
        streams = SampleStreams.for_ids(ids, seed)
        rows = torch.arange(n, device=x0.device)
        return lambda: streams.normal(rows, shape, x0.dtype).mul_(std)


def _energy_grad(
    model: nn.Module, energy_fn: EnergyFn, x: Tensor, y: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, energy (N,), grad_x of the summed energy) at x, all detached."""
    x_var = x.detach().requires_grad_(True)
    logits = model(x_var)
    e = energy_fn(logits, y)  # (N,)
    # Chains are independent in eval(), so the gradient of the sum is per chain.
    (grad,) = torch.autograd.grad(e.sum(), x_var)
    return logits.detach(), e.detach(), grad


def clip_update(update: Tensor, bound: float, norm: str) -> Tensor:
    """Bound each chain's update (N, ...): "linf" clamps every element to [-bound, bound];
    "l2" rescales each chain's update to L2 norm <= bound (unchanged when already inside)."""
    if norm == "linf":
        return update.clamp(-bound, bound)
    if norm == "l2":
        norms = torch.linalg.vector_norm(update.flatten(1), dim=1)  # (N,)
        scale = (bound / norms.clamp_min(torch.finfo(update.dtype).tiny)).clamp(max=1.0)
        return update * scale.view(-1, *([1] * (update.dim() - 1)))
    raise UserError(f"norm must be 'linf' or 'l2'; got {norm!r}")
