"""Class reference statistics of real data and the SGLD energies built on them (Mirza et al.,
arXiv 2407.06315, generation ablations; docs/science.md#reference-energies).

:func:`reference_statistics` runs the model over real images and keeps, per class y:

* ``energy_mean[y]``: the mean joint energy E(x, y) = -f(x)[y] over real images of class y;
* ``logit_mean[y]`` (K,) and ``logit_precision[y]`` (K, K): the mean of the logits f(x) and the
  inverse of their covariance, regularised as (Sigma_y + ridge * (tr Sigma_y / K) I)^{-1}
  (a ridge relative to the mean logit variance, so it does not depend on the logits' scale;
  Sigma_y is the unbiased covariance, computed and inverted in float64).

Two SGLD energies use them, per chain like every SGLD energy (``SGLD(energy=...)``):

* :class:`ReferenceEnergy`: (E(x, y) - energy_mean[y])^2, the published 'reference_energy_xy'
  loss, which is the batch MEAN of this (F.mse_loss): ``SGLD(energy_reduction="mean")``.
* :class:`MahalanobisEnergy`: (f(x) - mu_y)^T P_y (f(x) - mu_y), the published
  'dist_reference' loss, a batch SUM (the default ``energy_reduction="sum"``).

Both also give ``reference_energy(y)``, the per-chain target of SGLD's adaptive stopping.
Statistics are saved as one safetensors file (tensors plus JSON metadata, never a pickle)
carrying a fingerprint of the data and of the model that produced them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..energy import joint_energy
from ..errors import CorruptDataError, UserError
from ..evaluation.batched import map_batches
from ..io import atomic_write, read_tagged_safetensors
from .init import data_fingerprint

__all__ = [
    "MahalanobisEnergy",
    "REFERENCE_ENERGIES",
    "ReferenceEnergy",
    "ReferenceStatistics",
    "first_per_class",
    "cached_reference_statistics",
    "make_reference_energy",
    "model_fingerprint",
    "reference_statistics",
]

_FORMAT = "robust_ebm.reference_statistics/1"
REFERENCE_ENERGIES = ("reference", "mahalanobis")  # SGLD energies that need the statistics


@dataclass(frozen=True, eq=False, repr=False)
class ReferenceStatistics:
    """Per-class statistics of a model on real data (CPU float32; K classes).

    Attributes:
        energy_mean: (K,) mean E(x, y) over the real images of class y (NaN without images).
        logit_mean: (K, K) row y is the mean logit vector of class y (NaN without images).
        logit_precision: (K, K, K) regularised inverse logit covariance of each class (NaN for
            classes with fewer than 2 images).
        counts: (K,) int64 real images per class.
        ridge: the relative ridge used for the inverse (see the module docstring).
        fingerprint: ``{"data": data_fingerprint(...), "model": model_fingerprint(...)}``.
    """

    energy_mean: Tensor
    logit_mean: Tensor
    logit_precision: Tensor
    counts: Tensor
    ridge: float
    fingerprint: dict[str, Any]

    def __repr__(self) -> str:
        return f"ReferenceStatistics(K={self.num_classes}, ridge={self.ridge})"

    @property
    def num_classes(self) -> int:
        return int(self.energy_mean.shape[0])

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (for run.json): ridge, counts and the fingerprint."""
        return {"ridge": self.ridge, "counts": self.counts.tolist(),
                "fingerprint": self.fingerprint}

    def _rows(self, y: Tensor, need: int, what: str) -> Tensor:
        """y as CPU indices, after checking each class is known with >= ``need`` images."""
        idx = y.detach().cpu().long()
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.num_classes):
            raise UserError(f"classes {sorted(set(idx.tolist()))} out of range: the reference "
                            f"statistics have {self.num_classes} classes")
        short = sorted({int(c) for c in idx[self.counts[idx] < need]})
        if short:
            raise UserError(f"classes {short} had fewer than {need} real image(s) when the "
                            f"reference statistics were computed; {what} needs them")
        return idx

    def reference_energy(self, y: Tensor) -> Tensor:
        """(N,) energy_mean[y] on y's device."""
        return self.energy_mean[self._rows(y, 1, "the reference energy")].to(y.device)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one safetensors file (atomic): the tensors, and ridge and fingerprint as
        JSON metadata."""
        from safetensors.torch import save_file

        tensors = {"energy_mean": self.energy_mean, "logit_mean": self.logit_mean,
                   "logit_precision": self.logit_precision, "counts": self.counts}
        meta = {"format": _FORMAT, "ridge": json.dumps(self.ridge),
                "fingerprint": json.dumps(self.fingerprint, sort_keys=True)}
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceStatistics:
        """Read a file written by :meth:`save`."""
        t, meta = read_tagged_safetensors(path, _FORMAT, "reference statistics")
        try:
            return cls(energy_mean=t["energy_mean"], logit_mean=t["logit_mean"],
                       logit_precision=t["logit_precision"], counts=t["counts"],
                       ridge=float(json.loads(meta["ridge"])),
                       fingerprint=json.loads(meta["fingerprint"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"{path}: malformed reference statistics ({exc}); delete "
                                   "the file to recompute it") from None


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's parameters and buffers (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def first_per_class(labels: Tensor, n: int) -> Tensor:
    """Indices of the first ``n`` images of each class, in data order (``n`` = 0: all)."""
    labels = labels.detach().cpu().long()
    if n <= 0:
        return torch.arange(len(labels))
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for c in torch.unique(labels):
        keep[(labels == c).nonzero().squeeze(1)[:n]] = True
    return keep.nonzero().squeeze(1)


def reference_statistics(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    ridge: float = 1e-3,
    batch_size: int = 500,
) -> ReferenceStatistics:
    """Per-class mean E(x, y) and logit mean / regularised inverse covariance of ``model``.

    Args:
        model: the classifier (run frozen, batched: :func:`robust_ebm.evaluation.batched.
            map_batches`); K = its number of logits.
        images: (N, C, H, W) real images, uint8 or float in [0, 1].
        labels: (N,) their classes.
        ridge: relative ridge lambda >= 0 of the inverse covariance (module docstring); 0 gives
            the plain inverse, which fails (UserError) on a singular covariance.
        batch_size: images per forward pass.
    """
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0 \
            or not math.isfinite(ridge):
        raise UserError(f"ridge must be a finite number >= 0; got {ridge!r}")
    fingerprint = {"data": data_fingerprint(images, labels), "model": model_fingerprint(model)}
    logits = map_batches(model, images, batch_size=batch_size)[0].double()  # (N, K)
    if logits.dim() != 2 or logits.shape[0] != images.shape[0]:
        raise UserError(f"the model must return (N, K) logits; got {tuple(logits.shape)}")
    k = logits.shape[1]
    labels = labels.detach().cpu().long()
    energy_mean = torch.full((k,), math.nan, dtype=torch.float64)
    logit_mean = torch.full((k, k), math.nan, dtype=torch.float64)
    precision = torch.full((k, k, k), math.nan, dtype=torch.float64)
    counts = torch.bincount(labels[(labels >= 0) & (labels < k)], minlength=k)
    for c in range(k):
        lc = logits[labels == c]  # (n_c, K)
        if len(lc) == 0:
            continue
        energy_mean[c] = -lc[:, c].mean()
        logit_mean[c] = lc.mean(0)
        if len(lc) >= 2:
            precision[c] = _regularised_inverse(torch.cov(lc.T).reshape(k, k), ridge, c)
    return ReferenceStatistics(energy_mean=energy_mean.float(), logit_mean=logit_mean.float(),
                               logit_precision=precision.float(), counts=counts,
                               ridge=float(ridge), fingerprint=fingerprint)


def _regularised_inverse(cov: Tensor, ridge: float, c: int) -> Tensor:
    """(cov + ridge * mean(diag cov) I)^{-1}, float64; UserError when singular."""
    k = cov.shape[0]
    scale = float(cov.diagonal().mean())
    reg = cov + ridge * (scale if scale > 0 else 1.0) * torch.eye(k, dtype=cov.dtype)
    inv, info = torch.linalg.inv_ex(reg)
    if int(info) != 0 or not bool(torch.isfinite(inv).all()):
        raise UserError(f"the logit covariance of class {c} is singular; use a ridge > 0")
    return inv


@dataclass(frozen=True, eq=False)
class ReferenceEnergy:
    """(E(x, y) - energy_mean[y])^2 per chain, E(x, y) = -f(x)[y] (the published
    'reference_energy_xy' loss; it takes the batch mean: ``SGLD(energy_reduction="mean")``)."""

    statistics: ReferenceStatistics
    name: ClassVar[str] = "reference"

    def __call__(self, logits: Tensor, y: Tensor | None) -> Tensor:
        if y is None:
            raise UserError("energy 'reference' needs the wanted classes y")
        ref = self.reference_energy(y).to(logits.dtype)
        return (joint_energy(logits, y) - ref).square()

    def reference_energy(self, y: Tensor) -> Tensor:
        return self.statistics.reference_energy(y)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False)
class MahalanobisEnergy:
    """(f(x) - mu_y)^T P_y (f(x) - mu_y) per chain, mu_y and P_y the class-y logit mean and
    regularised inverse covariance (the published 'dist_reference' loss, a batch sum)."""

    statistics: ReferenceStatistics
    name: ClassVar[str] = "mahalanobis"

    def __call__(self, logits: Tensor, y: Tensor | None) -> Tensor:
        if y is None:
            raise UserError("energy 'mahalanobis' needs the wanted classes y")
        st = self.statistics
        if logits.shape[1] != st.num_classes:
            raise UserError(f"the model has {logits.shape[1]} logits but the reference "
                            f"statistics {st.num_classes}")
        idx = st._rows(y, 2, "the Mahalanobis energy")
        d = logits - st.logit_mean[idx].to(logits)  # (N, K)
        prec = st.logit_precision[idx].to(logits)  # (N, K, K)
        return torch.einsum("nk,nkl,nl->n", d, prec, d)

    def reference_energy(self, y: Tensor) -> Tensor:
        return self.statistics.reference_energy(y)

    def __str__(self) -> str:
        return self.name


def make_reference_energy(
    name: str, statistics: ReferenceStatistics
) -> ReferenceEnergy | MahalanobisEnergy:
    """The energy ``name`` (one of :data:`REFERENCE_ENERGIES`) built on ``statistics``."""
    if name == "reference":
        return ReferenceEnergy(statistics)
    if name == "mahalanobis":
        return MahalanobisEnergy(statistics)
    raise UserError(f"unknown reference energy {name!r}; choose from "
                    f"{', '.join(REFERENCE_ENERGIES)}")


def cached_reference_statistics(
    path: str | os.PathLike[str],
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    ridge: float = 1e-3,
    batch_size: int = 500,
) -> tuple[ReferenceStatistics, str]:
    """:func:`reference_statistics`, reused from ``path`` when that file was computed from the
    same data and model (fingerprints) with the same ridge, else computed and saved there.

    Returns:
        the statistics and what happened: "reused", "computed" (no file) or "recomputed" (the
        file did not match and was overwritten).
    """
    status = "computed"
    path = Path(path)
    if path.exists():
        cached = ReferenceStatistics.load(path)
        now = {"data": data_fingerprint(images, labels), "model": model_fingerprint(model)}
        if cached.fingerprint == now and cached.ridge == float(ridge):
            return cached, "reused"
        status = "recomputed"
    stats = reference_statistics(model, images, labels, ridge=ridge, batch_size=batch_size)
    stats.save(path)
    return stats, status
