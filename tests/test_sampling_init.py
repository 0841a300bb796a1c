"""Initialisations (uniform, class Gaussian, class PCA, noise injection), their disk cache, and
class-wise generation in batches."""

from __future__ import annotations

import warnings

import pytest
import torch

from robust_ebm.errors import CorruptDataError, UserError
from robust_ebm.models import create_model
from robust_ebm.sampling import (
    SGLD,
    ClassGaussianInit,
    ClassPCAInit,
    NoiseInjectionInit,
    UniformInit,
    data_fingerprint,
    generate,
    sample_classes,
    save_grid,
)


def _toy_data(n_per_class: int = 300, shape=(1, 6, 6), classes: int = 3, seed: int = 0):
    """Images in about [0.2, 0.8]: a class mean plus low-rank structure plus small noise."""
    g = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    xs, ys = [], []
    for c in range(classes):
        mean = 0.3 + 0.4 * torch.rand(d, generator=g)
        basis = torch.randn(3, d, generator=g) * 0.03
        z = torch.randn(n_per_class, 3, generator=g)
        x = mean + z @ basis + 0.005 * torch.randn(n_per_class, d, generator=g)
        xs.append(x.clamp(0, 1).view(-1, *shape))
        ys.append(torch.full((n_per_class,), c))
    return torch.cat(xs), torch.cat(ys)


def test_uniform_init() -> None:
    x = UniformInit((1, 4, 4)).sample(torch.tensor([0, 1, 2]), torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 4, 4) and x.min() >= 0 and x.max() <= 1


def test_pca_keeps_stated_variance_with_fewest_components() -> None:
    images, labels = _toy_data()
    pca = ClassPCAInit(variance=0.9).fit(images, labels)
    for c, share in pca.retained_variance().items():
        assert share >= 0.9
        k = len(pca.eigenvalues[c])
        fewer = float(pca.eigenvalues[c][: k - 1].sum()) / pca.total_var[c]
        assert fewer < 0.9  # k is the smallest count that reaches the target
        # singular values s_i = sqrt((n-1) lambda_i)
        torch.testing.assert_close(
            pca.singular_values(c).square() / (pca.counts[c] - 1), pca.eigenvalues[c]
        )


def test_pca_n_components_overrides_target() -> None:
    images, labels = _toy_data()
    pca = ClassPCAInit(n_components=2).fit(images, labels)
    assert all(len(v) == 2 for v in pca.eigenvalues.values())


def test_pca_samples_have_class_mean_and_stated_spread() -> None:
    images, labels = _toy_data()
    pca = ClassPCAInit(variance=0.95, sigma=0.005).fit(images, labels)
    y = torch.full((4000,), 1)
    x = pca.sample(y, torch.Generator().manual_seed(0)).flatten(1).double()
    mean = images[labels == 1].flatten(1).double().mean(0)
    s1 = float(pca.singular_values(1)[0]) * 0.005
    # the mean of 4000 draws is within 4 standard errors of mu_y in every pixel
    assert (x.mean(0) - mean).abs().max() < 4 * s1 / 4000**0.5 + 1e-6
    # the spread along the first principal direction is s_1 * sigma
    proj = (x - mean) @ pca.components[1][0].double()
    assert float(proj.std()) == pytest.approx(s1, rel=0.05)


def test_pca_rejects_percentage() -> None:
    with pytest.raises(UserError, match="share"):
        ClassPCAInit(variance=95)


@pytest.mark.parametrize("max_full_dim", [4096, 10])  # full covariance; low rank + diagonal
def test_class_gaussian_matches_data_moments(max_full_dim: int) -> None:
    images, labels = _toy_data(n_per_class=400)
    gauss = ClassGaussianInit(max_full_dim=max_full_dim, rank=3).fit(images, labels)
    data = images[labels == 2].flatten(1).double()
    x = gauss.sample(torch.full((20000,), 2), torch.Generator().manual_seed(1)).flatten(1).double()
    assert (x.mean(0) - data.mean(0)).abs().max() < 3e-3
    # pixel variances are exact in both modes (the diagonal carries the rest)
    torch.testing.assert_close(x.var(0), data.var(0), rtol=0.08, atol=1e-6)
    if max_full_dim > 36:
        torch.testing.assert_close(torch.cov(x.T), torch.cov(data.T), rtol=0, atol=2e-4)
        assert len(gauss.eigenvalues[2]) == 36


def test_uint8_and_float_inputs_agree() -> None:
    images, labels = _toy_data()
    u8 = (images * 255).round().to(torch.uint8)
    a = ClassPCAInit().fit(u8, labels)
    b = ClassPCAInit().fit(u8.float() / 255, labels)
    torch.testing.assert_close(a.mean[0], b.mean[0])


def test_noise_injection_picks_an_image_of_the_class() -> None:
    images, labels = _toy_data(n_per_class=5)
    init = NoiseInjectionInit(noise_std=0.0).fit(images, labels)
    x = init.sample(torch.tensor([2, 2, 0]), torch.Generator().manual_seed(0))
    for xi, c in zip(x, [2, 2, 0]):
        assert any(torch.equal(xi, img) for img in images[labels == c])
    noisy = NoiseInjectionInit(0.5).fit(images, labels).sample(torch.tensor([1] * 50))
    assert noisy.min() >= 0 and noisy.max() <= 1 and (noisy - images[5]).abs().mean() > 0.2


def test_unfitted_and_unknown_class_raise() -> None:
    with pytest.raises(UserError, match="fit"):
        ClassPCAInit().sample(torch.tensor([0]))
    images, labels = _toy_data()
    with pytest.raises(UserError, match="classes"):
        ClassPCAInit().fit(images, labels).sample(torch.tensor([7]))


def test_sampling_is_deterministic_under_a_generator() -> None:
    images, labels = _toy_data()
    pca = ClassGaussianInit().fit(images, labels)
    y = torch.tensor([0, 1, 2, 0])
    a = pca.sample(y, torch.Generator().manual_seed(3))
    b = pca.sample(y, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_cache_roundtrip_and_fingerprint_mismatch(tmp_path) -> None:
    images, labels = _toy_data()
    path = tmp_path / "pca.safetensors"
    fitted = ClassPCAInit.fit_cached(path, images, labels, variance=0.9)
    assert path.exists()
    loaded = ClassPCAInit.fit_cached(path, images, labels, variance=0.9)
    assert loaded.fingerprint == data_fingerprint(images, labels)
    y = torch.tensor([0, 1, 2])
    assert torch.equal(
        fitted.sample(y, torch.Generator().manual_seed(0)),
        loaded.sample(y, torch.Generator().manual_seed(0)),
    )
    other = images.clone()
    other[0, 0, 0, 0] += 0.1  # pixel 0 is in the strided subset
    with pytest.raises(UserError, match="other data"):
        ClassPCAInit.fit_cached(path, other, labels, variance=0.9)
    with pytest.raises(UserError, match="settings"):
        ClassPCAInit.fit_cached(path, images, labels, variance=0.8)
    with pytest.warns(UserWarning, match="refitting"):
        ClassPCAInit.fit_cached(path, other, labels, on_mismatch="refit", variance=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ClassPCAInit.fit_cached(path, other, labels, variance=0.9)
    assert again.fingerprint == data_fingerprint(other, labels)
    with pytest.raises(UserError, match="class_pca"):
        ClassGaussianInit.load(path)


def test_cache_status_is_explicit(tmp_path) -> None:
    """load_or_fit says what happened to the file: fitted, reused, refitted (with the warning)."""
    images, labels = _toy_data()
    path = tmp_path / "g.safetensors"
    assert ClassGaussianInit.load_or_fit(path, images, labels)[1] == "fitted"
    assert ClassGaussianInit.load_or_fit(path, images, labels)[1] == "reused"
    other = images.clone()
    other[0, 0, 0, 0] += 0.1
    with pytest.warns(UserWarning, match="refitting"):
        init, status = ClassGaussianInit.load_or_fit(path, other, labels, on_mismatch="refit")
    assert status == "refitted" and init.fingerprint == data_fingerprint(other, labels)
    assert ClassGaussianInit.load_or_fit(path, other, labels)[1] == "reused"


def test_corrupt_cache_raises(tmp_path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptDataError):
        ClassPCAInit.load(path)


def test_fingerprint_sees_label_changes() -> None:
    images, labels = _toy_data()
    assert data_fingerprint(images, labels) != data_fingerprint(images, labels.flip(0))


def test_generate_groups_by_class_and_is_repeatable(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1)
    images = (torch.rand(60, 1, 28, 28) * 255).to(torch.uint8)
    labels = torch.arange(60) % 3
    init = ClassPCAInit().fit(images, labels)
    sgld = SGLD(step_size=0.5, momentum=0.8, noise_std=0.01, steps=2)
    gen = generate(model, init, sgld, [2, 0], n_per_class=3, batch_size=4, seed=1)
    assert gen.x.shape == (6, 1, 28, 28) and gen.x0 is not None
    assert gen.y.tolist() == [2, 2, 2, 0, 0, 0]
    assert gen.energy_trajectory.shape == (3, 6)
    assert gen.config["sampler"]["momentum"] == 0.8 and gen.config["init"]["init"] == "class_pca"
    again = sample_classes(model, sgld, init, [2, 0], 3, batch_size=4, seed=1)
    assert torch.equal(gen.x, again.x) and again.x0 is None
    png = save_grid(tmp_path / "grid.png", gen.x, gen.y, title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("make", [lambda: ClassPCAInit(), lambda: ClassGaussianInit(rank=8, max_full_dim=16),
                                  lambda: NoiseInjectionInit(0.3), lambda: UniformInit((1, 28, 28))])
def test_seeded_chain_does_not_depend_on_the_request(make) -> None:
    """Chain (class c, index j) draws its x0 and noise from its own streams: asked alone, with
    other classes, at another batch size or position, it starts from the same x0, and with the
    same batches around it ends bit-identical; a class listed twice gets new chains."""
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1)
    images = (torch.rand(60, 1, 28, 28) * 255).to(torch.uint8)
    labels = torch.arange(60) % 3
    init = make()
    if hasattr(init, "fit"):
        init.fit(images, labels)
    sgld = SGLD(step_size=0.5, momentum=0.8, noise_std=0.01, steps=2)
    alone = sample_classes(model, sgld, init, [0], 5, batch_size=5, seed=1, keep_x0=True)
    mixed = sample_classes(model, sgld, init, [2, 0], 5, batch_size=5, seed=1, keep_x0=True)
    assert torch.equal(mixed.x0[5:], alone.x0) and torch.equal(mixed.x[5:], alone.x)
    odd = sample_classes(model, sgld, init, [1, 0, 2], 5, batch_size=3, seed=1, keep_x0=True)
    assert torch.equal(odd.x0[5:10], alone.x0)
    torch.testing.assert_close(odd.x[5:10], alone.x, atol=1e-6, rtol=0)
    twice = sample_classes(model, sgld, init, [0, 0], 5, batch_size=5, seed=1, keep_x0=True)
    assert torch.equal(twice.x[:5], alone.x) and not torch.equal(twice.x0[5:], alone.x0)
    other = sample_classes(model, sgld, init, [0], 5, batch_size=5, seed=2, keep_x0=True)
    assert not torch.equal(other.x0, alone.x0)


def test_a_registered_init_is_a_generate_choice_and_is_fitted(monkeypatch):
    """`generate --init` offers every registered initialisation (by alias) and build_init fits
    one whose ``fitted`` flag is set (docs/architecture.md, "A sampler initialisation")."""
    from robust_ebm.sampling import init as init_mod
    from robust_ebm.sampling.study import build_init, init_aliases

    class MeanInit:
        def fit(self, images, labels):
            self.mean = images.float().mean(0)
            return self

        def sample(self, y, generator=None):
            return self.mean.expand(len(y), *self.mean.shape).clone()

    monkeypatch.setitem(init_mod.INITS._entries, "class_mean_test", MeanInit)
    monkeypatch.setitem(init_mod.INITS._meta, "class_mean_test",
                        {"alias": "mean_test", "fitted": True, "cached": False})
    assert init_aliases()[:4] == ("pca", "gaussian", "uniform", "noise")
    assert "mean_test" in init_aliases()
    images, labels = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 0, 1, 0, 1])
    init, note = build_init("mean_test", images, labels, "toy")
    assert isinstance(init, MeanInit) and note == {}
    torch.testing.assert_close(init.sample(torch.tensor([0]))[0], images.mean(0))
    with pytest.raises(UserError, match="unknown init 'nope'"):
        build_init("nope", images, labels, "toy")
