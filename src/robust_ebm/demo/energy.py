"""Stage 2: energies of clean and attacked test images, standard vs robust models.

For each committed model and each attack family (FGSM, PGD-CE, APGD-CE, CW margin,
TRADES-KL, Square, HE-PGD and same-norm random noise as the control), E(x) of the natural
point against E(x*) of the attacked one (Mirza et al., arXiv 2407.06315, Sec. 4: untargeted
CE attacks lower E(x) on a standard model; on robust models E(x*) lies above E(x)).
"""

from __future__ import annotations

from typing import Any

from .config import DemoConfig
from .runner import Stage, StageContext, prefixed

NAME = "energy"
MODELS = ("standard", "pgd_at", "weat_adv")
ATTACKS = ("fgsm", "pgd", "apgd_ce", "cw", "trades_kl", "square", "he_pgd", "noise")


def stage(cfg: DemoConfig) -> Stage:
    s = cfg.sizes
    ckpts = {m: cfg.checkpoint(m) for m in MODELS}
    params = cfg.common() | {"models": list(MODELS), "attacks": list(ATTACKS), "n": s.energy_n,
                             "steps": s.energy_steps, "square_queries": s.square_queries,
                             "checkpoints": {m: str(p) for m, p in ckpts.items()}}
    return Stage(NAME, "energy of clean vs attacked images", 2, params,
                 tuple(ckpts.values()), run)


def test_points(p: dict[str, Any], n: int, start: int = 0) -> tuple[Any, Any]:
    """The test images ``start .. start+n`` as float [0, 1] (N, 1, 28, 28) and labels (N,)."""
    from ..data import load_dataset
    from ..evaluation.batched import to_unit_float

    ds = load_dataset(p["dataset"], "test", p["data_dir"])
    return to_unit_float(ds.images[start : start + n]), ds.labels[start : start + n]


def run(ctx: StageContext) -> dict[str, Any]:
    from ..analysis import analyze_energy, default_attacks
    from ..checkpoint import load_model
    from .figures import LABELS, plot_energy_boxes

    p = ctx.params
    x, y = test_points(p, p["n"])
    out: dict[str, Any] = {"models": {}, "figures": {"boxes": "energy.png"}}
    energies = {}
    for m in p["models"]:
        model = load_model(p["checkpoints"][m]).eval()
        attacks, notes = default_attacks(p["eps"], p["attacks"], steps=p["steps"], seed=p["seed"],
                                         square_queries=p["square_queries"])
        ctx.log(f"{m}: {len(attacks)} attacks on {len(y)} test images")
        analysis = analyze_energy(model, x, y, attacks, log=prefixed(ctx.log, f"  {m} "))
        res = analysis.to_dict()
        res["notes"] = notes + res.get("notes", [])
        out["models"][m] = res
        energies[LABELS[m]] = {"clean": analysis.per_sample(None)["E"].numpy()} | {
            a: analysis.per_sample(a)["E"].numpy() for a in analysis.adversarial}
    plot_energy_boxes(energies, ctx.dir / "energy.png", p["eps"])
    return out
