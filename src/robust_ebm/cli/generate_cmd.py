"""``robust-ebm generate``: class-conditional samples from a classifier read as an EBM.

SGLD with momentum on the joint energy E(x, y) from a chosen initialisation (docs/science.md#sgld;
Beadini & Masi, arXiv 2304.04033). Writes to ``--out`` the files of
:func:`robust_ebm.sampling.study.write_generation` (grids, ``samples.npz``, energy trajectory
plot and summary, ``metrics.json`` on the ``--features`` network, never the model under test)
and ``run.json``; under torchrun the chains are sharded over the ranks and rank 0 writes
(docs/scale.md). Fitted init statistics (gaussian, pca) are cached under ``--stats-dir``
(default ``$XDG_CACHE_HOME/robust_ebm/stats``) and checked against the data before reuse; so
are the class reference statistics of ``--energy reference|mahalanobis`` and
``--stop-tolerance`` (:mod:`robust_ebm.sampling.reference`; checked against data and model).
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from ..distributed_eval import rank_device
from ..errors import UserError
from .common import (
    add_common_args,
    add_flags_file_arg,
    add_model_args,
    emit,
    model_from_args,
    nonnegative_float,
    positive_float,
    positive_int,
    resolve_device,
    start_run,
)
from .scale_args import add_fast_args, fast_model


def _momentum(text: str) -> float:
    value = nonnegative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1); got {text}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..sampling import ENERGIES
    from ..sampling.reference import REFERENCE_ENERGIES
    from ..sampling.sgld import NOISE_SCALINGS, REDUCTIONS
    from ..sampling.study import init_aliases

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
    add_model_args(p)
    add_common_args(p)
    add_flags_file_arg(p)
    p.add_argument("--init", choices=init_aliases(), default="pca",
                   help="starting points: class-wise PCA (default), class Gaussian, U[0,1] noise, "
                        "or a real image plus noise")
    p.add_argument("--steps", type=int, default=50, help="SGLD steps (default 50)")
    p.add_argument("--step-size", type=positive_float, default=1.0,
                   help="eta; the update is eta/2 * grad, pixel units (default 1.0)")
    p.add_argument("--momentum", type=_momentum, default=0.8, help="zeta in [0,1) (default 0.8)")
    p.add_argument("--noise-std", type=nonnegative_float, default=0.001,
                   help="std of the Gaussian noise added each step (default 0.001)")
    p.add_argument("--energy", choices=ENERGIES + REFERENCE_ENERGIES, default="joint",
                   help="energy to descend: joint E(x,y) (default), free E(x), ce, reference "
                        "(E(x,y) - class mean)^2, mahalanobis (logit distance to the class)")
    p.add_argument("--noise-scaling", choices=NOISE_SCALINGS, default="none",
                   help="sqrt_2_step: noise times sqrt(2 * eta), the published alpha")
    p.add_argument("--energy-reduction", choices=REDUCTIONS, default="sum",
                   help="mean: gradient of the batch mean (published 'ce'; steps shrink by 1/N)")
    _add_sampler_option_args(p)
    p.add_argument("--n-per-class", type=positive_int, default=10)
    p.add_argument("--classes", default=None, help="comma-separated class indices (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--pca-variance", type=positive_float, default=0.95,
                   help="retained-variance target of the PCA init, in (0, 1]")
    p.add_argument("--pca-sigma", type=nonnegative_float, default=0.005, help="sigma_pca")
    p.add_argument("--pca-rule", choices=("reach", "below"), default="reach",
                   help="PCA count: smallest reaching the target, or largest below it (published)")
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
    _add_init_args(p)
    add_fast_args(p)
    p.set_defaults(func=run)


# -- the inits' options (the published starts: docs/fidelity.md) ---------------------------------
def _probability(text: str) -> float:
    value = nonnegative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1]; got {text}")
    return value


def _add_init_args(p: argparse.ArgumentParser) -> None:
    """Flags of the inits beyond the main ones; unset ones keep the inits' defaults."""
    from ..sampling.study import init_aliases

    g = p.add_argument_group("initialisation options (published variants: docs/fidelity.md)")
    g.add_argument("--uniform-low", type=float, help="uniform init: lower end (default 0)")
    g.add_argument("--uniform-high", type=float, help="uniform init: upper end (default 1)")
    g.add_argument("--normal-mean", type=float, help="normal init: mean (default 0)")
    g.add_argument("--normal-std", type=nonnegative_float, help="normal init: std (default 1)")
    g.add_argument("--normal-clip", action="store_true", default=None,
                   help="normal init: clip to [0, 1] (the published one does not)")
    g.add_argument("--gaussian-jitter", type=nonnegative_float,
                   help="gaussian init: variance added to the covariance (published center: 1e-4)")
    g.add_argument("--gaussian-ddof", type=int, choices=(0, 1),
                   help="gaussian init: covariance over n - ddof (default 1; published 0)")
    g.add_argument("--gaussian-no-clip", action="store_true", default=None,
                   help="gaussian init: do not clip to [0, 1] (published center)")
    g.add_argument("--pca-components", type=positive_int,
                   help="PCA init: a fixed number of components instead of --pca-variance")
    g.add_argument("--pca-least", action="store_true", default=None,
                   help="PCA init: the published least-dominant set, components [-11:-1] of "
                        "the top --pca-components (>= 12)")
    g.add_argument("--pca-blur", type=nonnegative_float,
                   help="PCA init: Gaussian blur (std, pixels) of the images before the fit")
    g.add_argument("--pca-blur-layout", choices=("spatial", "published"),
                   help="PCA init: blur each channel over H, W (default) or as published")
    g.add_argument("--noise-pick", choices=("random", "ordered"),
                   help="noise init: a random image of the class (default) or chain j's j-th")
    g.add_argument("--noise-pool", type=positive_int,
                   help="noise init: only the first N images of the split (published: 1000)")
    g.add_argument("--noise-split", choices=("train", "test"),
                   help="noise init: the split its images come from (default train; "
                        "published: test)")
    g.add_argument("--mix-p-pca", type=_probability,
                   help="pca_gaussian init: probability of a PCA start (default 0.5)")
    g.add_argument("--buffer", default=None,
                   help="buffer init: samples.npz of an earlier generate run")
    g.add_argument("--buffer-reinit", choices=[a for a in init_aliases() if a != "buffer"],
                   help="buffer init: the init of restarted chains (default uniform)")
    g.add_argument("--buffer-reinit-freq", type=_probability,
                   help="buffer init: probability of a restart (default 0.05)")
    g.add_argument("--buffer-pick", choices=("random", "chain"),
                   help="buffer init: a random sample of the class (default) or chain j's j-th")


def _init_data(args: argparse.Namespace, train_ds: Any) -> tuple[Any, Any]:
    """(images, labels) the init is fitted on: the training set, or for the noise init with
    --noise-split test the test set (checked like the training set)."""
    from ..data import load_dataset

    if args.noise_split == "test" and "noise" in (args.init, args.buffer_reinit):
        test_ds = load_dataset(args.dataset, "test", args.data_dir)
        return test_ds.images, test_ds.labels
    return train_ds.images, train_ds.labels
# -- end of the inits' options ----------------------------------------------------------------------


def _build_init(args: argparse.Namespace, train_ds: Any, classes: list[int]) -> tuple[Any, dict]:
    """The initialiser named by --init with its options, fitted on --init's data (or the
    cached statistics), and a note for the result; a --buffer lacking a class is refused."""
    from ..sampling import study
    from ..sampling.init import BufferInit

    options = study.init_options(args)  # first: a flag of an unused init is refused
    init_images, init_labels = _init_data(args, train_ds)
    init, init_note = study.build_init(
        args.init, init_images, init_labels, train_ds.name, args.stats_dir,
        pca_variance=args.pca_variance, pca_sigma=args.pca_sigma, pca_rule=args.pca_rule,
        noise_std=args.noise_init_std, options=options)
    if isinstance(init, BufferInit) and init.reinit_freq < 1 and init.missing(classes):
        raise UserError(f"--buffer {args.buffer} has no sample of classes "
                        f"{init.missing(classes)}; generate them first or use another init")
    return init, init_note


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import read_metadata
    from ..data import load_dataset
    from ..generation_metrics import load_feature_network
    from ..io import file_sha256
    from ..loading import check_model_fits_data, recorded_metadata
    from ..sampling import SGLD, study

    if args.steps < 0:
        raise UserError(f"--steps must be >= 0; got {args.steps}")
    if args.real_n < 0:
        raise UserError(f"--real-n must be >= 0; got {args.real_n}")
    device = rank_device(resolve_device(args.device))  # under torchrun: this rank's GPU
    model = model_from_args(args, device)
    model_sha = file_sha256(args.checkpoint) if args.checkpoint else None
    train_ds = load_dataset(args.dataset, "train", args.data_dir)
    check_model_fits_data(model, recorded_metadata(args.checkpoint), train_ds, args.dataset,
                          args.force)
    channels = int(model.arch["in_channels"])
    classes = study.parse_classes(args.classes, int(model.arch["num_classes"]))
    _check_memory(args.n_per_class * len(classes), train_ds.shape)
    study.check_training_data(train_ds, channels, classes, args.init, args.dataset)
    features = real = None
    if args.features:
        features = load_feature_network(args.features, model_sha, channels, device)
        check_model_fits_data(features[0].model, recorded_metadata(args.features), train_ds,
                              f"{args.dataset} (the samples of --features' model)", args.force)
        real = study.real_subset(train_ds, args.real_n, args.seed)

    # before start_run: a bad option writes nothing
    options, reference_note = _sampler_options(args, model, train_ds, model_sha)
    sampler = SGLD(step_size=args.step_size, momentum=args.momentum, noise_std=args.noise_std,
                   steps=args.steps, noise_scaling=args.noise_scaling,
                   energy_reduction=args.energy_reduction, **options)
    init, init_note = _build_init(args, train_ds, classes)
    out = start_run(args, "generate", device)
    objective = (read_metadata(args.checkpoint).get("objective", "?")
                 if str(args.checkpoint).endswith(".safetensors") else "?")
    what = (f"{objective} {model.arch['name']} | init {args.init}, "
            f"{args.steps} steps, eta {args.step_size}, zeta {args.momentum}, s {args.noise_std}")
    res = study.write_generation(
        fast_model(model, args), init, sampler, out, classes=classes,
        n_per_class=args.n_per_class, real=real, features=features, batch_size=args.batch_size,
        seed=args.seed, grid_cols=args.grid_cols,
        class_names=study.CLASS_NAMES.get(train_ds.name), title=what, init_name=args.init,
        real_set=None if real is None else
        f"{train_ds.name} train, {len(real)} images (seed {args.seed})")
    if res is None:  # a torchrun rank other than 0: rank 0 wrote the merged samples
        return 0
    result: dict[str, Any] = {
        "out": str(out), "checkpoint": str(args.checkpoint), "checkpoint_sha256": model_sha,
        "dataset": train_ds.name, "classes": classes, "n": res["n"], "init": args.init,
        "init_config": init.config() if hasattr(init, "config") else args.init, **init_note,
        "sampler": sampler.config(), **reference_note, "energy_start": res["energy_start"],
        "energy_end": res["energy_end"], "metrics": res["metrics"],
        **({"stopped": res["stopped"]} if "stopped" in res else {}),
        "files": {k: str(v) for k, v in res["files"].items()},
    }
    emit(result, args.json, study.summary_text(result, args.energy, args.steps))
    return 0


# -- sampler options of the published generation code (docs/fidelity.md) ------------------------


def _add_sampler_option_args(p: argparse.ArgumentParser) -> None:
    from ..sampling.sgld import CLIP_NORMS, INTEGRATORS

    p.add_argument("--integrator", choices=INTEGRATORS, default="euler",
                   help="euler (default); heun (predictor-corrector, descends the energy); "
                        "heun_published (the published Heun, which ascends it)")
    p.add_argument("--step-clip", type=positive_float, default=None,
                   help="bound on each step's update, pixel units (default: none; the published "
                        "code's eps is 1)")
    p.add_argument("--clip-norm", choices=CLIP_NORMS, default="linf",
                   help="how --step-clip bounds it: linf per pixel (published Linf mode), l2 per "
                        "chain, l2_published (renormalises the SAMPLE, the published L2 mode)")
    p.add_argument("--stop-tolerance", type=positive_float, default=None,
                   help="adaptive stopping: a chain stops once (E(x,y) - mean real E(x,y))^2 < "
                        "this (default: off)")
    p.add_argument("--reference-n", type=int, default=1000,
                   help="real TRAIN images per class (the first ones) for the reference "
                        "statistics of --energy reference/mahalanobis and --stop-tolerance "
                        "(0: all; default 1000)")
    p.add_argument("--reference-ridge", type=nonnegative_float, default=1e-3,
                   help="relative ridge of the inverse logit covariance (default 1e-3)")


def _sampler_options(args: argparse.Namespace, model: Any, train_ds: Any, model_sha: str | None
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """SGLD keyword arguments for --energy and the options above, and a note for the result;
    the reference statistics are computed (or reused) only when an option needs them."""
    from ..sampling.reference import (
        REFERENCE_ENERGIES,
        cached_reference_statistics,
        first_per_class,
        make_reference_energy,
    )
    from ..sampling.study import stats_path

    options: dict[str, Any] = {"energy": args.energy, "integrator": args.integrator,
                               "step_clip": args.step_clip, "clip_norm": args.clip_norm,
                               "stop_tolerance": args.stop_tolerance}
    if args.energy not in REFERENCE_ENERGIES and args.stop_tolerance is None:
        return options, {}
    if args.reference_n < 0:
        raise UserError(f"--reference-n must be >= 0; got {args.reference_n}")
    idx = first_per_class(train_ds.labels, args.reference_n)
    key = model_sha[:10] if model_sha else "model"  # the file also records the model's hash
    path = stats_path(args.stats_dir, train_ds.name, f"reference-n{args.reference_n}-{key}")
    stats, status = cached_reference_statistics(
        path, model, train_ds.images[idx], train_ds.labels[idx], ridge=args.reference_ridge,
        batch_size=args.batch_size)
    if args.energy in REFERENCE_ENERGIES:
        options["energy"] = make_reference_energy(args.energy, stats)
    options["stop_reference"] = stats
    return options, {"reference_stats_path": str(path), "reference_stats": status}


def _check_memory(n: int, shape: tuple[int, ...]) -> None:
    """Refuse a sample count whose images alone (float32, a few copies during SGLD) exceed the
    machine's memory, before anything is allocated or written."""
    need = 4 * n * math.prod(shape) * 4  # x, momentum, gradient, the saved copy
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise UserError(f"--n-per-class x classes asks for {n} samples, about {need / 2**30:.0f} GiB, more "
                        f"than this machine's {have / 2**30:.0f} GiB; ask for fewer samples")
