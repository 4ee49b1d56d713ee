"""Umbrella sampling along the backbone φ, unbiased with MBAR: a reference for ΔF that needs no barrier crossings.

Replica exchange gets P(φ > 0) from transitions between the basins, which at 300 K are rare and slow; its ΔF
there converges slowly (alanine dipeptide: ±0.14 k_BT after 10 ns per replica, and runs differ by more). Umbrella
sampling instead holds φ near each of ``n_windows`` centres spread evenly over the circle with a periodic harmonic
bias b_k(φ) = ½ κ d(φ, c_k)² (d the shortest signed angle, κ = k_B T / width²), runs Langevin MD in each window
(LangevinMiddle; velocities are never redrawn), and combines the windows with MBAR. At one temperature the reduced
potentials of the windows differ only by their biases, u_k(x) = β (U(x) + b_k(φ(x))), so MBAR needs no energy
re-evaluation; the unbiased state is an unsampled state (N = 0) with bias 0. Every ``exchange_every_ps`` the
windows, run in lockstep, attempt to swap configurations with a neighbour (Metropolis on the bias energies,
alternating even and odd pairs; replica-exchange umbrella sampling): ψ, which the bias does not drive, switches
between its basins only every 50–150 ps at 300 K on alanine dipeptide, and independent 0.5 ns windows then gave
ΔF(300 K) of 3.75 ± 0.23 and 4.51 ± 0.26 k_BT on two seeds; with exchanges, three runs gave 3.56–3.89 (combined
3.82 ± 0.10; benchmarks/results/README.md, ``umbrella/``).

``trade-md umbrella --system alanine-dipeptide --temperatures 300,450 --out ref/umbrella`` writes

- ``run.json``: settings, the serialized system, versions (written first; ``--resume`` reads it);
- ``windows/T{T}K.npz``: per temperature ``phi``, ``psi`` [K, n] radians, ``energy`` [K, n] kJ/mol (the unbiased
  potential), ``cis`` [K, n, bonds] and ``wrong_chirality`` [K, n] flags of frames every ``frame_interval_ps``,
  ``lineage`` [K, n] (which starting replica is in each window), swap ``attempts``/``accepts`` [K] of pair
  (k, k + 1 mod K), and the current positions and velocities, rewritten atomically every ``chunk_ps`` so that a
  killed run resumes where it stopped and reproduces the uninterrupted run's frames;
- ``summary.json`` (``analyse_umbrella``) and ``profile.png``/``.svg`` (F(φ) with error bands): per temperature ΔF = F(φ > 0) − F(φ < 0) = −k_B T ln(P(φ > 0)/P(φ < 0))
  in k_B T, P(φ > 0), ⟨U⟩, the free-energy profile F(φ) on 36 bins, each with a block-bootstrap standard error
  (time blocks of ``block_ps``; MBAR re-solved per replicate), and diagnostics (each window's mean and spread of φ,
  the slowest statistical inefficiency of φ and ψ, neighbour overlap, swap acceptance, replicas that crossed
  between the basins). The keys ``temperatures``, ``delta_f_kT``,
  ``delta_f_sem_kT``, ``delta_f(_sem)`` (kJ/mol), ``p_phi_positive(_sem)``, ``mean_energy(_sem)`` and
  ``ramachandran`` mean what they mean in a ``trade-md reference`` summary, so the file serves as ``--reference``
  of ``trade-md evaluate`` (no frames: no NLL).

What it does not sample: motions slower than a window (e.g. cis/trans peptide-bond flips at high temperature,
nanoseconds) enter with the share one window reaches; the summary reports each window's cis fraction so that this
can be judged.

>>> wrapped_angle(np.array([3.0, -3.0]), 3.1).round(4).tolist()  # shortest signed angle φ − c, radians
[-0.1, 0.1832]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import multiprocessing
import os
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as unit
import torch
from tqdm.auto import tqdm

from trade_md.basins import peptide_features
from trade_md.errors import InputError, SystemMismatchError, WorkerError
from trade_md.ic import chiral_centres, handedness
from trade_md.formats.files import atomic_write_path, package_versions, read_json, write_json_atomic
from trade_md.md import openmm_seed
from trade_md.report import backbone_dihedrals
from trade_md.systems import MolecularSystem
from trade_md.thermo import KB, to_kelvin

__all__ = [
    "UmbrellaSettings",
    "wrapped_angle",
    "bias_energies",
    "biased_system",
    "phi_atoms",
    "run_umbrella",
    "unbias_windows",
    "analyse_umbrella",
    "register_cli",
]

RUN_FORMAT = "trade-md umbrella run/1"
SUMMARY_FORMAT = "trade-md umbrella summary/1"
BIAS_GROUP = 31
"""OpenMM force group of the bias (the unbiased energy is every other group)."""
PMF_BINS = 36


@dataclass(frozen=True)
class UmbrellaSettings:
    """What ``run_umbrella`` runs, per temperature.

    temperatures: K. width_deg: the bias's standard deviation in φ, degrees (κ = k_B T / width², so the windows
    overlap alike at every temperature). ns_per_window: production per window after ``equilibration_ps``.
    Dynamics as ``trade-md md``: LangevinMiddle, ``timestep_fs``, ``friction_per_ps``. exchange_every_ps:
    neighbouring windows attempt to swap configurations this often (replica-exchange umbrella sampling; 0: never).
    chunk_ps: checkpoint interval.
    """

    temperatures: tuple[float, ...]
    n_windows: int = 36
    width_deg: float = 6.0
    ns_per_window: float = 0.5
    equilibration_ps: float = 100.0
    frame_interval_ps: float = 0.1
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    exchange_every_ps: float = 1.0
    chunk_ps: float = 50.0
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [t for t in self.temperatures if not (math.isfinite(t) and t > 0)]
        if not self.temperatures or bad:
            raise InputError(f"temperatures must be finite and > 0 K, got {list(self.temperatures)}; e.g. 300,450")
        if self.n_windows < 4:
            raise InputError(f"n_windows must be at least 4, got {self.n_windows}; 36 (10° apart) is the default")
        spacing = 360.0 / self.n_windows
        if not 0 < self.width_deg <= 360.0:
            raise InputError(f"width_deg must be in (0, 360], got {self.width_deg}")
        if self.width_deg < 0.3 * spacing:
            raise InputError(f"windows {spacing:.1f}° apart with a {self.width_deg}° width do not overlap; use more "
                             f"windows or a width of at least {0.3 * spacing:.1f}°")
        for name in ("ns_per_window", "frame_interval_ps", "timestep_fs", "friction_per_ps", "chunk_ps"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.equilibration_ps < 0 or self.exchange_every_ps < 0:
            raise InputError(f"equilibration_ps and exchange_every_ps must be >= 0, got {self.equilibration_ps} and "
                             f"{self.exchange_every_ps}")
        if self.frame_interval_ps * 1000.0 < self.timestep_fs:
            raise InputError(f"frame_interval_ps {self.frame_interval_ps} is shorter than one {self.timestep_fs} fs step")
        if self.exchange_every_ps:
            ratio = self.exchange_every_ps / self.frame_interval_ps
            if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
                raise InputError(f"exchange_every_ps {self.exchange_every_ps} must be a whole multiple of the "
                                 f"{self.frame_interval_ps} ps frame interval (or 0 for independent windows)")
            if self.n_windows % 2:
                raise InputError(f"exchanging windows form a ring of alternating pairs and need an even number of "
                                 f"windows, got {self.n_windows}")
        names = [f"{t:g}" for t in self.temperatures]
        if len(set(names)) != len(names):
            raise InputError(f"temperatures {list(self.temperatures)} repeat (as {names}); give each once")
        if self.seed < 0:
            raise InputError(f"seed must be >= 0, got {self.seed}")

    @property
    def centres(self) -> np.ndarray:
        """Window centres [n_windows], radians in [−π, π)."""
        return -math.pi + 2.0 * math.pi * np.arange(self.n_windows) / self.n_windows

    def force_constant(self, temperature: float) -> float:
        """κ in kJ/mol/rad² at ``temperature`` (K)."""
        return KB * temperature / math.radians(self.width_deg) ** 2

    @property
    def steps_per_frame(self) -> int:
        return max(1, round(self.frame_interval_ps * 1000.0 / self.timestep_fs))

    @property
    def frames_per_window(self) -> int:
        return max(1, round(self.ns_per_window * 1000.0 / self.frame_interval_ps))


def wrapped_angle(angle: np.ndarray, centre: float | np.ndarray) -> np.ndarray:
    """Shortest signed angle ``angle − centre`` in [−π, π) (radians, broadcasting)."""
    return np.mod(np.asarray(angle, dtype=np.float64) - centre + math.pi, 2.0 * math.pi) - math.pi


def bias_energies(phi: np.ndarray, centres: np.ndarray, force_constant: float) -> np.ndarray:
    """b_k(φ_n) [K, N] kJ/mol: ½ κ d(φ_n, c_k)², φ [N] and centres [K] in radians, κ in kJ/mol/rad²."""
    return 0.5 * force_constant * wrapped_angle(np.asarray(phi)[None, :], np.asarray(centres)[:, None]) ** 2


def phi_atoms(system: MolecularSystem) -> np.ndarray:
    """Atom indices [4] of the backbone φ (C–N–CA–C, mdtraj's definition); InputError unless the molecule has exactly
    one φ and one ψ."""
    import mdtraj

    trajectory = mdtraj.Trajectory(system.positions[None].astype(np.float32), mdtraj.Topology.from_openmm(system.topology))
    phi, _ = mdtraj.compute_phi(trajectory)
    psi, _ = mdtraj.compute_psi(trajectory)
    if len(phi) != 1 or len(psi) != 1:
        raise InputError(f"umbrella sampling along φ needs a molecule with exactly one backbone φ and ψ (as alanine "
                         f"dipeptide); this one has {len(phi)} φ and {len(psi)} ψ")
    return phi[0]


def _chiral_centres(system: MolecularSystem) -> np.ndarray:
    """Stereocentres ``[m, 4]`` (centre, three neighbours) found as the generator finds them (``ic.chiral_centres``)."""
    atoms = list(system.topology.atoms())
    bonds = [(bond[0].index, bond[1].index) for bond in system.topology.bonds()]
    elements = [atom.element.symbol if atom.element is not None else atom.name for atom in atoms]
    return np.asarray(chiral_centres(len(atoms), bonds, elements), dtype=np.int64).reshape(-1, 4)


def _chirality_signs(positions: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Handedness [n, m] (±1, 0 if flat) of every stereocentre in frames ``positions [n, atoms, 3]`` nm."""
    return handedness(torch.from_numpy(np.asarray(positions, dtype=np.float64)), torch.from_numpy(centres)).numpy()


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


def _temperature_path(out: Path, temperature: float) -> Path:
    return out / "windows" / f"T{temperature:g}K.npz"


def swap_log_acceptance(phi_i: float, phi_j: float, centre_i: float, centre_j: float, force_constant: float,
                        beta: float) -> float:
    """ln of the Metropolis acceptance of swapping the configurations (φ_i in window i, φ_j in window j):
    −β [b_i(φ_j) + b_j(φ_i) − b_i(φ_i) − b_j(φ_j)] (β in mol/kJ; the unbiased energies cancel at one temperature)."""
    b = bias_energies(np.array([phi_i, phi_j]), np.array([centre_i, centre_j]), force_constant)
    return float(-beta * (b[0, 1] + b[1, 0] - b[0, 0] - b[1, 1]))


def _load_progress(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise InputError(f"checkpoint {path} is damaged ({type(error).__name__}: {error}); delete it to rerun that "
                         "temperature") from None


def _save_progress(path: Path, progress: dict[str, np.ndarray]) -> None:
    with atomic_write_path(path) as temp, open(temp, "wb") as handle:
        np.savez(handle, **progress)


def _run_temperature(out: str, t_index: int, platform: str) -> float:
    """Run (or continue) every window at the ``t_index``-th temperature of ``out``'s run.json in lockstep,
    exchanging neighbours every ``exchange_every_ps``; checkpoints after equilibration and every ``chunk_ps``.
    Returns the wall time of this call (s)."""
    import mdtraj

    record = read_json(Path(out) / "run.json")
    settings = _recorded_settings(record)
    system = MolecularSystem.deserialize(record["system"])
    temperature = settings.temperatures[t_index]
    path = _temperature_path(Path(out), temperature)
    kappa, beta = settings.force_constant(temperature), 1.0 / (KB * temperature)
    stereocentres = _chiral_centres(system)
    reference_signs = _chirality_signs(system.positions[None], stereocentres)[0]
    cis_features = [feature for feature in peptide_features(system.topology) if feature.kind == "cis"]
    atoms = phi_atoms(system)
    topology = mdtraj.Topology.from_openmm(system.topology)
    systems = [biased_system(system, atoms, centre, kappa) for centre in settings.centres]
    n_windows, n_atoms = settings.n_windows, system.n_atoms
    begun = time.perf_counter()

    def contexts(keys: tuple[int, ...]) -> list[tuple[openmm.Context, openmm.Integrator]]:
        made = []
        for k, biased in enumerate(systems):
            integrator = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin,
                                                         settings.friction_per_ps / unit.picosecond,
                                                         settings.timestep_fs * unit.femtosecond)
            integrator.setRandomNumberSeed(openmm_seed(settings.seed, t_index, k, *keys))
            made.append((openmm.Context(biased, integrator, openmm.Platform.getPlatformByName(platform)), integrator))
        return made

    progress = _load_progress(path)
    if progress is None:  # minimise in each window's bias, then equilibrate without exchanges
        positions, velocities = np.empty((n_windows, n_atoms, 3)), np.empty((n_windows, n_atoms, 3))
        for k, (context, integrator) in enumerate(contexts((2**30,))):
            context.setPositions(system.positions)
            openmm.LocalEnergyMinimizer.minimize(context)
            context.setVelocitiesToTemperature(temperature * unit.kelvin, openmm_seed(settings.seed, t_index, k, 2**30 + 1))
            integrator.step(round(settings.equilibration_ps * 1000.0 / settings.timestep_fs))
            state = context.getState(getPositions=True, getVelocities=True)
            positions[k] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            velocities[k] = state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
        progress = {"phi": np.zeros((n_windows, 0)), "psi": np.zeros((n_windows, 0)),
                    "energy": np.zeros((n_windows, 0)), "wrong_chirality": np.zeros((n_windows, 0), bool),
                    "cis": np.zeros((n_windows, 0, len(cis_features)), bool),
                    "lineage": np.zeros((n_windows, 0), np.int64), "positions": positions, "velocities": velocities,
                    "lineage_now": np.arange(n_windows), "attempts": np.zeros(n_windows, np.int64),
                    "accepts": np.zeros(n_windows, np.int64), "wall_s": np.array(0.0)}
        _save_progress(path, progress)
    unbiased = sum(1 << g for g in range(32) if g != BIAS_GROUP)
    exchange_every = round(settings.exchange_every_ps / settings.frame_interval_ps) if settings.exchange_every_ps else 0
    chunk_frames = max(1, round(settings.chunk_ps / settings.frame_interval_ps))
    while (done := progress["phi"].shape[1]) < settings.frames_per_window:
        started = time.perf_counter()
        chunk = done // chunk_frames
        n = min(chunk_frames, settings.frames_per_window - done)
        generator = np.random.default_rng([settings.seed, t_index, chunk, 7])
        made = contexts((chunk,))
        for k, (context, _) in enumerate(made):
            context.setPositions(progress["positions"][k])
            context.setVelocities(progress["velocities"][k])
        lineage = progress["lineage_now"].copy()
        attempts, accepts = progress["attempts"].copy(), progress["accepts"].copy()
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
                phi_now, _ = backbone_dihedrals(topology, frames[:, i])
                parity = ((done + i + 1) // exchange_every) % 2
                for a in range(parity, n_windows - (1 - parity) * (n_windows % 2 == 1), 2):
                    b = (a + 1) % n_windows
                    attempts[a] += 1
                    if generator.random() < math.exp(min(0.0, swap_log_acceptance(
                            phi_now[a], phi_now[b], settings.centres[a], settings.centres[b], kappa, beta))):
                        accepts[a] += 1
                        state_a = made[a][0].getState(getPositions=True, getVelocities=True)
                        state_b = made[b][0].getState(getPositions=True, getVelocities=True)
                        made[a][0].setPositions(state_b.getPositions())
                        made[a][0].setVelocities(state_b.getVelocities())
                        made[b][0].setPositions(state_a.getPositions())
                        made[b][0].setVelocities(state_a.getVelocities())
                        lineage[a], lineage[b] = lineage[b], lineage[a]
        flat = frames.reshape(-1, n_atoms, 3)
        phi, psi = (angles.reshape(n_windows, n) for angles in backbone_dihedrals(topology, flat))
        cis = np.stack([feature(flat) for feature in cis_features], axis=-1).reshape(n_windows, n, -1) \
            if cis_features else np.zeros((n_windows, n, 0), bool)
        wrong = np.any(_chirality_signs(flat, stereocentres) != reference_signs[None, :], axis=1).reshape(n_windows, n)
        final = [context.getState(getPositions=True, getVelocities=True) for context, _ in made]
        progress = {
            "phi": np.concatenate([progress["phi"], phi], axis=1),
            "psi": np.concatenate([progress["psi"], psi], axis=1),
            "energy": np.concatenate([progress["energy"], energy], axis=1),
            "wrong_chirality": np.concatenate([progress["wrong_chirality"], wrong], axis=1),
            "cis": np.concatenate([progress["cis"], cis], axis=1),
            "lineage": np.concatenate([progress["lineage"], lineages], axis=1),
            "positions": np.array([st.getPositions(asNumpy=True).value_in_unit(unit.nanometer) for st in final]),
            "velocities": np.array([st.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
                                    for st in final]),
            "lineage_now": lineage, "attempts": attempts, "accepts": accepts,
            "wall_s": np.array(float(progress["wall_s"]) + time.perf_counter() - started),
        }
        _save_progress(path, progress)
    return time.perf_counter() - begun


def _finished(out: Path, settings: UmbrellaSettings, temperature: float) -> bool:
    progress = _load_progress(_temperature_path(out, temperature))
    return progress is not None and progress["phi"].shape[1] >= settings.frames_per_window


def run_umbrella(system: MolecularSystem, settings: UmbrellaSettings, out: str | os.PathLike, *,
                 workers: int = 1, platform: str = "Reference", resume: bool = False, progress: bool = True,
                 command: str | None = None, block_ps: float = 25.0, stride_ps: float = 1.0) -> dict[str, Any]:
    """Run every window of every temperature into ``out`` (``workers`` processes), then analyse
    (:func:`analyse_umbrella` with ``block_ps`` and ``stride_ps``); returns the summary.

    resume: continue ``out`` (its run.json must hold the same system and settings); finished windows are kept.
    """
    out = Path(out)
    record_path = out / "run.json"
    if resume:
        record = read_json(record_path)
        if record.get("format") != RUN_FORMAT:
            raise InputError(f"{record_path} is not a trade-md umbrella run (format {record.get('format')!r})")
        if MolecularSystem.deserialize(record["system"]).fingerprint() != system.fingerprint():
            raise SystemMismatchError(f"{out} was run on another system ({record['system']['name']}); resume it with "
                                      "the same --system/--pdb, or start a new --out")
        if record["settings"] != _settings_json(settings):
            raise InputError(f"the settings differ from those of the run in {out} ({record['settings']}); resume "
                             "with the same options, or start a new --out")
        if record.get("platform") != platform:
            raise InputError(f"{out} ran on the {record.get('platform')} platform; resume it with --platform "
                             f"{record.get('platform')} (another platform would continue other trajectories)")
    else:
        if record_path.exists():
            raise InputError(f"{out} already holds an umbrella run; pass --resume to continue it or choose a new --out")
        phi_atoms(system)  # fail before any MD on a molecule without a single φ/ψ
        write_json_atomic(record_path, {
            "format": RUN_FORMAT, "command": command, "settings": _settings_json(settings),
            "system": system.serialize(), "platform": platform, "versions": package_versions("openmm", "pymbar"),
        })
    tasks = [i for i, t in enumerate(settings.temperatures) if not _finished(out, settings, t)]
    with tqdm(total=len(settings.temperatures), initial=len(settings.temperatures) - len(tasks), unit="temperature",
              desc="umbrella", dynamic_ncols=True, disable=None if progress else True) as bar:
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
    _write_outputs(out, summary)
    return summary


def _finite_or_null(value: Any) -> Any:
    """``value`` with numpy arrays as lists and ±inf/NaN as None, recursively (strict JSON has no Infinity)."""
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_finite_or_null(item) for item in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _write_outputs(out: Path, summary: dict[str, Any]) -> None:
    """``summary.json`` and the figure ``profile.png``/``.svg`` (F(φ) at every temperature)."""
    import matplotlib.pyplot as plt

    from trade_md.analysis.plots import profile_plot

    write_json_atomic(out / "summary.json", _finite_or_null(summary))
    figure = profile_plot({f"{r['temperature']:g} K": (r["pmf_bin_edges"], r["pmf_kT"], r["pmf_sem_kT"])
                           for r in summary["per_temperature"]}, out / "profile")
    plt.close(figure)


def _recorded_settings(record: dict[str, Any]) -> UmbrellaSettings:
    return UmbrellaSettings(**{**record["settings"], "temperatures": tuple(record["settings"]["temperatures"])})


def _settings_json(settings: UmbrellaSettings) -> dict[str, Any]:
    data = asdict(settings)
    data["temperatures"] = [float(t) for t in settings.temperatures]
    return data


# ----------------------------------------------------------------------------------------------------- analysis


def unbias_windows(phi_windows: Sequence[np.ndarray], centres: np.ndarray, force_constant: float, temperature: float,
                   *, energies: Sequence[np.ndarray] | None = None, psi_windows: Sequence[np.ndarray] | None = None,
                   block_frames: int | None = None, exchanged: bool = False,
                   n_bootstrap: int = 100, seed: int = 0) -> dict[str, Any]:
    """MBAR over umbrella windows at one temperature: P(φ > 0), ΔF, ⟨U⟩ and F(φ) of the unbiased density.

    phi_windows: one array [n_k] of φ (radians) per window, in the order of ``centres [K]`` (radians);
    force_constant: κ kJ/mol/rad²; temperature: K; energies: the unbiased U [n_k] kJ/mol per window (for ⟨U⟩);
    psi_windows: ψ [n_k] radians per window (for the Ramachandran histogram, ``PMF_BINS``² bins, rows φ);
    block_frames: frames per bootstrap block (default: n_k // 20 of each window, at least 1); exchanged: the
    windows swapped configurations, so frame i of every window belongs to time step i and a block takes all
    windows' frames of a time interval together (otherwise blocks are resampled within each window). ΔF and F(φ)
    in k_B T; errors are block-bootstrap standard errors.
    """
    from trade_md.analysis.mbar import MBAREstimator
    from trade_md.analysis.metrics import ramachandran_histogram

    beta = 1.0 / (KB * temperature)
    phi = np.concatenate([np.asarray(p, dtype=np.float64) for p in phi_windows])
    n_k = np.array([len(p) for p in phi_windows] + [0])
    u_kn = np.vstack([beta * bias_energies(phi, centres, force_constant), np.zeros((1, phi.size))])
    estimator = MBAREstimator(u_kn, n_k)
    if exchanged and len(set(n_k[:-1].tolist())) != 1:
        raise InputError("exchanging windows must hold the same number of frames each")
    blocks = np.concatenate([(0 if exchanged else k * 10**9) + np.arange(n) // (block_frames or max(1, n // 20))
                             for k, n in enumerate(n_k[:-1])])
    edges = np.linspace(-math.pi, math.pi, PMF_BINS + 1)
    bins = np.clip(np.digitize(phi, edges) - 1, 0, PMF_BINS - 1)
    observables = {f"bin{b}": (bins == b).astype(np.float64) for b in range(PMF_BINS)}
    if energies is not None:
        observables["energy"] = np.concatenate([np.asarray(e, dtype=np.float64) for e in energies])
    positive = phi > 0
    errors = estimator.block_bootstrap(blocks, observables=observables, indicators={"phi_positive": positive},
                                       n_bootstrap=n_bootstrap, seed=seed,
                                       strata=None if exchanged else np.repeat(np.arange(n_k.size), n_k))
    weights = estimator.weights()[:, -1]
    delta_f, _, p, _ = estimator.indicator_free_energy(positive)
    histogram = np.array([weights[bins == b].sum() for b in range(PMF_BINS)])
    with np.errstate(divide="ignore"):
        profile = -np.log(histogram)
    profile -= np.min(profile)
    histogram_sem = np.array([errors[f"bin{b}"][-1] for b in range(PMF_BINS)])
    overlap = estimator.overlap()
    result: dict[str, Any] = {
        "temperature": float(temperature),
        "delta_f_kT": float(delta_f[-1]),
        "delta_f_sem_kT": float(errors["phi_positive"][-1]),
        "p_phi_positive": float(p[-1]),
        "p_phi_positive_sem": float(errors["phi_positive_p"][-1]),
        "pmf_bin_edges": edges,
        "pmf_kT": np.where(np.isfinite(profile), profile, np.nan),
        "pmf_sem_kT": np.where(histogram > 0, histogram_sem / np.maximum(histogram, 1e-300), np.nan),
        "effective_samples": float(estimator.effective_sample_numbers()[-1]),
        "neighbour_overlap": np.append(overlap.neighbours, overlap.matrix[-1, 0]),
        "mbar_converged": estimator.converged,
        "warnings": list(estimator.warnings),
    }
    if psi_windows is not None:
        psi = np.concatenate([np.asarray(p, dtype=np.float64) for p in psi_windows])
        result["ramachandran"] = ramachandran_histogram(phi, psi, weights, bins=PMF_BINS)
    if energies is not None:
        result["mean_energy"] = float(weights @ observables["energy"])
        result["mean_energy_sem"] = float(errors["energy"][-1])
    if np.min(result["neighbour_overlap"]) < 0.03:
        result["warnings"].append(f"neighbouring windows barely overlap (smallest overlap "
                                  f"{np.min(result['neighbour_overlap']):.3f} < 0.03): use more windows or a wider width")
    return result


def analyse_umbrella(out: str | os.PathLike, *, block_ps: float = 25.0, stride_ps: float = 1.0,
                     discard_ps: float = 0.0, n_bootstrap: int = 100) -> dict[str, Any]:
    """Analyse every temperature of the umbrella run in ``out`` (all windows must be finished); see the module doc.

    stride_ps: MBAR uses every frame this far apart (a solve costs ∝ frames × windows, and frames closer than φ's
    correlation time add little); block_ps: bootstrap block length; discard_ps: production dropped from the start
    of every window (on top of the run's equilibration).
    """
    if not (stride_ps > 0 and block_ps >= stride_ps):
        raise InputError(f"need block_ps >= stride_ps > 0, got block_ps {block_ps} and stride_ps {stride_ps}")
    if abs(block_ps / stride_ps - round(block_ps / stride_ps)) > 1e-6:
        raise InputError(f"block_ps {block_ps} must be a whole multiple of stride_ps {stride_ps}")
    if not 0 <= discard_ps:
        raise InputError(f"discard_ps must be >= 0, got {discard_ps}")
    from pymbar import timeseries

    out = Path(out)
    record = read_json(out / "run.json")
    settings = _recorded_settings(record)
    missing = [f"{t:g} K" for t in settings.temperatures if not _finished(out, settings, t)]
    if missing:
        raise InputError(f"the windows of {out} at {', '.join(missing)} are not finished; run "
                         f"`trade-md umbrella --resume --out {out} ...` first")
    per_temperature = []
    for temperature in settings.temperatures:
        stride = round(stride_ps / settings.frame_interval_ps)
        if stride < 1 or abs(stride_ps / settings.frame_interval_ps - stride) > 1e-6:
            raise InputError(f"stride_ps {stride_ps} must be a whole multiple of the run's "
                             f"{settings.frame_interval_ps} ps frame interval")
        first = round(discard_ps / settings.frame_interval_ps)
        if first >= settings.frames_per_window:
            raise InputError(f"discard_ps {discard_ps} leaves no frames of the {settings.ns_per_window} ns windows")
        data = _load_progress(_temperature_path(out, temperature))
        frames = {key: data[key][:, first:settings.frames_per_window:stride]
                  for key in ("phi", "psi", "energy", "cis", "wrong_chirality", "lineage")}
        phi = list(frames["phi"])
        result = unbias_windows(phi, settings.centres, settings.force_constant(temperature), temperature,
                                energies=list(frames["energy"]), psi_windows=list(frames["psi"]),
                                block_frames=max(1, round(block_ps / (stride * settings.frame_interval_ps))),
                                exchanged=bool(settings.exchange_every_ps), n_bootstrap=n_bootstrap)
        # slowest of φ about the centre and ψ (which φ does not drive and which switches slowly at low T)
        inefficiency = [max(float(timeseries.statistical_inefficiency(series))
                            for series in (np.cos(p - c), np.cos(q), np.sin(q)))
                        for p, q, c in zip(phi, frames["psi"], settings.centres)]
        cis = frames["cis"].mean(axis=1)
        wrong = int(frames["wrong_chirality"].sum())
        result["exchange_acceptance"] = (data["accepts"] / np.maximum(data["attempts"], 1)
                                         if settings.exchange_every_ps else None)
        result["replicas_crossing_phi_zero"] = int(sum(
            np.any(frames["phi"][frames["lineage"] == r] > 0.5) and np.any(frames["phi"][frames["lineage"] == r] < -0.5)
            for r in range(settings.n_windows)))
        result["wall_s"] = float(data["wall_s"])
        result["windows"] = {
            "centre_deg": np.degrees(settings.centres),
            "mean_phi_deg": [float(np.degrees(settings.centres[k] + np.angle(np.mean(np.exp(1j * wrapped_angle(p, c))))))
                             for k, (p, c) in enumerate(zip(phi, settings.centres))],
            "std_phi_deg": [float(np.degrees(np.std(wrapped_angle(p, c)))) for p, c in zip(phi, settings.centres)],
            "statistical_inefficiency_frames": inefficiency,
            "cis_fraction_per_bond": cis,
        }
        result["wrong_chirality_frames"] = wrong
        result["frames_per_window_analysed"] = int(len(phi[0]))
        blocks_per_window = (settings.frames_per_window - first) // max(1, round(block_ps / settings.frame_interval_ps))
        if blocks_per_window < 10:
            result["warnings"].append(f"each window holds only {blocks_per_window} bootstrap blocks of {block_ps:g} "
                                      "ps; the standard errors are unreliable below 10: run longer windows or analyse "
                                      "with shorter --block-ps")
        if wrong:
            result["warnings"].append(f"{wrong} frames at {temperature:g} K have a wrong-handed Cα (inverted, or "
                                      "momentarily flattened at high temperature); they are kept in the estimates")
        slowest_ps = max(inefficiency) * stride * settings.frame_interval_ps
        if slowest_ps > block_ps / 2:
            result["warnings"].append(f"φ or ψ decorrelates in up to {slowest_ps:.1f} ps in a window, more than half "
                                      f"the {block_ps:g} ps bootstrap blocks: errors are optimistic; analyse with "
                                      "--block-ps of at least twice that (and run longer if that leaves < 10 blocks)")
        per_temperature.append(result)
    summary: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        "conventions": {
            "units": "energies kJ/mol, temperatures K, angles radians unless named _deg",
            "delta_f": "F(φ>0) − F(φ<0) = −k_B T ln(P(φ>0)/P(φ<0)) in k_B T, φ the backbone dihedral",
            "sem": f"one standard error from {n_bootstrap} bootstrap MBAR re-solves over blocks of {block_ps:g} ps "
                   "(all windows' frames of a time block together when windows exchange, else within each window)",
            "frames": f"every {stride_ps:g} ps of each window's production after the first {discard_ps:g} ps enters "
                      "MBAR",
            "pmf": f"F(φ)/k_B T − min on {PMF_BINS} equal bins of [−π, π)",
            "ramachandran": f"{PMF_BINS}×{PMF_BINS} bins of equal width on [−π, π)², rows φ, columns ψ, MBAR-weighted "
                            "probabilities summing to 1",
        },
        "run": {"command": record.get("command"), "settings": record["settings"], "platform": record.get("platform"),
                "versions": record.get("versions")},
        "system": {"name": record["system"]["name"],
                   "fingerprint": MolecularSystem.deserialize(record["system"]).fingerprint()},
        "temperatures": [r["temperature"] for r in per_temperature],
        "warnings": [f"{r['temperature']:g} K: {m}" for r in per_temperature for m in r["warnings"]],
    }
    for key in ("delta_f_kT", "delta_f_sem_kT", "p_phi_positive", "p_phi_positive_sem", "mean_energy",
                "mean_energy_sem", "ramachandran"):
        summary[key] = [r.pop(key) if key == "ramachandran" else r[key] for r in per_temperature]
    summary["delta_f"] = [r["delta_f_kT"] * KB * r["temperature"] for r in per_temperature]
    summary["delta_f_sem"] = [r["delta_f_sem_kT"] * KB * r["temperature"] for r in per_temperature]
    summary["per_temperature"] = per_temperature
    return summary


# ----------------------------------------------------------------------------------------------------- command line


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``trade-md umbrella``."""
    from trade_md.cli.common import add_system_arguments

    parser = subparsers.add_parser(
        "umbrella", help="umbrella sampling along φ with MBAR: ΔF(φ>0 vs φ<0) and F(φ) without barrier crossings",
        description="Umbrella sampling along the backbone φ (molecules with one φ and ψ, as alanine dipeptide): "
                    "windows evenly spread over the circle, Langevin MD in each with neighbour swaps, MBAR to "
                    "unbias. Writes OUT/summary.json with ΔF, P(φ>0), <U> and F(φ) per temperature, and "
                    "OUT/profile.png.",
    )
    add_system_arguments(parser)
    parser.add_argument("--temperatures", help="K, one value or a comma list, e.g. 300,450 (default 300)")
    parser.add_argument("--windows", type=int, default=36, help="windows over 360° (default %(default)s)")
    parser.add_argument("--width-deg", type=float, default=6.0,
                        help="bias standard deviation in degrees; κ = k_B T / width² (default %(default)s)")
    parser.add_argument("--ns-per-window", type=float, default=0.5, help="production per window, ns (default %(default)s)")
    parser.add_argument("--equilibration-ps", type=float, default=100.0,
                        help="per window, after minimising with the bias, ps (default %(default)s)")
    parser.add_argument("--exchange-every-ps", type=float, default=1.0,
                        help="neighbouring windows attempt a configuration swap this often, ps; 0: independent "
                             "windows (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Langevin noise and swaps (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes, one temperature each (default %(default)s)")
    parser.add_argument("--platform", help="OpenMM platform (default Reference; with --resume the run's)")
    parser.add_argument("--block-ps", type=float, default=25.0,
                        help="bootstrap block length, ps of one window (default %(default)s)")
    parser.add_argument("--stride-ps", type=float, default=1.0,
                        help="analyse every frame this far apart, ps (default %(default)s)")
    parser.add_argument("--discard-ps", type=float, default=0.0,
                        help="with --analyse: production dropped from the start of each window, ps (default %(default)s)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out with its recorded settings (other run options are ignored)")
    parser.add_argument("--analyse", action="store_true", help="only (re)analyse the finished run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_command, command="umbrella")


def _command(args: argparse.Namespace) -> int:
    from trade_md.cli.common import system_from_args

    out = Path(args.out)
    if args.analyse:
        summary = analyse_umbrella(out, block_ps=args.block_ps, stride_ps=args.stride_ps, discard_ps=args.discard_ps)
        _write_outputs(out, summary)
    else:
        given_system = any(getattr(args, name, None) for name in ("system", "pdb", "prmtop"))
        command = " ".join(["trade-md"] + sys.argv[1:]) if sys.argv and sys.argv[0].endswith("trade-md") else None
        if args.resume:  # the run's own settings, system and platform; a given system must match it
            record = read_json(out / "run.json")
            if record.get("format") != RUN_FORMAT:
                raise InputError(f"{out / 'run.json'} is not a trade-md umbrella run (format {record.get('format')!r})")
            settings = _recorded_settings(record)
            system = system_from_args(args) if given_system else MolecularSystem.deserialize(record["system"])
            platform = args.platform or record.get("platform", "Reference")
        else:
            if not given_system:
                raise InputError("no system given; add --system alanine-dipeptide (or --pdb/--prmtop), or --resume")
            temperatures = tuple(to_kelvin(float(t)) for t in _numbers(args.temperatures or "300"))
            settings = UmbrellaSettings(temperatures=temperatures, n_windows=args.windows, width_deg=args.width_deg,
                                        ns_per_window=args.ns_per_window, equilibration_ps=args.equilibration_ps,
                                        exchange_every_ps=args.exchange_every_ps, seed=args.seed)
            system, platform = system_from_args(args), args.platform or "Reference"
        summary = run_umbrella(system, settings, out, workers=args.workers, platform=platform, resume=args.resume,
                               progress=not args.no_progress, command=command, block_ps=args.block_ps,
                               stride_ps=args.stride_ps)
    for message in summary["warnings"]:
        print(f"trade-md umbrella: WARNING: {message}", file=sys.stderr)
    print(f"{'T/K':>7} {'dF/kT':>7} {'+-':>5} {'P(phi>0)':>9} {'<U> kJ/mol':>11} {'+-':>5}")
    for r in summary["per_temperature"]:
        print(f"{r['temperature']:7.1f} {r['delta_f_kT']:7.3f} {r['delta_f_sem_kT']:5.3f} {r['p_phi_positive']:9.4f} "
              f"{r['mean_energy']:11.2f} {r['mean_energy_sem']:5.2f}")
    return 0


def _numbers(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--temperatures {text!r} must be kelvin as one number or a comma list, e.g. 300,450") from None
