"""Generation as a study: cached init statistics, SGLD samples, their files and metrics.

Class-conditional SGLD with momentum on E(x, y) from a fitted initialisation (Beadini & Masi,
arXiv 2304.04033; Mirza et al., arXiv 2407.06315; see docs/science.md). :func:`build_init`
fits (or reuses) the class statistics of the pca and gaussian inits in a cache folder and says
which happened; :func:`write_generation` samples and writes ``grid.png``, ``grid_x0.png``,
``samples.npz`` (uint8 x and x0, y, float32 energy trajectory; int64 ``stopped_at`` with
adaptive stopping), ``energy.png``, ``energy.json`` and ``metrics.json`` (FID/KID/IS/
precision-recall on an independent feature network, or why they were skipped).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from ..io import atomic_write_json, atomic_write_npz
from .generate import save_grid
from .init import INITS as INIT_REGISTRY
from .init import (
    BufferInit,
    ClassGaussianInit,
    ClassPCAInit,
    Init,
    NoiseInjectionInit,
    NormalInit,
    PCAOrGaussianInit,
    UniformInit,
    make_init,
)
from .sgld import SGLD

__all__ = [
    "CLASS_NAMES",
    "init_aliases",
    "init_options",
    "build_init",
    "check_training_data",
    "default_stats_dir",
    "energy_summary",
    "parse_classes",
    "real_subset",
    "summary_text",
    "to_uint8",
    "write_generation",
]

_BUILT_IN = ("pca", "gaussian", "uniform", "noise", "normal", "pca_gaussian", "buffer")


def init_aliases() -> tuple[str, ...]:
    """The ``generate --init`` choices: the alias of every registered initialisation
    (:data:`robust_ebm.sampling.init.INITS`), the built-in ones first."""
    aliases = {INIT_REGISTRY.meta(n).get("alias") or n for n in INIT_REGISTRY.names()}
    return tuple(a for a in _BUILT_IN if a in aliases) + tuple(sorted(aliases - set(_BUILT_IN)))

CLASS_NAMES = {
    "fashion_mnist": ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Boot"),
}


def parse_classes(text: str | None, num_classes: int) -> list[int]:
    """Class indices from ``--classes`` text ("0,3,7"; None: all), checked against the model."""
    if text is None:
        return list(range(num_classes))
    try:
        classes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--classes expects comma-separated integers; got {text!r}") from None
    if not classes:
        raise UserError("--classes is empty")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"--classes {bad} out of range: the model has {num_classes} classes")
    if len(set(classes)) != len(classes):
        raise UserError(f"--classes has duplicates: {text!r}")
    return classes


def check_training_data(
    train_ds: Any, channels: int, classes: Sequence[int], init: str, dataset: str
) -> None:
    """UserError when the training images have another channel count than the model or, for
    the inits fitted on them, lack one of the wanted classes."""
    if tuple(train_ds.shape[:1]) != (channels,):
        raise UserError(
            f"checkpoint expects {channels}-channel images but {dataset} has "
            f"{train_ds.shape[0]}; generate with the dataset it was trained on")
    missing = sorted(set(classes) - set(torch.unique(train_ds.labels).tolist()))
    if missing and init in ("pca", "gaussian", "noise", "pca_gaussian"):
        raise UserError(f"classes {missing} have no training images for the {init} init")


def real_subset(train_ds: Any, n: int, seed: int) -> Any:
    """A seeded random subset of ``n`` real images for the metrics (all of them when n is 0
    or not smaller than the set)."""
    if n and n < len(train_ds):
        g = torch.Generator().manual_seed(seed)
        return train_ds.subset(torch.randperm(len(train_ds), generator=g)[:n])
    return train_ds


def summary_text(result: dict[str, Any], energy: str, steps: int) -> str:
    """A few lines for people: samples, mean energy at x0 and at the end, the metrics."""
    metrics = result["metrics"]
    text = [f"{result['n']} samples of {len(result['classes'])} classes -> {result['out']}",
            f"  mean {energy} energy: {result['energy_start']:.3f} at x0 -> "
            f"{result['energy_end']:.3f} after {steps} steps"]
    if "stopped" in result:
        st = result["stopped"]
        when = "" if st["mean_step"] is None else f", at step {st['mean_step']:.1f} on average"
        text.append(f"  adaptive stopping: {st['chains']} of {st['of']} chains stopped{when}")
    if "fid" in metrics:
        text.append(f"  FID {metrics['fid']:.2f}  KID {metrics['kid_mean']:.4f}  "
                    f"IS {metrics['is_mean']:.2f}  precision {metrics['precision']:.3f}  "
                    f"recall {metrics['recall']:.3f}")
        text.append(f"  features: {metrics['features']}")
    else:
        text.append(f"  metrics skipped: {metrics['skipped']}")
    return "\n".join(text)


def default_stats_dir() -> Path:
    """``$XDG_CACHE_HOME/robust_ebm/stats`` (``~/.cache/robust_ebm/stats`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "robust_ebm" / "stats"


def build_init(
    kind: str,
    images: Tensor,
    labels: Tensor,
    dataset_name: str,
    stats_dir: str | os.PathLike[str] | None = None,
    *,
    pca_variance: float = 0.95,
    pca_sigma: float = 0.005,
    pca_rule: str = "reach",
    noise_std: float = 0.5,
    options: dict[str, Any] | None = None,
) -> tuple[Init, dict[str, Any]]:
    """The initialiser ``kind`` (one of :func:`init_aliases`) fitted on the training images, and a note.

    pca and gaussian statistics are cached in ``stats_dir`` (default :func:`default_stats_dir`)
    under a name holding the dataset and a hash of the settings; a cached file fitted on other
    data is refitted. The note says ``stats_path``, ``stats_reused`` and
    ``stats_refitted_mismatch`` (and, for pca, the components kept per class). ``pca_rule`` is
    :class:`ClassPCAInit`'s ``component_rule`` ('below': the published count). ``options``:
    the other settings of the inits (the published variants, docs/fidelity.md), keys as
    :func:`init_options` names them.
    """
    opt = dict(options or {})
    c, h, w = (int(s) for s in images.shape[1:])
    if kind == "uniform":
        return UniformInit((c, h, w), opt.get("uniform_low", 0.0), opt.get("uniform_high", 1.0)), {}
    if kind == "normal":
        return NormalInit((c, h, w), opt.get("normal_mean", 0.0), opt.get("normal_std", 1.0),
                          bool(opt.get("normal_clip", False))), {}
    if kind == "noise":
        return NoiseInjectionInit(noise_std, opt.get("noise_pick", "random"),
                                  opt.get("noise_pool")).fit(images, labels), {}
    if kind == "buffer":
        return _buffer_init(images, labels, dataset_name, stats_dir, opt,
                            pca_variance=pca_variance, pca_sigma=pca_sigma, pca_rule=pca_rule,
                            noise_std=noise_std)
    if kind not in ("pca", "gaussian", "pca_gaussian"):
        return _registered_init(kind, images, labels), {}
    if not 0 < pca_variance <= 1:
        raise UserError(f"--pca-variance must be in (0, 1] (a share); got {pca_variance}")
    pca_kwargs: dict[str, Any] = {
        "variance": pca_variance, "sigma": pca_sigma, "component_rule": pca_rule,
        "n_components": opt.get("pca_components"),
        "more_variance": not opt.get("pca_least", False),
        "blur": opt.get("pca_blur", 0.0), "blur_layout": opt.get("pca_blur_layout", "spatial")}
    gauss_kwargs: dict[str, Any] = {
        "jitter": opt.get("gaussian_jitter", 0.0), "ddof": opt.get("gaussian_ddof", 1),
        "clip": not opt.get("gaussian_no_clip", False)}
    if kind == "pca":
        return _cached(ClassPCAInit, pca_kwargs, images, labels, dataset_name, stats_dir)
    if kind == "gaussian":
        return _cached(ClassGaussianInit, gauss_kwargs, images, labels, dataset_name, stats_dir)
    pca, pca_note = _cached(ClassPCAInit, pca_kwargs, images, labels, dataset_name, stats_dir)
    gauss, gauss_note = _cached(ClassGaussianInit, gauss_kwargs, images, labels, dataset_name,
                                stats_dir)
    assert isinstance(pca, ClassPCAInit) and isinstance(gauss, ClassGaussianInit)
    mix = PCAOrGaussianInit(pca, gauss, p_pca=opt.get("mix_p_pca", 0.5))
    return mix, {"pca": pca_note, "gaussian": gauss_note}


def stats_path(stats_dir: str | os.PathLike[str] | None, dataset_name: str, what: str) -> Path:
    """Where statistics ``what`` of a dataset's training split are cached: ``stats_dir`` (or
    :func:`default_stats_dir`) / ``{dataset}-train-{what}.safetensors``, the dataset name made
    safe for a file name."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset_name)
    folder = Path(stats_dir) if stats_dir else default_stats_dir()
    return folder / f"{safe}-train-{what}.safetensors"


def _cached(
    cls: type[ClassPCAInit | ClassGaussianInit],
    kwargs: dict[str, Any],
    images: Tensor,
    labels: Tensor,
    dataset_name: str,
    stats_dir: str | os.PathLike[str] | None,
) -> tuple[Init, dict[str, Any]]:
    """``cls(**kwargs)`` fitted on the images, its statistics cached (see :func:`build_init`)."""
    key = hashlib.sha256(json.dumps(cls(**kwargs).config(), sort_keys=True).encode()).hexdigest()
    path = stats_path(stats_dir, dataset_name, f"{cls.name}-{key[:10]}")
    init, status = cls.load_or_fit(path, images, labels, on_mismatch="refit", **kwargs)
    note: dict[str, Any] = {"stats_path": str(path), "stats_reused": status == "reused",
                            "stats_refitted_mismatch": status == "refitted"}
    if isinstance(init, ClassPCAInit):
        note["pca_components"] = {int(c): len(v) for c, v in init.eigenvalues.items()}
    return init, note


def _buffer_init(
    images: Tensor,
    labels: Tensor,
    dataset_name: str,
    stats_dir: str | os.PathLike[str] | None,
    opt: dict[str, Any],
    **init_args: Any,
) -> tuple[Init, dict[str, Any]]:
    """The replay-buffer init of ``opt['buffer']`` (a samples.npz), checked against the image
    shape, restarting from the init ``opt['buffer_reinit']`` (default uniform)."""
    if not opt.get("buffer"):
        raise UserError("--init buffer needs --buffer FILE (the samples.npz of an earlier "
                        "robust-ebm generate run)")
    reinit_kind = opt.get("buffer_reinit", "uniform")
    if reinit_kind == "buffer":
        raise UserError("--buffer-reinit cannot be buffer itself; choose another init")
    buffer = BufferInit.from_file(opt["buffer"], reinit_freq=opt.get("buffer_reinit_freq", 0.05),
                                  pick=opt.get("buffer_pick", "random"))
    if tuple(buffer.x.shape[1:]) != tuple(images.shape[1:]):
        raise UserError(f"buffer {opt['buffer']} holds images of shape "
                        f"{tuple(buffer.x.shape[1:])}, the data {tuple(images.shape[1:])}; "
                        "use a buffer generated on the same dataset")
    reinit, note = build_init(reinit_kind, images, labels, dataset_name, stats_dir,
                              options=opt, **init_args)
    buffer.reinit = reinit
    return buffer, {"buffer_reinit": note} if note else {}


# the init-specific ``generate`` flags and the inits (aliases) they apply to
_FLAG_INITS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("uniform_low", "uniform_high"), ("uniform",)),
    **dict.fromkeys(("normal_mean", "normal_std", "normal_clip"), ("normal",)),
    **dict.fromkeys(("gaussian_jitter", "gaussian_ddof", "gaussian_no_clip"), ("gaussian",)),
    **dict.fromkeys(("pca_components", "pca_least", "pca_blur", "pca_blur_layout"), ("pca",)),
    **dict.fromkeys(("noise_pick", "noise_pool", "noise_split"), ("noise",)),
    "mix_p_pca": ("pca_gaussian",),
    **dict.fromkeys(("buffer", "buffer_reinit", "buffer_reinit_freq", "buffer_pick"), ("buffer",)),
}


def init_options(args: Any) -> dict[str, Any]:
    """The ``options`` of :func:`build_init` from parsed ``generate`` flags (absent flags are
    left out, so the inits' own defaults apply).

    Raises:
        UserError: a flag of an init this run does not use (``--init``, the buffer's
            ``--buffer-reinit``, and both halves of ``pca_gaussian``), which would be ignored.
    """
    used = {args.init}
    if args.init == "buffer":
        used.add(getattr(args, "buffer_reinit", None) or "uniform")
    if "pca_gaussian" in used:
        used |= {"pca", "gaussian"}
    given = {n: getattr(args, n) for n in _FLAG_INITS if getattr(args, n, None) is not None}
    for name in given:
        if not used & set(_FLAG_INITS[name]):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} applies to --init {' or '.join(_FLAG_INITS[name])}, which "
                            f"this run does not use (--init {args.init}); drop it or change --init")
    given.pop("noise_split", None)  # chooses the data (the CLI's), not an option of the init
    return given


def _registered_init(kind: str, images: Tensor, labels: Tensor) -> Init:
    """Any other registered initialisation by alias or name, built without arguments and fitted
    on the training images when its ``fitted`` flag says so."""
    names = INIT_REGISTRY.names(alias=kind) or ([kind] if kind in INIT_REGISTRY else [])
    if not names:
        raise UserError(f"unknown init {kind!r}; choose from {', '.join(init_aliases())}")
    init = make_init(names[0])
    return init.fit(images, labels) if INIT_REGISTRY.meta(names[0]).get("fitted") else init


def to_uint8(x: Tensor) -> np.ndarray:
    """Images in [0, 1] -> uint8 numpy array (rounded)."""
    return (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def energy_summary(traj: Tensor, y: Tensor, classes: Sequence[int]) -> dict[str, Any]:
    """Mean and std of the energy (steps + 1, M) at each step, overall and per class."""
    out: dict[str, Any] = {
        "overall": {"mean": traj.mean(1).tolist(), "std": traj.std(1, unbiased=False).tolist()},
        "per_class": {},
    }
    for c in classes:
        t = traj[:, y == c]
        out["per_class"][str(c)] = {"mean": t.mean(1).tolist(),
                                    "std": t.std(1, unbiased=False).tolist()}
    return out


def _sample_metrics(
    x: Tensor,
    real: Any,
    features: tuple[nn.Module, str] | None,
    seed: int,
    real_set: str | None,
) -> dict[str, Any]:
    """FID/KID/IS/precision-recall of the samples ``x`` against ``real``, or why they were
    skipped."""
    from ..generation_metrics import generation_metrics

    if features is None or real is None:
        return {"skipped": "no --features given: FID/KID/IS/precision-recall need a feature "
                           "network (an independently trained classifier of the dataset)"}
    metrics: dict[str, Any] = generation_metrics(real.images, x, features[0], features[1],
                                                 seed=seed)
    if real_set is not None:
        metrics["real_set"] = real_set
    return metrics


def write_generation(
    model: nn.Module,
    init: Init,
    sampler: SGLD,
    out: str | os.PathLike[str],
    *,
    classes: Sequence[int],
    n_per_class: int,
    real: Any = None,
    features: tuple[nn.Module, str] | None = None,
    batch_size: int = 100,
    seed: int = 0,
    grid_cols: int = 10,
    class_names: Sequence[str] | None = None,
    title: str = "",
    init_name: str = "",
    real_set: str | None = None,
) -> dict[str, Any] | None:
    """Sample ``n_per_class`` images of each class and write the study's files to ``out``.

    Under torchrun the chains are sharded over the ranks and rank 0 writes the merged samples,
    identical to one process (:func:`~robust_ebm.evaluation.sharded_generation`).

    Args:
        real: the real images for the metrics (an ImageDataset subset); with ``features``
            (network, its name) FID/KID/IS/precision-recall are computed, else skipped.
        title: caption of the grid and the energy plot; ``init_name`` captions ``grid_x0``.
        real_set: a description of ``real`` recorded in the metrics.
    Returns:
        ``n``, ``energy_start``/``energy_end`` (mean energy at x0 and at the end), the energy
        ``summary``, ``metrics`` and ``files`` (name -> path); None on the other torchrun
        ranks, which write nothing.
    """
    from ..evaluation.sharded import sharded_generation
    from ..reports.plots import plot_energy_trajectory

    out = Path(out)
    gen = sharded_generation(model, init, sampler, classes, n_per_class, batch_size, seed)
    if gen is None:  # a torchrun rank other than 0: its chains went to rank 0
        return None
    assert gen.x0 is not None
    files = {
        "grid": save_grid(out / "grid.png", gen.x, gen.y, grid_cols, class_names, title),
        "grid_x0": save_grid(out / "grid_x0.png", gen.x0, gen.y, grid_cols, class_names,
                             f"starting points ({init_name})"),
        "samples": atomic_write_npz(out / "samples.npz", x=to_uint8(gen.x), x0=to_uint8(gen.x0),
                                    y=gen.y.numpy(),
                                    energy_trajectory=gen.energy_trajectory.float().numpy(),
                                    **_stops(gen)),
    }
    summary = energy_summary(gen.energy_trajectory, gen.y, classes)
    files["energy_plot"] = plot_energy_trajectory(out / "energy.png", summary,
                                                  str(sampler.energy), title, class_names)
    files["energy"] = atomic_write_json(out / "energy.json", summary)
    metrics = _sample_metrics(gen.x, real, features, seed, real_set)
    files["metrics"] = atomic_write_json(out / "metrics.json", metrics)
    result = {"n": len(gen.y), "energy_start": summary["overall"]["mean"][0],
              "energy_end": summary["overall"]["mean"][-1], "summary": summary,
              "metrics": metrics, "files": files}
    if gen.stopped_at is not None:  # adaptive stopping: how many chains stopped, and when
        stopped = gen.stopped_at < sampler.steps
        result["stopped"] = {"chains": int(stopped.sum()), "of": len(gen.y),
                             "mean_step": float(gen.stopped_at[stopped].float().mean())
                             if bool(stopped.any()) else None}
    return result


def _stops(gen: Any) -> dict[str, Any]:
    """``stopped_at`` (int64 (M,), the step each chain stopped at; ``steps`` when it never did)
    for samples.npz, when the sampler stopped adaptively."""
    return {} if gen.stopped_at is None else {"stopped_at": gen.stopped_at.numpy()}
