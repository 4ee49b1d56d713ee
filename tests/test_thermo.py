"""Tests of trade_md.thermo: k_B, β, the reduced potential on every kind of input, the thermodynamic state, the flow's
temperature input, and the one temperature parser with each of its errors."""

from __future__ import annotations

import math

import numpy as np
import openmm.unit as unit
import pytest
import scipy.constants
import torch

from trade_md.errors import InputError
from trade_md.thermo import (
    KB,
    ThermodynamicState,
    beta,
    flow_input,
    geometric_ladder,
    kinetic_temperature,
    kT,
    parse_temperatures,
    reduced_potential,
    temperature_array,
    to_kelvin,
    to_kj_per_mol,
    to_nm,
)


def test_boltzmann_constant_is_the_molar_gas_constant_in_kj() -> None:
    assert KB == pytest.approx(scipy.constants.R / 1000.0, rel=1e-9)
    assert kT(300.0) == pytest.approx(2.494339, rel=1e-6)
    assert beta(300.0) * kT(300.0) == pytest.approx(1.0, rel=1e-15)
    assert kT(300.0 * unit.kelvin) == kT(300.0)


def test_unit_conversions() -> None:
    assert to_kelvin(300 * unit.kelvin) == 300.0 and to_kelvin(np.float32(450.0)) == 450.0
    np.testing.assert_array_equal(to_nm(np.ones((2, 3)) * unit.angstrom), np.full((2, 3), 0.1))
    assert to_nm([[1.0, 2.0, 3.0]]).dtype == np.float64
    assert to_kj_per_mol(1.0 * unit.kilocalorie_per_mole) == pytest.approx(4.184, rel=1e-12)
    assert to_kj_per_mol(2.5) == 2.5
    np.testing.assert_array_equal(temperature_array([300.0, 600 * unit.kelvin]), [300.0, 600.0])
    np.testing.assert_array_equal(temperature_array(np.array([300.0, 450.0]) * unit.kelvin), [300.0, 450.0])
    assert temperature_array(300.0).shape == (1,)
    # equipartition: 63 degrees of freedom at 600 K hold 63/2 k_B T of kinetic energy
    assert kinetic_temperature(31.5 * kT(600.0), 63) == pytest.approx(600.0, rel=1e-14)


@pytest.mark.parametrize(
    ("temperature", "message"),
    [
        (-5.0, "kelvin > 0, got -5.0; e.g. 300.0"),
        (0.0, "kelvin > 0"),
        (float("nan"), "finite number of kelvin"),
        (float("inf"), "finite number of kelvin"),
        ("hot", "not a number; pass kelvin as a float, e.g. 300.0"),
        (300 * unit.nanometer, "no temperature unit; pass kelvin, e.g. 300\\*unit.kelvin"),
    ],
)
def test_bad_temperatures_are_input_errors_with_an_example(temperature: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        to_kelvin(temperature)


def test_reduced_potential_of_floats_arrays_and_tensors() -> None:
    energies = np.array([[-10.0, 0.0], [5.0, 250.0]])  # kJ/mol, any shape
    expected = energies / (scipy.constants.R / 1000.0 * 300.0)
    assert reduced_potential(-10.0, 300.0) == pytest.approx(expected[0, 0], rel=1e-9)
    assert isinstance(reduced_potential(-10.0, 300.0), float)
    np.testing.assert_allclose(reduced_potential(energies, 300.0), expected, rtol=1e-9)
    np.testing.assert_array_equal(reduced_potential(energies, 300 * unit.kelvin), reduced_potential(energies, 300.0))
    tensor = reduced_potential(torch.tensor(energies), 300.0)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float64
    np.testing.assert_allclose(tensor.numpy(), expected, rtol=1e-9)
    # a temperature per conformation, broadcast against the energies
    temperatures = np.array([300.0, 600.0])
    np.testing.assert_allclose(reduced_potential(energies, temperatures[:, None]),
                               energies / (KB * temperatures[:, None]), rtol=1e-15)
    per_sample = reduced_potential(torch.tensor(energies[:, 1]), torch.tensor(temperatures))
    torch.testing.assert_close(per_sample, torch.tensor([0.0, 250.0 / (KB * 600.0)], dtype=torch.float64))
    with pytest.raises(InputError, match="kelvin > 0"):
        reduced_potential(1.0, -300.0)


def test_thermodynamic_state() -> None:
    state = ThermodynamicState(600 * unit.kelvin)
    assert state.temperature == 600.0 and isinstance(state.temperature, float)
    assert state.kT == kT(600.0) and state.beta == pytest.approx(beta(600.0), rel=1e-15)
    assert state.reduced(state.kT) == pytest.approx(1.0, rel=1e-15)
    np.testing.assert_allclose(state.reduced(np.array([0.0, 2.0 * state.kT])), [0.0, 2.0], rtol=1e-15)
    assert state.flow_input(300.0) == pytest.approx(math.log(2.0), rel=1e-15)
    assert ThermodynamicState(600.0) == state  # frozen, compared by temperature
    with pytest.raises(InputError, match="kelvin > 0"):
        ThermodynamicState(0.0)


def test_flow_input_is_log_temperature_ratio() -> None:
    assert flow_input(600.0, 600.0) == 0.0
    assert flow_input(1200.0, 600.0) == pytest.approx(math.log(2.0), rel=1e-15)
    assert flow_input(300.0 * unit.kelvin, 600.0) == pytest.approx(-math.log(2.0), rel=1e-15)
    with pytest.raises(InputError, match="kelvin > 0"):
        flow_input(300.0, 0.0)


def test_parse_temperature_lists_and_ladders() -> None:
    np.testing.assert_array_equal(parse_temperatures("300,450,600"), [300.0, 450.0, 600.0])
    np.testing.assert_array_equal(parse_temperatures(" 300 , 450 ,"), [300.0, 450.0])
    np.testing.assert_array_equal(parse_temperatures("600"), [600.0])
    np.testing.assert_array_equal(parse_temperatures([300, 600 * unit.kelvin]), [300.0, 600.0])
    assert parse_temperatures("450,300").tolist() == [450.0, 300.0]  # order is the caller's, unless a ladder
    ladder = parse_temperatures("300:1200:3", ladder=True)
    np.testing.assert_allclose(ladder, [300.0, 600.0, 1200.0], rtol=1e-14)
    nine = parse_temperatures(" 300 : 1000 : 9 ")
    assert len(nine) == 9 and nine[0] == pytest.approx(300.0) and nine[-1] == pytest.approx(1000.0)
    np.testing.assert_allclose(nine[1:] / nine[:-1], (1000.0 / 300.0) ** (1 / 8), rtol=1e-12)  # constant ratio
    np.testing.assert_array_equal(geometric_ladder(300.0, 1200.0, 3), parse_temperatures("300:1200:3"))


@pytest.mark.parametrize(
    ("spec", "ladder", "message"),
    [
        ("", False, "lists no temperature; give kelvin, e.g. 300,450,600"),
        (" , ", False, "lists no temperature"),
        ("300,hot", False, "'hot' in --temperatures '300,hot' is not a number.*e.g. 300,450,600"),
        ("300,-5", False, "finite and > 0 K, got -5.0.*e.g. 300,450,600"),
        ("300,nan", False, "finite and > 0 K, got nan"),
        ("0,300", False, "finite and > 0 K, got 0.0"),
        ("300:1000", False, "must be Tmin:Tmax:K, e.g. 300:1000:9"),
        ("300:1000:9:2", False, "must be Tmin:Tmax:K"),
        ("300:1000:x", False, "must be an integer, e.g. 300:1000:9"),
        ("300:1000:2.5", False, "must be an integer"),
        ("300:warm:4", False, "'warm' in --temperatures .* is not a number.*e.g. 300:1000:9"),
        ("300:1000:1", False, "at least 2 temperatures, got 1; e.g. 300:1000:9"),
        ("1000:300:4", False, "Tmax 300.0 K must exceed Tmin 1000.0 K.*e.g. 300:1000:9"),
        ("-300:1000:4", False, "finite and > 0 K.*e.g. 300:1000:9"),
        ("600", True, "replica exchange needs at least 2 temperatures.*e.g. 300:1000:9"),
        ("300,250,400", True, "not strictly increasing.*e.g. 300,450,600"),
        ("300,300", True, "not strictly increasing"),
    ],
)
def test_every_parse_error_is_an_input_error_with_an_example(spec: str, ladder: bool, message: str) -> None:
    with pytest.raises(InputError, match=message) as error:
        parse_temperatures(spec, ladder=ladder)
    assert "e.g." in str(error.value)


def test_parse_errors_name_the_option() -> None:
    with pytest.raises(InputError, match="--ladder '300:1000'"):
        parse_temperatures("300:1000", what="--ladder")
    with pytest.raises(InputError, match="in --eval-temperatures are not strictly increasing"):
        parse_temperatures("400,300", ladder=True, what="--eval-temperatures")
    with pytest.raises(InputError, match="kelvin > 0.*e.g. 300.0"):
        parse_temperatures([300.0, -1.0])
