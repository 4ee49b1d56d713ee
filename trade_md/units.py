"""Units: the only place where `openmm.unit` quantities are stripped.

Conventions inside trade-md: lengths in nm, energies in kJ/mol, temperatures in K, reduced energies
u = U / (k_B T) (dimensionless), inverse temperature β = 1 / (k_B T) in mol/kJ.

>>> round(float(beta(300.0)), 6)
0.400908
>>> import openmm.unit as unit
>>> float(to_kelvin(300.0 * unit.kelvin))
300.0
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import openmm.unit as unit

from trade_md.errors import InputError

__all__ = ["KB", "beta", "kT", "to_kelvin", "to_nm", "to_kj_per_mol", "temperature_array"]

KB: float = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
"""Boltzmann constant times Avogadro's number, k_B = 0.00831446... kJ/(mol K)."""


def to_kelvin(temperature: Any) -> float:
    """A temperature in K from a float (K) or an `openmm.unit` quantity; rejects T <= 0 and non-finite T."""
    if unit.is_quantity(temperature):
        if not temperature.unit.is_compatible(unit.kelvin):
            raise InputError(f"temperature {temperature} has no temperature unit; pass kelvin, e.g. 300*unit.kelvin")
        temperature = temperature.value_in_unit(unit.kelvin)
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise InputError(f"temperature {temperature!r} is not a number; pass kelvin as a float, e.g. 300.0") from None
    if not math.isfinite(value) or value <= 0.0:
        raise InputError(f"temperature must be a finite number of kelvin > 0, got {value}")
    return value


def temperature_array(temperatures: Any) -> np.ndarray:
    """Temperatures in K as a float64 array ``[k]`` from floats, a sequence of quantities or a quantity array."""
    if unit.is_quantity(temperatures):
        temperatures = temperatures.value_in_unit(unit.kelvin)
    values = np.atleast_1d(np.asarray([to_kelvin(t) for t in np.atleast_1d(np.asarray(temperatures, dtype=object))]))
    return values.astype(np.float64)


def beta(temperature: Any) -> float:
    """Inverse temperature β = 1/(k_B T) in mol/kJ."""
    return 1.0 / (KB * to_kelvin(temperature))


def kT(temperature: Any) -> float:
    """Thermal energy k_B T in kJ/mol."""
    return KB * to_kelvin(temperature)


def to_nm(positions: Any) -> np.ndarray:
    """Positions in nm as a float64 array from an array (already nm) or an `openmm.unit` quantity."""
    if unit.is_quantity(positions):
        positions = positions.value_in_unit(unit.nanometer)
    return np.asarray(positions, dtype=np.float64)


def to_kj_per_mol(energy: Any) -> float:
    """An energy in kJ/mol from a float (kJ/mol) or an `openmm.unit` quantity (molar energy)."""
    if unit.is_quantity(energy):
        return float(energy.value_in_unit(unit.kilojoule_per_mole))
    return float(energy)
