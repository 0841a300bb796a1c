"""SGLD options of the published generation code (Mirza et al., arXiv 2407.06315;
image_generation/utils.py sample_q_SGLD, sample_q_Heun, compute_loss; utils_func.py): each one
against a reference written here from the published procedure (formulas, defaults, order of
operations) on the same inputs and random numbers, plus bad values and a CLI smoke run."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_tiny_npz
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robust_ebm.errors import UserError
from robust_ebm.sampling import SGLD
from robust_ebm.sampling.reference import (
    MahalanobisEnergy,
    ReferenceEnergy,
    ReferenceStatistics,
    cached_reference_statistics,
    first_per_class,
    reference_statistics,
)
from robust_ebm.sampling.sgld import clip_update

main_mod = importlib.import_module("robust_ebm.cli.main")

K, SHAPE = 4, (1, 5, 5)


def _model(seed: int = 0) -> nn.Module:
    """A small smooth net: per-chain independent, non-constant gradients."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(25, 16), nn.Tanh(), nn.Linear(16, K)).eval()


def _data(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, *SHAPE, generator=g), torch.arange(n) % K


def _grad(model, x, y, loss="energy_xy"):
    """Gradient of a published loss (compute_loss): 'energy_xy' a sum of -f_y, 'ce' a mean."""
    xv = x.detach().requires_grad_(True)
    logits = model(xv)
    val = (-logits.gather(1, y[:, None]).sum() if loss == "energy_xy"
           else F.cross_entropy(logits, y))
    return torch.autograd.grad(val, xv)[0]


def _noises(x, std, seed, steps):
    """The per-step noise SGLD draws from ``generator`` (one normal_ over the batch)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.empty_like(x).normal_(0.0, std, generator=g) for _ in range(steps)]


# ---- the default step is unchanged by the options: x_{n+1} = clip01((x_n + v) + noise) ----------

@pytest.mark.parametrize("mom", [0.0, 0.9])
def test_default_step_adds_velocity_then_noise_bit_for_bit(mom):
    """Without step_clip, SGLD adds v, then the noise (the order before the options existed),
    so default samples are bit-identical to earlier releases; float addition is not
    associative, so x + (v + noise) would move them by a rounding."""
    model, (x, y) = _model(), _data()
    step, steps, std = 0.7, 5, 0.01
    ref, v = x.clone(), torch.zeros_like(x)
    for rum in _noises(x, std, 3, steps):
        v = v.mul(mom).add(_grad(model, ref, y), alpha=-step / 2)  # the velocity as SGLD forms it
        ref = ((ref + v) + rum).clamp(0, 1)
    out = SGLD(step_size=step, momentum=mom, noise_std=std, steps=steps)(
        model, x, y, generator=torch.Generator().manual_seed(3)).x
    assert torch.equal(out, ref)
    v, other = torch.zeros_like(x), x.clone()  # the other order: the test tells them apart
    for rum in _noises(x, std, 3, steps):
        v = v.mul(mom).add(_grad(model, other, y), alpha=-step / 2)
        other = (other + (v + rum)).clamp(0, 1)
    assert not torch.equal(other, ref)


# ---- published SGLD with its eps clamp, Linf and L2 modes (sample_q_SGLD, non-adaptive) -------

def _published_sgld(model, x, y, step, mom, noises, eps, norm):
    v = torch.zeros_like(x)
    for rum in noises:
        g = _grad(model, x, y)
        v = -step / 2 * g if mom <= 0 else mom * v - step / 2 * g
        added = (v + rum).clamp(-eps, eps)
        x = x + added
        if norm != "Linf":
            norms = x.flatten(1).norm(dim=1)
            scale = torch.where(norms > eps, eps / (norms + 1e-7), torch.ones_like(norms))
            x = x * scale.view(-1, 1, 1, 1)
        x = x.clamp(0, 1)
    return x


@pytest.mark.parametrize("clip_norm,norm,eps", [("linf", "Linf", 0.004), ("linf", "Linf", 1.0),
                                                ("l2_published", "L2", 1.0),
                                                ("l2_published", "L2", 2.5)])
def test_clamped_step_matches_published_modes(clip_norm, norm, eps):
    model, (x0, y) = _model(), _data()
    step, mom, std, steps = 0.8, 0.5, 0.01, 3
    out = SGLD(step_size=step, momentum=mom, noise_std=std, steps=steps, step_clip=eps,
               clip_norm=clip_norm)(model, x0, y, generator=torch.Generator().manual_seed(5)).x
    ref = _published_sgld(model, x0, y, step, mom, _noises(x0, std, 5, steps), eps, norm)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    if clip_norm == "l2_published":  # the slip: the sample itself ends on a small sphere
        assert bool((out.flatten(1).norm(dim=1) <= eps + 1e-5).all())


def test_linf_clip_binds_and_l2_clip_bounds_each_chain_update():
    model, (x0, y) = _model(), _data()
    free = SGLD(step_size=0.8, noise_std=0.0, steps=1)(model, x0, y).x - x0
    c = 0.5 * float(free.abs().max())
    lin = SGLD(step_size=0.8, noise_std=0.0, steps=1, step_clip=c)(model, x0, y).x - x0
    torch.testing.assert_close(lin, free.clamp(-c, c), rtol=0, atol=1e-7)
    norms = free.flatten(1).norm(dim=1)
    c2 = float(norms.median())
    l2 = SGLD(step_size=0.8, noise_std=0.0, steps=1, step_clip=c2, clip_norm="l2")(
        model, x0, y).x - x0
    expect = free * (c2 / norms).clamp(max=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(l2, expect, rtol=0, atol=1e-6)
    assert (norms > c2).any() and (norms < c2).any()  # both branches are exercised


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(1e-3, 10.0), st.floats(1e-3, 5.0))
def test_clip_update_l2_property(seed, scale, bound):
    u = torch.randn(5, 2, 3, 3, generator=torch.Generator().manual_seed(seed)) * scale
    out = clip_update(u, bound, "l2")
    n_in, n_out = u.flatten(1).norm(dim=1), out.flatten(1).norm(dim=1)
    assert bool((n_out <= bound * (1 + 1e-5)).all())
    torch.testing.assert_close(n_out, torch.minimum(n_in, torch.tensor(bound)), rtol=1e-5, atol=0)
    cos = (u.flatten(1) * out.flatten(1)).sum(1) / (n_in * n_out)
    torch.testing.assert_close(cos, torch.ones(5), rtol=0, atol=1e-5)  # same direction


# ---- Heun (sample_q_Heun) ----------------------------------------------------------------------

def _heun(model, x, y, h, mom, noises, sign, loss="energy_xy"):
    """Predictor x - h g1, v = mom v - (h/2)(g1 + g2), x = clip01(x + sign * v + noise)."""
    v = torch.zeros_like(x)
    for rum in noises:
        g1 = _grad(model, x, y, loss)
        g2 = _grad(model, x - h * g1, y, loss)
        v = -0.5 * (g1 + g2) * h if mom <= 0 else mom * v - 0.5 * (g1 + g2) * h
        x = (x + sign * v + rum).clamp(0, 1)
    return x


@pytest.mark.parametrize("mom", [0.0, 0.6])
@pytest.mark.parametrize("loss,reduction", [("energy_xy", "sum"), ("ce", "mean")])
def test_heun_published_matches_published_sampler(mom, loss, reduction):
    model, (x0, y) = _model(), _data()
    step, std, steps = 0.5, 0.01, 3
    energy = "joint" if loss == "energy_xy" else "ce"
    out = SGLD(step_size=step, momentum=mom, noise_std=std, steps=steps, energy=energy,
               energy_reduction=reduction, integrator="heun_published")(
        model, x0, y, generator=torch.Generator().manual_seed(3)).x
    ref = _heun(model, x0, y, step, mom, _noises(x0, std, 3, steps), sign=-1.0, loss=loss)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_heun_descends_with_half_step_and_published_sign_ascends():
    model, (x0, y) = _model(), _data()
    step = 0.4
    ours = SGLD(step_size=step, momentum=0.3, noise_std=0.0, steps=4, integrator="heun")
    res = ours(model, x0, y)
    ref = _heun(model, x0, y, step / 2, 0.3, [torch.zeros_like(x0)] * 4, sign=1.0)
    torch.testing.assert_close(res.x, ref, rtol=0, atol=1e-6)
    # 'heun' at 2 eta is the published Heun with the sign fixed
    fixed = SGLD(step_size=2 * step, noise_std=0.0, steps=2, integrator="heun")(model, x0, y).x
    ref2 = _heun(model, x0, y, step, 0.0, [torch.zeros_like(x0)] * 2, sign=1.0)
    torch.testing.assert_close(fixed, ref2, rtol=0, atol=1e-6)
    pub = SGLD(step_size=step, noise_std=0.0, steps=4, integrator="heun_published")(model, x0, y)
    t_ours, t_pub = res.energy_trajectory, pub.energy_trajectory
    assert bool((t_ours[-1] < t_ours[0]).all()) and bool((t_pub[-1] > t_pub[0]).all())


# ---- reference statistics and energies (compute_loss, utils_func.py) ---------------------------

@pytest.fixture(scope="module")
def stats():
    model = _model(2)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(120, *SHAPE, generator=g), torch.arange(120) % K
    return model, images, labels, reference_statistics(model, images, labels, ridge=1e-3)


def test_reference_statistics_match_numpy(stats):
    model, images, labels, st_ = stats
    with torch.no_grad():
        logits = model(images).double().numpy()
    for c in range(K):
        lc = logits[labels.numpy() == c]
        assert st_.energy_mean[c].item() == pytest.approx(-lc[:, c].mean(), rel=1e-5)
        np.testing.assert_allclose(st_.logit_mean[c].numpy(), lc.mean(0), rtol=1e-5, atol=1e-6)
        cov = np.cov(lc.T)
        prec = np.linalg.inv(cov + 1e-3 * np.trace(cov) / K * np.eye(K))
        np.testing.assert_allclose(st_.logit_precision[c].numpy(), prec, rtol=1e-4)
    assert st_.counts.tolist() == [30] * K


def test_reference_energy_is_published_mse_with_mean_reduction(stats):
    model, _images, _labels, st_ = stats
    x0, y = _data(8)
    energy = ReferenceEnergy(st_)
    with torch.no_grad():
        logits = model(x0)
    hand = torch.stack([(-logits[i, y[i]] - st_.energy_mean[y[i]]) ** 2 for i in range(8)])
    torch.testing.assert_close(energy(logits, y), hand)
    # one SGLD step with the batch mean = the gradient of F.mse_loss(ref, E(x, y))
    out = SGLD(step_size=0.8, noise_std=0.0, steps=1, energy=energy, energy_reduction="mean")(
        model, x0, y).x
    xv = x0.clone().requires_grad_(True)
    en = -model(xv).gather(1, y[:, None]).squeeze(1)
    g = torch.autograd.grad(F.mse_loss(st_.energy_mean[y], en), xv)[0]
    torch.testing.assert_close(out, (x0 - 0.4 * g).clamp(0, 1), rtol=0, atol=1e-6)


def test_mahalanobis_energy_matches_a_loop_and_is_a_sum(stats):
    model, _images, _labels, st_ = stats
    x0, y = _data(8)
    with torch.no_grad():
        logits = model(x0)
    loop = torch.stack([(logits[i] - st_.logit_mean[y[i]]) @ st_.logit_precision[y[i]]
                        @ (logits[i] - st_.logit_mean[y[i]]) for i in range(8)])
    torch.testing.assert_close(MahalanobisEnergy(st_)(logits, y), loop, rtol=1e-5, atol=1e-5)
    res = SGLD(step_size=0.01, noise_std=0.0, steps=3, energy=MahalanobisEnergy(st_))(model, x0, y)
    assert float(res.energy_trajectory[-1].sum()) < float(res.energy_trajectory[0].sum())


def test_statistics_save_load_and_cache(tmp_path, stats):
    model, images, labels, st_ = stats
    path = tmp_path / "ref.safetensors"
    st_.save(path)
    back = ReferenceStatistics.load(path)
    for name in ("energy_mean", "logit_mean", "logit_precision", "counts"):
        torch.testing.assert_close(getattr(back, name), getattr(st_, name), equal_nan=True)
    assert back.fingerprint == st_.fingerprint and back.ridge == st_.ridge
    _, status = cached_reference_statistics(path, model, images, labels, ridge=1e-3)
    assert status == "reused"
    other, status = cached_reference_statistics(path, _model(9), images, labels, ridge=1e-3)
    assert status == "recomputed" and other.fingerprint["model"] != st_.fingerprint["model"]
    assert first_per_class(labels, 2).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


# ---- adaptive stopping (sample_q_SGLD with adaptive >= 0) --------------------------------------

def _published_adaptive(model, x, y, ref, tol, step, mom, steps):
    """Chains one at a time; a chain whose (E(x,y) - ref)^2 < tol is skipped (zero noise)."""
    x, v = x.clone(), torch.zeros_like(x)
    stopped = [steps] * len(x)
    for n in range(steps):
        for i in range(len(x)):
            with torch.no_grad():
                e = -model(x[i:i + 1])[0, y[i]]
            if (e.item() - ref[i].item()) ** 2 < tol:
                stopped[i] = min(stopped[i], n)
                continue
            g = _grad(model, x[i:i + 1], y[i:i + 1])
            v[i] = -step / 2 * g[0] if mom <= 0 else mom * v[i] - step / 2 * g[0]
            x[i] = (x[i] + v[i]).clamp(0, 1)
    return x, stopped


def test_adaptive_stopping_freezes_exactly_the_chains_within_tolerance():
    model, (x0, y) = _model(), _data(8)
    with torch.no_grad():
        e0 = -model(x0).gather(1, y[:, None]).squeeze(1)
    ref = e0 - torch.linspace(0.0, 0.6, 8)  # chain 0 starts inside, the last ones never reach
    tol, steps = 0.01, 6
    res = SGLD(step_size=0.3, momentum=0.4, noise_std=0.0, steps=steps, stop_tolerance=tol)(
        model, x0, y, reference=ref)
    x_ref, stopped = _published_adaptive(model, x0, y, ref, tol, 0.3, 0.4, steps)
    torch.testing.assert_close(res.x, x_ref, rtol=0, atol=1e-6)
    assert res.stopped_at.tolist() == stopped
    assert stopped[0] == 0 and stopped[-1] == steps
    assert any(0 < s < steps for s in stopped)  # some chain stops midway
    for i, s in enumerate(stopped):  # trajectory rows repeat the energy after the stop
        if s < steps:
            assert bool((res.energy_trajectory[s:, i] == res.energy_trajectory[s, i]).all())


def test_adaptive_stopping_targets_from_the_energy_and_noise_is_per_chain(stats):
    model, _images, _labels, st_ = stats
    x0, y = _data(6)
    sampler = SGLD(step_size=0.5, noise_std=0.01, steps=4, energy=ReferenceEnergy(st_),
                   stop_tolerance=0.5, integrator="heun", step_clip=0.05, clip_norm="l2")
    ids = torch.arange(10, 16)
    batch = sampler(model, x0, y, seed=4, chain_ids=ids)
    direct = sampler(model, x0, y, seed=4, chain_ids=ids, reference=st_.energy_mean[y])
    assert torch.equal(batch.x, direct.x)
    for i in range(6):  # a chain's result alone equals its row in the batch
        alone = sampler(model, x0[i:i + 1], y[i:i + 1], seed=4, chain_ids=ids[i:i + 1])
        torch.testing.assert_close(alone.x[0], batch.x[i], rtol=0, atol=1e-6)
        assert alone.stopped_at.tolist() == batch.stopped_at[i:i + 1].tolist()


# ---- bad values and config ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,needle", [
    ({"integrator": "rk4"}, "integrator"),
    ({"step_clip": 0.0}, "step_clip"),
    ({"step_clip": -1.0}, "step_clip"),
    ({"step_clip": math.nan}, "step_clip"),
    ({"step_clip": True}, "step_clip"),
    ({"clip_norm": "l1", "step_clip": 1.0}, "clip_norm"),
    ({"clip_norm": "l2"}, "without step_clip"),
    ({"stop_tolerance": 0.0}, "stop_tolerance"),
    ({"stop_tolerance": math.inf}, "stop_tolerance"),
    ({"energy": "reference"}, "needs class statistics"),
    ({"energy": "mahalanobis"}, "needs class statistics"),
    ({"stop_reference": 3.0}, "reference_energy"),
])
def test_bad_values_refused(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        SGLD(step_size=1.0, **kwargs)


def test_call_time_errors_and_config(stats):
    model, _images, _labels, st_ = stats
    x0, y = _data(4)
    with pytest.raises(UserError, match="needs reference energies"):
        SGLD(step_size=1.0, steps=1, stop_tolerance=0.1)(model, x0, y)
    with pytest.raises(UserError, match="stop_tolerance is None"):
        SGLD(step_size=1.0, steps=1)(model, x0, y, reference=torch.zeros(4))
    with pytest.raises(UserError, match="needs the wanted classes"):
        SGLD(step_size=1.0, steps=1, stop_tolerance=0.1, stop_reference=st_)(model, x0)
    cfg = SGLD(step_size=1.0, energy=MahalanobisEnergy(st_), integrator="heun", step_clip=0.1,
               clip_norm="l2", stop_tolerance=0.2).config()
    assert cfg["energy"] == "mahalanobis" and cfg["integrator"] == "heun"
    assert cfg["step_clip"] == 0.1 and cfg["clip_norm"] == "l2" and cfg["stop_tolerance"] == 0.2
    assert cfg["energy_statistics"]["counts"] == [30] * K
    json.dumps(cfg)


# ---- CLI smoke ----------------------------------------------------------------------------------

def test_generate_cli_sampler_options(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "t.npz")
    assert main_mod.main(["train", "--dataset", str(npz), "--epochs", "1", "--batch-size", "32",
                          "--val-size", "0", "--eval-n", "20", "--energy-n", "20",
                          "--out", str(tmp_path / "m"), "--json"]) == 0
    capsys.readouterr()
    flags = tmp_path / "opts.toml"
    flags.write_text('energy = "mahalanobis"\nintegrator = "heun"\nstep_clip = 0.05\n'
                     'clip_norm = "l2"\nstop_tolerance = 0.5\nreference_n = 20\n')
    base = ["generate", "--checkpoint", str(tmp_path / "m" / "model.safetensors"), "--dataset",
            str(npz), "--init", "uniform", "--steps", "3", "--n-per-class", "2",
            "--stats-dir", str(tmp_path / "stats"), "--config", str(flags), "--json"]
    runs = []
    for out in ("g1", "g2"):
        code = main_mod.main([*base, "--out", str(tmp_path / out)])
        stdout, err = capsys.readouterr()
        assert code == 0, err
        runs.append(json.loads(stdout))
    s = runs[0]["sampler"]
    assert (s["energy"], s["integrator"], s["step_clip"], s["clip_norm"], s["stop_tolerance"]) \
        == ("mahalanobis", "heun", 0.05, "l2", 0.5)
    assert s["energy_statistics"]["counts"] == [20, 20]
    assert [r["reference_stats"] for r in runs] == ["computed", "reused"]
    # adaptive stopping reaches the outputs: each chain's stop step, and a count in the result
    stops = np.load(tmp_path / "g1" / "samples.npz")["stopped_at"]
    assert stops.shape == (4,) and stops.dtype == np.int64 and ((0 <= stops) & (stops <= 3)).all()
    st_ = runs[0]["stopped"]
    assert st_["of"] == 4 and st_["chains"] == int((stops < 3).sum())
    code = main_mod.main([*base, "--clip-norm", "l2", "--step-clip", "0", "--out",
                          str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "--step-clip" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
