"""One robustness evaluation written to disk: the cascade, optional sanity checks, the files.

:func:`write_attack_run` runs :func:`~robust_ebm.evaluation.evaluate_robustness` (Croce & Hein,
arXiv 2003.01690; under torchrun sharded over the ranks, :mod:`robust_ebm.evaluation.sharded`)
and writes ``adversarial.safetensors`` (x_adv float32 (N,C,H,W), y, index into the split,
robust and clean_correct as uint8, with the run's settings as metadata) and ``robustness.json``;
:func:`robust_ebm.evaluation.merge_attack_runs` merges such folders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..io import atomic_write, atomic_write_json
from .robustness import RobustnessReport
from .sanity import sanity_checks
from .sharded import sharded_robustness

__all__ = ["build_attacks", "write_attack_run"]


def build_attacks(names: Sequence[str], hp: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, attack) for each registered name at hyperparameters ``hp``; ``steps`` is dropped
    for FGSM and the reference-library attacks, which fix or name their iterations otherwise."""
    from ..attacks import make_attack
    from ..attacks.registry import REFERENCE_ATTACKS

    out = []
    for name in names:
        kw = dict(hp)
        if name in REFERENCE_ATTACKS or name == "fgsm":
            kw.pop("steps", None)
        try:
            out.append((name, make_attack(name, **kw)))
        except UserError as exc:  # e.g. --step-size for an attack that sets its own
            raise UserError(f"attack {name!r}: {exc}") from None
    return out


def _write_adversarial(
    path: Path,
    report: RobustnessReport,
    y: Tensor,
    index: Tensor,
    names: list[str],
    eps: float,
    norm: str,
    meta: dict[str, Any],
) -> None:
    """Write x_adv, y, index and the robust / clean-correct masks (uint8) as safetensors, the
    attack settings, dataset and split as its metadata."""
    from safetensors.torch import save_file

    tensors = {
        "x_adv": report.x_adv.detach().float().cpu().contiguous(),
        "y": y.cpu().contiguous(),
        "index": index.contiguous(),
        "robust": report.robust.to(torch.uint8).cpu().contiguous(),
        "clean_correct": report.clean_correct.to(torch.uint8).cpu().contiguous(),
    }
    st_meta = {"attacks": ",".join(names), "eps": str(eps), "norm": norm,
               "dataset": str(meta.get("dataset")), "split": str(meta.get("split"))}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=st_meta))


def write_attack_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: list[tuple[str, Any]],
    out: str | os.PathLike[str],
    *,
    index: Tensor,
    eps: float,
    norm: str = "linf",
    seed: int = 0,
    batch_size: int = 500,
    sanity: bool = False,
    meta: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], RobustnessReport] | None:
    """Attack (x, y) with the cascade ``attacks`` and write the run's files to ``out``.

    Under torchrun every rank attacks its shard of the points and rank 0 writes the merged
    run, identical to one process (:func:`~robust_ebm.evaluation.sharded_robustness`).

    Args:
        index: (N,) positions of the points in their split (kept for merging shards).
        sanity: also run the gradient-masking checks on the first 200 points.
        meta: facts merged into ``robustness.json`` (checkpoint, dataset, split, start, ...);
            its ``dataset`` and ``split`` also go into the safetensors metadata.
    Returns:
        the result (``robustness.json``) and the report; None on the other torchrun ranks,
        which write nothing.
    """
    out = Path(out)
    meta = dict(meta or {})
    report = sharded_robustness(model, (x, y), attacks, batch_size=batch_size)
    if report is None:  # a torchrun rank other than 0: its shard went to rank 0
        return None
    if sanity:
        m = min(200, x.shape[0])
        report.sanity = sanity_checks(
            model, x[:m], y[:m], eps=eps, norm=norm,
            white_box_accuracy=float(report.robust[:m].float().mean()) if m else None,
            batch_size=batch_size, seed=seed,
        )
    names = [name for name, _ in attacks]
    _write_adversarial(out / "adversarial.safetensors", report, y, index, names, eps, norm, meta)
    result = report.to_dict() | meta | {
        "eps": eps, "norm": norm, "attacks_requested": names,
        "fooled_by": report.fooled_by, "out": str(out),
    }
    atomic_write_json(out / "robustness.json", result)
    return result, report
