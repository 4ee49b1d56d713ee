"""Weighted samples at one temperature (:class:`SampleSet`) and their files.

A :class:`SampleSet` holds what :class:`trade_md.sampler.Sampler` draws: positions (nm), potential energies
(kJ/mol), ``log q`` and self-normalised importance log-weights ``log w = −U/(k_B T) − log q`` (``logsumexp = 0``,
``−inf`` for dropped samples), with the Kish ESS, the weights' tail shape and weighted resampling.
:meth:`SampleSet.save` writes ``samples.npz`` (and, with a topology, ``samples.dcd`` + ``topology.pdb``) atomically.

>>> samples = SampleSet(np.zeros((2, 1)), np.zeros(2), np.zeros(2), np.log([0.5, 0.5]), np.zeros(2, dtype=bool), 300.0)
>>> samples.ess, samples.weights.tolist()
(1.0, [0.5, 0.5])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trade_md.analysis.metrics import kish_ess, normalized_weights, pareto_k
from trade_md.annealing import Annealing
from trade_md.errors import InputError
from trade_md.formats.files import atomic_write_path

__all__ = ["SampleSet"]


@dataclass
class SampleSet:
    """Samples at one temperature with their importance weights.

    positions: ``[n, atoms, 3]`` nm (``[n, d]`` for toys); energies: ``[n]`` kJ/mol; log_q: ``[n]`` nats;
    log_weights: ``[n]`` normalised (``logsumexp = 0``, ``−inf`` for dropped samples); wrong_chirality: ``[n]``;
    mixture: the proposal's other components ``(T_j K, fraction f_j)`` (empty: ``q(x | T)`` alone), in which case
    ``log_q`` is the mixture's log density; calibrated: drawn from the basin-calibrated proposal (``log_q`` is its
    log density, see :mod:`trade_md.basins`); annealing: drawn by annealed importance sampling (``log_q`` is
    ``−U/(k_B T) − log W``, see :mod:`trade_md.annealing`) with the Metropolis acceptance rate of each intermediate
    level in ``acceptance`` ``[levels − 1]``.
    """

    positions: np.ndarray
    energies: np.ndarray
    log_q: np.ndarray
    log_weights: np.ndarray
    wrong_chirality: np.ndarray
    temperature: float
    mixture: tuple[tuple[float, float], ...] = ()
    calibrated: bool = False
    annealing: Annealing | None = None
    acceptance: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.energies.shape[0])

    @property
    def weights(self) -> np.ndarray:
        """Normalised importance weights ``[n]`` summing to 1."""
        return normalized_weights(self.log_weights)

    @property
    def ess(self) -> float:
        """Kish effective sample size as a fraction of ``n``."""
        return kish_ess(self.log_weights)

    @property
    def pareto_k(self) -> float:
        """Tail shape of the weights (:func:`trade_md.analysis.metrics.pareto_k`); above 0.7 this draw's ESS is unreliable."""
        return pareto_k(self.log_weights)

    def resample(self, n: int, seed: int | None = None) -> np.ndarray:
        """``n`` positions drawn with replacement in proportion to the weights (approximately Boltzmann-distributed)."""
        index = np.random.default_rng(seed).choice(len(self), size=n, replace=True, p=self.weights)
        return self.positions[index]

    def to_mdtraj(self, topology: Any) -> Any:
        """An ``mdtraj.Trajectory`` of the samples; topology: ``openmm.app.Topology`` or ``mdtraj.Topology``."""
        import mdtraj

        if self.positions.ndim != 3:
            raise InputError("only molecular samples ([n, atoms, 3]) can become an mdtraj trajectory")
        if not isinstance(topology, mdtraj.Topology):
            topology = mdtraj.Topology.from_openmm(topology)
        return mdtraj.Trajectory(self.positions.astype(np.float32), topology)

    def _annealing_record(self) -> dict[str, np.ndarray]:
        if self.annealing is None:
            return {}
        return {"annealing_levels": np.int64(self.annealing.levels), "annealing_steps": np.int64(self.annealing.steps),
                "annealing_step_size": np.float64(self.annealing.step_size),
                "annealing_acceptance": np.asarray(self.acceptance, dtype=np.float64)}

    def save(self, directory: str | os.PathLike, topology: Any | None = None) -> Path:
        """Write ``samples.npz`` (energies, log q, log-weights, chirality, T) and, with a topology,
        ``samples.dcd`` + ``topology.pdb``. Files are written atomically. Returns the directory."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if topology is not None:
            trajectory = self.to_mdtraj(topology)
            with atomic_write_path(out / "topology.pdb") as temp:
                trajectory[0].save_pdb(str(temp))
            with atomic_write_path(out / "samples.dcd") as temp:
                trajectory.save_dcd(str(temp))
        with atomic_write_path(out / "samples.npz") as temp:
            with open(temp, "wb") as handle:
                np.savez(
                    handle,
                    energies_kj_per_mol=self.energies,
                    log_q=self.log_q,
                    log_weights=self.log_weights,
                    wrong_chirality=self.wrong_chirality,
                    temperature_k=np.float64(self.temperature),
                    mixture_temperatures_k=np.array([t for t, _ in self.mixture], dtype=np.float64),
                    mixture_fractions=np.array([f for _, f in self.mixture], dtype=np.float64),
                    basin_calibrated=np.bool_(self.calibrated),
                    **self._annealing_record(),
                    **({} if topology is not None else {"positions_nm": self.positions}),
                )
        return out
