"""Attack speed, measured side by side in one run on the same model and batch.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/attacks.py [--batch 128] [--repeats 5]

Prints median wall-clock times and three ratios (goals in brackets):
  ours PGD-10 / torchattacks PGD-10                                    [<= 1.0]
  ours PGD-10 / 10 x (one forward + one input-gradient backward)      [<= 1.15]
  ours trades_kl / the published TRADES loop (natural logits each step) [<= 0.6]
Model: robust_ebm small_cnn (28x28x1, 10 classes, random weights, eval mode); inputs uniform.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
import torch.nn.functional as F
from _timing import interleaved_medians

from robust_ebm.attacks import make_attack
from robust_ebm.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1).eval()
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    eps, alpha, steps = 8 / 255, 2 / 255, args.steps

    ours = make_attack("pgd", eps=eps, step_size=alpha, steps=steps)
    fns = {"ours_pgd": lambda: ours(model, x, y)}
    try:
        import torchattacks

        ref = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        fns["torchattacks_pgd"] = lambda: ref(x, y)
    except ImportError:
        pass

    def floor() -> None:  # the work PGD cannot avoid: forward + input-gradient backward
        flags = [p.requires_grad_(False) for p in model.parameters()]
        try:
            for _ in range(steps):
                xr = x.detach().requires_grad_(True)
                (_g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
        finally:
            for p in flags:
                p.requires_grad_(True)

    fns["floor"] = floor
    trades = make_attack("trades_kl", eps=eps, step_size=alpha, steps=steps)
    fns["ours_trades_kl"] = lambda: trades(model, x, y)

    def published_trades() -> None:  # Zhang et al.'s loop, natural logits recomputed each step
        criterion_kl = torch.nn.KLDivLoss(reduction="sum")
        x_adv = x.detach() + 0.001 * torch.randn(x.shape)
        for _ in range(steps):
            x_adv.requires_grad_()
            with torch.enable_grad():
                loss_kl = criterion_kl(
                    F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1)
                )
            grad = torch.autograd.grad(loss_kl, [x_adv])[0]
            x_adv = x_adv.detach() + alpha * torch.sign(grad.detach())
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
            x_adv = torch.clamp(x_adv, 0.0, 1.0)

    fns["published_trades"] = published_trades
    results = interleaved_medians(fns, args.repeats)
    results.setdefault("torchattacks_pgd", float("nan"))

    ratios = {
        "pgd_vs_torchattacks": results["ours_pgd"] / results["torchattacks_pgd"],
        "pgd_vs_floor": results["ours_pgd"] / results["floor"],
        "trades_vs_published": results["ours_trades_kl"] / results["published_trades"],
    }
    print(
        json.dumps(
            {
                "setup": {
                    "model": "small_cnn 28x28x1",
                    "batch": args.batch,
                    "steps": steps,
                    "repeats": args.repeats,
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine(),
                },
                "median_seconds": results,
                "ratios": ratios,
                "goals": {
                    "pgd_vs_torchattacks": 1.0,
                    "pgd_vs_floor": 1.15,
                    "trades_vs_published": 0.6,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
