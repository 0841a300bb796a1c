"""Starting points x_0 for SGLD (arXiv 2304.04033; docs/science.md#sgld-initialisations).

Every initialiser has ``sample(y, generator) -> x0``: ``y`` (N,) class indices, ``x0``
(N, C, H, W) float32 images in [0, 1] on the CPU (the caller moves them; sampling on the CPU keeps
a seed's result independent of the device). ``generator`` is a ``torch.Generator`` (draws
depend on the whole batch), or CPU :class:`~robust_ebm.attacks.streams.SampleStreams`, one
stream per row of ``y`` (row i draws only from stream i: its x0 is the same in any batch;
:func:`robust_ebm.sampling.generate.sample_classes` keys them by chain), or None (global RNG).

* :class:`UniformInit`: U[low, high) pixels, U[0,1] by default (JEM-style; gives
  adversarial-pattern garbage). :class:`NormalInit`: N(mean, std^2) pixels.
* :class:`ClassGaussianInit`: N(mu_y, Sigma_y) fitted per class; full covariance when D is small
  enough (D <= ``max_full_dim`` and n > D), else top-``rank`` eigenvectors plus a diagonal.
* :class:`ClassPCAInit`: the papers' method, x_0 = mu_y + sum_{i<=k} s_i z_i sigma U_i.
* :class:`NoiseInjectionInit`: a real image of the class plus strong Gaussian noise.
* :class:`PCAOrGaussianInit`: per chain, a coin picks a class_pca or a class_gaussian start.
* :class:`BufferInit`: a sample of the class from an earlier run (a replay buffer, persistent
  chains), restarted from another init with probability ``reinit_freq``.

The published generation code's variants (docs/fidelity.md) are options of these classes.

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

from ..attacks.streams import SampleStreams, integer_keys
from ..errors import CorruptDataError, UserError
from ..io import atomic_write
from ..registry import Registry

__all__ = [
    "INITS",
    "BufferInit",
    "ChainStreams",
    "ClassGaussianInit",
    "ClassPCAInit",
    "ClassStatistics",
    "Init",
    "NoiseInjectionInit",
    "NormalInit",
    "PCAOrGaussianInit",
    "UniformInit",
    "as_unit_float",
    "blur_images",
    "data_fingerprint",
    "load_buffer",
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


@dataclass
class ChainStreams(SampleStreams):
    """:class:`SampleStreams` of SGLD chains that also know each row's chain id (class in the
    high 32 bits, the chain's index j within its class in the low ones:
    :func:`robust_ebm.sampling.generate.chain_ids`), for inits that pick by index."""

    ids: Tensor | None = None

    @classmethod
    def for_chains(cls, ids: Tensor, seed: int | None) -> ChainStreams:
        """Streams keyed by (seed, ids_i) exactly as :meth:`SampleStreams.for_ids`."""
        key, key2 = integer_keys(ids, seed)
        return cls(key, key2, torch.zeros_like(key, dtype=torch.int64),
                   ids.detach().cpu().long())


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


def _uniform01(rows: Tensor, source: RandomSource) -> Tensor:
    """(len(rows),) float64 uniforms on [0, 1), one per row (from its own stream if given)."""
    if isinstance(source, SampleStreams):
        return source.uniform(rows, (1,), torch.float64).cpu().squeeze(1)
    return torch.rand(len(rows), generator=source, dtype=torch.float64)


def _index_in_class(y: Tensor, source: RandomSource) -> Tensor:
    """(N,) int64 index of each row among the chains of its class: the chain's own index j
    when ``source`` is :class:`ChainStreams` (the same in any batch), else its position among
    the rows of its class in this batch (a counter restarting at 0 in every batch, as the
    published code does)."""
    ids = getattr(source, "ids", None)
    if ids is not None:
        return ids & 0xFFFFFFFF
    out = torch.empty(y.shape[0], dtype=torch.long)
    for _, pos in _by_class(y):
        out[pos] = torch.arange(len(pos))
    return out


def _by_class(y: Tensor) -> list[tuple[int, Tensor]]:
    """(class, positions in y) for each class present, in increasing class order."""
    y = y.detach().cpu().long()
    return [(int(c), (y == c).nonzero().squeeze(1)) for c in torch.unique(y)]


@INITS.register("uniform", alias="uniform", fitted=False, cached=False)
@dataclass(frozen=True)
class UniformInit:
    """x0 ~ U[low, high)^(C,H,W), ignoring the class; U[0, 1) by default.

    The published ``random_initialization`` (``noise_distribution='uniform'``) draws
    ``uniform_(mean, std)``, i.e. U[mean, std), unclipped: ``low=mean, high=std``.
    """

    shape: tuple[int, int, int]
    low: float = 0.0
    high: float = 1.0
    name: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise UserError(f"uniform init: need finite low < high; got {self.low}, {self.high}")

    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor:
        if isinstance(generator, SampleStreams):
            rows = torch.arange(y.shape[0])
            u = generator.uniform(rows, self.shape, torch.float32).cpu()
        else:
            u = torch.rand((y.shape[0], *self.shape), generator=generator)
        if (self.low, self.high) == (0.0, 1.0):
            return u
        return u.mul_(self.high - self.low).add_(self.low)

    def config(self) -> dict[str, Any]:
        return {"init": self.name, "shape": list(self.shape), "low": self.low, "high": self.high}


@INITS.register("normal", alias="normal", fitted=False, cached=False)
@dataclass(frozen=True)
class NormalInit:
    """x0 ~ N(mean, std^2)^(C,H,W), ignoring the class; not clipped unless ``clip``.

    The published ``random_initialization(noise_distribution='normal')`` draws
    ``normal_(mean, std)`` (defaults 0 and 1) and does not clip: the defaults here.
    """

    shape: tuple[int, int, int]
    mean: float = 0.0
    std: float = 1.0
    clip: bool = False
    name: ClassVar[str] = "normal"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std >= 0):
            raise UserError(f"normal init: need a finite mean and std >= 0; got "
                            f"{self.mean}, {self.std}")

    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor:
        size = math.prod(self.shape)
        x = _randn(torch.arange(y.shape[0]), size, generator).view(-1, *self.shape)
        x = x.mul_(self.std).add_(self.mean)
        return x.clamp_(0.0, 1.0) if self.clip else x

    def config(self) -> dict[str, Any]:
        return {"init": self.name, "shape": list(self.shape), "mean": self.mean,
                "std": self.std, "clip": self.clip}


@INITS.register("noise_injection", alias="noise", fitted=True, cached=False)
class NoiseInjectionInit:
    """x0 = clip01(x_real + noise_std * N(0, I)), x_real an image of class y.

    The published ``noise_injection_initialization`` (docs/fidelity.md) takes the first 1000
    test images, gives the i-th chain of a class the i-th image of that class among them and
    adds noise of std alpha * eps (alpha 50 and eps 8/255 as ``get_init_images`` calls it,
    about 1.57): ``NoiseInjectionInit(noise_std=50 * 8 / 255, pick="ordered", pool=1000)``
    fitted on the test split.

    Args:
        noise_std: standard deviation of the added noise, pixel units (0.5: strong, the image
            is barely visible; the sampler has to rebuild it).
        pick: 'random' (default): a uniformly drawn image of the class, from the chain's own
            stream; 'ordered': chain j of the class takes its j-th image (j is the chain's
            index within its class under :class:`ChainStreams`, else its position in the batch,
            as published); more chains than images is an error.
        pool: keep only the first ``pool`` images given to :meth:`fit` (None: all).
    """

    name: ClassVar[str] = "noise_injection"

    def __init__(self, noise_std: float = 0.5, pick: str = "random",
                 pool: int | None = None) -> None:
        if not noise_std >= 0:
            raise UserError(f"noise_std must be >= 0; got {noise_std}")
        if pick not in ("random", "ordered"):
            raise UserError(f"pick must be 'random' or 'ordered'; got {pick!r}")
        if pool is not None and pool < 1:
            raise UserError(f"pool must be >= 1 images; got {pool}")
        self.noise_std = float(noise_std)
        self.pick = pick
        self.pool = None if pool is None else int(pool)
        self.images: dict[int, Tensor] = {}

    def fit(self, images: Tensor, labels: Tensor) -> NoiseInjectionInit:
        _check_data(images, labels)
        images, labels = images.detach().cpu(), labels.detach().cpu().long()
        if self.pool is not None:
            images, labels = images[: self.pool], labels[: self.pool]
        self.images = {c: images[idx] for c, idx in _by_class(labels)}
        return self

    def _pick(self, c: int, pos: Tensor, y: Tensor, generator: RandomSource) -> Tensor:
        pool = self.images[c]
        if self.pick == "ordered":
            pick = _index_in_class(y, generator)[pos]
            if int(pick.max()) >= len(pool):
                raise UserError(
                    f"noise init, pick 'ordered': chain {int(pick.max())} of class {c} needs "
                    f"that many images but the pool holds {len(pool)}; ask for fewer samples "
                    "per class, a larger pool, or pick 'random'")
        elif isinstance(generator, SampleStreams):
            pick = generator.integers(pos, 0, len(pool)).cpu()
        else:
            pick = torch.randint(len(pool), (len(pos),), generator=generator)
        return as_unit_float(pool[pick])

    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor:
        if not self.images:
            raise UserError("NoiseInjectionInit: call fit(images, labels) before sample()")
        shape = next(iter(self.images.values())).shape[1:]
        out = torch.empty((y.shape[0], *shape))
        for c, pos in _by_class(y):
            if c not in self.images:
                raise UserError(f"class {c} was not in the data given to fit()")
            out[pos] = self._pick(c, pos, y, generator)
        noise = _randn(torch.arange(len(out)), out[0].numel(), generator).view(out.shape)
        out.add_(noise, alpha=self.noise_std)
        return out.clamp_(0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"init": self.name, "noise_std": self.noise_std, "pick": self.pick,
                "pool": self.pool}


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
    when no variance target is given. ``blur`` > 0 blurs every image (scipy's
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


def load_buffer(path: str | os.PathLike[str]) -> tuple[Tensor, Tensor]:
    """Samples ``x`` (M, C, H, W) and classes ``y`` (M,) of a ``samples.npz`` written by
    ``robust-ebm generate``, read without unpickling; x as float32 in [0, 1].

    Raises:
        UserError: a missing or unreadable file, or one without x/y of the expected form.
    """
    import zipfile

    import numpy as np

    where = f"buffer {path}"
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise UserError(f"{where}: needs arrays 'x' and 'y' (a samples.npz of "
                                f"robust-ebm generate); it holds {sorted(data.files)}")
            x, y = data["x"], data["y"]
    except FileNotFoundError:
        raise UserError(f"{where}: file not found") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{where}: not a readable .npz without pickles ({exc})") from None
    if x.ndim != 4 or x.shape[0] == 0:
        raise UserError(f"{where}: x must have shape (M, C, H, W) with M >= 1; got {x.shape}")
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise UserError(f"{where}: y must be ({x.shape[0]},) integers; got {y.shape} {y.dtype}")
    if y.size and int(y.min()) < 0:
        raise UserError(f"{where}: y has negative classes")
    if x.dtype == np.uint8:
        xt = torch.from_numpy(x.copy()).float().div_(255.0)
    elif x.dtype.kind == "f" and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1:
        xt = torch.from_numpy(x.astype(np.float32))
    else:
        raise UserError(f"{where}: x must be uint8, or float in [0, 1]; got {x.dtype}")
    return xt, torch.from_numpy(y.astype(np.int64))


@INITS.register("buffer", alias="buffer", fitted=False, cached=False)
class BufferInit:
    """A replay buffer (persistent chains, as JEM): x0 of a chain of class c is a sample of
    class c from an earlier run's ``samples.npz``, except with probability ``reinit_freq``
    (JEM's 0.05 by default), where it restarts from ``reinit``.

    (The published generation code's buffer path returns no starting point at all:
    ``get_init_images`` returns two empty lists whenever the buffer is not empty.)

    Each chain draws its coin, its buffer index and its ``reinit`` start from its own stream,
    so its x0 does not depend on the batch.

    Args:
        x, y: the buffer, (M, C, H, W) in [0, 1] and (M,) classes (:func:`load_buffer`).
        reinit: the init of restarted chains (None: U[0, 1] as JEM).
        reinit_freq: probability of a restart, in [0, 1].
        pick: 'random' (a uniformly drawn sample of the class) or 'chain' (chain j takes the
            class's j-th sample, modulo their count: chain j continues chain j).
        source: where the buffer came from, recorded in :meth:`config`.
    """

    name: ClassVar[str] = "buffer"

    def __init__(self, x: Tensor, y: Tensor, reinit: Init | None = None,
                 reinit_freq: float = 0.05, pick: str = "random", source: str = "") -> None:
        if not 0 <= reinit_freq <= 1:
            raise UserError(f"reinit_freq must be a probability in [0, 1]; got {reinit_freq}")
        if pick not in ("random", "chain"):
            raise UserError(f"pick must be 'random' or 'chain'; got {pick!r}")
        if x.dim() != 4 or y.shape != (x.shape[0],) or x.shape[0] == 0:
            raise UserError(f"buffer must be (M, C, H, W) images and (M,) classes, M >= 1; "
                            f"got {tuple(x.shape)}, {tuple(y.shape)}")
        self.x, self.y = x.detach().cpu().float(), y.detach().cpu().long()
        shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        self.reinit: Init = reinit if reinit is not None else UniformInit(shape)
        self.reinit_freq = float(reinit_freq)
        self.pick = pick
        self.source = source
        self.by_class = {c: idx for c, idx in _by_class(self.y)}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> BufferInit:
        x, y = load_buffer(path)
        return cls(x, y, source=str(path), **kwargs)

    def missing(self, classes: Any) -> list[int]:
        """Classes among ``classes`` the buffer has no sample of."""
        return sorted({int(c) for c in classes} - set(self.by_class))

    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor:
        rows = torch.arange(y.shape[0])
        restart = _uniform01(rows, generator) < self.reinit_freq
        out = torch.empty((y.shape[0], *self.x.shape[1:]))
        j = _index_in_class(y, generator) if self.pick == "chain" else None
        for c, pos in _by_class(y):
            if c not in self.by_class:
                if bool(restart[pos].all()):
                    continue
                raise UserError(f"the buffer has no sample of class {c}; generate it first "
                                "or use another init")
            pool = self.by_class[c]
            if j is not None:
                k = j[pos] % len(pool)
            elif isinstance(generator, SampleStreams):
                k = generator.integers(pos, 0, len(pool)).cpu()
            else:
                k = torch.randint(len(pool), (len(pos),), generator=generator)
            out[pos] = self.x[pool[k]]
        fresh = self.reinit.sample(y, generator)
        return torch.where(restart.view(-1, 1, 1, 1), fresh, out)

    def config(self) -> dict[str, Any]:
        reinit = self.reinit.config() if hasattr(self.reinit, "config") else str(self.reinit)
        return {"init": self.name, "source": self.source, "size": int(self.x.shape[0]),
                "reinit_freq": self.reinit_freq, "pick": self.pick, "reinit": reinit}


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


def make_init(name: str, **kwargs: Any) -> Any:
    """An unfitted initialiser by registered name (``class_pca``) or alias (``pca``)."""
    by_alias = INITS.names(alias=name)
    return INITS.get(by_alias[0] if by_alias else name)(**kwargs)
