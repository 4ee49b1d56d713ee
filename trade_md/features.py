"""Molecular features computed one way for the whole package: dihedrals, backbone φ/ψ, φ basins, peptide bonds
(cis/trans) and stereocentres.

Positions are ``[n, atoms, 3]`` in nm (numpy); angles are radians in [−π, π] with the IUPAC sign convention (the
same as mdtraj's ``compute_dihedrals``). Topologies are ``openmm.app.Topology`` or ``mdtraj.Topology`` (both give
``residues()`` and ``atoms()`` / ``residues`` and ``atoms``; see :func:`_residues`). Nothing here imports torch,
except :func:`handedness`, which accepts torch tensors as well as arrays through duck typing.

>>> import numpy as np
>>> square = np.array([[[1.0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 1]]])
>>> float(np.degrees(dihedral_angles(square, [(0, 1, 2, 3)])[0, 0]))
-90.0
>>> basin_entries(np.array([-1.5, -0.1, 0.1, -0.1, 0.2, 1.0, 0.1, 1.2, -2.0, 3.1, -3.1]))
(1, 1)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trade_md.errors import InputError
from trade_md.thermo import kT

__all__ = [
    "BASIN_MARGIN",
    "Dihedral",
    "backbone_phi",
    "basin_delta_f",
    "basin_entries",
    "basin_populations",
    "chiral_centres",
    "cis_flags",
    "dihedral_angles",
    "handedness",
    "peptide_bonds",
    "phi_dihedrals",
    "psi_dihedrals",
    "ramachandran",
    "ramachandran_atoms",
    "wrap_angle",
]

BASIN_MARGIN = math.radians(30.0)
"""A trajectory enters a φ basin once |φ| is in (margin, π − margin) with the basin's sign (hysteresis)."""


@dataclass(frozen=True)
class Dihedral:
    """A named dihedral: ``label`` (e.g. ``"ALA2 phi"``) and its four atom indices."""

    label: str
    atoms: tuple[int, int, int, int]


# ----------------------------------------------------------------------------------------------- geometry


def wrap_angle(angle: Any) -> np.ndarray:
    """Angles folded into [−π, π)."""
    return (np.asarray(angle, dtype=np.float64) + math.pi) % (2.0 * math.pi) - math.pi


def dihedral_angles(positions: Any, quadruplets: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Dihedral angles ``[n, k]`` (radians, [−π, π]) of ``quadruplets [k, 4]`` in ``positions [n, atoms, 3]`` nm."""
    x = np.asarray(positions, dtype=np.float64)
    quads = np.asarray(quadruplets, dtype=np.int64).reshape(-1, 4)
    p0, p1, p2, p3 = (x[:, quads[:, i]] for i in range(4))
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - np.sum(b0 * b1, axis=-1, keepdims=True) * b1
    w = b2 - np.sum(b2 * b1, axis=-1, keepdims=True) * b1
    return np.arctan2(np.sum(np.cross(b1, v) * w, axis=-1), np.sum(v * w, axis=-1))


# ----------------------------------------------------------------------------------------------- backbone


_Residue = tuple[str, int, dict[str, int]]  # name, sequence number, {atom name: atom index}


def _residues(topology: Any) -> list[_Residue]:
    """``(name, sequence number, {atom name: index})`` of each residue, for openmm or mdtraj topologies."""
    residues = topology.residues() if callable(getattr(topology, "residues", None)) else topology.residues
    out = []
    for i, residue in enumerate(residues):
        atoms = residue.atoms() if callable(residue.atoms) else residue.atoms
        number = getattr(residue, "resSeq", None)
        if number is None:
            number = int(residue.id) if str(getattr(residue, "id", "")).strip().isdigit() else i + 1
        out.append((residue.name, int(number), {atom.name: atom.index for atom in atoms}))
    return out


def _neighbours(topology: Any) -> list[tuple[int, _Residue, _Residue]]:
    """``(index of the first, residue i, residue i + 1)`` for each pair of consecutive residues of one chain (as
    mdtraj pairs them: no pair spans two chains)."""
    residues = topology.residues() if callable(getattr(topology, "residues", None)) else topology.residues
    chains = [residue.chain.index for residue in residues]
    described = _residues(topology)
    return [(i, described[i], described[i + 1]) for i in range(len(described) - 1) if chains[i] == chains[i + 1]]


def phi_dihedrals(topology: Any) -> list[Dihedral]:
    """Backbone φ = C(i−1)–N–CA–C of every residue that has one, in chain order (mdtraj's definition)."""
    out = []
    for _, (_, _, previous), (name, number, own) in _neighbours(topology):
        if "C" in previous and all(key in own for key in ("N", "CA", "C")):
            out.append(Dihedral(f"{name} {number}", (previous["C"], own["N"], own["CA"], own["C"])))
    return out


def psi_dihedrals(topology: Any) -> list[Dihedral]:
    """Backbone ψ = N–CA–C–N(i+1) of every residue that has one, in chain order (mdtraj's definition)."""
    out = []
    for _, (name, number, own), (_, _, following) in _neighbours(topology):
        if "N" in following and all(key in own for key in ("N", "CA", "C")):
            out.append(Dihedral(f"{name} {number}", (own["N"], own["CA"], own["C"], following["N"])))
    return out


def backbone_phi(topology: Any, positions: Any) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Every backbone φ of every frame: atom indices ``[k, 4]``, labels (e.g. ``"ALA 2"``) ``[k]``, φ ``[n, k]``."""
    dihedrals = phi_dihedrals(topology)
    atoms = np.array([d.atoms for d in dihedrals], dtype=np.int64).reshape(-1, 4)
    return atoms, [d.label for d in dihedrals], dihedral_angles(positions, atoms)


def ramachandran_atoms(topology: Any, purpose: str = "the Ramachandran evaluation") -> np.ndarray:
    """Atom indices ``[2, 4]`` of the single φ and ψ of a dipeptide; InputError unless there is exactly one each."""
    phi, psi = phi_dihedrals(topology), psi_dihedrals(topology)
    if len(phi) != 1 or len(psi) != 1:
        raise InputError(f"the molecule has {len(phi)} φ and {len(psi)} ψ backbone dihedrals; {purpose} needs a "
                         "dipeptide with exactly one of each (e.g. alanine dipeptide)")
    return np.array([phi[0].atoms, psi[0].atoms], dtype=np.int64)


def ramachandran(topology: Any, positions: Any) -> tuple[np.ndarray, np.ndarray]:
    """(φ, ψ) ``[n]`` radians of the single residue of a dipeptide; positions ``[n, atoms, 3]`` nm."""
    angles = dihedral_angles(positions, ramachandran_atoms(topology))
    return angles[:, 0], angles[:, 1]


# ----------------------------------------------------------------------------------------------- φ basins


def basin_populations(phi: Any, weights: Any = None) -> tuple[float, float]:
    """Weighted populations (P(φ < 0), P(φ > 0)) of the two backbone basins; φ ``[n]`` radians."""
    phi = wrap_angle(phi)
    w = np.ones_like(phi) if weights is None else np.asarray(weights, dtype=np.float64)
    total = w.sum()
    if total <= 0:
        raise InputError("all weights are zero: basin populations are undefined")
    return float(w[phi <= 0].sum() / total), float(w[phi > 0].sum() / total)


def basin_delta_f(phi: Any, temperature: float, weights: Any = None) -> float:
    """ΔF = −k_B T ln(P(φ > 0) / P(φ < 0)) in kJ/mol; +inf when φ > 0 is never visited."""
    negative, positive = basin_populations(phi, weights)
    if positive == 0.0:
        return float("inf")
    if negative == 0.0:
        return float("-inf")
    return float(-kT(temperature) * np.log(positive / negative))


def basin_entries(phi: np.ndarray, margin: float = BASIN_MARGIN) -> tuple[int, int]:
    """Entries into the basins (φ < 0, φ > 0) along one trajectory ``phi [n]`` radians, with hysteresis.

    The trajectory is assigned to a basin once φ reaches its core (|φ| in (margin, π − margin) with the basin's
    sign) and stays assigned until it reaches the other core; the first assignment is not an entry.
    """
    magnitude = np.abs(phi)
    core = (magnitude > margin) & (magnitude < math.pi - margin)
    states = (phi[core] > 0).astype(np.int8)
    if states.size < 2:
        return 0, 0
    changes = np.flatnonzero(np.diff(states))
    into_positive = int(np.sum(states[changes + 1] == 1))
    return int(changes.size - into_positive), into_positive


# ----------------------------------------------------------------------------------------------- peptide bonds


def peptide_bonds(topology: Any) -> list[Dihedral]:
    """ω of every peptide bond: CA/CH3(i)–C(i)–N(i+1)–CA/CH3/C(i+1) (caps ACE and NME included), labelled
    ``"ACE1-ALA2"``."""
    out = []
    for i, (left_name, _, left), (right_name, _, right) in _neighbours(topology):
        if "C" not in left or "N" not in right:
            continue
        outer_left = left.get("CA", left.get("CH3"))
        outer_right = right.get("CA", right.get("CH3", right.get("C")))
        if outer_left is not None and outer_right is not None:
            out.append(Dihedral(f"{left_name}{i + 1}-{right_name}{i + 2}",
                                (outer_left, left["C"], right["N"], outer_right)))
    return out


def cis_flags(positions: Any, bonds: Sequence[Dihedral]) -> np.ndarray:
    """``bool [n, k]``: True where peptide bond k is cis (|ω| < 90°); positions ``[n, atoms, 3]`` nm."""
    omega = dihedral_angles(positions, [bond.atoms for bond in bonds])
    return np.abs(omega) < 0.5 * math.pi


# ----------------------------------------------------------------------------------------------- stereocentres


def _branch_signature(start: int, parent: int, adjacency: dict[int, list[int]], labels: Sequence[str],
                      depth: int) -> str:
    """Canonical string of the substituent rooted at ``start`` (away from ``parent``), ``depth`` bonds deep."""
    if depth == 0:
        return labels[start]
    children = sorted(
        _branch_signature(child, start, adjacency, labels, depth - 1) for child in adjacency[start] if child != parent
    )
    return f"{labels[start]}({','.join(children)})"


def chiral_centres(n_atoms: int, bonds: Iterable[tuple[int, int]], elements: Sequence[str],
                   depth: int = 6) -> list[tuple[int, int, int, int]]:
    """Stereocentres ``(centre, n1, n2, n3)``: atoms with four neighbours whose substituents differ within ``depth``
    bonds; ``n1 < n2 < n3`` are the three lowest-index neighbours that define the handedness."""
    adjacency: dict[int, list[int]] = {i: [] for i in range(n_atoms)}
    for a, b in bonds:
        adjacency[int(a)].append(int(b))
        adjacency[int(b)].append(int(a))
    centres = []
    for atom in range(n_atoms):
        neighbours = sorted(set(adjacency[atom]))
        if len(neighbours) != 4:
            continue
        signatures = {_branch_signature(n, atom, adjacency, elements, depth) for n in neighbours}
        if len(signatures) == 4:
            centres.append((atom, neighbours[0], neighbours[1], neighbours[2]))
    return centres


def handedness(x: Any, centres: Any) -> Any:
    """Sign of the triple product at each centre, ``[n, centres]`` of ±1 (0 for a flat centre).

    x: positions ``[n, atoms, 3]`` (numpy array or torch tensor); centres ``[m, 4]`` from :func:`chiral_centres`.
    Returns the same kind of array as ``x``.
    """
    c = x[:, centres[:, 0]]
    a, b, d = x[:, centres[:, 1]] - c, x[:, centres[:, 2]] - c, x[:, centres[:, 3]] - c
    triple = (a[..., 0] * (b[..., 1] * d[..., 2] - b[..., 2] * d[..., 1])
              + a[..., 1] * (b[..., 2] * d[..., 0] - b[..., 0] * d[..., 2])
              + a[..., 2] * (b[..., 0] * d[..., 1] - b[..., 1] * d[..., 0]))
    return (triple > 0) * 1.0 - (triple < 0) * 1.0
