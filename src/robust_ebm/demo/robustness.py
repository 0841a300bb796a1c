"""Stage 5: the committed AutoAttack table beside a fresh PGD number on the same points.

AutoAttack (APGD-CE, APGD-T, FAB-T, Square) on the first 1000 test images took 45-62 minutes
per robust model, so the demo reads its committed results (``docs/results/training.md``) and
measures clean accuracy and PGD-k (uniform random start, step 2.5 eps / k, seed fixed) now, on
the first ``pgd_n`` of the same points, with every committed model. PGD should lie at or above
AutoAttack (a weaker attack) and close to the committed PGD-20 column.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import UserError
from .config import OBJECTIVES, DemoConfig
from .energy import test_points
from .runner import Stage, StageContext

NAME = "robustness"
TABLE = Path("docs") / "results" / "training.md"
_AA = re.compile(r"([\d.]+) \(clean ([\d.]+), PGD-20 ([\d.]+), n=(\d+)\)")


def stage(cfg: DemoConfig) -> Stage:
    s = cfg.sizes
    ckpts = {m: cfg.checkpoint(m) for m in OBJECTIVES}
    table = cfg.root / TABLE
    if not table.is_file():
        raise UserError(f"missing {table}: the demo reads the committed AutoAttack results from "
                        "it; run the demo from a full clone of the repository (or pass --root)")
    params = cfg.common() | {"models": list(OBJECTIVES), "n": s.pgd_n, "steps": s.pgd_steps,
                             "checkpoints": {m: str(p) for m, p in ckpts.items()},
                             "table": str(table)}
    return Stage(NAME, "committed AutoAttack beside a fresh PGD", 2, params,
                 (*ckpts.values(), table), run)


def read_autoattack_table(path: str | Path) -> dict[str, dict[str, float]]:
    """The AutoAttack column of the results page: objective -> {autoattack, clean, pgd20, n}
    (accuracies in %, on the first n test points)."""
    rows: dict[str, dict[str, float]] = {}
    for line in Path(path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not cells or cells[0] not in OBJECTIVES:
            continue
        for cell in cells:
            m = _AA.fullmatch(cell)
            if m:
                rows[cells[0]] = {"autoattack": float(m[1]), "clean": float(m[2]),
                                  "pgd20": float(m[3]), "n": int(m[4])}
    if not rows:
        raise UserError(f"no AutoAttack rows found in {path}; its 'Robust accuracy' table "
                        "changed format (expected cells like '66.5 (clean 81.9, PGD-20 68.5, "
                        "n=1000)')")
    return rows


def run(ctx: StageContext) -> dict[str, Any]:
    from ..analysis import analyze_energy
    from ..attacks import make_attack
    from ..checkpoint import load_model

    p = ctx.params
    committed = read_autoattack_table(p["table"])
    x, y = test_points(p, p["n"])
    pgd = make_attack("pgd", eps=p["eps"], steps=p["steps"], seed=p["seed"],
                      step_size=2.5 * p["eps"] / p["steps"])
    fresh: dict[str, Any] = {}
    for m in p["models"]:
        res = analyze_energy(load_model(p["checkpoints"][m]).eval(), x, y, {"pgd": pgd})
        r = res.report("pgd")
        fresh[m] = {"clean": 100 * r["accuracy"], "pgd": 100 * r["accuracy_adv"],
                    "dE_x_mean": r["dE_x"]["mean"], "seconds": r["seconds"]}
        ctx.log(f"{m}: clean {fresh[m]['clean']:.1f}%, PGD-{p['steps']} {fresh[m]['pgd']:.1f}% "
                f"on {len(y)} points")
    return {"committed": committed, "fresh": fresh, "n": len(y), "steps": p["steps"]}
