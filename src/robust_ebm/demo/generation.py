"""Stage 4: class-conditional SGLD generation from a standard and robust models.

SGLD with momentum on E(x, y) = -f(x)[y] (Beadini & Masi, arXiv 2304.04033; Mirza et al.,
arXiv 2407.06315) from class-Gaussian starting points, scored by FID, KID and IS on the
committed feature network (an independently trained classifier, its 256-d penultimate features
and its logits), against real training images. Rows for the starting points alone and for real
test images give each metric's floor and ceiling at this sample size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import DemoConfig
from .runner import Stage, StageContext

NAME = "generation"
MODELS = ("standard", "pgd_at", "weat_adv")
SAMPLER = {"step_size": 1.0, "momentum": 0.8, "noise_std": 0.001}


def stage(cfg: DemoConfig) -> Stage:
    s = cfg.sizes
    ckpts = {m: cfg.checkpoint(m) for m in MODELS}
    params = cfg.common() | SAMPLER | {
        "models": list(MODELS), "checkpoints": {m: str(p) for m, p in ckpts.items()},
        "features": str(cfg.features), "n_per_class": s.gen_per_class, "steps": s.gen_steps,
        "real_n": s.gen_real_n, "stats_n": s.gen_stats_n, "energy": "joint",
        "init": "class_gaussian",
    }
    return Stage(NAME, "SGLD generation with FID/KID/IS", 2, params,
                 (*ckpts.values(), cfg.features), run)


def _metrics(real: torch.Tensor, fake: torch.Tensor, net: Any, name: str, seed: int
             ) -> dict[str, Any]:
    from ..generation_metrics import generation_metrics

    n = min(len(real), len(fake))
    return generation_metrics(real, fake, net, name, metrics=("fid", "kid", "is"),
                              kid_subsets=20, kid_subset_size=n, is_splits=5 if n >= 50 else 1,
                              seed=seed)


def run(ctx: StageContext) -> dict[str, Any]:
    from ..checkpoint import load_model
    from ..data import load_dataset
    from ..generation_metrics import load_feature_network
    from ..sampling import SGLD, ClassGaussianInit, generate
    from .figures import save_mosaic

    p = ctx.params
    train = load_dataset(p["dataset"], "train", p["data_dir"])
    test = load_dataset(p["dataset"], "test", p["data_dir"])
    g = torch.Generator().manual_seed(p["seed"])
    perm = torch.randperm(len(train), generator=g)
    stats, real = train.subset(perm[: p["stats_n"]]), train.subset(perm[-p["real_n"]:])
    init = ClassGaussianInit().fit(stats.images, stats.labels)
    net, feat = load_feature_network(p["features"], None, train.shape[0], torch.device("cpu"))
    sampler = SGLD(step_size=p["step_size"], momentum=p["momentum"], noise_std=p["noise_std"],
                   steps=p["steps"], energy=p["energy"])
    classes = list(range(train.num_classes))
    rows: dict[str, Any] = {}
    trajectories: dict[str, list[float]] = {}
    x0 = None
    for m in p["models"]:
        model = load_model(p["checkpoints"][m]).eval()
        ctx.log(f"{m}: SGLD {p['steps']} steps, {p['n_per_class']} per class")
        gen = generate(model, init, sampler, classes, p["n_per_class"], seed=p["seed"])
        x0 = gen.x0
        rows[m] = _metrics(real.images, gen.x, net, feat, p["seed"])
        traj = gen.energy_trajectory.mean(dim=1)
        rows[m] |= {"energy_start": float(traj[0]), "energy_end": float(traj[-1])}
        trajectories[m] = traj.tolist()
        save_mosaic(ctx.dir / f"grid_{m}.png", gen.x, gen.y,
                    title=f"{m}: SGLD samples (rows: classes 0-9)")
        ctx.log(f"  {m}: FID {rows[m]['fid']:.1f}, IS {rows[m]['is_mean']:.2f}")
    assert x0 is not None
    n_ref = min(len(x0), len(test))
    refs = {"x0 (starting points, no SGLD)": _metrics(real.images, x0, net, feat, p["seed"]),
            "real test images": _metrics(real.images, test.images[:n_ref], net, feat, p["seed"])}
    save_mosaic(ctx.dir / "grid_x0.png", x0, torch.tensor(classes).repeat_interleave(
        p["n_per_class"]), title="starting points (class Gaussian)")
    plot_trajectories(trajectories, ctx.dir / "energy.png")
    return {"models": rows, "references": refs, "features": feat,
            "figures": {**{m: f"grid_{m}.png" for m in p["models"]}, "x0": "grid_x0.png",
                        "energy": "energy.png"}}


def plot_trajectories(traj: dict[str, list[float]], path: Path) -> Path:
    from ..reports.plots import pyplot, save_figure
    from .figures import LABELS, style

    plt = pyplot()
    with style():
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for m, t in traj.items():
            ax.plot(range(len(t)), t, label=LABELS[m])
        ax.set_xlabel("SGLD step")
        ax.set_ylabel("mean E(x, y) of the chains")
        ax.set_title("SGLD lowers the joint energy")
        ax.legend()
        fig.tight_layout()
    return save_figure(fig, path)
