"""Cross-checks against reference libraries (torchattacks, pyautoattack): `pytest -m oracle`.

Skipped with a reason when the optional packages are missing; install them with
`pip install --no-deps torchattacks pyautoattack` (never let pip pull torchvision).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from robust_ebm.attacks import REFERENCE_ATTACKS, make_attack

pytestmark = pytest.mark.oracle

HAVE_TA = importlib.util.find_spec("torchattacks") is not None
HAVE_AA = any(importlib.util.find_spec(m) is not None for m in ("pyautoattack", "autoattack"))
needs_ta = pytest.mark.skipif(
    not HAVE_TA, reason="torchattacks not installed: pip install --no-deps torchattacks"
)
needs_aa = pytest.mark.skipif(
    not HAVE_AA, reason="pyautoattack not installed: pip install --no-deps pyautoattack"
)


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@needs_ta
@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_pgd_without_random_start_equals_torchattacks(which, digits_data, digits_model, tiny_cnn):
    import torchattacks

    model = digits_model if which == "mlp" else tiny_cnn()
    x, y = digits_data
    x, y = x[:200], y[:200]
    ours = make_attack("pgd", eps=0.1, step_size=0.02, steps=10, random_start=False)
    ref = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=10, random_start=False)
    torch.testing.assert_close(ours(model, x, y), ref(x, y), atol=1e-6, rtol=0)


@needs_ta
def test_pgd_l2_without_random_start_equals_torchattacks(digits_data):
    """On an untrained net: torchattacks normalizes the gradient of the batch-MEAN loss with
    +1e-10, which shrinks its steps for confident samples (gradients near 1e-10 * N); with
    gradients of ordinary size both are the same algorithm."""
    import torchattacks

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        ).eval()
    x, y = digits_data
    x, y = x[:200], y[:200]
    ours = make_attack("pgd_l2", eps=1.0, step_size=0.2, steps=10, random_start=False)
    ref = torchattacks.PGDL2(model, eps=1.0, alpha=0.2, steps=10, random_start=False)
    torch.testing.assert_close(ours(model, x, y), ref(x, y), atol=1e-6, rtol=0)


@needs_aa
@pytest.mark.parametrize(
    "ours,theirs,hp",
    [
        # AutoAttack's 'custom' version runs APGD-CE/DLR with 5 restarts, APGD-T with 1 per target
        ("apgd_ce", "apgd-ce", {"restarts": 5}),
        ("apgd_dlr", "apgd-dlr", {"restarts": 5}),
        ("apgd_t", "apgd-t", {}),
    ],
)
def test_apgd_matches_autoattack_robust_accuracy(ours, theirs, hp, digits_data, digits_model):
    model = digits_model
    x, y = digits_data
    x, y = x[:1000], y[:1000]
    eps = 0.1  # robust accuracy about 30%: far from both 0 and clean
    acc_ours = _acc(model, make_attack(ours, eps=eps, steps=100, **hp)(model, x, y), y)
    ref = make_attack("autoattack", eps=eps, attacks=[theirs], seed=0)
    acc_ref = _acc(model, ref(model, x, y), y)
    assert 0.1 < acc_ref < 0.9
    assert abs(acc_ours - acc_ref) <= 0.01, (acc_ours, acc_ref)


@needs_aa
def test_autoattack_standard_runs_on_cpu_with_our_conventions(digits_data, tiny_cnn):
    model = tiny_cnn()
    x, y = digits_data
    x, y = x[:24].clone(), y[:24].clone()
    x0 = x.clone()
    model.train()
    rng = torch.get_rng_state()
    aa = make_attack("autoattack", eps=0.1, seed=0)
    x_adv = aa(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(x, x0)
    model.eval()
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert _acc(model, x_adv, y) <= _acc(model, make_attack("pgd", eps=0.1)(model, x, y), y)
    assert torch.equal(aa(model, x, y), x_adv)  # same seed, same result


TA_CONFIGS = {
    "ta_square": {"eps": 0.1, "n_queries": 100},
    "ta_fab": {"eps": 0.1, "steps": 10},
    "ta_deepfool": {"eps": 1.0, "steps": 10},
    "ta_pgd": {"eps": 0.1, "steps": 5},
    "ta_pgd_l2": {"eps": 1.0, "steps": 5},
    "ta_apgd": {"eps": 0.1, "steps": 10},
    "ta_apgdt": {"eps": 0.1, "steps": 10, "n_classes": 10},
    "ta_cw": {"eps": 1.0, "steps": 10},
    "ta_fgsm": {"eps": 0.1},
    "torchattacks": {"attack": "Square", "eps": 0.1, "n_queries": 50},
}


def test_every_torchattacks_adapter_has_a_config():
    assert set(TA_CONFIGS) == set(REFERENCE_ATTACKS) - {"autoattack", "ta_autoattack"}


@needs_ta
@pytest.mark.parametrize("name", sorted(TA_CONFIGS))
def test_torchattacks_adapters_follow_conventions(name, digits_data, tiny_cnn):
    model = tiny_cnn()
    x, y = digits_data
    x, y = x[:8].clone(), y[:8].clone()
    x0 = x.clone()
    attack = make_attack(name, **TA_CONFIGS[name])
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    rng = torch.get_rng_state()
    with torch.no_grad():
        x_adv = attack(model, x, y)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(x, x0)
    model.eval()
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if attack.norm == "linf" else d.norm(dim=1)
    assert float(size.max()) <= attack.eps + 1e-5
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert torch.equal(attack(model, x, y), x_adv)  # deterministic under the seed
    assert x_adv.dtype == x.dtype
