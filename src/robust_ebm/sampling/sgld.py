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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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

__all__ = [
    "ENERGIES",
    "NOISE_SCALINGS",
    "REDUCTIONS",
    "SGLD",
    "SGLD_ENERGIES",
    "EnergyFn",
    "SampleResult",
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
    return SGLD_ENERGIES.get(energy)


@dataclass(frozen=True)
class SampleResult:
    """Samples and the energy of every chain at every step.

    Attributes:
        x: (N, ...) final samples, same shape, dtype and device as x0.
        energy_trajectory: (steps + 1, N); row n is the energy at x_n (row 0 at x0).
    """

    x: Tensor
    energy_trajectory: Tensor


@dataclass(frozen=True)
class SGLD:
    """SGLD with momentum; see the module docstring for the update.

    Args:
        step_size: eta > 0, in pixel units per unit of energy gradient (the step is eta/2 * grad).
            Values seen in the papers: 0.025 to 1.
        momentum: zeta in [0, 1); 0 is plain SGLD, the papers use 0.8.
        noise_std: s >= 0, standard deviation of the Gaussian noise added each step (0.001).
        steps: number of updates (50).
        clamp: clip x to [0, 1] after each step.
        energy: "joint" E(x,y) (default), "free" E(x), "ce" CE(x,y), or a callable
            ``energy_fn(logits (N,K), y (N,) | None) -> (N,)``.
        noise_scaling: "none" (noise std is ``noise_std``) or "sqrt_2_step" (std is
            sqrt(2 * step_size) * noise_std, the published default alpha).
        energy_reduction: "sum" (each chain follows its own energy gradient) or "mean" (the
            gradient of the batch mean, as the published 'ce' energy: steps shrink by 1/N).
    """

    step_size: float
    momentum: float = 0.0
    noise_std: float = 0.001
    steps: int = 50
    clamp: bool = True
    energy: str | EnergyFn = "joint"
    noise_scaling: str = "none"
    energy_reduction: str = "sum"

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
        if self.noise_scaling not in NOISE_SCALINGS:
            raise UserError(f"noise_scaling must be one of {', '.join(NOISE_SCALINGS)}; "
                            f"got {self.noise_scaling!r}")
        if self.energy_reduction not in REDUCTIONS:
            raise UserError(f"energy_reduction must be one of {', '.join(REDUCTIONS)}; "
                            f"got {self.energy_reduction!r}")

    def config(self) -> dict[str, object]:
        """Hyperparameters as a JSON-friendly dict (for run.json)."""
        energy = (
            self.energy
            if isinstance(self.energy, str)
            else getattr(self.energy, "__qualname__", repr(self.energy))
        )
        return {
            "sampler": "sgld",
            "step_size": self.step_size,
            "momentum": self.momentum,
            "noise_std": self.noise_std,
            "steps": self.steps,
            "clamp": self.clamp,
            "energy": energy,
            "noise_scaling": self.noise_scaling,
            "energy_reduction": self.energy_reduction,
        }

    def __call__(
        self,
        model: nn.Module,
        x0: Tensor,
        y: Tensor | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        chain_ids: Tensor | None = None,
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

        ``x0`` is not modified. Works when the caller is under ``torch.no_grad()``.
        """
        energy_fn = resolve_energy(self.energy)
        if not x0.is_floating_point():
            raise UserError(f"x0 must be a float tensor of images in [0, 1]; got {x0.dtype}")
        if y is not None:
            y = y.to(x0.device)
            if y.shape != (x0.shape[0],):
                raise UserError(f"y must have shape ({x0.shape[0]},); got {tuple(y.shape)}")
        half_eta = self.step_size / 2
        if self.energy_reduction == "mean":
            half_eta /= max(x0.shape[0], 1)
        noise_std = self.noise_std
        if self.noise_scaling == "sqrt_2_step":
            noise_std *= math.sqrt(2 * self.step_size)
        draw_noise = self._noise_source(x0, noise_std, seed, generator, chain_ids)
        x = x0.detach().clone()
        v = torch.zeros_like(x)
        traj = torch.empty(self.steps + 1, x.shape[0], dtype=x.dtype, device=x.device)
        with frozen_eval(model), torch.enable_grad():
            for n in range(self.steps):
                x_var = x.detach().requires_grad_(True)
                e = energy_fn(model(x_var), y)  # (N,)
                # Chains are independent in eval(), so the gradient of the sum is per chain.
                (grad,) = torch.autograd.grad(e.sum(), x_var)
                traj[n] = e.detach()
                v.mul_(self.momentum).add_(grad, alpha=-half_eta)
                x.add_(v)
                if draw_noise is not None:
                    x.add_(draw_noise())
                if self.clamp:
                    x.clamp_(0.0, 1.0)
            with torch.no_grad():
                traj[self.steps] = energy_fn(model(x), y)
        return SampleResult(x=x, energy_trajectory=traj)

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
