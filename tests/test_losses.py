"""Per-sample attack losses: identities, invariances, targeted forms, the name registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robust_ebm import energy, losses
from robust_ebm.errors import UserError


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(16, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture
def y() -> torch.Tensor:
    return torch.arange(16) % 10


def test_ce_is_energy_difference(logits, y):
    expected = energy.joint_energy(logits, y) - energy.free_energy(logits)
    torch.testing.assert_close(losses.ce(logits, y), expected)
    assert losses.ce(logits, y).shape == (16,)


def test_cw_margin_sign_and_kappa(logits, y):
    m = losses.cw_margin(logits, y)
    wrong = logits.argmax(1) != y
    assert torch.equal(m > 0, wrong)
    assert float(losses.cw_margin(logits, y, kappa=0.5).max()) <= 0.5
    # targeted form: positive exactly where the target wins
    t = (y + 3) % 10
    assert torch.equal(losses.cw_margin_targeted(logits, y, t) > 0, logits.argmax(1) == t)


def test_dlr_shift_and_scale_invariant(logits, y):
    base = losses.dlr(logits, y)
    torch.testing.assert_close(losses.dlr(3.0 * logits + 7.0, y), base)
    t = (y + 1) % 10
    tb = losses.dlr_targeted(logits, y, t)
    torch.testing.assert_close(losses.dlr_targeted(2.0 * logits - 1.0, y, t), tb)


def test_dlr_matches_reference_formula(logits, y):
    srt, ind = logits.sort(dim=1)
    u = torch.arange(logits.shape[0])
    top_is_y = (ind[:, -1] == y).to(logits.dtype)
    ref = -(logits[u, y] - srt[:, -2] * top_is_y - srt[:, -1] * (1 - top_is_y)) / (
        srt[:, -1] - srt[:, -3] + 1e-12
    )
    torch.testing.assert_close(losses.dlr(logits, y), ref)
    t = (y + 2) % 10
    ref_t = -(logits[u, y] - logits[u, t]) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)
    torch.testing.assert_close(losses.dlr_targeted(logits, y, t), ref_t)


def test_trades_kl_equals_energy_decomposition(logits, y):
    adv = logits + 0.3 * torch.randn_like(logits)
    joint, marginal = energy.trades_kl_decomposition(logits, adv)
    torch.testing.assert_close(losses.trades_kl(adv, y, logits), joint + marginal)
    ref = F.kl_div(F.log_softmax(adv, 1), F.softmax(logits, 1), reduction="none").sum(1)
    torch.testing.assert_close(losses.trades_kl(adv, y, logits), ref)


def test_he_loss_identities(logits, y):
    torch.testing.assert_close(losses.he_loss(logits, y, gamma=0.0), losses.ce(logits, y))
    for gamma in (0.5, 1.0, 1.5):
        expected = energy.joint_energy(logits, y) - (1 - gamma) * energy.free_energy(logits)
        torch.testing.assert_close(losses.he_loss(logits, y, gamma=gamma), expected)


def test_energy_losses(logits, y):
    torch.testing.assert_close(losses.free_energy_loss(logits, y), energy.free_energy(logits))
    torch.testing.assert_close(losses.joint_energy_loss(logits, y), energy.joint_energy(logits, y))


def test_make_loss_registry(logits, y):
    assert set(losses.list_losses()) >= {"ce", "cw", "dlr", "trades_kl", "energy", "he"}
    he = losses.make_loss("he", gamma=1.5)
    torch.testing.assert_close(he(logits, y), losses.he_loss(logits, y, 1.5))
    down = losses.make_loss("energy", sign=-1)
    torch.testing.assert_close(down(logits, y), -energy.free_energy(logits))
    t = (y + 1) % 10
    ce = losses.make_loss("ce")
    torch.testing.assert_close(ce.targeted(logits, y, t), -losses.ce(logits, t))
    assert losses.make_loss("trades_kl").needs_natural_logits
    with pytest.raises(UserError, match="unknown loss"):
        losses.make_loss("nope")
    with pytest.raises(UserError, match="takes no parameter"):
        losses.make_loss("ce", gamma=1.0)
    with pytest.raises(UserError, match="kappa"):
        losses.make_loss("cw", kappa=-1.0)
