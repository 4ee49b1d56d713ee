"""Tests of trade_md.systems: built-in system, PDB/Amber/OpenMM routes, serialization, and every bad input."""

from __future__ import annotations

import argparse
import doctest
import json
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest

from trade_md import systems
from trade_md.errors import InputError
from trade_md.cli.common import add_system_arguments, system_from_args
from trade_md.systems import (
    MolecularSystem,
    builtin_config,
    from_amber,
    from_openmm,
    load_system,
)

ALA2_PDB = systems.SYSTEMS_DIR / "alanine_dipeptide" / "ala2.pdb"


def _openmmtools_gbsa() -> Path:
    import openmmtools

    return Path(openmmtools.__file__).parent / "data" / "alanine-dipeptide-gbsa"


def _energy_forces(system: openmm.System, positions: np.ndarray) -> tuple[float, np.ndarray]:
    """Potential energy (kJ/mol) and forces of one structure from a fresh Reference context."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions * unit.nanometer)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


@pytest.fixture(scope="module")
def ala2() -> MolecularSystem:
    return load_system("alanine-dipeptide")


def _write_pdb(tmp_path: Path, lines: list[str], name: str = "mol.pdb") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _ala2_lines() -> list[str]:
    return [line for line in ALA2_PDB.read_text().splitlines() if line.startswith(("ATOM", "HETATM"))]


# ----------------------------------------------------------------------------------------------------- built-in


def test_doctests() -> None:
    assert doctest.testmod(systems).failed == 0


def test_builtin_alanine_dipeptide_matches_an_independent_openmm_build(ala2: MolecularSystem) -> None:
    assert systems.builtin_systems() == ["alanine-dipeptide", "alanine-tetrapeptide"]
    assert ala2.n_atoms == 22 and ala2.positions.shape == (22, 3) and ala2.positions.dtype == np.float64
    assert [r.name for r in ala2.topology.residues()] == ["ACE", "ALA", "NME"]
    assert ala2.forcefield == ("amber99sbildn.xml", "amber99_obc.xml") and ala2.constraints is None
    assert ala2.system.getNumConstraints() == 0
    assert builtin_config("alanine-dipeptide")["reference_temperature"] == 600.0
    forces = {type(f).__name__: f for f in ala2.system.getForces()}
    assert "GBSAOBCForce" in forces and forces["NonbondedForce"].getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
    # Independent build straight from the shipped PDB with OpenMM.
    pdb = app.PDBFile(str(ALA2_PDB))
    reference = app.ForceField("amber99sbildn.xml", "amber99_obc.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    energy, forces_ours = _energy_forces(ala2.system, ala2.positions)
    energy_ref, forces_ref = _energy_forces(reference, ala2.positions)
    assert energy == pytest.approx(energy_ref, rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(forces_ours, forces_ref, rtol=1e-10, atol=1e-9)
    # The shipped structure is minimised: far below the unminimised openmmtools structure (-95.7 kJ/mol).
    assert energy < -130.0


def test_hbond_constraints_use_force_field_lengths(ala2: MolecularSystem) -> None:
    constrained = load_system("alanine-dipeptide", constraints="HBonds")
    assert constrained.constraints == "HBonds"
    bonds = constrained.constrained_bonds()
    assert len(bonds) == 12  # every C-H and N-H bond of ACE-ALA-NME
    elements = [a.element.symbol for a in constrained.topology.atoms()]
    # OpenMM drops constrained bonds from the bond force; their lengths come from the unconstrained system.
    bond_force = next(f for f in ala2.system.getForces() if isinstance(f, openmm.HarmonicBondForce))
    equilibrium = {}
    for k in range(bond_force.getNumBonds()):
        i, j, length, _ = bond_force.getBondParameters(k)
        equilibrium[frozenset((i, j))] = length.value_in_unit(unit.nanometer)
    for i, j, length in bonds:
        assert "H" in (elements[i], elements[j])
        assert length == pytest.approx(equilibrium[frozenset((i, j))], rel=1e-12)
    assert load_system("alanine-dipeptide", constraints="none").constraints is None


def test_fingerprint_is_json_stable_and_distinguishes_constraints(ala2: MolecularSystem) -> None:
    fingerprint = ala2.fingerprint()
    assert json.loads(json.dumps(fingerprint)) == fingerprint
    assert fingerprint["n_atoms"] == 22 and fingerprint["elements"].count("H") == 12
    assert fingerprint["residue_names"] == ["ACE", "ALA", "NME"] and "GBSAOBCForce" in fingerprint["forces"]
    renamed = MolecularSystem(ala2.system, ala2.topology, ala2.positions, "another name", ala2.forcefield)
    assert renamed.fingerprint() == fingerprint  # identity is physical, not the display name
    assert load_system("alanine-dipeptide", constraints="HBonds").fingerprint() != fingerprint


# ----------------------------------------------------------------------------------------------------- other routes


def test_serialize_round_trip_gives_identical_energies(ala2: MolecularSystem, rng: np.random.Generator) -> None:
    data = json.loads(json.dumps(ala2.serialize()))
    rebuilt = MolecularSystem.deserialize(data)
    assert rebuilt.fingerprint() == ala2.fingerprint()
    np.testing.assert_array_equal(rebuilt.positions, ala2.positions)
    assert [(b.atom1.index, b.atom2.index) for b in rebuilt.topology.bonds()] == \
        [(b.atom1.index, b.atom2.index) for b in ala2.topology.bonds()]
    for _ in range(3):
        x = ala2.positions + rng.normal(scale=0.01, size=ala2.positions.shape)
        energy, forces = _energy_forces(ala2.system, x)
        energy_rebuilt, forces_rebuilt = _energy_forces(rebuilt.system, x)
        assert energy_rebuilt == energy
        np.testing.assert_array_equal(forces_rebuilt, forces)
    assert "ATOM" in data["pdb"] and "ALA" in data["pdb"]


def test_amber_prmtop_route(ala2: MolecularSystem) -> None:
    folder = _openmmtools_gbsa()
    amber = from_amber(folder / "alanine-dipeptide.prmtop", folder / "alanine-dipeptide.crd",
                       implicit_solvent="OBC2")
    assert amber.n_atoms == 22 and amber.name == "alanine-dipeptide"
    assert amber.fingerprint()["elements"] == ala2.fingerprint()["elements"]
    assert any(isinstance(f, openmm.GBSAOBCForce) for f in amber.system.getForces())
    parm = app.AmberPrmtopFile(str(folder / "alanine-dipeptide.prmtop"))
    direct = parm.createSystem(nonbondedMethod=app.NoCutoff, constraints=None, implicitSolvent=app.OBC2)
    assert _energy_forces(amber.system, amber.positions)[0] == pytest.approx(
        _energy_forces(direct, amber.positions)[0], rel=1e-12)
    rebuilt = MolecularSystem.deserialize(json.loads(json.dumps(amber.serialize())))
    assert rebuilt.fingerprint() == amber.fingerprint()
    vacuum = from_amber(folder / "alanine-dipeptide.prmtop", folder / "alanine-dipeptide.crd", constraints="HBonds")
    assert vacuum.system.getNumConstraints() == 12
    assert not any(isinstance(f, openmm.GBSAOBCForce) for f in vacuum.system.getForces())


def test_from_openmm_with_an_openmmtools_testsystem() -> None:
    from openmmtools import testsystems

    test = testsystems.AlanineDipeptideImplicit()
    wrapped = from_openmm(test.system, test.topology, test.positions, name="ala2-implicit")
    assert wrapped.name == "ala2-implicit" and wrapped.forcefield == () and wrapped.constraints == "HBonds"
    assert wrapped.system is not test.system  # copied
    expected = _energy_forces(test.system, wrapped.positions)[0]
    assert _energy_forces(wrapped.system, wrapped.positions)[0] == pytest.approx(expected, rel=1e-12)
    rebuilt = MolecularSystem.deserialize(json.loads(json.dumps(wrapped.serialize())))
    assert _energy_forces(rebuilt.system, rebuilt.positions)[0] == _energy_forces(wrapped.system, wrapped.positions)[0]
    vacuum = from_openmm(*_parts(testsystems.AlanineDipeptideVacuum(constraints=None)))
    implicit = from_openmm(*_parts(testsystems.AlanineDipeptideImplicit(constraints=None)))
    assert vacuum.constraints is None and implicit.constraints is None
    assert vacuum.fingerprint() != implicit.fingerprint()  # same atoms, different forces


def _parts(test: object) -> tuple:
    return test.system, test.topology, test.positions


def test_add_hydrogens_restores_a_stripped_structure(tmp_path: Path, ala2: MolecularSystem) -> None:
    heavy = [line for line in _ala2_lines() if line[76:78].strip() != "H"]
    path = _write_pdb(tmp_path, heavy)
    protonated = load_system(path, ["amber99sbildn.xml", "amber99_obc.xml"], add_hydrogens=True)
    assert protonated.n_atoms == 22 and protonated.name == "mol"
    assert sorted(protonated.fingerprint()["elements"]) == sorted(ala2.fingerprint()["elements"])
    assert np.isfinite(_energy_forces(protonated.system, protonated.positions)[0])


# ----------------------------------------------------------------------------------------------------- bad input

FF = ["amber99sbildn.xml", "amber99_obc.xml"]


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="neither an existing file nor a built-in system"):
        load_system(tmp_path / "absent.pdb", FF)
    with pytest.raises(InputError, match="unknown built-in system"):
        builtin_config("no-such-molecule")
    with pytest.raises(InputError, match="prmtop file .* does not exist"):
        from_amber(tmp_path / "x.prmtop", tmp_path / "x.inpcrd")


def test_unparsable_pdb_names_the_line(tmp_path: Path) -> None:
    lines = _ala2_lines()
    lines[4] = lines[4][:30] + "   abc.de" + lines[4][39:]
    path = _write_pdb(tmp_path, lines)
    with pytest.raises(InputError, match="line 5") as error:
        load_system(path, FF)
    assert "abc.de" in str(error.value)
    with pytest.raises(InputError, match="no ATOM/HETATM records"):
        load_system(_write_pdb(tmp_path, ["HEADER    nothing here"], "empty.pdb"), FF)


def test_missing_hydrogens_suggest_add_hydrogens(tmp_path: Path) -> None:
    heavy = [line for line in _ala2_lines() if line[76:78].strip() != "H"]
    with pytest.raises(InputError, match="lacks hydrogens") as error:
        load_system(_write_pdb(tmp_path, heavy), FF)
    assert "add_hydrogens=True" in str(error.value) and "--add-hydrogens" in str(error.value)
    partly = [line for line in _ala2_lines() if not line[12:16].strip() == "HA"]  # one hydrogen missing
    with pytest.raises(InputError, match="lacks hydrogens"):
        load_system(_write_pdb(tmp_path, partly, "partly.pdb"), FF)


def test_unknown_residue_is_named(tmp_path: Path) -> None:
    lines = [line.replace(" ALA A", " XYZ A") for line in _ala2_lines()]
    with pytest.raises(InputError, match=r"match no template of .*XYZ 2") as error:
        load_system(_write_pdb(tmp_path, lines), FF)
    assert "--forcefield" in str(error.value)


def test_water_and_ions_rejected_in_implicit_solvent(tmp_path: Path) -> None:
    water = ["HETATM   23  O   HOH B   4      10.000  10.000  10.000  1.00  0.00           O",
             "HETATM   24  H1  HOH B   4      10.957  10.000  10.000  1.00  0.00           H",
             "HETATM   25  H2  HOH B   4       9.760  10.927  10.000  1.00  0.00           H"]
    with pytest.raises(InputError, match="1 water and 0 ion residues .*HOH 4") as error:
        load_system(_write_pdb(tmp_path, _ala2_lines() + water), FF)
    assert "remove waters and ions" in str(error.value)
    ion = ["HETATM   23 NA    NA B   5      12.000  12.000  12.000  1.00  0.00          NA"]
    with pytest.raises(InputError, match="0 water and 1 ion residues"):
        load_system(_write_pdb(tmp_path, _ala2_lines() + ion, "ion.pdb"), FF)


def test_non_finite_coordinates(tmp_path: Path) -> None:
    lines = _ala2_lines()
    lines[2] = lines[2][:38] + "     nan" + lines[2][46:]
    with pytest.raises(InputError, match="line 3: non-finite coordinates"):
        load_system(_write_pdb(tmp_path, lines), FF)
    from openmmtools import testsystems

    test = testsystems.AlanineDipeptideVacuum()
    positions = test.positions.value_in_unit(unit.nanometer).copy()
    positions[5, 1] = np.inf
    with pytest.raises(InputError, match="non-finite coordinates for 1 atoms .*atom 5"):
        from_openmm(test.system, test.topology, positions)


def test_several_models_rejected(tmp_path: Path) -> None:
    lines = ["MODEL        1", *_ala2_lines(), "ENDMDL", "MODEL        2", *_ala2_lines(), "ENDMDL"]
    with pytest.raises(InputError, match="2 models"):
        load_system(_write_pdb(tmp_path, lines), FF)


def test_other_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no force field given"):
        load_system(ALA2_PDB)
    with pytest.raises(InputError, match="cannot load force-field file 'nonexistent_ff.xml'"):
        load_system(ALA2_PDB, ["nonexistent_ff.xml"])
    with pytest.raises(InputError, match="constraints 'AllBonds' not supported"):
        load_system("alanine-dipeptide", constraints="AllBonds")
    folder = _openmmtools_gbsa()
    with pytest.raises(InputError, match="looks like an Amber prmtop"):
        load_system(folder / "alanine-dipeptide.prmtop", FF)
    with pytest.raises(InputError, match="cannot read Amber prmtop"):
        from_amber(ALA2_PDB, folder / "alanine-dipeptide.crd")
    short = tmp_path / "short.inpcrd"
    short.write_text("short\n     2\n   1.0000000   1.0000000   1.0000000   2.0000000   2.0000000   2.0000000\n")
    with pytest.raises(InputError, match="has 2 atoms but"):
        from_amber(folder / "alanine-dipeptide.prmtop", short)
    with pytest.raises(InputError, match="not a serialized trade-md system"):
        MolecularSystem.deserialize({"format": "something else"})
    damaged = load_system("alanine-dipeptide").serialize()
    damaged["system_xml"] = "<System broken"
    with pytest.raises(InputError, match="serialized system is damaged"):
        MolecularSystem.deserialize(damaged)


def test_from_openmm_rejects_inconsistent_or_periodic_systems() -> None:
    from openmmtools import testsystems

    test = testsystems.AlanineDipeptideVacuum()
    with pytest.raises(InputError, match="positions shape"):
        from_openmm(test.system, test.topology, np.zeros((21, 3)))
    with_barostat = openmm.System()
    with_barostat.__setstate__(test.system.__getstate__())
    with_barostat.addForce(openmm.MonteCarloBarostat(1.0, 300.0))
    with pytest.raises(InputError, match="MonteCarloBarostat"):
        from_openmm(with_barostat, test.topology, test.positions)
    periodic = openmm.System()
    periodic.addParticle(1.0)
    nonbonded = openmm.NonbondedForce()
    nonbonded.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    nonbonded.addParticle(0.0, 0.3, 0.1)
    periodic.addForce(nonbonded)
    topology = app.Topology()
    topology.addAtom("AR", app.Element.getBySymbol("Ar"), topology.addResidue("AR", topology.addChain()))
    with pytest.raises(InputError, match="periodic boundary conditions"):
        from_openmm(periodic, topology, np.zeros((1, 3)))


# ----------------------------------------------------------------------------------------------------- CLI helpers


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_system_arguments(parser)
    return parser.parse_args(argv)


def test_system_from_args_routes() -> None:
    assert system_from_args(_parse(["--system", "alanine-dipeptide"])).n_atoms == 22
    assert system_from_args(_parse(["--system", "alanine-dipeptide", "--constraints", "HBonds"])).constraints == "HBonds"
    pdb = system_from_args(_parse(["--pdb", str(ALA2_PDB), "--forcefield", "amber99sbildn.xml",
                                   "--forcefield", "amber99_obc.xml"]))
    assert pdb.forcefield == ("amber99sbildn.xml", "amber99_obc.xml") and pdb.name == "ala2"
    folder = _openmmtools_gbsa()
    amber = system_from_args(_parse(["--prmtop", str(folder / "alanine-dipeptide.prmtop"),
                                     "--inpcrd", str(folder / "alanine-dipeptide.crd"), "--implicit-solvent", "OBC2"]))
    assert amber.forcefield == ("alanine-dipeptide.prmtop", "implicitSolvent=OBC2")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no system given"),
        (["--system", "alanine-dipeptide", "--pdb", "x.pdb"], "--system and --pdb given together"),
        (["--prmtop", "x.prmtop"], "add --inpcrd"),
        (["--system", "alanine-dipeptide", "--inpcrd", "x.crd"], "--inpcrd needs --prmtop"),
        (["--prmtop", "x.prmtop", "--inpcrd", "x.crd", "--forcefield", "a.xml"], "do not apply to --prmtop"),
        (["--pdb", "x.pdb", "--implicit-solvent", "OBC2"], "applies to --prmtop only"),
    ],
)
def test_system_from_args_conflicts(argv: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        system_from_args(_parse(argv))
