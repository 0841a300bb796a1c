"""Starting points x_0 for SGLD (arXiv 2304.04033; docs/science.md#sgld-initialisations).

Every initialiser has ``sample(y, generator) -> x0``: ``y`` (N,) class indices, ``x0``
(N, C, H, W) float32 images in [0, 1] on the CPU (the caller moves them; sampling on the CPU keeps
a seed's result independent of the device). ``generator`` is a ``torch.Generator`` (draws
depend on the whole batch), or CPU :class:`~robust_ebm.attacks.streams.SampleStreams`, one
stream per row of ``y`` (row i draws only from stream i: its x0 is the same in any batch;
:func:`robust_ebm.sampling.generate.sample_classes` keys them by chain), or None (global RNG).

* :class:`UniformInit`: U[0,1] pixels (JEM-style; gives adversarial-pattern garbage).
* :class:`ClassGaussianInit`: N(mu_y, Sigma_y) fitted per class; full covariance when D is small
  enough (D <= ``max_full_dim`` and n > D), else top-``rank`` eigenvectors plus a diagonal.
* :class:`ClassPCAInit`: the papers' method, x_0 = mu_y + sum_{i<=k} s_i z_i sigma U_i.
* :class:`NoiseInjectionInit`: a real image of the class plus strong Gaussian noise.

Fitted statistics can be cached with :meth:`ClassStatistics.fit_cached`: one safetensors file
holding the tensors and, as metadata, the settings and a fingerprint of the data they came from.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import Tensor

from ..attacks.streams import SampleStreams
from ..errors import CorruptDataError, UserError
from ..io import atomic_write
from ..registry import Registry

__all__ = [
    "INITS",
    "ClassGaussianInit",
    "ClassPCAInit",
    "ClassStatistics",
    "Init",
    "NoiseInjectionInit",
    "UniformInit",
    "as_unit_float",
    "data_fingerprint",
    "make_init",
]

_FORMAT = "robust_ebm.class_statistics/1"
_EXACT_LIMIT = 4096  # largest Gram/covariance side we eigendecompose exactly


CacheStatus = Literal["reused", "fitted", "refitted"]

# name -> initialiser class. Flags: ``alias`` (the short name the command line uses),
# ``fitted`` (needs fit(images, labels) on training data), ``cached`` (its fitted statistics can
# be saved and reused: ClassStatistics.fit_cached).
INITS: Registry[type] = Registry("initialisation")


# where an initialiser's random numbers come from (see the module docstring)
RandomSource = torch.Generator | SampleStreams | None


class Init(Protocol):
    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor: ...


def as_unit_float(images: Tensor) -> Tensor:
    """uint8 images in [0, 255] -> float32 in [0, 1]; float images are taken as already in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise UserError(f"images must be uint8 or float; got {images.dtype}")
    return images.float()


def _check_data(images: Tensor, labels: Tensor) -> None:
    if images.dim() != 4:
        raise UserError(f"images must have shape (N, C, H, W); got {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise UserError(f"labels must have shape ({images.shape[0]},); got {tuple(labels.shape)}")


def data_fingerprint(images: Tensor, labels: Tensor) -> dict[str, Any]:
    """A cheap identity of a data set: N, shape, dtype, a hash of all labels and of a strided
    subset of about 2^20 pixel values. Equal data give equal fingerprints; a different split,
    subset or preprocessing almost surely does not."""
    _check_data(images, labels)
    flat = images.detach().cpu().reshape(-1)
    stride = max(1, flat.numel() // (1 << 20))
    pixels = flat[::stride].contiguous().numpy().tobytes()
    lab = labels.detach().cpu().long().contiguous().numpy().tobytes()
    return {
        "n": int(images.shape[0]),
        "shape": [int(s) for s in images.shape[1:]],
        "dtype": str(images.dtype).removeprefix("torch."),
        "labels_sha256": hashlib.sha256(lab).hexdigest(),
        "pixels_sha256": hashlib.sha256(pixels).hexdigest(),
        "pixel_stride": stride,
    }


def _randn(rows: Tensor, size: int, source: RandomSource) -> Tensor:
    """(len(rows), size) float32 standard normals for the batch rows ``rows``: from each row's
    own stream, or from a generator (or the global RNG) over the whole block."""
    if isinstance(source, SampleStreams):
        return source.normal(rows, (size,), torch.float32).cpu()
    return torch.randn((len(rows), size), generator=source, dtype=torch.float32)


def _by_class(y: Tensor) -> list[tuple[int, Tensor]]:
    """(class, positions in y) for each class present, in increasing class order."""
    y = y.detach().cpu().long()
    return [(int(c), (y == c).nonzero().squeeze(1)) for c in torch.unique(y)]


@INITS.register("uniform", alias="uniform", fitted=False, cached=False)
@dataclass(frozen=True)
class UniformInit:
    """x0 ~ U[0, 1]^(C,H,W), ignoring the class."""

    shape: tuple[int, int, int]
    name: ClassVar[str] = "uniform"

    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor:
        if isinstance(generator, SampleStreams):
            rows = torch.arange(y.shape[0])
            return generator.uniform(rows, self.shape, torch.float32).cpu()
        return torch.rand((y.shape[0], *self.shape), generator=generator)

    def config(self) -> dict[str, Any]:
        return {"init": self.name, "shape": list(self.shape)}


@INITS.register("noise_injection", alias="noise", fitted=True, cached=False)
class NoiseInjectionInit:
    """x0 = clip01(x_real + noise_std * N(0, I)), x_real a uniformly drawn image of class y.

    Args:
        noise_std: standard deviation of the added noise, pixel units (0.5: strong, the image
            is barely visible; the sampler has to rebuild it).
    """

    name: ClassVar[str] = "noise_injection"

    def __init__(self, noise_std: float = 0.5) -> None:
        if not noise_std >= 0:
            raise UserError(f"noise_std must be >= 0; got {noise_std}")
        self.noise_std = float(noise_std)
        self.images: dict[int, Tensor] = {}

    def fit(self, images: Tensor, labels: Tensor) -> NoiseInjectionInit:
        _check_data(images, labels)
        labels = labels.detach().cpu().long()
        self.images = {c: images.detach().cpu()[idx] for c, idx in _by_class(labels)}
        return self

    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor:
        if not self.images:
            raise UserError("NoiseInjectionInit: call fit(images, labels) before sample()")
        shape = next(iter(self.images.values())).shape[1:]
        out = torch.empty((y.shape[0], *shape))
        for c, pos in _by_class(y):
            if c not in self.images:
                raise UserError(f"class {c} was not in the data given to fit()")
            pool = self.images[c]
            if isinstance(generator, SampleStreams):
                pick = generator.integers(pos, 0, len(pool)).cpu()
            else:
                pick = torch.randint(len(pool), (len(pos),), generator=generator)
            out[pos] = as_unit_float(pool[pick])
        noise = _randn(torch.arange(len(out)), out[0].numel(), generator).view(out.shape)
        out.add_(noise, alpha=self.noise_std)
        return out.clamp_(0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"init": self.name, "noise_std": self.noise_std}


def _spectrum(xc: Tensor, rank: int | None) -> tuple[Tensor, Tensor]:
    """Leading covariance spectrum of centered data xc (n, D).

    Returns eigenvalues (m,) in decreasing order (covariance units: S^2 / (n-1)) and
    components (m, D). Exact when min(n, D) <= 4096 (eigh of the smaller Gram matrix), else a
    randomized SVD of ``rank`` components.
    """
    n, d = xc.shape
    denom = max(n - 1, 1)
    if min(n, d) <= _EXACT_LIMIT:
        if d <= n:
            lam, vec = torch.linalg.eigh(xc.T @ xc)  # (D,), (D, D)
            lam, comps = lam.flip(0), vec.flip(1).T
        else:
            lam, vec = torch.linalg.eigh(xc @ xc.T)  # (n,), (n, n)
            lam, vec = lam.flip(0), vec.flip(1)
            keep = lam > lam[0].clamp(min=1e-30) * 1e-10  # drop the null space before dividing
            lam, vec = lam[keep], vec[:, keep]
            comps = (xc.T @ vec / lam.sqrt()).T  # right singular vectors
    else:
        q = min(rank or 256, n, d)
        _, s, v = torch.svd_lowrank(xc, q=q, niter=4)
        lam, comps = s.square(), v.T
    lam = lam.clamp(min=0) / denom
    if rank is not None:
        lam, comps = lam[:rank], comps[:rank]
    return lam, comps


class ClassStatistics:
    """Per-class mean and leading covariance spectrum of images; the base of the informative
    initialisers. Subclasses choose which components to keep and how to sample.

    State after :meth:`fit`: ``shape`` (C, H, W), ``classes``, and per class ``mean`` (D,),
    ``components`` (k, D), ``eigenvalues`` (k,) (covariance units), ``residual_var`` (D,),
    ``counts`` (images per class), ``total_var`` (trace of the class covariance), and
    ``fingerprint`` of the data.
    """

    name: ClassVar[str] = "class_statistics"

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.shape: tuple[int, ...] | None = None
        self.mean: dict[int, Tensor] = {}
        self.components: dict[int, Tensor] = {}
        self.eigenvalues: dict[int, Tensor] = {}
        self.residual_var: dict[int, Tensor] = {}
        self.counts: dict[int, int] = {}
        self.total_var: dict[int, float] = {}
        self.fingerprint: dict[str, Any] | None = None

    # -- subclass hooks -------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"init": self.name}

    def _fit_class(self, xc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """centered (n, D) -> (eigenvalues (k,), components (k, D), residual variance (D,))."""
        raise NotImplementedError

    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor:
        raise NotImplementedError

    # -- fitting --------------------------------------------------------------------------------
    @property
    def classes(self) -> list[int]:
        return sorted(self.mean)

    def fit(self, images: Tensor, labels: Tensor) -> ClassStatistics:
        """Fit per-class statistics on ``images`` (N, C, H, W) uint8 or float in [0,1] and
        ``labels`` (N,). Replaces any previous fit."""
        _check_data(images, labels)
        self._reset()
        self.shape = tuple(int(s) for s in images.shape[1:])
        self.fingerprint = data_fingerprint(images, labels)
        for c, idx in _by_class(labels):
            x = as_unit_float(images.detach().cpu()[idx]).flatten(1)  # (n, D)
            n, d = x.shape
            if n < 2:
                raise UserError(f"class {c} has {n} image(s); need at least 2 to fit statistics")
            # float64 keeps the Gram/eigen steps accurate; fall back to float32 when too big
            x = x.double() if n * d <= (1 << 26) else x
            mean = x.mean(0)
            xc = x - mean
            lam, comps, resid = self._fit_class(xc)
            self.mean[c] = mean.float()
            self.eigenvalues[c] = lam.float()
            self.components[c] = comps.float().contiguous()
            self.residual_var[c] = resid.float()
            self.counts[c] = n
            self.total_var[c] = float(xc.square().sum() / (n - 1))
        return self

    def retained_variance(self) -> dict[int, float]:
        """Share of each class's total variance carried by the kept components."""
        return {c: float(self.eigenvalues[c].sum()) / self.total_var[c] for c in self.classes}

    def _check_fitted(self, y: Tensor) -> None:
        if self.shape is None:
            raise UserError(f"{type(self).__name__}: call fit(images, labels) before sample()")
        missing = sorted(set(torch.unique(y.cpu()).tolist()) - set(self.mean))
        if missing:
            raise UserError(f"classes {missing} were not in the data given to fit()")

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the statistics to one safetensors file (atomic), settings in its metadata."""
        from safetensors.torch import save_file

        if self.shape is None:
            raise UserError("nothing to save: call fit() first")
        tensors: dict[str, Tensor] = {}
        for c in self.classes:
            tensors[f"mean.{c}"] = self.mean[c]
            tensors[f"components.{c}"] = self.components[c]
            tensors[f"eigenvalues.{c}"] = self.eigenvalues[c]
            tensors[f"residual_var.{c}"] = self.residual_var[c]
        meta = {
            "format": _FORMAT,
            "config": json.dumps(self.config(), sort_keys=True),
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "shape": json.dumps(list(self.shape)),
            "counts": json.dumps({str(c): n for c, n in self.counts.items()}),
            "total_var": json.dumps({str(c): v for c, v in self.total_var.items()}),
        }
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClassStatistics:
        """Read statistics written by :meth:`save` (of this class)."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except FileNotFoundError:
            raise
        except Exception as exc:  # safetensors raises its own error types
            raise CorruptDataError(f"cannot read class statistics from {path}: {exc}") from exc
        if meta.get("format") != _FORMAT:
            raise CorruptDataError(
                f"{path} is not a class-statistics file (format {meta.get('format')!r})"
            )
        try:
            config = json.loads(meta["config"])
            if config.get("init") != cls.name:
                raise UserError(f"{path} holds {config.get('init')!r} statistics, not {cls.name!r}")
            obj = cls(**{k: v for k, v in config.items() if k != "init"})
            obj.shape = tuple(json.loads(meta["shape"]))
            obj.fingerprint = json.loads(meta["fingerprint"])
            obj.counts = {int(c): n for c, n in json.loads(meta["counts"]).items()}
            obj.total_var = {int(c): v for c, v in json.loads(meta["total_var"]).items()}
            for key, t in tensors.items():
                field, c = key.rsplit(".", 1)
                getattr(obj, field)[int(c)] = t
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            raise CorruptDataError(f"{path}: malformed class-statistics metadata ({exc}); delete "
                                   "the file to refit it") from None
        return obj

    @classmethod
    def fit_cached(
        cls,
        path: str | os.PathLike[str],
        images: Tensor,
        labels: Tensor,
        on_mismatch: Literal["raise", "refit"] = "raise",
        **kwargs: Any,
    ) -> ClassStatistics:
        """Load ``path`` if it was fitted on this data with these settings, else fit and save.

        A cached file whose fingerprint or settings differ raises :class:`UserError` (default)
        or, with ``on_mismatch="refit"``, is refitted and overwritten with a warning.
        """
        return cls.load_or_fit(path, images, labels, on_mismatch, **kwargs)[0]

    @classmethod
    def load_or_fit(
        cls,
        path: str | os.PathLike[str],
        images: Tensor,
        labels: Tensor,
        on_mismatch: Literal["raise", "refit"] = "raise",
        **kwargs: Any,
    ) -> tuple[ClassStatistics, CacheStatus]:
        """:meth:`fit_cached` that also says what happened to the cache file: ``"reused"``,
        ``"fitted"`` (there was none) or ``"refitted"`` (it did not match; with
        ``on_mismatch="refit"`` only)."""
        fresh = cls(**kwargs)
        path = Path(path)
        status: CacheStatus = "fitted"
        if path.exists():
            cached = cls.load(path)
            fp = data_fingerprint(images, labels)
            problems = []
            if cached.fingerprint != fp:
                problems.append(
                    f"it was fitted on other data (cached {cached.fingerprint}, now {fp})"
                )
            if cached.config() != fresh.config():
                problems.append(f"its settings {cached.config()} differ from {fresh.config()}")
            if not problems:
                return cached, "reused"
            msg = f"cached statistics {path} do not match: " + "; ".join(problems)
            if on_mismatch != "refit":
                raise UserError(msg + ". Delete the file or pass on_mismatch='refit'.")
            warnings.warn(msg + "; refitting", stacklevel=3)
            status = "refitted"
        fresh.fit(images, labels)
        fresh.save(path)
        return fresh, status


@INITS.register("class_gaussian", alias="gaussian", fitted=True, cached=True)
class ClassGaussianInit(ClassStatistics):
    """x0 = clip01(mu_y + Sigma_y^{1/2} z), z ~ N(0, I), Sigma_y the class covariance.

    Full covariance (all eigenpairs) when D <= ``max_full_dim`` and n > D; otherwise the top
    ``rank`` eigenpairs plus a diagonal holding the rest of each pixel's variance, so the
    marginal pixel variances are still exact.
    """

    name: ClassVar[str] = "class_gaussian"

    def __init__(self, max_full_dim: int = 4096, rank: int = 256, clip: bool = True) -> None:
        super().__init__()
        if rank < 1 or max_full_dim < 1:
            raise UserError(f"rank and max_full_dim must be >= 1; got {rank}, {max_full_dim}")
        self.max_full_dim = int(max_full_dim)
        self.rank = int(rank)
        self.clip = bool(clip)

    def config(self) -> dict[str, Any]:
        return {
            "init": self.name,
            "max_full_dim": self.max_full_dim,
            "rank": self.rank,
            "clip": self.clip,
        }

    def _fit_class(self, xc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, d = xc.shape
        if d <= self.max_full_dim and n > d:
            lam, comps = _spectrum(xc, None)
            return lam, comps, torch.zeros(d, dtype=xc.dtype)
        lam, comps = _spectrum(xc, self.rank)
        pixel_var = xc.square().sum(0) / (n - 1)
        resid = (pixel_var - (comps.square() * lam[:, None]).sum(0)).clamp(min=0)
        return lam, comps, resid

    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor:
        self._check_fitted(y)
        assert self.shape is not None
        out = torch.empty((y.shape[0], math.prod(self.shape)))
        for c, pos in _by_class(y):
            lam, comps = self.eigenvalues[c], self.components[c]
            z = _randn(pos, len(lam), generator).double()
            x = self.mean[c] + (z * lam.double().sqrt()) @ comps.double()
            if bool((self.residual_var[c] > 0).any()):
                x += _randn(pos, x.shape[1], generator) * self.residual_var[c].sqrt()
            out[pos] = x.float()
        out = out.view(-1, *self.shape)
        return out.clamp_(0.0, 1.0) if self.clip else out


@INITS.register("class_pca", alias="pca", fitted=True, cached=True)
class ClassPCAInit(ClassStatistics):
    """Class-wise PCA init (the papers' method; docs/science.md#sgld-initialisations):

        x0 = clip01(mu_y + sum_{i<=k} s_i z_i sigma U_i),   z_i ~ N(0, 1),

    U_i the class's principal directions, s_i = sqrt((n-1) lambda_i) their singular values
    (so sigma's effect grows with sqrt(n)), k the smallest count whose retained variance reaches
    ``variance`` (default 0.95), or exactly ``n_components`` when given. (The published eval
    divides the target by 100 and so keeps no component; we do not.)

    ``component_rule='below'`` reproduces the published rule instead: the largest k whose
    cumulative share stays strictly below the target (one component fewer; zero when the first
    component alone reaches it). Our 'reach' keeps the target it names.

    Args:
        variance: retained-variance target in (0, 1].
        n_components: fixed k instead of the variance target.
        component_rule: 'reach' (default) or 'below' (published), see above.
        sigma: scale sigma_pca (default 0.005).
        max_components: cap on k; also the randomized-SVD size when D and n are both > 4096.
    """

    name: ClassVar[str] = "class_pca"

    def __init__(
        self,
        variance: float = 0.95,
        n_components: int | None = None,
        sigma: float = 0.005,
        max_components: int = 1024,
        component_rule: str = "reach",
    ) -> None:
        super().__init__()
        if component_rule not in ("reach", "below"):
            raise UserError(f"component_rule must be 'reach' or 'below'; got {component_rule!r}")
        self.component_rule = component_rule
        if not 0 < variance <= 1:
            raise UserError(
                f"variance must be in (0, 1] (a share, not a percentage); got {variance}"
            )
        if n_components is not None and n_components < 1:
            raise UserError(f"n_components must be >= 1; got {n_components}")
        if not sigma >= 0:
            raise UserError(f"sigma must be >= 0; got {sigma}")
        self.variance = float(variance)
        self.n_components = None if n_components is None else int(n_components)
        self.sigma = float(sigma)
        self.max_components = int(max_components)

    def config(self) -> dict[str, Any]:
        return {
            "init": self.name,
            "variance": self.variance,
            "n_components": self.n_components,
            "sigma": self.sigma,
            "max_components": self.max_components,
            "component_rule": self.component_rule,
        }

    def _fit_class(self, xc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, d = xc.shape
        lam, comps = _spectrum(xc, self.max_components)
        if self.n_components is not None:
            k = min(self.n_components, len(lam))
        else:
            total = xc.square().sum() / (n - 1)
            share = lam.cumsum(0) / total
            reached = (share >= self.variance - 1e-12).nonzero()
            if self.component_rule == "below":
                k = int((share < self.variance).sum())  # share is increasing
            elif len(reached) == 0:
                warnings.warn(
                    f"PCA: {len(lam)} components keep {float(share[-1]):.3f} of the variance, "
                    f"below the target {self.variance}; raise max_components",
                    stacklevel=3,
                )
                k = len(lam)
            else:
                k = int(reached[0]) + 1
        return lam[:k], comps[:k], torch.zeros(d, dtype=xc.dtype)

    def singular_values(self, c: int) -> Tensor:
        """s_i = sqrt((n-1) lambda_i) of class ``c``, shape (k,)."""
        return (self.eigenvalues[c] * (self.counts[c] - 1)).sqrt()

    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor:
        self._check_fitted(y)
        assert self.shape is not None
        out = torch.empty((y.shape[0], math.prod(self.shape)))
        for c, pos in _by_class(y):
            s = self.singular_values(c)
            z = _randn(pos, len(s), generator).double()
            x = self.mean[c] + (z * (s.double() * self.sigma)) @ self.components[c].double()
            out[pos] = x.float()
        return out.view(-1, *self.shape).clamp_(0.0, 1.0)


def make_init(name: str, **kwargs: Any) -> Any:
    """An unfitted initialiser by registered name (``class_pca``) or alias (``pca``)."""
    by_alias = INITS.names(alias=name)
    return INITS.get(by_alias[0] if by_alias else name)(**kwargs)
