"""The MD dataset: frames at one temperature, as ``trade-md md`` and ``trade-md remd-data`` write them.

A dataset directory holds ``run.json`` (format :data:`DATASET_FORMAT`, written last: a directory without it is
incomplete), ``system.json`` (the serialized system), ``data.npz`` (positions ``[n, atoms, 3]`` nm, potential
energies ``[n]`` kJ/mol, times ``[n]`` ps, run index ``[n]``, optionally kinetic energies), ``topology.pdb`` and
``trajectory.dcd`` (for viewers).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trade_md.errors import InputError
from trade_md.formats.files import atomic_write_path, package_versions, read_json, write_json_atomic
from trade_md.systems import MolecularSystem

__all__ = ["DATASET_FORMAT", "Dataset", "load_dataset", "write_dataset"]

DATASET_FORMAT = "trade-md-md/1"


@dataclass
class Dataset:
    """Frames of a finished ``trade-md md`` run.

    positions: [n, atoms, 3] nm float64; energies: [n] potential energies kJ/mol; temperature: K;
    metadata: the contents of run.json; times: [n] ps in each run; run: [n] replica index (zeros by default);
    path: the dataset directory, when read from disk.
    """

    positions: np.ndarray
    energies: np.ndarray
    temperature: float
    system: MolecularSystem
    metadata: dict[str, Any]
    times: np.ndarray | None = None
    run: np.ndarray | None = None
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.run is None:
            self.run = np.zeros(len(self.positions), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)


def write_dataset(
    out: Path, system: MolecularSystem, temperature: float, *, positions: np.ndarray, energies: np.ndarray,
    times: np.ndarray, run: np.ndarray, record: dict[str, Any], kinetic_energies: np.ndarray | None = None,
    convergence: dict[str, Any],
) -> Dataset:
    """Write frames at ``temperature`` (K) as a dataset directory that :func:`load_dataset` reads.

    positions: [n, atoms, 3] nm; energies, kinetic_energies: [n] kJ/mol; times: [n] ps within each run; run: [n]
    index of the independent run each frame comes from (a run's frames contiguous, in time order). ``record`` adds
    provenance to run.json, which is written last (a directory without it is incomplete). ``convergence``: the
    basin-convergence report of the frames (:func:`trade_md.convergence.convergence_report`), stored in run.json.
    """
    import mdtraj

    positions = np.asarray(positions, dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "system.json", system.serialize())
    arrays = {"positions": positions, "potential_energies": energies, "times": times, "run": run}
    if kinetic_energies is not None:
        arrays["kinetic_energies"] = kinetic_energies
    with atomic_write_path(out / "data.npz") as temp, open(temp, "wb") as handle:
        np.savez(handle, **arrays)
    with atomic_write_path(out / "topology.pdb") as temp:
        temp.write_text(system.pdb_text(positions[0]))
    with atomic_write_path(out / "trajectory.dcd") as temp:
        mdtraj.Trajectory(positions, mdtraj.Topology.from_openmm(system.topology)).save_dcd(str(temp))
    metadata = {
        **record,
        "format": DATASET_FORMAT,
        "temperature": float(temperature),
        "complete": True,
        "system": system.fingerprint(),
        "n_frames": int(len(times)),
        "mean_potential_energy": float(np.mean(energies)),
        "convergence": convergence,
        "files": {"topology": "topology.pdb", "trajectory": "trajectory.dcd", "arrays": "data.npz",
                  "system": "system.json"},
        "versions": package_versions("openmm", "mdtraj", "numpy"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(out / "run.json", metadata)
    return Dataset(positions.astype(np.float64), np.asarray(energies, dtype=np.float64), float(temperature), system,
                   metadata, np.asarray(times), np.asarray(run), out)


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read a complete ``trade-md md`` output directory; an incomplete or damaged one raises InputError."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"MD dataset {root} does not exist; run `trade-md md ... --out {root}` first")
    if not (root / "run.json").is_file():
        if (root / "plan.json").is_file():
            raise InputError(f"MD dataset {root} is incomplete (no run.json: the run was interrupted); finish it by "
                             f"repeating the `trade-md md` command with --resume --out {root}")
        raise InputError(f"{root} is not a trade-md MD dataset (no run.json); pass the --out directory of "
                         "`trade-md md`")
    metadata = read_json(root / "run.json")
    if metadata.get("format") != DATASET_FORMAT or not metadata.get("complete"):
        raise InputError(f"{root}/run.json is not a complete {DATASET_FORMAT} record; regenerate the dataset")
    system = MolecularSystem.deserialize(read_json(root / "system.json"))
    try:
        with np.load(root / "data.npz") as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise InputError(f"{root}/data.npz is missing or damaged ({error}); regenerate the dataset") from None
    positions = arrays["positions"].astype(np.float64)
    if positions.shape != (metadata["n_frames"], system.n_atoms, 3):
        raise InputError(f"{root}/data.npz holds positions {positions.shape}, run.json expects "
                         f"({metadata['n_frames']}, {system.n_atoms}, 3); the files do not belong together")
    return Dataset(positions, arrays["potential_energies"], float(metadata["temperature"]), system, metadata,
                   arrays["times"], arrays["run"], root)
