"""Wall time of the default energy analysis and the share spent outside the model.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/analysis.py [CHECKPOINT] [--n 1000]
        [--eps 0.1] [--attacks fgsm,pgd,...] [--steps N] [--batch-size 500] [--sweep]

Runs :func:`robust_ebm.analysis.analyze_energy` with the default attack list (that of
``robust-ebm energy``) on the first N Fashion-MNIST test images and times the model's forward
and backward passes through :class:`robust_ebm.analysis.TimedModel` (hooks on logits and input).
Overhead = 1 - (forward + backward) / wall  [goal: < 10%]. Without CHECKPOINT a standard
small_cnn is first trained for 1 epoch on 10k training images (said in the output).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch


def quick_model():
    from robust_ebm.data import load_dataset
    from robust_ebm.models import create_model

    tr = load_dataset("fashion_mnist", "train")
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1, tr.mean, tr.std)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = tr.images[:10000].float() / 255, tr.labels[:10000]
    model.train()
    for i in range(0, len(y), 128):
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 128]), y[i : i + 128])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main() -> int:
    from robust_ebm.analysis import (
        DEFAULT_ATTACKS,
        TimedModel,
        analyze_energy,
        default_attacks,
        sweep_pgd,
    )
    from robust_ebm.checkpoint import load_model
    from robust_ebm.data import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default=None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--sweep", action="store_true", help="also time the PGD sweep")
    args = ap.parse_args()

    if args.checkpoint:
        model, source = load_model(args.checkpoint), args.checkpoint
    else:
        t0 = time.perf_counter()
        model = quick_model()
        source = f"small_cnn trained 1 epoch on 10k images here ({time.perf_counter() - t0:.0f}s)"
    te = load_dataset("fashion_mnist", "test")
    x, y = te.images[: args.n].float() / 255, te.labels[: args.n]
    names = [a for a in args.attacks.split(",") if a]
    attacks, notes = default_attacks(args.eps, names, steps=args.steps)
    timed = TimedModel(model)
    t0 = time.perf_counter()
    res = analyze_energy(timed, x, y, attacks, args.batch_size)
    if args.sweep:
        sweep_pgd(timed, x, y, args.eps, batch_size=args.batch_size)
    wall = time.perf_counter() - t0
    inside = timed.model_seconds
    out = {
        "command": " ".join(["OMP_NUM_THREADS=" + str(torch.get_num_threads()), ".venv/bin/python"]
                            + sys.argv),
        "model": source,
        "n": args.n,
        "eps": args.eps,
        "attacks": names,
        "steps_override": args.steps,
        "sweep": args.sweep,
        "wall_seconds": round(wall, 2),
        "forward_seconds": round(timed.forward_seconds, 2),
        "backward_seconds": round(timed.backward_seconds, 2),
        "forward_calls": timed.calls,
        "backward_calls": timed.backward_calls,
        "overhead_share": round(1 - inside / wall, 4),
        "per_attack_seconds": {k: round(v, 2) for k, v in res.seconds.items()},
        "notes": notes,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
