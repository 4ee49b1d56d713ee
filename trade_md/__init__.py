"""trade-md: temperature-transferable Boltzmann generators for molecules, trained with TRADE.

Units: nm, kJ/mol, K; reduced energies u = U/(k_B T) inside. See README.md.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

__all__ = ["__version__"]


class _PymbarNoticeFilter(logging.Filter):
    """Drops two generic notices pymbar logs at WARNING level when its modules are imported: an advertisement for
    JAX, and a caveat about statistical inefficiencies. trade-md reports its own decorrelation diagnostics."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "JAX NOT FOUND" not in message and "Warning on use of the timeseries module" not in message


for _name in ("pymbar.mbar_solvers", "pymbar.timeseries"):
    logging.getLogger(_name).addFilter(_PymbarNoticeFilter())
