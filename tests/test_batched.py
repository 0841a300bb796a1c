"""The one batched-evaluation loop: uint8 = float/255, batch size changes only rounding, the
model's modes and requires_grad come back exactly, attacks see each batch once, and training's
energy tracking is the energy-under-attack pipeline's row."""

from __future__ import annotations

import torch
from torch import nn

from robust_ebm.analysis import TRACKED, analyze_energy
from robust_ebm.attacks import make_attack
from robust_ebm.energy import free_energy, joint_energy
from robust_ebm.evaluation import batched_logits, map_batches
from robust_ebm.evaluation.batched import to_unit_float


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(8, 3))


def _data(n: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8),
            torch.randint(0, 3, (n,), generator=g))


def test_uint8_equals_float_and_batch_size_only_moves_rounding():
    model, (x8, y) = _model(), _data()
    ref = batched_logits(model, x8.float() / 255, y, batch_size=100).clean
    assert torch.equal(batched_logits(model, x8, y, batch_size=100).clean, ref)
    assert torch.equal(map_batches(model, x8, batch_size=100)[0], ref)
    for bs in (1, 5, 23):  # the matrix kernels may round differently per batch shape
        torch.testing.assert_close(batched_logits(model, x8, y, batch_size=bs).clean, ref,
                                   rtol=1e-6, atol=1e-6)
    assert ref.shape == (23, 3) and ref.dtype == torch.float32 and ref.device.type == "cpu"
    assert torch.equal(to_unit_float(x8), x8.float() / 255)


def test_modes_and_requires_grad_restored_and_model_frozen_inside():
    model, (x8, y) = _model(), _data()
    model.train()
    model[2].eval()  # a half-train model must come back exactly so
    model[1].weight.requires_grad_(False)
    before = [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]
    seen = []

    def attack(m, xb, yb):
        seen.append((m.training, any(p.requires_grad for p in m.parameters()), xb.shape[0]))
        return xb

    res = batched_logits(model, x8, y, {"id": attack}, batch_size=10)
    assert ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]) == before
    assert seen == [(False, False, 10), (False, False, 10), (False, False, 3)]
    # the identity attack gives back the clean logits (eval mode: dropout off)
    assert torch.equal(res.adversarial["id"], res.clean)


def test_attacked_logits_and_kept_inputs_match_a_direct_call():
    model, (x8, y) = _model(), _data()
    x = x8.float() / 255
    pgd = make_attack("pgd", eps=0.1, steps=3, seed=0)
    res = batched_logits(model, x, y, {"pgd": pgd}, batch_size=8, clean=False, keep_inputs=True)
    assert res.clean is None and set(res.seconds) == {"pgd"}
    model.eval()
    direct = torch.cat([pgd(model, x[i:i + 8], y[i:i + 8]) for i in range(0, 23, 8)])
    assert torch.equal(res.inputs["pgd"], direct)
    with torch.no_grad():
        per_batch = torch.cat([model(direct[i:i + 8]) for i in range(0, 23, 8)])
    assert torch.equal(res.adversarial["pgd"], per_batch)


def test_tracking_row_is_the_pipeline_row_with_ce():
    from robust_ebm.data import ImageDataset
    from robust_ebm.train.tracking import evaluate_subsets

    model, (x8, y) = _model(), _data()
    pgd = make_attack("pgd", eps=0.1, steps=2, seed=0)
    ds = ImageDataset(x8, y, num_classes=3, name="t", mean=(0.5,), std=(0.25,))
    rec = evaluate_subsets(model, {"val": ds}, pgd, batch_size=9)["val"]
    assert list(rec) == ["n", *TRACKED]
    full = analyze_energy(model, x8, y, {"pgd": pgd}, batch_size=9).report("pgd")
    for key in ("accuracy", "accuracy_adv", "share_E_adv_below", "E_x", "E_adv", "dE_x", "dE_xy"):
        assert rec[key] == full[key]
    logits = batched_logits(model, x8, y, batch_size=9).clean
    ce = joint_energy(logits, y) - free_energy(logits)
    assert rec["ce"]["mean"] == ce.double().mean().item()
