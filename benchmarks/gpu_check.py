"""The prepared GPU check: training-step and attack speed on CIFAR-shaped synthetic data.

    python benchmarks/gpu_check.py [--device cuda] [--budget-s 330] [--smoke] [--md FILE]

Run by ``scripts/gpu_check.sh`` (which also runs the ``gpu`` test marker). No data download:
every image is uniform random uint8 of shape 3x32x32 (CIFAR-10's), 10 classes. Measures

* a PGD-10 adversarial-training step (SAT: eps 8/255, step 2/255, 10 steps; crop 4 + flip
  by the tensor-resident loader; SGD) of ResNet-18 at batch 128 in fp32, bf16 autocast,
  channels_last and torch.compile (median step x 390 steps = an extrapolated epoch), and one
  whole fp32 epoch of 50,000 images measured end to end;
* attack throughput (images/s) of PGD-10 and APGD-CE (100 steps) on ResNet-18 and
  WRN-28-10 (random weights; labels are the model's own predictions, so every point is
  attacked), in fp32 and bf16;
* the host-side time per attack call: the call's wall time minus ``steps`` x (one forward +
  one input-gradient backward) of the same batch (the work no attack can avoid; timed once per
  model and precision as 10 such passes, scaled to the attack's steps);
* peak GPU memory of each measurement (``torch.cuda.max_memory_allocated``).

Prints a Markdown block for benchmarks/RESULTS.md (also written to ``--md``). ``--smoke``
swaps in a small CNN, tiny batches and 2 steps, and compiles with the 'eager' backend, so the
whole script runs on a CPU in seconds (tests/test_gpu_check.py); its numbers mean nothing.
Sections that raise are reported as errors in the block instead of ending the run; sections
left when ``--budget-s`` runs out are reported as skipped.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from robust_ebm.attacks import make_attack
from robust_ebm.data.dataset import ImageDataset
from robust_ebm.data.loader import Augment, TensorLoader
from robust_ebm.fastpath import base_model, wrap_model
from robust_ebm.models import create_model
from robust_ebm.objectives import make_objective

EPOCH_STEPS = 390  # CIFAR-10: 50,000 training images / batch 128, last partial batch dropped
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


@dataclass(frozen=True)
class Scale:
    train_arch: str = "resnet18"
    attack_archs: tuple[str, ...] = ("resnet18", "wide_resnet28_10")
    train_batch: int = 128
    train_warmup: int = 3
    train_timed: int = 20
    attack_batch: dict[str, int] | None = None
    pgd_steps: int = 10
    apgd_steps: int = 100
    repeats: int = 3
    compile_backend: str = "inductor"
    epoch_images: int = 50_000  # the measured fp32 epoch (CIFAR-10's training set size)


FULL = Scale(attack_batch={"resnet18": 512, "wide_resnet28_10": 128})
SMOKE = Scale(train_arch="small_cnn", attack_archs=("small_cnn",), train_batch=8,
              train_warmup=1, train_timed=2, attack_batch={"small_cnn": 8}, pgd_steps=2,
              apgd_steps=2, repeats=1, compile_backend="eager", epoch_images=24)


class Clock:
    """Wall-clock timing that waits for the device; peak memory on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**30

    def median(self, fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
        """(median seconds of ``repeats`` calls, seconds of the ``warmup`` calls before)."""
        self.sync()
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        self.sync()
        warm = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times), warm


def synthetic(n: int, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageDataset(images, labels, 10, "synthetic_cifar", MEAN, STD)


def new_model(arch: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(arch, num_classes=10, in_channels=3, mean=MEAN, std=STD).to(device)


def time_training(variant: str, sc: Scale, device: torch.device, clock: Clock) -> dict:
    """One PGD-10 AT step per loader batch, through the same objective the trainer uses."""
    fast = {"fp32": {}, "bf16": {"precision": "bf16"}, "channels_last": {"channels_last": True},
            "compiled": {"compile": True, "compile_backend": sc.compile_backend}}[variant]
    model = wrap_model(new_model(sc.train_arch, device), **fast)
    opt = torch.optim.SGD(base_model(model).parameters(), lr=0.01, momentum=0.9)
    objective = make_objective("pgd_at", eps=8 / 255, step_size=2 / 255, steps=sc.pgd_steps)
    n_steps = sc.train_warmup + sc.train_timed
    loader = TensorLoader(synthetic(sc.train_batch * n_steps), sc.train_batch, seed=0,
                          augment=Augment(crop_padding=4, flip=True), drop_last=True,
                          device=device)
    batches = iter(loader)
    model.train()
    clock.reset_peak()
    median, warm = clock.median(lambda: _step(model, opt, objective, *next(batches)),
                                sc.train_timed, sc.train_warmup)
    return {"step_s": median, "warm_s": warm, "epoch_s": median * EPOCH_STEPS,
            "peak_gib": clock.peak_gib()}


def _step(model, opt, objective, x, y) -> None:
    loss, _ = objective(model, x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_epoch(sc: Scale, device: torch.device, clock: Clock) -> dict:
    """One whole fp32 SAT epoch over ``sc.epoch_images`` synthetic images, end to end (first
    step and cuDNN's algorithm choice included), as the trainer's loop would run it."""
    model = new_model(sc.train_arch, device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    objective = make_objective("pgd_at", eps=8 / 255, step_size=2 / 255, steps=sc.pgd_steps)
    loader = TensorLoader(synthetic(sc.epoch_images, seed=2), sc.train_batch, seed=0,
                          augment=Augment(crop_padding=4, flip=True), drop_last=True,
                          device=device)
    clock.reset_peak()
    clock.sync()
    t = time.perf_counter()
    for x, y in loader:
        _step(model, opt, objective, x, y)
    clock.sync()
    return {"epoch_s": time.perf_counter() - t, "steps": len(loader),
            "images": sc.epoch_images, "peak_gib": clock.peak_gib()}


_FLOOR: dict[tuple[str, str], float] = {}  # (arch, precision) -> seconds per fwd + input bwd


def time_attack(arch: str, attack: str, precision: str, sc: Scale, device: torch.device,
                clock: Clock) -> dict:
    """Throughput of one attack call and its host-side overhead over the fwd+bwd floor."""
    model = wrap_model(new_model(arch, device).eval(), precision=precision)
    n = (sc.attack_batch or {}).get(arch, 128)
    x = synthetic(n, seed=1).images.to(device).float().div_(255)
    with torch.no_grad():
        y = model(x).argmax(1)  # the model's own predictions: every point starts correct
    steps = sc.pgd_steps if attack == "pgd" else sc.apgd_steps
    if attack == "pgd":
        atk = make_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=steps, seed=0)
    else:
        atk = make_attack("apgd_ce", eps=8 / 255, steps=steps, seed=0)
    params = list(model.parameters())

    def floor() -> None:  # 10 x (forward + input-gradient backward), parameters frozen
        for p in params:
            p.requires_grad_(False)
        try:
            for _ in range(10):
                xr = x.detach().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
        finally:
            for p in params:
                p.requires_grad_(True)

    clock.reset_peak()
    t_attack, _ = clock.median(lambda: atk(model, x, y), sc.repeats)
    peak = clock.peak_gib()
    if (arch, precision) not in _FLOOR:
        _FLOOR[(arch, precision)] = clock.median(floor, sc.repeats)[0] / 10
    t_floor = _FLOOR[(arch, precision)] * steps
    return {"batch": n, "steps": steps, "call_s": t_attack, "floor_s": t_floor,
            "images_per_s": n / t_attack, "host_ms": (t_attack - t_floor) * 1000,
            "peak_gib": peak}


def _gib(v: float | None) -> str:
    return "n/a (cpu)" if v is None else f"{v:.2f}"


def render(sc: Scale, device: torch.device, train: dict, attacks: dict, args) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    lines = [
        f"### GPU check{' (--smoke: numbers meaningless)' if args.smoke else ''}: "
        f"{name or device.type}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "Command: `bash scripts/gpu_check.sh` (synthetic CIFAR-shaped data, random weights).",
    ]
    if args.pytest_summary:
        lines += ["", f"`pytest -m gpu`: {args.pytest_summary}"]
    lines += [
        "", f"Training: SAT (PGD-{sc.pgd_steps}, eps 8/255, step 2/255) step of {sc.train_arch}, "
        f"batch {sc.train_batch}, crop 4 + flip, SGD; median of {sc.train_timed} steps after "
        f"{sc.train_warmup} warm-up steps; epoch = step x {EPOCH_STEPS} (extrapolated).", "",
        "| variant | ms/step | step / fp32 step | epoch (s, extrapolated) | warm-up s (incl. compile) | peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    ref = train.get("fp32")
    for v in [k for k in ("fp32", "bf16", "channels_last", "compiled") if k in train]:
        r = train[v]
        if isinstance(r, str):
            lines.append(f"| {v} | {r} | | | | |")
            continue
        ratio = f"{r['step_s'] / ref['step_s']:.2f}" if isinstance(ref, dict) else "n/a"
        lines.append(f"| {v} | {r['step_s'] * 1000:.1f} | {ratio} | {r['epoch_s']:.1f} | "
                     f"{r['warm_s']:.1f} | {_gib(r['peak_gib'])} |")
    ep = train.get("epoch")
    if ep is not None:
        lines += ["", "Measured epoch (fp32, end to end, first step included): " + (
            ep if isinstance(ep, str) else
            f"**{ep['epoch_s']:.1f} s** for {ep['images']:,} images ({ep['steps']} steps), "
            f"peak GiB {_gib(ep['peak_gib'])}")]
    lines += [
        "", f"Attacks: L-inf eps 8/255; PGD-{sc.pgd_steps} (step 2/255), APGD-CE "
        f"({sc.apgd_steps} steps); median of {sc.repeats} calls after one warm-up. Host time = "
        "call - steps x (forward + input-gradient backward) of the same batch.", "",
        "| model | attack | precision | batch | images/s | ms/call | floor ms | host ms/call | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (arch, atk, prec), r in attacks.items():
        if isinstance(r, str):
            lines.append(f"| {arch} | {atk} | {prec} | {r} | | | | | |")
        else:
            lines.append(f"| {arch} | {atk} | {prec} | {r['batch']} | {r['images_per_s']:.0f} | "
                         f"{r['call_s'] * 1000:.0f} | {r['floor_s'] * 1000:.0f} | "
                         f"{r['host_ms']:.1f} | {_gib(r['peak_gib'])} |")
    return "\n".join(lines) + "\n"


def guarded(fn: Callable[[], dict], start: float, budget: float, reserve: float = 0.0) -> dict | str:
    """Run one measurement; a string in its place if it raised or the budget is spent."""
    if time.perf_counter() - start > budget - reserve:
        return "skipped (time budget)"
    try:
        return fn()
    except Exception as exc:  # one failing section must not lose the others' numbers
        traceback.print_exc(file=sys.stderr)
        return f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for CPU and CI")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="skip sections that would start after this many seconds")
    ap.add_argument("--compile-reserve-s", type=float, default=120.0,
                    help="start the compiled training variant only with this much budget left")
    ap.add_argument("--md", type=Path, default=None, help="also write the Markdown block here")
    ap.add_argument("--pytest-summary", default="", help="line to quote for `pytest -m gpu`")
    args = ap.parse_args(argv)
    sc = SMOKE if args.smoke else FULL
    device = torch.device(args.device)
    clock, start = Clock(device), time.perf_counter()
    train: dict[str, dict | str] = {}
    attacks: dict[tuple[str, str, str], dict | str] = {}

    def write() -> None:  # after each section: a run stopped by a time limit keeps the rest
        if args.md is not None:
            args.md.write_text(render(sc, device, train, attacks, args), encoding="utf-8")

    def record(table: dict, key, fn: Callable[[], dict], reserve: float = 0.0) -> None:
        table[key] = "started, stopped by the time limit before it finished"
        write()
        table[key] = guarded(fn, start, args.budget_s, reserve)
        print(f"[gpu_check] {key}: {table[key]}", file=sys.stderr, flush=True)
        write()

    for v in ("fp32", "bf16", "channels_last"):
        record(train, v, lambda v=v: time_training(v, sc, device, clock))
    record(train, "epoch", lambda: time_epoch(sc, device, clock))
    for arch in sc.attack_archs:
        for atk in ("pgd", "apgd_ce"):
            for prec in ("fp32", "bf16"):
                record(attacks, (arch, atk, prec),
                       lambda a=arch, k=atk, p=prec: time_attack(a, k, p, sc, device, clock))
    record(train, "compiled", lambda: time_training("compiled", sc, device, clock),
           0.0 if args.smoke else args.compile_reserve_s)
    print(render(sc, device, train, attacks, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
