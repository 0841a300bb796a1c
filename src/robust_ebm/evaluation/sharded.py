"""The evaluation commands' library calls, sharded over torchrun ranks (one process: unchanged).

Each function takes what its one-process counterpart takes and returns the same result on
rank 0 (and in a one-process run), None on the other ranks, which then write nothing:

* :func:`sharded_robustness` - :func:`robust_ebm.evaluation.evaluate_robustness`
  (:func:`~robust_ebm.evaluation.write_attack_run`, ``attack``);
* :func:`sharded_energy` - :func:`robust_ebm.analysis.analyze_energy`
  (:func:`~robust_ebm.analysis.study.write_energy_study`, ``energy``, and
  :func:`~robust_ebm.detection.workflow.write_evaluation`, ``detect evaluate``);
* :func:`sharded_generation` - :func:`robust_ebm.sampling.generate`
  (:func:`~robust_ebm.sampling.study.write_generation`, ``generate``).

Merging is exact: per-point tensors are concatenated in index order and every accuracy is
recomputed from them with the operation the one-process code uses. Wall times cannot merge
exactly; a merged stage reports the slowest rank's seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..distributed_eval import is_main, run_sharded
from .robustness import AttackRow, RobustnessReport, as_tensors, evaluate_robustness

__all__ = ["merge_reports", "sharded_energy", "sharded_generation", "sharded_robustness"]


def _mean(count: int, n: int) -> float:
    """``float(mask.float().mean())`` of a length-n mask with ``count`` True (as evaluated
    by the one-process code; sums of 0/1 are exact in any order)."""
    return float((torch.arange(n) < count).float().mean()) if n else 0.0


def merge_reports(parts: Sequence[RobustnessReport]) -> RobustnessReport:
    """One report from the reports of consecutive shards of the points (same attacks)."""
    parts = [p for p in parts if p.n > 0] or list(parts[:1])
    names = [[r.name for r in p.rows] for p in parts]
    if any(nm != names[0] for nm in names):
        raise ValueError(f"shards ran different attacks: {names}")
    clean = torch.cat([p.clean_correct.cpu() for p in parts])
    robust = torch.cat([p.robust.cpu() for p in parts])
    n, still = int(clean.numel()), int(clean.sum())
    rows = []
    for k, name in enumerate(names[0]):
        fooled = sum(p.rows[k].fooled for p in parts)
        still -= fooled
        rows.append(AttackRow(name, sum(p.rows[k].attacked for p in parts), fooled,
                              _mean(still, n), max(p.rows[k].seconds for p in parts)))
    return RobustnessReport(
        n=n, clean_accuracy=float(clean.float().mean()) if n else 0.0,
        robust_accuracy=float(robust.float().mean()) if n else 0.0, rows=rows, robust=robust,
        clean_correct=clean, x_adv=torch.cat([p.x_adv.cpu() for p in parts]),
        fooled_by=[f for p in parts for f in p.fooled_by],
    )


def sharded_robustness(model: nn.Module, data: Any, attacks: Any, batch_size: int = 256,
                       **hyperparameters: Any) -> RobustnessReport | None:
    """:func:`evaluate_robustness` over this rank's shard, merged at rank 0 (sanity checks,
    if wanted, are run afterwards by the caller on rank 0, as in one process)."""
    x, y = as_tensors(data)

    def compute(start: int, stop: int) -> RobustnessReport:
        return evaluate_robustness(model, (x[start:stop], y[start:stop]), attacks,
                                   batch_size=batch_size, **hyperparameters)

    return run_sharded(x.shape[0], compute, merge_reports, align=batch_size)


def sharded_energy(model: nn.Module, x: Tensor, y: Tensor, attacks: Any, batch_size: int = 500,
                   log: Any = None) -> Any:
    """:func:`robust_ebm.analysis.analyze_energy` over this rank's shard, merged at rank 0."""
    from ..analysis import analyze_energy
    from ..analysis.energy_analysis import EnergyAnalysis

    def compute(start: int, stop: int) -> EnergyAnalysis | None:
        if stop <= start:  # analyze_energy refuses N = 0
            return None
        return analyze_energy(model, x[start:stop], y[start:stop], attacks, batch_size,
                              log=log if is_main() else None)  # one log, rank 0's

    def merge(parts: list[EnergyAnalysis | None]) -> EnergyAnalysis:
        done = [p for p in parts if p is not None]
        first = done[0]
        return EnergyAnalysis(
            y=torch.cat([p.y for p in done]), clean=torch.cat([p.clean for p in done]),
            adversarial={k: torch.cat([p.adversarial[k] for p in done]) for k in first.adversarial},
            seconds={k: max(p.seconds[k] for p in done) for k in first.seconds},
            notes=list(dict.fromkeys(note for p in done for note in p.notes)),
        )

    return run_sharded(x.shape[0], compute, merge, align=batch_size)


def sharded_generation(model: nn.Module, init: Any, sampler: Any, classes: Sequence[int],
                       n_per_class: int, batch_size: int = 100, seed: int | None = 0,
                       keep_x0: bool = True) -> Any:
    """:func:`robust_ebm.sampling.generate` with its chains sharded over the ranks.

    Chains are cut at batch boundaries. Each chain draws its x0 and noise from its own streams
    keyed by (seed, class, index within the class)
    (:func:`robust_ebm.sampling.generate.sample_classes`), and each rank computes the very
    batches one process computes, so the merged samples are bit-identical to one process.
    """
    from ..sampling.generate import Generation, sample_classes

    n = len(classes) * n_per_class

    def compute(start: int, stop: int) -> Generation | None:
        if stop <= start:
            return None
        return sample_classes(model, sampler, init, classes, n_per_class, batch_size, seed,
                              keep_x0, chains=(start, stop))

    def merge(parts: list[Generation | None]) -> Generation:
        done = [p for p in parts if p is not None]
        x0 = [p.x0 for p in done if p.x0 is not None]
        stops = [p.stopped_at for p in done if p.stopped_at is not None]
        return dataclasses.replace(
            done[0], x=torch.cat([p.x for p in done]), y=torch.cat([p.y for p in done]),
            energy_trajectory=torch.cat([p.energy_trajectory for p in done], dim=1),
            x0=torch.cat(x0) if keep_x0 else None,
            stopped_at=torch.cat(stops) if stops else None,
        )

    return run_sharded(n, compute, merge, align=batch_size)
