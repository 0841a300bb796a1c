"""Fast paths for attacks and evaluation: bf16 autocast, channels_last, torch.compile.

``wrap_model(model, precision="bf16", channels_last=True, compile=True)`` returns a module that
attacks, samplers and evaluation call exactly like the plain model: images in [0, 1], shape
(N, C, H, W), and **float32** logits (N, K) out, so every loss, energy and input gradient of a
loss is computed from float32 logits whatever precision the network runs in. With every option
off the model itself is returned (the plain path, no wrapper).

Tolerances, measured by ``tests/test_fastpath.py`` on small models (stated there):

* ``channels_last``: the same arithmetic in another memory order; logits agree to float32
  rounding (about 1e-6 relative).
* ``compile``: inductor fuses and reorders float32 operations; logits agree to about 1e-5
  relative, and an attack's iterates can part ways where a gradient's sign is near zero.
* ``precision="bf16"``: matrix products in bfloat16 (8 bits of mantissa); logits agree to
  about 1e-2 relative, so attack iterates differ, while robust accuracy agrees within a few
  points on a small set (see the test).

CUDA graphs are not offered separately: ``torch.compile(mode="reduce-overhead")`` captures
them, but an attack calls the model on shrinking subsets of still-robust points (APGD, the
cascade), and every new batch shape records a new graph, so they help only fixed-shape loops
(the training step). Pass ``compile_mode="reduce-overhead"`` to try them there.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from .errors import UserError

PRECISIONS = ("fp32", "bf16")

__all__ = ["PRECISIONS", "FastModel", "base_model", "wrap_model"]


class FastModel(nn.Module):
    """Run ``model`` under bf16 autocast and/or on channels_last inputs; return float32 logits.

    Args:
        model: A classifier taking [0, 1] images (N, C, H, W) and returning logits (N, K).
        precision: 'fp32' (no autocast) or 'bf16' (autocast on the input's device type).
        channels_last: Feed 4-D inputs in NHWC memory order (the caller converts the weights).
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", channels_last: bool = False):
        super().__init__()
        self.model = model
        self.precision = precision
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "bf16":
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                logits = self.model(x)
        else:
            logits = self.model(x)
        return logits.float()


def wrap_model(
    model: nn.Module,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
) -> nn.Module:
    """The model behind the requested fast paths (the model itself when none is requested).

    Args:
        model: The classifier ([0, 1] images in, logits out). With ``channels_last`` its
            weights are converted in place (``model.to(memory_format=torch.channels_last)``,
            the same Parameter objects, so an existing optimizer keeps working).
        precision: 'fp32' or 'bf16' (autocast; parameters and logits stay float32).
            fp16 is left to training, which has loss scaling (``TrainConfig.precision``).
        channels_last: NHWC memory order for weights and inputs (faster convolutions on
            tensor-core GPUs; usually slower on CPU).
        compile: ``torch.compile`` the result (inductor). The first call of each input shape
            compiles (tens of seconds); later calls reuse it.
        compile_mode: Passed to ``torch.compile`` (e.g. 'max-autotune', 'reduce-overhead').
        compile_backend: ``torch.compile``'s backend; 'eager' traces without generating code
            (seconds instead of a minute on CPU: the quick tests and ``--smoke`` use it).

    Returns:
        A module called as ``m(x) -> float32 logits``; ``base_model(m)`` is ``model``. Save
        checkpoints from ``model`` (or ``base_model(m)``), never from the wrapper.
    """
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if (compile_mode is not None or compile_backend != "inductor") and not compile:
        raise UserError("compile_mode and compile_backend need compile=True (--compile)")
    out: nn.Module = model
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if precision != "fp32" or channels_last:
        out = FastModel(model, precision, channels_last)
    if compile:
        out = cast(nn.Module, torch.compile(out, mode=compile_mode, backend=compile_backend))
    return out


def base_model(model: nn.Module) -> nn.Module:
    """The plain model under :func:`wrap_model`'s layers (compile, FastModel); else ``model``."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, FastModel):
            model = model.model
        else:
            return model
