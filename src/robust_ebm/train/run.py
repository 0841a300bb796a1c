"""A training run from its resolved configuration: what ``robust-ebm train`` does.

:func:`run_training` builds the objective, the data split, the model and the standard callbacks
(:func:`~robust_ebm.train.callbacks.default_callbacks`) from a resolved configuration (the four
sections of :mod:`robust_ebm.train.config`), trains, and saves ``model.safetensors`` beside
``run.json``, ``metrics.jsonl`` and the callbacks' files in ``out``. ``robust-ebm train`` and
``robust-ebm demo --retrain`` both call it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import save_model
from ..data import load_dataset, split_train_val
from ..distributed_eval import is_main
from ..errors import UserError
from ..loading import check_model_accepts
from ..models import Classifier, create_model
from ..objectives import make_objective
from ..provenance import write_run_json
from .callbacks import default_callbacks
from .config import eval_config, model_spec, train_config
from .loop import check_device_options, train

__all__ = ["run_training"]


def _initial_model(cfg: dict[str, Any], train_set: Any, seed: int) -> Classifier:
    """The configured model with its initial weights drawn from ``seed`` only, normalizing by
    the training set's statistics (unless the config asks for raw [0, 1] inputs)."""
    torch.manual_seed(seed)  # the initial weights depend on the seed only
    name, normalize, model_kw = model_spec(cfg)
    stats = (train_set.mean, train_set.std) if normalize else (None, None)  # None: raw [0, 1]
    model = create_model(name, train_set.num_classes, train_set.shape[0], *stats, **model_kw)
    check_model_accepts(model, train_set.shape, str(cfg["data"]["dataset"]))
    return model


def run_training(
    cfg: dict[str, Any],
    out: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    resume: bool = False,
    log: Callable[[str], None] = print,
    prepare: Callable[[], Path] | None = None,
) -> dict[str, Any] | None:
    """Train as configured into ``out``; the result (None on non-main torchrun ranks).

    Args:
        cfg: the resolved configuration ([data] [model] [objective] [train]); a missing
            ``train.eval_eps`` is set (in place) to the objective's budget and a missing
            ``train.eval_norm`` to its norm when that is not 'linf' (None reads 'linf'), so the per-epoch PGD evaluation attacks at the
            training budget and threat model.
        out: run folder (created); ``resume`` continues from its ``state.pt``.
        log: progress lines (main process only).
        prepare: creates (and locks) the run folder once the data and model were checked, so
            that a refused run creates nothing (``robust-ebm train`` passes
            :func:`robust_ebm.outputs.prepare_out` through its ``--out`` rules); default: mkdir.
    Returns:
        ``out``, ``checkpoint`` (``out/model.safetensors``), ``config`` (``cfg``),
        ``history`` (one record per epoch) and ``test`` (the last epoch's test evaluation).
    """
    obj_hp = {k: v for k, v in cfg["objective"].items() if k != "name"}
    objective = make_objective(cfg["objective"]["name"], **obj_hp)
    if cfg["train"].get("eval_eps") is None and getattr(objective, "eps", None) is not None:
        cfg["train"]["eval_eps"] = float(objective.eps)
    norm = str(getattr(objective, "norm", "linf"))
    if cfg["train"].get("eval_norm") is None and norm != "linf":  # None means 'linf': states
        cfg["train"]["eval_norm"] = norm  # saved before eval_norm existed still resume
    tcfg, ecfg = train_config(cfg), eval_config(cfg)
    data = cfg["data"]
    if data["val_size"] is None or data["val_size"] < 0:
        raise UserError(f"val_size must be >= 0; got {data['val_size']}")
    device = torch.device(device)
    check_device_options(tcfg, device)
    train_set, val, test = _splits(data, tcfg.seed)
    model = _initial_model(cfg, train_set, tcfg.seed)
    main = is_main()
    out = Path(out)
    if prepare is not None:
        out = prepare()
    else:
        out.mkdir(parents=True, exist_ok=True)
    if main and not resume:
        write_run_json(out, cfg, tcfg.seed, device)
    meta = {"dataset": data["dataset"], "objective": cfg["objective"]["name"],
            "objective_config": cfg["objective"], "input_shape": list(train_set.shape)}
    callbacks = default_callbacks(ecfg, tcfg.seed, train_set, val_set=val, test_set=test,
                                  out_dir=out, metadata=meta, config=cfg["train"])
    history = train(model, objective, train_set, tcfg, callbacks, out_dir=out, device=device,
                    run_config=cfg, resume=resume, log=log)
    if not main:
        return None
    final = history[-1]
    ckpt = save_model(out / "model.safetensors", model, epoch=tcfg.epochs, metrics=final,
                      config=cfg["train"], **meta)
    return {"out": str(out), "checkpoint": str(ckpt), "config": cfg, "history": history,
            "test": final.get("eval", {}).get("test")}


def _splits(data: dict[str, Any], seed: int) -> tuple[Any, Any, Any]:
    """(train, validation or None, test) of the [data] section: ``val_size`` seeded-random
    training samples held out, then ``train_subset`` seeded-random samples of the rest."""
    full = load_dataset(data["dataset"], "train", data["data_dir"])
    test = load_dataset(data["dataset"], "test", data["data_dir"])
    if data["val_size"] >= len(full):
        raise UserError(f"val_size {data['val_size']} leaves no training data ({len(full)} samples)")
    train_set, val = split_train_val(full, data["val_size"], seed=seed) if data["val_size"] else (full, None)
    if data["train_subset"] is not None and data["train_subset"] < len(train_set):
        g = torch.Generator().manual_seed(seed)
        train_set = train_set.subset(torch.randperm(len(train_set), generator=g)[: data["train_subset"]])
    return train_set, val, test
