"""Umbrella sampling along the backbone φ: a reference for ΔF that needs no barrier crossings.

Replica exchange gets P(φ > 0) from transitions between the basins, which at 300 K are rare and slow; its ΔF
there converges slowly (alanine dipeptide: ±0.14 k_BT after 10 ns per replica, and runs differ by more). Umbrella
sampling instead holds φ near each of ``n_windows`` centres spread evenly over the circle with a periodic harmonic
bias b_k(φ) = ½ κ d(φ, c_k)² (d the shortest signed angle, κ = k_B T / width²), runs Langevin MD in each window
(LangevinMiddle; velocities are never redrawn), and combines the windows with MBAR
(:mod:`trade_md.analysis.umbrella`). Every ``exchange_every_ps`` the windows, run in lockstep, attempt to swap
configurations with a neighbour (Metropolis on the bias energies, alternating even and odd pairs; replica-exchange
umbrella sampling): ψ, which the bias does not drive, switches between its basins only every 50–150 ps at 300 K on
alanine dipeptide, and independent 0.5 ns windows then gave ΔF(300 K) of 3.75 ± 0.23 and 4.51 ± 0.26 k_BT on two
seeds; with exchanges, three runs gave 3.56–3.89 (combined 3.82 ± 0.10; benchmarks/results/README.md,
``umbrella/``).

``trade-md umbrella --system alanine-dipeptide --temperatures 300,450 --out ref/umbrella`` writes ``run.json`` and
per temperature ``windows/T{T}K.npz`` (:mod:`trade_md.formats.umbrella`: frames' φ, ψ, energies, cis and
chirality flags, the windows' current state, rewritten atomically every ``chunk_ps`` so that a killed run resumes
where it stopped and reproduces the uninterrupted run's frames), then ``summary.json`` and ``profile.png``/``.svg``.
Windows run on one OpenMM platform (:mod:`trade_md.platforms`, dynamics policy); temperatures run in parallel
processes (``workers``) with identical results.

What it does not sample: motions slower than a window (e.g. cis/trans peptide-bond flips at high temperature,
nanoseconds) enter with the share one window reaches; the summary reports each window's cis fraction so that this
can be judged.

This module keeps its own small replica-exchange engine rather than openmmtools' multistate samplers: those
exchange at every iteration (here every ``exchange_every_ps`` with frames every ``frame_interval_ps``), pick
neighbour pairs at random on a line (here alternating parity on a ring, which the tests count), and store NetCDF
whose resumed trajectories are not bit-identical to uninterrupted ones (here they are, a tested property).
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as unit

from trade_md.analysis.umbrella import analyse_umbrella, bias_energies, write_summary
from trade_md.errors import InputError, SystemMismatchError, WorkerError
from trade_md.features import (
    chiral_centres,
    cis_flags,
    dihedral_angles,
    handedness,
    peptide_bonds,
    ramachandran_atoms,
)
from trade_md.formats.files import package_versions, write_json_atomic
from trade_md.formats.umbrella import (
    RUN_FORMAT,
    UmbrellaSettings,
    finished,
    load_windows,
    read_run_record,
    recorded_settings,
    save_windows,
    settings_json,
    windows_path,
)
from trade_md.md import openmm_seed
from trade_md.platforms import platform_properties, select_platform
from trade_md.progress import progress_bar
from trade_md.systems import MolecularSystem
from trade_md.thermo import beta

__all__ = ["BIAS_GROUP", "PURPOSE", "biased_system", "run_umbrella", "swap_log_acceptance"]

BIAS_GROUP = 31
"""OpenMM force group of the bias (the unbiased energy is every other group)."""
PURPOSE = "umbrella sampling along φ"
"""How :func:`trade_md.features.ramachandran_atoms` names this method in its error for other molecules."""


def _stereocentres(system: MolecularSystem) -> np.ndarray:
    """Stereocentres ``[m, 4]`` (centre, three neighbours) found as the generator finds them."""
    atoms = list(system.topology.atoms())
    bonds = [(bond[0].index, bond[1].index) for bond in system.topology.bonds()]
    elements = [atom.element.symbol if atom.element is not None else atom.name for atom in atoms]
    return np.asarray(chiral_centres(len(atoms), bonds, elements), dtype=np.int64).reshape(-1, 4)


def biased_system(system: MolecularSystem, atoms: np.ndarray, centre: float, force_constant: float) -> openmm.System:
    """A copy of ``system.system`` plus the periodic harmonic bias ½ κ d(θ, centre)² on dihedral ``atoms [4]``,
    in force group :data:`BIAS_GROUP` (centre radians, κ kJ/mol/rad²)."""
    copy: openmm.System = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system.system))
    used = {force.getForceGroup() for force in copy.getForces()}
    if BIAS_GROUP in used:
        raise InputError(f"force group {BIAS_GROUP} is taken by the system's own forces; umbrella sampling needs it "
                         "for the bias: move those forces to another group")
    bias = openmm.CustomTorsionForce("0.5*kappa*d^2; d = min(dtheta, 2*pi - dtheta); dtheta = abs(theta - centre); "
                                     f"pi = {math.pi!r}")
    bias.addPerTorsionParameter("kappa")
    bias.addPerTorsionParameter("centre")
    bias.addTorsion(*(int(a) for a in atoms), [float(force_constant), float(centre)])
    bias.setForceGroup(BIAS_GROUP)
    copy.addForce(bias)
    return copy


def swap_log_acceptance(phi_i: float, phi_j: float, centre_i: float, centre_j: float, force_constant: float,
                        beta: float) -> float:
    """ln of the Metropolis acceptance of swapping the configurations (φ_i in window i, φ_j in window j):
    −β [b_i(φ_j) + b_j(φ_i) − b_i(φ_i) − b_j(φ_j)] (β in mol/kJ; the unbiased energies cancel at one temperature)."""
    b = bias_energies(np.array([phi_i, phi_j]), np.array([centre_i, centre_j]), force_constant)
    return float(-beta * (b[0, 1] + b[1, 0] - b[0, 0] - b[1, 1]))


def _run_temperature(out: str, t_index: int, platform: str) -> float:
    """Run (or continue) every window at the ``t_index``-th temperature of ``out``'s run.json in lockstep,
    exchanging neighbours every ``exchange_every_ps``; checkpoints after equilibration and every ``chunk_ps``.
    Returns the wall time of this call (s)."""
    record = read_run_record(Path(out))
    settings = recorded_settings(record)
    system = MolecularSystem.deserialize(record["system"])
    temperature = settings.temperatures[t_index]
    path = windows_path(Path(out), temperature)
    kappa, beta_t = settings.force_constant(temperature), beta(temperature)
    stereocentres = _stereocentres(system)
    reference_signs = handedness(system.positions[None], stereocentres)[0]
    bonds = peptide_bonds(system.topology)
    backbone = ramachandran_atoms(system.topology, purpose=PURPOSE)  # [φ, ψ] atoms
    systems = [biased_system(system, backbone[0], centre, kappa) for centre in settings.centres]
    properties = platform_properties(platform, purpose="dynamics")
    n_windows, n_atoms = settings.n_windows, system.n_atoms
    begun = time.perf_counter()

    def contexts(keys: tuple[int, ...]) -> list[tuple[openmm.Context, openmm.Integrator]]:
        made = []
        for k, biased in enumerate(systems):
            integrator = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin,
                                                         settings.friction_per_ps / unit.picosecond,
                                                         settings.timestep_fs * unit.femtosecond)
            integrator.setRandomNumberSeed(openmm_seed(settings.seed, t_index, k, *keys))
            made.append((openmm.Context(biased, integrator, openmm.Platform.getPlatformByName(platform), properties),
                         integrator))
        return made

    windows = load_windows(path)
    if windows is None:  # minimise in each window's bias, then equilibrate without exchanges
        positions, velocities = np.empty((n_windows, n_atoms, 3)), np.empty((n_windows, n_atoms, 3))
        for k, (context, integrator) in enumerate(contexts((2**30,))):
            context.setPositions(system.positions)
            openmm.LocalEnergyMinimizer.minimize(context)
            context.setVelocitiesToTemperature(temperature * unit.kelvin, openmm_seed(settings.seed, t_index, k, 2**30 + 1))
            integrator.step(round(settings.equilibration_ps * 1000.0 / settings.timestep_fs))
            state = context.getState(getPositions=True, getVelocities=True)
            positions[k] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            velocities[k] = state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
        windows = {"phi": np.zeros((n_windows, 0)), "psi": np.zeros((n_windows, 0)),
                    "energy": np.zeros((n_windows, 0)), "wrong_chirality": np.zeros((n_windows, 0), bool),
                    "cis": np.zeros((n_windows, 0, len(bonds)), bool),
                    "lineage": np.zeros((n_windows, 0), np.int64), "positions": positions, "velocities": velocities,
                    "lineage_now": np.arange(n_windows), "attempts": np.zeros(n_windows, np.int64),
                    "accepts": np.zeros(n_windows, np.int64), "wall_s": np.array(0.0)}
        save_windows(path, windows)
    unbiased = sum(1 << g for g in range(32) if g != BIAS_GROUP)
    exchange_every = round(settings.exchange_every_ps / settings.frame_interval_ps) if settings.exchange_every_ps else 0
    chunk_frames = max(1, round(settings.chunk_ps / settings.frame_interval_ps))
    while (done := windows["phi"].shape[1]) < settings.frames_per_window:
        started = time.perf_counter()
        chunk = done // chunk_frames
        n = min(chunk_frames, settings.frames_per_window - done)
        generator = np.random.default_rng([settings.seed, t_index, chunk, 7])
        made = contexts((chunk,))
        for k, (context, _) in enumerate(made):
            context.setPositions(windows["positions"][k])
            context.setVelocities(windows["velocities"][k])
        lineage = windows["lineage_now"].copy()
        attempts, accepts = windows["attempts"].copy(), windows["accepts"].copy()
        frames = np.empty((n_windows, n, n_atoms, 3))
        energy = np.empty((n_windows, n))
        lineages = np.empty((n_windows, n), np.int64)
        for i in range(n):
            for k, (context, integrator) in enumerate(made):
                integrator.step(settings.steps_per_frame)
                state = context.getState(getPositions=True, getEnergy=True, groups=unbiased)
                energy[k, i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
                if not math.isfinite(energy[k, i]):
                    raise WorkerError(f"window {k} at {temperature:g} K blew up (potential energy {energy[k, i]}) at "
                                      f"frame {done + i}; use a shorter timestep or a wider width")
                frames[k, i] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            lineages[:, i] = lineage
            if exchange_every and (done + i + 1) % exchange_every == 0:
                phi_now = dihedral_angles(frames[:, i], backbone[:1])[:, 0]
                parity = ((done + i + 1) // exchange_every) % 2
                for a in range(parity, n_windows - (1 - parity) * (n_windows % 2 == 1), 2):
                    b = (a + 1) % n_windows
                    attempts[a] += 1
                    if generator.random() < math.exp(min(0.0, swap_log_acceptance(
                            phi_now[a], phi_now[b], settings.centres[a], settings.centres[b], kappa, beta_t))):
                        accepts[a] += 1
                        state_a = made[a][0].getState(getPositions=True, getVelocities=True)
                        state_b = made[b][0].getState(getPositions=True, getVelocities=True)
                        made[a][0].setPositions(state_b.getPositions())
                        made[a][0].setVelocities(state_b.getVelocities())
                        made[b][0].setPositions(state_a.getPositions())
                        made[b][0].setVelocities(state_a.getVelocities())
                        lineage[a], lineage[b] = lineage[b], lineage[a]
        flat = frames.reshape(-1, n_atoms, 3)
        phi, psi = (angles.reshape(n_windows, n) for angles in dihedral_angles(flat, backbone).T)
        cis = cis_flags(flat, bonds).reshape(n_windows, n, len(bonds))
        wrong = np.any(handedness(flat, stereocentres) != reference_signs[None, :], axis=1).reshape(n_windows, n)
        final = [context.getState(getPositions=True, getVelocities=True) for context, _ in made]
        windows = {
            "phi": np.concatenate([windows["phi"], phi], axis=1),
            "psi": np.concatenate([windows["psi"], psi], axis=1),
            "energy": np.concatenate([windows["energy"], energy], axis=1),
            "wrong_chirality": np.concatenate([windows["wrong_chirality"], wrong], axis=1),
            "cis": np.concatenate([windows["cis"], cis], axis=1),
            "lineage": np.concatenate([windows["lineage"], lineages], axis=1),
            "positions": np.array([st.getPositions(asNumpy=True).value_in_unit(unit.nanometer) for st in final]),
            "velocities": np.array([st.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
                                    for st in final]),
            "lineage_now": lineage, "attempts": attempts, "accepts": accepts,
            "wall_s": np.array(float(windows["wall_s"]) + time.perf_counter() - started),
        }
        save_windows(path, windows)
    return time.perf_counter() - begun


def run_umbrella(system: MolecularSystem, settings: UmbrellaSettings, out: str | os.PathLike, *,
                 workers: int = 1, platform: str = "Reference", resume: bool = False, progress: bool = True,
                 command: str | None = None, block_ps: float = 25.0, stride_ps: float = 1.0) -> dict[str, Any]:
    """Run every window of every temperature into ``out`` (``workers`` processes), then analyse
    (:func:`~trade_md.analysis.umbrella.analyse_umbrella` with ``block_ps`` and ``stride_ps``) and write
    ``summary.json`` and the profile figure; returns the summary.

    platform: an OpenMM platform name or ``"auto"`` (measured once; the run records the platform chosen).
    resume: continue ``out`` (its run.json must hold the same system, settings and platform); finished windows are
    kept. progress: a progress bar over temperatures (when the caller enabled bars).
    """
    out = Path(out)
    record_path = out / "run.json"
    platform, _ = select_platform(system, platform, purpose="dynamics")
    if resume:
        record = read_run_record(out)
        if MolecularSystem.deserialize(record["system"]).fingerprint() != system.fingerprint():
            raise SystemMismatchError(f"{out} was run on another system ({record['system']['name']}); resume it with "
                                      "the same --system/--pdb, or start a new --out")
        if record["settings"] != settings_json(settings):
            raise InputError(f"the settings differ from those of the run in {out} ({record['settings']}); resume "
                             "with the same options, or start a new --out")
        if record.get("platform") != platform:
            raise InputError(f"{out} ran on the {record.get('platform')} platform; resume it with --platform "
                             f"{record.get('platform')} (another platform would continue other trajectories)")
    else:
        if record_path.exists():
            raise InputError(f"{out} already holds an umbrella run; pass --resume to continue it or choose a new --out")
        ramachandran_atoms(system.topology, purpose=PURPOSE)  # fail before any MD on a molecule without one φ/ψ
        write_json_atomic(record_path, {
            "format": RUN_FORMAT, "command": command, "settings": settings_json(settings),
            "system": system.serialize(), "platform": platform, "versions": package_versions("openmm", "pymbar"),
        })
    tasks = [i for i, t in enumerate(settings.temperatures) if not finished(out, settings, t)]
    with progress_bar(total=len(settings.temperatures), initial=len(settings.temperatures) - len(tasks),
                      desc="umbrella", unit="temperature", enabled=progress) as bar:
        if workers <= 1 or len(tasks) <= 1:
            for i in tasks:
                _run_temperature(str(out), i, platform)
                bar.update(1)
        else:
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = [pool.submit(_run_temperature, str(out), i, platform) for i in tasks]
                for future in concurrent.futures.as_completed(futures):
                    future.result()
                    bar.update(1)
    summary = analyse_umbrella(out, block_ps=block_ps, stride_ps=stride_ps)
    write_summary(out, summary)
    return summary


