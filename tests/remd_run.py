"""Test helper shared by test_remd.py and test_reference.py: a tiny interrupted alanine-dipeptide tempering run.

Not a fixture module (tests/conftest.py is the lead's); the test files wrap it in module-scoped fixtures. It costs a
few seconds on the Reference platform.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trade_md.formats.remd import ReplicaData, read_storage
from trade_md.remd import RemdSettings, run_remd
from trade_md.systems import MolecularSystem

LADDER = (300.0, 600.0, 1200.0)
INTERRUPT_AT, TARGET = 4, 14


def interrupted_run_in(out: Path, system: MolecularSystem) -> ReplicaData:
    """Run 3 replicas of ``system`` into ``out`` for TARGET iterations, killed (KeyboardInterrupt) after
    INTERRUPT_AT; returns what the storage holds then."""
    settings = RemdSettings(temperatures=LADDER, n_iterations=TARGET, steps_per_iteration=100)

    def interrupt(iteration: int) -> None:
        if iteration == INTERRUPT_AT:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_remd(system, settings, out, platform="Reference", progress=False, callback=interrupt)
    return read_storage(out)
