"""What the demo runs on: the committed Fashion-MNIST models and the sizes of each stage.

Two size presets: :data:`FULL` (``robust-ebm demo``, about 10 minutes on a 2-core CPU) and
:data:`QUICK` (``--quick``: every stage on tiny sizes, well under 2 minutes, for tests).
Budgets are L-inf in [0, 1] pixel units (eps 0.1, the training budget of the committed models).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserError

__all__ = ["FULL", "OBJECTIVES", "QUICK", "DemoConfig", "Sizes", "find_root"]

# the committed models, in the order of docs/results/training.md
OBJECTIVES = ("standard", "pgd_at", "trades", "mart", "weat_adv", "weat_nat")
# what people call them in the papers
LABELS = {"standard": "standard", "pgd_at": "SAT (PGD-AT)", "trades": "TRADES", "mart": "MART",
          "weat_adv": "WEAT_adv", "weat_nat": "WEAT_nat"}


@dataclass(frozen=True)
class Sizes:
    """Per-stage sizes (points, steps, samples); every field is part of a stage's fingerprint."""

    # 1. training from scratch: evals x steps_per_eval optimizer steps per objective
    train_subset: int = 5000
    train_batch: int = 32
    train_evals: int = 8
    train_steps_per_eval: int = 20
    train_inner_steps: int = 2
    train_eval_n: int = 64
    train_eval_steps: int = 3
    # 2. energy under attack
    energy_n: int = 100
    energy_steps: int = 10
    square_queries: int = 50
    # 3. detector
    det_cal_n: int = 200
    det_n: int = 150
    det_search_n: int = 64
    det_steps: int = 10
    det_gammas: tuple[float, ...] = (0.0, 1.0, 1.5, 2.0, 3.0)
    # 4. generation
    gen_per_class: int = 20
    gen_steps: int = 30
    gen_real_n: int = 1000
    gen_stats_n: int = 6000
    # 5. AutoAttack table beside a fresh PGD
    pgd_n: int = 200
    pgd_steps: int = 20


FULL = Sizes()
QUICK = Sizes(
    train_subset=512, train_batch=32, train_evals=2, train_steps_per_eval=3, train_inner_steps=2,
    train_eval_n=40, train_eval_steps=2,
    energy_n=32, energy_steps=2, square_queries=10,
    det_cal_n=48, det_n=48, det_search_n=24, det_steps=2, det_gammas=(0.0, 1.5),
    gen_per_class=3, gen_steps=5, gen_real_n=100, gen_stats_n=1000,
    pgd_n=40, pgd_steps=2,
)


def find_root(start: Path | None = None) -> Path:
    """The repository root: the first folder from ``start`` (default: the working directory)
    upwards that holds ``artifacts/fmnist``."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "artifacts" / "fmnist").is_dir():
            return d
    raise UserError(
        f"no artifacts/fmnist folder in {here} or above: run the demo from a clone of the "
        "repository (it reads the committed models), or pass --root CLONE"
    )


@dataclass(frozen=True)
class DemoConfig:
    """Everything that decides the demo's numbers.

    Attributes:
        root: repository clone holding ``artifacts/fmnist`` and ``docs/results``.
        sizes: :data:`FULL` or :data:`QUICK` (or your own).
        seed: seeds every attack, sampler, subset and training run.
        eps: L-inf budget in [0, 1] pixel units.
        data_dir: Fashion-MNIST folder (None: the usual places, see ``robust-ebm data``).
        models: objective -> checkpoint; default: the committed ``artifacts/fmnist`` models.
        threads: torch CPU threads. 1 by default: on the shared 2-core machine a PGD-AT step
            took 0.83 s with 1 thread and 4.7 s with 2 (other jobs running); stages are small.
    """

    root: Path
    sizes: Sizes = FULL
    seed: int = 0
    eps: float = 0.1
    data_dir: str | None = None
    models: dict[str, Path] | None = None
    threads: int = 1

    def checkpoint(self, objective: str) -> Path:
        if self.models and objective in self.models:
            return Path(self.models[objective])
        path = self.root / "artifacts" / "fmnist" / f"{objective}-s0.safetensors"
        if not path.is_file():
            raise UserError(f"missing committed model {path}; restore it with git checkout or "
                            "rebuild it with 'robust-ebm demo --retrain'")
        return path

    @property
    def features(self) -> Path:
        path = self.root / "artifacts" / "fmnist" / "features-small_cnn-h256.safetensors"
        if not path.is_file():
            raise UserError(f"missing feature network {path}; restore it with git checkout")
        return path

    def common(self) -> dict[str, Any]:
        """Parameters every stage's fingerprint holds."""
        return {"seed": self.seed, "eps": self.eps, "dataset": "fashion_mnist",
                "data_dir": self.data_dir, "threads": self.threads}

    def with_sizes(self, sizes: Sizes) -> DemoConfig:
        return replace(self, sizes=sizes)

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "seed": self.seed, "eps": self.eps,
                "threads": self.threads,
                "data_dir": self.data_dir, "sizes": asdict(self.sizes),
                "models": {k: str(v) for k, v in (self.models or {}).items()}}
