"""Tests of trade_md.features against mdtraj: dihedrals, backbone φ/ψ (one and several chains), peptide bonds and
cis/trans, stereocentres and their handedness (numpy and torch), φ basins."""

from __future__ import annotations

import math

import mdtraj
import numpy as np
import openmm.app as app
import pytest
import torch

from trade_md.errors import InputError
from trade_md.features import (
    backbone_phi,
    basin_delta_f,
    basin_entries,
    basin_populations,
    chiral_centres,
    cis_flags,
    dihedral_angles,
    handedness,
    peptide_bonds,
    phi_dihedrals,
    psi_dihedrals,
    ramachandran,
    ramachandran_atoms,
    wrap_angle,
)
from trade_md.systems import MolecularSystem, load_system
from trade_md.thermo import kT

# Atom names and elements of the residues of a capped peptide (amber names, as in systems/alanine_dipeptide).
RESIDUE_ATOMS = {
    "ACE": ["H1:H", "CH3:C", "H2:H", "H3:H", "C:C", "O:O"],
    "ALA": ["N:N", "H:H", "CA:C", "HA:H", "CB:C", "HB1:H", "HB2:H", "HB3:H", "C:C", "O:O"],
    "GLY": ["N:N", "H:H", "CA:C", "HA2:H", "HA3:H", "C:C", "O:O"],
    "NME": ["N:N", "H:H", "C:C", "H1:H", "H2:H", "H3:H"],
}


@pytest.fixture(scope="module")
def ala2() -> MolecularSystem:
    return load_system("alanine-dipeptide")


def _frames(ala2: MolecularSystem, rng: np.random.Generator, n: int = 20) -> np.ndarray:
    """``n`` random conformations [n, 22, 3] nm: the starting structure with 0.05 nm of noise per coordinate."""
    return ala2.positions[None] + rng.normal(scale=0.05, size=(n, ala2.n_atoms, 3))


def _peptide(*chains: tuple[str, ...]) -> app.Topology:
    """An openmm Topology of capped peptide chains, e.g. ``("ACE", "ALA", "GLY", "ALA", "NME")``."""
    topology = app.Topology()
    number = 0
    for names in chains:
        chain = topology.addChain()
        for name in names:
            number += 1
            residue = topology.addResidue(name, chain, str(number))
            for entry in RESIDUE_ATOMS[name]:
                atom, symbol = entry.split(":")
                topology.addAtom(atom, app.Element.getBySymbol(symbol), residue)
    return topology


def _rotate(points: np.ndarray, origin: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """``points [m, 3]`` rotated by ``angle`` radians about the line through ``origin`` along ``axis`` (Rodrigues)."""
    k = axis / np.linalg.norm(axis)
    v = points - origin
    rotated = v * math.cos(angle) + np.cross(k, v) * math.sin(angle) + np.outer(v @ k, k) * (1 - math.cos(angle))
    return origin + rotated


# ----------------------------------------------------------------------------------------------- dihedrals


def test_dihedral_angles_equal_mdtraj(ala2: MolecularSystem, rng: np.random.Generator) -> None:
    frames = _frames(ala2, rng)
    quads = np.array([rng.choice(ala2.n_atoms, size=4, replace=False) for _ in range(30)])
    trajectory = mdtraj.Trajectory(frames, mdtraj.Topology.from_openmm(ala2.topology))
    expected = mdtraj.compute_dihedrals(trajectory, quads, periodic=False)
    ours = dihedral_angles(frames, quads)
    assert ours.shape == (20, 30) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, expected, atol=2e-5)  # mdtraj computes in float32


def test_wrap_angle() -> None:
    np.testing.assert_allclose(wrap_angle([math.pi + 0.1, -math.pi - 0.1, 0.3, 4 * math.pi]),
                               [-math.pi + 0.1, math.pi - 0.1, 0.3, 0.0], atol=1e-12)


def test_phi_psi_atoms_and_values_equal_mdtraj_on_alanine_dipeptide(ala2: MolecularSystem,
                                                                     rng: np.random.Generator) -> None:
    frames = _frames(ala2, rng)
    trajectory = mdtraj.Trajectory(frames, mdtraj.Topology.from_openmm(ala2.topology))
    phi_atoms, phi = mdtraj.compute_phi(trajectory)
    psi_atoms, psi = mdtraj.compute_psi(trajectory)
    assert [d.atoms for d in phi_dihedrals(ala2.topology)] == [tuple(q) for q in phi_atoms.tolist()]
    assert [d.atoms for d in psi_dihedrals(ala2.topology)] == [tuple(q) for q in psi_atoms.tolist()]
    assert [d.label for d in phi_dihedrals(ala2.topology)] == ["ALA 2"]
    atoms, labels, ours = backbone_phi(ala2.topology, frames)
    np.testing.assert_array_equal(atoms, phi_atoms)
    assert labels == ["ALA 2"] and ours.shape == (20, 1)
    np.testing.assert_allclose(ours, phi, atol=2e-5)
    np.testing.assert_array_equal(ramachandran_atoms(ala2.topology), np.concatenate([phi_atoms, psi_atoms]))
    rama_phi, rama_psi = ramachandran(ala2.topology, frames)
    np.testing.assert_allclose(rama_phi, phi[:, 0], atol=2e-5)
    np.testing.assert_allclose(rama_psi, psi[:, 0], atol=2e-5)
    # an mdtraj topology gives the same answer
    mdtraj_topology = mdtraj.Topology.from_openmm(ala2.topology)
    assert phi_dihedrals(mdtraj_topology) == phi_dihedrals(ala2.topology)
    assert psi_dihedrals(mdtraj_topology) == psi_dihedrals(ala2.topology)


@pytest.mark.parametrize(("chains", "n_phi", "n_omega"), [
    ((("ACE", "ALA", "GLY", "ALA", "NME"),), 3, 2),
    ((("ACE", "ALA", "ALA", "ALA", "NME"), ("ACE", "GLY", "NME")), 4, 2),
    ((("ALA", "ALA", "ALA"), ("GLY", "ALA")), 3, 3),  # uncapped: no dihedral may span the two chains
])
def test_phi_psi_atoms_equal_mdtraj_on_longer_peptides(chains: tuple[tuple[str, ...], ...], n_phi: int, n_omega: int,
                                                       rng: np.random.Generator) -> None:
    topology = _peptide(*chains)
    frames = rng.normal(size=(5, topology.getNumAtoms(), 3))
    trajectory = mdtraj.Trajectory(frames, mdtraj.Topology.from_openmm(topology))
    phi_atoms, phi = mdtraj.compute_phi(trajectory)
    psi_atoms, psi = mdtraj.compute_psi(trajectory)
    omega_atoms, _ = mdtraj.compute_omega(trajectory)
    assert len(phi_atoms) == len(psi_atoms) == n_phi and len(omega_atoms) == n_omega
    assert [d.atoms for d in phi_dihedrals(topology)] == [tuple(q) for q in phi_atoms.tolist()]
    assert [d.atoms for d in psi_dihedrals(topology)] == [tuple(q) for q in psi_atoms.tolist()]
    atoms, labels, ours = backbone_phi(topology, frames)
    np.testing.assert_array_equal(atoms, phi_atoms)
    np.testing.assert_allclose(ours, phi, atol=1e-4)
    np.testing.assert_allclose(dihedral_angles(frames, psi_atoms), psi, atol=1e-4)
    residues = [trajectory.topology.atom(int(quad[2])).residue for quad in phi_atoms]
    assert labels == [f"{residue.name} {residue.resSeq}" for residue in residues]  # as trade_md.md labelled them
    # peptide bonds: mdtraj's ω (CA-C-N-CA) between residues, plus the bonds to the caps
    bonds = peptide_bonds(topology)
    assert len(bonds) == sum(len(chain) - 1 for chain in chains)
    inner = [bond.atoms for bond in bonds if "ACE" not in bond.label and "NME" not in bond.label]
    assert inner == [tuple(q) for q in omega_atoms.tolist()]
    with pytest.raises(InputError, match=f"{n_phi} φ and {n_phi} ψ"):
        ramachandran_atoms(topology)


# ----------------------------------------------------------------------------------------------- peptide bonds


def test_peptide_bonds_of_alanine_dipeptide(ala2: MolecularSystem) -> None:
    index = {(atom.residue.name, atom.name): atom.index for atom in ala2.topology.atoms()}
    bonds = peptide_bonds(ala2.topology)
    assert [bond.label for bond in bonds] == ["ACE1-ALA2", "ALA2-NME3"]
    assert bonds[0].atoms == (index["ACE", "CH3"], index["ACE", "C"], index["ALA", "N"], index["ALA", "CA"])
    assert bonds[1].atoms == (index["ALA", "CA"], index["ALA", "C"], index["NME", "N"], index["NME", "C"])


def test_cis_flags_follow_a_rotation_of_omega(ala2: MolecularSystem) -> None:
    bonds = peptide_bonds(ala2.topology)
    x = ala2.positions.copy()
    omega = dihedral_angles(x[None], [bond.atoms for bond in bonds])[0]
    assert np.all(np.abs(omega) > math.radians(150))  # the built-in structure is all trans
    # rotate everything after the first peptide bond (ALA and NME) about the C-N axis: ω1 changes, ω2 does not
    carbon, nitrogen = bonds[0].atoms[1], bonds[0].atoms[2]
    moving = [atom.index for atom in ala2.topology.atoms() if atom.residue.name != "ACE"]
    frames = []
    for degrees in (0.0, 60.0, 100.0, 180.0, 260.0):
        y = x.copy()
        y[moving] = _rotate(x[moving], x[carbon], x[nitrogen] - x[carbon], math.radians(degrees))
        frames.append(y)
    frames = np.array(frames)
    rotated = dihedral_angles(frames, [bond.atoms for bond in bonds])
    np.testing.assert_allclose(wrap_angle(rotated[:, 0] - omega[0]), np.radians([0, 60, 100, 180, -100]), atol=1e-9)
    np.testing.assert_allclose(rotated[:, 1], omega[1], atol=1e-9)
    flags = cis_flags(frames, bonds)
    assert flags.shape == (5, 2) and flags.dtype == bool
    np.testing.assert_array_equal(flags[:, 0], np.abs(wrap_angle(rotated[:, 0])) < math.pi / 2)
    assert flags[:, 0].tolist() == [False, False, True, True, True] and not flags[:, 1].any()


# ----------------------------------------------------------------------------------------------- stereocentres


def test_chiral_centre_of_alanine_and_its_handedness(ala2: MolecularSystem, rng: np.random.Generator) -> None:
    bonds = [(bond.atom1.index, bond.atom2.index) for bond in ala2.topology.bonds()]
    elements = [atom.element.symbol for atom in ala2.topology.atoms()]
    centres = chiral_centres(ala2.n_atoms, bonds, elements)
    ca = next(atom.index for atom in ala2.topology.atoms() if atom.residue.name == "ALA" and atom.name == "CA")
    assert [centre[0] for centre in centres] == [ca]  # the methyl carbons have three equal hydrogens
    frames = ala2.positions[None] + rng.normal(scale=0.005, size=(10, ala2.n_atoms, 3))
    centres = np.array(centres)
    signs = handedness(frames, centres)
    assert signs.shape == (10, 1) and np.all(signs == signs[0, 0]) and abs(signs[0, 0]) == 1.0
    as_tensor = handedness(torch.from_numpy(frames), torch.from_numpy(centres))
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_array_equal(as_tensor.numpy(), signs)
    mirror = frames * np.array([-1.0, 1.0, 1.0])  # the D enantiomer
    np.testing.assert_array_equal(handedness(mirror, centres), -signs)
    np.testing.assert_array_equal(handedness(torch.from_numpy(mirror), torch.from_numpy(centres)).numpy(), -signs)
    flat = frames.copy()
    flat[:, centres[0, 1:]] = flat[:, [centres[0, 0]]] + np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0]]) * 0.1
    np.testing.assert_array_equal(handedness(flat, centres), 0.0)


# ----------------------------------------------------------------------------------------------- φ basins


def test_basin_entries_ignore_boundary_noise() -> None:
    noise_at_zero = np.tile([-0.1, 0.1], 50)
    noise_at_pi = np.tile([3.1, -3.1], 50)
    phi = np.concatenate([np.full(10, -1.5), noise_at_zero, noise_at_pi, np.full(10, -1.2), np.full(10, 1.0),
                          noise_at_zero, np.full(5, 1.1), np.full(10, -2.0), np.full(3, 1.2)])
    assert basin_entries(phi) == (1, 2)
    assert basin_entries(np.full(20, 1.0)) == (0, 0)
    assert basin_entries(noise_at_zero) == (0, 0)


def test_basin_populations_and_free_energy_difference() -> None:
    phi = np.array([-1.0, -2.0, -1.5, 1.0, 0.0, 2 * math.pi + 1.0])  # φ = 0 counts as φ < 0; wrapped into [−π, π)
    assert basin_populations(phi) == pytest.approx((4 / 6, 2 / 6))
    weights = np.array([1.0, 1.0, 1.0, 3.0, 0.0, 3.0])
    assert basin_populations(phi, weights) == pytest.approx((3 / 9, 6 / 9))
    assert basin_delta_f(phi, 600.0) == pytest.approx(-kT(600.0) * math.log(0.5), rel=1e-12)
    assert basin_delta_f(phi, 600.0, weights) == pytest.approx(-kT(600.0) * math.log(2.0), rel=1e-12)
    assert basin_delta_f(np.full(3, -1.0), 300.0) == math.inf
    assert basin_delta_f(np.full(3, 1.0), 300.0) == -math.inf
    with pytest.raises(InputError, match="all weights are zero"):
        basin_populations(phi, np.zeros(6))
