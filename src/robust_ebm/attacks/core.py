"""What every attack shares: input checks, the model context, per-sample randomness, targets.

Per-sample randomness: each sample draws from its own counter-based stream keyed by
(seed, the sample's label, the sample's pixel values), computed on the device
(:mod:`robust_ebm.attacks.streams`). A sample therefore draws the same random start whether it
is attacked alone or inside any batch, in any position, so a batch of N gives what N batches of
1 give; the global RNG is never touched. ``seed=None`` takes fresh OS entropy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..models.modes import frozen_eval  # noqa: F401  (re-exported for attacks)
from .streams import SampleStreams

TARGET_MODES = ("given", "random", "least_likely")


def work_dtype(model: nn.Module, x: Tensor) -> torch.dtype:
    """The dtype the model computes in (its first floating parameter), else the input's."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return x.dtype


def check_inputs(x: Tensor, y: Tensor) -> None:
    """UserError unless x is a finite float batch in [0, 1] and y holds one label per sample."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise UserError("x and y must be torch tensors")
    if not x.is_floating_point():
        raise UserError(
            f"x must be a float tensor in [0, 1]; got dtype {x.dtype} (divide uint8 images by 255)"
        )
    if x.dim() < 2:
        raise UserError(f"x must be a batch (N, ...); got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise UserError(
            f"x and y must have the same length: x has {x.shape[0]} samples, "
            f"y has shape {tuple(y.shape)}"
        )
    if y.is_floating_point() or y.is_complex():
        raise UserError(f"y must hold integer class labels; got dtype {y.dtype}")
    if x.numel() == 0:
        return
    if not bool(torch.isfinite(x).all()):
        raise UserError("x contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise UserError(
            f"x must lie in [0, 1] (pixel units); got values in [{lo:.4g}, {hi:.4g}]. "
            "Normalization belongs inside the model."
        )


def check_logits(logits: Tensor, num_samples: int) -> None:
    """UserError when the model's output is not (N, K) logits (e.g. softmax probabilities)."""
    if logits.dim() != 2 or logits.shape[0] != num_samples:
        raise UserError(
            f"the model must return logits of shape (N, K); got {tuple(logits.shape)} "
            f"for N={num_samples}"
        )
    if not bool(torch.isfinite(logits).all()):
        raise UserError("the model returned NaN or infinite logits")
    if logits.shape[1] > 1 and bool((logits >= 0).all()):
        sums = logits.sum(dim=1)
        if bool(((sums - 1.0).abs() <= 1e-4).all()):
            raise UserError(
                "the model returns probabilities (rows are >= 0 and sum to 1), not logits; "
                "remove the final softmax so attacks and energies see logits"
            )


def check_labels(y: Tensor, num_classes: int, what: str = "y") -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise UserError(
            f"{what} must hold class indices in [0, {num_classes - 1}]; "
            f"got values in [{int(y.min())}, {int(y.max())}]"
        )


def per_sample_eps(eps: float | Tensor, x: Tensor, name: str = "eps") -> Tensor:
    """Broadcastable (N, 1, ..., 1) budget from a float or an (N,) tensor; UserError if < 0."""
    n = x.shape[0]
    if isinstance(eps, Tensor):
        if eps.dim() == 0:
            eps = eps.expand(n)
        if eps.shape != (n,):
            raise UserError(f"a per-sample {name} must have shape ({n},); got {tuple(eps.shape)}")
        t = eps.detach().to(device=x.device, dtype=x.dtype)
    else:
        t = torch.full((n,), float(eps), device=x.device, dtype=x.dtype)
    if n and (not bool(torch.isfinite(t).all()) or float(t.min()) < 0):
        raise UserError(f"{name} must be finite and >= 0; got {eps}")
    return t.view(n, *([1] * (x.dim() - 1)))


def check_budget(eps: float | Tensor, name: str = "eps") -> None:
    """Early scalar check at construction time (per-sample tensors are checked per call)."""
    if isinstance(eps, Tensor):
        return
    if not isinstance(eps, (int, float)) or not 0 <= eps < float("inf"):
        raise UserError(f"{name} must be a finite number >= 0; got {eps!r}")


def sample_generators(x: Tensor, y: Tensor, seed: int | None) -> SampleStreams:
    """One random stream per sample, keyed by (seed, y_i, x_i); see the module docstring."""
    return SampleStreams.for_batch(x, y, seed)


def draw(
    streams: SampleStreams,
    idx: Tensor,
    shape: tuple[int, ...],
    like: Tensor,
    kind: str,
    scale: Tensor | None = None,
) -> Tensor:
    """(len(idx), *shape) numbers, row r from sample idx[r]'s stream, in ``like``'s dtype and
    device: 'uniform' on [0, 1), 'symmetric' on [-1, 1] or 'normal'; times ``scale``."""
    return streams.draw(idx, shape, like, kind, scale)


def choose_targets(
    mode: str,
    logits_clean: Tensor,
    y: Tensor,
    streams: SampleStreams,
    targets: Tensor | None,
) -> Tensor:
    """Targets for targeted mode: 'given' (the ``targets=`` argument), 'random' (uniform over
    classes != y, per-sample generator) or 'least_likely' (lowest clean logit)."""
    n, k = logits_clean.shape
    if mode == "given":
        if targets is None:
            raise UserError("targeted attack without targets: pass targets=... (one per sample)")
        targets = targets.to(y.device).long()
        if targets.shape != (n,):
            raise UserError(f"targets must have shape ({n},); got {tuple(targets.shape)}")
        check_labels(targets, k, "targets")
        return targets
    if k < 2:
        raise UserError("targeted attacks need at least 2 classes")
    if mode == "random":
        offsets = streams.integers(torch.arange(n, device=y.device), 1, k)
        return (y + offsets.to(y.device)) % k
    if mode == "least_likely":
        return logits_clean.argmin(dim=1)
    raise UserError(f"unknown targeted mode {mode!r}; choose one of: {', '.join(TARGET_MODES)}")
