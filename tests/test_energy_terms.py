"""benchmarks/energy_terms.py: the force classes it splits the energy into add up to OpenMM's total energy."""

from __future__ import annotations

import numpy as np
import torch

from trade_md.energy import EnergyBridge
from trade_md.systems import load_system

from benchmark_module import load_benchmark

energy_terms = load_benchmark("energy_terms")


def test_the_force_classes_add_up_to_the_total_energy() -> None:
    molecule = load_system("alanine-dipeptide")
    rng = np.random.default_rng(0)
    positions = molecule.positions[None] + 0.005 * rng.standard_normal((5, molecule.n_atoms, 3))   # nm
    terms = energy_terms.term_energies(molecule.system, positions)
    assert set(terms) == {"bonds", "angles", "torsions", "nonbonded + solvent"}
    with EnergyBridge(molecule) as bridge:
        total = bridge.potential(torch.as_tensor(positions)).numpy()
    np.testing.assert_allclose(sum(terms.values()), total, rtol=1e-6, atol=1e-4)   # kJ/mol
    assert np.ptp(terms["bonds"]) > 1.0                                             # the jitter shows in the bonds
