"""Read state dicts written by other projects (RobustBench, TRADES, MadryLab robustness,
DataParallel / torch.compile runs, the papers' own code) into our architectures.

:func:`read_foreign_state` unwraps a loaded file into network keys plus the normalization the
file stores, if any; :func:`load_foreign_state_dict` loads it into a model with exact key
checks; :func:`infer_architecture` names the registered architecture whose keys a file fits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..errors import UserError
from .layers import Classifier

# Dicts that other code bases put around the weights (checked in this order).
WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "last", "best")
# Prefixes of DataParallel ("module."), wrapper modules ("model."), torch.compile ("_orig_mod.").
_PREFIXES = ("module.", "model.", "_orig_mod.")
# Where files keep their input normalization: (mean key, std key).
_NORM_KEYS = (("mu", "sigma"), ("mean", "std"), ("normalize.mean", "normalize.std"),
              ("normalizer.new_mean", "normalizer.new_std"), ("0.mean", "0.std"))


@dataclass(frozen=True)
class ForeignState:
    """Network weights under our key names, the stored normalization and what was done."""

    tensors: dict[str, Tensor]
    mean: list[float] | None = None
    std: list[float] | None = None
    notes: list[str] = field(default_factory=list)


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _unwrap(obj: Any, notes: list[str]) -> Mapping[str, Any]:
    while isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        inner = next((k for k in WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        if inner == "last" and "best" in obj:
            notes.append("file holds 'last' and 'best' weights: loaded 'last'")
        obj = obj[inner]
        notes.append(f"unwrapped {inner!r}")
    if not isinstance(obj, Mapping):
        raise UserError(f"expected a state dict (a mapping of tensors); got {type(obj).__name__}")
    return obj


def unwrap_state(obj: Any) -> dict[str, Tensor]:
    """The tensors of a loaded file with wrappers and ``module.``-style prefixes removed."""
    return {_strip(str(k)): v for k, v in _unwrap(obj, []).items() if isinstance(v, Tensor)}


def read_foreign_state(obj: Any) -> ForeignState:
    """Network tensors with wrappers and prefixes removed, plus any stored mean/std.

    Handles wrappers ``state_dict``/``model_state_dict``/``model``/``net``/``last``/``best``,
    prefixes ``module.``/``model.``/``_orig_mod.``/``net.``, ``nn.Sequential(Normalize, net)``
    files (``0.mean``, ``1.conv1.weight``), the robustness library's duplicate ``attacker.*``
    copy and its ``normalizer.new_mean``, and mean/std stored as ``mu``/``sigma``,
    ``mean``/``std`` or ``normalize.mean``/``normalize.std`` (values in [0, 1] pixel units).
    """
    notes: list[str] = []
    raw = _unwrap(obj, notes)
    dropped = [k for k, v in raw.items() if not isinstance(v, Tensor)]
    if dropped:
        notes.append(f"ignored non-tensor entries {sorted(map(str, dropped))[:5]}")
    sd = {_strip(str(k)): v for k, v in raw.items() if isinstance(v, Tensor)}
    attacker = [k for k in sd if k.startswith("attacker.")]
    if attacker:  # robustness library: the attacker holds a second copy of the same model
        notes.append(f"dropped {len(attacker)} 'attacker.*' duplicates (robustness library)")
        sd = {k: v for k, v in sd.items() if not k.startswith("attacker.")}
    body = [k for k in sd if not k.startswith("0.")]
    if body and all(k.startswith("1.") for k in body):
        notes.append("unwrapped nn.Sequential(Normalize, net) ('1.' prefix)")
        sd = {(k[2:] if k.startswith("1.") else k): v for k, v in sd.items()}
    if all(k.startswith("net.") or k.startswith("normalize.") for k in sd):
        sd = {(k[4:] if k.startswith("net.") else k): v for k, v in sd.items()}
    mean = std = None
    for mk, sk in _NORM_KEYS:
        if mk in sd and sk in sd:
            mean = [float(v) for v in sd.pop(mk).flatten()]
            std = [float(v) for v in sd.pop(sk).flatten()]
            notes.append(f"normalization read from the file ({mk}/{sk})")
            break
    for k in [k for k in sd if k.startswith("0.") or k.startswith("normalize.")]:
        sd.pop(k)  # leftovers of a normalization module without mean/std
    return ForeignState(sd, mean, std, notes)


def _show(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")


def load_foreign_state_dict(
    model: Classifier, state_dict: Mapping[str, Any] | ForeignState, strict: bool = True
) -> dict[str, list[str]]:
    """Load a foreign state dict into ``model.net`` (normalization stays the model's).

    Files without ``num_batches_tracked`` load as they are (the counter never changes eval
    outputs). With ``strict`` (default) any other missing or unexpected key raises a
    :class:`UserError` naming them and, where it can tell, the architecture the keys fit;
    otherwise the lists come back as ``{"missing": [...], "unexpected": [...]}`` and only the
    matching tensors are loaded.
    """
    fs = state_dict if isinstance(state_dict, ForeignState) else read_foreign_state(state_dict)
    net_sd = fs.tensors
    own = model.net.state_dict()
    missing = sorted(k for k in own if k not in net_sd and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in net_sd if k not in own)
    mismatched = [k for k in own if k in net_sd and tuple(net_sd[k].shape) != tuple(own[k].shape)]
    if mismatched or (strict and (missing or unexpected)):
        raise UserError(_mismatch_message(model, net_sd, own, missing, unexpected, mismatched))
    model.net.load_state_dict({k: v for k, v in net_sd.items() if k in own}, strict=False)
    return {"missing": missing, "unexpected": unexpected}


def _mismatch_message(model: Classifier, net_sd: dict[str, Tensor], own: dict[str, Tensor],
                      missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    name = model.arch.get("name", "?")
    head = _head_classes(net_sd)
    if head is not None and head != model.arch.get("num_classes"):
        return (f"the checkpoint predicts {head} classes but the model is built for "
                f"{model.arch.get('num_classes')}: it is a checkpoint for another dataset "
                f"(e.g. {'cifar100' if head == 100 else f'a {head}-class one'}); pass that "
                "dataset (--dataset / dataset=) or the matching zoo entry")
    if mismatched:
        what = "; ".join(f"{k}: checkpoint {tuple(net_sd[k].shape)} vs model "
                         f"{tuple(own[k].shape)}" for k in mismatched[:4])
        problem = f"state dict does not fit {name!r} (shape mismatch): {what}"
    else:
        problem = (f"state dict does not match model {name!r}: missing keys [{_show(missing)}]; "
                   f"unexpected keys [{_show(unexpected)}]")
    guess = infer_architecture(net_sd)
    if guess is not None:
        args = ",".join(f"{k}={v}" for k, v in guess[1].items())
        fix = f"its keys fit --arch {guess[0]}" + (f" --arch-args {args}" if args else "")
    else:
        fix = "pick the matching architecture and arguments (depth, widen_factor, num_classes)"
    return f"{problem}. {fix} (or strict=False / --no-strict to load what fits)"


def _head_classes(sd: Mapping[str, Tensor]) -> int | None:
    for key in ("fc.weight", "linear.weight", "logits.weight"):
        if key in sd and sd[key].dim() == 2:
            return int(sd[key].shape[0])
    return None


def _count(sd: Mapping[str, Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(0) for k in sd if (m := rx.match(k))})


def infer_architecture(sd: Mapping[str, Tensor]) -> tuple[str, dict[str, Any]] | None:
    """The registered architecture and arguments whose parameter names fit ``sd``, or None."""
    if "init_conv.weight" in sd and "layer.0.block.0.conv_0.weight" in sd:
        n = _count(sd, r"layer\.0\.block\.\d+\.")
        width = int(sd["layer.0.block.0.conv_0.weight"].shape[0]) // 16
        return "dm_wide_resnet", {"depth": 6 * n + 4, "widen_factor": width}
    if "conv_2d.weight" in sd and "layer_0.0.conv_2d_1.weight" in sd:
        return "dm_preact_resnet", {"depth": 18 if _count(sd, r"layer_0\.\d+\.") == 2 else 34}
    if "block1.layer.0.conv1.weight" in sd:
        n = _count(sd, r"block1\.layer\.\d+\.")
        kw: dict[str, Any] = {"depth": 6 * n + 4,
                              "widen_factor": int(sd["block1.layer.0.conv1.weight"].shape[0]) // 16}
        if any(k.startswith("sub_block1.") for k in sd):
            kw["sub_block1"] = True
        if "fc.weight" in sd and "fc.bias" not in sd:
            kw["bias_last"] = False
        return "wide_resnet", kw
    if "layer1.0.conv3.weight" in sd and "bn1.weight" in sd:
        return "resnet50", {}
    if "layer1.0.conv1.weight" in sd and "linear.weight" in sd:
        blocks = tuple(_count(sd, rf"layer{i}\.\d+\.") for i in range(1, 5))
        if "bn1.weight" in sd or "layer1.0.bn2.weight" not in sd:  # post-activation ResNet
            by_blocks: dict[tuple[int, ...], str] = {(1, 1, 1, 1): "resnet10", (2, 2, 2, 2): "resnet18",
                         (3, 4, 6, 3): "resnet34"}
            name = by_blocks.get(blocks)
            kw = {} if "layer1.0.bn1.weight" in sd or name != "resnet10" else {"batchnorm": False}
            return (name, kw) if name else None
        if blocks == (2, 2, 2, 2):
            return "preact_resnet18", {"final_bn": "bn.weight" in sd}
    return None
