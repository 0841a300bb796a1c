"""Load state dicts written by other projects (RobustBench, TRADES, DataParallel runs)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..errors import UserError
from .layers import Classifier

# Wrappers other code bases put around the network's own parameter names.
_PREFIXES = ("module.", "model.", "_orig_mod.")


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def load_foreign_state_dict(
    model: Classifier, state_dict: Mapping[str, Tensor], strict: bool = True
) -> dict[str, list[str]]:
    """Load a foreign state dict into ``model.net`` (normalization stays ours).

    Strips ``module.``/``model.``/``_orig_mod.`` prefixes, accepts keys with or without our own
    ``net.`` prefix and ignores normalization buffers of our own format. With ``strict`` (default)
    any missing or unexpected key raises a :class:`UserError` that lists them; otherwise the
    lists are returned as ``{"missing": [...], "unexpected": [...]}``.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    net_sd: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        key = _strip(key)
        if key.startswith("normalize."):
            continue
        if key.startswith("net."):
            key = key[4:]
        net_sd[key] = value
    own = model.net.state_dict()
    missing = sorted(k for k in own if k not in net_sd)
    unexpected = sorted(k for k in net_sd if k not in own)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(net_sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in net_sd and tuple(net_sd[k].shape) != tuple(own[k].shape)
    )
    if mismatched:
        raise UserError(
            "state dict does not fit this architecture (shape mismatch): "
            + "; ".join(mismatched[:5])
            + (f" (+{len(mismatched) - 5} more)" if len(mismatched) > 5 else "")
            + ". Check the model name and its arguments (depth, widen_factor, num_classes)."
        )
    if strict and (missing or unexpected):

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        raise UserError(
            f"state dict does not match model {model.arch['name']!r}: "
            f"missing keys [{show(missing)}]; unexpected keys [{show(unexpected)}]. "
            "Pick the matching architecture, or pass strict=False to load what fits."
        )
    model.net.load_state_dict({k: v for k, v in net_sd.items() if k in own}, strict=False)
    return {"missing": missing, "unexpected": unexpected}
