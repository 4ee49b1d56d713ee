"""The user's input to a molecular system, read and checked: PDB files, force-field files, constraints, solvent.

OpenMM reports bad input late and obscurely (a KeyError deep in template matching, NaN energies from a coordinate
column shifted by one). These readers and checks raise :class:`~trade_md.errors.InputError` naming the problem and
the fix instead: several models, unreadable coordinate columns, non-finite coordinates, a force-field file that
does not load, residues no template matches (with a hint when hydrogens are missing), waters or ions with implicit
solvent, unknown constraint settings. :mod:`trade_md.systems` builds systems with them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from trade_md.errors import InputError
from trade_md.thermo import to_nm

__all__ = [
    "check_finite",
    "check_no_solvent",
    "check_templates",
    "constraint_kind",
    "existing_file",
    "load_forcefield",
    "normalise_constraints",
    "read_pdb",
    "with_hydrogens",
]

_WATER_NAMES = frozenset({"HOH", "WAT", "H2O", "SOL", "TIP", "TIP3", "TIP4", "TIP5", "T3P", "T4P", "SPC", "DOD"})
_ION_ELEMENTS = frozenset({"Li", "Na", "K", "Rb", "Cs", "Mg", "Ca", "Zn", "F", "Cl", "Br", "I"})
_ION_NAMES = frozenset({"LI", "NA", "K", "RB", "CS", "MG", "CA", "ZN", "F", "CL", "BR", "IOD", "NA+", "CL-", "K+"})


def normalise_constraints(constraints: str | None) -> str | None:
    """``None`` (no constraints: ``None`` or ``"none"``, any case) or ``"HBonds"``; InputError otherwise."""
    if constraints is None or str(constraints).lower() == "none":
        return None
    if str(constraints).lower() == "hbonds":
        return "HBonds"
    raise InputError(f"constraints {constraints!r} not supported; choose 'none' or 'HBonds'")


def existing_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; InputError naming it as the ``what`` file when it is not an existing file."""
    result = Path(path)
    if not result.is_file():
        raise InputError(f"{what} file {result} does not exist; check the path")
    return result


def read_pdb(path: Path) -> app.PDBFile:
    """Parse a PDB after checking the things OpenMM reports badly: models, coordinate columns, finiteness."""
    if not path.is_file():
        raise InputError(f"PDB file {path} does not exist; check the path")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {path} as text ({error}); pass a PDB file") from None
    n_models = sum(1 for line in lines if line.startswith("MODEL"))
    if n_models > 1:
        raise InputError(f"{path} holds {n_models} models (MODEL records); keep one, e.g. "
                         "mdtraj.load(path)[0].save_pdb('one_model.pdb')")
    n_atoms = 0
    for number, line in enumerate(lines, start=1):
        if not line.startswith(("ATOM  ", "HETATM")):
            continue
        n_atoms += 1
        try:
            xyz = [float(line[start:start + 8]) for start in (30, 38, 46)]
        except ValueError:
            raise InputError(f"{path}, line {number}: cannot read x, y, z (columns 31-54, in Å) from {line!r}; "
                             "fix the line (PDB is a fixed-column format)") from None
        if not all(math.isfinite(v) for v in xyz):
            raise InputError(f"{path}, line {number}: non-finite coordinates in {line!r}; "
                             "replace them with real positions")
    if n_atoms == 0:
        raise InputError(f"{path} has no ATOM/HETATM records; pass a PDB file with atoms")
    try:
        return app.PDBFile(str(path))
    except Exception as error:
        raise InputError(f"cannot parse {path} as PDB ({type(error).__name__}: {error}); fix the file") from None


def load_forcefield(files: tuple[str, ...]) -> app.ForceField:
    """An OpenMM ForceField of ``files`` (XML names or paths); InputError naming the file that does not load."""
    for name in files:
        try:
            app.ForceField(name)
        except Exception as error:
            raise InputError(f"cannot load force-field file {name!r} ({type(error).__name__}: {error}); pass an "
                             "OpenMM XML file name (e.g. amber99sbildn.xml) or path") from None
    return app.ForceField(*files)


def with_hydrogens(topology: app.Topology, positions: np.ndarray, ff: app.ForceField,
                   path: Path) -> tuple[app.Topology, np.ndarray]:
    """The topology and positions ``[atoms, 3]`` nm with the hydrogens of ``ff`` added at pH 7 (OpenMM Modeller)."""
    modeller = app.Modeller(topology, positions * unit.nanometer)
    try:
        modeller.addHydrogens(ff, pH=7.0)
    except Exception as error:
        raise InputError(f"cannot add hydrogens to {path} ({type(error).__name__}: {error}); add them with a "
                         "structure tool (e.g. pdbfixer) and load without --add-hydrogens") from None
    return modeller.topology, to_nm(modeller.getPositions())


def check_templates(topology: app.Topology, positions: np.ndarray, ff: app.ForceField, files: tuple[str, ...],
                    add_hydrogens: bool, path: Path) -> None:
    """InputError unless every residue matches a template of ``ff``; it says when adding hydrogens would help."""
    unmatched = ff.getUnmatchedResidues(topology)
    if not unmatched:
        return
    if not add_hydrogens:
        trial = app.Modeller(topology, positions * unit.nanometer)
        try:
            trial.addHydrogens(ff, pH=7.0)
            fixed = not ff.getUnmatchedResidues(trial.topology)
        except Exception:
            fixed = False
        if fixed:
            names = ", ".join(f"{r.name} {r.id}" for r in unmatched[:5])
            raise InputError(f"{path} lacks hydrogens (residues {names} do not match {list(files)} without them); "
                             "pass add_hydrogens=True / --add-hydrogens")
    listed = ", ".join(f"{r.name} {r.id} (chain {r.chain.id})" for r in unmatched[:8])
    more = f" and {len(unmatched) - 8} more" if len(unmatched) > 8 else ""
    no_hydrogens = not add_hydrogens and not any(
        atom.element is not None and atom.element.symbol == "H" for r in unmatched for atom in r.atoms())
    hint = (" They have no hydrogens: if they are standard residues, add them with --add-hydrogens."
            if no_hydrogens else "")
    raise InputError(
        f"{path}: {len(unmatched)} residue(s) match no template of {list(files)}: {listed}{more}. The force "
        "field does not know a residue of that name, or its atoms differ from the template (missing or extra atoms, "
        "or a missing bond to an unknown neighbour). Add a force-field file that defines it (--forcefield XML) or "
        f"rename/repair the residue.{hint}"
    )


def _solvent_residues(topology: app.Topology) -> tuple[list[app.Residue], list[app.Residue]]:
    """Water residues (by name, or exactly one O and two H) and ion residues (one ion atom, or an ion name)."""
    waters, ions = [], []
    for residue in topology.residues():
        symbols = sorted(a.element.symbol if a.element is not None else "" for a in residue.atoms())
        name = residue.name.upper()
        if name in _WATER_NAMES or symbols == ["H", "H", "O"]:
            waters.append(residue)
        elif name in _ION_NAMES or (len(symbols) == 1 and symbols[0] in _ION_ELEMENTS):
            ions.append(residue)
    return waters, ions


def check_no_solvent(topology: app.Topology, setup: str) -> None:
    """InputError when ``topology`` holds waters or ions, which implicit solvent (named by ``setup``) replaces."""
    waters, ions = _solvent_residues(topology)
    if waters or ions:
        first = (waters + ions)[0]
        raise InputError(
            f"found {len(waters)} water and {len(ions)} ion residues (first: {first.name} {first.id}) in {setup}; "
            "implicit solvent replaces them: remove waters and ions (e.g. modeller.deleteWater(), or drop the HOH/ion "
            "lines from the PDB)"
        )


def check_finite(positions: np.ndarray, topology: app.Topology, source: str) -> None:
    """InputError naming the first atom of ``positions [atoms, 3]`` with a non-finite coordinate."""
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        atom = list(topology.atoms())[bad[0]]
        raise InputError(f"{source}: non-finite coordinates for {bad.size} atoms (first: atom {bad[0]} {atom.name} "
                         f"of {atom.residue.name} {atom.residue.id}); replace them with real positions")


def constraint_kind(system: openmm.System, topology: app.Topology) -> str | None:
    """The constraints of a System: ``None``, ``"HBonds"`` (only bonds to hydrogen) or ``"custom"``."""
    if system.getNumConstraints() == 0:
        return None
    hydrogen = [atom.element is not None and atom.element.symbol == "H" for atom in topology.atoms()]
    for k in range(system.getNumConstraints()):
        i, j, _ = system.getConstraintParameters(k)
        if not (hydrogen[i] or hydrogen[j]):
            return "custom"
    return "HBonds"
