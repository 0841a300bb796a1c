"""Merge shards of one robustness evaluation (``robust-ebm attack --start S --n N``).

A long evaluation (AutoAttack on 1000 Fashion-MNIST points took 45-62 minutes per robust
small CNN on one CPU core, docs/results/training.md) can run as shards on several processes
or machines, each a complete attack cascade on its own slice of the split. :func:`merge_attack_runs` checks that the shards attacked the same
checkpoint, data, budget and attacks on disjoint points, then writes the report the
single run would have written: per-point tensors in index order and accuracies over the union.
Random draws of a sharded run differ from an unsharded one; the budgets and attacks do not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import CorruptDataError, UserError
from ..io import atomic_write, atomic_write_json

# Settings every shard must share.
SHARED = ("checkpoint", "dataset", "split", "eps", "norm", "attacks_requested")


def _read(shard: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, str]]:
    rep, adv = shard / "robustness.json", shard / "adversarial.safetensors"
    if not rep.is_file() or not adv.is_file():
        raise UserError(f"{shard}: not a finished 'robust-ebm attack' output (needs "
                        "robustness.json and adversarial.safetensors)")
    try:
        with safe_open(str(adv), "pt") as f:
            meta = f.metadata() or {}
        report = json.loads(rep.read_text())
        tensors = load_file(str(adv))
    except (SafetensorError, ValueError, RecursionError) as exc:
        raise CorruptDataError(f"{shard}: damaged attack output ({exc}); rerun that shard") from None
    if not isinstance(report, dict):
        raise CorruptDataError(f"{rep}: not a robustness report (a JSON object); rerun that shard")
    return report, tensors, meta


def merge_attack_runs(shards: list[str | os.PathLike[str]], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Merge the ``robust-ebm attack`` outputs in ``shards`` into ``out``; return the report.

    Raises UserError when the shards differ in a setting of :data:`SHARED` or overlap.
    """
    if len(shards) < 2:
        raise UserError("merging needs at least two shard folders")
    parts = [_read(Path(s)) for s in shards]
    first = parts[0][0]
    for (rep, _, _), shard in zip(parts[1:], shards[1:]):
        diff = [k for k in SHARED if rep.get(k) != first.get(k)]
        if diff:
            raise UserError(f"{shard} differs from {shards[0]} in {', '.join(diff)}; "
                            "only shards of one evaluation can be merged")
    index = torch.cat([t["index"] for _, t, _ in parts])
    if index.unique().numel() != index.numel():
        raise UserError("the shards overlap (a sample index appears twice); give disjoint "
                        "--start/--n ranges")
    order = index.argsort()
    tensors = {k: torch.cat([t[k] for _, t, _ in parts])[order].contiguous()
               for k in ("x_adv", "y", "index", "robust", "clean_correct")}
    fooled_by = [f for rep, _, _ in parts for f in rep["fooled_by"]]
    n = int(index.numel())
    rows = []
    for i, row in enumerate(first["attacks"]):
        group = [rep["attacks"][i] for rep, _, _ in parts]
        rows.append({
            "name": row["name"],
            "attacked": sum(g["attacked"] for g in group),
            "fooled": sum(g["fooled"] for g in group),
            # robust accuracy after this attack of the cascade, over all shards' points
            "robust_accuracy": sum(g["robust_accuracy"] * rep["n"]
                                   for g, (rep, _, _) in zip(group, parts)) / n,
            "seconds": sum(g["seconds"] for g in group),
        })
    report = {k: first[k] for k in SHARED} | {
        "n": n,
        "start": int(index.min()),
        "contiguous": bool(int(index.max()) - int(index.min()) + 1 == n),
        "clean_accuracy": float(tensors["clean_correct"].double().mean()),
        "robust_accuracy": float(tensors["robust"].double().mean()),
        "attacks": rows,
        "fooled_by": [fooled_by[i] for i in order.tolist()],
        "sanity_checks": [c for rep, _, _ in parts for c in rep.get("sanity_checks", [])],
        "shards": [str(s) for s in shards],
        "out": str(out),
    }
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write(dest / "adversarial.safetensors",
                 lambda tmp: save_file(tensors, tmp, metadata=parts[0][2]))
    atomic_write_json(dest / "robustness.json", report)
    return report
