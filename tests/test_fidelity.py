"""Each published behaviour, selected by its option, against a reference written here from the
facts of the published procedure (formulas, defaults, order of operations; docs/fidelity.md),
on the same model, inputs and random numbers.

The references are deliberately written the way the published code computes: KLDivLoss with a
summed reduction, softmax + 1e-12 inside the log, sklearn's ROC, sklearn's PCA, torch's own
OneCycleLR. They share no code with the library beyond torch.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_ebm.attacks import make_attack
from robust_ebm.detection import calibrate_detector
from robust_ebm.detection.detector import PUBLISHED_TEMPERATURES
from robust_ebm.detection.study import detection_row
from robust_ebm.losses import kl_divergence, mart_loss, weat_loss
from robust_ebm.objectives import make_objective
from robust_ebm.sampling import SGLD, ClassPCAInit

EPS, STEP = 8 / 255, 2 / 255


def _net(seed: int = 0, channels: int = 1, k: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 8 * 8, k),
    ).double()


def _batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)
    x[:, :, 0, :] = 0.0  # saturated pixels: where an unclipped start leaves [0, 1]
    x[:, :, -1, :] = 1.0
    return x, torch.randint(0, 10, (n,), generator=g)


class _Recorder:
    """Forward pre-hook keeping (input, training flag) of every call of the model."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, bool]] = []
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self.calls.append((args[0].detach().clone(), module.training))

    def first_not(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        return next(i for i, t in self.calls if t == training and not torch.equal(i, x))


# ---- inner attacks: published start x + 0.001 N(0,1), NOT clipped, then one step ---------------

def _published_step(model, x, y, start, loss: str):
    """One published inner step from ``start`` (model in eval mode, as the published code)."""
    model.eval()
    s = start.clone().requires_grad_(True)
    logits = model(s)
    if loss == "ce":  # MART
        value = F.cross_entropy(logits, y)
    else:  # TRADES: exact log-softmax; WEAT: log(softmax + 1e-12); KLDivLoss summed
        log_q = F.log_softmax(logits, 1) if loss == "kl" else torch.log(F.softmax(logits, 1) + 1e-12)
        value = nn.KLDivLoss(reduction="sum")(log_q, F.softmax(model(x), 1).detach())
    (grad,) = torch.autograd.grad(value, s)
    out = s.detach() + STEP * grad.sign()
    out = torch.min(torch.max(out, x - EPS), x + EPS)
    return out.clamp(0.0, 1.0)


@pytest.mark.parametrize("name, loss, extra", [
    ("trades", "kl", {}),
    ("mart", "ce", {}),
    ("weat_adv", "kl_eps", {"kl_form": "log_eps"}),
    ("weat_nat", "kl_eps", {"kl_form": "log_eps"}),
])
def test_inner_attack_step_matches_published(name, loss, extra):
    model, (x, y) = _net(), _batch()
    ref_model = copy.deepcopy(model)
    obj = make_objective(name, eps=EPS, step_size=STEP, steps=1, clip_start=False, **extra)
    rec = _Recorder(model)
    torch.manual_seed(0)
    obj(model, x, y)
    start = rec.first_not(x, training=False)  # the first point the attack differentiates at
    x_adv = rec.first_not(x, training=True)  # the outer loss's adversarial input
    noise = start - x
    assert abs(float(noise.std()) - 0.001) < 2e-4 and float(noise.abs().max()) < 0.01
    assert bool((start < 0).any()) and bool((start > 1).any())  # published: not clipped
    torch.testing.assert_close(x_adv, _published_step(ref_model, x, y, start, loss), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["trades", "mart", "weat_adv"])
def test_default_start_is_clipped(name):
    model, (x, y) = _net(), _batch()
    rec = _Recorder(model)
    make_objective(name, eps=EPS, step_size=STEP, steps=1)(model, x, y)
    start = rec.first_not(x, training=False)
    assert float(start.min()) >= 0.0 and float(start.max()) <= 1.0


def test_published_pgd_evaluation_start_is_uniform_and_unclipped():
    model, (x, y) = _net(), _batch()
    rec = _Recorder(model)
    make_attack("pgd", eps=EPS, step_size=STEP, steps=1, clip_start=False, seed=3)(model, x, y)
    start = rec.first_not(x, training=False)
    delta = start - x
    assert float(delta.abs().max()) <= EPS + 1e-12 and float(delta.abs().max()) > 0.9 * EPS
    assert bool((start < 0).any()) and bool((start > 1).any())


# ---- KL with log(softmax + 1e-12) ------------------------------------------------------------

def _kl_published(logits_nat, logits_adv):
    return nn.KLDivLoss(reduction="none")(
        torch.log(F.softmax(logits_adv, 1) + 1e-12), F.softmax(logits_nat, 1)).sum(1)


def test_kl_log_eps_matches_published_and_differs_from_exact_for_tiny_probabilities():
    g = torch.Generator().manual_seed(0)
    ln = torch.randn(8, 10, generator=g, dtype=torch.float64)
    la = torch.randn(8, 10, generator=g, dtype=torch.float64)
    la[:, 0] -= 40.0  # p(0|x*) ~ 1e-18: log_eps saturates at log(1e-12)
    ln[:, 0] += 3.0  # and p(0|x) is not negligible, so the KL term matters
    torch.testing.assert_close(kl_divergence(ln, la, "log_eps"), _kl_published(ln, la))
    assert float((kl_divergence(ln, la, "exact") - kl_divergence(ln, la, "log_eps")).min()) > 0.5


def test_weat_and_mart_losses_with_log_eps_match_published_formulas():
    g = torch.Generator().manual_seed(1)
    ln = 4 * torch.randn(16, 10, generator=g, dtype=torch.float64)
    la = 4 * torch.randn(16, 10, generator=g, dtype=torch.float64)
    la[:4, 2] -= 35.0
    y = torch.randint(0, 10, (16,), generator=g)
    b = ln.shape[0]
    w = 1 / torch.log(1 + torch.exp((-torch.logsumexp(ln, 1)).abs()))
    kl = _kl_published(ln, la)
    for variant, ce_logits in (("adv", la), ("nat", ln)):
        ref = (F.cross_entropy(ce_logits, y, reduction="none") * w).sum() / b + 6 * (kl * w).sum() / b
        torch.testing.assert_close(weat_loss(ln, la, y, 6.0, variant, kl_form="log_eps"), ref)
    p_adv = F.softmax(la, 1)
    top = torch.argsort(p_adv, 1)[:, -2:]
    new_y = torch.where(top[:, -1] == y, top[:, -2], top[:, -1])
    bce = F.cross_entropy(la, y) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), new_y)
    p_true = F.softmax(ln, 1).gather(1, y[:, None]).squeeze(1)
    ref = bce + 6.0 * (kl * (1.0000001 - p_true)).sum() / b
    torch.testing.assert_close(mart_loss(ln, la, y, 6.0, kl_form="log_eps"), ref)


# ---- TRADES: three training-mode passes (x, x*, x) --------------------------------------------

def test_trades_three_passes_match_published_batch_norm_statistics_and_loss():
    model, (x, y) = _net(2), _batch(seed=4)
    ref_model = copy.deepcopy(model)
    rec = _Recorder(model)
    model.train()
    torch.manual_seed(0)
    loss, _ = make_objective("trades", eps=EPS, step_size=STEP, steps=2, beta=6.0,
                             forward_passes=3)(model, x, y)
    x_adv = rec.first_not(x, training=True)
    ref_model.train()
    logits = ref_model(x)  # the published order: x, x*, x
    ref = F.cross_entropy(logits, y) + 6.0 * nn.KLDivLoss(reduction="sum")(
        F.log_softmax(ref_model(x_adv), 1), F.softmax(ref_model(x), 1)) / x.shape[0]
    torch.testing.assert_close(loss, ref)
    bn, ref_bn = model[1], ref_model[1]
    assert int(bn.num_batches_tracked) == int(ref_bn.num_batches_tracked) == 3
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean)
    torch.testing.assert_close(bn.running_var, ref_bn.running_var)

    two = _net(2)
    two.train()
    make_objective("trades", eps=EPS, step_size=STEP, steps=2)(two, x, y)
    assert int(two[1].num_batches_tracked) == 2
    assert not torch.allclose(two[1].running_mean, ref_bn.running_mean)


# ---- one-cycle LR and momentum: torch's OneCycleLR defaults ------------------------------------

def test_onecycle_cos_with_cycled_momentum_equals_torch_defaults():
    from robust_ebm.train import TrainConfig, make_scheduler

    epochs, spe, lr = 3, 7, 0.1
    cfg = TrainConfig(epochs=epochs, lr=lr, anneal="cos", cycle_momentum=True)
    p1, p2 = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p1], lr=lr, momentum=0.9, weight_decay=5e-4)
    ref_opt = torch.optim.SGD([p2], lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = make_scheduler(opt, cfg, spe)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=lr, pct_start=0.25,
                                              steps_per_epoch=spe, epochs=epochs)
    lrs, moms = [], []
    for _ in range(epochs * spe):
        for o, s in ((opt, sched), (ref_opt, ref)):
            o.step()
            s.step()
        lrs.append((opt.param_groups[0]["lr"], ref_opt.param_groups[0]["lr"]))
        moms.append((opt.param_groups[0]["momentum"], ref_opt.param_groups[0]["momentum"]))
    np.testing.assert_allclose(*np.array(lrs).T, rtol=1e-12)
    np.testing.assert_allclose(*np.array(moms).T, rtol=1e-12)
    assert min(m for m, _ in moms) == pytest.approx(0.85, abs=0.01)
    assert max(m for m, _ in moms) == pytest.approx(0.95, abs=1e-9)

    default = make_scheduler(torch.optim.SGD([p1], lr=lr, momentum=0.9), TrainConfig(
        epochs=epochs, lr=lr), spe)
    assert default.optimizer.param_groups[0]["momentum"] == 0.9  # ours: fixed momentum


# ---- detector: every x* a positive, TPR over every x*, grid without T = 5 -----------------------

def _published_detector(lc: np.ndarray, la: np.ndarray, grid) -> tuple[float, float]:
    """(T, tau) as the published calibration: best AUROC over the grid (first on ties), tau =
    minus the Youden-J threshold of score = T logsumexp(f / T), every x* a positive."""
    from scipy.special import logsumexp
    from sklearn.metrics import roc_auc_score, roc_curve

    best_t, best_auc, best_thr = 0.0, 0.0, 0.0
    labels = np.r_[np.zeros(len(lc), dtype=int), np.ones(len(la), dtype=int)]
    for t in grid:
        score = np.r_[t * logsumexp(lc / t, axis=1), t * logsumexp(la / t, axis=1)]
        fpr, tpr, thr = roc_curve(labels, score)
        auc = roc_auc_score(labels, score)
        if auc > best_auc:
            best_t, best_auc, best_thr = t, auc, thr[int(np.argmax(tpr - fpr))]
    return best_t, -best_thr


def _energy(logits: np.ndarray, t: float) -> np.ndarray:
    from scipy.special import logsumexp

    return -t * logsumexp(logits / t, axis=1)


def test_detector_tau_and_tpr_match_published_protocol():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    gx = torch.Generator().manual_seed(5)
    x_cal, x_test = torch.rand(300, 1, 8, 8, generator=gx), torch.rand(300, 1, 8, 8, generator=gx)
    y_cal, y_test = torch.randint(0, 10, (300,), generator=gx), torch.randint(0, 10, (300,), generator=gx)

    def attack(m, x, y):  # a fixed perturbation: fools some points, not all
        return (x + 0.4 * torch.sin(7 * x + y.view(-1, 1, 1, 1).float())).clamp(0, 1)

    det, analysis = calibrate_detector(model, x_cal, y_cal, attack,
                                       temperatures=PUBLISHED_TEMPERATURES, only_successful=False)
    lc, la = analysis.clean.double().numpy(), analysis.adversarial["calibration"].double().numpy()
    fooled = la.argmax(1) != y_cal.numpy()
    assert 0 < fooled.sum() < len(fooled)  # the two positive definitions differ here
    t_ref, tau_ref = _published_detector(lc, la, PUBLISHED_TEMPERATURES)
    assert det.temperature == t_ref
    assert det.threshold == pytest.approx(tau_ref, rel=1e-5, abs=1e-5)

    with torch.no_grad():
        lc_t, la_t = model(x_test), model(attack(model, x_test, y_test))
    row = detection_row(det, lc_t, la_t, y_test, only_successful=False)
    e_adv = _energy(la_t.double().numpy(), t_ref)
    e_clean = _energy(lc_t.double().numpy(), t_ref)
    assert row["tpr"] == pytest.approx(float((e_adv <= tau_ref).mean()), abs=1e-12)
    assert row["fpr"] == pytest.approx(float((e_clean <= tau_ref).mean()), abs=1e-12)
    assert row["n_adv"] == len(e_adv)
    ours, _ = calibrate_detector(model, x_cal, y_cal, attack)  # our default: fooling x* only
    assert ours.info["calibration"]["n_adv"] == int(fooled.sum())
    assert det.info["calibration"]["n_adv"] == len(fooled)


# ---- SGLD: alpha = sqrt(2 step) on the noise, CE as a batch mean --------------------------------

def test_sgld_step_matches_published_update():
    model, (x, _) = _net(3), _batch(8, seed=6)
    y = torch.arange(8) % 10
    step, mom, std, n = 0.5, 0.8, 0.01, 2
    sgld = SGLD(step_size=step, momentum=mom, noise_std=std, steps=n, energy="ce",
                noise_scaling="sqrt_2_step", energy_reduction="mean")
    # the generator path draws one normal_ over the batch per step, as the published loop does
    out = sgld(model, x, y, generator=torch.Generator().manual_seed(11)).x
    g = torch.Generator().manual_seed(11)
    alpha = math.sqrt(2 * step)
    ref, v = x.clone(), torch.zeros_like(x)
    model.eval()
    for _ in range(n):
        s = ref.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(s), y), s)  # batch MEAN
        v = mom * v - step / 2 * grad
        rum = torch.empty_like(x).normal_(0.0, std, generator=g)
        ref = (ref + v + alpha * rum).clamp(0, 1)
    torch.testing.assert_close(out, ref)
    ours = SGLD(step_size=step, momentum=mom, noise_std=std, steps=n, energy="ce")(
        model, x, y, generator=torch.Generator().manual_seed(11)).x
    assert float((ours - out).abs().max()) > 1e-3  # our default differs


# ---- class-wise PCA: largest count whose cumulative variance stays below the target ------------

@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_pca_component_count_matches_published_rule(target):
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target)
    below = ClassPCAInit(variance=target, component_rule="below").fit(images, labels)
    reach = ClassPCAInit(variance=target).fit(images, labels)
    for c in range(10):
        data = images[labels == c].flatten(1).double().numpy()
        pca = PCA(n_components=None).fit(data)
        cum = np.cumsum(pca.explained_variance_) / pca.explained_variance_.sum()
        k = int(np.argmin(cum < target))
        assert len(below.eigenvalues[c]) == k
        assert len(reach.eigenvalues[c]) == k + 1


# ---- bad option values: one line naming the problem ---------------------------------------------

@pytest.mark.parametrize("build, match", [
    (lambda: SGLD(step_size=1.0, noise_scaling="alpha"), "noise_scaling"),
    (lambda: SGLD(step_size=1.0, energy_reduction="max"), "energy_reduction"),
    (lambda: ClassPCAInit(component_rule="above"), "component_rule"),
    (lambda: make_objective("trades", forward_passes=4), "forward_passes"),
    (lambda: make_objective("weat_adv", kl_form="eps"), "kl_form"),
    (lambda: make_attack("trades_kl", kl_form="approx"), "kl_form"),
    (lambda: kl_divergence(torch.zeros(1, 2), torch.zeros(1, 2), "approx"), "kl_form"),
])
def test_bad_option_values_raise_user_error(build, match):
    from robust_ebm.errors import UserError

    with pytest.raises(UserError, match=match):
        build()


def test_bad_anneal_raises_user_error():
    from robust_ebm.errors import UserError
    from robust_ebm.train import TrainConfig

    with pytest.raises(UserError, match="anneal"):
        TrainConfig(anneal="exp")


# ---- raw [0,1] inputs: [model] normalize = false ----------------------------------------------

def test_model_normalize_false_trains_on_raw_inputs(tmp_path, tiny_npz, capsys):
    """`[model] normalize = false` builds the model without the data set's mean/std (the
    published ECCV 2024 training feeds raw [0,1] inputs); the default keeps them."""
    import json

    from robust_ebm.checkpoint import load_model
    from robust_ebm.cli import main
    from robust_ebm.data import load_dataset

    stats = load_dataset(str(tiny_npz), "train")
    assert stats.mean[0] > 0.05 and stats.std[0] < 0.9  # so the two runs must differ
    common = ["train", "--dataset", str(tiny_npz), "--epochs", "1", "--batch-size", "32",
              "--val-size", "0", "--json", "--set", "train.eval_n=8", "--set", "train.energy_n=8"]
    for normalize, (mean, std) in [(False, (0.0, 1.0)), (True, (stats.mean[0], stats.std[0]))]:
        out = tmp_path / f"run-{normalize}"
        code = main(common + ["--out", str(out), "--set", f"model.normalize={str(normalize).lower()}"])
        _, err = capsys.readouterr()
        assert code == 0, err
        model = load_model(out / "model.safetensors")
        assert float(model.normalize.mean) == pytest.approx(mean, abs=1e-6)
        assert float(model.normalize.std) == pytest.approx(std, abs=1e-6)
        run = json.loads((out / "run.json").read_text())
        assert run.get("config", run)["model"]["normalize"] is normalize


def test_model_normalize_must_be_a_boolean():
    from robust_ebm.errors import UserError
    from robust_ebm.train.config import default_config, model_spec

    cfg = default_config()
    assert model_spec(cfg) == ("small_cnn", True, {})
    cfg["model"]["normalize"] = "no"
    with pytest.raises(UserError, match="model.normalize"):
        model_spec(cfg)
