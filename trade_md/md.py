"""Reference MD at one temperature: the boundary data of TRADE.

``trade-md md --system alanine-dipeptide --temperature 600 --out data/ala2_600K`` runs ``--replicas`` independent
Langevin trajectories (LangevinMiddle, friction 1/ps, 1 fs; 2 fs allowed with ``--constraints HBonds``), each
minimised and equilibrated first, and pools their frames. The output directory holds

- ``topology.pdb`` + ``trajectory.dcd``: the pooled frames, readable by mdtraj;
- ``data.npz``: ``positions`` [n, atoms, 3] nm float32, ``potential_energies`` [n] kJ/mol, ``kinetic_energies``
  [n] kJ/mol, ``times`` [n] ps (production time of the frame in its run), ``run`` [n] (replica index);
- ``system.json``: the serialized :class:`~trade_md.systems.MolecularSystem`;
- ``run.json``: what was run, package versions and the convergence report. It is written LAST: a directory
  without it is incomplete (``load_dataset`` refuses it), and ``--resume`` continues it from the per-replica
  checkpoints in ``checkpoints/`` (OpenMM State XML + frames so far, rewritten atomically every chunk).

:func:`write_dataset` writes that format for frames from elsewhere (``trade-md remd-data``: the frames of a
parallel-tempering run at one ladder temperature).

Every chunk of a replica starts a fresh OpenMM Context whose integrator seed derives from (seed, replica, chunk),
so an interrupted and resumed run produces exactly the frames of an uninterrupted one on the same platform.

Convergence: the backbone dihedral φ = C(i-1)-N-CA-C (mdtraj ``compute_phi``) splits the frames into the basins
φ < 0 and φ > 0. A basin is entered when φ reaches its core (more than ``margin`` = 30° from the boundaries at
0 and ±180°); this hysteresis keeps recrossings at the boundary from counting. The report gives the entries into
each basin, the φ > 0 population with a block-averaged standard error (and across replicas), and warns when the
minor basin was entered fewer than 20 times or the relative error exceeds 20 %.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import queue as queue_module
import secrets
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as unit
from tqdm.auto import tqdm

from trade_md.errors import InputError, SystemMismatchError, WorkerError
from trade_md.formats.dataset import DATASET_FORMAT, Dataset, load_dataset, write_dataset
from trade_md.formats.files import atomic_write_path, package_versions, read_json, write_json_atomic
from trade_md.cli.common import add_system_arguments, system_from_args
from trade_md.systems import MolecularSystem, builtin_config
from trade_md.thermo import KB, to_kelvin

__all__ = [
    "Dataset",
    "ConvergenceWarning",
    "run_md",
    "load_dataset",
    "choose_platform",
    "measure_platforms",
    "degrees_of_freedom",
    "backbone_phi",
    "basin_entries",
    "block_standard_error",
    "convergence_report",
    "register_cli",
    "write_dataset",
    "openmm_seed",
    "DEFAULT_NS",
]

DEFAULT_NS: float = 30.0
"""Default total simulated time (ns, summed over replicas). Measured for alanine dipeptide at 600 K: 30 ns (2 x 15 ns)
gave 63 entries into φ > 0 and a population of 0.060 ± 0.011 (18 %; 0.062 ± 0.010 over 50 ns); the Reference
platform runs ~28,000 steps/s per free core, so the default job takes ~9 min on 2 free cores."""

MIN_MINOR_ENTRIES = 20
MAX_RELATIVE_ERROR = 0.2
MIN_RUNS_FOR_SPREAD = 4  # the spread of K run means has K - 1 degrees of freedom: too noisy to judge below 4 runs
BASIN_MARGIN = math.radians(30.0)
_PLATFORMS = ("Reference", "CPU", "CUDA", "OpenCL")


class ConvergenceWarning(UserWarning):
    """The MD data visit the backbone basins too rarely for a reliable population."""


# ----------------------------------------------------------------------------------------------------- platforms


def measure_platforms(system: MolecularSystem, *, threads: int = 1, seconds: float = 0.2) -> dict[str, float]:
    """MD steps per second of each available OpenMM platform for ``system`` (CPU with ``threads`` threads)."""
    available = {openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())}
    candidates = [name for name in _PLATFORMS if name in available]
    if "CUDA" in candidates and "OpenCL" in candidates:
        candidates.remove("OpenCL")
    rates = {}
    for name in candidates:
        integrator = openmm.LangevinMiddleIntegrator(300.0, 1.0, 0.0005)
        try:
            context = openmm.Context(system.system, integrator, openmm.Platform.getPlatformByName(name),
                                     _platform_properties(name, threads))
            context.setPositions(system.positions)
            integrator.step(10)
            steps, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                integrator.step(20)
                steps += 20
            rates[name] = steps / (time.perf_counter() - start)
        except Exception:  # a platform that cannot run this system is simply not a candidate
            continue
    return rates


def choose_platform(system: MolecularSystem, *, threads: int = 1) -> str:
    """The fastest platform for MD of ``system``, measured (22 atoms here: Reference, ~4x the CPU platform)."""
    return _fastest(measure_platforms(system, threads=threads))


def _fastest(rates: dict[str, float]) -> str:
    if not rates:
        raise InputError("no OpenMM platform can run this system; check the OpenMM installation")
    return max(rates, key=rates.__getitem__)


def _platform_properties(name: str, threads: int) -> dict[str, str]:
    return {"Threads": str(threads)} if name == "CPU" else {}


# ----------------------------------------------------------------------------------------------------- analysis


def degrees_of_freedom(system: openmm.System) -> int:
    """Kinetic degrees of freedom: 3N minus constraints minus 3 when a CMMotionRemover is present."""
    dof = 3 * sum(1 for i in range(system.getNumParticles()) if system.getParticleMass(i).value_in_unit(unit.dalton) > 0)
    dof -= system.getNumConstraints()
    if any(isinstance(force, openmm.CMMotionRemover) for force in system.getForces()):
        dof -= 3
    return dof


def backbone_phi(system: MolecularSystem, positions: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Backbone φ dihedrals C(i-1)-N-CA-C of every frame.

    positions: [n, atoms, 3] nm. Returns atom indices [k, 4], labels (e.g. "ALA 2") [k], φ [n, k] in [-π, π).
    """
    import mdtraj

    topology = mdtraj.Topology.from_openmm(system.topology)
    trajectory = mdtraj.Trajectory(np.asarray(positions, dtype=np.float32), topology)
    indices, phi = mdtraj.compute_phi(trajectory)
    labels = [f"{topology.atom(int(quad[2])).residue.name} {topology.atom(int(quad[2])).residue.resSeq}"
              for quad in indices]
    return indices, labels, phi.astype(np.float64)


def basin_entries(phi: np.ndarray, margin: float = BASIN_MARGIN) -> tuple[int, int]:
    """Entries into the basins (φ < 0, φ > 0) along one trajectory, with hysteresis.

    phi: [n] radians. The trajectory is assigned to a basin once φ reaches its core (|φ| in (margin, π - margin)
    with the basin's sign) and stays assigned until it reaches the other core; the first assignment is not an entry.
    Returns (entries into φ < 0, entries into φ > 0).

    >>> basin_entries(np.array([-1.5, -0.1, 0.1, -0.1, 0.2, 1.0, 0.1, 1.2, -2.0, 3.1, -3.1]))
    (1, 1)
    """
    magnitude = np.abs(phi)
    core = (magnitude > margin) & (magnitude < math.pi - margin)
    states = (phi[core] > 0).astype(np.int8)
    if states.size < 2:
        return 0, 0
    changes = np.flatnonzero(np.diff(states))
    into_positive = int(np.sum(states[changes + 1] == 1))
    return int(changes.size - into_positive), into_positive


def block_standard_error(series: list[np.ndarray], min_blocks: int = 16) -> float:
    """Standard error of the mean of time series pooled from independent runs, by block averaging.

    series: list of [n_r] arrays. For block lengths 1, 2, 4, ... frames (at least ``min_blocks`` blocks in all), the
    standard error of the block means is computed; the largest value is returned (conservative once the blocks
    exceed the correlation time). NaN when there are too few frames.
    """
    longest = max((len(s) for s in series), default=0)
    estimates = []
    length = 1
    while length <= longest:
        means = np.concatenate([s[: len(s) // length * length].reshape(-1, length).mean(axis=1) for s in series
                                if len(s) >= length])
        if means.size < min_blocks:
            break
        estimates.append(float(np.std(means, ddof=1) / math.sqrt(means.size)))
        length *= 2
    return max(estimates) if estimates else float("nan")


def dataset_convergence(system: MolecularSystem, positions: np.ndarray, run: np.ndarray,
                        remedy: str = "increase --ns or --replicas") -> dict[str, Any]:
    """The :func:`convergence_report` of a dataset's frames (``positions [n, atoms, 3]`` nm, ``run [n]``); each of
    its warnings is also issued as a :class:`ConvergenceWarning` whose last words say ``remedy``."""
    _, labels, phi = backbone_phi(system, positions)
    report = convergence_report(phi, run, labels, remedy=remedy)
    for line in report["warnings"]:
        warnings.warn(line, ConvergenceWarning, stacklevel=3)
    return report


def convergence_report(phi: np.ndarray, run: np.ndarray, labels: list[str] | None = None, *,
                       margin: float = BASIN_MARGIN, min_entries: int = MIN_MINOR_ENTRIES,
                       max_relative_error: float = MAX_RELATIVE_ERROR,
                       remedy: str = "increase --ns or --replicas") -> dict[str, Any]:
    """Basin entries and φ > 0 populations with errors for each backbone φ.

    phi: [n, k] radians; run: [n] replica index (frames of a run contiguous and in time order).
    The standard error judged is the block-averaged one (blocks pooled over runs), or the larger of it and the
    spread of the run means when there are at least 4 runs of equal length. Returns a JSON-able dict with
    per-dihedral reports, ``converged`` (bool, None without a φ) and ``warnings`` (the last says ``remedy``).
    """
    phi = np.asarray(phi, dtype=np.float64).reshape(len(run), -1)
    labels = labels or [f"phi{j}" for j in range(phi.shape[1])]
    runs = [np.flatnonzero(run == r) for r in np.unique(run)]
    reports, warning_lines = [], []
    for j, label in enumerate(labels):
        entries = np.array([basin_entries(phi[idx, j], margin) for idx in runs]).reshape(-1, 2)
        indicators = [(phi[idx, j] > 0).astype(np.float64) for idx in runs]
        per_run = [float(h.mean()) for h in indicators]
        population = float(np.mean(np.concatenate(indicators)))
        block_se = block_standard_error(indicators)
        lengths = {len(h) for h in indicators}
        across_se = (float(np.std(per_run, ddof=1) / math.sqrt(len(per_run)))
                     if len(per_run) >= 2 and len(lengths) == 1 else float("nan"))
        trusted = (block_se, across_se) if len(per_run) >= MIN_RUNS_FOR_SPREAD else (block_se,)
        known = [value for value in trusted if not math.isnan(value)]
        se = max(known) if known else math.nan
        relative = se / population if population > 0 and known else math.inf
        minor_entries = int(entries[:, 1].sum())
        problems = []
        if minor_entries < min_entries:
            problems.append(f"only {minor_entries} entries into the φ>0 basin of {label} (want ≥ {min_entries})")
        if not relative <= max_relative_error:
            problems.append(f"φ>0 population of {label} = {population:.4f} ± {se:.4f} "
                            f"(relative error {relative:.0%} > {max_relative_error:.0%})")
        warning_lines += problems
        reports.append({
            "label": label,
            "frames": int(phi.shape[0]),
            "runs": len(runs),
            "margin_deg": math.degrees(margin),
            "entries_phi_negative": int(entries[:, 0].sum()),
            "entries_phi_positive": minor_entries,
            "entries_phi_positive_per_run": entries[:, 1].tolist(),
            "population_phi_positive": population,
            "population_phi_positive_per_run": per_run,
            "block_standard_error": _finite_or_none(block_se),
            "across_runs_standard_error": _finite_or_none(across_se),
            "standard_error": _finite_or_none(se),
            "relative_error": _finite_or_none(relative),
            "converged": not problems,
        })
    if not reports:
        warning_lines.append("no backbone φ dihedral found; basin convergence not assessed")
    if warning_lines and reports:
        warning_lines.append(f"the data are too short for a converged boundary: {remedy}")
    return {"dihedrals": reports, "converged": all(r["converged"] for r in reports) if reports else None,
            "warnings": warning_lines}


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: an undefined error is stored as null."""
    return float(value) if math.isfinite(value) else None


# ----------------------------------------------------------------------------------------------------- running


def run_md(
    system: MolecularSystem,
    temperature: Any,
    out: str | os.PathLike,
    *,
    ns: float = DEFAULT_NS,
    replicas: int | None = None,
    seed: int | None = None,
    timestep_fs: float = 1.0,
    friction_per_ps: float = 1.0,
    frame_interval_ps: float = 1.0,
    equilibration_ps: float = 100.0,
    chunk_ps: float = 100.0,
    platform: str = "auto",
    resume: bool = False,
    progress: bool = True,
) -> Dataset:
    """Run ``replicas`` independent Langevin trajectories, ``ns`` nanoseconds in all, and write a dataset to ``out``.

    temperature: K (float or quantity). replicas: default one per CPU core (1 runs in this process, more in spawned
    processes). seed: default random (recorded in run.json). timestep_fs: at most 1 fs, 2 fs with HBonds
    constraints. platform: "auto" measures the platforms (:func:`choose_platform`). resume: continue an
    interrupted run in ``out`` with its recorded settings (arguments left at their defaults are not compared).
    Returns the dataset as :func:`load_dataset` reads it.
    """
    out = Path(out)
    started = time.perf_counter()
    if resume:
        plan = _resume_plan(system, out, temperature, ns, replicas, seed, timestep_fs, friction_per_ps,
                            frame_interval_ps)
    else:
        plan = _new_plan(system, to_kelvin(temperature), ns, replicas, seed, timestep_fs, friction_per_ps,
                         frame_interval_ps, equilibration_ps, chunk_ps, platform, out)
    todo = [k for k in range(plan["replicas"]) if _frames_done(out, k) < plan["frames_per_replica"]]
    total = plan["replicas"] * (plan["equilibration_ps"] + plan["frames_per_replica"] * plan["frame_interval_ps"])
    done = sum(_progress_ps(out, k, plan) for k in range(plan["replicas"]))
    with tqdm(total=round(total), initial=round(done), unit="ps", desc=f"MD {plan['temperature']:g} K",
              disable=None if progress else True, dynamic_ncols=True) as bar:
        if len(todo) == 1:
            _run_replica(out, todo[0], bar.update)
        elif todo:
            _run_processes(out, todo, bar.update)
    return _finish(out, plan, time.perf_counter() - started)


def _new_plan(system: MolecularSystem, temperature: float, ns: float, replicas: int | None, seed: int | None,
              timestep_fs: float, friction_per_ps: float, frame_interval_ps: float, equilibration_ps: float,
              chunk_ps: float, platform: str, out: Path) -> dict[str, Any]:
    if (out / "run.json").exists():
        raise InputError(f"{out} already holds a complete dataset; choose another --out or delete it")
    if (out / "plan.json").exists():
        raise InputError(f"{out} holds an interrupted run; continue it with --resume, or delete the directory")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty; choose a new --out directory or delete it")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    replicas = cores if replicas is None else int(replicas)
    for value, what in ((ns, "ns"), (timestep_fs, "timestep"), (friction_per_ps, "friction"),
                        (frame_interval_ps, "frame interval"), (chunk_ps, "chunk length")):
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{what} must be a positive number, got {value}")
    if replicas < 1:
        raise InputError(f"replicas must be at least 1, got {replicas}")
    if not (math.isfinite(equilibration_ps) and equilibration_ps >= 0):
        raise InputError(f"equilibration must be >= 0 ps, got {equilibration_ps}")
    max_step = 2.0 if system.constraints == "HBonds" else 1.0
    if timestep_fs > max_step + 1e-9:
        raise InputError(f"timestep {timestep_fs} fs is too long for constraints={system.constraints}: at most "
                         f"{max_step:g} fs (use --constraints HBonds for 2 fs)")
    steps_per_frame = frame_interval_ps * 1000.0 / timestep_fs
    if abs(steps_per_frame - round(steps_per_frame)) > 1e-6 or round(steps_per_frame) < 1:
        raise InputError(f"frame interval {frame_interval_ps} ps is not a whole number of {timestep_fs} fs steps")
    frames = round(ns * 1000.0 / replicas / frame_interval_ps)
    if frames < 1:
        raise InputError(f"{ns} ns over {replicas} replicas gives no frame every {frame_interval_ps} ps; "
                         "increase --ns or decrease --replicas")
    threads = max(1, cores // replicas)
    platform_rates = measure_platforms(system, threads=threads) if platform == "auto" else {}
    if platform == "auto":
        platform = _fastest(platform_rates)
    else:
        try:
            openmm.Platform.getPlatformByName(platform)
        except Exception:
            names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
            raise InputError(f"OpenMM platform {platform!r} is not available; choose auto or one of {names}") from None
    plan = {
        "format": DATASET_FORMAT,
        "temperature": float(temperature),
        "timestep_fs": float(timestep_fs),
        "friction_per_ps": float(friction_per_ps),
        "frame_interval_ps": float(frame_interval_ps),
        "steps_per_frame": int(round(steps_per_frame)),
        "equilibration_ps": float(equilibration_ps),
        "equilibration_steps": int(round(equilibration_ps * 1000.0 / timestep_fs)),
        "chunk_frames": max(1, int(round(chunk_ps / frame_interval_ps))),
        "replicas": replicas,
        "frames_per_replica": int(frames),
        "ns": float(ns),
        "ns_total": replicas * frames * frame_interval_ps / 1000.0,
        "seed": int(seed) if seed is not None else secrets.randbelow(2**31 - 2) + 1,
        "platform": platform,
        "platform_properties": _platform_properties(platform, threads),
        "platform_rates_steps_per_s": platform_rates,
        "system": system.fingerprint(),
    }
    write_json_atomic(out / "system.json", system.serialize())
    write_json_atomic(out / "plan.json", plan)
    return plan


def _resume_plan(system: MolecularSystem, out: Path, temperature: Any, ns: float, replicas: int | None,
                 seed: int | None, timestep_fs: float, friction_per_ps: float,
                 frame_interval_ps: float) -> dict[str, Any]:
    if (out / "run.json").exists():
        raise InputError(f"{out} already holds a complete dataset; nothing to resume")
    if not (out / "plan.json").exists():
        raise InputError(f"{out} holds no interrupted run (no plan.json); start a new run without --resume")
    plan = read_json(out / "plan.json")
    if plan["system"] != system.fingerprint():
        started = plan["system"]
        raise SystemMismatchError(f"{out} was started with another system ({started['n_atoms']} atoms, force field "
                                  f"{started['forcefield']}, constraints {started['constraints']}); resume with the "
                                  "same system options")
    given = {"temperature": to_kelvin(temperature), "timestep_fs": timestep_fs, "friction_per_ps": friction_per_ps,
             "frame_interval_ps": frame_interval_ps, "replicas": replicas, "seed": seed,
             "ns": ns}
    defaults = {"timestep_fs": 1.0, "friction_per_ps": 1.0, "frame_interval_ps": 1.0, "ns": DEFAULT_NS}
    differences = [f"{key} {value} (run has {plan[key]})" for key, value in given.items()
                   if value is not None and value != defaults.get(key) and not math.isclose(float(value), plan[key])]
    if differences:
        raise InputError(f"--resume with settings that differ from the interrupted run in {out}: "
                         f"{', '.join(differences)}; repeat the original command with --resume")
    return plan


def _checkpoint_path(out: Path, k: int) -> Path:
    return out / "checkpoints" / f"run_{k:03d}.npz"


def _load_checkpoint(out: Path, k: int) -> dict[str, Any] | None:
    path = _checkpoint_path(out, k)
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise InputError(f"checkpoint {path} is damaged ({error}); delete it to restart replica {k}") from None


def _frames_done(out: Path, k: int) -> int:
    checkpoint = _load_checkpoint(out, k)
    return -1 if checkpoint is None else len(checkpoint["potential_energies"])


def _progress_ps(out: Path, k: int, plan: dict[str, Any]) -> float:
    frames = _frames_done(out, k)
    return 0.0 if frames < 0 else plan["equilibration_ps"] + frames * plan["frame_interval_ps"]


def _write_checkpoint(out: Path, k: int, frames: dict[str, list], state: openmm.State, compute_s: float) -> None:
    with atomic_write_path(_checkpoint_path(out, k)) as temp, open(temp, "wb") as handle:
        np.savez(
            handle,
            positions=np.asarray(frames["positions"], dtype=np.float32).reshape(-1, state.getPositions(asNumpy=True).shape[0], 3),
            potential_energies=np.asarray(frames["potential_energies"], dtype=np.float64),
            kinetic_energies=np.asarray(frames["kinetic_energies"], dtype=np.float64),
            times=np.asarray(frames["times"], dtype=np.float64),
            state_xml=np.array(openmm.XmlSerializer.serialize(state)),
            compute_s=np.array(compute_s),
        )


def openmm_seed(seed: int, *keys: int) -> int:
    """An OpenMM random seed in [1, 2^31 - 1) derived from a run's ``seed`` and ``keys`` (0 would ask OpenMM for a
    random seed, breaking reproducibility)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint32)[0]
    return int(state % (2**31 - 2)) + 1


def _context(system: MolecularSystem, plan: dict[str, Any], seed: int) -> tuple[openmm.Context, openmm.Integrator]:
    integrator = openmm.LangevinMiddleIntegrator(plan["temperature"] * unit.kelvin,
                                                 plan["friction_per_ps"] / unit.picosecond,
                                                 plan["timestep_fs"] * unit.femtosecond)
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(system.system, integrator, openmm.Platform.getPlatformByName(plan["platform"]),
                             plan["platform_properties"])
    return context, integrator


def _run_replica(out: Path, k: int, report: Callable[[float], Any]) -> None:
    """Equilibrate (unless checkpointed) and run replica ``k`` to the end, checkpointing every chunk."""
    plan = read_json(out / "plan.json")
    system = MolecularSystem.deserialize(read_json(out / "system.json"))
    checkpoint = _load_checkpoint(out, k)
    if checkpoint is None:
        begun = time.perf_counter()
        context, integrator = _context(system, plan, openmm_seed(plan["seed"], k, 2**30))
        context.setPositions(system.positions)
        openmm.LocalEnergyMinimizer.minimize(context)
        context.setVelocitiesToTemperature(plan["temperature"] * unit.kelvin, openmm_seed(plan["seed"], k, 2**30 + 1))
        remaining = plan["equilibration_steps"]
        while remaining > 0:
            steps = min(remaining, 10 * plan["steps_per_frame"])
            integrator.step(steps)
            remaining -= steps
            report(steps * plan["timestep_fs"] / 1000.0)
        state = context.getState(getPositions=True, getVelocities=True, getParameters=True)
        empty = {"positions": [], "potential_energies": [], "kinetic_energies": [], "times": []}
        _write_checkpoint(out, k, empty, state, time.perf_counter() - begun)
        checkpoint = _load_checkpoint(out, k)
    frames = {
        "positions": list(checkpoint["positions"]),
        "potential_energies": checkpoint["potential_energies"].tolist(),
        "kinetic_energies": checkpoint["kinetic_energies"].tolist(),
        "times": checkpoint["times"].tolist(),
    }
    state = openmm.XmlSerializer.deserialize(str(checkpoint["state_xml"]))
    compute_s = float(checkpoint["compute_s"])
    while len(frames["times"]) < plan["frames_per_replica"]:
        begun = time.perf_counter()
        chunk = len(frames["times"]) // plan["chunk_frames"]
        context, integrator = _context(system, plan, openmm_seed(plan["seed"], k, chunk))
        context.setState(state)
        n_chunk = min(plan["chunk_frames"] * (chunk + 1), plan["frames_per_replica"]) - len(frames["times"])
        for _ in range(n_chunk):
            integrator.step(plan["steps_per_frame"])
            snapshot = context.getState(getPositions=True, getEnergy=True)
            energy = snapshot.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            if not math.isfinite(energy):
                raise WorkerError(f"replica {k} blew up (potential energy {energy}) at frame {len(frames['times'])}; "
                                  "use a shorter --timestep or check the structure")
            frames["positions"].append(snapshot.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
            frames["potential_energies"].append(energy)
            frames["kinetic_energies"].append(snapshot.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole))
            frames["times"].append(len(frames["times"]) * plan["frame_interval_ps"] + plan["frame_interval_ps"])
            report(plan["frame_interval_ps"])
        state = context.getState(getPositions=True, getVelocities=True, getParameters=True)
        compute_s += time.perf_counter() - begun
        _write_checkpoint(out, k, frames, state, compute_s)
        del context, integrator


def _replica_process(out: str, k: int, messages: Any, parent: int) -> None:
    """Entry point of a spawned replica process: run, then report "done" or the error through ``messages``.
    Exits at the next frame once process ``parent`` is gone (a parent killed by a signal cannot stop its workers);
    the finished chunks stay in the checkpoints for ``--resume``."""

    def report(ps: float) -> None:
        if os.getppid() != parent:
            sys.exit(143)
        messages.put(("progress", k, ps))

    try:
        _run_replica(Path(out), k, report)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:
        messages.put(("error", k, f"{type(error).__name__}: {error}"))
        sys.exit(1)
    messages.put(("done", k, 0.0))


def _run_processes(out: Path, todo: list[int], report: Callable[[float], Any]) -> None:
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    processes = {k: context.Process(target=_replica_process, args=(str(out), k, messages, os.getpid()),
                                  name=f"trade-md-md-{k}")
                 for k in todo}
    for process in processes.values():
        process.start()
    running = set(todo)
    try:
        while running:
            try:
                kind, k, payload = messages.get(timeout=1.0)
            except queue_module.Empty:
                dead = [k for k in running if processes[k].exitcode not in (None, 0)]
                if dead:
                    raise WorkerError(f"MD replica {dead[0]} died (exit code {processes[dead[0]].exitcode}); "
                                      f"finished chunks are kept: rerun with --resume") from None
                continue
            if kind == "progress":
                report(payload)
            elif kind == "done":
                running.discard(k)
            else:
                raise WorkerError(f"MD replica {k} failed: {payload}; finished chunks are kept: rerun with --resume")
    finally:
        for process in processes.values():
            if process.is_alive():
                process.terminate()
            process.join()
        messages.close()


def _finish(out: Path, plan: dict[str, Any], wall_s: float) -> Dataset:
    """Pool the replicas' frames and write the dataset (run.json last)."""
    system = MolecularSystem.deserialize(read_json(out / "system.json"))
    checkpoints = [_load_checkpoint(out, k) for k in range(plan["replicas"])]
    kinetic = np.concatenate([c["kinetic_energies"] for c in checkpoints])
    dof = degrees_of_freedom(system.system)
    record = {
        **{key: value for key, value in plan.items() if key != "system"},
        "steps_per_replica": plan["equilibration_steps"] + plan["frames_per_replica"] * plan["steps_per_frame"],
        "degrees_of_freedom": dof,
        "kinetic_temperature": float(2.0 * kinetic.mean() / (dof * KB)),
        "replica_seconds": [float(c["compute_s"]) for c in checkpoints],
        "wall_seconds_last_session": float(wall_s),
    }
    positions = np.concatenate([c["positions"] for c in checkpoints])
    run = np.concatenate([np.full(len(c["times"]), k, dtype=np.int64) for k, c in enumerate(checkpoints)])
    dataset = write_dataset(
        out, system, plan["temperature"], positions=positions,
        energies=np.concatenate([c["potential_energies"] for c in checkpoints]),
        times=np.concatenate([c["times"] for c in checkpoints]), run=run,
        record=record, kinetic_energies=kinetic, convergence=dataset_convergence(system, positions, run))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    (out / "plan.json").unlink(missing_ok=True)
    return dataset


# ----------------------------------------------------------------------------------------------------- CLI


def register_cli(subparsers: Any) -> None:
    """Add ``trade-md md``."""
    parser = subparsers.add_parser(
        "md", help="reference Langevin MD at one temperature (boundary data)",
        description="Langevin MD (LangevinMiddle, friction 1/ps) of independent replicas, pooled into a dataset "
                    "with a convergence report of the backbone φ basins.")
    add_system_arguments(parser)
    parser.add_argument("--temperature", type=float, help="K (default: the built-in system's reference temperature)")
    parser.add_argument("--ns", type=float, default=DEFAULT_NS,
                        help=f"total simulated time over all replicas in ns (default {DEFAULT_NS:g})")
    parser.add_argument("--out", required=True, help="output directory (new, or an interrupted one with --resume)")
    parser.add_argument("--replicas", type=int, help="independent runs in parallel (default: one per CPU core)")
    parser.add_argument("--seed", type=int, help="random seed (default: random, recorded in run.json)")
    parser.add_argument("--timestep", type=float, default=1.0, help="fs (default 1; up to 2 with --constraints HBonds)")
    parser.add_argument("--friction", type=float, default=1.0, help="1/ps (default 1)")
    parser.add_argument("--frame-interval", type=float, default=1.0, help="ps between saved frames (default 1)")
    parser.add_argument("--equilibration", type=float, default=100.0, help="ps per replica before frames (default 100)")
    parser.add_argument("--platform", default="auto", help="OpenMM platform or auto (fastest, measured)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_main, command="md")


def _main(args: argparse.Namespace) -> int:
    system = system_from_args(args)
    temperature = args.temperature
    if temperature is None:
        if not args.system:
            raise InputError("--temperature is required for a system that is not built in")
        temperature = builtin_config(args.system)["reference_temperature"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dataset = run_md(system, temperature, args.out, ns=args.ns, replicas=args.replicas, seed=args.seed,
                         timestep_fs=args.timestep, friction_per_ps=args.friction,
                         frame_interval_ps=args.frame_interval, equilibration_ps=args.equilibration,
                         platform=args.platform, resume=args.resume, progress=not args.no_progress)
    print(_summary(args.out, dataset))
    return 0


def _summary(out: str, dataset: Dataset) -> str:
    meta = dataset.metadata
    lines = [
        f"wrote {out}: {meta['n_frames']} frames from {meta['replicas']} runs x "
        f"{meta['frames_per_replica'] * meta['frame_interval_ps'] / 1000:g} ns at {meta['temperature']:g} K "
        f"on {meta['platform']} (seed {meta['seed']})",
        f"mean potential energy {meta['mean_potential_energy']:.2f} kJ/mol; kinetic temperature "
        f"{meta['kinetic_temperature']:.1f} K",
    ]
    for report in meta["convergence"]["dihedrals"]:
        error, block, across = (_format_error(report[key]) for key in
                                ("standard_error", "block_standard_error", "across_runs_standard_error"))
        lines.append(
            f"φ of {report['label']}: population(φ>0) = {report['population_phi_positive']:.4f} ± {error} "
            f"(block SE {block}, across runs {across}); entries into φ>0: {report['entries_phi_positive']} "
            f"(per run {report['entries_phi_positive_per_run']}), into φ<0: {report['entries_phi_negative']}")
    lines += [f"WARNING: {line}" for line in meta["convergence"]["warnings"]]
    return "\n".join(lines)


def _format_error(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
