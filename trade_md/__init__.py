"""trade-md: temperature-transferable Boltzmann generators for molecules, trained with TRADE.

Units: nm, kJ/mol, K; reduced energies u = U/(k_B T) inside. See README.md.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
