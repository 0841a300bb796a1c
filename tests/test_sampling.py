"""SGLD: identities (zero noise = gradient descent), stationary statistics on a quadratic energy,
model-state hygiene, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import solve_discrete_lyapunov
from torch import nn

from robust_ebm.energy import joint_energy
from robust_ebm.errors import UserError
from robust_ebm.models import create_model
from robust_ebm.sampling import SGLD


class Quadratic(nn.Module):
    """logits[:, k] = -||x - m_k||^2 / (2 sigma^2), so E(x, y) = ||x - m_y||^2 / (2 sigma^2)."""

    def __init__(self, means: torch.Tensor, sigma: float) -> None:
        super().__init__()
        self.means = nn.Parameter(means.clone())  # (K, D)
        self.sigma = sigma
        self.drop = nn.Dropout(0.5)  # would break the identities if left in train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.drop(x.flatten(1))
        return -0.5 * (f[:, None, :] - self.means[None]).square().sum(-1) / self.sigma**2


@pytest.fixture
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return create_model("small_cnn", 10, 1)


def _grad_joint(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.eval()
    xv = x.clone().requires_grad_(True)
    joint_energy(model(xv), y).sum().backward()
    return xv.grad


def test_zero_noise_step_is_gradient_descent(cnn: nn.Module) -> None:
    x0 = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6)
    eta = 0.5
    res = SGLD(step_size=eta, momentum=0.0, noise_std=0.0, steps=1)(cnn, x0, y)
    expected = (x0 - eta / 2 * _grad_joint(cnn, x0, y)).clamp(0, 1)
    torch.testing.assert_close(res.x, expected, atol=1e-6, rtol=0)


def test_momentum_two_steps_match_formula(cnn: nn.Module) -> None:
    x0 = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 0.5 + 0.25
    y = torch.tensor([0, 3, 5, 9])
    eta, zeta = 0.01, 0.8
    res = SGLD(step_size=eta, momentum=zeta, noise_std=0.0, steps=2, clamp=False)(cnn, x0, y)
    v1 = -eta / 2 * _grad_joint(cnn, x0, y)
    x1 = x0 + v1
    v2 = zeta * v1 - eta / 2 * _grad_joint(cnn, x1, y)
    torch.testing.assert_close(res.x, x1 + v2, atol=1e-5, rtol=1e-5)


def test_trajectory_shape_and_endpoints(cnn: nn.Module) -> None:
    x0 = torch.rand(5, 1, 28, 28)
    y = torch.arange(5)
    res = SGLD(step_size=0.1, steps=3)(cnn, x0, y, seed=0)
    assert res.energy_trajectory.shape == (4, 5)
    cnn.eval()
    with torch.no_grad():
        torch.testing.assert_close(res.energy_trajectory[0], joint_energy(cnn(x0), y))
        torch.testing.assert_close(res.energy_trajectory[-1], joint_energy(cnn(res.x), y))
    assert res.x.min() >= 0 and res.x.max() <= 1


def _run_quadratic(momentum: float, eta: float, sigma: float, s: float, steps: int):
    torch.manual_seed(0)
    d, chains = 8, 2000
    m = torch.full((2, d), 0.5)
    model = Quadratic(m, sigma)
    x0 = torch.full((chains, d), 0.5)
    y = torch.zeros(chains, dtype=torch.long)
    res = SGLD(step_size=eta, momentum=momentum, noise_std=s, steps=steps, clamp=False)(
        model, x0, y, seed=3
    )
    return res.x.double() - 0.5


def test_plain_sgld_stationary_mean_and_variance() -> None:
    # e_{n+1} = a e_n + xi_n, a = 1 - eta / (2 sigma^2), xi ~ N(0, s^2):
    # stationary mean 0 (x -> m) and variance s^2 / (1 - a^2).
    eta, sigma, s = 0.01, 0.1, 0.02
    a = 1 - eta / (2 * sigma**2)
    e = _run_quadratic(0.0, eta, sigma, s, steps=40)  # a^80 ~ 1e-24: burn-in done
    var = s**2 / (1 - a**2)
    # 16000 draws: mean SE ~ 0.008 std; variance relative SE ~ 1.1%
    assert abs(float(e.mean())) < 0.05 * var**0.5
    assert float(e.var()) == pytest.approx(var, rel=0.05)


def test_momentum_sgld_stationary_variance_matches_lyapunov() -> None:
    # State (e, v): v' = zeta v - b e,  e' = e + v' + xi  =>  A = [[1 - b, zeta], [-b, zeta]],
    # noise only on e; the stationary covariance P solves P = A P A^T + diag(s^2, 0).
    eta, sigma, s, zeta = 0.01, 0.1, 0.02, 0.5
    b = eta / (2 * sigma**2)
    A = np.array([[1 - b, zeta], [-b, zeta]])
    P = solve_discrete_lyapunov(A, np.diag([s**2, 0.0]))
    assert max(abs(np.linalg.eigvals(A))) < 0.9
    e = _run_quadratic(zeta, eta, sigma, s, steps=120)
    assert abs(float(e.mean())) < 0.05 * P[0, 0] ** 0.5
    assert float(e.var()) == pytest.approx(P[0, 0], rel=0.05)


def test_energy_decreases_without_noise() -> None:
    model = Quadratic(torch.full((3, 16), 0.3), sigma=1.0)
    x0 = torch.rand(10, 16)
    res = SGLD(step_size=0.5, noise_std=0.0, steps=10)(model, x0, torch.ones(10, dtype=torch.long))
    assert (res.energy_trajectory[1:] <= res.energy_trajectory[:-1] + 1e-7).all()


def test_restores_mode_and_requires_grad_and_leaves_no_grads(cnn: nn.Module) -> None:
    cnn.train()
    first = next(cnn.parameters())
    first.requires_grad_(False)
    before = {n: p.requires_grad for n, p in cnn.named_parameters()}
    x0 = torch.rand(3, 1, 28, 28)
    x_copy = x0.clone()
    SGLD(step_size=0.1, steps=2)(cnn, x0, torch.arange(3), seed=0)
    assert all(m.training for m in cnn.modules())
    assert {n: p.requires_grad for n, p in cnn.named_parameters()} == before
    assert all(p.grad is None for p in cnn.parameters())
    assert torch.equal(x0, x_copy)  # input untouched


def test_model_in_eval_during_sampling() -> None:
    # dropout in train() would make the zero-noise step random; in eval() it is exact
    model = Quadratic(torch.zeros(2, 4), sigma=1.0).train()
    x0 = torch.full((5, 4), 0.5)
    y = torch.zeros(5, dtype=torch.long)
    res = SGLD(step_size=0.2, noise_std=0.0, steps=1)(model, x0, y)
    torch.testing.assert_close(res.x, x0 - 0.1 * x0)
    assert model.training


def test_works_under_no_grad(cnn: nn.Module) -> None:
    x0 = torch.rand(2, 1, 28, 28)
    y = torch.tensor([1, 2])
    ref = SGLD(step_size=0.1, steps=2)(cnn, x0, y, seed=5)
    with torch.no_grad():
        res = SGLD(step_size=0.1, steps=2)(cnn, x0, y, seed=5)
    torch.testing.assert_close(res.x, ref.x)
    assert res.x.requires_grad is False


def test_deterministic_under_seed(cnn: nn.Module) -> None:
    x0 = torch.rand(3, 1, 28, 28)
    y = torch.tensor([4, 5, 6])
    sgld = SGLD(step_size=0.1, momentum=0.8, noise_std=0.01, steps=3)
    a = sgld(cnn, x0, y, seed=7)
    b = sgld(cnn, x0, y, seed=7)
    c = sgld(cnn, x0, y, seed=8)
    assert torch.equal(a.x, b.x) and torch.equal(a.energy_trajectory, b.energy_trajectory)
    assert not torch.equal(a.x, c.x)


@pytest.mark.parametrize(
    "energy", ["joint", "free", "ce", lambda logits, y: logits.square().sum(1)]
)
def test_energy_choices_run(cnn: nn.Module, energy) -> None:
    res = SGLD(step_size=0.1, steps=2, energy=energy)(
        cnn, torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    )
    assert torch.isfinite(res.energy_trajectory).all()


def test_free_energy_needs_no_labels(cnn: nn.Module) -> None:
    res = SGLD(step_size=0.1, steps=1, energy="free")(cnn, torch.rand(2, 1, 28, 28))
    assert res.energy_trajectory.shape == (2, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"step_size": 0.0},
        {"step_size": 1, "momentum": 1.0},
        {"step_size": 1, "noise_std": -1},
        {"step_size": 1, "steps": -1},
        {"step_size": 1, "energy": "nope"},
    ],
)
def test_bad_settings_raise(kwargs) -> None:
    with pytest.raises(UserError):
        SGLD(**kwargs)


def test_joint_without_labels_raises(cnn: nn.Module) -> None:
    with pytest.raises(UserError):
        SGLD(step_size=0.1, steps=1)(cnn, torch.rand(2, 1, 28, 28))


def test_seeded_noise_is_the_chains_own_alone_in_any_batch_and_position() -> None:
    """With a seed, chain i's noise comes from its own stream keyed by (seed, chain_ids[i]):
    on a model whose per-chain arithmetic is batch-invariant the samples are bit-identical
    alone, in the batch, and permuted; another seed or chain id gives other samples."""
    torch.manual_seed(0)
    model = Quadratic(torch.rand(3, 16), sigma=0.5)
    sgld = SGLD(step_size=0.05, momentum=0.8, noise_std=0.01, steps=5)
    x0, y, ids = torch.rand(9, 16), torch.arange(9) % 3, torch.arange(9) * 7 + 2
    batch = sgld(model, x0, y, seed=3, chain_ids=ids)
    for i in range(9):
        alone = sgld(model, x0[i : i + 1], y[i : i + 1], seed=3, chain_ids=ids[i : i + 1])
        assert torch.equal(alone.x[0], batch.x[i])
        assert torch.equal(alone.energy_trajectory[:, 0], batch.energy_trajectory[:, i])
    perm = torch.tensor([4, 0, 8, 2, 6, 1, 3, 7, 5])
    assert torch.equal(sgld(model, x0[perm], y[perm], seed=3, chain_ids=ids[perm]).x, batch.x[perm])
    assert torch.equal(sgld(model, x0, y, seed=3).x, sgld(model, x0, y, seed=3, chain_ids=torch.arange(9)).x)
    for other in (sgld(model, x0, y, seed=4, chain_ids=ids), sgld(model, x0, y, seed=3, chain_ids=ids + 1)):
        assert ((other.x - batch.x).abs().amax(1) > 1e-3).all()


def test_seeded_chain_on_a_cnn_matches_alone_up_to_rounding(cnn: nn.Module) -> None:
    """The conv kernels may round differently at another batch size; the noise does not
    differ, so a chain alone stays within float rounding of the batched one (a chain given
    other noise moves by about noise_std)."""
    x0, y = torch.rand(5, 1, 28, 28), torch.tensor([3, 1, 4, 1, 5])
    sgld = SGLD(step_size=0.5, momentum=0.8, noise_std=0.01, steps=3)
    batch = sgld(cnn, x0, y, seed=11)
    for i in range(5):
        alone = sgld(cnn, x0[i : i + 1], y[i : i + 1], seed=11, chain_ids=torch.tensor([i]))
        torch.testing.assert_close(alone.x[0], batch.x[i], atol=1e-6, rtol=0)
    moved = sgld(cnn, x0[:1], y[:1], seed=11, chain_ids=torch.tensor([1])).x[0]
    assert float((moved - batch.x[0]).abs().max()) > 1e-2


def test_generator_path_is_kept_and_bad_chain_ids_raise(cnn: nn.Module) -> None:
    x0, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    sgld = SGLD(step_size=0.1, noise_std=0.01, steps=2)
    a = sgld(cnn, x0, y, generator=torch.Generator().manual_seed(0))
    b = sgld(cnn, x0, y, generator=torch.Generator().manual_seed(0), seed=5)  # generator wins
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, sgld(cnn, x0, y, seed=5).x)
    for bad in (torch.arange(2), torch.zeros(3)):
        with pytest.raises(UserError, match="chain_ids"):
            sgld(cnn, x0, y, seed=0, chain_ids=bad)
