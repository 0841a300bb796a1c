"""``robust-ebm demo``: the whole story of a classifier read as an energy model, in one report.

>>> from robust_ebm.demo import DemoConfig, QUICK, run_demo, find_root
>>> run_demo(DemoConfig(root=find_root(), sizes=QUICK), "runs/demo-quick")  # doctest: +SKIP

Five stages (one module each), cached in the output folder (:mod:`.runner`), then
``report.html`` and ``report.md`` (:mod:`.report`).
"""

from .config import FULL, OBJECTIVES, QUICK, DemoConfig, Sizes, find_root
from .pipeline import DemoResult, build_stages, run_demo

__all__ = [
    "FULL", "OBJECTIVES", "QUICK", "DemoConfig", "DemoResult", "Sizes", "build_stages",
    "find_root", "run_demo",
]
