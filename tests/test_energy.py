"""Energy identities (docs/science.md#energies) on random and extreme logits."""

import math

import pytest
import torch
import torch.nn.functional as F

from robust_ebm.energy import (
    cross_entropy_from_energies,
    energy_gap,
    free_energy,
    joint_energy,
    joint_energy_gap,
    kl_divergence,
    trades_kl_decomposition,
    weat_weights,
)


def _logits(kind: str, n: int = 64, k: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64)
    return {"random": z, "large": 1e4 * z, "shifted": z + 5e3, "tiny": 1e-6 * z}[kind]


KINDS = ["random", "large", "shifted", "tiny"]


@pytest.mark.parametrize("kind", KINDS)
def test_ce_equals_joint_minus_free(kind):
    z = _logits(kind)
    y = torch.arange(len(z)) % z.shape[1]
    ce = F.cross_entropy(z, y, reduction="none")
    assert torch.isfinite(free_energy(z)).all()
    torch.testing.assert_close(joint_energy(z, y) - free_energy(z), ce, rtol=1e-9, atol=1e-7)
    torch.testing.assert_close(cross_entropy_from_energies(z, y), ce, rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_trades_kl_decomposition(kind):
    z_nat, z_adv = _logits(kind, seed=1), _logits(kind, seed=2)
    joint, marginal = trades_kl_decomposition(z_nat, z_adv)
    ref = F.kl_div(F.log_softmax(z_adv, 1), F.log_softmax(z_nat, 1), log_target=True,
                   reduction="none").sum(1)
    scale = max(1.0, ref.abs().max().item())
    torch.testing.assert_close(joint + marginal, ref, rtol=1e-8, atol=1e-8 * scale)
    torch.testing.assert_close(kl_divergence(z_nat, z_adv), ref, rtol=1e-8, atol=1e-8 * scale)
    torch.testing.assert_close(marginal, energy_gap(z_nat, z_adv))


def test_shift_identity():
    z = _logits("random")
    y = torch.zeros(len(z), dtype=torch.long)
    c = 3.7
    torch.testing.assert_close(free_energy(z + c), free_energy(z) - c)
    torch.testing.assert_close(joint_energy(z + c, y), joint_energy(z, y) - c)


def test_temperature():
    z = _logits("random")
    # Limits: T -> 0 gives -max; T = 1 is plain logsumexp; scaling identity E_T(z) = T E_1(z/T).
    torch.testing.assert_close(free_energy(z, 1e-4), -z.max(1).values, atol=1e-3, rtol=0)
    torch.testing.assert_close(free_energy(z, 1.0), -torch.logsumexp(z, 1))
    torch.testing.assert_close(free_energy(z, 2.5), 2.5 * free_energy(z / 2.5))
    # Large T: -T log K - mean(z) + O(1/T)
    big = free_energy(z, 1e6)
    torch.testing.assert_close(big, -1e6 * math.log(z.shape[1]) - z.mean(1), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="temperature"):
        free_energy(z, 0.0)


def test_free_energy_bounds():
    z = _logits("random")
    e = free_energy(z)
    assert (e <= -z.max(1).values + 1e-12).all()
    assert (e >= -z.max(1).values - math.log(z.shape[1]) - 1e-12).all()


def test_gaps():
    z1, z2 = _logits("random", seed=3), _logits("random", seed=4)
    y = torch.arange(len(z1)) % 10
    torch.testing.assert_close(joint_energy_gap(z1, z2, y), joint_energy(z1, y) - joint_energy(z2, y))
    torch.testing.assert_close(energy_gap(z1, z1), torch.zeros(len(z1), dtype=z1.dtype))


def test_weat_weights():
    e = torch.tensor([-1e4, -50.0, -1.0, 0.0, 2.0, 1e4], dtype=torch.float64)
    w = weat_weights(e)
    torch.testing.assert_close(w, 1 / torch.log1p(torch.exp(e.abs().clamp(max=50))).where(
        e.abs() < 50, e.abs()))
    assert w.max() <= 1 / math.log(2) + 1e-12 and (w > 0).all()
    assert w[3].item() == pytest.approx(1 / math.log(2))
    assert w[0].item() == pytest.approx(1e-4, rel=1e-6)  # ~1/|E| for confident samples


def test_shapes_checked():
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        free_energy(torch.zeros(3))
    with pytest.raises(ValueError, match="y must have shape"):
        joint_energy(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
