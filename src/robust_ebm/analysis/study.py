"""The energy-under-attack study end to end: table, histograms, PGD sweep, report files.

Mirza et al., ECCV 2024 (arXiv 2407.06315); see docs/science.md. :func:`write_energy_study`
runs :func:`~robust_ebm.analysis.analyze_energy` (one pipeline: per attack accuracy, E(x),
E(x,y), gaps dE = E(x) - E(x*); under torchrun sharded over the ranks,
:mod:`robust_ebm.evaluation.sharded`) and writes ``energy.json``, ``energy_hist.png`` (overlaid
histograms of E(x) and E(x*)), ``energy.md`` and, with a sweep, ``pgd_sweep.json`` and
``pgd_sweep.png`` (PGD-CE over steps and eps). All writes atomic.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .energy_analysis import sweep_pgd

__all__ = ["write_energy_study"]


def write_energy_study(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Mapping[str, Callable[..., Tensor]],
    out: str | os.PathLike[str],
    *,
    eps: float,
    norm: str = "linf",
    notes: Sequence[str] = (),
    sweep: tuple[Sequence[int], Sequence[float]] | None = None,
    seed: int | None = 0,
    batch_size: int = 500,
    meta: Mapping[str, Any] | None = None,
    title: str = "Energy under attack",
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], str] | None:
    """Analyse (x, y) under ``attacks`` at budget ``eps`` and write the study's files.

    Under torchrun every rank attacks its shard of the points and rank 0 merges them, runs the
    sweep and writes the files, identical to one process.

    Args:
        notes: attacks skipped and why (from :func:`default_attacks`), kept in the result.
        sweep: (step counts, multiples of eps) of the PGD-CE sweep; None skips it.
        meta: facts merged into the result (checkpoint, dataset, split, ...).
        title: heading of the Markdown report.
    Returns:
        the result (``energy.json``) and the Markdown report (``energy.md``); None on the
        other torchrun ranks, which write nothing.
    """
    from ..evaluation.sharded import sharded_energy
    from ..io import atomic_write_json, atomic_write_text
    from ..reports import energy_section, plot_energy_histograms, plot_sweep, sweep_section

    out = Path(out)
    analysis = sharded_energy(model, x, y, attacks, batch_size, log=log)
    if analysis is None:  # a torchrun rank other than 0: its shard went to rank 0
        return None
    analysis.notes.extend(notes)
    result: dict[str, Any] = analysis.to_dict() | dict(meta or {}) | {
        "eps": eps, "norm": norm, "out": str(out)}
    plot_energy_histograms(
        analysis.per_sample(None)["E"].numpy(),
        {k: analysis.per_sample(k)["E"].numpy() for k in analysis.adversarial},
        out / "energy_hist.png", title=f"E(x) clean vs attacked, eps={eps:g}",
    )
    md = energy_section(result, title)
    if sweep is not None:
        steps_grid, factors = sweep
        res = sweep_pgd(model, x, y, eps, steps_grid, factors, norm=norm, seed=seed,
                        batch_size=batch_size)
        atomic_write_json(out / "pgd_sweep.json", res)
        plot_sweep(res, out / "pgd_sweep.png")
        result["sweep"] = res
        md += "\n" + sweep_section(res)
    atomic_write_json(out / "energy.json", result)
    atomic_write_text(out / "energy.md", md)
    return result, md
