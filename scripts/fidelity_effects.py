"""Measured effect of each published-behaviour option on a Fashion-MNIST model (docs/fidelity.md).

Usage: python scripts/fidelity_effects.py CHECKPOINT [N] [PART]
Uses the first N test images (default 500); the detector calibrates on the first N and is
evaluated on the next N. Prints one line per component, with the settings. PART: 'all'
(default) or one component ('trades_l2').
"""

from __future__ import annotations

import sys

import torch

from robust_ebm.analysis import analyze_energy
from robust_ebm.attacks import make_attack
from robust_ebm.checkpoint import load_model
from robust_ebm.data import load_dataset
from robust_ebm.detection import calibrate_detector, evaluate_detector
from robust_ebm.detection.detector import PUBLISHED_TEMPERATURES, TEMPERATURES
from robust_ebm.losses import kl_divergence
from robust_ebm.sampling import ClassPCAInit

EPS, STEP, STEPS = 0.1, 0.05, 5  # the Fashion-MNIST study's inner attack


def starts_and_steps(model, x, y) -> None:
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    start = x + 0.001 * noise
    out = float(((start < 0) | (start > 1)).double().mean())
    print(f"start x + 0.001 N(0,1): {out:.1%} of pixels outside [0,1] (N={len(x)})")
    for name, kw in {"TRADES (trades_kl)": {"name": "trades_kl"},
                     "WEAT (trades_kl, log_eps)": {"name": "trades_kl", "kl_form": "log_eps"},
                     "MART (pgd-CE, 0.001 N start)": {"name": "pgd", "random_start": False,
                                                     "init_std": 0.001}}.items():
        adv = {c: make_attack(**kw, eps=EPS, step_size=STEP, steps=STEPS, seed=1,
                              clip_start=c)(model, x, y) for c in (True, False)}
        changed = float(((adv[True] - adv[False]).abs() > 1e-7).double().mean())
        print(f"{name}, eps {EPS} step {STEP} x{STEPS}: clip_start True vs False changes "
              f"{changed:.1%} of final x_adv pixels")


def kl_forms(model, x, y) -> None:
    x_adv = make_attack("pgd", eps=EPS, step_size=STEP, steps=STEPS, seed=1)(model, x, y)
    with torch.no_grad():
        ln, la = model(x), model(x_adv)
    tiny = float((la.softmax(1).min(1).values < 1e-8).double().mean())
    diff = (kl_divergence(ln, la, "exact") - kl_divergence(ln, la, "log_eps")).abs()
    print(f"KL at PGD x*: {tiny:.1%} of points have a class probability < 1e-8; "
          f"|KL_exact - KL_log_eps| mean {float(diff.mean()):.2e}, max {float(diff.max()):.2e}")


def pca_counts() -> None:
    train = load_dataset("fashion_mnist", "train")
    images, labels = train.images[:10000], train.labels[:10000]
    for target in (0.9, 0.95):
        k = {rule: ClassPCAInit(variance=target, component_rule=rule).fit(images, labels)
             for rule in ("reach", "below")}
        counts = [(len(k["reach"].eigenvalues[c]), len(k["below"].eigenvalues[c])) for c in range(10)]
        print(f"PCA target {target} (first 10000 training images): components per class "
              f"reach/below {counts}")


def detector(model, x, y, n) -> None:
    pgd = make_attack("pgd", eps=EPS, steps=20, seed=2)
    analysis = analyze_energy(model, x[n:], y[n:], {"pgd": pgd})
    for label, only, grid in (("ours", True, TEMPERATURES),
                              ("published", False, PUBLISHED_TEMPERATURES)):
        det, _ = calibrate_detector(model, x[:n], y[:n], pgd, temperatures=grid,
                                    only_successful=only)
        row = evaluate_detector(det, analysis, only_successful=only)["pgd"]
        print(f"detector {label} (PGD-20 eps {EPS}, calibrate on {n}, evaluate on {n}): "
              f"T {det.temperature:g}, tau {det.threshold:.3f}, TPR {row['tpr']:.3f} "
              f"over {row['n_adv']} x*, FPR {row['fpr']:.3f}")


def trades_l2(model, x, y, eps: float = 1.5, steps: int = 10) -> None:
    """Our L2 TRADES inner attack against the published procedure: same start (seed), the
    published step 2 eps / steps, unclipped start; the projections and zero-gradient case differ."""
    common = dict(eps=eps, step_size=2 * eps / steps, steps=steps, norm="l2", seed=1,
                  clip_start=False)
    adv = {p: make_attack("trades_kl", l2_procedure=p, **common)(model, x, y)
           for p in ("ours", "published")}
    with torch.no_grad():
        ln = model(x)
        kl = {p: float(kl_divergence(ln, model(a), "exact").mean()) for p, a in adv.items()}
    dist = {p: (a - x).flatten(1).norm(dim=1) for p, a in adv.items()}
    gap = (adv["ours"] - adv["published"]).flatten(1).norm(dim=1)
    changed = float(((adv["ours"] - adv["published"]).abs() > 1e-6).double().mean())
    print(f"TRADES L2 inner attack, eps {eps} step {2 * eps / steps:g} x{steps} (N={len(x)}): "
          f"ours vs published x* differ in {changed:.1%} of pixels, ||x*_ours - x*_pub||_2 mean "
          f"{float(gap.mean()):.3f} max {float(gap.max()):.3f}; ||x* - x||_2 mean ours "
          f"{float(dist['ours'].mean()):.3f}, published {float(dist['published'].mean()):.3f}; "
          f"KL(p(x) || p(x*)) mean ours {kl['ours']:.4f}, published {kl['published']:.4f}")


def main(path: str, n: int = 500, part: str = "all") -> None:
    torch.manual_seed(0)
    model = load_model(path)
    test = load_dataset("fashion_mnist", "test")
    x, y = test.images[: 2 * n].float() / 255, test.labels[: 2 * n]
    trades_l2(model, x[:n], y[:n])
    if part == "trades_l2":
        return
    starts_and_steps(model, x[:n], y[:n])
    kl_forms(model, x[:n], y[:n])
    pca_counts()
    detector(model, x, y, n)


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]), *sys.argv[3:4])
