"""The files of a ``trade-md remd`` run: its record ``run.json``, openmmtools' NetCDF storage, its backup, and the
checks that keep them together.

An out directory holds ``replicas.nc`` (energies, states, exchange statistics per iteration) and
``replicas_checkpoint.nc`` (positions; every iteration, so a killed run loses none), which share a UUID; the system
fingerprint is stored in the storage's metadata; ``backup/`` holds a copy of both files; ``run.json`` holds the
serialized system, its fingerprint, the settings, the platform, versions and the wall/CPU time of every run
segment. Records of format ``run/1`` (before
velocity rescaling, when ``"langevin"`` redrew velocities at exchanges) are read as ``"langevin-redraw"``.
:func:`read_storage` reads a run into a :class:`ReplicaData` of arrays indexed by stored iteration.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trade_md.errors import InputError, SystemMismatchError
from trade_md.formats.files import read_json
from trade_md.systems import MolecularSystem
from trade_md.thermo import kT

__all__ = [
    "BACKUP_NAME",
    "STORAGE_NAME",
    "RUN_RECORD_NAME",
    "RECORD_FORMAT",
    "METADATA_KEY",
    "ReplicaData",
    "backup_storage",
    "checkpoint_path",
    "read_record",
    "storage_fingerprint",
    "check_fingerprints",
    "check_system",
    "record_system",
    "read_storage",
    "recover_storage",
]

logger = logging.getLogger(__name__)

STORAGE_NAME = "replicas.nc"
"""openmmtools storage inside the out directory (its checkpoint file is ``replicas_checkpoint.nc``)."""
RUN_RECORD_NAME = "run.json"
"""What was run: settings, serialized system, platform, versions, wall and CPU time per segment."""
RECORD_FORMAT = "trade-md remd run/2"
_RECORD_FORMAT_REDRAW = "trade-md remd run/1"  # before velocity rescaling: its "langevin" redrew velocities
BACKUP_NAME = "backup"
"""Folder in the out directory with a copy of both storage files, made at an iteration boundary. NetCDF/HDF5 files
are not crash-safe: a process killed while writing can leave them unreadable, and resume then starts again from
this copy (:func:`recover_storage`)."""
METADATA_KEY = "trade_md_fingerprint"
"""Key of the system fingerprint (JSON text) in the storage's metadata."""

def checkpoint_path(storage: Path) -> Path:
    """The checkpoint file (positions) that belongs to ``storage``."""
    return storage.with_name(f"{storage.stem}_checkpoint{storage.suffix}")


def read_record(out: Path) -> tuple[dict[str, Any], Path]:
    """(``run.json`` as a dict, upgraded to :data:`RECORD_FORMAT`; the storage path) of the run in ``out``."""
    storage = out / STORAGE_NAME
    if not storage.is_file():
        raise InputError(f"no replica-exchange storage {storage}; run `trade-md remd --out {out}` first "
                         "or pass the directory it wrote")
    record_path = out / RUN_RECORD_NAME
    if not record_path.is_file():
        raise InputError(f"{record_path} is missing next to {storage}; it is written by `trade-md remd` — "
                         "use the directory of a complete run")
    record = read_json(record_path)
    if isinstance(record, dict) and record.get("format") == _RECORD_FORMAT_REDRAW:
        settings = record["settings"]
        if settings.get("integrator", "langevin") == "langevin":  # before the choice existed runs were Langevin
            settings["integrator"] = "langevin-redraw"
        record["format"] = RECORD_FORMAT
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise InputError(f"{record_path} is not a trade-md remd record; use the directory written by trade-md remd")
    return record, storage


def storage_fingerprint(storage: Path) -> dict[str, Any] | None:
    """The system fingerprint trade-md stored in the storage's metadata (None if absent), after checking that
    both NetCDF files exist and open (openmmtools itself retries a bad file for ~10 s before failing)."""
    import netCDF4
    from openmmtools import multistate

    checkpoint = checkpoint_path(storage)
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint} is missing; it holds the positions — keep it next to {storage}")
    for path in (storage, checkpoint):
        try:
            netCDF4.Dataset(path, "r").close()
        except OSError as error:
            raise InputError(f"cannot open {path} as NetCDF ({error}); the file is damaged or not openmmtools "
                             "storage — rerun trade-md remd") from None
    reporter = multistate.MultiStateReporter(str(storage), open_mode=None)
    try:
        reporter.open(mode="r")
        metadata = reporter.read_dict("metadata")
        reporter.read_mcmc_moves()
        reporter.read_sampler_states(reporter.read_last_iteration(last_checkpoint=True))
    except Exception as error:
        raise InputError(f"cannot read {storage} as openmmtools storage ({type(error).__name__}: {error}); "
                         "the file is damaged or not a replica-exchange storage") from None
    finally:
        reporter.close()
    text = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    return None if text is None else json.loads(text)


def backup_storage(reporter: Any, storage: Path) -> None:
    """Copy both storage files, flushed at an iteration boundary, into ``BACKUP_NAME/`` beside them. The copy is
    made in a temporary folder and swapped in by renames, so a complete copy exists at every moment."""
    reporter.sync()
    backup = storage.with_name(BACKUP_NAME)
    fresh, old = backup.with_name(BACKUP_NAME + ".tmp"), backup.with_name(BACKUP_NAME + ".old")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    for path in (storage, checkpoint_path(storage)):
        shutil.copy2(path, fresh / path.name)
    if backup.exists():
        shutil.rmtree(old, ignore_errors=True)
        backup.rename(old)
    fresh.rename(backup)
    shutil.rmtree(old, ignore_errors=True)


def recover_storage(storage: Path) -> dict[str, Any] | None:
    """:func:`storage_fingerprint` of ``storage``; when the storage is unreadable (a process
    killed while writing it) and a backup exists, the damaged files move to ``damaged-<time>/`` and the backup takes
    their place (logged as a warning: the iterations after the backup are run again)."""
    try:
        return storage_fingerprint(storage)
    except InputError as error:
        backup = storage.with_name(BACKUP_NAME)
        if not backup.is_dir():
            backup = storage.with_name(BACKUP_NAME + ".old")  # a crash between the two renames of a backup swap
        if not all((backup / path.name).is_file() for path in (storage, checkpoint_path(storage))):
            raise InputError(f"{error}; there is no backup to resume from (rerun trade-md remd)") from None
        damaged = storage.with_name(f"damaged-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        damaged.mkdir()
        for path in (storage, checkpoint_path(storage)):
            if path.exists():
                path.rename(damaged / path.name)
            shutil.copy2(backup / path.name, path)
        logger.warning("%s; resuming from the backup in %s (damaged files kept in %s); the iterations after the "
                       "backup run again", error, backup, damaged)
        return storage_fingerprint(storage)


def _same_fingerprint(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(json.loads(json.dumps(b)), sort_keys=True)


def check_fingerprints(record: dict[str, Any], stored: dict[str, Any] | None, storage: Path) -> None:
    """InputError unless the storage carries a fingerprint; SystemMismatchError unless it is the record's."""
    if stored is None:
        raise InputError(f"{storage} was not written by `trade-md remd` (no system fingerprint in its metadata); "
                         "analyse storage written by trade-md remd")
    if not _same_fingerprint(stored, record["fingerprint"]):
        raise SystemMismatchError(
            f"{storage} belongs to a system of {stored.get('n_atoms')} atoms with force field "
            f"{stored.get('forcefield')} but {RUN_RECORD_NAME} describes {record['system'].get('name')!r} "
            f"({record['fingerprint'].get('n_atoms')} atoms, {record['fingerprint'].get('forcefield')}); the storage "
            "was copied from another run — keep each storage with its own run.json"
        )


def check_system(system: MolecularSystem | None, run_system: MolecularSystem, storage: Path) -> None:
    """Raise :class:`SystemMismatchError` unless ``system`` (when given) is the run's system. Both fingerprints
    come from the current code, so a run stays comparable when the fingerprint gains fields."""
    if system is not None and not _same_fingerprint(system.fingerprint(), run_system.fingerprint()):
        raise SystemMismatchError(
            f"{storage} is a run of {run_system.name!r} ({run_system.n_atoms} atoms, force field "
            f"{list(run_system.forcefield)}), not of {system.name!r} ({system.n_atoms} atoms, "
            f"{list(system.forcefield)}); use the run of the same system, or drop the system options"
        )


def record_system(record: dict[str, Any]) -> MolecularSystem:
    """The run's system, rebuilt from its serialization in ``run.json``."""
    return MolecularSystem.deserialize(record["system"])


def _read_positions(storage: Path, last: int) -> np.ndarray:
    """Positions [last + 1, R, atoms, 3] nm of every stored iteration, read in one slice from the checkpoint file
    (openmmtools' per-iteration reader costs ~15 ms an iteration). The files must share their UUID."""
    import netCDF4

    checkpoint = checkpoint_path(storage)
    with netCDF4.Dataset(storage, "r") as analysis, netCDF4.Dataset(checkpoint, "r") as positions_file:
        if getattr(positions_file, "UUID", None) != getattr(analysis, "UUID", None):
            raise SystemMismatchError(f"{checkpoint} belongs to another run than {storage} (UUIDs differ); keep the "
                                      "two files of one run together")
        if int(getattr(analysis, "CheckpointInterval", 1)) != 1:
            raise InputError(f"{storage} stores positions every {analysis.CheckpointInterval} iterations; the analysis "
                             "needs every iteration (runs made by trade-md remd do that)")
        positions = np.ma.getdata(positions_file.variables["positions"][: last + 1])
    return np.asarray(positions, dtype=np.float64)


@dataclass
class ReplicaData:
    """Everything a replica-exchange storage holds, as arrays indexed by stored iteration (0 = minimised start).

    temperatures: [K] ladder in K; energies: [T, R] kJ/mol of replica r at iteration t; states: [T, R] ladder
    index of replica r; positions: [T, R, atoms, 3] nm; accepted, proposed: [K, K] exchange counts summed over
    iterations; record: run.json; system: the run's MolecularSystem.
    """

    temperatures: np.ndarray
    energies: np.ndarray
    states: np.ndarray
    positions: np.ndarray
    accepted: np.ndarray
    proposed: np.ndarray
    record: dict[str, Any]
    system: MolecularSystem

    @property
    def n_iterations(self) -> int:
        return int(self.energies.shape[0]) - 1

    @property
    def ps_per_iteration(self) -> float:
        """Simulated time per replica between exchanges, ps."""
        settings = self.record["settings"]
        return float(settings["steps_per_iteration"] * settings["timestep_fs"] * 1e-3)

    def by_state(self, values: np.ndarray, iterations: np.ndarray) -> np.ndarray:
        """Re-index ``values [n, R, ...]`` (per replica, at stored ``iterations`` [n]) to ``[n, K, ...]`` (per
        ladder state)."""
        order = np.argsort(self.states[iterations], axis=1)
        return np.take_along_axis(values, order.reshape(order.shape + (1,) * (values.ndim - 2)), axis=1)


def read_storage(
    out_dir: str | os.PathLike, *, system: MolecularSystem | None = None, max_iterations: int | None = None
) -> ReplicaData:
    """Read a ``trade-md remd`` directory read-only (up to ``max_iterations`` iterations after the start).

    Raises :class:`InputError` for a missing or unreadable storage and :class:`SystemMismatchError` when the
    storage belongs to another system than its ``run.json`` or than ``system``.
    """
    from openmmtools import multistate

    out = Path(out_dir)
    record, storage = read_record(out)
    check_fingerprints(record, storage_fingerprint(storage), storage)
    run_system = record_system(record)
    check_system(system, run_system, storage)
    temperatures = np.asarray(record["settings"]["temperatures"], dtype=np.float64)
    reporter = multistate.MultiStateReporter(str(storage), open_mode=None)
    try:
        reporter.open(mode="r")
        last = reporter.read_last_iteration(last_checkpoint=False)
        if max_iterations is not None:
            last = min(last, int(max_iterations))
        if last < 1:
            raise InputError(f"{storage} holds no iteration after the start; run (or resume) it longer")
        reduced, _, _ = reporter.read_energies(iteration=slice(0, last + 1))
        states = np.asarray(reporter.read_replica_thermodynamic_states(iteration=slice(0, last + 1)), dtype=np.int64)
        accepted, proposed = reporter.read_mixing_statistics(iteration=slice(1, last + 1))
    finally:
        reporter.close()
    positions = _read_positions(storage, last)
    # reduced[t, r, k] = U(x_tr) / (k_B T_k): any column gives U; the lowest temperature is the best conditioned.
    energies = np.asarray(reduced)[:, :, 0] * kT(temperatures[0])
    return ReplicaData(
        temperatures=temperatures, energies=energies, states=states, positions=positions,
        accepted=np.asarray(accepted).sum(axis=0), proposed=np.asarray(proposed).sum(axis=0), record=record,
        system=run_system,
    )
