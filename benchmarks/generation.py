"""SGLD speed and peak memory: robust_ebm.sampling.SGLD against a plain reference loop.

The reference is the straightforward way to write the sampler: parameters left requiring grad,
``loss.backward()`` filling both ``x.grad`` and every weight's ``.grad``, new tensors each step,
noise from one ``torch.Generator`` per batch. Ours is called with ``seed=0``: per-chain noise
streams (robust_ebm.attacks.streams).
Each variant runs in its own subprocess so that peak memory (ru_maxrss on the CPU,
torch.cuda.max_memory_allocated on a GPU) is its own.

    python benchmarks/generation.py                      # 100 x 1x28x28, small_cnn, CPU
    python benchmarks/generation.py --device cuda --batch 500 --steps 50
    python benchmarks/generation.py --noise-only --repeats 21   # the noise alone
    python benchmarks/generation.py --noise-ab --repeats 9      # streams vs generator, whole steps
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def reference_sgld(model, x0, y, step_size, momentum, noise_std, steps, generator):
    model.eval()
    x = x0.clone()
    v = torch.zeros_like(x)
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        logits = model(x)
        energy = -logits.gather(1, y.view(-1, 1)).squeeze(1)
        loss = energy.sum()
        loss.backward()
        grad = x.grad
        v = momentum * v - step_size / 2 * grad
        noise = noise_std * torch.randn(x.shape, generator=generator, device=x.device)
        x = torch.clamp(x.detach() + v + noise, 0, 1)
        model.zero_grad()
    return x.detach()


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _setup(args: argparse.Namespace) -> tuple:
    """(device, model, x0, y, sampler) of one measurement, seeded."""
    from robust_ebm.models import create_model
    from robust_ebm.sampling import SGLD

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = create_model(args.model, 10, args.channels).to(device)
    x0 = torch.rand(args.batch, args.channels, args.size, args.size, device=device)
    y = torch.arange(args.batch, device=device) % 10
    sgld = SGLD(step_size=args.step_size, momentum=0.8, noise_std=0.001, steps=args.steps)
    return device, model, x0, y, sgld


def child(args: argparse.Namespace) -> dict:
    from robust_ebm.sampling import SGLD

    device, model, x0, y, sgld = _setup(args)

    def run_once(steps: int) -> None:
        if args.variant == "ours":
            # seeded: each chain's noise from its own on-device stream (attacks/streams.py)
            SGLD(sgld.step_size, sgld.momentum, sgld.noise_std, steps)(model, x0, y, seed=0)
        else:
            gen = torch.Generator(device=device).manual_seed(0)
            reference_sgld(model, x0, y, sgld.step_size, sgld.momentum, sgld.noise_std, steps, gen)

    with torch.no_grad():  # one forward to load kernels and allocator before the baseline
        model.eval()(x0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    rss0 = _rss_mib()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    run_once(2)  # warm-up
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = clock()
        run_once(args.steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - t)
    best = min(times)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
        mem_kind = "cuda max_memory_allocated delta"
    else:
        peak = _rss_mib() - rss0
        mem_kind = "ru_maxrss delta"
    return {
        "variant": args.variant,
        "steps_per_s": args.steps / best,
        "best_s": best,
        "peak_mib": peak,
        "memory": mem_kind,
    }


def noise_only(args: argparse.Namespace) -> int:
    """Time one SGLD step's noise, interleaved in one process: one ``normal_`` from a
    ``torch.Generator`` over the batch (the sampler before per-chain streams) against the
    per-chain streams (``SampleStreams.for_ids(...).normal``, what ``seed=`` uses now)."""
    from robust_ebm.attacks.streams import SampleStreams

    device = torch.device(args.device)
    shape = (args.batch, args.channels, args.size, args.size)
    x = torch.zeros(shape, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    rows = torch.arange(args.batch, device=device)
    streams = SampleStreams.for_ids(rows, 0)
    noise = torch.empty_like(x)
    draws = {
        "generator": lambda: x.add_(noise.normal_(0.0, 0.001, generator=gen)),
        "streams": lambda: x.add_(streams.normal(rows, shape[1:], x.dtype).mul_(0.001)),
    }
    # CPU: process CPU time (user + system), not wall time: other jobs on a shared machine
    # preempt us, and page faults of fresh buffers are part of the cost
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    best = dict.fromkeys(draws, float("inf"))
    for _ in range(args.repeats):
        for name, draw in draws.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = clock()
            for _ in range(args.steps):
                draw()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], (clock() - t) / args.steps)
    print(f"noise of one SGLD step, batch {'x'.join(map(str, shape))}, device {args.device}, "
          f"threads {torch.get_num_threads()}, best of {args.repeats} x {args.steps} draws, "
          f"{'process CPU' if device.type == 'cpu' else 'wall'} time")
    for name, sec in best.items():
        print(f"{name:<10} {sec * 1e3:8.3f} ms")
    return 0


def noise_ab(args: argparse.Namespace) -> int:
    """Whole SGLD steps in one process, alternating rounds: noise from per-chain streams
    (``seed=0``) against one ``torch.Generator`` per batch (``generator=``, the sampler's
    path before per-chain streams); best of ``--repeats`` rounds each."""

    device, model, x0, y, sgld = _setup(args)
    runs = {
        "generator": lambda: sgld(model, x0, y, generator=torch.Generator(device).manual_seed(0)),
        "streams": lambda: sgld(model, x0, y, seed=0),
    }
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    best = dict.fromkeys(runs, float("inf"))
    for run in runs.values():
        run()  # warm-up
    for _ in range(args.repeats):
        for name, run in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = clock()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], clock() - t)
    shape = f"{args.batch}x{args.channels}x{args.size}x{args.size}"
    print(f"SGLD on {args.model}, batch {shape}, {args.steps} steps, device {args.device}, "
          f"threads {torch.get_num_threads()}, best of {args.repeats} alternating rounds")
    for name, sec in best.items():
        print(f"{name:<10} {args.steps / sec:8.2f} steps/s")
    print(f"streams / generator speed: x{best['generator'] / best['streams']:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--step-size", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: process CPU time, robust to other jobs on a shared CPU")
    p.add_argument("--noise-only", action="store_true",
                   help="time only the noise of one step: generator vs per-chain streams")
    p.add_argument("--noise-ab", action="store_true",
                   help="whole SGLD steps, one process: per-chain streams vs a generator")
    p.add_argument("--variant", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.noise_only:
        return noise_only(args)
    if args.noise_ab:
        return noise_ab(args)
    if args.variant:  # child process
        print(json.dumps(child(args)))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    base = [a for a in (argv if argv is not None else sys.argv[1:]) if a]
    results = {}
    for variant in ("reference", "ours"):
        out = subprocess.run(
            [sys.executable, __file__, *base, "--variant", variant],
            capture_output=True,
            text=True,
            check=True,
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    ref, ours = results["reference"], results["ours"]
    shape = f"{args.batch}x{args.channels}x{args.size}x{args.size}"
    print(
        f"SGLD on {args.model}, batch {shape}, {args.steps} steps, device {args.device}, "
        f"threads {torch.get_num_threads()}, torch {torch.__version__}, {args.clock} clock"
    )
    print(f"{'variant':<10} {'steps/s':>10} {'peak MiB':>10}   memory measured as")
    for r in (ref, ours):
        print(
            f"{r['variant']:<10} {r['steps_per_s']:>10.2f} {r['peak_mib']:>10.1f}   {r['memory']}"
        )
    speed = ours["steps_per_s"] / ref["steps_per_s"]
    mem = ours["peak_mib"] / ref["peak_mib"] if ref["peak_mib"] > 0 else float("nan")
    print(f"ratio ours/reference: speed x{speed:.2f}, peak memory x{mem:.2f}")
    if args.json:
        from robust_ebm.io import atomic_write_json

        atomic_write_json(
            args.json,
            {"args": vars(args), "results": results, "speed_ratio": speed, "memory_ratio": mem},
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
