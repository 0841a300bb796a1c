"""Bring-your-own-model: file layouts, stored normalization, zoo names, the papers' own
checkpoint layouts, and refusals that name the fix. Fast: small architectures only."""

from __future__ import annotations

import pytest
import torch

from robust_ebm.checkpoint import load_model
from robust_ebm.errors import UserError
from robust_ebm.models import create_model, infer_architecture, list_zoo, zoo_entry
from robust_ebm.models.zoo import C10

X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _random(model, seed=0):
    """Random weights and BatchNorm statistics, so that a wrongly loaded buffer shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.net.named_parameters()) + list(model.net.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (1.0 / max(1, t[0].numel())) ** 0.5)
    return model.eval()


def _logits(model):
    with torch.no_grad():
        return model.eval()(X)


def _same(a, b):
    torch.testing.assert_close(_logits(a), _logits(b), rtol=1e-5, atol=1e-6)


def _small_wrn(**kw):
    return _random(create_model("wide_resnet", 10, 3, C10[0], C10[1], depth=10, widen_factor=1,
                                **kw))


LAYOUTS = {
    "plain": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 3},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
    "model": lambda sd: {"model": sd},
    "net": lambda sd: {"net": sd},
    "last/best": lambda sd: {"last": sd, "best": {k: v * 0 for k, v in sd.items()}},
    "module.": lambda sd: {"module." + k: v for k, v in sd.items()},
    "model.": lambda sd: {"model." + k: v for k, v in sd.items()},
    "_orig_mod.": lambda sd: {"_orig_mod." + k: v for k, v in sd.items()},
    "state_dict/module.model.": lambda sd: {"state_dict": {"module.model." + k: v
                                                           for k, v in sd.items()}},
    "no num_batches_tracked": lambda sd: {k: v for k, v in sd.items()
                                          if not k.endswith("num_batches_tracked")},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_file_layouts_load_with_identical_logits(tmp_path, layout):
    src = _small_wrn()
    path = tmp_path / "m.pt"
    torch.save(LAYOUTS[layout](dict(src.net.state_dict())), path)
    dst = load_model(path, name="wide_resnet", depth=10, widen_factor=1, mean=C10[0], std=C10[1])
    _same(src, dst)
    if layout == "last/best":
        assert any("'last'" in n for n in dst.load_report["notes"])


@pytest.mark.parametrize("keys", [("mu", "sigma"), ("normalize.mean", "normalize.std"),
                                  ("mean", "std"), ("0.mean", "0.std")])
def test_normalization_stored_in_the_file_is_used(tmp_path, keys):
    src = _small_wrn()
    sd = {("1." + k if keys[0].startswith("0.") else k): v for k, v in src.net.state_dict().items()}
    sd[keys[0]] = torch.tensor(C10[0]).view(1, 3, 1, 1)
    sd[keys[1]] = torch.tensor(C10[1]).view(1, 3, 1, 1)
    torch.save(sd, tmp_path / "m.pt")
    dst = load_model(tmp_path / "m.pt", name="wide_resnet", depth=10, widen_factor=1)
    assert dst.load_report["normalization"] == "file"
    _same(src, dst)
    with pytest.raises(UserError, match="stores mean"):
        load_model(tmp_path / "m.pt", name="wide_resnet", depth=10, widen_factor=1,
                   mean=[0.5] * 3, std=[0.5] * 3)


def test_missing_normalization_is_refused_with_the_fix(tmp_path):
    torch.save(_small_wrn().net.state_dict(), tmp_path / "m.pt")
    with pytest.raises(UserError, match=r"normalization unknown.*--mean.*--std"):
        load_model(tmp_path / "m.pt", name="wide_resnet", depth=10, widen_factor=1)
    raw = load_model(tmp_path / "m.pt", name="wide_resnet", depth=10, widen_factor=1, mean=0,
                     std=1)
    assert raw.arch["mean"] == [0.0] * 3 and raw.load_report["normalization"] == "options"


def test_sub_block1_is_part_of_the_architecture_not_a_loose_check(tmp_path):
    src = _small_wrn(sub_block1=True)
    torch.save({"state_dict": {"module." + k: v for k, v in src.net.state_dict().items()}},
               tmp_path / "trades.pt")
    with pytest.raises(UserError, match="sub_block1=True"):  # names the architecture that fits
        load_model(tmp_path / "trades.pt", name="wide_resnet", depth=10, widen_factor=1,
                   mean=C10[0], std=C10[1])
    dst = load_model(tmp_path / "trades.pt", name="wide_resnet", depth=10, widen_factor=1,
                     sub_block1=True, mean=C10[0], std=C10[1])
    _same(src, dst)
    # sub_block1 is never called: its weights do not change the logits
    with torch.no_grad():
        for p in dst.net.sub_block1.parameters():
            p.add_(1.0)
    _same(src, dst)


def test_non_strict_reports_what_it_skipped(tmp_path):
    src = _small_wrn(sub_block1=True)
    torch.save(src.net.state_dict(), tmp_path / "m.pt")
    dst = load_model(tmp_path / "m.pt", name="wide_resnet", depth=10, widen_factor=1,
                     mean=C10[0], std=C10[1], strict=False)
    assert dst.load_report["missing"] == []
    assert dst.load_report["unexpected"] and all(
        k.startswith("sub_block1.") for k in dst.load_report["unexpected"])
    _same(src, dst)


def _resnet_file(model, prefix=""):
    return {prefix + k: v for k, v in model.net.state_dict().items()}


@pytest.mark.parametrize("prefix", ["", "module."])
def test_eccv2024_resnet18_checkpoints(tmp_path, prefix):
    """Mirza et al. 2024 code: CIFAR ResNet-18 (saved plain or from DataParallel) and its
    Tiny-ImageNet ResNet-18 (200 classes, 64x64; its pooling has no parameters)."""
    src = _random(create_model("resnet18", 10, 3, C10[0], C10[1]))
    torch.save(_resnet_file(src, prefix), tmp_path / "c10.pt")
    _same(src, load_model(tmp_path / "c10.pt", name="resnet18", mean=C10[0], std=C10[1]))
    ti = _random(create_model("resnet18", 200, 3, [0.48, 0.45, 0.40], [0.27, 0.26, 0.28]), 1)
    torch.save(_resnet_file(ti, prefix), tmp_path / "ti.pt")
    dst = load_model(tmp_path / "ti.pt", name="resnet18", num_classes=200,
                     mean=[0.48, 0.45, 0.40], std=[0.27, 0.26, 0.28])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), ti(x), rtol=1e-5, atol=1e-6)
        assert dst(x).shape == (2, 200)


def test_robustness_library_resnet50_layout(tmp_path):
    """MadryLab robustness: {'model': {'module.model.*', 'module.attacker.model.*',
    'module.normalizer.new_mean'/'new_std'}, 'optimizer', 'epoch'} (Santurkar 2019, Engstrom)."""
    src = _random(create_model("resnet50", 10, 3, C10[0], [0.2023, 0.1994, 0.2010]))
    mean = torch.tensor(C10[0]).view(3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(3, 1, 1)
    sd = {}
    for k, v in src.net.state_dict().items():
        sd["module.model." + k] = v
        sd["module.attacker.model." + k] = v.clone()
    sd |= {"module.normalizer.new_mean": mean, "module.normalizer.new_std": std,
           "module.attacker.normalize.new_mean": mean, "module.attacker.normalize.new_std": std}
    torch.save({"model": sd, "optimizer": {"state": {}}, "schedule": None, "epoch": 150},
               tmp_path / "cifar_l2_0_5.pt")
    dst = load_model(tmp_path / "cifar_l2_0_5.pt", name="resnet50")
    assert dst.load_report["normalization"] == "file"
    _same(src, dst)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_beadini_masi_resnet10_layout(tmp_path, batchnorm):
    src = _random(create_model("resnet10", 10, 3, [0.0] * 3, [1.0] * 3, batchnorm=batchnorm))
    torch.save(src.net.state_dict(), tmp_path / "resnet10.pt")
    assert infer_architecture(src.net.state_dict()) == (
        "resnet10", {} if batchnorm else {"batchnorm": False})
    dst = load_model(tmp_path / "resnet10.pt", name="resnet10", batchnorm=batchnorm, mean=0,
                     std=1)
    _same(src, dst)


def test_zoo_name_loads_with_catalog_normalization(tmp_path):
    entry = zoo_entry("Wong2020Fast", "cifar10", "Linf")
    src = _random(create_model(entry.arch, 10, 3, entry.mean, entry.std, **entry.kwargs))
    torch.save(src.net.state_dict(), tmp_path / "Wong2020Fast.pt")
    dst = load_model(tmp_path / "Wong2020Fast.pt", robustbench="Wong2020Fast")
    assert dst.load_report["normalization"] == "zoo catalog"
    assert dst.arch["zoo"] == {"name": "Wong2020Fast", "dataset": "cifar10", "threat_model": "Linf"}
    _same(src, dst)


def test_unknown_zoo_name_names_the_closest():
    with pytest.raises(UserError, match="closest: Carmon2019Unlabeled"):
        zoo_entry("Carmon2019Unlabelled")
    with pytest.raises(UserError, match="exists for cifar10 L2"):
        zoo_entry("Augustin2020Adversarial", "cifar10", "Linf")


def test_checkpoint_for_another_dataset_is_refused(tmp_path):
    src = _small_wrn()
    wrn100 = create_model("wide_resnet", 100, 3, depth=10, widen_factor=1)
    torch.save(wrn100.net.state_dict(), tmp_path / "c100.pt")
    with pytest.raises(UserError, match="predicts 100 classes.*another dataset"):
        load_model(tmp_path / "c100.pt", name="wide_resnet", depth=10, widen_factor=1,
                   mean=0, std=1)
    del src


def test_exotic_entry_without_robustbench_names_the_extra(tmp_path):
    with pytest.raises(UserError, match="probabilities, not logits"):
        load_model(robustbench="Chen2020Adversarial")
    torch.save({"w": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(UserError, match=r"robust-ebm\[robustbench\]"):
        load_model(tmp_path / "x.pt", robustbench="Debenedetti2022Light_XCiT-S12")


def test_catalog_covers_the_zoo():
    """97 CIFAR-10 entries (RobustBench 1.1.1: 76 Linf + 21 L2); every native row builds."""
    c10 = list_zoo("cifar10")
    assert len(list_zoo("cifar10", "Linf")) == 76 and len(list_zoo("cifar10", "L2")) == 21
    assert len({(e.threat_model, e.name) for e in c10}) == 97
    shrink = {"depth": 10, "widen_factor": 1}  # same code path, small enough to build fast
    seen = set()
    for e in list_zoo():
        key = (e.arch, tuple(sorted(e.kwargs.items())))
        if e.native and key not in seen:
            seen.add(key)
            kwargs = {**e.kwargs, **(shrink if "wide" in e.arch else {})}
            out = _logits(create_model(e.arch, e.num_classes, 3, e.mean, e.std, **kwargs))
            assert out.shape == (2, e.num_classes)
