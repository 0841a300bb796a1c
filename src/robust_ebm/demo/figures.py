"""The demo's one figure style: reports.plots (Agg, atomic PNG) plus shared rc settings.

Energy sign, stated once for every figure: E(x) = -logsumexp f(x), E(x, y) = -f(x)[y];
lower energy = more likely under the classifier read as an EBM.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .config import LABELS

__all__ = ["LABELS", "style"]

RC = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.25,
    "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 110,
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """``with style(): fig = plt.subplots(...)``: the demo's rc settings."""
    from ..reports.plots import pyplot

    with pyplot().rc_context(RC):
        yield
