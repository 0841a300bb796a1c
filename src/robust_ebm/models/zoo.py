"""The RobustBench model zoo by name: architecture, arguments, normalization and file layout.

Every CIFAR-10 Linf and L2 entry of RobustBench 1.1.1 (Croce et al. 2021, arXiv 2010.09670)
and every CIFAR-100 Linf entry is listed. ``arch`` names one of our registered architectures
(see :mod:`robust_ebm.models`) built with ``kwargs``; ``arch=None`` marks an exotic entry
(XCiT, ResNeSt-152, ensembles, composite models) that only the optional ``robustbench``
package can build. ``mean``/``std`` are the entry's input normalization in [0, 1] pixel units
(zeros and ones: the model takes raw [0, 1] images); the zoo files do not store it, so it comes
from here. ``layout`` is how the zoo file wraps the weights (what RobustBench's own loader
unwraps): ``plain``, ``state_dict/module.``, ``state_dict/model.`` or ``last`` (a dict with
``last``/``best`` state dicts).

>>> entry = zoo_entry("Carmon2019Unlabeled", "cifar10", "Linf")
>>> entry.arch, entry.kwargs["depth"], entry.kwargs["sub_block1"]
('wide_resnet', 28, True)
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError

RAW = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
C10 = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
C100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
ENGSTROM = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
AUGUSTIN = ((0.4913997551666284, 0.48215855929893703, 0.4465309133731618),
            (0.24703225141799082, 0.24348516474564, 0.26158783926049628))
RONY = ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262))
C100_PRECISE = ((0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
                (0.2673342858792401, 0.2564384629170883, 0.27615047132568404))
C100_CHEN = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))

DATASETS = ("cifar10", "cifar100")
THREAT_MODELS = ("Linf", "L2")
EXTRA = "pip install 'robust-ebm[robustbench]'"


@dataclass(frozen=True)
class ZooEntry:
    """One RobustBench entry; ``arch=None``: loads only through the ``robustbench`` package."""

    name: str
    dataset: str
    threat_model: str
    arch: str | None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] = RAW[0]
    std: tuple[float, ...] = RAW[1]
    layout: str = "plain"
    note: str = ""

    @property
    def native(self) -> bool:
        return self.arch is not None

    @property
    def num_classes(self) -> int:
        return 100 if self.dataset == "cifar100" else 10


def _trades(depth: int, widen: int, sub_block1: bool = False, **kw: Any) -> tuple[str, dict]:
    return "wide_resnet", {"depth": depth, "widen_factor": widen, "sub_block1": sub_block1, **kw}


def _dm(depth: int, width: int, activation: str = "swish") -> tuple[str, dict]:
    return "dm_wide_resnet", {"depth": depth, "widen_factor": width, "activation": activation}


_DM_R18 = ("dm_preact_resnet", {"depth": 18, "activation": "swish"})
_R18: tuple[str, dict[str, Any]] = ("resnet18", {})
_R50: tuple[str, dict[str, Any]] = ("resnet50", {})
_PRE_FAST = ("preact_resnet18", {"final_bn": False, "shortcut_from_input": True})
_PRE_BN = ("preact_resnet18", {"final_bn": True, "shortcut_from_input": False})
_MMA = _trades(28, 4, per_image_standardize=True)
_EXOTIC: tuple[None, dict[str, Any]] = (None, {})

# name: (architecture, normalization, layout, note)
_CIFAR10_LINF: dict[str, tuple] = {
    "Andriushchenko2020Understanding": (_PRE_FAST, RAW, "last"),
    "Carmon2019Unlabeled": (_trades(28, 10, True), RAW, "state_dict/module."),
    "Sehwag2020Hydra": (_trades(28, 10, True), RAW),
    "Wang2020Improving": (_trades(28, 10, True), RAW),
    "Hendrycks2019Using": (_trades(28, 10), HALF),
    "Rice2020Overfitting": (_trades(34, 20), C10),
    "Zhang2019Theoretically": (_trades(34, 10, True), RAW),
    "Engstrom2019Robustness": (_R50, ENGSTROM),
    "Chen2020Adversarial": (_EXOTIC, RAW, "plain",
                            "ensemble of three ResNet-50s averaging softmax probabilities"),
    "Huang2020Self": (_trades(34, 10, True), RAW),
    "Pang2020Boosting": (_trades(34, 20, True, bias_last=False, normalized_head=True), C10),
    "Wong2020Fast": (_PRE_FAST, C10),
    "Ding2020MMA": (_MMA, RAW, "plain", "per-image standardisation inside the network"),
    "Zhang2019You": (_trades(34, 10, True), RAW),
    "Zhang2020Attacks": (_trades(34, 10, True), RAW),
    "Wu2020Adversarial_extra": (_trades(28, 10, True), RAW),
    "Wu2020Adversarial": (_trades(34, 10), RAW),
    "Gowal2020Uncovering_70_16": (_dm(70, 16), C10),
    "Gowal2020Uncovering_70_16_extra": (_dm(70, 16), C10),
    "Gowal2020Uncovering_34_20": (_dm(34, 20), C10),
    "Gowal2020Uncovering_28_10_extra": (_dm(28, 10), C10),
    "Sehwag2021Proxy": (_trades(34, 10), RAW),
    "Sehwag2021Proxy_R18": (_R18, RAW),
    "Sehwag2021Proxy_ResNest152": (_EXOTIC, RAW, "plain", "ResNeSt-152"),
    "Sitawarin2020Improving": (_trades(34, 10, True), RAW),
    "Chen2020Efficient": (_trades(34, 10, True), C10, "state_dict/model."),
    "Cui2020Learnable_34_20": (_trades(34, 20, True), RAW),
    "Cui2020Learnable_34_10": (_trades(34, 10, True), RAW),
    "Zhang2020Geometry": (_trades(28, 10, True), RAW),
    "Rebuffi2021Fixing_28_10_cutmix_ddpm": (_dm(28, 10), C10),
    "Rebuffi2021Fixing_106_16_cutmix_ddpm": (_dm(106, 16), C10),
    "Rebuffi2021Fixing_70_16_cutmix_ddpm": (_dm(70, 16), C10),
    "Rebuffi2021Fixing_70_16_cutmix_extra": (_dm(70, 16), C10),
    "Sridhar2021Robust": (_trades(28, 10, True), RAW),
    "Sridhar2021Robust_34_15": (_trades(34, 15, True), RAW),
    "Rebuffi2021Fixing_R18_ddpm": (_DM_R18, C10),
    "Rade2021Helper_R18_extra": (_DM_R18, C10),
    "Rade2021Helper_R18_ddpm": (_DM_R18, C10),
    "Rade2021Helper_extra": (_dm(34, 10), C10),
    "Rade2021Helper_ddpm": (_dm(28, 10), C10),
    "Huang2021Exploring": (_EXOTIC, RAW, "plain", "RobustWideResNet (searched widths/depths)"),
    "Huang2021Exploring_ema": (_EXOTIC, RAW, "plain", "RobustWideResNet (searched widths/depths)"),
    "Addepalli2021Towards_RN18": (_R18, RAW),
    "Addepalli2021Towards_WRN34": (_trades(34, 10, True), RAW),
    "Gowal2021Improving_70_16_ddpm_100m": (_dm(70, 16), C10),
    "Dai2021Parameterizing": (_EXOTIC, RAW, "plain", "WRN-28-10 with learned PSSiLU activations"),
    "Gowal2021Improving_28_10_ddpm_100m": (_dm(28, 10), C10),
    "Gowal2021Improving_R18_ddpm_100m": (_DM_R18, C10),
    "Chen2021LTD_WRN34_10": (_trades(34, 10), RAW),
    "Chen2021LTD_WRN34_20": (_trades(34, 20), RAW),
    "Standard": (_trades(28, 10), RAW),
    "Kang2021Stable": (_EXOTIC, RAW, "plain", "WRN-70-16 with a neural-ODE head"),
    "Jia2022LAS-AT_34_10": (_trades(34, 10), RAW),
    "Jia2022LAS-AT_70_16": (_trades(70, 16), RAW),
    "Pang2022Robustness_WRN28_10": (_dm(28, 10), C10),
    "Pang2022Robustness_WRN70_16": (_dm(70, 16), C10),
    "Addepalli2022Efficient_RN18": (_R18, RAW),
    "Addepalli2022Efficient_WRN_34_10": (_trades(34, 10), RAW),
    "Debenedetti2022Light_XCiT-S12": (_EXOTIC, RAW, "plain", "XCiT (timm)"),
    "Debenedetti2022Light_XCiT-M12": (_EXOTIC, RAW, "plain", "XCiT (timm)"),
    "Debenedetti2022Light_XCiT-L12": (_EXOTIC, RAW, "plain", "XCiT (timm)"),
    "Huang2022Revisiting_WRN-A4": (_EXOTIC, RAW, "plain", "robust-architecture WRN-A4"),
    "Wang2023Better_WRN-28-10": (_dm(28, 10, "silu"), C10),
    "Wang2023Better_WRN-70-16": (_dm(70, 16, "silu"), C10),
    "Xu2023Exploring_WRN-28-10": (_dm(28, 10, "silu"), C10),
    "Cui2023Decoupled_WRN-28-10": (_dm(28, 10, "silu"), C10),
    "Cui2023Decoupled_WRN-34-10": (_trades(34, 10), RAW),
    "Bai2023Improving_edm": (_EXOTIC, RAW, "plain", "composite of two models and a policy net"),
    "Peng2023Robust": (_EXOTIC, RAW, "plain", "RaWideResNet-70-16 (torchvision ops)"),
    "Bai2024MixedNUTS": (_EXOTIC, RAW, "plain", "nonlinear mixture of two classifiers"),
    "Chen2024Data_WRN_34_10": (_trades(34, 10), RAW),
    "Chen2024Data_WRN_34_20": (_trades(34, 20), RAW),
    "Amini2024MeanSparse_Ra_WRN_70_16": (_EXOTIC, RAW, "plain", "MeanSparse (timm)"),
    "Amini2024MeanSparse_S-WRN-94-16": (_EXOTIC, RAW, "plain", "MeanSparse (timm)"),
    "Bartoldson2024Adversarial_WRN-94-16": (_dm(94, 16, "silu"), C10),
    "Bartoldson2024Adversarial_WRN-82-8": (_dm(82, 8, "silu"), C10),
}

_CIFAR10_L2: dict[str, tuple] = {
    "Augustin2020Adversarial": (_R50, AUGUSTIN),
    "Engstrom2019Robustness": (_R50, ENGSTROM),
    "Rice2020Overfitting": (_PRE_BN, C10),
    "Rony2019Decoupling": (_trades(28, 10), RONY),
    "Standard": (_trades(28, 10), RAW),
    "Ding2020MMA": (_MMA, RAW, "plain", "per-image standardisation inside the network"),
    "Wu2020Adversarial": (_trades(34, 10), RAW),
    "Gowal2020Uncovering": (_dm(70, 16), C10),
    "Gowal2020Uncovering_extra": (_dm(70, 16), C10),
    "Sehwag2021Proxy": (_trades(34, 10), RAW),
    "Sehwag2021Proxy_R18": (_R18, RAW),
    "Rebuffi2021Fixing_70_16_cutmix_ddpm": (_dm(70, 16), C10),
    "Rebuffi2021Fixing_28_10_cutmix_ddpm": (_dm(28, 10), C10),
    "Rebuffi2021Fixing_70_16_cutmix_extra": (_dm(70, 16), C10),
    "Augustin2020Adversarial_34_10": (_trades(34, 10), AUGUSTIN),
    "Augustin2020Adversarial_34_10_extra": (_trades(34, 10), AUGUSTIN),
    "Rebuffi2021Fixing_R18_cutmix_ddpm": (_DM_R18, C10),
    "Rade2021Helper_R18_ddpm": (_DM_R18, C10),
    "Wang2023Better_WRN-28-10": (_dm(28, 10, "silu"), C10),
    "Wang2023Better_WRN-70-16": (_dm(70, 16, "silu"), C10),
    "Amini2024MeanSparse_S-WRN-70-16": (_EXOTIC, RAW, "plain", "MeanSparse (timm)"),
}

_CIFAR100_LINF: dict[str, tuple] = {
    "Gowal2020Uncovering": (_dm(70, 16), C100),
    "Gowal2020Uncovering_extra": (_dm(70, 16), C100),
    "Cui2020Learnable_34_20_LBGAT6": (_trades(34, 20, True), RAW),
    "Cui2020Learnable_34_10_LBGAT0": (_trades(34, 10, True), RAW),
    "Cui2020Learnable_34_10_LBGAT6": (_trades(34, 10, True), RAW),
    "Chen2020Efficient": (_trades(34, 10, True), C100_CHEN, "state_dict/model."),
    "Wu2020Adversarial": (_trades(34, 10), C100_PRECISE),
    "Sehwag2021Proxy": (_trades(34, 10), RAW),
    "Sitawarin2020Improving": (_trades(34, 10, True), RAW),
    "Hendrycks2019Using": (_trades(28, 10), HALF),
    "Rice2020Overfitting": (_PRE_BN, C100_PRECISE),
    "Rebuffi2021Fixing_70_16_cutmix_ddpm": (_dm(70, 16), C100),
    "Rebuffi2021Fixing_28_10_cutmix_ddpm": (_dm(28, 10), C100),
    "Rebuffi2021Fixing_R18_ddpm": (_DM_R18, C100),
    "Rade2021Helper_R18_ddpm": (_DM_R18, C100),
    "Addepalli2021Towards_PARN18": (_PRE_BN, RAW),
    "Addepalli2021Towards_WRN34": (_trades(34, 10, True), RAW),
    "Chen2021LTD_WRN34_10": (_trades(34, 10, True), RAW),
    "Pang2022Robustness_WRN28_10": (_dm(28, 10), C100),
    "Pang2022Robustness_WRN70_16": (_dm(70, 16), C100),
    "Jia2022LAS-AT_34_10": (_trades(34, 10, True), RAW),
    "Jia2022LAS-AT_34_20": (_trades(34, 20), RAW),
    "Addepalli2022Efficient_RN18": (_R18, RAW),
    "Addepalli2022Efficient_WRN_34_10": (_trades(34, 10), RAW),
    "Debenedetti2022Light_XCiT-S12": (_EXOTIC, RAW, "plain", "XCiT (timm)"),
    "Debenedetti2022Light_XCiT-M12": (_EXOTIC, RAW, "plain", "XCiT (timm)"),
    "Debenedetti2022Light_XCiT-L12": (_EXOTIC, RAW, "plain", "XCiT (timm)"),
    "Cui2020Learnable_34_10_LBGAT9_eps_8_255": (_trades(34, 10), RAW),
    "Wang2023Better_WRN-28-10": (_dm(28, 10, "silu"), C100),
    "Wang2023Better_WRN-70-16": (_dm(70, 16, "silu"), C100),
    "Bai2023Improving_edm": (_EXOTIC, RAW, "plain", "composite of two models and a policy net"),
    "Bai2023Improving_trades": (_EXOTIC, RAW, "plain", "composite of two models and a policy net"),
    "Cui2023Decoupled_WRN-28-10": (_dm(28, 10, "silu"), C100),
    "Cui2023Decoupled_WRN-34-10": (_trades(34, 10), RAW),
    "Cui2023Decoupled_WRN-34-10_autoaug": (_trades(34, 10), RAW),
    "Bai2024MixedNUTS": (_EXOTIC, RAW, "plain", "nonlinear mixture of two classifiers"),
    "Chen2024Data_WRN_34_10": (_trades(34, 10), RAW),
    "Amini2024MeanSparse_S-WRN-70-16": (_EXOTIC, RAW, "plain", "MeanSparse (timm)"),
}


def _build(dataset: str, threat_model: str, table: dict[str, tuple]) -> dict[str, ZooEntry]:
    out = {}
    for name, row in table.items():
        (arch, kwargs), (mean, std) = row[0], row[1]
        layout = row[2] if len(row) > 2 else "plain"
        note = row[3] if len(row) > 3 else ""
        out[name] = ZooEntry(name, dataset, threat_model, arch, dict(kwargs), tuple(mean),
                             tuple(std), layout, note)
    return out


ZOO: dict[tuple[str, str], dict[str, ZooEntry]] = {
    ("cifar10", "Linf"): _build("cifar10", "Linf", _CIFAR10_LINF),
    ("cifar10", "L2"): _build("cifar10", "L2", _CIFAR10_L2),
    ("cifar100", "Linf"): _build("cifar100", "Linf", _CIFAR100_LINF),
}


def list_zoo(dataset: str | None = None, threat_model: str | None = None) -> list[ZooEntry]:
    """All catalogued entries, optionally of one dataset and/or threat model."""
    return [e for (d, t), table in ZOO.items() for e in table.values()
            if (dataset is None or d == dataset) and (threat_model is None or t == threat_model)]


def _canonical_threat(threat_model: str) -> str:
    for t in THREAT_MODELS:
        if threat_model.lower() == t.lower():
            return t
    raise UserError(f"unknown threat model {threat_model!r}; use one of {list(THREAT_MODELS)}")


def zoo_entry(name: str, dataset: str = "cifar10", threat_model: str = "Linf") -> ZooEntry:
    """The catalogue entry ``name`` of ``dataset``/``threat_model``; a typo names the closest."""
    threat = _canonical_threat(threat_model)
    dataset = dataset.lower().replace("-", "")
    if dataset not in DATASETS:
        raise UserError(f"RobustBench entries are catalogued for {list(DATASETS)}; got dataset "
                        f"{dataset!r} (pass --dataset cifar10 or cifar100)")
    table = ZOO.get((dataset, threat))
    if table is None:
        raise UserError(f"no {dataset} {threat} entries are catalogued; "
                        f"catalogued: {', '.join(f'{d} {t}' for d, t in ZOO)}")
    if name in table:
        return table[name]
    elsewhere = [f"{d} {t}" for (d, t), tab in ZOO.items() if name in tab]
    if elsewhere:
        raise UserError(f"{name!r} is not a {dataset} {threat} entry but exists for "
                        f"{' and '.join(elsewhere)}; pass that dataset/threat model")
    close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else "see docs/models.md for the list"
    raise UserError(f"unknown RobustBench {dataset} {threat} model {name!r}; {hint}")
