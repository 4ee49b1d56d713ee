"""Temperature and units: the one owner of T, β, k_BT, the reduced potential and the flow's temperature input.

Conventions inside trade-md: lengths in nm, energies in kJ/mol, temperatures in K, reduced energies
u = βU = U / (k_B T) (dimensionless), inverse temperature β = 1 / (k_B T) in mol/kJ. This module is the only
place where `openmm.unit` quantities are stripped, where k_B appears, and where temperature text is parsed
(:func:`parse_temperatures`: ``"300,450,600"`` or a geometric ladder ``"Tmin:Tmax:K"``). The flow sees the
temperature as ``log(T / T0)`` (:func:`flow_input`), zero at the reference temperature T0.

>>> round(float(beta(300.0)), 6)
0.400908
>>> import openmm.unit as unit
>>> float(to_kelvin(300.0 * unit.kelvin))
300.0
>>> round(ThermodynamicState(600.0).reduced(4.988676), 5)  # U = k_BT at 600 K
1.0
>>> parse_temperatures("300:1200:3").round(1).tolist()
[300.0, 600.0, 1200.0]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import openmm.unit as unit

from trade_md.errors import InputError

__all__ = [
    "KB",
    "ThermodynamicState",
    "beta",
    "flow_input",
    "geometric_ladder",
    "kT",
    "kinetic_temperature",
    "parse_temperatures",
    "reduced_potential",
    "temperature_array",
    "to_kelvin",
    "to_kj_per_mol",
    "to_nm",
]

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
        raise InputError(f"temperature must be a finite number of kelvin > 0, got {value}; e.g. 300.0")
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


def kinetic_temperature(kinetic_energy: float, degrees_of_freedom: int) -> float:
    """Equipartition temperature T = 2K / (n_dof k_B) in K of a (mean) kinetic energy K in kJ/mol."""
    return float(2.0 * kinetic_energy / (degrees_of_freedom * KB))


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


def reduced_potential(energies: Any, temperature: Any) -> Any:
    """u = U / (k_B T): energies in kJ/mol (array, tensor or float, any shape), temperature in K (scalar, or an
    array/tensor broadcastable against ``energies``). Returns the same kind of object as ``energies``."""
    if unit.is_quantity(temperature) or isinstance(temperature, (int, float)):
        return energies / (KB * to_kelvin(temperature))
    return energies / (KB * temperature)


def flow_input(temperature: Any, reference_temperature: float) -> float:
    """The flow's temperature input ``log(T / T0)`` (dimensionless; 0 at T0) for one temperature in K."""
    return math.log(to_kelvin(temperature) / to_kelvin(reference_temperature))


@dataclass(frozen=True)
class ThermodynamicState:
    """One temperature and everything that follows from it (in the spirit of openmmtools' ThermodynamicState).

    >>> state = ThermodynamicState(300.0)
    >>> round(state.kT, 5), round(state.beta, 5)
    (2.49434, 0.40091)
    """

    temperature: float
    """T in K (an ``openmm.unit`` quantity is converted on construction)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperature", to_kelvin(self.temperature))

    @property
    def kT(self) -> float:
        """k_B T in kJ/mol."""
        return KB * self.temperature

    @property
    def beta(self) -> float:
        """β = 1/(k_B T) in mol/kJ."""
        return 1.0 / self.kT

    def reduced(self, energies: Any) -> Any:
        """u = βU of energies in kJ/mol (float, array or tensor; same kind returned)."""
        return energies * self.beta

    def flow_input(self, reference_temperature: float) -> float:
        """``log(T / T0)``, the flow's temperature input."""
        return flow_input(self.temperature, reference_temperature)


def geometric_ladder(t_min: float, t_max: float, n: int) -> np.ndarray:
    """``n`` temperatures [K] from ``t_min`` to ``t_max`` with a constant ratio (equal exchange rates for a
    heat capacity independent of T)."""
    spec = f"{t_min}:{t_max}:{n}"
    if not all(math.isfinite(t) and t > 0 for t in (t_min, t_max)):
        raise InputError(f"temperatures must be finite and > 0 K, got {spec!r}; e.g. 300:1000:9")
    if int(n) != n or n < 2:
        raise InputError(f"a ladder needs at least 2 temperatures, got {n}; e.g. 300:1000:9")
    if not t_max > t_min:
        raise InputError(f"Tmax {t_max} K must exceed Tmin {t_min} K; write the ladder as Tmin:Tmax:K, e.g. 300:1000:9")
    return np.geomspace(float(t_min), float(t_max), int(n))


def parse_temperatures(spec: str | Sequence[float], *, ladder: bool = False,
                       what: str = "--temperatures") -> np.ndarray:
    """Temperatures [K] from ``"T1,T2,..."``, a geometric ``"Tmin:Tmax:K"`` or a sequence of floats/quantities.

    ``ladder=True`` (replica exchange) also requires at least two temperatures in strictly increasing order.
    ``what`` names the option in error messages. Every error is an :class:`InputError` that shows an example.
    """
    if not isinstance(spec, str):
        values = temperature_array(spec).tolist()
    elif ":" in spec:
        parts = [p.strip() for p in spec.strip().split(":")]
        if len(parts) != 3:
            raise InputError(f"{what} {spec!r} must be Tmin:Tmax:K, e.g. 300:1000:9")
        t_min, t_max = (_number(p, spec, what) for p in parts[:2])
        try:
            n = int(parts[2])
        except ValueError:
            raise InputError(f"the number of temperatures in {what} {spec!r} must be an integer, "
                             "e.g. 300:1000:9") from None
        values = geometric_ladder(t_min, t_max, n).tolist()
    else:
        values = [_number(p.strip(), spec, what) for p in spec.split(",") if p.strip()]
    bad = [t for t in values if not (math.isfinite(t) and t > 0)]
    if bad:
        raise InputError(f"temperatures must be finite and > 0 K, got {bad[0]} in {what} {spec!r}; e.g. 300,450,600")
    if not values:
        raise InputError(f"{what} {spec!r} lists no temperature; give kelvin, e.g. 300,450,600 or 300:1000:9")
    if ladder:
        if len(values) < 2:
            raise InputError(
                f"replica exchange needs at least 2 temperatures, got {len(values)} in {what} {spec!r}; for one "
                "temperature use `trade-md md`, otherwise give e.g. 300:1000:9"
            )
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise InputError(f"temperatures {list(values)} in {what} are not strictly increasing; sort them and drop "
                             "duplicates, e.g. 300,450,600")
    return np.asarray(values, dtype=np.float64)


def _number(text: str, spec: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(
            f"{text!r} in {what} {spec!r} is not a number; give kelvin as a comma list (e.g. 300,450,600) or as "
            "Tmin:Tmax:K (e.g. 300:1000:9)"
        ) from None
