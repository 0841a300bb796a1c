"""Training-step speed: our TRADES / WEAT objectives against the published procedure.

Measured side by side in one run, on the same model, batch and optimizer settings:

* one TRADES and one WEAT_adv training step (inner attack + outer loss + backward + SGD step)
  with ``robust_ebm.objectives`` versus a faithful transcription of the published TRADES code
  (Zhang et al. 2019), which WEAT's code follows: natural logits recomputed inside every inner
  step and separate forward passes outside (x_natural goes through the model twice);
  goal: ours <= 0.85 of it;
* the time per step of every objective, extrapolated to a full Fashion-MNIST epoch
  (55,000 training images = 429 batches of 128).

Candidates are timed round-robin and the median is reported, so load from other processes
hits all of them alike.

    OMP_NUM_THREADS=1 python benchmarks/training.py [--steps 10] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _timing import interleaved_medians

from robust_ebm.energy import free_energy, weat_weights
from robust_ebm.models import create_model
from robust_ebm.objectives import list_objectives, make_objective


def published_trades_step(model, opt, x, y, eps, step_size, steps, beta, weat=False):
    """Transcription of the published TRADES training step (and WEAT_adv's variant of it)."""
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1),
                               reduction="sum")
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.train()
    x_adv = x_adv.clamp(0.0, 1.0).detach()
    opt.zero_grad()
    logits = model(x)
    logits_adv = model(x_adv)
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(model(x), dim=1),
                  reduction="none").sum(1)
    if weat:
        w = weat_weights(free_energy(logits)).detach()
        ce = F.cross_entropy(logits_adv, y, reduction="none")
        loss = (w * (ce + beta * kl)).sum() / len(y)
    else:
        loss = F.cross_entropy(logits, y) + beta * kl.sum() / len(y)
    loss.backward()
    opt.step()


def ours_step(model, opt, objective, x, y):
    model.train()
    loss, _ = objective(model, x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="inner attack steps (paper: 10)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = create_model("small_cnn", 10, 1).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(args.batch_size, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (args.batch_size,), device=dev)
    eps, step, beta = 0.1, 0.02, 6.0
    budget = dict(eps=eps, step_size=step, steps=args.steps)
    trades, weat = make_objective("trades", beta=beta, **budget), make_objective("weat_adv", beta=beta, **budget)
    cands = {
        "ours_trades": lambda: ours_step(model, opt, trades, x, y),
        "published_trades": lambda: published_trades_step(model, opt, x, y, eps, step, args.steps, beta),
        "ours_weat": lambda: ours_step(model, opt, weat, x, y),
        "published_weat": lambda: published_trades_step(model, opt, x, y, eps, step, args.steps, beta, True),
    }
    med = interleaved_medians(cands, args.repeats)
    threads = torch.get_num_threads()
    setting = (f"small_cnn 1x28x28, batch {args.batch_size}, {args.steps}-step inner attack, "
               f"{dev}, {threads} thread(s), median of {args.repeats}")
    print(f"# {setting}")
    for k, v in med.items():
        print(f"{k:18s} {v * 1000:8.1f} ms/step")
    r_t = med["ours_trades"] / med["published_trades"]
    r_w = med["ours_weat"] / med["published_weat"]
    print(f"| TRADES step / published | {setting} | {r_t:.2f} | goal <= 0.85 |")
    print(f"| WEAT_adv step / published | {setting} | {r_w:.2f} | goal <= 0.85 |")

    # Per-objective epoch time on Fashion-MNIST (55,000 images, 429 batches), extrapolated.
    objectives = {n: make_objective(n, **({} if n == "standard" else budget)) for n in list_objectives()}
    per_step = interleaved_medians(
        {n: (lambda o=o: ours_step(model, opt, o, x, y)) for n, o in objectives.items()},
        max(3, args.repeats // 2),
    )
    print(f"# epoch time on Fashion-MNIST (429 steps x median step time), {setting}")
    for name, t in per_step.items():
        print(f"| {name} | {t * 1000:.0f} ms/step | {t * 429 / 60:.1f} min/epoch |")


if __name__ == "__main__":
    main()
