"""The energy detector: flag an input as adversarial from its temperature-scaled free energy.

Beadini & Masi (arXiv 2304.04033; docs/science.md#energy-detector): score = E_T(x) =
-T logsumexp(f(x)/T) of the attacked classifier; an input is flagged when E_T(x) <= tau
(``direction='below'``: untargeted attacks push energy down). T and tau are calibrated on held-out data attacked with the budget the
detector should catch: AUROC per T over a grid, best T kept, tau = Youden-J threshold.

``direction='above'`` flags E_T(x) >= tau instead, for models whose adversarial energies lie
above their clean ones; reports state the direction used.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..energy import free_energy
from ..errors import CorruptDataError, UserError
from ..evaluation.batched import map_batches
from ..io import atomic_write_json
from .metrics import auroc, tpr_at_fpr, youden_threshold

__all__ = ["DIRECTIONS", "PUBLISHED_TEMPERATURES", "TEMPERATURES", "EnergyDetector", "model_logits"]

TEMPERATURES: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
# the grid of the published detector notebooks (ours adds T = 5; docs/fidelity.md)
PUBLISHED_TEMPERATURES: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 10.0, 20.0)
DIRECTIONS = ("below", "above", "auto")
FORMAT = "robust-ebm-energy-detector/1"


def model_logits(model: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    """Logits (N, K) of ``model`` on inputs in [0,1] (uint8 allowed), frozen, CPU float32."""
    return map_batches(model, x, batch_size=batch_size)[0]


class EnergyDetector:
    """Threshold detector on E_T(x); fitted state: temperature, threshold tau, direction.

    Args:
        temperature: T > 0 of E_T.
        threshold: tau in energy units (None until fitted).
        direction: 'below' (flag E_T <= tau, the paper) or 'above' (flag E_T >= tau).
        info: JSON-friendly facts about the calibration (kept in the saved file).
    """

    def __init__(
        self,
        temperature: float = 1.0,
        threshold: float | None = None,
        direction: str = "below",
        info: dict[str, Any] | None = None,
    ) -> None:
        if direction not in ("below", "above"):
            raise UserError(f"direction must be 'below' or 'above'; got {direction!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                and temperature > 0):
            raise UserError(f"temperature must be a finite number > 0; got {temperature!r}")
        self.temperature = float(temperature)
        self.threshold = None if threshold is None else float(threshold)
        self.direction = direction
        self.info: dict[str, Any] = dict(info or {})

    # -- scores ----------------------------------------------------------------------------
    def energy(self, logits: Tensor) -> Tensor:
        """E_T(x), shape (N,), float32 on the CPU."""
        return free_energy(logits.detach().float().cpu(), self.temperature)

    def score(self, logits: Tensor) -> Tensor:
        """Suspicion, shape (N,): higher = more adversarial (-E_T for 'below', E_T for 'above')."""
        e = self.energy(logits)
        return -e if self.direction == "below" else e

    def predict(self, logits: Tensor) -> Tensor:
        """Boolean (N,): True = flagged as adversarial."""
        if self.threshold is None:
            raise UserError("the detector is not fitted: call fit(...) or load a saved one")
        e = self.energy(logits)
        tau = torch.tensor(self.threshold, dtype=e.dtype)
        return e <= tau if self.direction == "below" else e >= tau

    def predict_inputs(self, model: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
        """``predict`` on the logits of ``model`` at inputs ``x`` (float, [0,1])."""
        return self.predict(model_logits(model, x, batch_size))

    # -- calibration -----------------------------------------------------------------------
    def fit(
        self,
        logits_clean: Tensor,
        logits_adv: Tensor,
        temperatures: Sequence[float] = TEMPERATURES,
        direction: str | None = None,
    ) -> EnergyDetector:
        """Pick T (best AUROC over ``temperatures``) and tau (Youden J) from held-out logits.

        Args:
            logits_clean: (N, K) logits of clean calibration inputs (negatives).
            logits_adv: (M, K) logits of their adversarial versions (positives); pass only the
                successful ones if failed attacks should not count as adversarial.
            temperatures: the grid of T.
            direction: 'below', 'above' or 'auto' (the side with the higher best AUROC);
                None keeps the current one.
        Returns:
            self, with ``info['calibration']`` holding the AUROC of each T for both directions.
        """
        direction = self.direction if direction is None else direction
        if direction not in DIRECTIONS:
            raise UserError(f"direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}")
        if not temperatures:
            raise UserError("the temperature grid is empty")
        rows = []
        for t in temperatures:
            e_c = free_energy(logits_clean.detach().float().cpu(), float(t)).numpy()
            e_a = free_energy(logits_adv.detach().float().cpu(), float(t)).numpy()
            below = auroc(-e_c, -e_a)
            rows.append({"temperature": float(t), "auroc_below": below, "auroc_above": 1 - below})
        if direction == "auto":
            best_b = max(r["auroc_below"] for r in rows)
            best_a = max(r["auroc_above"] for r in rows)
            direction = "below" if best_b >= best_a else "above"
        key = f"auroc_{direction}"
        best = max(rows, key=lambda r: r[key])  # first best on ties: the smallest T
        self.direction = direction
        self.temperature = best["temperature"]
        s_c = self.score(logits_clean).numpy()
        s_a = self.score(logits_adv).numpy()
        thr, _, _ = youden_threshold(s_c, s_a)
        self.threshold = float(-thr if direction == "below" else thr)
        # report the decisions of the stored threshold exactly as predict() makes them
        flags_c, flags_a = self.predict(logits_clean), self.predict(logits_adv)
        self.info["calibration"] = {
            "grid": rows,
            "direction": direction,
            "temperature": self.temperature,
            "threshold": self.threshold,
            "auroc": best[key],
            "tpr": float(flags_a.double().mean()),
            "fpr": float(flags_c.double().mean()),
            "tpr_at_5pct_fpr": tpr_at_fpr(s_c, s_a, 0.05),
            "n_clean": int(logits_clean.shape[0]),
            "n_adv": int(logits_adv.shape[0]),
        }
        return self

    # -- persistence -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "temperature": self.temperature,
            "threshold": self.threshold,
            "direction": self.direction,
            "info": self.info,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> EnergyDetector:
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise CorruptDataError(f"not an energy-detector file (expected format {FORMAT!r})")
        return cls(obj["temperature"], obj["threshold"], obj["direction"], obj.get("info"))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the detector as a small JSON file, atomically."""
        return atomic_write_json(path, _clean_json(self.to_json()))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EnergyDetector:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"detector file not found: {p} (run 'robust-ebm detect calibrate')")
        try:
            obj = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise CorruptDataError(f"{p}: not valid JSON ({exc})") from None
        try:
            return cls.from_json(obj)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, UserError):
                raise CorruptDataError(f"{p}: {exc}") from None
            raise CorruptDataError(f"{p}: malformed detector file ({type(exc).__name__}: {exc}); "
                                   "run 'robust-ebm detect calibrate' again") from None

    def __repr__(self) -> str:
        return (f"EnergyDetector(temperature={self.temperature}, threshold={self.threshold}, "
                f"direction={self.direction!r})")


def _clean_json(obj: Any) -> Any:
    """numpy scalars -> Python floats; non-finite floats -> None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_json(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
