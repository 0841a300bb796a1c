"""Evaluation under torchrun: shard the points over the ranks, gather at rank 0, merge once.

``torchrun --nproc_per_node=N robust-ebm attack ...`` (or any launch that sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) runs the same command in N processes. Each
rank loads the same points and computes only its contiguous shard ``[start, stop)`` of them;
rank 0 gathers the shards in rank order, merges them and writes the one result; the other ranks
write nothing. Without torchrun the same code runs the whole range in one process.

Why the result equals a one-process run: every random draw of an attack belongs to one sample
(keyed by the seed and the sample itself, :mod:`robust_ebm.attacks.streams`), shards are cut at
multiples of the batch size (``align``), so every batch holds the same points as in one process,
and merging concatenates in index order. On GPUs, kernels may still differ in the last bits
between processes that chose different algorithms (docs/scale.md).

Failure: an exception on any rank reaches every rank (each raises :class:`ShardError` naming the
failed rank and its message; nothing is written); a rank that dies outright closes its
connections, which fails the others' gather at once (gloo), and torchrun stops the job. A rank
that hangs fails the others after ``ROBUST_EBM_EVAL_TIMEOUT_S`` seconds (default 86,400: a
shard of AutoAttack on 10,000 points can take hours). Rerunning the same command completes:
shards keep no state between runs.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import UserError

R = TypeVar("R")
M = TypeVar("M")

__all__ = ["ShardError", "is_main", "rank_device", "run_sharded", "shard_bounds", "world"]


class ShardError(RuntimeError):
    """A rank of a sharded evaluation failed; every rank raises this and nothing is written."""


def world() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment; (0, 1) without torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), size) if size > 1 else (0, 1)


def is_main() -> bool:
    """True on torchrun's rank 0 and in a one-process run: the process that writes."""
    return world()[0] == 0


def rank_device(device: torch.device | str) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when launched by torchrun on CUDA (and made
    current), else ``device`` unchanged."""
    device = torch.device(device)
    if world()[1] > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def shard_bounds(n: int, world_size: int, align: int = 1) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` of ``n`` points for each of ``world_size`` ranks.

    Each shard but the last holds ``ceil(n / world_size)`` points rounded up to a multiple of
    ``align`` (the batch size), so shards start at batch boundaries; trailing ranks may get
    an empty shard when n is small.
    """
    if n < 0 or world_size < 1 or align < 1:
        raise UserError(f"need n >= 0, world_size >= 1, align >= 1; got {n}, {world_size}, {align}")
    per = -(-n // world_size)
    per = -(-per // align) * align
    return [(min(r * per, n), min((r + 1) * per, n)) for r in range(world_size)]


def _to_cpu(obj: Any) -> Any:
    """A copy with the tensors inside dicts, lists, tuples and dataclasses on the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        moved = {f.name: _to_cpu(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **moved)
    return obj


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _group(timeout_s: float) -> Any:
    """A gloo group over all ranks (joins the default group first when needed): objects travel
    through the CPU whatever backend the model's device uses."""
    timeout = timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timeout)
        atexit.register(_leave)  # a group left alive at exit aborts the process (gloo)
        return dist.group.WORLD
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo", timeout=timeout)


def run_sharded(
    n: int,
    compute: Callable[[int, int], R],
    merge: Callable[[list[R]], M],
    *,
    align: int = 1,
    timeout_s: float | None = None,
) -> M | None:
    """Run ``compute(start, stop)`` on this rank's shard of ``n`` points; merge at rank 0.

    Args:
        n: Number of points (or samples) to split.
        compute: Work on points ``[start, stop)``; its result may hold tensors on any device
            (moved to the CPU before gathering). Called on an empty shard too.
        merge: Turns the per-rank results, in rank (= index) order, into the final result.
        align: Shard boundaries are multiples of this (the batch size; see module docstring).
        timeout_s: Longest wait for the other ranks (default ``ROBUST_EBM_EVAL_TIMEOUT_S`` or
            86,400).

    Returns:
        The merged result on rank 0 (and in a one-process run); None on every other rank.

    Raises:
        ShardError: on every rank, when any rank's ``compute`` raised or a rank was lost.
    """
    rank, size = world()
    if size == 1:
        return merge([compute(0, n)])
    if timeout_s is None:
        timeout_s = float(os.environ.get("ROBUST_EBM_EVAL_TIMEOUT_S", 86400))
    group = _group(timeout_s)
    start, stop = shard_bounds(n, size, align)[rank]
    try:
        part: tuple[str, Any] = ("ok", _to_cpu(compute(start, stop)))
    except Exception as exc:  # reported to every rank below, then raised everywhere
        part = ("error", f"{type(exc).__name__}: {exc}")
    parts: list[Any] | None = [None] * size if rank == 0 else None
    try:
        dist.gather_object(part, parts, dst=0, group=group)
        failed = [f"rank {r}: {p[1]}" for r, p in enumerate(parts or []) if p[0] == "error"]
        status = [failed]
        dist.broadcast_object_list(status, src=0, group=group)
    except (RuntimeError, dist.DistBackendError) as exc:
        raise ShardError(
            f"rank {rank} of {size}: lost contact with the other ranks ({str(exc).splitlines()[0]}); "
            "a rank died or hung (see its error above). Nothing was written: rerun the command"
        ) from None
    if status[0]:
        raise ShardError(f"sharded evaluation failed on {'; '.join(status[0])}. Nothing was "
                         "written: fix the cause and rerun the same command")
    return merge([p[1] for p in parts]) if parts is not None else None
