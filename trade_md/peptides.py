"""Capped peptides from a sequence: ACE-X-...-NME with hydrogens, L-amino acids, energy-minimised.

For trying trade-md on a molecule without a structure file at hand (``trade-md build-peptide PHE --out phe.pdb``)
and for tests on molecules the package has never seen. The backbone is placed from ideal internal coordinates
(bond lengths and angles of Engh & Huber; φ = −60°, ψ = −45° by default, trans peptide bonds); PDBFixer adds the
side chains from its residue templates and the hydrogens at pH 7; every Cα is then checked to be L (a side
chain placed on the wrong face is mirrored through the N–Cα–C plane before the hydrogens are added) and the
structure is minimised with the given force field (default amber99sb-ildn + OBC, no cutoff).

>>> residues = parse_sequence("ALA-ALA-ALA")
>>> residues
['ALA', 'ALA', 'ALA']
>>> parse_sequence("ACE-PHE-NME")
['PHE']
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
from pdbfixer import PDBFixer

from trade_md.errors import InputError
from trade_md.formats.files import atomic_write_path

__all__ = ["AMINO_ACIDS", "DEFAULT_FORCEFIELD", "build_capped_peptide", "parse_sequence", "write_capped_peptide"]

AMINO_ACIDS: tuple[str, ...] = ("ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU", "LYS",
                                "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL")
_ONE_LETTER = dict(zip("ARNDCQEGHILKMFPSTWYV", AMINO_ACIDS))
DEFAULT_FORCEFIELD: tuple[str, ...] = ("amber99sbildn.xml", "amber99_obc.xml")

# Ideal backbone geometry (nm, degrees).
_BOND = {"N-CA": 0.1458, "CA-C": 0.1525, "C-N": 0.1329, "C-O": 0.1231, "CH3-C": 0.1520, "N-CH3": 0.1449}
_ANGLE = {"C-N-CA": 121.7, "N-CA-C": 111.2, "CA-C-N": 116.2, "CA-C-O": 120.8}


def parse_sequence(sequence: str | Sequence[str]) -> list[str]:
    """Residue names from ``"ALA-PHE"``, ``"AF"`` (one-letter) or a list; the caps ACE/NME may be written or not."""
    if isinstance(sequence, str):
        text = sequence.strip().upper()
        parts = text.split("-") if ("-" in text or len(text) == 3 and text in AMINO_ACIDS + ("ACE", "NME")) \
            else list(text)
    else:
        parts = [str(p).upper() for p in sequence]
    parts = [_ONE_LETTER.get(p, p) for p in parts if p]
    if parts and parts[0] == "ACE":
        parts = parts[1:]
    if parts and parts[-1] == "NME":
        parts = parts[:-1]
    unknown = [p for p in parts if p not in AMINO_ACIDS]
    if not parts or unknown:
        problem = "an empty sequence" if not parts else f"unknown residue(s) {', '.join(unknown)}"
        raise InputError(f"{problem} in {sequence!r}; give standard amino acids, e.g. ALA-ALA-ALA or AAA")
    return parts


def _place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float, torsion: float) -> np.ndarray:
    """The atom d with |cd| = bond, angle b-c-d = angle and dihedral a-b-c-d = torsion (degrees)."""
    bc = (c - b) / np.linalg.norm(c - b)
    normal = np.cross(b - a, bc)
    normal /= np.linalg.norm(normal)
    in_plane = np.cross(normal, bc)
    theta, chi = math.radians(angle), math.radians(torsion)
    local = np.array([-bond * math.cos(theta), bond * math.sin(theta) * math.cos(chi),
                      bond * math.sin(theta) * math.sin(chi)])
    return c + local[0] * bc + local[1] * in_plane + local[2] * normal


def _backbone(residues: list[str], phi: float, psi: float) -> list[tuple[str, int, str, np.ndarray]]:
    """Heavy backbone atoms of ACE-residues-NME: (residue name, residue number, atom name, position nm)."""
    ch3 = np.zeros(3)
    c = np.array([_BOND["CH3-C"], 0.0, 0.0])
    o = c + _BOND["C-O"] * np.array([math.cos(math.radians(60.0)), math.sin(math.radians(60.0)), 0.0])
    atoms = [("ACE", 1, "CH3", ch3), ("ACE", 1, "C", c), ("ACE", 1, "O", o)]
    n = _place(o, ch3, c, _BOND["C-N"], _ANGLE["CA-C-N"], 180.0)
    previous_ca, previous_c = ch3, c
    for number, name in enumerate(residues, start=2):
        ca = _place(previous_ca, previous_c, n, _BOND["N-CA"], _ANGLE["C-N-CA"], 180.0)
        c = _place(previous_c, n, ca, _BOND["CA-C"], _ANGLE["N-CA-C"], phi)
        next_n = _place(n, ca, c, _BOND["C-N"], _ANGLE["CA-C-N"], psi)
        o = _place(next_n, ca, c, _BOND["C-O"], _ANGLE["CA-C-O"], 180.0)
        atoms += [(name, number, "N", n), (name, number, "CA", ca), (name, number, "C", c), (name, number, "O", o)]
        previous_ca, previous_c, n = ca, c, next_n
    methyl = _place(previous_ca, previous_c, n, _BOND["N-CH3"], _ANGLE["C-N-CA"], 180.0)
    atoms += [("NME", len(residues) + 2, "N", n), ("NME", len(residues) + 2, "C", methyl)]
    return atoms


def _pdb_text(atoms: list[tuple[str, int, str, np.ndarray]]) -> str:
    lines = []
    for serial, (residue, number, name, position) in enumerate(atoms, start=1):
        x, y, z = position * 10.0
        lines.append(f"ATOM  {serial:5d} {name:<4s} {residue:3s} A{number:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                     f"  1.00  0.00          {name[0]:>2s}")
    return "\n".join(lines + ["TER", "END"]) + "\n"


def _make_l_amino_acids(topology: app.Topology, positions: np.ndarray) -> np.ndarray:
    """Mirror each side chain that sits on the D face through its N–Cα–C plane; positions ``[atoms, 3]`` nm
    (heavy atoms, before hydrogens are added). Returns the corrected copy."""
    positions = positions.copy()
    for residue in topology.residues():
        index = {atom.name: atom.index for atom in residue.atoms()}
        if "CB" not in index:
            continue
        n, ca, c, cb = (positions[index[name]] for name in ("N", "CA", "C", "CB"))
        if np.dot(n - ca, np.cross(c - ca, cb - ca)) > 0.0:  # L: CB on this face of N-CA-C
            continue
        normal = np.cross(n - ca, c - ca)
        normal /= np.linalg.norm(normal)
        for atom in residue.atoms():
            if atom.name not in ("N", "CA", "C", "O"):
                offset = positions[atom.index] - ca
                positions[atom.index] = positions[atom.index] - 2.0 * np.dot(offset, normal) * normal
    return positions


def build_capped_peptide(sequence: str | Sequence[str], forcefield: Sequence[str] = DEFAULT_FORCEFIELD, *,
                         phi: float = -60.0, psi: float = -45.0) -> tuple[app.Topology, np.ndarray]:
    """``(topology, positions [atoms, 3] nm)`` of ACE-sequence-NME with hydrogens, minimised with ``forcefield``.

    phi, psi: backbone dihedrals (degrees) of the starting structure, before minimisation.
    """
    residues = parse_sequence(sequence)
    fixer = PDBFixer(pdbfile=io.StringIO(_pdb_text(_backbone(residues, phi, psi))))
    fixer.missingResidues = {}
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    heavy = np.asarray(fixer.positions.value_in_unit(unit.nanometer))
    fixer.positions = _make_l_amino_acids(fixer.topology, heavy) * unit.nanometer
    fixer.addMissingHydrogens(7.0)
    try:
        field = app.ForceField(*forcefield)
    except (ValueError, OSError) as error:
        raise InputError(f"cannot load force field {list(forcefield)} ({error}); give OpenMM force-field files, "
                         "e.g. amber99sbildn.xml amber99_obc.xml") from None
    system = field.createSystem(fixer.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(fixer.positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, 5000)
    positions = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return fixer.topology, np.asarray(positions, dtype=np.float64)


def write_capped_peptide(sequence: str | Sequence[str], out: str | Path,
                         forcefield: Sequence[str] = DEFAULT_FORCEFIELD) -> Path:
    """Build the capped peptide and write it as a PDB file at ``out`` (atomically); returns the path."""
    topology, positions = build_capped_peptide(sequence, forcefield)
    path = Path(out)
    with atomic_write_path(path) as temp, open(temp, "w") as handle:
        app.PDBFile.writeFile(topology, positions * unit.nanometer, handle, keepIds=True)
    return path
