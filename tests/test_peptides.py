"""Capped peptides built from a sequence: the right molecule, L amino acids, a low-energy structure, usable as a
system; bad sequences give one-line errors."""

from __future__ import annotations

import numpy as np
import openmm
import openmm.app as app
import pytest

from trade_md import peptides
from trade_md.cli import main
from trade_md.errors import InputError
from trade_md.systems import load_system


def _energy(topology: app.Topology, positions: np.ndarray) -> float:
    system = app.ForceField(*peptides.DEFAULT_FORCEFIELD).createSystem(topology, nonbondedMethod=app.NoCutoff)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)


def _is_l(topology: app.Topology, positions: np.ndarray) -> list[bool]:
    """Per residue with a Cβ: True when Cα is L (Cβ on the face of N–Cα–C that L amino acids use)."""
    flags = []
    for residue in topology.residues():
        index = {atom.name: atom.index for atom in residue.atoms()}
        if "CB" in index:
            n, ca, c, cb = (positions[index[name]] for name in ("N", "CA", "C", "CB"))
            flags.append(bool(np.dot(n - ca, np.cross(c - ca, cb - ca)) > 0))
    return flags


def test_alanine_dipeptide_matches_the_shipped_molecule() -> None:
    topology, positions = peptides.build_capped_peptide("ALA")
    shipped = load_system("alanine-dipeptide")
    atoms = [(a.residue.name, a.name, a.element.symbol) for a in topology.atoms()]
    shipped_atoms = [(a.residue.name, a.name, a.element.symbol) for a in shipped.topology.atoms()]
    assert sorted(atoms) == sorted(shipped_atoms)
    assert _is_l(topology, positions) == _is_l(shipped.topology, shipped.positions) == [True]
    # minimised: as low as the shipped structure's energy within a few kJ/mol of local minima
    assert _energy(topology, positions) < _energy(shipped.topology, shipped.positions) + 5.0


def test_every_amino_acid_is_built_as_l_and_relaxed() -> None:
    sequence = [name for name in peptides.AMINO_ACIDS if name != "GLY"]
    topology, positions = peptides.build_capped_peptide(sequence[:10])
    assert _is_l(topology, positions) == [True] * 10
    topology, positions = peptides.build_capped_peptide(sequence[10:] + ["GLY"])
    assert _is_l(topology, positions) == [True] * 9
    assert np.isfinite(_energy(topology, positions))


def test_the_side_chain_of_a_d_residue_is_mirrored_to_l() -> None:
    topology, positions = peptides.build_capped_peptide("ALA")
    index = {a.name: a.index for a in topology.atoms() if a.residue.name == "ALA"}
    n, ca, c = (positions[index[k]] for k in ("N", "CA", "C"))
    normal = np.cross(n - ca, c - ca)
    normal /= np.linalg.norm(normal)
    mirrored = positions.copy()
    offset = mirrored[index["CB"]] - ca
    mirrored[index["CB"]] -= 2.0 * np.dot(offset, normal) * normal
    assert _is_l(topology, mirrored) == [False]
    assert _is_l(topology, peptides._make_l_amino_acids(topology, mirrored)) == [True]


def test_tetrapeptide_pdb_loads_as_a_system(tmp_path) -> None:
    path = peptides.write_capped_peptide("AAA", tmp_path / "ala4.pdb")
    system = load_system(path, list(peptides.DEFAULT_FORCEFIELD))
    assert system.n_atoms == 42
    assert [r.name for r in system.topology.residues()] == ["ACE", "ALA", "ALA", "ALA", "NME"]


@pytest.mark.parametrize("sequence", ["", "ALA-XXX", "ACE-NME", "B"])
def test_bad_sequences_are_refused(sequence: str) -> None:
    with pytest.raises(InputError, match="e.g. ALA-ALA-ALA"):
        peptides.parse_sequence(sequence)


def test_parse_sequence_forms() -> None:
    assert peptides.parse_sequence("AFP") == ["ALA", "PHE", "PRO"]
    assert peptides.parse_sequence("ace-phe-nme") == ["PHE"]
    assert peptides.parse_sequence(["ALA", "GLY"]) == ["ALA", "GLY"]


def test_cli_writes_the_pdb_and_refuses_bad_input(tmp_path, capsys) -> None:
    assert main(["build-peptide", "PHE", "--out", str(tmp_path / "phe.pdb")]) == 0
    assert "ACE-PHE-NME" in capsys.readouterr().out
    assert load_system(tmp_path / "phe.pdb", list(peptides.DEFAULT_FORCEFIELD)).n_atoms == 32
    assert main(["build-peptide", "ALA-XXX", "--out", str(tmp_path / "x.pdb")]) == 2
    assert "unknown residue" in capsys.readouterr().err
    assert not (tmp_path / "x.pdb").exists()
