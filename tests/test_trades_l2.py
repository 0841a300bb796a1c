"""The TRADES inner attack in L2 (objective fields ``norm = "l2"``, ``l2_procedure``).

``l2_procedure="published"`` against a reference written here from the published TRADES L2
procedure (Zhang et al. 2019, arXiv 1901.08573; docs/fidelity.md): delta = 0.001 N(0,1) is a
parameter of SGD with lr = 2 eps / steps; each step minimises -KL (summed KLDivLoss of
log_softmax at x + delta against softmax at x), divides each sample's gradient by its L2 norm
(a random normal where that norm is 0), steps, clips x + delta to [0,1] and renorms delta to
L2 norm <= eps; x* = clamp(x + delta). Same model, inputs and random numbers; float64.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robust_ebm.attacks import make_attack
from robust_ebm.attacks.streams import SampleStreams
from robust_ebm.errors import UserError
from robust_ebm.objectives import make_objective

EPS = 1.5


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 10),
    ).double()


def _batch(n: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)
    x[:, :, :2, :] = 0.0  # saturated pixels: where clipping to [0,1] takes budget away
    x[:, :, -2:, :] = 1.0
    return x, torch.randint(0, 10, (n,), generator=g)


def _published_l2(model, x, delta0, eps, steps, zero_noise=None):
    """The published L2 inner attack from the start x + delta0 (model in eval mode).
    ``zero_noise(rows)`` gives the normals that replace zero gradients (rows: a bool mask)."""
    model.eval()
    kl = nn.KLDivLoss(reduction="sum")
    delta = delta0.clone().requires_grad_(True)
    opt = torch.optim.SGD([delta], lr=eps / steps * 2)
    for _ in range(steps):
        opt.zero_grad()
        loss = -kl(F.log_softmax(model(x + delta), dim=1), F.softmax(model(x), dim=1))
        loss.backward()
        norms = delta.grad.view(len(x), -1).norm(p=2, dim=1)
        delta.grad.div_(norms.view(-1, 1, 1, 1))
        if (norms == 0).any():
            delta.grad[norms == 0] = zero_noise(norms == 0)
        opt.step()
        delta.data.add_(x)
        delta.data.clamp_(0, 1).sub_(x)
        delta.data.renorm_(p=2, dim=0, maxnorm=eps)
    return (x + delta).detach().clamp(0.0, 1.0)


class _Recorder:
    """Forward pre-hook keeping (input, training flag) of every call of the model."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, bool]] = []
        model.register_forward_pre_hook(
            lambda m, args: self.calls.append((args[0].detach().clone(), m.training)))

    def first_not(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        return next(i for i, t in self.calls if t == training and not torch.equal(i, x))


def _objective_run(steps: int, procedure: str, seed: int = 0):
    """(x, y, start, x* of the outer loss, reference model) of one TRADES call in L2."""
    model, (x, y) = _net(), _batch()
    ref = copy.deepcopy(model)
    obj = make_objective("trades", eps=EPS, step_size=2 * EPS / steps, steps=steps, norm="l2",
                         l2_procedure=procedure, clip_start=False)
    rec = _Recorder(model)
    torch.manual_seed(seed)
    obj(model, x, y)
    start = rec.first_not(x, training=False)  # the first point the attack differentiates at
    return x, y, start, rec.first_not(x, training=True), ref


@pytest.mark.parametrize("steps", [1, 5])
def test_trades_l2_published_matches_the_published_procedure(steps):
    x, _, start, x_adv, ref = _objective_run(steps, "published")
    noise = start - x
    assert abs(float(noise.std()) - 0.001) < 2e-4 and bool((start < 0).any())  # unclipped start
    expected = _published_l2(ref, x, noise, EPS, steps)
    assert float((expected - x).flatten(1).norm(dim=1).max()) > 0.9 * EPS  # the ball is reached
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-9)  # float64 rounding


@pytest.mark.parametrize("steps", [1, 5])
def test_trades_l2_ours_is_the_same_step_with_our_projection(steps):
    """Our default L2 step is the published normalised step; the projections differ (ours
    scales onto the ball, then clips to [0,1]), which keeps x* inside the ball where clipping
    removes part of delta. Same start (seed), so only the projection order separates them."""
    x, _, start, ours, _ = _objective_run(steps, "ours")
    _, _, start_p, published, _ = _objective_run(steps, "published")
    torch.testing.assert_close(start, start_p, rtol=0, atol=0)
    norm_ours = (ours - x).flatten(1).norm(dim=1)
    norm_pub = (published - x).flatten(1).norm(dim=1)
    assert bool((norm_pub >= norm_ours - 1e-9).all())
    assert float((norm_pub - norm_ours).max()) > 0.01 * EPS  # material, not rounding
    assert float((norm_ours - EPS).max()) <= 1e-9 and float((norm_pub - EPS).max()) <= 1e-9


class _Gate(nn.Module):
    """Logits depend on x only where mean(x) > 0.5: elsewhere the input gradient is exactly 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-2.0, 2.0, 10, dtype=torch.float64))
        self.b = nn.Parameter(torch.linspace(0.5, -0.5, 10, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.flatten(1).mean(1, keepdim=True) - 0.5) * 20 * self.w + self.b


def test_zero_gradient_takes_the_published_random_step():
    """A zero gradient: the published code steps lr * N(0,1) (unnormalised); ours stays put."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 1, 8, 8, generator=g, dtype=torch.float64) * 0.5
    x[4:] += 0.5  # samples 4..7 have mean > 0.5: a nonzero gradient
    y = torch.zeros(8, dtype=torch.long)
    eps, steps, seed = 0.5, 3, 7
    model = _Gate()
    streams = SampleStreams.for_batch(x, y, seed)  # the attack's own per-sample streams
    every = torch.arange(len(x))
    delta0 = streams.draw(every, (1, 8, 8), x, "normal") * 0.001  # the start's draw comes first

    def zero_noise(rows: torch.Tensor) -> torch.Tensor:
        return streams.draw(every[rows], (1, 8, 8), x, "normal")

    expected = _published_l2(copy.deepcopy(model), x, delta0, eps, steps, zero_noise)
    common = dict(eps=eps, step_size=2 * eps / steps, steps=steps, norm="l2", seed=seed,
                  clip_start=False)
    published = make_attack("trades_kl", l2_procedure="published", **common)(model, x, y)
    torch.testing.assert_close(published, expected, rtol=0, atol=1e-12)
    moved = (published - x).flatten(1).norm(dim=1)
    assert bool((moved[:4] > 0.9 * eps).all())  # the random step reached the sphere
    ours = make_attack("trades_kl", **common)(model, x, y)
    torch.testing.assert_close(ours[:4], (x + delta0)[:4].clamp(0, 1), rtol=0, atol=1e-15)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), eps=st.floats(0.05, 4.0), steps=st.integers(1, 4),
       procedure=st.sampled_from(["ours", "published"]), clip=st.booleans())
def test_l2_constraint_holds(seed, eps, steps, procedure, clip):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 5, 5, generator=g)
    x[:3] = (x[:3] > 0.5).float()  # saturated images
    y = torch.randint(0, 3, (6,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(25, 3))
    attack = make_attack("trades_kl", eps=eps, step_size=eps * 2 / steps, steps=steps, norm="l2",
                         l2_procedure=procedure, clip_start=clip, seed=seed)
    x_adv = attack(model, x, y)
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= eps + 1e-5
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


@pytest.mark.parametrize("name", ["trades", "mart", "weat_adv", "pgd_at"])
def test_l2_inner_attack_restores_mode_and_leaves_parameter_grads(name):
    model, (x, y) = _net(), _batch(6)
    model.train()
    params = list(model.parameters())
    params[0].grad = torch.full_like(params[0], 0.5)
    obj = make_objective(name, eps=EPS, step_size=0.5, steps=2, norm="l2",
                         l2_procedure="published")
    torch.manual_seed(0)
    x_adv = obj._attack(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(params[0].grad, torch.full_like(params[0], 0.5))
    assert all(p.grad is None for p in params[1:])
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= EPS + 1e-9
    assert float((x_adv - x).abs().max()) > 8 / 255  # an L2 budget, not the L-inf default


@pytest.mark.parametrize("kw, match", [
    ({"norm": "l1"}, "norm must be one of linf, l2"),
    ({"l2_procedure": "published"}, "needs norm = 'l2'"),
    ({"norm": "l2", "l2_procedure": "torch"}, "l2_procedure must be one of"),
])
def test_bad_norm_options_raise_user_error(kw, match):
    with pytest.raises(UserError, match=match):
        make_objective("trades", **kw)


def test_pgd_published_l2_needs_l2():
    with pytest.raises(UserError, match="needs norm 'l2'"):
        make_attack("pgd", l2_procedure="published")


def test_training_one_epoch_with_the_l2_inner_attack(tmp_path, tiny_npz, capsys):
    """`[objective] norm = "l2"` trains, and the per-epoch evaluation attacks in L2 too."""
    from robust_ebm.cli import main

    out = tmp_path / "run"
    code = main(["train", "--dataset", str(tiny_npz), "--epochs", "1", "--batch-size", "32",
                 "--val-size", "0", "--json", "--objective", "trades", "--eps", "1.0",
                 "--step-size", "0.5", "--steps", "2", "--out", str(out),
                 "--set", "objective.norm=l2", "--set", "objective.l2_procedure=published",
                 "--set", "objective.clip_start=false",
                 "--set", "train.eval_n=8", "--set", "train.energy_n=8"])
    _, err = capsys.readouterr()
    assert code == 0, err
    cfg = json.loads((out / "run.json").read_text())
    cfg = cfg.get("config", cfg)
    assert cfg["objective"]["norm"] == "l2" and cfg["train"]["eval_norm"] == "l2"
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["eval_attack"] == {"name": "pgd", "eps": 1.0, "steps": 10, "norm": "l2"}
    assert math.isfinite(record["train_loss"]["loss"])


def test_bad_eval_norm_is_refused_before_anything_is_written(tmp_path, tiny_npz, capsys):
    from robust_ebm.cli import main

    out = tmp_path / "run"
    code = main(["train", "--dataset", str(tiny_npz), "--epochs", "1", "--out", str(out),
                 "--set", "train.eval_norm=l1"])
    _, err = capsys.readouterr()
    assert code == 2 and "eval_norm" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_l2_objective_refuses_the_linf_default_budget(tmp_path, tiny_npz, capsys):
    """norm = 'l2' with eps or step_size left at the L-inf defaults (8/255, 2/255: a negligible
    L2 budget) is refused with one line, before anything is written."""
    from robust_ebm.cli import main

    with pytest.raises(UserError, match="L2 pixel units"):
        make_objective("trades", norm="l2")
    with pytest.raises(UserError, match="L2 pixel units"):
        make_objective("trades", norm="l2", eps=1.0)  # step_size still 2/255
    make_objective("trades", norm="l2", eps=1.0, step_size=0.2)  # both given: fine
    out = tmp_path / "run"
    code = main(["train", "--dataset", str(tiny_npz), "--epochs", "1", "--objective", "trades",
                 "--set", "objective.norm=l2", "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and "L2 pixel units" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_linf_runs_keep_eval_norm_unset_so_older_states_resume(tmp_path, tiny_npz, capsys):
    """A linf run stores no eval_norm (as runs saved before the option existed), so their
    configurations compare equal on --resume; an l2 run stores its norm."""
    from robust_ebm.cli import main

    out = tmp_path / "run"
    code = main(["train", "--dataset", str(tiny_npz), "--epochs", "1", "--batch-size", "32",
                 "--val-size", "0", "--objective", "trades", "--steps", "1", "--out", str(out),
                 "--set", "train.eval_n=8", "--set", "train.energy_n=8"])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((out / "run.json").read_text())
    cfg = cfg.get("config", cfg)
    assert cfg["train"].get("eval_norm") is None
    code = main(["train", "--dataset", str(tiny_npz), "--epochs", "1", "--batch-size", "32",
                 "--val-size", "0", "--objective", "trades", "--steps", "1", "--out", str(out),
                 "--set", "train.eval_n=8", "--set", "train.energy_n=8", "--resume"])
    assert code == 0, capsys.readouterr().err
