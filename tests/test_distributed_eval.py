"""Sharded evaluation (robust_ebm.distributed_eval, evaluation.sharded): shards merge into
exactly the one-process result, in process and under ``torchrun --nproc_per_node=2`` (gloo,
CPU); a failing or dying rank fails the whole run, and rerunning completes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robust_ebm.attacks import make_attack
from robust_ebm.distributed_eval import run_sharded, shard_bounds
from robust_ebm.errors import UserError
from robust_ebm.evaluation import evaluate_robustness
from robust_ebm.evaluation.sharded import merge_reports
from robust_ebm.models import create_model
from robust_ebm.sampling import SGLD, UniformInit, sample_classes

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "sharded_worker.py"


@pytest.mark.parametrize("n,world,align", [(22, 2, 4), (10, 3, 1), (3, 4, 1), (0, 2, 5), (7, 2, 8)])
def test_shard_bounds_cover_every_point_once_at_batch_boundaries(n, world, align):
    bounds = shard_bounds(n, world, align)
    assert len(bounds) == world
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
    assert all(a % align == 0 or a == n for a, _ in bounds)


def test_one_process_runs_the_whole_range(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert run_sharded(5, lambda a, b: list(range(a, b)), lambda parts: parts) == [[0, 1, 2, 3, 4]]
    with pytest.raises(UserError):
        shard_bounds(4, 0)


def _model_and_batch(n=14):
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1).eval()
    g = torch.Generator().manual_seed(1)
    return model, torch.rand(n, 1, 12, 12, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_merged_report_equals_the_whole_report():
    model, x, y = _model_and_batch()
    attacks = {"pgd": make_attack("pgd", eps=0.1, steps=3, seed=0),
               "fgsm": make_attack("fgsm", eps=0.2)}
    whole = evaluate_robustness(model, (x, y), attacks, batch_size=4)
    parts = [evaluate_robustness(model, (x[a:b], y[a:b]), attacks, batch_size=4)
             for a, b in shard_bounds(14, 3, 4)]
    merged = merge_reports(parts)
    assert torch.equal(merged.x_adv, whole.x_adv) and torch.equal(merged.robust, whole.robust)
    assert merged.fooled_by == whole.fooled_by
    assert (merged.clean_accuracy, merged.robust_accuracy) == (whole.clean_accuracy, whole.robust_accuracy)
    strip = [(r.name, r.attacked, r.fooled, r.robust_accuracy) for r in whole.rows]
    assert [(r.name, r.attacked, r.fooled, r.robust_accuracy) for r in merged.rows] == strip


def test_generation_chains_run_apart_give_the_same_samples():
    model, _, _ = _model_and_batch()
    sgld, init = SGLD(step_size=0.5, noise_std=0.01, steps=2), UniformInit((1, 12, 12))
    whole = sample_classes(model, sgld, init, [2, 0, 1], 3, batch_size=2, seed=4, keep_x0=True)
    parts = [sample_classes(model, sgld, init, [2, 0, 1], 3, 2, 4, True, chains=c)
             for c in ((0, 4), (4, 9))]
    assert torch.equal(torch.cat([p.x for p in parts]), whole.x)
    assert torch.equal(torch.cat([p.x0 for p in parts]), whole.x0)
    assert torch.equal(torch.cat([p.y for p in parts]), whole.y)
    with pytest.raises(UserError, match="multiple of batch_size"):
        sample_classes(model, sgld, init, [2, 0, 1], 3, 2, 4, chains=(1, 4))


def _run(args: list[str], out: Path, mode: str = "ok") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args, str(WORKER), str(out), mode], env=env,
                          capture_output=True, text=True, timeout=300)


TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_torchrun_two_ranks_equal_one_process(tmp_path):
    """attack cascade, energy analysis and generation: bit-identical tensors and tables."""
    one, two = _run([], tmp_path / "one"), _run(TORCHRUN, tmp_path / "two")
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a = load_file(str(tmp_path / "one" / "result.safetensors"))
    b = load_file(str(tmp_path / "two" / "result.safetensors"))
    assert sorted(a) == sorted(b) and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow  # three torchrun launches: about 70 s on a loaded 2-core machine
def test_torchrun_failed_or_dead_rank_fails_the_run_and_rerun_completes(tmp_path):
    raised = _run(TORCHRUN, tmp_path / "r", "raise")
    assert raised.returncode != 0
    # every rank names the failed rank and its error; nothing was computed further
    assert raised.stderr.count("failed on rank 1: RuntimeError: planted failure") == 2
    died = _run(TORCHRUN, tmp_path / "d", "die")
    assert died.returncode != 0 and "exitcode  : 7" in died.stderr
    again = _run(TORCHRUN, tmp_path / "d")
    assert again.returncode == 0 and (tmp_path / "d" / "result.safetensors").is_file()
