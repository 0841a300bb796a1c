"""``robust-ebm demo --retrain``: rebuild the committed models from their configs.

The committed ``artifacts/fmnist/{objective}-s0.safetensors`` came from
``configs/fmnist/base.toml`` with an inner PGD-5 of step 0.05 at eps 0.1 for the adversarial
objectives (``scripts/fmnist_grid.sh 0``). Retraining all six takes hours on a 2-core CPU
(about 3.6 minutes per PGD-5 epoch on 10,000 images; 8 epochs each). Each model trains in
``<out>/models/<objective>-s0/`` and resumes from its saved state after an interruption;
the demo's stages then read these models instead of the committed ones (their fingerprints hold
the checkpoints' hashes, so every stage is recomputed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .config import OBJECTIVES, DemoConfig
from .runner import prefixed

__all__ = ["retrain", "retrain_config"]

INNER = {"eps": 0.1, "step_size": 0.05, "steps": 5}


def retrain_config(root: Path, objective: str, seed: int, quick: bool) -> dict[str, Any]:
    """The resolved training configuration of one committed model (``quick``: 1 epoch on 256
    images, for tests of this path only)."""
    from ..train.config import default_config, load_toml, merge

    cfg = merge(default_config(), load_toml(root / "configs" / "fmnist" / "base.toml"))
    cfg["objective"]["name"] = objective
    if objective != "standard":
        cfg["objective"].update(INNER)
    cfg["train"]["seed"] = seed
    if quick:
        cfg["data"]["train_subset"] = 256
        cfg["train"].update({"epochs": 1, "eval_n": 20, "energy_n": 20, "eval_steps": 1})
    return cfg


def _train(cfg: dict[str, Any], out: Path, log: Callable[[str], None]) -> Path:
    """One model as ``robust-ebm train`` trains it (:func:`robust_ebm.train.run.run_training`),
    resuming from ``out/state.pt`` when an earlier run was interrupted."""
    from ..train.run import run_training
    from ..train.state import STATE_FILE

    final = out / "model.safetensors"
    if final.is_file():
        return final
    result = run_training(cfg, out, resume=(out / STATE_FILE).is_file(), log=log)
    assert result is not None  # one process: always the main one
    return Path(result["checkpoint"])


def retrain(cfg: DemoConfig, out: str | Path, quick: bool = False,
            log: Callable[[str], None] = print) -> DemoConfig:
    """Train the six committed objectives into ``out/models``; the config reading them."""
    log("--retrain: rebuilding the six committed models from configs/fmnist/base.toml. "
        + ("(--quick: 1 epoch on 256 images each, minutes.)" if quick else
           "This takes HOURS on a 2-core CPU (about 30 minutes per adversarial model); "
           "interrupt any time, the next run resumes."))
    models = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        for obj in OBJECTIVES:
            run_dir = Path(out) / "models" / f"{obj}-s{cfg.seed}"
            log(f"retrain {obj} -> {run_dir}")
            models[obj] = _train(retrain_config(cfg.root, obj, cfg.seed, quick), run_dir,
                                 prefixed(log, f"  {obj} "))
    finally:
        torch.set_num_threads(threads)
    return replace(cfg, models=models)
