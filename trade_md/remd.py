"""Parallel tempering with openmmtools: the runs behind every reference a generator is checked against.

One replica per temperature of a ladder (geometric ``"Tmin:Tmax:K"`` or an explicit comma list, K), exchanges of
all pairs (``swap-all``) after every ``steps_per_iteration`` steps. Dynamics (``integrator``): ``"langevin"``
(default; openmmtools ``LangevinDynamicsMove``, the BAOAB ``LangevinMiddleIntegrator``, 1 fs, 1/ps; a replica keeps
its velocities through an exchange, scaled by sqrt(T_new / T_old)), ``"langevin-redraw"`` (the same with velocities
redrawn from Maxwell-Boltzmann after every exchange: openmmtools' usual setting, and this package's default before
velocity rescaling) or ``"ghmc"`` (``GHMCMove``: a Metropolis test on every step, so the configurations are exactly
Boltzmann-distributed). Measured on alanine dipeptide, 2 ns per replica of the 300-1000 K ladder
(benchmarks/results/README.md): the redraws put ⟨U⟩ 0.6 / 2.1 / 5.3 kJ/mol above GHMC's at 300 / 600 / 1000 K
(0.5 ps at 1/ps friction does not relax what a fresh draw disturbs); the rescaled Langevin agrees with GHMC within
0.2 kJ/mol at every temperature, at Langevin's cost per step and with about ten times GHMC's effective samples for
ΔF (GHMC's momentum reversals on rejection slow the basin transitions); ΔF agrees among the three within its errors.

The out directory (:mod:`trade_md.formats.remd`) holds openmmtools' NetCDF storage, every iteration checkpointed so
a killed run resumes without losing iterations, ``run.json``, and ``backup/``: a copy of the storage made at an
iteration boundary (NetCDF/HDF5 files are not crash-safe; a resume finds a storage left unreadable by a kill and
restarts from the copy). The MBAR analysis is :mod:`trade_md.analysis.remd`; :mod:`trade_md.remd_data` turns the
frames drawn at one ladder temperature into a training dataset.

MPI: ``mpirun -n K trade-md remd ...`` (K at most the number of replicas; needs ``pip install "trade-md[mpi]"``)
distributes the replicas over ranks through openmmtools' own MPI support. Storage and ``run.json`` are written by
rank 0 only; every MPI call goes through :mod:`trade_md.mpi` (launcher checks, errors raised on every rank instead
of leaving one waiting, a resume that does not race rank 0's reopening of the storage).
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as unit

from trade_md import mpi
from trade_md.errors import InputError
from trade_md.formats.files import package_versions, write_json_atomic
from trade_md.formats.remd import (
    METADATA_KEY,
    RECORD_FORMAT,
    RUN_RECORD_NAME,
    STORAGE_NAME,
    backup_storage,
    check_fingerprints,
    check_system,
    read_record,
    record_system,
    recover_storage,
)
from trade_md.platforms import select_platform
from trade_md.progress import progress_bar
from trade_md.systems import MolecularSystem
from trade_md.thermo import kT, parse_temperatures

__all__ = [
    "DEFAULT_LADDER",
    "INTEGRATORS",
    "RemdSettings",
    "run_remd",
    "resume_remd",
    "rescaling_tempering_class",
    "maxwell_boltzmann",
]

_BACKUP_INTERVAL_S = 600.0
"""After the first iteration of every run segment, the storage is backed up this often (s)."""
_RECORD_INTERVAL_S = 60.0

DEFAULT_LADDER = "300:1000:9"
"""Default ``trade-md remd`` ladder: 9 geometric temperatures from 300 K to 1000 K."""
INTEGRATORS: dict[str, str] = {
    "ghmc": "openmmtools GHMCMove (Metropolis-corrected Langevin dynamics: exact configurations), velocities redrawn "
            "after every exchange",
    "langevin": "openmmtools LangevinDynamicsMove (LangevinMiddleIntegrator, BAOAB), velocities kept and scaled by "
                "sqrt(T_new / T_old) when an exchange moves a replica",
    "langevin-redraw": "openmmtools LangevinDynamicsMove (LangevinMiddleIntegrator, BAOAB), velocities redrawn after "
                       "every exchange",
}
"""The dynamics ``trade-md remd`` offers between exchanges, as recorded in ``run.json``."""


@dataclass(frozen=True)
class RemdSettings:
    """Parallel-tempering settings.

    temperatures: [K] increasing ladder; n_iterations: exchange attempts (the run simulates
    n_iterations × steps_per_iteration × timestep_fs per replica); collision_rate_per_ps: Langevin friction;
    mixing: openmmtools scheme, ``"swap-all"`` (Gibbs-like all-pair swaps) or ``"swap-neighbors"``;
    integrator: ``"langevin"`` (velocities rescaled at exchanges), ``"langevin-redraw"`` (redrawn; ⟨U⟩ and ln Z
    run high, module docs) or ``"ghmc"`` (Metropolis-corrected, exact, slower per step and in basin transitions).
    """

    temperatures: tuple[float, ...]
    n_iterations: int
    steps_per_iteration: int = 500
    timestep_fs: float = 1.0
    collision_rate_per_ps: float = 1.0
    mixing: str = "swap-all"
    integrator: str = "langevin"

    def __post_init__(self) -> None:
        parse_temperatures(list(self.temperatures), ladder=True)
        if int(self.n_iterations) != self.n_iterations or self.n_iterations < 1:
            raise InputError(f"n_iterations must be a positive integer, got {self.n_iterations}")
        if int(self.steps_per_iteration) != self.steps_per_iteration or self.steps_per_iteration < 1:
            raise InputError(f"steps per iteration must be a positive integer, got {self.steps_per_iteration}")
        if not (math.isfinite(self.timestep_fs) and 0 < self.timestep_fs <= 5):
            raise InputError(f"timestep {self.timestep_fs} fs is outside (0, 5] fs; use 1 fs without constraints")
        if not (math.isfinite(self.collision_rate_per_ps) and self.collision_rate_per_ps > 0):
            raise InputError(f"collision rate must be > 0 /ps, got {self.collision_rate_per_ps}; e.g. 1.0")
        if self.mixing not in ("swap-all", "swap-neighbors"):
            raise InputError(f"mixing {self.mixing!r} unknown; choose swap-all or swap-neighbors")
        if self.integrator not in INTEGRATORS:
            raise InputError(f"integrator {self.integrator!r} unknown; choose one of {', '.join(INTEGRATORS)}")

    @property
    def ps_per_iteration(self) -> float:
        return self.steps_per_iteration * self.timestep_fs * 1e-3

    @staticmethod
    def iterations_for(ns_per_replica: float, steps_per_iteration: int, timestep_fs: float) -> int:
        """Number of iterations that simulate ``ns_per_replica`` ns per replica (at least 1)."""
        if not (math.isfinite(ns_per_replica) and ns_per_replica > 0):
            raise InputError(f"--ns-per-replica must be > 0, got {ns_per_replica}")
        return max(1, round(ns_per_replica * 1e6 / (steps_per_iteration * timestep_fs)))


# ----------------------------------------------------------------------------------------------------- running


def _platform(system: MolecularSystem, name: str, cpu_threads: int) -> tuple[str, dict[str, str]]:
    """The platform policy's choice (:func:`trade_md.platforms.select_platform`), made once on rank 0."""
    return mpi.run_on_root(select_platform, system, name, threads=cpu_threads, purpose="dynamics")


def _configure_context_caches(sampler: Any, platform_name: str, properties: dict[str, str]) -> None:
    """Give the sampler its own context caches on the chosen platform (openmmtools defaults to the global one)."""
    from openmmtools import cache

    platform = openmm.Platform.getPlatformByName(platform_name)
    for attribute in ("energy_context_cache", "sampler_context_cache"):
        setattr(sampler, attribute, cache.ContextCache(platform=platform, platform_properties=dict(properties) or None,
                                                       capacity=None, time_to_live=None))


def run_remd(
    system: MolecularSystem,
    settings: RemdSettings,
    out_dir: str | os.PathLike,
    *,
    platform: str = "auto",
    cpu_threads: int = 1,
    progress: bool = True,
    command: str | None = None,
    callback: Callable[[int], None] | None = None,
) -> Path:
    """Start parallel tempering of ``system`` into the new directory ``out_dir``; returns the storage path.

    The starting structure is minimised, then every replica runs ``settings.n_iterations`` iterations.
    ``callback(iteration)`` is called after each stored iteration (rank 0). Refuses to overwrite an existing
    storage (use :func:`resume_remd`). progress: a progress bar (rank 0) when the caller enabled bars.
    """
    from openmmtools import mcmc, multistate, states

    out = Path(out_dir)
    storage = out / STORAGE_NAME
    rank, size = mpi.rank_size()
    mpi.check_ranks(size, len(settings.temperatures))
    if mpi.run_on_root(storage.exists):  # rank 0 decides: it creates the file
        raise InputError(f"{storage} already exists; continue it with --resume or choose a new --out directory")
    platform_name, properties = _platform(system, platform, cpu_threads)
    move_class = mcmc.GHMCMove if settings.integrator == "ghmc" else mcmc.LangevinDynamicsMove
    rescale = settings.integrator == "langevin"
    move = move_class(
        timestep=settings.timestep_fs * unit.femtosecond,
        collision_rate=settings.collision_rate_per_ps / unit.picosecond,
        n_steps=int(settings.steps_per_iteration),
        reassign_velocities=not rescale,
        n_restart_attempts=4,
    )
    sampler_class = rescaling_tempering_class() if rescale else multistate.ParallelTemperingSampler
    sampler = sampler_class(
        mcmc_moves=move, number_of_iterations=int(settings.n_iterations), online_analysis_interval=None,
        replica_mixing_scheme=settings.mixing,
    )
    _configure_context_caches(sampler, platform_name, properties)
    reporter = multistate.MultiStateReporter(str(storage), checkpoint_interval=1)
    reference_state = states.ThermodynamicState(system.system, temperature=settings.temperatures[0] * unit.kelvin)
    metadata = {METADATA_KEY: json.dumps(system.fingerprint(), sort_keys=True)}
    sampler.create(reference_state, states.SamplerState(system.positions * unit.nanometer), reporter,
                   temperatures=[t * unit.kelvin for t in settings.temperatures],
                   n_temperatures=len(settings.temperatures), metadata=metadata)
    sampler.minimize()
    record = {
        "format": RECORD_FORMAT,
        "command": command,
        "storage": STORAGE_NAME,
        "settings": {**asdict(settings), "temperatures": list(settings.temperatures)},
        "integrator": INTEGRATORS[settings.integrator],
        "fingerprint": system.fingerprint(),
        "system": system.serialize(),
        "platform": {"name": platform_name, "properties": properties},
        "versions": package_versions("openmm", "openmmtools", "pymbar", "numpy"),
        "segments": [],
    }
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / RUN_RECORD_NAME, record)
    _run_iterations(sampler, record, out, int(settings.n_iterations), size, progress, callback)
    return storage


@functools.cache
def rescaling_tempering_class() -> type:
    """openmmtools ``ParallelTemperingSampler`` whose replicas keep their velocities across exchanges, scaled by
    sqrt(T_new / T_old), so the dynamics a replica continues stay close to stationary (the velocity law of a
    harmonic mode scales with T; measured against GHMC in the module docs); a replica without velocities or at
    rest (the start: openmmtools stores the minimised structure with zero velocities) gets a Maxwell-Boltzmann draw
    at its temperature."""
    from openmmtools import multistate

    class RescalingParallelTempering(multistate.ParallelTemperingSampler):
        def _mix_replicas(self) -> Any:
            before = np.array(self._replica_thermodynamic_states)
            after = super()._mix_replicas()  # openmmtools mixes on rank 0 and broadcasts the result to all
            temperatures = [s.temperature.value_in_unit(unit.kelvin) for s in self._thermodynamic_states]
            for replica, (old, new) in enumerate(zip(before, after, strict=True)):
                sampler_state = self._sampler_states[replica]
                velocities = sampler_state.velocities
                if velocities is None or not np.any(velocities.value_in_unit(unit.nanometer / unit.picosecond)):
                    system = self._thermodynamic_states[new].system
                    sampler_state.velocities = maxwell_boltzmann(system, temperatures[new]) * (
                        unit.nanometer / unit.picosecond)
                elif old != new:
                    sampler_state.velocities = velocities * math.sqrt(temperatures[new] / temperatures[old])
            return after

    return RescalingParallelTempering


def maxwell_boltzmann(system: Any, temperature: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Velocities [nm/ps], shape (n_particles, 3), drawn from the Maxwell-Boltzmann law at ``temperature`` K for
    the masses of the OpenMM ``system`` (massless particles stay at rest)."""
    rng = np.random.default_rng() if rng is None else rng
    masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())])
    sd = np.sqrt(kT(temperature) / np.where(masses > 0, masses, np.inf))  # kJ/mol / amu = (nm/ps)^2
    return rng.standard_normal((len(masses), 3)) * sd[:, None]


def resume_remd(
    out_dir: str | os.PathLike,
    *,
    system: MolecularSystem | None = None,
    n_iterations: int | None = None,
    platform: str | None = None,
    cpu_threads: int = 1,
    progress: bool = True,
    callback: Callable[[int], None] | None = None,
) -> Path:
    """Continue the run in ``out_dir`` from its last stored iteration up to ``n_iterations`` (default: the
    original target; a larger number extends the run).

    ``system``, when given, must be the system of the run (else :class:`SystemMismatchError`). ``platform``
    defaults to the one recorded in ``run.json``. A storage left unreadable by a kill is restored from the backup.
    """
    from openmmtools import multistate

    out = Path(out_dir)
    record, storage = read_record(out)
    rank, size = mpi.rank_size()
    mpi.check_ranks(size, len(record["settings"]["temperatures"]))
    stored = mpi.run_on_root(recover_storage, storage)
    check_fingerprints(record, stored, storage)
    run_system = record_system(record)
    check_system(system, run_system, storage)
    platform_name, properties = _platform(run_system, platform or record["platform"]["name"], cpu_threads)
    record["platform"] = {"name": platform_name, "properties": properties}
    rescale = record["settings"]["integrator"] == "langevin"
    sampler_class = rescaling_tempering_class() if rescale else multistate.ParallelTemperingSampler
    sampler = mpi.sampler_from_storage(sampler_class, storage)
    if any(bool(move.reassign_velocities) == rescale for move in sampler._mcmc_moves):
        kept, stored_scheme = ("keeps", "redraw") if rescale else ("redraws", "keep")
        sampler._reporter.close()
        raise InputError(f"{out / RUN_RECORD_NAME} says integrator {record['settings']['integrator']!r}, which {kept} "
                         f"velocities at exchanges, but the dynamics stored in {storage} {stored_scheme} them; the "
                         "record was edited or belongs to another run — restore the run's own run.json")
    _configure_context_caches(sampler, platform_name, properties)
    target = int(record["settings"]["n_iterations"] if n_iterations is None else n_iterations)
    if target < sampler.iteration:
        raise InputError(f"the run already has {sampler.iteration} iterations, more than the {target} requested; "
                         "ask for more to extend it")
    if target > sampler.number_of_iterations:  # a stored property: assign only to extend
        sampler.number_of_iterations = target
    record["settings"]["n_iterations"] = max(target, int(record["settings"]["n_iterations"]))
    if rank == 0:
        write_json_atomic(out / RUN_RECORD_NAME, record)
    _run_iterations(sampler, record, out, target, size, progress, callback)
    return storage


def _run_iterations(sampler: Any, record: dict[str, Any], out: Path, target: int, n_ranks: int, progress: bool,
                    callback: Callable[[int], None] | None) -> None:
    """Run ``sampler`` to ``target`` iterations one at a time with a progress bar; time every segment in
    ``run.json`` and back the storage up (rank 0); close the storage even on interruption."""
    from openmmtools import cache

    global_contexts = len(cache.global_context_cache)
    rank = mpi.rank_size()[0]
    first = int(sampler.iteration)
    segment = {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "first_iteration": first, "last_iteration": first, "wall_s": 0.0, "cpu_s": 0.0,
               "n_ranks": n_ranks, "platform": record["platform"]["name"], **mpi.describe()}
    record["segments"].append(segment)
    k = len(record["settings"]["temperatures"])
    accepted, proposed = np.zeros((k, k)), np.zeros((k, k))
    wall0, cpu0, last_write = time.perf_counter(), time.process_time(), time.perf_counter()
    last_backup = -math.inf
    try:
        with progress_bar(total=target, initial=first, desc="remd", unit="it", enabled=progress and rank == 0) as bar:
            while sampler.iteration < target:
                sampler.run(n_iterations=1)
                accepted += getattr(sampler, "_n_accepted_matrix", 0.0)
                proposed += getattr(sampler, "_n_proposed_matrix", 0.0)
                neighbour = [accepted[i, i + 1] / proposed[i, i + 1] for i in range(k - 1) if proposed[i, i + 1] > 0]
                bar.update(1)
                if neighbour:
                    bar.set_postfix({"acceptance": f"{np.mean(neighbour):.2f}", "min": f"{np.min(neighbour):.2f}"},
                                    refresh=False)
                segment.update(last_iteration=int(sampler.iteration), wall_s=time.perf_counter() - wall0,
                               cpu_s=time.process_time() - cpu0)
                if rank == 0 and time.perf_counter() - last_write > _RECORD_INTERVAL_S:
                    write_json_atomic(out / RUN_RECORD_NAME, record)
                    last_write = time.perf_counter()
                if rank == 0 and time.perf_counter() - last_backup > _BACKUP_INTERVAL_S:
                    backup_storage(sampler._reporter, out / STORAGE_NAME)
                    last_backup = time.perf_counter()
                if callback is not None and rank == 0:
                    callback(int(sampler.iteration))
    finally:
        segment.update(last_iteration=int(sampler.iteration), wall_s=time.perf_counter() - wall0,
                       cpu_s=time.process_time() - cpu0, context_platform=_context_platform(sampler),
                       global_cache_contexts_added=len(cache.global_context_cache) - global_contexts)
        if rank == 0:
            write_json_atomic(out / RUN_RECORD_NAME, record)
        reporter = getattr(sampler, "_reporter", None)
        if reporter is not None and rank == 0:
            reporter.close()


def _context_platform(sampler: Any) -> str | None:
    """Platform of the contexts the sampler actually propagates with (a check that the cache was honoured)."""
    try:
        state = sampler._thermodynamic_states[0]
        context, _ = sampler.sampler_context_cache.get_context(state)
        return str(context.getPlatform().getName())
    except Exception:  # diagnostics only: never fail a finished run over it
        return None
