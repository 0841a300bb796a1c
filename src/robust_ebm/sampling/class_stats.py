"""Fitted class-statistics starts for SGLD (arXiv 2304.04033, arXiv 2407.06315;
docs/science.md#sgld-initialisations): :class:`ClassStatistics` (per-class mean and leading
covariance spectrum, cached as safetensors), :class:`ClassGaussianInit`, :class:`ClassPCAInit`
(the papers' method) and :class:`PCAOrGaussianInit` (the published "informative+pca").
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ..errors import CorruptDataError, UserError
from ..io import atomic_write, read_tagged_safetensors
from .init_base import (
    INITS,
    CacheStatus,
    RandomSource,
    _by_class,
    _check_data,
    _randn,
    _uniform01,
    as_unit_float,
    data_fingerprint,
)

_FORMAT = "robust_ebm.class_statistics/1"
_EXACT_LIMIT = 4096  # largest Gram/covariance side we eigendecompose exactly


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

    def _prepare(self, x: Tensor) -> Tensor:
        """Images of one class (n, D) in [0, 1] -> what the statistics are fitted on."""
        return x

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
            x = self._prepare(as_unit_float(images.detach().cpu()[idx]).flatten(1))  # (n, D)
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
        tensors, meta = read_tagged_safetensors(path, _FORMAT, "class statistics")
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
    """x0 = clip01(mu_y + (Sigma_y + jitter I)^{1/2} z), z ~ N(0, I), Sigma_y the class
    covariance (divided by n - ddof).

    Full covariance (all eigenpairs) when D <= ``max_full_dim`` and n > D; otherwise the top
    ``rank`` eigenpairs plus a diagonal holding the rest of each pixel's variance, so the
    marginal pixel variances are still exact.

    The published starts (docs/fidelity.md) use the covariance divided by n
    (``category_mean``): "informative" samples it and clips (``ddof=0``); ``sample_X0_center``
    adds 1e-4 I and does not clip (``ddof=0, jitter=1e-4, clip=False``).

    Args:
        jitter: variance added to every direction, pixel units squared (default 0).
        ddof: covariance divisor n - ddof: 1 (default, unbiased) or 0 (published).
    """

    name: ClassVar[str] = "class_gaussian"

    def __init__(self, max_full_dim: int = 4096, rank: int = 256, clip: bool = True,
                 jitter: float = 0.0, ddof: int = 1) -> None:
        super().__init__()
        if rank < 1 or max_full_dim < 1:
            raise UserError(f"rank and max_full_dim must be >= 1; got {rank}, {max_full_dim}")
        if not (math.isfinite(jitter) and jitter >= 0):
            raise UserError(f"jitter must be a finite variance >= 0; got {jitter}")
        if ddof not in (0, 1):
            raise UserError(f"ddof must be 0 (divide by n) or 1 (by n - 1); got {ddof}")
        self.max_full_dim = int(max_full_dim)
        self.rank = int(rank)
        self.clip = bool(clip)
        self.jitter = float(jitter)
        self.ddof = int(ddof)

    def config(self) -> dict[str, Any]:
        return {
            "init": self.name,
            "max_full_dim": self.max_full_dim,
            "rank": self.rank,
            "clip": self.clip,
            "jitter": self.jitter,
            "ddof": self.ddof,
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
        d = math.prod(self.shape)
        out = torch.empty((y.shape[0], d))
        for c, pos in _by_class(y):
            n = self.counts[c]
            scale = (n - 1) / (n - self.ddof)  # stored eigenvalues are divided by n - 1
            lam, comps = self.eigenvalues[c].double() * scale, self.components[c].double()
            resid = self.residual_var[c].double() * scale
            if self.jitter:
                if len(lam) == d:  # all directions: add it to every eigenvalue
                    lam = lam + self.jitter
                else:  # low rank plus diagonal: the diagonal takes it
                    resid = resid + self.jitter
            z = _randn(pos, len(lam), generator).double()
            x = self.mean[c] + (z * lam.sqrt()) @ comps
            if bool((resid > 0).any()):
                x += _randn(pos, x.shape[1], generator) * resid.sqrt()
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

    ``more_variance=False`` keeps the published "least dominant" set instead: of the top
    ``n_components`` components, the ten before the last (``components_[-11:-1]`` of
    scikit-learn's PCA); it needs ``n_components``, as the published option is only read
    when no variance target is given, and at least 12 of them (with fewer the slice holds the
    most dominant ones). ``blur`` > 0 blurs every image (scipy's
    ``gaussian_filter``, std ``blur`` pixels along height and width) before the fit, as the
    published ``gaussian_blur``; ``blur_layout='published'`` reproduces its exact filter: the
    CHW pixel vector read as an (H, W, C) array and filtered with sigma (blur, blur, 1), which
    for C = 3 mixes the wrong pixels (identical to 'spatial' for one channel).

    Args:
        variance: retained-variance target in (0, 1].
        n_components: fixed k instead of the variance target.
        component_rule: 'reach' (default) or 'below' (published), see above.
        sigma: scale sigma_pca (default 0.005).
        max_components: cap on k; also the randomized-SVD size when D and n are both > 4096.
        more_variance: False: the published least-dominant components, see above.
        blur: std of the Gaussian blur before the fit, pixels (0: none).
        blur_layout: 'spatial' (default: each channel blurred over H, W) or 'published'.
    """

    name: ClassVar[str] = "class_pca"

    def __init__(
        self,
        variance: float = 0.95,
        n_components: int | None = None,
        sigma: float = 0.005,
        max_components: int = 1024,
        component_rule: str = "reach",
        more_variance: bool = True,
        blur: float = 0.0,
        blur_layout: str = "spatial",
    ) -> None:
        super().__init__()
        if not more_variance and n_components is None:
            raise UserError("more_variance=False (the published least-dominant components) "
                            "needs n_components, the count they are taken from")
        if not more_variance and n_components is not None and n_components < 12:
            raise UserError(f"more_variance=False takes components [-11:-1] of the top "
                            f"n_components, which are the least dominant only for "
                            f"n_components >= 12; got {n_components}")
        if not (math.isfinite(blur) and blur >= 0):
            raise UserError(f"blur must be a finite std >= 0 in pixels; got {blur}")
        if blur_layout not in ("spatial", "published"):
            raise UserError(f"blur_layout must be 'spatial' or 'published'; got {blur_layout!r}")
        self.more_variance = bool(more_variance)
        self.blur = float(blur)
        self.blur_layout = blur_layout
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
            "more_variance": self.more_variance,
            "blur": self.blur,
            "blur_layout": self.blur_layout,
        }

    def _prepare(self, x: Tensor) -> Tensor:
        if self.blur == 0:
            return x
        assert self.shape is not None
        return blur_images(x, self.shape, self.blur, self.blur_layout)

    def _fit_class(self, xc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, d = xc.shape
        lam, comps = _spectrum(xc, self.max_components)
        if not self.more_variance:
            assert self.n_components is not None
            k = min(self.n_components, len(lam))
            if k < 12:
                raise UserError(f"the published least-dominant components need >= 12 "
                                f"components per class; a class here has {k}")
            zeros = torch.zeros(d, dtype=xc.dtype)
            return lam[:k][-11:-1], comps[:k][-11:-1], zeros  # the published slice
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


@INITS.register("pca_or_gaussian", alias="pca_gaussian", fitted=True, cached=False)
class PCAOrGaussianInit:
    """Per chain, a coin with P(pca) = ``p_pca`` picks a :class:`ClassPCAInit` start, else a
    :class:`ClassGaussianInit` one: the published "informative+pca" (a fair coin between
    ``sample_x0_pca`` and the "informative" Gaussian; its PCA target defaults to 0.8 there).

    Each chain draws its coin, then its PCA start, then its Gaussian start, all from its own
    stream, so its x0 does not depend on the batch. Statistics are fitted by :meth:`fit` or
    given already fitted (the CLI reuses the cached ones).
    """

    name: ClassVar[str] = "pca_or_gaussian"

    def __init__(self, pca: ClassPCAInit | None = None,
                 gaussian: ClassGaussianInit | None = None, p_pca: float = 0.5) -> None:
        if not 0 <= p_pca <= 1:
            raise UserError(f"p_pca must be a probability in [0, 1]; got {p_pca}")
        self.pca = pca if pca is not None else ClassPCAInit()
        self.gaussian = gaussian if gaussian is not None else ClassGaussianInit()
        self.p_pca = float(p_pca)

    def fit(self, images: Tensor, labels: Tensor) -> PCAOrGaussianInit:
        self.pca.fit(images, labels)
        self.gaussian.fit(images, labels)
        return self

    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor:
        coin = _uniform01(torch.arange(y.shape[0]), generator) < self.p_pca
        x_pca = self.pca.sample(y, generator)
        x_gauss = self.gaussian.sample(y, generator)
        return torch.where(coin.view(-1, 1, 1, 1), x_pca, x_gauss)

    def config(self) -> dict[str, Any]:
        return {"init": self.name, "p_pca": self.p_pca, "pca": self.pca.config(),
                "gaussian": self.gaussian.config()}



def blur_images(x: Tensor, shape: tuple[int, ...], sigma: float,
                layout: str = "spatial") -> Tensor:
    """Gaussian blur of flattened images ``x`` (n, C*H*W) with scipy's ``gaussian_filter``
    (std ``sigma`` pixels, its default 'reflect' border and 4-sigma kernel); returns (n, D) in
    x's dtype. ``layout='spatial'`` filters each channel over (H, W); 'published' reads each
    pixel vector as an (H, W, C) array and filters with sigma (sigma, sigma, 1), as the
    published ``sample_x0_pca`` does with CHW data."""
    from scipy.ndimage import gaussian_filter

    c, h, w = shape
    arr = x.detach().cpu().numpy()
    if layout == "spatial":
        out = gaussian_filter(arr.reshape(-1, c, h, w), sigma=(0, 0, sigma, sigma))
    else:
        out = gaussian_filter(arr.reshape(-1, h, w, c), sigma=(0, sigma, sigma, 1))
    return torch.from_numpy(out.reshape(x.shape[0], -1)).to(x.dtype)


