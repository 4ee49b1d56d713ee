"""Molecular systems: a PDB plus force-field files, an Amber prmtop/inpcrd pair, or an existing OpenMM System.

Every route ends in a :class:`MolecularSystem` (OpenMM ``System`` + ``Topology`` + positions in nm) without a
barostat or periodic box: molecules in implicit solvent or in vacuum. Built-in systems live in ``systems/<dir>/``
with a ``config.yaml`` and are addressed by name:

>>> "alanine-dipeptide" in builtin_systems()
True
>>> ala2 = load_system("alanine-dipeptide")
>>> ala2.n_atoms, ala2.forcefield, ala2.constraints
(22, ('amber99sbildn.xml', 'amber99_obc.xml'), None)

Bad input (a missing file, an unparsable PDB, missing hydrogens, a residue the force field does not know,
waters or ions in implicit solvent, non-finite coordinates, several models) raises
:class:`~trade_md.errors.InputError` naming the problem and the fix (the checks live in
:mod:`trade_md.system_inputs`).

With ``constraints="HBonds"`` the bonds to hydrogen have fixed lengths (MD may then use 2 fs steps); a generator
must treat them as constants, taken from :meth:`MolecularSystem.constrained_bonds`.
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import yaml

from trade_md.errors import InputError
from trade_md.system_inputs import (
    check_finite,
    check_no_solvent,
    check_templates,
    constraint_kind,
    existing_file,
    load_forcefield,
    normalise_constraints,
    read_pdb,
    with_hydrogens,
)
from trade_md.thermo import to_nm

__all__ = [
    "CONSTRAINT_CHOICES",
    "IMPLICIT_SOLVENT_CHOICES",
    "RUN_MODEL_STAGE",
    "RUN_RECORD_FILE",
    "SYSTEMS_DIR",
    "MolecularSystem",
    "builtin_config",
    "builtin_systems",
    "pretrained_model",
    "resolve_model",
    "from_amber",
    "from_openmm",
    "load_system",
]


def _systems_dir() -> Path:
    """``systems/`` of a source checkout, else the copy a wheel installs as ``trade_md/builtin_systems``."""
    source = Path(__file__).resolve().parent.parent / "systems"
    return source if source.is_dir() else Path(__file__).resolve().parent / "builtin_systems"


SYSTEMS_DIR: Path = _systems_dir()
"""Directory of the built-in systems (one sub-directory with a ``config.yaml`` each)."""

SERIAL_FORMAT = "trade-md-system/1"
CONSTRAINT_CHOICES = ("none", "HBonds")
IMPLICIT_SOLVENT_CHOICES = ("HCT", "OBC1", "OBC2", "GBn", "GBn2")
# Force-field files whose names contain one of these define a generalized-Born implicit solvent.
_IMPLICIT_MARKERS = ("obc", "gbn", "hct", "gbsa", "implicit")
_GB_FORCES = (openmm.GBSAOBCForce, openmm.CustomGBForce)


@dataclass
class MolecularSystem:
    """An OpenMM system of one molecule (implicit solvent or vacuum, no barostat, no periodic box).

    positions: [atoms, 3] nm, float64 (the starting structure).
    forcefield: force-field files used to build ``system`` (``()`` for a user-provided System).
    constraints: ``None`` or ``"HBonds"`` (``"custom"`` for a user-provided System with other constraints).
    """

    system: openmm.System
    topology: app.Topology
    positions: np.ndarray
    name: str
    forcefield: tuple[str, ...] = ()
    constraints: str | None = None

    @property
    def n_atoms(self) -> int:
        return self.system.getNumParticles()

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able physical identity for mismatch checks (the display name is not part of it).

        Keys: n_atoms, atom_names, elements, residue_names, forcefield, constraints, n_constraints, forces (class
        names of the System's forces). Equal before and after a JSON round trip.
        """
        atoms = list(self.topology.atoms())
        return {
            "n_atoms": self.n_atoms,
            "atom_names": [atom.name for atom in atoms],
            "elements": [atom.element.symbol if atom.element is not None else "" for atom in atoms],
            "residue_names": [residue.name for residue in self.topology.residues()],
            "forcefield": list(self.forcefield),
            "constraints": self.constraints,
            "n_constraints": self.system.getNumConstraints(),
            "forces": [type(force).__name__ for force in self.system.getForces()],
        }

    def constrained_bonds(self) -> list[tuple[int, int, float]]:
        """Constrained distances ``(i, j, length nm)`` from the System (empty without constraints)."""
        bonds = []
        for k in range(self.system.getNumConstraints()):
            i, j, length = self.system.getConstraintParameters(k)
            bonds.append((int(i), int(j), float(to_nm(length))))
        return bonds

    def pdb_text(self, positions: np.ndarray | None = None) -> str:
        """The topology with ``positions`` ([atoms, 3] nm; default the starting structure) as PDB text."""
        coords = self.positions if positions is None else np.asarray(positions, dtype=np.float64)
        buffer = io.StringIO()
        app.PDBFile.writeFile(self.topology, coords * unit.nanometer, buffer, keepIds=True)
        return buffer.getvalue()

    def serialize(self) -> dict[str, Any]:
        """A self-contained JSON-able dict: System XML, topology, exact positions, PDB text, name, force field."""
        return {
            "format": SERIAL_FORMAT,
            "name": self.name,
            "forcefield": list(self.forcefield),
            "constraints": self.constraints,
            "system_xml": openmm.XmlSerializer.serialize(self.system),
            "topology": _topology_to_dict(self.topology),
            "positions": self.positions.tolist(),
            "pdb": self.pdb_text(),
        }

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> MolecularSystem:
        """Rebuild a system written by :meth:`serialize` (energies are identical to the original's)."""
        if not isinstance(data, dict) or data.get("format") != SERIAL_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InputError(
                f"not a serialized trade-md system (format {found!r}, expected {SERIAL_FORMAT!r}); "
                "pass the dict written by MolecularSystem.serialize()"
            )
        try:
            system = openmm.XmlSerializer.deserialize(data["system_xml"])
            topology = _topology_from_dict(data["topology"])
            positions = np.asarray(data["positions"], dtype=np.float64)
        except Exception as error:  # KeyError, ValueError, OpenMMException from a damaged dict
            raise InputError(f"serialized system is damaged ({type(error).__name__}: {error}); regenerate it") from None
        return cls(
            system=system,
            topology=topology,
            positions=positions,
            name=str(data["name"]),
            forcefield=tuple(data["forcefield"]),
            constraints=data["constraints"],
        )


# ----------------------------------------------------------------------------------------------------- built-ins


def builtin_systems() -> list[str]:
    """Names of the built-in systems (from ``systems/*/config.yaml``)."""
    if not SYSTEMS_DIR.is_dir():
        return []
    names = []
    for config in sorted(SYSTEMS_DIR.glob("*/config.yaml")):
        names.append(str(yaml.safe_load(config.read_text())["name"]))
    return names


def builtin_config(name: str) -> dict[str, Any]:
    """The ``config.yaml`` of a built-in system, with ``pdb`` as an absolute path.

    Keys: name, description, pdb, forcefield (list), constraints (``None`` or "HBonds"), reference_temperature (K).
    """
    for config_path in sorted(SYSTEMS_DIR.glob("*/config.yaml")):
        config = yaml.safe_load(config_path.read_text())
        if config.get("name") == name:
            config["pdb"] = str(config_path.parent / config["pdb"])
            config["constraints"] = normalise_constraints(config.get("constraints"))
            return config
    if not SYSTEMS_DIR.is_dir():
        raise InputError(
            f"built-in systems directory {SYSTEMS_DIR} is missing; install trade-md from a source checkout "
            "(pip install -e .) or pass --pdb FILE --forcefield FILE"
        )
    raise InputError(f"unknown built-in system {name!r}; choose one of {builtin_systems()} or pass a PDB path")


MODEL_DIR = "model"
"""Sub-directory of a built-in system holding its shipped generator (``checkpoint.pt``, ``README.md`` card,
``card.json`` measurements), written by ``trade-md export``."""


def pretrained_model(name: str) -> Path:
    """The directory of the generator shipped with built-in system ``name`` (an :class:`InputError` naming the
    systems that have one when it has none)."""
    config = builtin_config(name)
    directory = Path(config["pdb"]).parent / MODEL_DIR
    if not (directory / "checkpoint.pt").is_file():
        shipped = [system for system in builtin_systems()
                   if (Path(builtin_config(system)["pdb"]).parent / MODEL_DIR / "checkpoint.pt").is_file()]
        raise InputError(f"built-in system {name!r} ships no trained generator (systems with one: "
                         f"{', '.join(shipped) or 'none'}); train one with `trade-md run --system {name}`")
    return directory


RUN_RECORD_FILE = "recipe.json"
"""What makes a directory a ``trade-md run`` (its record, :data:`trade_md.recipe.RECIPE_FILE`)."""
RUN_MODEL_STAGE = "transfer"
"""The stage of a ``trade-md run`` whose model the run directory stands for; complete once it holds ``stage.json``
(:data:`trade_md.recipe.context.STAGE_FILE`)."""


def resolve_model(model: str | os.PathLike) -> Path:
    """A run directory or checkpoint path as given; a ``trade-md run`` directory's final model (its transfer stage),
    InputError while that stage is unfinished; else the shipped model of the built-in system of that name."""
    path = Path(model)
    if (path / RUN_RECORD_FILE).is_file():
        if not (path / RUN_MODEL_STAGE / "stage.json").is_file():
            raise InputError(f"{path} is a `trade-md run` whose {RUN_MODEL_STAGE} stage has not finished, so it has "
                             f"no final model yet; finish it with `trade-md run --resume --out {path}`")
        return path / RUN_MODEL_STAGE
    if path.exists() or str(model) not in builtin_systems():
        return path
    return pretrained_model(str(model))


# ----------------------------------------------------------------------------------------------------- loaders


def load_system(
    source: str | os.PathLike,
    forcefield: Sequence[str] | None = None,
    *,
    add_hydrogens: bool = False,
    constraints: str | None = None,
) -> MolecularSystem:
    """Build a system from a built-in name or a PDB path plus OpenMM force-field files (no cutoff).

    forcefield: e.g. ``["amber99sbildn.xml", "amber99_obc.xml"]``; required for a PDB path, optional override for
    a built-in. add_hydrogens: add missing hydrogens at pH 7 (OpenMM Modeller). constraints: ``None`` (the
    built-in's default, otherwise none), ``"none"`` or ``"HBonds"``.
    """
    source_text = os.fspath(source)
    path = Path(source_text)
    if not path.exists() and source_text in builtin_systems():
        config = builtin_config(source_text)
        files = tuple(forcefield) if forcefield else tuple(config["forcefield"])
        chosen = normalise_constraints(constraints) if constraints is not None else config["constraints"]
        return _from_pdb(Path(config["pdb"]), files, add_hydrogens, chosen, name=source_text)
    if not path.exists():
        raise InputError(
            f"{source_text} is neither an existing file nor a built-in system; check the path "
            f"or choose one of {builtin_systems()}"
        )
    if path.suffix.lower() in (".prmtop", ".parm7", ".top"):
        raise InputError(f"{path} looks like an Amber prmtop; load it with from_amber() / --prmtop and --inpcrd")
    if not forcefield:
        raise InputError(
            f"no force field given for {path}; pass force-field files, e.g. "
            "--forcefield amber99sbildn.xml --forcefield amber99_obc.xml"
        )
    return _from_pdb(path, tuple(forcefield), add_hydrogens, normalise_constraints(constraints), name=path.stem)


def from_amber(
    prmtop: str | os.PathLike,
    inpcrd: str | os.PathLike,
    *,
    constraints: str | None = None,
    implicit_solvent: str | None = None,
) -> MolecularSystem:
    """Build a system from an Amber prmtop + inpcrd pair (no cutoff).

    implicit_solvent: ``None`` (vacuum) or one of "HCT", "OBC1", "OBC2", "GBn", "GBn2".
    """
    prmtop_path, inpcrd_path = existing_file(prmtop, "prmtop"), existing_file(inpcrd, "inpcrd")
    chosen = normalise_constraints(constraints)
    if implicit_solvent is not None and implicit_solvent not in IMPLICIT_SOLVENT_CHOICES:
        raise InputError(f"implicit solvent {implicit_solvent!r} unknown; choose one of {IMPLICIT_SOLVENT_CHOICES}")
    try:
        parm = app.AmberPrmtopFile(str(prmtop_path))
    except Exception as error:
        raise InputError(f"cannot read Amber prmtop {prmtop_path} ({type(error).__name__}: {error}); "
                         "check that it is a prmtop file from tleap/parmed") from None
    try:
        crd = app.AmberInpcrdFile(str(inpcrd_path))
    except Exception as error:
        raise InputError(f"cannot read Amber coordinates {inpcrd_path} ({type(error).__name__}: {error}); "
                         "check that it is an inpcrd/rst7 file") from None
    positions = to_nm(crd.getPositions(asNumpy=True))
    if positions.shape[0] != parm.topology.getNumAtoms():
        raise InputError(
            f"{inpcrd_path} has {positions.shape[0]} atoms but {prmtop_path} has {parm.topology.getNumAtoms()}; "
            "pass the coordinates that belong to this prmtop"
        )
    check_finite(positions, parm.topology, str(inpcrd_path))
    if implicit_solvent is not None:
        check_no_solvent(parm.topology, f"implicit solvent {implicit_solvent}")
    try:
        system = parm.createSystem(
            nonbondedMethod=app.NoCutoff,
            constraints=app.HBonds if chosen == "HBonds" else None,
            rigidWater=False,
            implicitSolvent=getattr(app, implicit_solvent) if implicit_solvent else None,
        )
    except Exception as error:
        raise InputError(f"OpenMM cannot build a system from {prmtop_path} ({type(error).__name__}: {error})") from None
    forcefield = (prmtop_path.name,) + ((f"implicitSolvent={implicit_solvent}",) if implicit_solvent else ())
    return MolecularSystem(system, parm.topology, positions, prmtop_path.stem, forcefield, chosen)


def from_openmm(system: openmm.System, topology: app.Topology, positions: Any, *,
                name: str = "custom") -> MolecularSystem:
    """Wrap an existing OpenMM System, Topology and positions (nm array or quantity), e.g. an openmmtools testsystem.

    The System is copied. Rejected: a barostat, periodic boundary conditions, waters or ions with implicit solvent,
    mismatched atom counts, non-finite positions.
    """
    if not isinstance(system, openmm.System) or not isinstance(topology, app.Topology):
        raise InputError("from_openmm needs an openmm.System and an openmm.app.Topology (e.g. testsystem.system, "
                         "testsystem.topology)")
    coords = to_nm(positions)
    n_atoms = system.getNumParticles()
    if coords.shape != (n_atoms, 3) or topology.getNumAtoms() != n_atoms:
        raise InputError(
            f"System has {n_atoms} particles, Topology {topology.getNumAtoms()} atoms, positions shape "
            f"{coords.shape}; pass matching objects with positions [atoms, 3] nm"
        )
    check_finite(coords, topology, "positions")
    for force in system.getForces():
        if "Barostat" in type(force).__name__:
            raise InputError(f"the System has a {type(force).__name__}; remove it (trade-md samples at fixed volume)")
    if system.usesPeriodicBoundaryConditions():
        raise InputError("the System uses periodic boundary conditions; build it in vacuum or implicit solvent "
                         "(nonbondedMethod=NoCutoff or CutoffNonPeriodic)")
    if any(isinstance(force, _GB_FORCES) for force in system.getForces()):
        check_no_solvent(topology, "an implicit-solvent System")
    return MolecularSystem(copy.deepcopy(system), topology, coords, name, (), constraint_kind(system, topology))


# ----------------------------------------------------------------------------------------------------- internals


def _from_pdb(path: Path, forcefield: tuple[str, ...], add_hydrogens: bool, constraints: str | None,
              name: str) -> MolecularSystem:
    pdb = read_pdb(path)
    topology, positions = pdb.topology, to_nm(pdb.getPositions(asNumpy=True))
    ff = load_forcefield(forcefield)
    implicit = any(marker in Path(f).name.lower() for f in forcefield for marker in _IMPLICIT_MARKERS)
    if implicit:
        check_no_solvent(topology, f"the implicit-solvent force field {list(forcefield)}")
    if add_hydrogens:
        topology, positions = with_hydrogens(topology, positions, ff, path)
    check_templates(topology, positions, ff, forcefield, add_hydrogens, path)
    try:
        system = ff.createSystem(topology, nonbondedMethod=app.NoCutoff,
                                 constraints=app.HBonds if constraints == "HBonds" else None, rigidWater=False)
    except Exception as error:
        raise InputError(f"OpenMM cannot build a system for {path} with {list(forcefield)} "
                         f"({type(error).__name__}: {error}); check the residues and force-field files") from None
    if any(isinstance(force, _GB_FORCES) for force in system.getForces()):
        check_no_solvent(topology, f"the implicit-solvent force field {list(forcefield)}")
    return MolecularSystem(system, topology, positions, name, forcefield, constraints)


def _topology_to_dict(topology: app.Topology) -> dict[str, Any]:
    chains = []
    for chain in topology.chains():
        residues = []
        for residue in chain.residues():
            atoms = [[atom.name, atom.element.symbol if atom.element is not None else None] for atom in residue.atoms()]
            residues.append({"name": residue.name, "id": residue.id, "insertion_code": residue.insertionCode,
                             "atoms": atoms})
        chains.append({"id": chain.id, "residues": residues})
    bonds = [[bond.atom1.index, bond.atom2.index] for bond in topology.bonds()]
    return {"chains": chains, "bonds": bonds}


def _topology_from_dict(data: dict[str, Any]) -> app.Topology:
    topology = app.Topology()
    atoms: list[app.Atom] = []
    for chain_data in data["chains"]:
        chain = topology.addChain(chain_data["id"])
        for residue_data in chain_data["residues"]:
            residue = topology.addResidue(residue_data["name"], chain, residue_data["id"],
                                          residue_data["insertion_code"])
            for atom_name, symbol in residue_data["atoms"]:
                element = app.Element.getBySymbol(symbol) if symbol else None
                atoms.append(topology.addAtom(atom_name, element, residue))
    for i, j in data["bonds"]:
        topology.addBond(atoms[i], atoms[j])
    return topology
