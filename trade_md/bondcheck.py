"""An exact check of sampled configurations: X–H bond stretches against their conditional Boltzmann law.

For a hydrogen bonded to atom X, hold every other atom and the bond's direction fixed; the bond length r then has
the conditional density ``p(r | rest) ∝ r² exp(−U(r, rest) / k_B T)`` (r² from the spherical volume element),
computed here by quadrature on a grid of ``± width_sigmas`` harmonic standard deviations ``sqrt(k_B T / k)``
around the force field's r0. For configurations drawn from the Boltzmann density, ``z = (r − m)² / v`` with m, v
the conditional mean and variance has expectation exactly 1, whatever the rest of the molecule does. A ratio
above 1 means the sampler puts too much energy into the fastest vibrations (e.g. a Langevin integrator whose
velocities are redrawn every 0.5 ps, :mod:`trade_md.remd`), below 1 too little. Cost: ``grid_points``
energies per frame and hydrogen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import openmm
import openmm.unit as unit

from trade_md.errors import InputError
from trade_md.thermo import kT, reduced_potential

__all__ = ["BondStretchRatio", "hydrogen_bonds", "bond_stretch_ratios"]


@dataclass(frozen=True)
class BondStretchRatio:
    """One X–H bond: atom indices, its name (e.g. ``"HA-CA"``), the weighted mean of ``(r − m)² / v`` (1 for exact
    Boltzmann samples) and of ``(r − m) / sqrt(v)`` (0), and the effective number of frames behind them."""

    hydrogen: int
    partner: int
    name: str
    ratio: float
    shift: float
    effective_frames: float


def hydrogen_bonds(system: object) -> list[tuple[int, int, float, float]]:
    """``(hydrogen, partner, r0 nm, k kJ/mol/nm²)`` of every harmonic X–H bond of a ``MolecularSystem``."""
    atoms = list(system.topology.atoms())  # type: ignore[attr-defined]
    bonds = []
    for force in system.system.getForces():  # type: ignore[attr-defined]
        if isinstance(force, openmm.HarmonicBondForce):
            for index in range(force.getNumBonds()):
                i, j, r0, k = force.getBondParameters(index)
                r0 = r0.value_in_unit(unit.nanometer) if unit.is_quantity(r0) else float(r0)
                k = k.value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2) if unit.is_quantity(k) else float(k)
                symbols = (atoms[i].element.symbol if atoms[i].element else "",
                           atoms[j].element.symbol if atoms[j].element else "")
                if symbols[0] == "H" and symbols[1] != "H":
                    bonds.append((i, j, r0, k))
                elif symbols[1] == "H" and symbols[0] != "H":
                    bonds.append((j, i, r0, k))
    return bonds


def bond_stretch_ratios(
    system: object,
    positions: np.ndarray,
    temperature: float,
    energy: Callable[[np.ndarray], np.ndarray],
    *,
    weights: np.ndarray | None = None,
    grid_points: int = 61,
    width_sigmas: float = 6.0,
) -> list[BondStretchRatio]:
    """The check of the module docstring for every X–H bond of ``system``.

    positions: ``[n, atoms, 3]`` nm; temperature: K; energy: positions ``[m, atoms, 3]`` → U ``[m]`` kJ/mol (e.g.
    ``EnergyBridge.energies``); weights: ``[n]`` importance weights (None: equal). Statistical error of a ratio:
    about ``sqrt(2 / effective_frames)`` for independent frames.
    """
    x = np.asarray(positions, dtype=np.float64)
    if x.ndim != 3 or not np.all(np.isfinite(x)):
        raise InputError("positions must be a finite array [frames, atoms, 3] in nm")
    if not temperature > 0:
        raise InputError(f"temperature must be > 0 K, got {temperature}")
    w = np.full(len(x), 1.0 / len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(x),) or not np.all(np.isfinite(w) & (w >= 0)) or w.sum() <= 0:
        raise InputError(f"weights must be {len(x)} finite non-negative numbers with a positive sum")
    w = w / w.sum()
    bonds = hydrogen_bonds(system)
    if not bonds:
        raise InputError("the system has no harmonic X-H bonds (constrained hydrogens cannot be checked this way)")
    kt = kT(temperature)
    atoms = list(system.topology.atoms())  # type: ignore[attr-defined]
    results = []
    for hydrogen, partner, r0, k in bonds:
        grid = r0 + np.sqrt(kt / k) * np.linspace(-width_sigmas, width_sigmas, grid_points)
        vector = x[:, hydrogen] - x[:, partner]
        r = np.linalg.norm(vector, axis=1)
        moved = np.repeat(x[:, None], grid_points, axis=1)
        moved[:, :, hydrogen] = x[:, None, partner] + grid[None, :, None] * (vector / r[:, None])[:, None, :]
        u = np.asarray(energy(moved.reshape(-1, *x.shape[1:])), dtype=np.float64).reshape(len(x), grid_points)
        log_p = 2.0 * np.log(grid)[None] - reduced_potential(u, temperature)
        p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        mean = p @ grid
        variance = (p * (grid[None] - mean[:, None]) ** 2).sum(axis=1)
        name = f"{atoms[hydrogen].name}-{atoms[partner].name}{atoms[partner].residue.index}"
        results.append(BondStretchRatio(
            hydrogen, partner, name, float(w @ ((r - mean) ** 2 / variance)),
            float(w @ ((r - mean) / np.sqrt(variance))), float(1.0 / np.sum(w**2))))
    return results
