"""Run by tests/test_distributed_eval.py, with and without torchrun: the sharded library calls
on a tiny model; rank 0 (or the one process) saves every result tensor to OUT/result.safetensors.

    python tests/sharded_worker.py OUT [ok|raise|die]

'raise': rank 1's shard raises; 'die': rank 1 exits at once (os._exit), as a killed rank would.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from robust_ebm.attacks import make_attack
from robust_ebm.distributed_eval import ShardError, run_sharded, world
from robust_ebm.evaluation.sharded import sharded_energy, sharded_generation, sharded_robustness
from robust_ebm.models import create_model
from robust_ebm.sampling import SGLD, UniformInit


def main() -> int:
    out, mode = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "ok"
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(22, 1, 12, 12, generator=g), torch.randint(0, 10, (22,), generator=g)
    if mode != "ok":
        def compute(start: int, stop: int) -> int:
            if world()[0] == 1:
                if mode == "die":
                    os._exit(7)
                raise RuntimeError("planted failure")
            return stop - start
        try:
            run_sharded(10, compute, sum)
        except ShardError as exc:
            print(f"ShardError: {exc}", file=sys.stderr)
            return 3
        return 0
    attacks = {"pgd": make_attack("pgd", eps=0.1, steps=3, seed=0),
               "apgd_ce": make_attack("apgd_ce", eps=0.1, steps=3, seed=0)}
    report = sharded_robustness(model, (x, y), attacks, batch_size=4)
    energy = sharded_energy(model, x, y, attacks, batch_size=4)
    sampler = SGLD(step_size=0.5, momentum=0.5, noise_std=0.01, steps=3)
    gen = sharded_generation(model, UniformInit((1, 12, 12)), sampler, [3, 1, 4], 3,
                             batch_size=2, seed=5)
    if report is None:
        assert energy is None and gen is None and world()[0] > 0
        return 0
    rows = torch.tensor([[r.attacked, r.fooled, r.robust_accuracy] for r in report.rows],
                        dtype=torch.float64)
    fooled = torch.tensor([-1 if f is None else list(attacks).index(f) for f in report.fooled_by])
    tensors = {"x_adv": report.x_adv, "robust": report.robust, "clean": report.clean_correct,
               "rows": rows, "acc": torch.tensor([report.clean_accuracy, report.robust_accuracy],
                                                  dtype=torch.float64),
               "fooled_by": fooled, "e_y": energy.y, "e_clean": energy.clean,
               **{f"e_{k}": v for k, v in energy.adversarial.items()},
               "g_x": gen.x, "g_x0": gen.x0, "g_y": gen.y, "g_traj": gen.energy_trajectory}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "result.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
