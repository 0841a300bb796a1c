"""Share of a training epoch spent in data loading + augmentation (goal: <= 5%).

Standard training of ``small_cnn`` on Fashion-MNIST: batch 128, SGD (lr 0.05, momentum 0.9),
``Augment(crop_padding=2, flip=True)``. Times ``next(batch)`` (index, crop, flip, uint8 ->
float32) separately from forward + backward + step, over ``--limit-batches`` batches.

    OMP_NUM_THREADS=2 python benchmarks/loader.py --limit-batches 100
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from robust_ebm.data import Augment, TensorLoader, load_dataset
from robust_ebm.models import create_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-batches", type=int, default=100, help="0 = the whole epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    train = load_dataset("fashion_mnist", "train", data_dir=args.data_dir)
    loader = TensorLoader(
        train,
        args.batch_size,
        seed=args.seed,
        augment=Augment(crop_padding=2, flip=True),
        device=device,
    )
    model = create_model("small_cnn", 10, 1).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    n_batches = len(loader) if args.limit_batches <= 0 else min(args.limit_batches, len(loader))

    data_s = compute_s = 0.0
    batches = loader.iterate(epoch=0)
    for _ in range(n_batches):
        t0 = time.perf_counter()
        x, y = next(batches)
        _sync(device)
        t1 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        t2 = time.perf_counter()
        data_s += t1 - t0
        compute_s += t2 - t1

    share = data_s / (data_s + compute_s)
    print(
        f"batches: {n_batches} x {args.batch_size} on {device} (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
    )
    print(f"data loading + augmentation: {data_s:.3f} s ({1e3 * data_s / n_batches:.2f} ms/batch)")
    print(
        f"forward + backward + step:   {compute_s:.3f} s ({1e3 * compute_s / n_batches:.2f} ms/batch)"
    )
    print(f"data share: {100 * share:.2f}% (goal <= 5%): {'OK' if share <= 0.05 else 'OVER'}")
    print(
        f"| loader share | small_cnn, Fashion-MNIST, batch {args.batch_size}, crop 2 + flip, "
        f"{n_batches} batches, {device}, {torch.get_num_threads()} threads | data "
        f"{1e3 * data_s / n_batches:.2f} ms/batch, compute {1e3 * compute_s / n_batches:.2f} "
        f"ms/batch | {100 * share:.2f}% |"
    )


if __name__ == "__main__":
    main()
