"""The published generation code's starting points (docs/fidelity.md), each against a reference
written from the published procedure (OmnAI-Lab/Robust-Classifiers-under-the-lens-of-EBM,
``image_generation/utils.py`` and ``utils_func.py``): same inputs and random numbers where they
can be shared, else statistical checks with fixed seeds. Also: a chain's x0 does not depend on
its batch, bad inputs are refused, and the CLI (replay-buffer round trip, ``--config`` keys)."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from conftest import run_main, write_tiny_npz
from scipy.ndimage import gaussian_filter
from sklearn.decomposition import PCA

from robust_ebm.errors import UserError
from robust_ebm.sampling import (
    BufferInit,
    ChainStreams,
    ClassGaussianInit,
    ClassPCAInit,
    NoiseInjectionInit,
    NormalInit,
    PCAOrGaussianInit,
    UniformInit,
    load_buffer,
)
from robust_ebm.sampling.generate import chain_ids
from robust_ebm.sampling.init import blur_images

main_mod = importlib.import_module("robust_ebm.cli.main")


def _spectral_data(n: int = 400, shape=(1, 4, 4), classes: int = 2, seed: int = 0):
    """Per class: mean + a random rotation of N(0, diag(0.05 * 0.85^i)), clipped; distinct
    eigenvalues, so principal components are identifiable up to sign."""
    g = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    xs, ys = [], []
    for c in range(classes):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        scales = 0.05 * 0.85 ** torch.arange(d, dtype=torch.float64)
        x = 0.5 + (torch.randn(n, d, generator=g, dtype=torch.float64) * scales) @ q.T
        xs.append(x.clamp(0, 1).float().view(-1, *shape))
        ys.append(torch.full((n,), c))
    return torch.cat(xs), torch.cat(ys)


# -- random: U(mean, std) and N(mean, std), unclipped ---------------------------------------------
def test_uniform_range_is_published_uniform_mean_std() -> None:
    shape, y = (3, 4, 4), torch.zeros(5, dtype=torch.long)
    ours = UniformInit(shape, low=-0.5, high=2.0).sample(y, torch.Generator().manual_seed(3))
    # published: torch.FloatTensor(B, C, H, W).uniform_(mean, std)
    ref = torch.empty(5, *shape).uniform_(-0.5, 2.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    assert ours.min() < 0 and ours.max() > 1  # not clipped


def test_normal_is_published_normal_unclipped() -> None:
    shape, y = (1, 5, 5), torch.zeros(6, dtype=torch.long)
    ours = NormalInit(shape, mean=0.2, std=0.7).sample(y, torch.Generator().manual_seed(4))
    z = torch.randn((6, 25), generator=torch.Generator().manual_seed(4)).view(6, *shape)
    torch.testing.assert_close(ours, 0.2 + 0.7 * z)  # normal_(mean, std): mean + std z
    assert ours.min() < 0 and ours.max() > 1
    clipped = NormalInit(shape, 0.2, 0.7, clip=True).sample(y, torch.Generator().manual_seed(4))
    torch.testing.assert_close(clipped, ours.clamp(0, 1))


# -- informative / center: per-class Gaussian over n (+ 1e-4 I) -----------------------------------
def _published_cov(x: torch.Tensor) -> torch.Tensor:
    """category_mean: sub.t() @ sub / len(imc)."""
    x = x.flatten(1).double()
    sub = x - x.mean(0)
    return sub.T @ sub / len(x)


@pytest.mark.parametrize("ddof", [0, 1])
def test_center_gaussian_covariance(ddof: int) -> None:
    images, labels = _spectral_data(n=20, shape=(1, 2, 2))  # small n: n vs n-1 is 5%
    init = ClassGaussianInit(jitter=1e-4, ddof=ddof, clip=False).fit(images, labels)
    x = init.sample(torch.full((200_000,), 1), torch.Generator().manual_seed(0)).flatten(1)
    emp = torch.cov(x.double().T)
    ref = _published_cov(images[labels == 1]) + 1e-4 * torch.eye(4, dtype=torch.float64)
    close = torch.allclose(emp, ref, atol=0.02 * float(ref.diagonal().max()), rtol=0)
    # ddof=0 is the published covariance; ddof=1 is larger by n/(n-1) = 1.053, detectably
    assert close is (ddof == 0)
    ratio = float(emp.diagonal().sum() / ref.diagonal().sum())
    assert ratio == pytest.approx(1.0 if ddof == 0 else 20 / 19, abs=0.012)


def test_gaussian_jitter_in_low_rank_path_goes_to_the_diagonal() -> None:
    images, labels = _spectral_data(n=300, shape=(1, 4, 4))
    init = ClassGaussianInit(max_full_dim=4, rank=3, jitter=1e-3, ddof=0, clip=False)
    init.fit(images, labels)
    x = init.sample(torch.full((100_000,), 0), torch.Generator().manual_seed(1)).flatten(1)
    ref = _published_cov(images[labels == 0]).diagonal() + 1e-3  # marginal variances exact
    torch.testing.assert_close(x.double().var(0), ref, rtol=0.03, atol=0)


def test_informative_clips() -> None:
    images, labels = _spectral_data(n=50)
    x = ClassGaussianInit(ddof=0).fit(images, labels).sample(
        torch.zeros(500, dtype=torch.long), torch.Generator().manual_seed(0))
    assert x.min() >= 0 and x.max() <= 1


# -- PCA: least-dominant components, blur ---------------------------------------------------------
def test_least_dominant_components_match_sklearn() -> None:
    images, labels = _spectral_data(n=400, shape=(1, 4, 4))
    k = 14
    init = ClassPCAInit(n_components=k, more_variance=False, sigma=0.5).fit(images, labels)
    y = torch.zeros(7, dtype=torch.long)
    ours = init.sample(y, torch.Generator().manual_seed(5)).flatten(1).double()
    xc = images[labels == 0].flatten(1).double().numpy()
    princ = PCA(n_components=k).fit(xc)
    pc = princ.components_[-11:-1]
    sv = princ.singular_values_[-11:-1]
    mine = init.components[0].double().numpy()
    dots = (mine * pc).sum(1)
    np.testing.assert_allclose(np.abs(dots), 1.0, atol=1e-5)
    np.testing.assert_allclose(init.singular_values(0).double().numpy(), sv, rtol=1e-5)
    # the published draw with our z: mu + (s * z * sigma) @ PC, clipped
    z = torch.randn((7, len(sv)), generator=torch.Generator().manual_seed(5)).double().numpy()
    ref = np.clip(princ.mean_ + (sv * z * 0.5) @ (pc * np.sign(dots)[:, None]), 0, 1)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("layout", ["spatial", "published"])
def test_blur_against_scipy_per_image(layout: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3 * 6 * 7, generator=g, dtype=torch.float64)
    ours = blur_images(x, (3, 6, 7), 1.3, layout)
    for i in range(5):
        if layout == "spatial":
            ref = gaussian_filter(x[i].view(3, 6, 7).numpy(), sigma=(0, 1.3, 1.3)).ravel()
        else:  # el.view(img_size, img_size, n_channels), sigma (b, b, 1), flattened back
            ref = gaussian_filter(x[i].view(6, 7, 3).numpy(), sigma=(1.3, 1.3, 1)).ravel()
        np.testing.assert_allclose(ours[i].numpy(), ref, atol=1e-12)
    other = blur_images(x, (3, 6, 7), 1.3, "published" if layout == "spatial" else "spatial")
    assert (ours - other).abs().max() > 1e-3  # the two layouts differ for 3 channels


def test_blur_layouts_agree_for_one_channel_and_pca_fits_blurred_images() -> None:
    images, labels = _spectral_data(n=100, shape=(1, 4, 4))
    flat = images.flatten(1).double()
    torch.testing.assert_close(blur_images(flat, (1, 4, 4), 0.8, "spatial"),
                               blur_images(flat, (1, 4, 4), 0.8, "published"))
    init = ClassPCAInit(blur=0.8).fit(images, labels)
    ref = np.stack([gaussian_filter(im[0].numpy().astype(np.float64), 0.8).ravel()
                    for im in images[labels == 1]])
    np.testing.assert_allclose(init.mean[1].numpy(), ref.mean(0), atol=1e-6)


# -- informative+pca: a fair coin per chain ---------------------------------------------------------
def test_mixture_is_coin_then_pca_then_gaussian_on_the_same_streams() -> None:
    images, labels = _spectral_data(n=100)
    mix = PCAOrGaussianInit(ClassPCAInit(variance=0.8), ClassGaussianInit(), p_pca=0.5)
    mix.fit(images, labels)
    ids = chain_ids([0, 1], 50)
    y = ids >> 32
    ours = mix.sample(y, ChainStreams.for_chains(ids, 11))
    s = ChainStreams.for_chains(ids, 11)
    coin = s.uniform(torch.arange(100), (1,), torch.float64).squeeze(1) < 0.5
    ref = torch.where(coin.view(-1, 1, 1, 1), mix.pca.sample(y, s), mix.gaussian.sample(y, s))
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_mixture_coin_frequency(p: float) -> None:
    images, labels = _spectral_data(n=100)
    mix = PCAOrGaussianInit(ClassPCAInit(sigma=0.0), ClassGaussianInit(), p_pca=p)
    mix.fit(images, labels)
    n = 4000
    ids = chain_ids([0], n)
    x = mix.sample(ids >> 32, ChainStreams.for_chains(ids, 3)).flatten(1)
    is_pca = (x - mix.pca.mean[0].clamp(0, 1)).abs().amax(1) == 0  # sigma 0: the clipped mean
    se = (p * (1 - p) / n) ** 0.5
    assert abs(float(is_pca.double().mean()) - p) < 4 * se


# -- noise injection: ordered class images of the first `pool`, std alpha * eps -------------------
def test_noise_injection_published_procedure() -> None:
    images, labels = _spectral_data(n=30)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    images, labels = images[perm], labels[perm]  # classes interleaved, as a test set
    std = 50 * 8 / 255
    init = NoiseInjectionInit(noise_std=std, pick="ordered", pool=40).fit(images, labels)
    y = torch.tensor([1, 1, 0, 1, 0])
    ours = init.sample(y, torch.Generator().manual_seed(2))
    # published: class_images[c] in data order among the first `pool`; counters per class
    first, first_y = images[:40], labels[:40]
    class_images = {c: first[first_y == c] for c in (0, 1)}
    noise = torch.randn((5, 16), generator=torch.Generator().manual_seed(2)).view(5, 1, 4, 4)
    counter = {0: 0, 1: 0}
    ref = torch.empty_like(ours)
    for i, c in enumerate(y.tolist()):
        ref[i] = class_images[c][counter[c]] + std * noise[i]
        counter[c] += 1
    torch.testing.assert_close(ours, ref.clamp(0, 1))


def test_noise_ordered_takes_the_chains_own_index_and_refuses_too_many() -> None:
    images, labels = _spectral_data(n=10)
    init = NoiseInjectionInit(noise_std=0.0, pick="ordered").fit(images, labels)
    ids = chain_ids([1, 0], 3)[[4, 1, 5]]  # chains (0, 1), (1, 1), (0, 2)
    x = init.sample(ids >> 32, ChainStreams.for_chains(ids, 0))
    want = torch.stack([images[labels == 0][1], images[labels == 1][1], images[labels == 0][2]])
    torch.testing.assert_close(x, want)
    with pytest.raises(UserError, match="pool holds 10"):
        init.sample(torch.ones(11, dtype=torch.long), None)


# -- buffer ---------------------------------------------------------------------------------------
def _buffer(tmp_path, **kw):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 1, 4, 4)).astype(np.uint8)
    y = np.repeat([0, 1, 2], 4)
    path = tmp_path / "samples.npz"
    np.savez(path, **{"x": x, "y": y, **kw})
    return path, x, y


def test_buffer_chain_pick_and_restart_frequency(tmp_path) -> None:
    path, x, _ = _buffer(tmp_path)
    buf = BufferInit.from_file(path, reinit_freq=0.0, pick="chain")
    ids = chain_ids([2, 0], 6)
    got = buf.sample(ids >> 32, ChainStreams.for_chains(ids, 1))
    want = torch.from_numpy(x[[8, 9, 10, 11, 8, 9, 0, 1, 2, 3, 0, 1]]).float() / 255
    torch.testing.assert_close(got, want, atol=0, rtol=0)

    buf = BufferInit.from_file(path, reinit_freq=0.3)
    ids = chain_ids([1], 4000)
    got = buf.sample(ids >> 32, ChainStreams.for_chains(ids, 2)).flatten(1)
    pool = torch.from_numpy(x[4:8]).float().flatten(1) / 255
    from_buffer = (got[:, None, :] == pool[None]).all(2).any(1)
    assert abs(float((~from_buffer).double().mean()) - 0.3) < 4 * (0.3 * 0.7 / 4000) ** 0.5


@pytest.mark.parametrize("bad,needle", [
    ({"x": np.zeros((3, 1, 4, 4), np.uint8)}, "'x' and 'y'"),
    ({"x": np.zeros((3, 16), np.uint8), "y": np.zeros(3, np.int64)}, "(M, C, H, W)"),
    ({"x": np.zeros((3, 1, 4, 4), np.uint8), "y": np.zeros(2, np.int64)}, "y must be"),
    ({"x": np.full((3, 1, 4, 4), 2.0), "y": np.zeros(3, np.int64)}, "uint8, or float"),
    ({"x": np.zeros((3, 1, 4, 4), np.uint8), "y": np.array([0, 1, None])}, "without pickles"),
])
def test_buffer_refuses_bad_files(tmp_path, bad, needle) -> None:
    path = tmp_path / "b.npz"
    np.savez(path, **bad)
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_buffer(path)


def test_buffer_missing_file_and_class(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_buffer(tmp_path / "none.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(UserError, match="not a .npz archive"):
        load_buffer(tmp_path / "text.npz")
    path, _, _ = _buffer(tmp_path)
    buf = BufferInit.from_file(path, reinit_freq=0.05)
    assert buf.missing([0, 5, 7]) == [5, 7]
    with pytest.raises(UserError, match="no sample of class 5"):
        buf.sample(torch.full((3,), 5), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kwargs,needle", [
    ({"pick": "first"}, "pick"), ({"reinit_freq": 1.5}, "reinit_freq")])
def test_buffer_bad_options(tmp_path, kwargs, needle) -> None:
    path, _, _ = _buffer(tmp_path)
    with pytest.raises(UserError, match=needle):
        BufferInit.from_file(path, **kwargs)


@pytest.mark.parametrize("make,needle", [
    (lambda: UniformInit((1, 2, 2), low=1.0, high=0.0), "low < high"),
    (lambda: NormalInit((1, 2, 2), std=-1.0), "std"),
    (lambda: ClassGaussianInit(jitter=-1e-4), "jitter"),
    (lambda: ClassGaussianInit(ddof=2), "ddof"),
    (lambda: ClassPCAInit(more_variance=False), "n_components"),
    (lambda: ClassPCAInit(n_components=11, more_variance=False), ">= 12"),
    (lambda: ClassPCAInit(blur=-1.0), "blur"),
    (lambda: ClassPCAInit(blur_layout="hwc"), "blur_layout"),
    (lambda: NoiseInjectionInit(pick="first"), "pick"),
    (lambda: NoiseInjectionInit(pool=0), "pool"),
    (lambda: PCAOrGaussianInit(p_pca=1.5), "p_pca"),
])
def test_bad_options_refused(make, needle) -> None:
    with pytest.raises(UserError, match=needle):
        make()


# -- a chain's x0 does not depend on its batch -------------------------------------------------------
def _inits(tmp_path):
    images, labels = _spectral_data(n=60, classes=3)
    path, _, _ = _buffer(tmp_path)
    return {
        "uniform": UniformInit((1, 4, 4), -0.2, 1.3),
        "normal": NormalInit((1, 4, 4), 0.5, 0.3),
        "noise_ordered": NoiseInjectionInit(0.3, "ordered").fit(images, labels),
        "pca_least_blur": ClassPCAInit(n_components=12, more_variance=False, blur=0.7,
                                       sigma=0.1).fit(images, labels),
        "center": ClassGaussianInit(jitter=1e-4, ddof=0, clip=False).fit(images, labels),
        "mixture": PCAOrGaussianInit(p_pca=0.5).fit(images, labels),
        "buffer": BufferInit.from_file(path, reinit_freq=0.5,
                                       reinit=ClassGaussianInit().fit(images, labels)),
        "buffer_chain": BufferInit.from_file(path, reinit_freq=0.2, pick="chain"),
    }


@pytest.mark.parametrize("name", ["uniform", "normal", "noise_ordered", "pca_least_blur",
                                  "center", "mixture", "buffer", "buffer_chain"])
def test_x0_of_a_chain_is_independent_of_its_batch(tmp_path, name) -> None:
    init = _inits(tmp_path)[name]
    ids = chain_ids([0, 1, 2], 5)
    full = init.sample(ids >> 32, ChainStreams.for_chains(ids, 9))
    for sub in ([14, 0, 7], [3], list(range(15))[::-1]):
        part = init.sample(ids[sub] >> 32, ChainStreams.for_chains(ids[sub], 9))
        torch.testing.assert_close(part, full[sub], atol=1e-6, rtol=0)
    other = init.sample(ids >> 32, ChainStreams.for_chains(ids, 10))
    assert not torch.equal(other, full)  # the seed matters


# -- CLI ----------------------------------------------------------------------------------------------
_run = run_main  # (exit code, stdout, stderr) of robust-ebm ARGV


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("inits")
    npz = write_tiny_npz(root / "t.npz")
    code = main_mod.main(["train", "--dataset", str(npz), "--epochs", "1", "--batch-size", "32",
                          "--val-size", "0", "--eval-n", "20", "--energy-n", "20",
                          "--out", str(root / "m"), "--json"])
    assert code == 0
    return npz, root / "m" / "model.safetensors"


def _gen(capsys, tiny, out, *extra):
    npz, model = tiny
    return _run(capsys, "generate", "--checkpoint", model, "--dataset", npz, "--steps", "2",
                "--step-size", "0.1", "--n-per-class", "3", "--out", out, "--json", *extra)


def test_cli_buffer_round_trip(tmp_path, tiny, capsys, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, _, err = _gen(capsys, tiny, tmp_path / "a", "--init", "normal", "--normal-clip")
    assert code == 0, err
    code, out, err = _gen(capsys, tiny, tmp_path / "b", "--init", "buffer", "--buffer",
                          tmp_path / "a" / "samples.npz", "--buffer-pick", "chain",
                          "--buffer-reinit-freq", "0", "--seed", "5")
    assert code == 0, err
    res = json.loads(out)
    assert res["init_config"]["reinit_freq"] == 0 and res["init_config"]["size"] == 6
    with np.load(tmp_path / "a" / "samples.npz") as a, np.load(tmp_path / "b" / "samples.npz") as b:
        np.testing.assert_array_equal(b["x0"], a["x"])  # chain j continues chain j


def test_cli_published_options_via_config(tmp_path, tiny, capsys, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = tmp_path / "c.toml"
    cfg.write_text('init = "pca_gaussian"\npca_components = 12\npca_least = true\n'
                   'pca_blur = 0.5\ngaussian_jitter = 1e-4\ngaussian_ddof = 0\nmix_p_pca = 0.5\n')
    code, out, err = _gen(capsys, tiny, tmp_path / "o", "--config", cfg)
    assert code == 0, err
    conf = json.loads(out)["init_config"]
    assert conf["pca"]["more_variance"] is False and conf["pca"]["blur"] == 0.5
    assert conf["gaussian"]["jitter"] == 1e-4 and conf["gaussian"]["ddof"] == 0
    code, out, err = _gen(capsys, tiny, tmp_path / "n", "--init", "noise", "--noise-pick",
                          "ordered", "--noise-split", "test", "--noise-pool", "40",
                          "--noise-init-std", str(50 * 8 / 255))
    assert code == 0, err
    assert json.loads(out)["init_config"]["pool"] == 40


@pytest.mark.parametrize("extra,needle", [
    (["--init", "buffer"], "--buffer FILE"),
    (["--init", "buffer", "--buffer", "nope.npz"], "not found"),
    (["--init", "pca", "--pca-least"], "n_components"),
    (["--init", "pca", "--pca-least", "--pca-components", "5"], ">= 12"),
    # a flag of an init this run does not use is refused, not ignored
    (["--init", "uniform", "--pca-blur", "2"], "--pca-blur applies to --init pca"),
    (["--init", "pca", "--buffer", "nope.npz"], "--buffer applies to --init buffer"),
    (["--init", "gaussian", "--noise-split", "test"], "--noise-split applies"),
    (["--init", "buffer", "--buffer", "b.npz", "--normal-std", "2"], "--normal-std applies"),
    (["--mix-p-pca", "2"], "--mix-p-pca"),
    (["--init", "uniform", "--uniform-low", "1", "--uniform-high", "0"], "low < high"),
])
def test_cli_bad_init_options(tmp_path, tiny, capsys, monkeypatch, extra, needle) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, _out, err = _gen(capsys, tiny, tmp_path / "o", *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "o").exists()
