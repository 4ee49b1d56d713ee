"""Reference MD at one temperature: the boundary data of TRADE.

:func:`run_md` runs ``replicas`` independent Langevin trajectories (LangevinMiddle, friction 1/ps, 1 fs; 2 fs
with HBonds constraints, or with heavier hydrogens, :func:`repartition_hydrogen_mass`: masses leave the Boltzmann
distribution of positions as it is), each minimised and equilibrated first, and pools their frames into a dataset
(:mod:`trade_md.formats.dataset`: ``topology.pdb`` + ``trajectory.dcd``, ``data.npz`` with positions
``[n, atoms, 3]`` nm, potential and kinetic energies ``[n]`` kJ/mol, times ``[n]`` ps and run index ``[n]``,
``system.json``, and ``run.json`` with the settings, package versions and the basin-convergence report of
:mod:`trade_md.convergence`). ``run.json`` is written LAST: a directory without it is incomplete, and
``resume=True`` continues it from the per-replica checkpoints in ``checkpoints/`` (OpenMM State XML + frames so
far, rewritten atomically every chunk) and the settings in ``plan.json``.

Every chunk of a replica starts a fresh OpenMM Context whose integrator seed derives from (seed, replica, chunk)
(:func:`openmm_seed`), so an interrupted and resumed run produces exactly the frames of an uninterrupted one on the
same platform. One replica runs in this process; more run in spawned processes, one per replica, that report
progress through a queue and stop at the next frame when their parent is gone. The platform follows
:mod:`trade_md.platforms` (``"auto"``: the fastest, measured). The command line is :mod:`trade_md.cli.md`.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue as queue_module
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as unit

from trade_md.convergence import dataset_convergence
from trade_md.errors import InputError, SystemMismatchError, WorkerError
from trade_md.formats.dataset import DATASET_FORMAT, Dataset, write_dataset
from trade_md.formats.files import atomic_write_path, read_json, write_json_atomic
from trade_md.platforms import select_platform
from trade_md.progress import progress_bar
from trade_md.systems import MolecularSystem
from trade_md.thermo import kinetic_temperature, to_kelvin

__all__ = ["DEFAULT_NS", "HMR_MIN_MASS_AMU", "degrees_of_freedom", "max_timestep_fs", "openmm_seed",
           "repartition_hydrogen_mass", "run_md"]

DEFAULT_NS: float = 30.0
"""Default total simulated time (ns, summed over replicas). Measured for alanine dipeptide at 600 K: 30 ns (2 x 15 ns)
gave 63 entries into φ > 0 and a population of 0.060 ± 0.011 (18 %; 0.062 ± 0.010 over 50 ns); the Reference
platform runs ~28,000 steps/s per free core, so the default job takes ~9 min on 2 free cores."""
HMR_MIN_MASS_AMU: float = 4.0
"""Hydrogen mass (amu) from which a system without constraints may run 2 fs steps (results §10b: at 600 K 1 fs and
2 fs with 4 amu agree in energies and bond lengths; 2 fs at 1 amu widens the X–H bonds)."""


def max_timestep_fs(constraints: str | None, hydrogen_mass_amu: float | None) -> float:
    """The longest Langevin step (fs) allowed: 2 with HBonds, or without constraints and hydrogens of at least
    :data:`HMR_MIN_MASS_AMU`; else 1."""
    heavy = hydrogen_mass_amu is not None and hydrogen_mass_amu >= HMR_MIN_MASS_AMU
    return 2.0 if constraints == "HBonds" or (heavy and constraints is None) else 1.0


def run_md(
    system: MolecularSystem,
    temperature: Any,
    out: str | os.PathLike,
    *,
    ns: float = DEFAULT_NS,
    replicas: int | None = None,
    seed: int | None = None,
    timestep_fs: float = 1.0,
    hydrogen_mass_amu: float | None = None,
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
    processes). seed: default random (recorded in run.json). timestep_fs: at most :func:`max_timestep_fs`.
    hydrogen_mass_amu: every hydrogen's mass in the dynamics (:func:`repartition_hydrogen_mass`; None: the force
    field's; the dataset keeps the force field's).
    platform: a name, or "auto" for the fastest, measured (:func:`trade_md.platforms.select_platform`).
    resume: continue an interrupted run in ``out`` with its recorded settings (arguments left at their defaults are
    not compared). progress: a progress bar, when the caller enabled bars (:mod:`trade_md.progress`).
    Returns the dataset as :func:`trade_md.formats.dataset.load_dataset` reads it.
    """
    out = Path(out)
    started = time.perf_counter()
    if resume:
        plan = _resume_plan(system, out, temperature, ns, replicas, seed, timestep_fs, hydrogen_mass_amu,
                            friction_per_ps, frame_interval_ps)
    else:
        plan = _new_plan(system, to_kelvin(temperature), ns, replicas, seed, timestep_fs, hydrogen_mass_amu,
                         friction_per_ps, frame_interval_ps, equilibration_ps, chunk_ps, platform, out)
    todo = [k for k in range(plan["replicas"]) if _frames_done(out, k) < plan["frames_per_replica"]]
    total = plan["replicas"] * (plan["equilibration_ps"] + plan["frames_per_replica"] * plan["frame_interval_ps"])
    done = sum(_progress_ps(out, k, plan) for k in range(plan["replicas"]))
    with progress_bar(total=round(total), initial=round(done), unit="ps", desc=f"MD {plan['temperature']:g} K",
                      enabled=progress) as bar:
        if len(todo) == 1:
            _run_replica(out, todo[0], bar.update)
        elif todo:
            _run_processes(out, todo, bar.update)
    return _finish(out, plan, time.perf_counter() - started)


def _new_plan(system: MolecularSystem, temperature: float, ns: float, replicas: int | None, seed: int | None,
              timestep_fs: float, hydrogen_mass_amu: float | None, friction_per_ps: float, frame_interval_ps: float,
              equilibration_ps: float, chunk_ps: float, platform: str, out: Path) -> dict[str, Any]:
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
    if hydrogen_mass_amu is not None:
        repartition_hydrogen_mass(system, hydrogen_mass_amu)    # InputError when it cannot
    max_step = max_timestep_fs(system.constraints, hydrogen_mass_amu)
    if timestep_fs > max_step + 1e-9:
        raise InputError(f"timestep {timestep_fs} fs is too long for constraints={system.constraints}, hydrogen "
                         f"mass {hydrogen_mass_amu}: at most {max_step:g} fs (2 fs: --hydrogen-mass 4 or HBonds)")
    steps_per_frame = frame_interval_ps * 1000.0 / timestep_fs
    if abs(steps_per_frame - round(steps_per_frame)) > 1e-6 or round(steps_per_frame) < 1:
        raise InputError(f"frame interval {frame_interval_ps} ps is not a whole number of {timestep_fs} fs steps")
    frames = round(ns * 1000.0 / replicas / frame_interval_ps)
    if frames < 1:
        raise InputError(f"{ns} ns over {replicas} replicas gives no frame every {frame_interval_ps} ps; "
                         "increase --ns or decrease --replicas")
    platform, properties = select_platform(system, platform, threads=max(1, cores // replicas), purpose="dynamics")
    plan = {
        "format": DATASET_FORMAT,
        "temperature": float(temperature),
        "timestep_fs": float(timestep_fs),
        "hydrogen_mass_amu": None if hydrogen_mass_amu is None else float(hydrogen_mass_amu),
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
        "platform_properties": properties,
        "system": system.fingerprint(),
    }
    write_json_atomic(out / "system.json", system.serialize())
    write_json_atomic(out / "plan.json", plan)
    return plan


def _resume_plan(system: MolecularSystem, out: Path, temperature: Any, ns: float, replicas: int | None,
                 seed: int | None, timestep_fs: float, hydrogen_mass_amu: float | None, friction_per_ps: float,
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
             "ns": ns, "hydrogen_mass_amu": hydrogen_mass_amu}
    defaults = {"timestep_fs": 1.0, "friction_per_ps": 1.0, "frame_interval_ps": 1.0, "ns": DEFAULT_NS}
    differences = [f"{key} {value} (run has {plan.get(key)})" for key, value in given.items()
                   if value is not None and value != defaults.get(key)
                   and (plan.get(key) is None or not math.isclose(float(value), plan[key]))]
    if differences:
        raise InputError(f"--resume with settings that differ from the interrupted run in {out}: "
                         f"{', '.join(differences)}; repeat the original command with --resume")
    return plan


# ----------------------------------------------------------------------------------------------- replicas


def _context(system: MolecularSystem, plan: dict[str, Any], seed: int) -> tuple[openmm.Context, openmm.Integrator]:
    integrator = openmm.LangevinMiddleIntegrator(plan["temperature"] * unit.kelvin,
                                                 plan["friction_per_ps"] / unit.picosecond,
                                                 plan["timestep_fs"] * unit.femtosecond)
    integrator.setRandomNumberSeed(seed)
    mass = plan.get("hydrogen_mass_amu")
    dynamics = system.system if mass is None else repartition_hydrogen_mass(system, mass)
    context = openmm.Context(dynamics, integrator, openmm.Platform.getPlatformByName(plan["platform"]),
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
    frames = {key: list(checkpoint[key]) if key == "positions" else checkpoint[key].tolist()
              for key in ("positions", "potential_energies", "kinetic_energies", "times")}
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
                                  name=f"trade-md-md-{k}") for k in todo}
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


# ----------------------------------------------------------------------------------------------- checkpoints


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
    n_atoms = state.getPositions(asNumpy=True).shape[0]
    with atomic_write_path(_checkpoint_path(out, k)) as temp, open(temp, "wb") as handle:
        np.savez(
            handle,
            positions=np.asarray(frames["positions"], dtype=np.float32).reshape(-1, n_atoms, 3),
            potential_energies=np.asarray(frames["potential_energies"], dtype=np.float64),
            kinetic_energies=np.asarray(frames["kinetic_energies"], dtype=np.float64),
            times=np.asarray(frames["times"], dtype=np.float64),
            state_xml=np.array(openmm.XmlSerializer.serialize(state)),
            compute_s=np.array(compute_s),
        )


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
        "kinetic_temperature": kinetic_temperature(kinetic.mean(), dof),
        "replica_seconds": [float(c["compute_s"]) for c in checkpoints],
        "wall_seconds_last_session": float(wall_s),
    }
    positions = np.concatenate([c["positions"] for c in checkpoints])
    run = np.concatenate([np.full(len(c["times"]), k, dtype=np.int64) for k, c in enumerate(checkpoints)])
    dataset = write_dataset(
        out, system, plan["temperature"], positions=positions,
        energies=np.concatenate([c["potential_energies"] for c in checkpoints]),
        times=np.concatenate([c["times"] for c in checkpoints]), run=run,
        record=record, kinetic_energies=kinetic, convergence=dataset_convergence(system.topology, positions, run))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    (out / "plan.json").unlink(missing_ok=True)
    return dataset


def repartition_hydrogen_mass(system: MolecularSystem, mass_amu: float) -> openmm.System:
    """A copy of ``system.system`` in which every hydrogen bonded to a heavier atom weighs ``mass_amu`` (amu), the mass
    it gains taken from that atom, so each such pair keeps its mass (OpenMM's ``hydrogenMass``). InputError when a
    heavy atom would keep less than 1 amu, or ``mass_amu`` is below a hydrogen's own mass."""
    if not (math.isfinite(mass_amu) and mass_amu >= 1.0):
        raise InputError(f"hydrogen mass {mass_amu} amu is invalid; give at least a hydrogen's own mass, e.g. "
                         f"--hydrogen-mass {HMR_MIN_MASS_AMU:g}")
    dynamics = openmm.XmlSerializer.clone(system.system)
    hydrogens = {atom.index for atom in system.topology.atoms()
                 if atom.element is not None and atom.element.symbol == "H"}
    for first, second in system.topology.bonds():
        for h, heavy in ((first, second), (second, first)):
            if h.index in hydrogens and heavy.index not in hydrogens:
                gained = mass_amu - dynamics.getParticleMass(h.index).value_in_unit(unit.dalton)
                left = dynamics.getParticleMass(heavy.index).value_in_unit(unit.dalton) - gained
                if left < 1.0:
                    raise InputError(f"hydrogen mass {mass_amu:g} amu leaves atom {heavy.index} ({heavy.name}, "
                                     f"{heavy.residue.name}) {left:.2f} amu; choose a lighter --hydrogen-mass")
                dynamics.setParticleMass(h.index, mass_amu * unit.dalton)
                dynamics.setParticleMass(heavy.index, left * unit.dalton)
    return dynamics


def openmm_seed(seed: int, *keys: int) -> int:
    """An OpenMM random seed in [1, 2^31 - 1) derived from a run's ``seed`` and ``keys`` (0 would ask OpenMM for a
    random seed, breaking reproducibility)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint32)[0]
    return int(state % (2**31 - 2)) + 1


def degrees_of_freedom(system: openmm.System) -> int:
    """Kinetic degrees of freedom: 3N minus constraints minus 3 when a CMMotionRemover is present."""
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())]
    dof = 3 * sum(1 for mass in masses if mass > 0)
    dof -= system.getNumConstraints()
    if any(isinstance(force, openmm.CMMotionRemover) for force in system.getForces()):
        dof -= 3
    return dof
