"""Training losses and objectives (docs/science.md#training-objectives): identities, gradients, a short run."""

import pytest
import torch
import torch.nn.functional as F

from robust_ebm.energy import free_energy, kl_divergence, weat_weights
from robust_ebm.errors import UserError
from robust_ebm.losses import mart_loss, trades_loss, weat_loss, weighted_trades_loss
from robust_ebm.models import create_model
from robust_ebm.objectives import list_objectives, make_objective


def _logits(seed, n=32, k=10, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, k, generator=g, dtype=torch.float64)


Y = torch.arange(32) % 10


def test_weat_with_unit_weights_equals_trades():
    ln, la = _logits(0), _logits(1)
    ones = torch.ones(32, dtype=torch.float64)
    for beta in (0.0, 1.0, 6.0):
        ref = trades_loss(ln, la, Y, beta)
        torch.testing.assert_close(weighted_trades_loss(ln, la, Y, beta, ones, "nat", "batch"), ref)
        torch.testing.assert_close(weighted_trades_loss(ln, la, Y, beta, ones, "nat", "weight_sum"), ref)
    # and TRADES itself is CE(x) + beta * mean KL
    manual = F.cross_entropy(ln, Y) + 6.0 * kl_divergence(ln, la).mean()
    torch.testing.assert_close(trades_loss(ln, la, Y, 6.0), manual)


def test_weat_weights_are_inverse_softplus_of_abs_energy():
    ln = _logits(2, scale=10.0)
    e = free_energy(ln)
    torch.testing.assert_close(weat_weights(e), 1 / F.softplus(e.abs()))
    torch.testing.assert_close(weat_weights(e), 1 / torch.log(1 + torch.exp(e.abs())))


@pytest.mark.parametrize("variant", ["adv", "nat"])
def test_weat_formula_and_normalisation(variant):
    ln, la = _logits(3), _logits(4)
    w = 1 / F.softplus(free_energy(ln).abs())
    ce = F.cross_entropy(la if variant == "adv" else ln, Y, reduction="none")
    term = w * (ce + 6.0 * kl_divergence(ln, la))
    torch.testing.assert_close(weat_loss(ln, la, Y, 6.0, variant, "batch"), term.sum() / 32)
    torch.testing.assert_close(weat_loss(ln, la, Y, 6.0, variant, "weight_sum"), term.sum() / w.sum())


def test_beta_zero_gives_plain_cross_entropy():
    ln, la = _logits(5), _logits(6)
    torch.testing.assert_close(trades_loss(ln, la, Y, 0.0), F.cross_entropy(ln, Y))
    w = weat_weights(free_energy(ln))
    torch.testing.assert_close(weat_loss(ln, la, Y, 0.0, "adv"),
                               (w * F.cross_entropy(la, Y, reduction="none")).mean())
    boost = -torch.log(1.0001 - F.softmax(la, 1).scatter(1, Y[:, None], 0).max(1).values + 1e-12)
    torch.testing.assert_close(mart_loss(ln, la, Y, 0.0), (F.cross_entropy(la, Y, reduction="none") + boost).mean())


def test_weat_weights_detached():
    ln = _logits(7).requires_grad_(True)
    la = _logits(8)
    weat_loss(ln, la, Y, 0.0, "adv").backward()  # CE on x*: no gradient may reach ln via w
    assert ln.grad is None or torch.count_nonzero(ln.grad) == 0


def test_bad_hyperparameters():
    ln, la = _logits(0), _logits(1)
    with pytest.raises(UserError, match="beta"):
        trades_loss(ln, la, Y, -1.0)
    with pytest.raises(UserError, match="variant"):
        weat_loss(ln, la, Y, 1.0, "both")
    with pytest.raises(UserError, match="normalize"):
        weat_loss(ln, la, Y, 1.0, "adv", "sum")
    with pytest.raises(UserError, match="unknown objective"):
        make_objective("nope")
    with pytest.raises(UserError, match="no hyperparameter"):
        make_objective("trades", gamma=1.0)
    with pytest.raises(UserError, match="steps"):
        make_objective("pgd_at", steps=0)


BUDGET = dict(eps=0.1, step_size=0.05, steps=2)


@pytest.mark.parametrize("name", list_objectives())
def test_objective_finite_and_gradient_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1).train()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    obj = make_objective(name, **({} if name == "standard" else BUDGET))
    loss, logs = obj(model, x, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(torch.isfinite(v) for v in logs.values())
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, pname
    assert model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", ["pgd_at", "trades", "weat_adv"])
def test_short_adversarial_run_lowers_the_loss(name):
    from robust_ebm.data import ImageDataset
    from robust_ebm.train import EvalConfig, Evaluation, TrainConfig, train

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (256,), generator=g)
    imgs = (torch.rand(256, 1, 12, 12, generator=g) * 60).to(torch.uint8)
    imgs[y == 0, :, :6] += 150
    imgs[y == 1, :, 6:] += 150
    ds = ImageDataset(imgs, y, 2, "tiny", (0.5,), (0.3,))
    model = create_model("mlp", 2, 1, image_size=12)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05)
    evaluation = Evaluation.from_config(EvalConfig(energy_n=0, eval_n=32), cfg.seed, ds, test_set=ds)
    hist = train(model, make_objective(name, **BUDGET), ds, cfg, [evaluation], log=lambda s: None)
    assert hist[-1]["train_loss"]["loss"] < 0.7 * hist[0]["train_loss"]["loss"]
