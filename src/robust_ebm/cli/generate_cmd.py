"""``robust-ebm generate``: class-conditional samples from a classifier read as an EBM.

SGLD with momentum on the joint energy E(x, y) from a chosen initialisation (SPEC.md Sec. 6;
Beadini & Masi, arXiv 2304.04033). Writes to ``--out``:

* ``grid.png`` (final samples) and ``grid_x0.png`` (starting points), one row per class;
* ``samples.npz`` (atomic): ``x`` and ``x0`` as uint8 (M, C, H, W), ``y`` (M,),
  ``energy_trajectory`` float32 (steps + 1, M);
* ``energy.png``: mean +- std of the energy at each step, overall and per class;
* ``metrics.json``: FID, KID, IS and precision/recall against the real TRAIN set, computed on the
  penultimate features of the classifier given by ``--features`` (never the model under test);
  every number names its feature network. Without ``--features`` the metrics are skipped and
  the file says so;
* ``run.json``.

Fitted init statistics (gaussian, pca) are cached under ``--stats-dir`` (default
``$XDG_CACHE_HOME/robust_ebm/stats``) and checked against the data before reuse.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import load_model, read_metadata
from ..data import load_dataset
from ..errors import UserError
from ..generation_metrics import ClassifierFeatures, generation_metrics
from ..io import atomic_write, atomic_write_json
from ..provenance import write_run_json
from ..sampling import (
    ENERGIES,
    SGLD,
    ClassGaussianInit,
    ClassPCAInit,
    NoiseInjectionInit,
    UniformInit,
    generate,
    save_grid,
)
from .common import (
    add_common_args,
    config_of,
    emit,
    nonnegative_float,
    output_dir,
    positive_int,
    resolve_device,
)

INITS = ("pca", "gaussian", "uniform", "noise")

CLASS_NAMES = {
    "fashion_mnist": ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Boot"),
}


def _positive_float(text: str) -> float:
    value = nonnegative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _momentum(text: str) -> float:
    value = nonnegative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1); got {text}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="sample images from a classifier with SGLD",
        description="Generate images of chosen classes from a classifier read as an energy "
                    "model (SGLD); writes grids, energy trajectories and FID/KID/IS.",
        epilog="example (robust model, metrics on the committed feature network):\n"
               "  robust-ebm generate --checkpoint artifacts/fmnist/weat_adv-s0.safetensors "
               "--dataset fashion_mnist \\\n      --features "
               "artifacts/fmnist/features-small_cnn-h256.safetensors --n-per-class 10 "
               "--out runs/gen",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the model to sample from")
    add_common_args(p)
    p.add_argument("--init", choices=INITS, default="pca",
                   help="starting points: class-wise PCA (default), class Gaussian, U[0,1] noise, "
                        "or a real image plus noise")
    p.add_argument("--steps", type=int, default=50, help="SGLD steps (default 50)")
    p.add_argument("--step-size", type=_positive_float, default=1.0,
                   help="eta; the update is eta/2 * grad, pixel units (default 1.0)")
    p.add_argument("--momentum", type=_momentum, default=0.8, help="zeta in [0,1) (default 0.8)")
    p.add_argument("--noise-std", type=nonnegative_float, default=0.001,
                   help="std of the Gaussian noise added each step (default 0.001)")
    p.add_argument("--energy", choices=ENERGIES, default="joint",
                   help="energy to descend: joint E(x,y) (default), free E(x), ce")
    p.add_argument("--n-per-class", type=positive_int, default=10)
    p.add_argument("--classes", default=None, help="comma-separated class indices (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--pca-variance", type=_positive_float, default=0.95,
                   help="retained-variance target of the PCA init, in (0, 1]")
    p.add_argument("--pca-sigma", type=nonnegative_float, default=0.005, help="sigma_pca")
    p.add_argument("--noise-init-std", type=nonnegative_float, default=0.5,
                   help="noise std of the noise-injection init")
    p.add_argument("--stats-dir", default=None,
                   help="cache of fitted init statistics (default $XDG_CACHE_HOME/robust_ebm/stats)")
    p.add_argument("--features", default=None,
                   help="checkpoint of the feature network for FID/KID/IS (an independently "
                        "trained classifier of the dataset); metrics are skipped without it")
    p.add_argument("--real-n", type=int, default=10000,
                   help="real TRAIN images for the metrics, seeded random subset (0: all)")
    p.add_argument("--grid-cols", type=positive_int, default=10, help="images per grid row")
    p.set_defaults(func=run)


# -- helpers ------------------------------------------------------------------------------------


def parse_classes(text: str | None, num_classes: int) -> list[int]:
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


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe_features(path: str | os.PathLike[str], sha: str) -> str:
    """A name that identifies a feature network, e.g. ``small_cnn-h256 standard fashion_mnist
    (runs/features/fashion_mnist/model.safetensors, sha256 1a2b3c4d5e6f)``."""
    meta = read_metadata(path)
    arch = meta.get("arch", {})
    kw = arch.get("kwargs", {}) or {}
    name = str(arch.get("name", "?")) + (f"-h{kw['hidden']}" if "hidden" in kw else "")
    return (f"{name} {meta.get('objective', '?')} {meta.get('dataset', '?')} "
            f"({path}, sha256 {sha[:12]})")


def default_stats_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "robust_ebm" / "stats"


def build_init(args: argparse.Namespace, train_images: Tensor, train_labels: Tensor,
               dataset_name: str) -> tuple[Any, dict[str, Any]]:
    """The initialiser and a note on where its statistics came from."""
    shape = tuple(int(s) for s in train_images.shape[1:])
    if args.init == "uniform":
        return UniformInit(shape), {}
    if args.init == "noise":
        return NoiseInjectionInit(args.noise_init_std).fit(train_images, train_labels), {}
    if args.init == "pca":
        if not 0 < args.pca_variance <= 1:
            raise UserError(f"--pca-variance must be in (0, 1] (a share); got {args.pca_variance}")
        cls, kwargs = ClassPCAInit, {"variance": args.pca_variance, "sigma": args.pca_sigma}
    else:
        cls, kwargs = ClassGaussianInit, {}
    key = hashlib.sha256(json.dumps(cls(**kwargs).config(), sort_keys=True).encode()).hexdigest()
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset_name)
    stats_dir = Path(args.stats_dir) if args.stats_dir else default_stats_dir()
    path = stats_dir / f"{safe}-train-{cls.name}-{key[:10]}.safetensors"
    existed = path.exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        init = cls.fit_cached(path, train_images, train_labels, on_mismatch="refit", **kwargs)
    refitted = any("do not match" in str(w.message) for w in caught)
    note = {"stats_path": str(path), "stats_reused": existed and not refitted,
            "stats_refitted_mismatch": refitted}
    if args.init == "pca":
        note["pca_components"] = {int(c): len(v) for c, v in init.eigenvalues.items()}
    return init, note


def to_uint8(x: Tensor) -> np.ndarray:
    return (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    def write(tmp: str) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        with open(tmp, "wb") as fh:
            fh.write(buf.getvalue())

    return atomic_write(path, write)


def energy_summary(traj: Tensor, y: Tensor, classes: list[int]) -> dict[str, Any]:
    """Mean and std of the energy at each step, overall and per class."""
    out: dict[str, Any] = {
        "overall": {"mean": traj.mean(1).tolist(), "std": traj.std(1, unbiased=False).tolist()},
        "per_class": {},
    }
    for c in classes:
        t = traj[:, y == c]
        out["per_class"][str(c)] = {"mean": t.mean(1).tolist(),
                                    "std": t.std(1, unbiased=False).tolist()}
    return out


def save_energy_plot(path: Path, summary: dict[str, Any], energy: str, title: str,
                     class_names: tuple[str, ...] | None) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_all, ax_cls = fig.subplots(1, 2)
    label = {"joint": "E(x, y)", "free": "E(x)", "ce": "CE(x, y)"}[energy]
    m = np.asarray(summary["overall"]["mean"])
    s = np.asarray(summary["overall"]["std"])
    steps = np.arange(len(m))
    ax_all.plot(steps, m, color="k", label="all classes")
    ax_all.fill_between(steps, m - s, m + s, color="k", alpha=0.2, label="+- std")
    ax_all.set_title("overall")
    for c, st in summary["per_class"].items():
        cm, cs = np.asarray(st["mean"]), np.asarray(st["std"])
        name = class_names[int(c)] if class_names and int(c) < len(class_names) else c
        (line,) = ax_cls.plot(steps, cm, lw=1, label=str(name))
        ax_cls.fill_between(steps, cm - cs, cm + cs, color=line.get_color(), alpha=0.08)
    ax_cls.set_title("per class (mean, band +- std)")
    for ax in (ax_all, ax_cls):
        ax.set_xlabel("SGLD step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_all.legend(fontsize=7)
    ax_cls.legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


# -- the command --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if args.steps < 0:
        raise UserError(f"--steps must be >= 0; got {args.steps}")
    if args.real_n < 0:
        raise UserError(f"--real-n must be >= 0; got {args.real_n}")
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, map_location=device)
    model_sha = file_sha256(args.checkpoint)
    train_ds = load_dataset(args.dataset, "train", args.data_dir)
    if tuple(train_ds.shape[:1]) != (model.arch["in_channels"],):
        raise UserError(
            f"checkpoint expects {model.arch['in_channels']}-channel images but {args.dataset} "
            f"has {train_ds.shape[0]}; generate with the dataset it was trained on")
    num_classes = int(model.arch["num_classes"])
    classes = parse_classes(args.classes, num_classes)
    missing = sorted(set(classes) - set(torch.unique(train_ds.labels).tolist()))
    if missing and args.init in ("pca", "gaussian", "noise"):
        raise UserError(f"classes {missing} have no training images for the {args.init} init")
    feature_net = feature_name = None
    if args.features:
        feat_sha = file_sha256(args.features)
        if feat_sha == model_sha:
            raise UserError("--features is the model under test; the metrics need an "
                            "independently trained classifier of the dataset")
        feat_model = load_model(args.features, map_location=device)
        if feat_model.arch["in_channels"] != model.arch["in_channels"]:
            raise UserError(f"--features expects {feat_model.arch['in_channels']}-channel "
                            f"images; the samples have {model.arch['in_channels']}")
        feature_net = ClassifierFeatures(feat_model)
        feature_name = describe_features(args.features, feat_sha)

    out = output_dir(args, "generate")
    write_run_json(out, config_of(args), args.seed, device)
    init, init_note = build_init(args, train_ds.images, train_ds.labels, train_ds.name)
    sampler = SGLD(step_size=args.step_size, momentum=args.momentum, noise_std=args.noise_std,
                   steps=args.steps, energy=args.energy)
    gen = generate(model, init, sampler, classes, args.n_per_class, args.batch_size, args.seed)
    assert gen.x0 is not None

    names = CLASS_NAMES.get(train_ds.name)
    ckpt_meta = read_metadata(args.checkpoint) if str(args.checkpoint).endswith(
        ".safetensors") else {}
    what = (f"{ckpt_meta.get('objective', '?')} {model.arch['name']} | init {args.init}, "
            f"{args.steps} steps, eta {args.step_size}, zeta {args.momentum}, s {args.noise_std}")
    files = {
        "grid": save_grid(out / "grid.png", gen.x, gen.y, args.grid_cols, names, what),
        "grid_x0": save_grid(out / "grid_x0.png", gen.x0, gen.y, args.grid_cols, names,
                             f"starting points ({args.init})"),
        "samples": save_npz(out / "samples.npz", x=to_uint8(gen.x), x0=to_uint8(gen.x0),
                            y=gen.y.numpy(),
                            energy_trajectory=gen.energy_trajectory.float().numpy()),
    }
    summary = energy_summary(gen.energy_trajectory, gen.y, classes)
    files["energy_plot"] = save_energy_plot(out / "energy.png", summary, args.energy, what, names)
    atomic_write_json(out / "energy.json", summary)
    files["energy"] = out / "energy.json"

    if feature_net is not None:
        real = train_ds
        if args.real_n and args.real_n < len(real):
            g = torch.Generator().manual_seed(args.seed)
            real = real.subset(torch.randperm(len(real), generator=g)[: args.real_n])
        metrics: dict[str, Any] = generation_metrics(real.images, gen.x, feature_net,
                                                     feature_name or "", seed=args.seed)
        metrics["real_set"] = f"{train_ds.name} train, {len(real)} images (seed {args.seed})"
    else:
        metrics = {"skipped": "no --features given: FID/KID/IS/precision-recall need a feature "
                              "network (an independently trained classifier of the dataset)"}
    atomic_write_json(out / "metrics.json", metrics)
    files["metrics"] = out / "metrics.json"

    e0, e1 = summary["overall"]["mean"][0], summary["overall"]["mean"][-1]
    result = {
        "out": str(out), "checkpoint": str(args.checkpoint), "checkpoint_sha256": model_sha,
        "dataset": train_ds.name, "classes": classes, "n": len(gen.y), "init": args.init,
        "init_config": init.config() if hasattr(init, "config") else args.init, **init_note,
        "sampler": sampler.config(), "energy_start": e0, "energy_end": e1,
        "metrics": metrics, "files": {k: str(v) for k, v in files.items()},
    }
    text = [f"{len(gen.y)} samples of {len(classes)} classes -> {out}",
            f"  mean {args.energy} energy: {e0:.3f} at x0 -> {e1:.3f} after {args.steps} steps"]
    if "fid" in metrics:
        text.append(f"  FID {metrics['fid']:.2f}  KID {metrics['kid_mean']:.4f}  "
                    f"IS {metrics['is_mean']:.2f}  precision {metrics['precision']:.3f}  "
                    f"recall {metrics['recall']:.3f}")
        text.append(f"  features: {metrics['features']}")
    else:
        text.append(f"  metrics skipped: {metrics['skipped']}")
    emit(result, args.json, "\n".join(text))
    return 0
