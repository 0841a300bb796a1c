"""robust-ebm: read any image classifier as an energy-based model.

Lower energy = more likely. See :mod:`robust_ebm.energy` for the definitions.
"""

__version__ = "0.1.0"
