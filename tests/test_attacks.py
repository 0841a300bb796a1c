"""Table-driven invariants over every registered attack, plus analytic and identity checks."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from robust_ebm.attacks import REFERENCE_ATTACKS, list_attacks, make_attack
from robust_ebm.errors import UserError

EPS = 0.1
# small but real hyperparameters per attack (norm decides the ball the result must lie in)
CONFIGS: dict[str, dict] = {
    "fgsm": {"eps": EPS},
    "pgd": {"eps": EPS, "steps": 5},
    "pgd_l2": {"eps": 0.5, "steps": 5},
    "cw": {"eps": EPS, "steps": 5, "kappa": 5.0},
    "trades_kl": {"eps": EPS, "steps": 5},
    "energy": {"eps": EPS, "steps": 5, "direction": "descend"},
    "he_pgd": {"eps": EPS, "steps": 5},
    "apgd": {"eps": EPS, "steps": 10, "loss": "he", "gamma": 1.5},
    "apgd_ce": {"eps": EPS, "steps": 10},
    "apgd_dlr": {"eps": EPS, "steps": 10},
    "apgd_t": {"eps": EPS, "steps": 10, "n_target_classes": 3},
}
OWN = sorted(n for n in list_attacks() if n not in REFERENCE_ATTACKS)


def test_every_own_attack_has_a_config():
    assert sorted(CONFIGS) == OWN


def _norm_of(attack) -> str:
    return getattr(attack, "norm", "linf")


def _eps_of(attack) -> float:
    return float(attack.eps)


@pytest.fixture(scope="module")
def cnn(tiny_cnn) -> nn.Module:
    return tiny_cnn()


@pytest.fixture(scope="module")
def batch(digits_data) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_data
    return x[:12].clone(), y[:12].clone()


def _in_ball(x, x_adv, norm, eps, tol=1e-5):
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert float(size.max()) <= eps + tol
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


@pytest.mark.parametrize("name", OWN)
def test_ball_box_input_untouched_mode_restored(name, cnn, batch):
    x, y = batch
    x_copy, y_copy = x.clone(), y.clone()
    attack = make_attack(name, **CONFIGS[name])
    # the model comes in half in train mode, with one frozen parameter
    cnn.train()
    cnn.body[1].eval()
    first = next(cnn.parameters())
    first.requires_grad_(False)
    modes = [m.training for m in cnn.modules()]
    flags = [p.requires_grad for p in cnn.parameters()]
    try:
        x_adv = attack(cnn, x, y)
        assert [m.training for m in cnn.modules()] == modes
        assert [p.requires_grad for p in cnn.parameters()] == flags
        assert all(p.grad is None for p in cnn.parameters())
    finally:
        first.requires_grad_(True)
        cnn.eval()
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    _in_ball(x, x_adv, _norm_of(attack), _eps_of(attack))


@pytest.mark.parametrize("name", OWN)
def test_dtype_no_grad_and_determinism(name, cnn, batch):
    x, y = batch
    attack = make_attack(name, **CONFIGS[name])
    rng_before = torch.get_rng_state()
    a = attack(cnn, x, y)
    with torch.no_grad():
        b = attack(cnn, x, y)
    assert torch.equal(torch.get_rng_state(), rng_before)  # no global RNG side effect
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    x64 = x.double()
    c = attack(cnn, x64, y)
    assert c.dtype == torch.float64
    _in_ball(x64, c, _norm_of(attack), _eps_of(attack))


@pytest.mark.parametrize("name", OWN)
def test_batch_equals_single_samples(name, cnn, batch):
    x, y = batch
    attack = make_attack(name, **CONFIGS[name])
    full = attack(cnn, x, y)
    singles = torch.cat([attack(cnn, x[i : i + 1], y[i : i + 1]) for i in range(len(x))])
    # same iterates up to float reordering in batched kernels
    torch.testing.assert_close(full, singles, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["pgd", "pgd_l2", "he_pgd", "apgd_ce"])
def test_seed_changes_random_start(name, cnn, batch):
    x, y = batch
    a = make_attack(name, **CONFIGS[name], seed=1)(cnn, x, y)
    b = make_attack(name, **CONFIGS[name], seed=2)(cnn, x, y)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", ["pgd", "pgd_l2", "apgd_ce"])
def test_per_sample_eps(name, cnn, batch):
    x, y = batch
    eps = torch.linspace(0.0, 0.2, len(x))
    if name == "pgd_l2":
        eps = eps * 5
    hp = {**CONFIGS[name], "eps": eps}
    x_adv = make_attack(name, **hp)(cnn, x, y)
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if name != "pgd_l2" else d.norm(dim=1)
    assert bool((size <= eps + 1e-5).all())
    assert torch.equal(x_adv[0], x[0])  # eps 0 leaves the sample alone
    # the same as running each sample with its own scalar eps
    for i in (3, 7):
        hp_i = {**CONFIGS[name], "eps": float(eps[i])}
        single = make_attack(name, **hp_i)(cnn, x[i : i + 1], y[i : i + 1])
        torch.testing.assert_close(x_adv[i : i + 1], single, atol=1e-5, rtol=0)


# -- analytic optimum on a linear two-class model ----------------------------------------------


def _linear_two_class(d: int = 20) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, d, generator=g))
        lin.bias.zero_()
    return lin


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("label", [0, 1])
def test_pgd_reaches_linear_optimum(norm, label):
    model = _linear_two_class()
    w = model.weight.detach()
    x = 0.3 + 0.4 * torch.rand(4, 20, generator=torch.Generator().manual_seed(4))  # away from edges
    y = torch.full((4,), label)
    eps = 0.05 if norm == "linf" else 0.1
    direction = w[1] - w[0]  # CE of class 0 rises along +direction, of class 1 along -direction
    sgn = 1.0 if label == 0 else -1.0
    # L-inf: signed steps saturate the box from any random start; L2: radial projection only
    # shrinks the orthogonal part geometrically, so start at x to land exactly on the optimum
    name, start = ("pgd", True) if norm == "linf" else ("pgd_l2", False)
    attack = make_attack(name, eps=eps, steps=20, step_size=eps / 4, random_start=start)
    x_adv = attack(model, x, y)
    if norm == "linf":
        expected = x + sgn * eps * direction.sign()
    else:
        expected = x + sgn * eps * direction / direction.norm()
    torch.testing.assert_close(x_adv, expected, atol=1e-5, rtol=0)


def test_fgsm_is_one_signed_step():
    model = _linear_two_class()
    x = 0.3 + 0.4 * torch.rand(3, 20, generator=torch.Generator().manual_seed(5))
    y = torch.zeros(3, dtype=torch.long)
    direction = model.weight[1].detach() - model.weight[0].detach()
    x_adv = make_attack("fgsm", eps=0.05)(model, x, y)
    torch.testing.assert_close(x_adv, x + 0.05 * direction.sign(), atol=1e-6, rtol=0)


# -- identities ------------------------------------------------------------------------------


def test_he_pgd_gamma_zero_equals_pgd(cnn, batch):
    x, y = batch
    a = make_attack("he_pgd", eps=EPS, steps=7, gamma=0.0, seed=11)(cnn, x, y)
    b = make_attack("pgd", eps=EPS, steps=7, seed=11)(cnn, x, y)
    assert torch.equal(a, b)


def test_apgd_with_he_loss_gamma_zero_equals_apgd_ce(cnn, batch):
    x, y = batch
    a = make_attack("apgd", loss="he", gamma=0.0, eps=EPS, steps=10)(cnn, x, y)
    b = make_attack("apgd_ce", eps=EPS, steps=10)(cnn, x, y)
    assert torch.equal(a, b)


def test_trades_kl_uses_natural_logits_once(batch, digits_model):
    x, y = batch
    model = digits_model
    calls = []
    hook = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        make_attack("trades_kl", eps=EPS, steps=5)(model, x, y)
    finally:
        hook.remove()
    assert len(calls) == 1 + 5  # one natural forward, then one per step


def test_energy_attack_directions(batch, digits_model):
    from robust_ebm.energy import free_energy

    x, y = batch
    model = digits_model
    e0 = free_energy(model(x)).detach()
    up = make_attack("energy", eps=EPS, steps=10, direction="ascend")(model, x, y)
    down = make_attack("energy", eps=EPS, steps=10, direction="descend")(model, x, y)
    assert bool((free_energy(model(up)) > e0).all())
    assert bool((free_energy(model(down)) < e0).all())


# -- the trained digits model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(digits_data, digits_model):
    x, y = digits_data
    return digits_model, x[:300], y[:300]


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize(
    "name,hp",
    [
        ("fgsm", {"eps": 0.15}),
        ("pgd", {"eps": 0.15, "steps": 10}),
        ("pgd_l2", {"eps": 1.5, "steps": 10}),
        ("cw", {"eps": 0.15, "steps": 10}),
        ("trades_kl", {"eps": 0.15, "steps": 10}),
        ("he_pgd", {"eps": 0.15, "steps": 10}),
        ("apgd_ce", {"eps": 0.15, "steps": 20}),
        ("apgd_dlr", {"eps": 0.15, "steps": 20}),
        ("apgd_t", {"eps": 0.15, "steps": 20, "n_target_classes": 3}),
    ],
)
def test_attacks_lower_accuracy(name, hp, digits):
    model, x, y = digits
    clean = _acc(model, x, y)
    assert clean > 0.95
    assert _acc(model, make_attack(name, **hp)(model, x, y), y) < clean - 0.3


def test_more_steps_and_restarts_never_hurt(digits):
    model, x, y = digits
    a1 = _acc(model, make_attack("pgd", eps=0.08, steps=10)(model, x, y), y)
    a3 = _acc(model, make_attack("pgd", eps=0.08, steps=10, restarts=3)(model, x, y), y)
    assert a3 <= a1


def test_early_stop_keeps_first_success(digits):
    model, x, y = digits
    x_adv = make_attack("pgd", eps=0.15, steps=20, early_stop=True)(model, x, y)
    full = make_attack("pgd", eps=0.15, steps=20)(model, x, y)
    assert _acc(model, x_adv, y) <= _acc(model, full, y) + 1e-9
    _in_ball(x, x_adv, "linf", 0.15)


@pytest.mark.parametrize("mode", ["given", "random", "least_likely"])
def test_targeted_modes(mode, digits):
    model, x, y = digits
    x, y = x[:64], y[:64]
    if mode == "given":
        t = (y + 1) % 10
        x_adv = make_attack("pgd", eps=0.3, steps=30, targeted=True)(model, x, y, targets=t)
        hit = float((model(x_adv).argmax(1) == t).float().mean())
        assert hit > 0.9
        # the keyword alone switches targeted mode on
        x_kw = make_attack("pgd", eps=0.3, steps=30)(model, x, y, targets=t)
        assert torch.equal(x_kw, x_adv)
    else:
        x_adv = make_attack("pgd", eps=0.3, steps=30, targeted=mode)(model, x, y)
        assert _acc(model, x_adv, y) < 0.2
    if mode == "least_likely":
        t = model(x).argmin(1)
        assert float((model(x_adv).argmax(1) == t).float().mean()) > 0.8


# -- bad input -------------------------------------------------------------------------------


class _Probs(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).softmax(dim=1)


@pytest.mark.parametrize(
    "name,hp,match",
    [
        ("pgd", {"eps": -0.1}, "eps"),
        ("pgd", {"steps": 0}, "steps"),
        ("apgd_ce", {"steps": 0}, "steps"),
        ("pgd", {"norm": "l7"}, "norm"),
        ("pgd", {"loss": "nope"}, "unknown loss"),
        ("nope", {}, "unknown attack"),
        ("pgd", {"targeted": "sideways"}, "targeted"),
        ("energy", {"direction": "up"}, "direction"),
        ("pgd", {"gamma": 1.0}, "gamma"),
    ],
)
def test_bad_hyperparameters(name, hp, match):
    with pytest.raises(UserError, match=match):
        make_attack(name, **hp)


@pytest.mark.parametrize("name", OWN)
def test_bad_inputs(name, batch, digits_model):
    x, y = batch
    model = digits_model
    attack = make_attack(name, **CONFIGS[name])
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        attack(model, x * 2.0, y)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        attack(model, bad, y)
    with pytest.raises(UserError, match="same length"):
        attack(model, x, y[:-1])
    with pytest.raises(UserError, match="probabilities"):
        attack(_Probs(model), x, y)


def test_targeted_without_targets_and_per_sample_eps_errors(batch, digits_model):
    x, y = batch
    model = digits_model
    with pytest.raises(UserError, match="targets"):
        make_attack("pgd", targeted=True)(model, x, y)
    with pytest.raises(UserError, match="eps"):
        make_attack("pgd", eps=torch.full((len(x),), -0.1))(model, x, y)
    with pytest.raises(UserError, match="shape"):
        make_attack("pgd", eps=torch.full((3,), 0.1))(model, x, y)
    with pytest.raises(UserError, match="class indices"):
        make_attack("pgd")(model, x, y + 10)


def test_custom_loss_callable(batch, digits_model):
    x, y = batch
    model = digits_model

    def margin(logits, y):
        return logits.logsumexp(1) - logits.gather(1, y[:, None]).squeeze(1)

    x_adv = make_attack("pgd", loss=margin, eps=EPS, steps=3)(model, x, y)
    _in_ball(x, x_adv, "linf", EPS)
    with pytest.raises(UserError, match="one value per sample"):
        make_attack("pgd", loss=lambda lg, yy: lg.sum(), eps=EPS, steps=1)(model, x, y)


def test_missing_reference_package_message(monkeypatch, digits_data, digits_model):
    for mod in ("torchattacks", "pyautoattack", "autoattack"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import mod` raise ImportError
    x, y = digits_data
    model = digits_model
    for name in ("ta_square", "autoattack"):
        with pytest.raises(UserError, match="pip install --no-deps"):
            make_attack(name, eps=EPS)(model, x[:2], y[:2])
