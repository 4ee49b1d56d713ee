"""Boundary data from parallel tempering (``trade-md remd-data``): every frame that ``trade-md remd`` runs drew at
one ladder temperature, written as a ``trade-md md`` dataset (:mod:`trade_md.formats.dataset`).

For molecules whose slow modes plain MD at T0 never crosses: tempering equilibrates them (alanine dipeptide's cis
peptide bonds: none in 30 ns of 600 K MD, 6-11 % per bond in 4 ns at 1000 K).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trade_md.errors import InputError
from trade_md.formats.dataset import Dataset, write_dataset
from trade_md.formats.remd import read_storage
from trade_md.convergence import dataset_convergence

__all__ = ["export_dataset"]


def export_dataset(
    run_dirs: Sequence[str | os.PathLike], temperature: float, out: str | os.PathLike, *, discard_ps: float = 50.0
) -> Dataset:
    """The frames that ``trade-md remd`` runs drew at one ladder temperature (K), written as a boundary dataset
    (the ``trade-md md`` format, :func:`trade_md.formats.dataset.load_dataset`) at ``out``.

    One frame per iteration after ``discard_ps`` ps; ``run`` numbers the runs, ``times`` is ps since the run's
    start. An existing dataset at ``out`` is never overwritten. Convergence problems are ``ConvergenceWarning``
    warnings and are recorded in the dataset's metadata.
    """
    if not run_dirs:
        raise InputError("give at least one trade-md remd directory")
    if not (math.isfinite(discard_ps) and discard_ps >= 0):
        raise InputError(f"--discard-ps must be >= 0 ps, got {discard_ps}")
    if (Path(out) / "run.json").exists():
        raise InputError(f"{out} already holds a dataset; choose another --out (or delete it to rebuild it)")
    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    system = None
    sources = []
    for run_dir in run_dirs:
        data = read_storage(run_dir, system=system)
        system = data.system
        matches = np.flatnonzero(np.isclose(data.temperatures, float(temperature), rtol=0.0, atol=1e-3))
        if matches.size != 1:
            raise InputError(f"{temperature:g} K is not on the ladder of {run_dir} "
                             f"({', '.join(f'{t:g}' for t in data.temperatures)} K); pick one of those")
        ps = data.ps_per_iteration
        iterations = np.arange(max(1, math.ceil(discard_ps / ps)), data.n_iterations + 1)
        if iterations.size == 0:
            raise InputError(f"{run_dir} has {data.n_iterations} iterations ({data.n_iterations * ps:g} ps), none "
                             f"after --discard-ps {discard_ps:g}; lower it or run longer")
        replica = np.argmax(data.states[iterations] == matches[0], axis=1)
        pieces.append((data.positions[iterations, replica], data.energies[iterations, replica], iterations * ps))
        sources.append({"dir": str(run_dir), "frames": int(iterations.size), "ps_per_frame": ps,
                        "ladder": [float(t) for t in data.temperatures]})
    record = {"source": "trade-md remd", "runs": sources, "discard_ps": float(discard_ps)}
    positions = np.concatenate([p[0] for p in pieces])
    run = np.concatenate([np.full(len(p[2]), k, dtype=np.int64) for k, p in enumerate(pieces)])
    convergence = dataset_convergence(system.topology, positions, run,
                                      remedy="extend the runs (trade-md remd --resume --ns-per-replica N) or pool more "
                                             "of them")
    return write_dataset(
        Path(out), system, float(temperature), positions=positions,
        energies=np.concatenate([p[1] for p in pieces]), times=np.concatenate([p[2] for p in pieces]),
        run=run, record=record, convergence=convergence)
