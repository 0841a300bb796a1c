"""Plots (matplotlib Agg) and Markdown sections for analyses; every file written atomically."""

from .markdown import detection_section, energy_section, he_study_section, sweep_section
from .plots import (
    plot_energy_histograms,
    plot_energy_trajectory,
    plot_he_study,
    plot_roc,
    plot_sweep,
)

__all__ = [
    "detection_section",
    "energy_section",
    "he_study_section",
    "plot_energy_histograms",
    "plot_energy_trajectory",
    "plot_he_study",
    "plot_roc",
    "plot_sweep",
    "sweep_section",
]
