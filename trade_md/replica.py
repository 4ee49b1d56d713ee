"""Parallel tempering with openmmtools and its MBAR analysis: the reference every generator is checked against.

Running (``trade-md remd``): one replica per temperature of a ladder (geometric ``"Tmin:Tmax:K"`` or an explicit
comma list, K), exchanges of all pairs (``swap-all``) after every ``steps_per_iteration`` steps. Dynamics
(``integrator``): ``"langevin"`` (default; openmmtools ``LangevinDynamicsMove``, the BAOAB
``LangevinMiddleIntegrator``, 1 fs, 1/ps; a replica keeps its velocities through an exchange, scaled by
sqrt(T_new / T_old)), ``"langevin-redraw"`` (the same with velocities redrawn from Maxwell-Boltzmann after every
exchange: openmmtools' usual setting, and this package's default before velocity rescaling) or ``"ghmc"``
(``GHMCMove``: a Metropolis test on every step, so the configurations are exactly Boltzmann-distributed).
Measured on alanine dipeptide, 2 ns per replica of the 300-1000 K ladder (benchmarks/results/README.md): the
redraws put ⟨U⟩ 0.6 / 2.1 / 5.3 kJ/mol above GHMC's at 300 / 600 / 1000 K (0.5 ps at 1/ps friction does not
relax what a fresh draw disturbs); the rescaled Langevin agrees with GHMC within 0.2 kJ/mol at every temperature,
at Langevin's cost per step and with about ten times GHMC's effective samples for ΔF (GHMC's momentum reversals on
rejection slow the basin transitions); ΔF agrees among the three within its errors. The out directory
holds openmmtools' NetCDF storage (``replicas.nc`` + ``replicas_checkpoint.nc``, every iteration checkpointed so a
killed run resumes without losing iterations) and ``run.json`` (the serialized system, its fingerprint, the ladder,
the integrator settings, the platform, versions, wall/CPU time per run segment).

MPI: ``mpirun -n K trade-md remd ...`` distributes the replicas over ranks through openmmtools' own MPI support
(mpiplus; needs ``pip install "trade-md[mpi]"``, K at most the number of replicas; :mod:`trade_md.mpi`). Storage
and ``run.json`` are written by rank 0 only.

Analysis (``trade-md reference``): equilibration detection on the total reduced energy and the statistical
inefficiency g of the slowest observable (the energy or the φ > 0 basin indicator); MBAR over every equilibrated
sample of every replica, which for tempering needs no re-evaluation (u_k(x) = U(x) / (k_B T_k)); at any
temperature in [Tmin, Tmax] (off-ladder ones as unsampled states): ⟨U⟩, ln Z relative to Tmin, Ramachandran
histograms (36 × 36 bins on [−π, π)²) and ΔF = F(φ > 0) − F(φ < 0) = −k_B T ln(P(φ > 0) / P(φ < 0)), with standard
errors from a block bootstrap over 2g-iteration blocks (MBAR's asymptotic errors would ignore the time
correlation); diagnostics (exchange acceptance, round trips, MBAR overlap). Poor overlap, too few blocks or a
failed MBAR solve is a warning on stderr and in the summary. The subsample spaced by g is exported per ladder
temperature as DCD + PDB topology (mdtraj-readable) for evaluating a generator's NLL.

Boundary data (``trade-md remd-data RUN [RUN ...] --temperature T0 --out DIR``): every frame the runs drew at one
ladder temperature, written as a ``trade-md md`` dataset, for molecules whose slow modes plain MD at T0 never
crosses (alanine dipeptide's cis peptide bonds at 600 K).

>>> parse_temperatures("300:1000:3").round(1).tolist()
[300.0, 547.7, 1000.0]
>>> parse_temperatures("300, 400,500").tolist()
[300.0, 400.0, 500.0]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trade_md import mpi
from trade_md.errors import InputError, SystemMismatchError
from trade_md.io import atomic_write_path, package_versions, read_json, write_json_atomic
from trade_md.units import KB, kT

if TYPE_CHECKING:
    from trade_md.md import Dataset
    from trade_md.mbar import MBAREstimator
    from trade_md.systems import MolecularSystem

__all__ = [
    "STORAGE_NAME",
    "RUN_RECORD_NAME",
    "POOR_OVERLAP",
    "DEFAULT_LADDER",
    "DEFAULT_TARGET_TEMPERATURES",
    "parse_temperatures",
    "geometric_ladder",
    "RemdSettings",
    "select_platform",
    "run_remd",
    "resume_remd",
    "ReplicaData",
    "PooledSamples",
    "read_storage",
    "count_round_trips",
    "union_ladder",
    "analyse_reference",
    "combine_summaries",
    "export_frames",
    "export_dataset",
    "register_cli",
]

logger = logging.getLogger(__name__)

STORAGE_NAME = "replicas.nc"
"""openmmtools storage inside the out directory (its checkpoint file is ``replicas_checkpoint.nc``)."""
RUN_RECORD_NAME = "run.json"
"""What was run: settings, serialized system, platform, versions, wall and CPU time per segment."""
POOR_OVERLAP = 0.03
"""Smallest acceptable MBAR overlap O[k, k+1] between neighbouring ladder temperatures."""
DEFAULT_TARGET_TEMPERATURES: tuple[float, ...] = (300.0, 400.0, 450.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0)
"""Temperatures (K) reported by ``trade-md reference`` besides the ladder (those inside the ladder's range)."""
DEFAULT_LADDER = "300:1000:9"
"""Default ``trade-md remd`` ladder: 9 geometric temperatures from 300 K to 1000 K."""
_METADATA_KEY = "trade_md_fingerprint"
_RECORD_FORMAT = "trade-md remd run/2"
_RECORD_FORMAT_REDRAW = "trade-md remd run/1"  # before velocity rescaling: its "langevin" redrew velocities
_SUMMARY_FORMAT = "trade-md reference summary/1"
_RECORD_INTERVAL_S = 60.0
BACKUP_NAME = "backup"
"""Folder in the out directory with a copy of both storage files, made at an iteration boundary: after the first
iteration of every segment, then every ``_BACKUP_INTERVAL_S`` seconds. NetCDF/HDF5 files are not crash-safe: a
process killed while writing can leave them unreadable, and resume then starts again from this copy."""
_BACKUP_INTERVAL_S = 600.0


# ----------------------------------------------------------------------------------------------------- ladder


def geometric_ladder(t_min: float, t_max: float, n: int) -> np.ndarray:
    """``n`` temperatures [K] from ``t_min`` to ``t_max`` with a constant ratio (equal exchange rates for a
    heat capacity independent of T)."""
    spec = f"{t_min}:{t_max}:{n}"
    if not all(math.isfinite(t) and t > 0 for t in (t_min, t_max)):
        raise InputError(f"temperatures must be finite and > 0 K, got {spec!r}; e.g. 300:1000:9")
    if int(n) != n or n < 2:
        raise InputError(f"a ladder needs at least 2 temperatures, got {n}; e.g. 300:1000:9")
    if not t_max > t_min:
        raise InputError(f"Tmax {t_max} K must exceed Tmin {t_min} K; write the ladder as Tmin:Tmax:K, e.g. 300:1000:9")
    return np.geomspace(float(t_min), float(t_max), int(n))


def parse_temperatures(spec: str | Sequence[float]) -> np.ndarray:
    """A temperature ladder [K] from ``"Tmin:Tmax:K"`` (geometric), ``"T1,T2,..."`` or a sequence of floats.

    The ladder must have at least two finite temperatures > 0 in strictly increasing order.
    """
    if not isinstance(spec, str):
        values = [float(t) for t in spec]
        _check_ladder_values(values, str(list(spec)))
        return np.asarray(values, dtype=np.float64)
    text = spec.strip()
    if ":" in text:
        parts = [p.strip() for p in text.split(":")]
        if len(parts) != 3:
            raise InputError(f"temperature ladder {spec!r} must be Tmin:Tmax:K, e.g. 300:1000:9")
        t_min, t_max = (_number(p, spec) for p in parts[:2])
        try:
            n = int(parts[2])
        except ValueError:
            raise InputError(f"the number of temperatures in {spec!r} must be an integer, e.g. 300:1000:9") from None
        return geometric_ladder(t_min, t_max, n)
    values = [_number(p.strip(), spec) for p in text.split(",") if p.strip()]
    _check_ladder_values(values, spec)
    return np.asarray(values, dtype=np.float64)


def _number(text: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(
            f"{text!r} in temperature ladder {spec!r} is not a number; give kelvin as Tmin:Tmax:K (e.g. 300:1000:9) "
            "or a comma list (e.g. 300,400,550)"
        ) from None


def _check_ladder_values(values: Sequence[float], spec: str) -> None:
    bad = [t for t in values if not (math.isfinite(t) and t > 0)]
    if bad:
        raise InputError(f"temperatures must be finite and > 0 K, got {bad[0]} in {spec!r}; e.g. 300:1000:9")
    if len(values) < 2:
        raise InputError(
            f"replica exchange needs at least 2 temperatures, got {len(values)} in {spec!r}; for one temperature use "
            "`trade-md md`, otherwise give e.g. 300:1000:9"
        )
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise InputError(f"temperatures {list(values)} are not strictly increasing; sort them and drop duplicates")


# ----------------------------------------------------------------------------------------------------- running


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
        parse_temperatures(list(self.temperatures))
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


def _mpi_rank_size() -> tuple[int, int]:
    return mpi.rank_size()


def select_platform(system: MolecularSystem, name: str = "auto", cpu_threads: int = 1) -> tuple[str, dict[str, str]]:
    """OpenMM platform (name, properties) for propagating ``system``.

    ``"auto"`` times a few hundred Langevin steps on each available platform (Reference, CPU with ``cpu_threads``
    threads, CUDA/OpenCL when present) and takes the fastest: for 22 atoms with OBC the Reference platform is
    ~20× faster than CPU, for large systems a GPU wins.
    """
    import openmm

    available = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name != "auto":
        if name not in available:
            raise InputError(f"OpenMM platform {name!r} is not available here; choose auto or one of {available}")
        return name, _platform_properties(name, cpu_threads)
    candidates = [p for p in ("Reference", "CPU", "CUDA", "OpenCL") if p in available]
    speeds = {p: _steps_per_second(system, p, _platform_properties(p, cpu_threads)) for p in candidates}
    best = max(speeds, key=lambda p: speeds[p])
    logger.info("platform speeds (steps/s): %s; using %s", {p: round(s) for p, s in speeds.items()}, best)
    return best, _platform_properties(best, cpu_threads)


def _platform_properties(name: str, cpu_threads: int) -> dict[str, str]:
    if name == "CPU":
        return {"Threads": str(int(cpu_threads))}
    if name in ("CUDA", "OpenCL"):
        return {"Precision": "mixed"}
    return {}


def _steps_per_second(system: MolecularSystem, name: str, properties: dict[str, str]) -> float:
    import openmm
    from openmm import unit

    try:
        integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 1 * unit.femtosecond)
        context = openmm.Context(system.system, integrator, openmm.Platform.getPlatformByName(name), properties)
        context.setPositions(system.positions * unit.nanometer)
        context.setVelocitiesToTemperature(300 * unit.kelvin)
        integrator.step(10)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.2:
            integrator.step(20)
            steps += 20
        rate = steps / (time.perf_counter() - start)
        del context
        return rate
    except Exception:  # a platform that cannot run this system simply loses the race
        return 0.0


def _configure_context_caches(sampler: Any, platform_name: str, properties: dict[str, str]) -> None:
    """Give the sampler its own context caches on the chosen platform (openmmtools defaults to the global one)."""
    import openmm
    from openmmtools import cache

    platform = openmm.Platform.getPlatformByName(platform_name)
    for attribute in ("energy_context_cache", "sampler_context_cache"):
        setattr(sampler, attribute, cache.ContextCache(platform=platform, platform_properties=dict(properties) or None,
                                                       capacity=None, time_to_live=None))


def _same_fingerprint(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(json.loads(json.dumps(b)), sort_keys=True)


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
    storage (use :func:`resume_remd`).
    """
    from openmm import unit
    from openmmtools import mcmc, multistate, states

    out = Path(out_dir)
    storage = out / STORAGE_NAME
    mpi.check_ranks(_mpi_rank_size()[1], len(settings.temperatures))
    if mpi.run_on_root(storage.exists):  # rank 0 decides: it creates the file
        raise InputError(f"{storage} already exists; continue it with --resume or choose a new --out directory")
    rank, size = _mpi_rank_size()
    platform_name, properties = _broadcast_platform(system, platform, cpu_threads)
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
    metadata = {_METADATA_KEY: json.dumps(system.fingerprint(), sort_keys=True)}
    sampler.create(reference_state, states.SamplerState(system.positions * unit.nanometer), reporter,
                   temperatures=[t * unit.kelvin for t in settings.temperatures],
                   n_temperatures=len(settings.temperatures), metadata=metadata)
    sampler.minimize()
    record = {
        "format": _RECORD_FORMAT,
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
    harmonic mode scales with T; measured against GHMC in the module docs); a replica without velocities or at rest (the start: openmmtools stores the minimised structure with zero
    velocities) gets a Maxwell-Boltzmann draw at its temperature."""
    from openmm import unit
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
                    sampler_state.velocities = velocities * math.sqrt(
                        temperatures[new] / temperatures[old])
            return after

    return RescalingParallelTempering


def maxwell_boltzmann(system: Any, temperature: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Velocities [nm/ps], shape (n_particles, 3), drawn from the Maxwell-Boltzmann law at ``temperature`` K for
    the masses of the OpenMM ``system`` (massless particles stay at rest)."""
    from openmm import unit

    rng = np.random.default_rng() if rng is None else rng
    masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())])
    sd = np.sqrt(kT(temperature) / np.where(masses > 0, masses, np.inf))  # kJ/mol / amu = (nm/ps)^2
    return rng.standard_normal((len(masses), 3)) * sd[:, None]


def _broadcast_platform(system: MolecularSystem, platform: str, cpu_threads: int) -> tuple[str, dict[str, str]]:
    return mpi.run_on_root(select_platform, system, platform, cpu_threads)


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
    defaults to the one recorded in ``run.json``.
    """
    from openmmtools import multistate

    out = Path(out_dir)
    record, storage = _read_record(out)
    mpi.check_ranks(_mpi_rank_size()[1], len(record["settings"]["temperatures"]))
    stored = mpi.run_on_root(_recover_storage, storage)
    _check_fingerprints(record, stored, storage)
    run_system = _record_system(record)
    _check_system(system, run_system, storage)
    rank, size = _mpi_rank_size()
    chosen = platform or record["platform"]["name"]
    platform_name, properties = _broadcast_platform(run_system, chosen, cpu_threads)
    record["platform"] = {"name": platform_name, "properties": properties}
    rescale = record["settings"]["integrator"] == "langevin"
    sampler_class = rescaling_tempering_class() if rescale else multistate.ParallelTemperingSampler
    sampler = mpi.sampler_from_storage(sampler_class, storage)
    if any(bool(move.reassign_velocities) == rescale for move in sampler._mcmc_moves):
        kept, stored = ("keeps", "redraw") if rescale else ("redraws", "keep")
        sampler._reporter.close()
        raise InputError(f"{out / RUN_RECORD_NAME} says integrator {record['settings']['integrator']!r}, which {kept} "
                         f"velocities at exchanges, but the dynamics stored in {storage} {stored} them; the record "
                         "was edited or belongs to another run — restore the run's own run.json")
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


def _run_iterations(
    sampler: Any,
    record: dict[str, Any],
    out: Path,
    target: int,
    n_ranks: int,
    progress: bool,
    callback: Callable[[int], None] | None,
) -> None:
    """Run ``sampler`` to ``target`` iterations one at a time with a progress bar; time every segment in
    ``run.json`` (rank 0) and close the storage even on interruption."""
    from openmmtools import cache
    from tqdm import tqdm

    global_contexts = len(cache.global_context_cache)
    rank = _mpi_rank_size()[0]
    first = int(sampler.iteration)
    segment = {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "first_iteration": first, "last_iteration": first, "wall_s": 0.0, "cpu_s": 0.0,
               "n_ranks": n_ranks, "platform": record["platform"]["name"], **mpi.describe()}
    record["segments"].append(segment)
    k = len(record["settings"]["temperatures"])
    accepted, proposed = np.zeros((k, k)), np.zeros((k, k))
    wall0, cpu0, last_write = time.perf_counter(), time.process_time(), time.perf_counter()
    last_backup = -math.inf
    bar = tqdm(total=target, initial=first, unit="it", desc="remd", disable=True if not progress or rank else None,
               dynamic_ncols=True)
    try:
        while sampler.iteration < target:
            sampler.run(n_iterations=1)
            accepted += getattr(sampler, "_n_accepted_matrix", 0.0)
            proposed += getattr(sampler, "_n_proposed_matrix", 0.0)
            neighbour = [accepted[i, i + 1] / proposed[i, i + 1] for i in range(k - 1) if proposed[i, i + 1] > 0]
            bar.update(1)
            if neighbour:
                bar.set_postfix(acceptance=f"{np.mean(neighbour):.2f}", min=f"{np.min(neighbour):.2f}", refresh=False)
            segment.update(last_iteration=int(sampler.iteration), wall_s=time.perf_counter() - wall0,
                           cpu_s=time.process_time() - cpu0)
            if rank == 0 and time.perf_counter() - last_write > _RECORD_INTERVAL_S:
                write_json_atomic(out / RUN_RECORD_NAME, record)
                last_write = time.perf_counter()
            if rank == 0 and time.perf_counter() - last_backup > _BACKUP_INTERVAL_S:
                _backup_storage(sampler._reporter, out / STORAGE_NAME)
                last_backup = time.perf_counter()
            if callback is not None and rank == 0:
                callback(int(sampler.iteration))
    finally:
        bar.close()
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


# ----------------------------------------------------------------------------------------------------- storage


def _read_record(out: Path) -> tuple[dict[str, Any], Path]:
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
        record["format"] = _RECORD_FORMAT
    if not isinstance(record, dict) or record.get("format") != _RECORD_FORMAT:
        raise InputError(f"{record_path} is not a trade-md remd record; use the directory written by trade-md remd")
    return record, storage


def _checkpoint_path(storage: Path) -> Path:
    return storage.with_name(f"{storage.stem}_checkpoint{storage.suffix}")


def _backup_storage(reporter: Any, storage: Path) -> None:
    """Copy both storage files, flushed at an iteration boundary, into ``BACKUP_NAME/`` beside them. The copy is
    made in a temporary folder and swapped in by renames, so a complete copy exists at every moment."""
    reporter.sync()
    backup = storage.with_name(BACKUP_NAME)
    fresh, old = backup.with_name(BACKUP_NAME + ".tmp"), backup.with_name(BACKUP_NAME + ".old")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    for path in (storage, _checkpoint_path(storage)):
        shutil.copy2(path, fresh / path.name)
    if backup.exists():
        shutil.rmtree(old, ignore_errors=True)
        backup.rename(old)
    fresh.rename(backup)
    shutil.rmtree(old, ignore_errors=True)


def _recover_storage(storage: Path) -> dict[str, Any] | None:
    """:func:`_storage_fingerprint` of ``storage``; when the storage is unreadable (a process killed while writing
    it) and a backup exists, the damaged files move to ``damaged-<time>/`` and the backup takes their place (logged
    as a warning: the iterations after the backup are run again)."""
    try:
        return _storage_fingerprint(storage)
    except InputError as error:
        backup = storage.with_name(BACKUP_NAME)
        if not backup.is_dir():
            backup = storage.with_name(BACKUP_NAME + ".old")  # a crash between the two renames of a backup swap
        if not all((backup / path.name).is_file() for path in (storage, _checkpoint_path(storage))):
            raise InputError(f"{error}; there is no backup to resume from (rerun trade-md remd)") from None
        damaged = storage.with_name(f"damaged-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        damaged.mkdir()
        for path in (storage, _checkpoint_path(storage)):
            if path.exists():
                path.rename(damaged / path.name)
            shutil.copy2(backup / path.name, path)
        logger.warning("%s; resuming from the backup in %s (damaged files kept in %s); the iterations after the "
                       "backup run again", error, backup, damaged)
        return _storage_fingerprint(storage)


def _storage_fingerprint(storage: Path) -> dict[str, Any] | None:
    """The system fingerprint trade-md stored in the storage's metadata (None if absent), after checking that
    both NetCDF files exist and open (openmmtools itself retries a bad file for ~10 s before failing)."""
    import netCDF4
    from openmmtools import multistate

    checkpoint = _checkpoint_path(storage)
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
    text = metadata.get(_METADATA_KEY) if isinstance(metadata, dict) else None
    return None if text is None else json.loads(text)


def _check_fingerprints(record: dict[str, Any], stored: dict[str, Any] | None, storage: Path) -> None:
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


def _check_system(system: MolecularSystem | None, run_system: MolecularSystem, storage: Path) -> None:
    """Raise :class:`SystemMismatchError` unless ``system`` (when given) is the run's system. Both fingerprints
    come from the current code, so a run stays comparable when the fingerprint gains fields."""
    if system is not None and not _same_fingerprint(system.fingerprint(), run_system.fingerprint()):
        raise SystemMismatchError(
            f"{storage} is a run of {run_system.name!r} ({run_system.n_atoms} atoms, force field "
            f"{list(run_system.forcefield)}), not of {system.name!r} ({system.n_atoms} atoms, "
            f"{list(system.forcefield)}); use the run of the same system, or drop the system options"
        )


def _record_system(record: dict[str, Any]) -> MolecularSystem:
    from trade_md.systems import MolecularSystem

    return MolecularSystem.deserialize(record["system"])


def _read_positions(storage: Path, last: int) -> np.ndarray:
    """Positions [last + 1, R, atoms, 3] nm of every stored iteration, read in one slice from the checkpoint file
    (openmmtools' per-iteration reader costs ~15 ms an iteration). The files must share their UUID."""
    import netCDF4

    checkpoint = _checkpoint_path(storage)
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
    record, storage = _read_record(out)
    _check_fingerprints(record, _storage_fingerprint(storage), storage)
    run_system = _record_system(record)
    _check_system(system, run_system, storage)
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
    energies = np.asarray(reduced)[:, :, 0] * KB * temperatures[0]
    return ReplicaData(
        temperatures=temperatures, energies=energies, states=states, positions=positions,
        accepted=np.asarray(accepted).sum(axis=0), proposed=np.asarray(proposed).sum(axis=0), record=record,
        system=run_system,
    )


# ----------------------------------------------------------------------------------------------------- analysis


def count_round_trips(states: np.ndarray, n_states: int) -> np.ndarray:
    """Completed round trips per replica: lowest → highest → lowest ladder state. states: [T, R] → [R] ints."""
    trips = np.zeros(states.shape[1], dtype=np.int64)
    for r in range(states.shape[1]):
        reached_top = None  # None: not yet at the bottom; False: left the bottom; True: has been at the top since
        for s in states[:, r]:
            if s == 0:
                if reached_top:
                    trips[r] += 1
                reached_top = False
            elif s == n_states - 1 and reached_top is False:
                reached_top = True
    return trips


def _backbone_dihedrals(system: MolecularSystem) -> np.ndarray | None:
    """Atom indices [2, 4] of the φ and ψ dihedrals, or None unless the molecule has exactly one of each (as
    alanine dipeptide)."""
    import mdtraj

    trajectory = mdtraj.Trajectory(system.positions[None], mdtraj.Topology.from_openmm(system.topology))
    phi_atoms, _ = mdtraj.compute_phi(trajectory)
    psi_atoms, _ = mdtraj.compute_psi(trajectory)
    if len(phi_atoms) != 1 or len(psi_atoms) != 1:
        return None
    return np.concatenate([phi_atoms, psi_atoms])


def _dihedral_angles(positions: np.ndarray, quadruplets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(φ, ψ) [n] radians in [−π, π) of frames ``positions [n, atoms, 3]`` nm."""
    import mdtraj

    trajectory = mdtraj.Trajectory(positions.reshape(-1, positions.shape[-2], 3), None)
    angles = mdtraj.compute_dihedrals(trajectory, quadruplets, periodic=False).astype(np.float64)
    return angles[:, 0], angles[:, 1]


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    """Floats for JSON, with ±inf and NaN as null (strict JSON has no Infinity)."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


def _round_sig(values: np.ndarray, digits: int = 6) -> list[Any]:
    return np.vectorize(lambda v: float(f"{v:.{digits}g}"))(np.asarray(values, dtype=np.float64)).tolist()


def _targets(ladder: np.ndarray, requested: Sequence[float] | None) -> np.ndarray:
    low, high = ladder[0], ladder[-1]
    if requested is None:
        extra = [t for t in DEFAULT_TARGET_TEMPERATURES if low <= t <= high]
        return np.unique(np.round(np.concatenate([ladder, extra]), 6))
    values = np.asarray([float(t) for t in requested], dtype=np.float64)
    outside = values[(values < low - 1e-6) | (values > high + 1e-6) | ~np.isfinite(values)]
    if outside.size:
        raise InputError(f"temperature {outside[0]} K is outside the ladder [{low:g}, {high:g}] K; reweighting does "
                         "not extrapolate — run a wider ladder or ask for temperatures inside it")
    return np.unique(values)


@dataclass
class PooledSamples:
    """Every equilibrated sample of every replica, ordered by the ladder state that produced it (MBAR's order).

    energies: [N] kJ/mol; state: [N] ladder index; iteration: [N] stored iteration of its run; positions: [N, atoms, 3] nm;
    n_k: [K] samples per ladder state; decorrelated: [N] bool, the subsample spaced by the statistical
    inefficiency (exported as frames); run: [N] index of the run the sample comes from (0 for a single run);
    block: [N] block label for the bootstrap (blocks of ≥ 2 statistical inefficiencies, never spanning runs).
    """

    energies: np.ndarray
    state: np.ndarray
    iteration: np.ndarray
    positions: np.ndarray
    n_k: np.ndarray
    decorrelated: np.ndarray
    run: np.ndarray
    block: np.ndarray


def _pooled_samples(data: ReplicaData, phi: np.ndarray | None) -> tuple[PooledSamples, dict[str, Any]]:
    """Equilibrated samples of all replicas and the time-correlation analysis behind their uncertainties.

    Equilibration is detected on the total reduced energy Σ_k u_k(x_k(t)); the statistical inefficiency g is the
    larger of that series' and (given φ [(T + 1) R] radians of every stored frame) of the mean φ > 0 indicator over
    states, the slowest observable here (a replica keeps its basin while it travels the ladder).
    """
    from trade_md.mbar import decorrelate

    k = data.temperatures.size
    betas = 1.0 / (KB * data.temperatures)
    after_start = np.arange(1, data.n_iterations + 1)
    energies = data.by_state(data.energies[after_start], after_start)  # [T, K]
    extra = []
    if phi is not None:
        positive = (phi.reshape(data.energies.shape)[after_start] > 0).astype(np.float64)
        extra.append(data.by_state(positive, after_start).mean(axis=1))
    result = decorrelate((energies * betas[None, :]).sum(axis=1), *extra)
    used = after_start[result.t0:]
    n = used.size
    decorrelated = np.isin(used, result.indices + 1)
    block = max(1, math.ceil(2.0 * result.g))
    samples = PooledSamples(
        energies=data.by_state(data.energies[used], used).T.reshape(-1),
        state=np.repeat(np.arange(k), n),
        iteration=np.tile(used, k),
        positions=data.by_state(data.positions[used], used).transpose(1, 0, 2, 3).reshape(k * n, data.system.n_atoms, 3),
        n_k=np.full(k, n, dtype=np.int64),
        decorrelated=np.tile(decorrelated, k),
        run=np.zeros(k * n, dtype=np.int64),
        block=np.tile((used - used[0]) // block, k),
    )
    info = {
        "equilibration_iteration": int(used[0]),
        "n_iterations_used": int(n),
        "n_samples": int(k * n),
        "statistical_inefficiency_iterations": result.g,
        "statistical_inefficiency_energy": result.inefficiencies[0],
        "statistical_inefficiency_phi_indicator": result.inefficiencies[1] if extra else None,
        "block_length_iterations": block,
        "n_blocks": math.ceil(n / block),
        "n_decorrelated_per_state": int(decorrelated.sum()),
    }
    return samples, info


def _estimator_states(ladder: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The estimator's states [K + off-ladder] K (the ladder, then the targets not on it) and each target's
    column [M] among them."""
    off_ladder = [t for t in targets if not np.any(np.isclose(t, ladder, rtol=0, atol=1e-6))]
    states = np.concatenate([ladder, np.asarray(off_ladder, dtype=np.float64)])
    return states, np.array([int(np.argmin(np.abs(states - t))) for t in targets], dtype=np.int64)


def union_ladder(ladders: Sequence[np.ndarray]) -> np.ndarray:
    """The sorted temperatures [K] K of all ``ladders``, each once (temperatures within 10⁻⁶ K are one)."""
    values = np.sort(np.concatenate([np.asarray(ladder, dtype=np.float64) for ladder in ladders]))
    return values[np.concatenate([[True], np.diff(values) > 1e-6])]


def _pool_runs(runs: Sequence[ReplicaData], ladder: np.ndarray,
               quadruplets: np.ndarray | None) -> tuple[PooledSamples, list[dict[str, Any]]]:
    """The equilibrated samples of every run in MBAR's order over ``ladder`` (the union of the runs' ladders),
    each run decorrelated on its own; returns them with each run's decorrelation record."""
    pieces, records = [], []
    for r, run in enumerate(runs):
        phi = None if quadruplets is None else _dihedral_angles(run.positions, quadruplets)[0]
        piece, record = _pooled_samples(run, phi)
        to_union = np.array([int(np.argmin(np.abs(ladder - t))) for t in run.temperatures])
        piece.state, piece.run = to_union[piece.state], np.full(piece.state.size, r, dtype=np.int64)
        pieces.append(piece)
        records.append(record)
    order = np.argsort(np.concatenate([p.state for p in pieces]), kind="stable")
    state = np.concatenate([p.state for p in pieces])[order]
    run = np.concatenate([p.run for p in pieces])[order]
    within = np.concatenate([p.block for p in pieces])[order]
    block = np.unique(np.stack([run, within], axis=1), axis=0, return_inverse=True)[1].reshape(-1)
    samples = PooledSamples(
        energies=np.concatenate([p.energies for p in pieces])[order], state=state,
        iteration=np.concatenate([p.iteration for p in pieces])[order],
        positions=np.concatenate([p.positions for p in pieces])[order],
        n_k=np.bincount(state, minlength=ladder.size).astype(np.int64),
        decorrelated=np.concatenate([p.decorrelated for p in pieces])[order], run=run, block=block,
    )
    return samples, records


def _pooled_decorrelation(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The decorrelation record of pooled runs: totals, and the largest inefficiency and block length."""
    return {
        "n_samples": int(sum(r["n_samples"] for r in records)),
        "n_blocks": int(sum(r["n_blocks"] for r in records)),
        "statistical_inefficiency_iterations": max(r["statistical_inefficiency_iterations"] for r in records),
        "block_length_iterations": max(r["block_length_iterations"] for r in records),
    }


def analyse_reference(
    data: ReplicaData | Sequence[ReplicaData],
    temperatures: Sequence[float] | None = None,
    *,
    histograms: bool = True,
    n_bootstrap: int = 100,
    sources: Sequence[str] | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], PooledSamples, MBAREstimator]:
    """MBAR analysis of a replica-exchange run, or of several independent runs of one system pooled into one MBAR,
    at ``temperatures`` [K] (default: the ladder — the union of the runs' ladders — plus
    :data:`DEFAULT_TARGET_TEMPERATURES` inside it).

    Estimates use every equilibrated sample; standard errors come from ``n_bootstrap`` block-bootstrap MBAR
    re-solves over blocks of 2g iterations (g: the largest statistical inefficiency of the run), which keeps the
    time correlation that MBAR's asymptotic errors ignore; pooled runs are resampled each within itself. Returns
    (summary dict, the pooled samples, the estimator whose states are the ladder followed by the off-ladder
    targets). Warnings (poor overlap, unconverged MBAR, too few blocks, an empty basin) are logged and listed in
    ``summary["warnings"]``. sources: a label per run for the summary (default "run 0", "run 1", ...); progress: a
    progress bar over the bootstrap re-solves.
    """
    from trade_md.mbar import MBAREstimator, tempering_reduced_potentials
    from trade_md.metrics import RAMACHANDRAN_BINS, ramachandran_histogram

    runs = [data] if isinstance(data, ReplicaData) else list(data)
    if not runs:
        raise InputError("give at least one trade-md remd run to analyse")
    sources = [f"run {r}" for r in range(len(runs))] if sources is None else list(sources)
    if len(sources) != len(runs):
        raise InputError(f"{len(sources)} source labels for {len(runs)} runs")
    if int(n_bootstrap) < 10:
        raise InputError(f"n_bootstrap must be at least 10 for usable standard errors, got {n_bootstrap}; use 100")
    system = runs[0].system
    for run, source in zip(runs[1:], sources[1:]):
        if run.system.fingerprint() != system.fingerprint():
            raise SystemMismatchError(f"{source} is a run of another system or force field than {sources[0]}; pool "
                                      "only runs of one system")
    ladder = union_ladder([run.temperatures for run in runs])
    targets = _targets(ladder, temperatures)
    states_t, index = _estimator_states(ladder, targets)
    quadruplets = _backbone_dihedrals(system)
    samples, run_decorrelation = _pool_runs(runs, ladder, quadruplets)
    decorrelation = run_decorrelation[0] if len(runs) == 1 else _pooled_decorrelation(run_decorrelation)
    n_k = np.concatenate([samples.n_k, np.zeros(states_t.size - ladder.size, dtype=np.int64)])
    estimator = MBAREstimator(tempering_reduced_potentials(samples.energies, states_t), n_k)
    warnings: list[str] = []  # besides the estimator's own, added at the end

    def warn(message: str) -> None:
        logger.warning(message)
        warnings.append(message)

    for source, record in zip(sources, run_decorrelation):
        if record["n_blocks"] < 10:
            warn(f"{source + ': ' if len(runs) > 1 else ''}only {record['n_blocks']} independent blocks of "
                 f"{record['block_length_iterations']} iterations: the bootstrap standard errors are unreliable; "
                 "run longer")
    phi = psi = None
    if quadruplets is not None:
        phi, psi = _dihedral_angles(samples.positions, quadruplets)
    errors = estimator.block_bootstrap(samples.block, observables={"energy": samples.energies},
                                       indicators={} if phi is None else {"phi_positive": phi > 0},
                                       n_bootstrap=int(n_bootstrap), strata=samples.run,
                                       progress=progress)
    f = estimator.f_k
    mean_u, _ = estimator.expectations(samples.energies)
    weights = estimator.weights()
    overlap = estimator.overlap(np.arange(ladder.size))
    if overlap.neighbours.size and overlap.neighbours.min() < POOR_OVERLAP:
        worst = int(np.argmin(overlap.neighbours))
        warn(f"poor MBAR overlap {overlap.neighbours[worst]:.3g} < {POOR_OVERLAP} between {ladder[worst]:g} K and "
             f"{ladder[worst + 1]:g} K: estimates between them are unreliable; add temperatures or run longer")
    kt = np.array([kT(t) for t in targets])
    summary: dict[str, Any] = {
        "format": _SUMMARY_FORMAT,
        "conventions": {
            "units": "energies kJ/mol, temperatures K, angles radians",
            "estimates": "MBAR over every equilibrated sample of every replica (u_k = U / k_B T_k)",
            "sem": f"one standard error from {int(n_bootstrap)} block-bootstrap MBAR re-solves over blocks of "
                   "block_length_iterations iterations (≥ 2 statistical inefficiencies"
                   + (", each run's own, resampled within the run)" if len(runs) > 1 else ")"),
            "log_z_relative": "ln Z(T) − ln Z(Tmin) (Tmin = lowest ladder temperature) = −(f(T) − f(Tmin))",
            "delta_f": "F(φ>0) − F(φ<0) = −k_B T ln(P(φ>0)/P(φ<0)), φ the ACE-ALA backbone dihedral",
            "ramachandran": f"{RAMACHANDRAN_BINS}×{RAMACHANDRAN_BINS} bins of equal width on [−π, π)², rows φ, "
                            "columns ψ, MBAR-weighted probabilities summing to 1",
            "effective_samples": "Kish effective sample number of the MBAR weights divided by the statistical "
                                 "inefficiency",
        },
        "system": {"name": system.name, "fingerprint": system.fingerprint()},
        "decorrelation": decorrelation,
        "ladder": ladder.tolist(),
        "temperatures": targets.tolist(),
        "on_ladder": [bool(np.any(np.isclose(t, ladder, rtol=0, atol=1e-6))) for t in targets],
        "mean_energy": mean_u[index].tolist(),
        "mean_energy_sem": _finite_or_none(errors["energy"][index]),
        "log_z_relative": (-f[index]).tolist(),
        "log_z_relative_sem": _finite_or_none(errors["f"][index]),
        "effective_samples": (estimator.effective_sample_numbers()[index]
                              / decorrelation["statistical_inefficiency_iterations"]).tolist(),
    }
    if phi is not None:
        delta_f, _, p, _ = estimator.indicator_free_energy(phi > 0)
        summary.update({
            "p_phi_positive": p[index].tolist(),
            "p_phi_positive_sem": _finite_or_none(errors["phi_positive_p"][index]),
            "delta_f_kT": _finite_or_none(delta_f[index]),
            "delta_f_sem_kT": _finite_or_none(errors["phi_positive"][index]),
            "delta_f": _finite_or_none(delta_f[index] * kt),
            "delta_f_sem": _finite_or_none(errors["phi_positive"][index] * kt),
        })
        for t, value in zip(targets, p[index]):
            if value in (0.0, 1.0):
                warn(f"no sample of the φ {'>' if value == 0 else '<'} 0 basin carries weight at {t:g} K: ΔF is "
                     "infinite there (null in the JSON); run longer")
        positive_by_state = np.array([np.mean(phi[samples.state == k] > 0) for k in range(ladder.size)])
        summary["direct_p_phi_positive_ladder"] = positive_by_state.tolist()
        if histograms:
            summary["ramachandran"] = [_round_sig(ramachandran_histogram(phi, psi, weights[:, i])) for i in index]
    if len(runs) == 1:
        summary["run"] = _run_summary(runs[0])
        summary["diagnostics"] = {**_run_diagnostics(runs[0]), **_mbar_diagnostics(estimator, overlap)}
    else:
        summary["conventions"]["pooled"] = (f"one MBAR over {len(runs)} independent runs; each run decorrelated and "
                                            "block-resampled within itself; effective samples divided by the largest "
                                            "statistical inefficiency of the runs")
        summary["runs"] = [{"source": source, "run": _run_summary(run), "decorrelation": record,
                            "diagnostics": _run_diagnostics(run)}
                           for run, source, record in zip(runs, sources, run_decorrelation)]
        summary["diagnostics"] = _mbar_diagnostics(estimator, overlap)
    summary["warnings"] = estimator.warnings + warnings
    return summary, samples, estimator



_COMBINED_ESTIMATES = (("mean_energy", "mean_energy_sem"), ("log_z_relative", "log_z_relative_sem"),
                       ("p_phi_positive", "p_phi_positive_sem"), ("delta_f_kT", "delta_f_sem_kT"),
                       ("delta_f", "delta_f_sem"))
"""Per-temperature estimates and the names of their standard errors that :func:`combine_summaries` averages."""


def combine_summaries(summaries: Sequence[dict[str, Any]], sources: Sequence[str]) -> dict[str, Any]:
    """One reference from the ``trade-md reference`` summaries of independent runs of one system at the same
    temperatures: per temperature, the mean of each run's estimate, with the standard error from the scatter
    between runs (sample standard deviation / √runs), which holds whatever each run's own error bars missed.
    Ramachandran histograms are averaged when every run has them; effective samples add up. An estimate that is
    null in any run (an empty basin) is null. No frames: the combined reference gives ΔF, ⟨U⟩, ln Z and histograms,
    not the NLL of reference frames. sources: a label per summary (e.g. its path), kept in ``runs``.
    """
    if len(summaries) < 2:
        raise InputError(f"combining needs at least two run summaries, got {len(summaries)}")
    first, first_source = summaries[0], sources[0]
    for summary, source in zip(summaries, sources):
        if not str(summary.get("format", "")).startswith("trade-md reference summary"):
            raise InputError(f"{source} is not a `trade-md reference` summary")
        if summary.get("system") != first.get("system"):
            raise InputError(f"{source} is a reference of another system than {first_source}; combine runs of one "
                             "system and force field")
        if len(summary["temperatures"]) != len(first["temperatures"]) or not np.allclose(
                summary["temperatures"], first["temperatures"], rtol=0, atol=1e-6):
            raise InputError(f"{source} has other temperatures than {first_source}; rerun `trade-md reference` on "
                             "every run with the same --temperatures")
    n = len(summaries)
    combined: dict[str, Any] = {
        "format": first["format"],
        "conventions": {**first.get("conventions", {}),
                        "combined": f"mean over {n} independent runs; sem = sample standard deviation over the runs "
                                    "/ sqrt(runs)"},
        "system": first["system"],
        "temperatures": first["temperatures"],
        "on_ladder": first.get("on_ladder"),
        "runs": [{"source": source, "run": summary.get("run")} for summary, source in zip(summaries, sources)],
        "effective_samples": np.sum([s["effective_samples"] for s in summaries], axis=0).tolist(),
        "warnings": [f"{source}: {message}" for summary, source in zip(summaries, sources)
                     for message in summary.get("warnings", [])],
    }
    for name, sem in _COMBINED_ESTIMATES:
        if not all(name in summary for summary in summaries):
            continue
        rows = [[math.nan if value is None else value for value in summary[name]] for summary in summaries]
        values = np.asarray(rows, dtype=np.float64)
        combined[name] = _finite_or_none(values.mean(axis=0))
        combined[sem] = _finite_or_none(values.std(axis=0, ddof=1) / math.sqrt(n))
    if all("ramachandran" in summary for summary in summaries):
        combined["ramachandran"] = [_round_sig(np.mean(histograms, axis=0)) for histograms in
                                    zip(*(np.asarray(s["ramachandran"], dtype=np.float64) for s in summaries))]
    return combined


def _run_summary(data: ReplicaData) -> dict[str, Any]:
    settings = data.record["settings"]
    segments = data.record["segments"]
    ps_per_iteration = settings["steps_per_iteration"] * settings["timestep_fs"] * 1e-3
    return {
        "command": data.record.get("command"),
        "ladder": data.temperatures.tolist(),
        "steps_per_iteration": settings["steps_per_iteration"],
        "timestep_fs": settings["timestep_fs"],
        "collision_rate_per_ps": settings["collision_rate_per_ps"],
        "mixing": settings["mixing"],
        "integrator": settings["integrator"],
        "iterations_analysed": data.n_iterations,
        "ns_per_replica": data.n_iterations * ps_per_iteration * 1e-3,
        "platform": data.record["platform"]["name"],
        "wall_s": float(sum(s["wall_s"] for s in segments)),
        "cpu_s": float(sum(s["cpu_s"] * s["n_ranks"] for s in segments)),
        "segments": len(segments),
        "versions": data.record["versions"],
    }


def _run_diagnostics(data: ReplicaData) -> dict[str, Any]:
    """Exchange acceptance and round trips of one run."""
    k = data.temperatures.size
    with np.errstate(divide="ignore", invalid="ignore"):
        acceptance = np.where(data.proposed > 0, data.accepted / np.maximum(data.proposed, 1), np.nan)
    trips = count_round_trips(data.states, k)
    ps_per_iteration = data.record["settings"]["steps_per_iteration"] * data.record["settings"]["timestep_fs"] * 1e-3
    total_trips = int(trips.sum())
    return {
        "acceptance_matrix": [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in acceptance],
        "neighbour_acceptance": [round(float(acceptance[i, i + 1]), 4) for i in range(k - 1)],
        "round_trips_per_replica": trips.tolist(),
        "round_trips": total_trips,
        "mean_round_trip_ps": (data.n_iterations * k * ps_per_iteration / total_trips) if total_trips else None,
    }


def _mbar_diagnostics(estimator: MBAREstimator, overlap: Any) -> dict[str, Any]:
    """Convergence and overlap of the MBAR solve."""
    return {
        "mbar_converged": estimator.converged,
        "mbar_residual": estimator.residual,
        "overlap_matrix": _round_sig(overlap.matrix, 4),
        "overlap_eigenvalues": _round_sig(overlap.eigenvalues, 6),
        "overlap_scalar": overlap.scalar,
        "overlap_neighbours": _round_sig(overlap.neighbours, 4),
    }


def _temperature_label(temperature: float) -> str:
    return f"{temperature:.1f}".rstrip("0").rstrip(".")


def export_frames(
    system: MolecularSystem, samples: PooledSamples, estimator: MBAREstimator, summary: dict[str, Any],
    frames_dir: Path,
) -> dict[str, Any]:
    """Write the decorrelated subsample of :func:`analyse_reference`'s ``samples`` and ``summary``:
    ``frames_<T>K.dcd`` per ladder temperature (frames drawn at T),
    ``frames_all.dcd`` (all of them, ladder order) with ``weights.npz`` (``temperatures`` [M] K, ``log_weights``
    [n, M] MBAR ln-weights of each frame at each summary temperature, divided by the fraction of its run's samples
    kept (runs pooled may be thinned at different strides) and renormalised over these frames, ``energies`` [n]
    kJ/mol, ``state`` [n] index into ``summary["ladder"]``) and ``topology.pdb``. Written atomically; returns a
    manifest."""
    import mdtraj
    from scipy.special import logsumexp

    frames_dir.mkdir(parents=True, exist_ok=True)
    ladder = np.asarray(summary["ladder"], dtype=np.float64)
    topology = mdtraj.Topology.from_openmm(system.topology)
    chosen = samples.decorrelated
    positions, state = samples.positions[chosen], samples.state[chosen]
    files: dict[str, Any] = {}
    with atomic_write_path(frames_dir / "topology.pdb") as temp:
        temp.write_text(system.pdb_text(positions[0]))
    files["topology"] = "topology.pdb"
    counts = {}
    for k, temperature in enumerate(ladder):
        label = _temperature_label(temperature)
        name = f"frames_{label}K.dcd"
        with atomic_write_path(frames_dir / name) as temp:
            mdtraj.Trajectory(positions[state == k], topology).save_dcd(str(temp), force_overwrite=True)
        files[label], counts[label] = name, int(np.sum(state == k))
    with atomic_write_path(frames_dir / "frames_all.dcd") as temp:
        mdtraj.Trajectory(positions, topology).save_dcd(str(temp), force_overwrite=True)
    files["all"] = "frames_all.dcd"
    targets = np.asarray(summary["temperatures"], dtype=np.float64)
    _, columns = _estimator_states(ladder, targets)
    # Each run is thinned at its own stride: a kept frame stands for (used / kept) samples of its run.
    kept_fraction = np.array([chosen[samples.run == r].mean() for r in range(int(samples.run.max()) + 1)])
    log_w = estimator.log_weights()[chosen][:, columns] - np.log(kept_fraction[samples.run[chosen]])[:, None]
    with atomic_write_path(frames_dir / "weights.npz") as temp, open(temp, "wb") as handle:
        np.savez(handle, temperatures=targets, log_weights=log_w - logsumexp(log_w, axis=0, keepdims=True),
                 energies=samples.energies[chosen], state=state)
    files["weights"] = "weights.npz"
    return {"dir": str(frames_dir), "files": files, "frames_per_ladder_temperature": counts}


def export_dataset(
    run_dirs: Sequence[str | os.PathLike], temperature: float, out: str | os.PathLike, *, discard_ps: float = 50.0
) -> Dataset:
    """The frames that ``trade-md remd`` runs drew at one ladder temperature (K), written as a boundary dataset
    (the ``trade-md md`` format, :func:`trade_md.md.load_dataset`) at ``out``.

    Tempering equilibrates slow modes that plain MD at that temperature never crosses (in alanine dipeptide the
    cis peptide bonds: none in 30 ns of 600 K MD, 6-11 % per bond in 4 ns at 1000 K). One frame per iteration
    after ``discard_ps`` ps; ``run`` numbers the runs, ``times`` is ps since the run's start. An existing dataset
    at ``out`` is never overwritten.
    """
    from trade_md.md import write_dataset

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
        ps = float(data.record["settings"]["steps_per_iteration"] * data.record["settings"]["timestep_fs"] * 1e-3)
        iterations = np.arange(max(1, math.ceil(discard_ps / ps)), data.n_iterations + 1)
        if iterations.size == 0:
            raise InputError(f"{run_dir} has {data.n_iterations} iterations ({data.n_iterations * ps:g} ps), none "
                             f"after --discard-ps {discard_ps:g}; lower it or run longer")
        replica = np.argmax(data.states[iterations] == matches[0], axis=1)
        pieces.append((data.positions[iterations, replica], data.energies[iterations, replica], iterations * ps))
        sources.append({"dir": str(run_dir), "frames": int(iterations.size), "ps_per_frame": ps,
                        "ladder": [float(t) for t in data.temperatures]})
    record = {"source": "trade-md remd", "runs": sources, "discard_ps": float(discard_ps)}
    return write_dataset(
        Path(out), system, float(temperature), positions=np.concatenate([p[0] for p in pieces]),
        energies=np.concatenate([p[1] for p in pieces]), times=np.concatenate([p[2] for p in pieces]),
        run=np.concatenate([np.full(len(p[2]), k, dtype=np.int64) for k, p in enumerate(pieces)]), record=record,
        remedy="extend the runs (trade-md remd --resume --ns-per-replica N) or pool more of them")


# ----------------------------------------------------------------------------------------------------- CLI


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``trade-md remd``, ``trade-md reference`` and ``trade-md remd-data``."""
    from trade_md.systems import add_system_arguments

    remd = subparsers.add_parser(
        "remd", help="parallel tempering (openmmtools) with NetCDF storage and resume",
        description="Parallel tempering of a molecule over a temperature ladder. Under MPI "
                    "(`mpirun -n K trade-md remd ...`, K at most the number of replicas; needs "
                    "`pip install \"trade-md[mpi]\"`) openmmtools distributes the replicas over the ranks; rank 0 "
                    "writes the storage and run.json.",
    )
    add_system_arguments(remd)
    remd.add_argument("--temperatures",
                      help=f"ladder in K: Tmin:Tmax:K (geometric) or a comma list, e.g. 300,400,550 (default "
                           f"{DEFAULT_LADDER}; with --resume it must match the run's)")
    length = remd.add_mutually_exclusive_group()
    length.add_argument("--ns-per-replica", type=float, help="simulated time per replica in ns (default 1)")
    length.add_argument("--iterations", type=int, help="number of exchange iterations instead of --ns-per-replica")
    remd.add_argument("--steps-per-iteration", type=int, default=500,
                      help="MD steps between exchange attempts (default %(default)s)")
    remd.add_argument("--timestep-fs", type=float, default=1.0, help="Langevin time step in fs (default %(default)s)")
    remd.add_argument("--collision-rate", type=float, default=1.0, help="Langevin friction in 1/ps (default %(default)s)")
    remd.add_argument("--mixing", choices=("swap-all", "swap-neighbors"), default="swap-all",
                      help="exchange scheme (default %(default)s)")
    remd.add_argument("--integrator", choices=tuple(INTEGRATORS), default="langevin",
                      help="dynamics between exchanges: langevin (BAOAB, velocities scaled by sqrt(T_new/T_old) "
                           "when an exchange moves a replica), langevin-redraw (velocities redrawn at every "
                           "exchange: <U> and ln Z run 0.6-5 kJ/mol high on alanine dipeptide; reproduces runs made "
                           "before rescaling) or ghmc (Metropolis-corrected, exact, 1.7-2.6x the cost per step and "
                           "slower basin transitions) (default %(default)s)")
    remd.add_argument("--platform", default="auto",
                      help="OpenMM platform: auto (fastest of a short timing), Reference, CPU, CUDA, OpenCL")
    remd.add_argument("--cpu-threads", type=int, default=1, help="threads of the CPU platform (default %(default)s)")
    remd.add_argument("--out", required=True, help="output directory (storage, run.json)")
    remd.add_argument("--resume", action="store_true",
                      help="continue the run in --out from its last iteration (extend with a larger "
                           "--ns-per-replica/--iterations)")
    remd.add_argument("--no-progress", action="store_true", help="no progress bar")
    remd.set_defaults(func=mpi.mpi_command(_remd_command), command="remd")

    reference = subparsers.add_parser(
        "reference", help="MBAR analysis of remd runs: <U>, ln Z, Ramachandran histograms, basin ΔF(T)",
        description="Analyse a `trade-md remd` directory, or several independent runs of one system pooled into "
                    "one MBAR (their ladders may differ): equilibration detection, decorrelation, MBAR at any "
                    "temperature inside the ladder, diagnostics, decorrelated frames for NLL evaluation.",
    )
    reference.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directories written by trade-md remd")
    reference.add_argument("--out", help="summary JSON (default RUN_DIR/summary.json; required for several runs)")
    reference.add_argument("--temperatures",
                           help="temperatures in K (comma list or Tmin:Tmax:K) inside the ladder; default the ladder "
                                "plus 300,400,450,500,600,...,1000 within it")
    reference.add_argument("--frames-dir", help="where to export decorrelated frames (default RUN_DIR/frames; "
                                                "for several runs OUT_frames beside the summary JSON)")
    reference.add_argument("--no-frames", action="store_true", help="do not export frames")
    reference.add_argument("--no-histograms", action="store_true", help="leave Ramachandran histograms out of the JSON")
    reference.add_argument("--bootstrap", type=int, default=100, metavar="N",
                           help="block-bootstrap MBAR re-solves behind the standard errors (default %(default)s)")
    reference.add_argument("--no-progress", action="store_true", help="no progress bar")
    reference.set_defaults(func=_reference_command, command="reference")

    combine = subparsers.add_parser(
        "reference-combine", help="one reference from the `trade-md reference` summaries of independent runs",
        description="Average the per-temperature estimates of independent remd runs' summaries (same system, same "
                    "--temperatures), with standard errors from the scatter between the runs. The output is a "
                    "reference summary for `trade-md evaluate --reference` (no frames: no NLL).",
    )
    combine.add_argument("summaries", nargs="+", metavar="SUMMARY", help="summary JSONs written by trade-md reference")
    combine.add_argument("--out", required=True, help="combined summary JSON to write")
    combine.set_defaults(func=_combine_command, command="reference-combine")

    data = subparsers.add_parser(
        "remd-data", help="the frames of remd runs at one ladder temperature as a boundary dataset",
        description="Pool the frames that `trade-md remd` runs drew at one ladder temperature into a dataset in the "
                    "`trade-md md` format (train --data DIR). Tempering equilibrates slow modes, such as cis/trans "
                    "peptide bonds, that plain MD at that temperature does not cross.",
    )
    data.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directories written by trade-md remd")
    data.add_argument("--temperature", type=float, required=True, help="ladder temperature in K, e.g. 600")
    data.add_argument("--out", required=True, help="dataset directory to write")
    data.add_argument("--discard-ps", type=float, default=50.0,
                      help="equilibration dropped from each run, ps (default %(default)s)")
    data.set_defaults(func=_remd_data_command, command="remd-data")


def _remd_command(args: argparse.Namespace) -> int:
    from trade_md.systems import system_from_args

    given_system = any(getattr(args, name, None) for name in ("system", "pdb", "prmtop"))
    command = " ".join(["trade-md"] + sys.argv[1:]) if sys.argv and sys.argv[0].endswith("trade-md") else None
    if args.resume:
        record, _ = _read_record(Path(args.out))
        settings = record["settings"]
        if args.temperatures is not None and not np.allclose(
                parse_temperatures(args.temperatures), settings["temperatures"], rtol=1e-6):
            raise InputError(f"--temperatures {args.temperatures} differs from the run's ladder "
                             f"{[round(t, 2) for t in settings['temperatures']]}; drop it when resuming")
        n_iterations = args.iterations
        if args.ns_per_replica is not None:
            n_iterations = RemdSettings.iterations_for(args.ns_per_replica, settings["steps_per_iteration"],
                                                       settings["timestep_fs"])
        resume_remd(args.out, system=system_from_args(args) if given_system else None, n_iterations=n_iterations,
                    platform=None if args.platform == "auto" else args.platform, cpu_threads=args.cpu_threads,
                    progress=not args.no_progress)
        return 0
    if not given_system:
        raise InputError("no system given; add --system alanine-dipeptide (or --pdb/--prmtop), or --resume to continue")
    system = system_from_args(args)
    ladder = parse_temperatures(args.temperatures or DEFAULT_LADDER)
    n_iterations = args.iterations or RemdSettings.iterations_for(
        1.0 if args.ns_per_replica is None else args.ns_per_replica, args.steps_per_iteration, args.timestep_fs)
    settings = RemdSettings(temperatures=tuple(float(t) for t in ladder), n_iterations=n_iterations,
                            steps_per_iteration=args.steps_per_iteration, timestep_fs=args.timestep_fs,
                            collision_rate_per_ps=args.collision_rate, mixing=args.mixing,
                            integrator=args.integrator)
    run_remd(system, settings, args.out, platform=args.platform, cpu_threads=args.cpu_threads,
             progress=not args.no_progress, command=command)
    return 0


def _reference_command(args: argparse.Namespace) -> int:
    run_dirs = [Path(run_dir) for run_dir in args.run_dirs]
    if len(run_dirs) > 1 and not args.out:
        raise InputError("several runs are pooled into one summary: give --out SUMMARY.json")
    out = Path(args.out) if args.out else run_dirs[0] / "summary.json"
    if len({run_dir.resolve() for run_dir in run_dirs}) < len(run_dirs):
        raise InputError("the same run is given twice; pool only independent runs")
    runs = [read_storage(run_dir) for run_dir in run_dirs]
    temperatures = None if args.temperatures is None else _parse_targets(args.temperatures)
    summary, samples, estimator = analyse_reference(runs, temperatures, histograms=not args.no_histograms,
                                                    n_bootstrap=args.bootstrap, sources=[str(d) for d in run_dirs],
                                                    progress=not args.no_progress)
    if not args.no_frames:
        frames_dir = Path(args.frames_dir) if args.frames_dir else (
            run_dirs[0] / "frames" if len(run_dirs) == 1 else out.with_name(f"{out.stem}_frames"))
        summary["frames"] = export_frames(runs[0].system, samples, estimator, summary, frames_dir)
    write_json_atomic(out, summary)
    for message in summary["warnings"]:
        print(f"trade-md reference: WARNING: {message}", file=sys.stderr)
    _print_table(summary)
    return 0


def _combine_command(args: argparse.Namespace) -> int:
    combined = combine_summaries([read_json(path) for path in args.summaries], list(args.summaries))
    write_json_atomic(Path(args.out), combined)
    _print_table(combined)
    print(f"wrote {args.out}: {len(args.summaries)} runs combined")
    return 0


def _remd_data_command(args: argparse.Namespace) -> int:
    import warnings

    from trade_md.md import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # printed below, once
        dataset = export_dataset(args.run_dirs, args.temperature, args.out, discard_ps=args.discard_ps)
    print(f"wrote {args.out}: {len(dataset)} frames at {dataset.temperature:g} K from {len(args.run_dirs)} remd "
          f"run(s); mean potential energy {dataset.metadata['mean_potential_energy']:.2f} kJ/mol")
    for line in dataset.metadata["convergence"]["warnings"]:
        print(f"WARNING: {line}", file=sys.stderr)
    return 0


def _parse_targets(text: str) -> list[float]:
    if ":" in text:
        return parse_temperatures(text).tolist()
    values = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            values.append(float(part))
        except ValueError:
            raise InputError(f"{part!r} in --temperatures is not a number; give kelvin, e.g. 300,450,600") from None
    if not values or any(not (math.isfinite(t) and t > 0) for t in values):
        raise InputError(f"--temperatures {text!r} must list finite temperatures > 0 K, e.g. 300,450,600")
    return values


def _fmt(value: float | None, width: int) -> str:
    return f"{'inf':>{width}}" if value is None else f"{value:{width}.2f}"


def _print_table(summary: dict[str, Any]) -> None:
    has_basins = "delta_f" in summary
    header = f"{'T/K':>8} {'<U>/kJ mol-1':>18} {'lnZ-lnZ0':>14}" + (
        f" {'P(phi>0)':>10} {'dF/kJ mol-1':>16} {'dF/kT':>14}" if has_basins else "")
    print(header)
    for i, t in enumerate(summary["temperatures"]):
        line = (f"{t:8.1f} {summary['mean_energy'][i]:10.2f} ± {summary['mean_energy_sem'][i]:5.2f} "
                f"{summary['log_z_relative'][i]:8.2f} ± {summary['log_z_relative_sem'][i]:4.2f}")
        if has_basins:
            line += (f" {summary['p_phi_positive'][i]:10.4f} {_fmt(summary['delta_f'][i], 8)} ± "
                     f"{_fmt(summary['delta_f_sem'][i], 5)} {_fmt(summary['delta_f_kT'][i], 6)} ± "
                     f"{_fmt(summary['delta_f_sem_kT'][i], 4)}")
        print(line)
    diagnostics = summary.get("diagnostics")
    if diagnostics is None:  # a combination of runs (combine_summaries) has no single ladder to diagnose
        return
    runs = summary.get("runs") or [{"source": "", "diagnostics": diagnostics}]
    for run in runs:
        print(f"{run['source'] + ': ' if run['source'] else ''}neighbour acceptance "
              f"{run['diagnostics']['neighbour_acceptance']}; round trips {run['diagnostics']['round_trips']}")
    print(f"min neighbour MBAR overlap {min(diagnostics['overlap_neighbours'], default=float('nan'))}")
