"""Tests of trade_md.md: thermostat physics, dataset files, resume, replicas, CLI (trade_md.cli.md)."""

from __future__ import annotations

import argparse
import doctest
import math
from pathlib import Path

import numpy as np
import pytest

from trade_md import md
from trade_md.cli import md as md_cli
from trade_md.convergence import block_standard_error
from trade_md.errors import InputError, SystemMismatchError
from trade_md.formats.dataset import Dataset, load_dataset
from trade_md.md import degrees_of_freedom, run_md
from trade_md.systems import SYSTEMS_DIR, MolecularSystem, load_system
from trade_md.thermo import KB

pytestmark = pytest.mark.filterwarnings("ignore::trade_md.convergence.ConvergenceWarning")

# Short runs: Reference platform (no timing probe), one in-process replica.
QUICK = {"replicas": 1, "platform": "Reference", "progress": False}


@pytest.fixture(scope="module")
def ala2() -> MolecularSystem:
    return load_system("alanine-dipeptide")


@pytest.fixture(scope="module")
def thermostat_runs(ala2: MolecularSystem, tmp_path_factory: pytest.TempPathFactory) -> dict[float, Dataset]:
    """80 ps at 300 K and at 1000 K after 10 ps equilibration, frames every 0.08 ps (1,000 frames each)."""
    root = tmp_path_factory.mktemp("thermostat")
    return {t: run_md(ala2, t, root / f"{t:g}K", ns=0.08, seed=7, frame_interval_ps=0.08, equilibration_ps=10.0,
                      **QUICK) for t in (300.0, 1000.0)}


def _kinetic_temperature(out: Path, dof: int) -> tuple[float, float]:
    """Equipartition temperature 2<K>/(dof k_B) and its block-averaged standard error, from data.npz."""
    with np.load(out / "data.npz") as data:
        series = 2.0 * data["kinetic_energies"] / (dof * KB)
    return float(series.mean()), block_standard_error([series])


# ----------------------------------------------------------------------------------------------------- physics


def test_doctests() -> None:
    assert doctest.testmod(md).failed == 0


def test_degrees_of_freedom(ala2: MolecularSystem) -> None:
    assert degrees_of_freedom(ala2.system) == 3 * 22 - 3  # CMMotionRemover removes 3
    assert degrees_of_freedom(load_system("alanine-dipeptide", constraints="HBonds").system) == 3 * 22 - 12 - 3


def test_mean_potential_energy_is_ordered_by_temperature(thermostat_runs: dict[float, Dataset]) -> None:
    cold, hot = thermostat_runs[300.0], thermostat_runs[1000.0]
    error = math.hypot(block_standard_error([cold.energies]), block_standard_error([hot.energies]))
    # Harmonic estimate of the gap: (dof/2) k_B ΔT = 31.5 * 0.0083 * 700 ≈ 183 kJ/mol; demand 10 standard errors.
    assert hot.energies.mean() - cold.energies.mean() > 10.0 * error
    assert 100.0 < hot.energies.mean() - cold.energies.mean() < 300.0


def test_kinetic_temperature_matches_thermostat(thermostat_runs: dict[float, Dataset]) -> None:
    for temperature, dataset in thermostat_runs.items():
        out = dataset.path
        mean, error = _kinetic_temperature(out, 63)
        assert error < 0.03 * temperature  # the test has resolving power
        assert abs(mean - temperature) < 4.0 * error, (temperature, mean, error)
        print(f"equipartition at {temperature:g} K: {mean:.1f} +- {error:.1f} K")
        assert dataset.metadata["kinetic_temperature"] == pytest.approx(mean, rel=1e-12)


def test_hbond_constraints_two_femtoseconds(tmp_path: Path) -> None:
    constrained = load_system("alanine-dipeptide", constraints="HBonds")
    # 200 ps: the kinetic energy of this molecule stays correlated for tens of ps (block SE ~8 K at 600 K).
    dataset = run_md(constrained, 600.0, tmp_path / "hb", ns=0.2, seed=3, timestep_fs=2.0, frame_interval_ps=0.1,
                     equilibration_ps=10.0, **QUICK)
    mean, error = _kinetic_temperature(tmp_path / "hb", 51)
    assert error < 0.03 * 600.0 and abs(mean - 600.0) < 4.0 * error, (mean, error)
    print(f"equipartition with HBonds, 2 fs: {mean:.1f} +- {error:.1f} K")
    # With 63 dof (constraints ignored) the same kinetic energies would read ~19 % too cold: far outside 4 sigma.
    assert abs(mean * 51 / 63 - 600.0) > 4.0 * error
    for i, j, length in constrained.constrained_bonds():
        distances = np.linalg.norm(dataset.positions[:, i] - dataset.positions[:, j], axis=-1)
        np.testing.assert_allclose(distances, length, rtol=1e-4)


def test_hydrogen_mass_repartitioning_moves_mass_from_the_bonded_atom(ala2: MolecularSystem) -> None:
    heavy = md.repartition_hydrogen_mass(ala2, 4.0)
    masses = np.array([[s.getParticleMass(i)._value for i in range(22)] for s in (ala2.system, heavy)])
    hydrogens = [atom.index for atom in ala2.topology.atoms() if atom.element.symbol == "H"]
    assert len(hydrogens) == 12 and np.allclose(masses[1, hydrogens], 4.0)
    assert masses[1].sum() == pytest.approx(masses[0].sum(), abs=1e-9)      # each pair keeps its mass
    methyl = next(a.index for a in ala2.topology.atoms() if a.residue.name == "ACE" and a.name == "CH3")
    assert masses[1, methyl] == pytest.approx(masses[0, methyl] - 3 * (4.0 - masses[0, hydrogens[0]]))
    assert masses[0, hydrogens[0]] == pytest.approx(1.008, abs=1e-3)         # the molecule's system is untouched
    with pytest.raises(InputError, match=r"hydrogen mass 5 amu leaves atom \d+ \(CH3, ACE\) 0.0\d amu"):
        md.repartition_hydrogen_mass(ala2, 5.0)
    with pytest.raises(InputError, match="hydrogen mass 0.5 amu is invalid"):
        md.repartition_hydrogen_mass(ala2, 0.5)


def test_two_femtoseconds_with_heavy_hydrogens_sample_what_one_does(ala2: MolecularSystem, tmp_path: Path) -> None:
    """Masses leave the distribution of positions as it is; at 2 fs only the integrator's error could change it. 300
    ps at 600 K each, frames every 0.1 ps: the spread of the X–H bond lengths (what a 2 fs step at 1 amu widens first)
    and the mean energy agree with 1 fs within 4 standard errors (about 5 % of the spread: this catches a gross error;
    the 3 ns runs of results §10b resolve 0.5 %), and equipartition holds with the new masses."""
    runs = {}
    for label, timestep, mass in (("1fs", 1.0, None), ("2fs", 2.0, 4.0)):
        runs[label] = run_md(ala2, 600.0, tmp_path / label, ns=0.3, seed=5, timestep_fs=timestep,
                             hydrogen_mass_amu=mass, frame_interval_ps=0.1, equilibration_ps=10.0, **QUICK)
    assert runs["2fs"].metadata["hydrogen_mass_amu"] == 4.0 and runs["2fs"].metadata["steps_per_replica"] == 155_000
    xh = np.array([(a.index, b.index) for a, b in ala2.topology.bonds() if "H" in (a.element.symbol, b.element.symbol)])
    spread = {}
    for label, dataset in runs.items():
        lengths = np.linalg.norm(dataset.positions[:, xh[:, 0]] - dataset.positions[:, xh[:, 1]], axis=-1)
        blocks = lengths.reshape(10, -1, len(xh)).std(axis=1).mean(axis=1)
        spread[label] = (lengths.std(axis=0).mean(), blocks.std(ddof=1) / math.sqrt(10))
    print(f"X-H bond spread (nm): 1 fs {spread['1fs']}, 2 fs + 4 amu {spread['2fs']}")
    assert abs(spread["2fs"][0] - spread["1fs"][0]) < 4.0 * math.hypot(spread["2fs"][1], spread["1fs"][1])
    assert math.hypot(spread["2fs"][1], spread["1fs"][1]) < 0.02 * spread["1fs"][0]       # the test's resolution
    error = math.hypot(*(block_standard_error([d.energies]) for d in runs.values()))
    assert abs(runs["2fs"].energies.mean() - runs["1fs"].energies.mean()) < 4.0 * error
    mean, kinetic_error = _kinetic_temperature(tmp_path / "2fs", 63)
    assert abs(mean - 600.0) < 4.0 * kinetic_error and kinetic_error < 0.03 * 600.0


# ----------------------------------------------------------------------------------------------------- datasets


def test_dataset_files_and_mdtraj(ala2: MolecularSystem, thermostat_runs: dict[float, Dataset]) -> None:
    import mdtraj

    dataset = thermostat_runs[300.0]
    out = dataset.path
    assert sorted(p.name for p in out.iterdir()) == ["data.npz", "run.json", "system.json", "topology.pdb",
                                                     "trajectory.dcd"]
    loaded = load_dataset(out)
    assert len(loaded) == 1000 and loaded.positions.shape == (1000, 22, 3) and loaded.positions.dtype == np.float64
    np.testing.assert_array_equal(loaded.positions, dataset.positions)
    np.testing.assert_array_equal(loaded.energies, dataset.energies)
    np.testing.assert_allclose(loaded.times, 0.08 * np.arange(1, 1001))
    assert loaded.temperature == 300.0 and loaded.system.fingerprint() == ala2.fingerprint()
    meta = loaded.metadata
    assert meta["seed"] == 7 and meta["timestep_fs"] == 1.0 and meta["steps_per_replica"] == 10_000 + 80_000
    assert set(meta["versions"]) >= {"openmm", "mdtraj", "numpy", "trade_md", "python"}
    assert meta["convergence"]["dihedrals"][0]["label"] == "ALA 2"
    trajectory = mdtraj.load(str(out / "trajectory.dcd"), top=str(out / "topology.pdb"))
    assert trajectory.n_frames == 1000 and trajectory.n_atoms == 22
    np.testing.assert_allclose(trajectory.xyz, loaded.positions, atol=1e-5)
    # Stored energies are the energies of the stored frames (float32 positions: ~1e-3 kJ/mol).
    from trade_md.md import _context

    context, _ = _context(loaded.system, {**meta, "platform": "Reference", "platform_properties": {}}, 1)
    for k in (0, 499, 999):
        context.setPositions(loaded.positions[k])
        energy = context.getState(getEnergy=True).getPotentialEnergy()._value
        assert energy == pytest.approx(loaded.energies[k], abs=0.05)


def test_resume_after_interruption_reproduces_an_uninterrupted_run(
        ala2: MolecularSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {"ns": 0.012, "seed": 11, "frame_interval_ps": 0.5, "equilibration_ps": 2.0, "chunk_ps": 4.0, **QUICK}
    whole = run_md(ala2, 600.0, tmp_path / "whole", **settings)
    assert len(whole) == 24
    original = md._write_checkpoint
    calls = []

    def interrupted(*args: object, **kwargs: object) -> None:
        original(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # equilibration + two chunks written, then "Ctrl-C"
            raise KeyboardInterrupt

    monkeypatch.setattr(md, "_write_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_md(ala2, 600.0, tmp_path / "cut", **settings)
    monkeypatch.setattr(md, "_write_checkpoint", original)
    assert not (tmp_path / "cut" / "run.json").exists() and not (tmp_path / "cut" / "data.npz").exists()
    with pytest.raises(InputError, match="incomplete .*--resume"):
        load_dataset(tmp_path / "cut")
    with pytest.raises(InputError, match="interrupted run; continue it with --resume"):
        run_md(ala2, 600.0, tmp_path / "cut", **settings)
    with pytest.raises(InputError, match="temperature 500.0 \\(run has 600.0\\)"):
        run_md(ala2, 500.0, tmp_path / "cut", resume=True, **settings)
    with pytest.raises(InputError, match="hydrogen_mass_amu 4.0 \\(run has None\\)"):
        run_md(ala2, 600.0, tmp_path / "cut", resume=True, hydrogen_mass_amu=4.0, **settings)
    with pytest.raises(SystemMismatchError, match="same system"):
        run_md(load_system("alanine-dipeptide", constraints="HBonds"), 600.0, tmp_path / "cut", resume=True, **settings)
    resumed = run_md(ala2, 600.0, tmp_path / "cut", resume=True, **settings)
    np.testing.assert_array_equal(resumed.positions, whole.positions)
    np.testing.assert_array_equal(resumed.energies, whole.energies)
    np.testing.assert_array_equal(resumed.times, whole.times)
    assert not (tmp_path / "cut" / "checkpoints").exists()
    with pytest.raises(InputError, match="already holds a complete dataset"):
        run_md(ala2, 600.0, tmp_path / "cut", **settings)


def test_parallel_replicas_are_pooled_with_their_index(ala2: MolecularSystem, tmp_path: Path) -> None:
    dataset = run_md(ala2, 600.0, tmp_path / "pool", ns=0.01, replicas=2, seed=5, frame_interval_ps=0.5,
                     equilibration_ps=1.0, platform="Reference", progress=False)
    assert len(dataset) == 20 and dataset.metadata["replicas"] == 2
    np.testing.assert_array_equal(dataset.run, np.repeat([0, 1], 10))
    np.testing.assert_allclose(dataset.times, np.tile(0.5 * np.arange(1, 11), 2))
    assert not np.allclose(dataset.positions[:10], dataset.positions[10:], atol=0.01)  # independent seeds
    report = dataset.metadata["convergence"]["dihedrals"][0]
    assert len(report["population_phi_positive_per_run"]) == 2 and report["runs"] == 2


@pytest.mark.slow
def test_workers_stop_when_the_md_command_is_killed(tmp_path: Path) -> None:
    """SIGTERM to `trade-md md` ends it as Ctrl-C does (exit 143) and leaves no replica process computing on (each
    has ~1 min of MD left); the finished chunks stay for --resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "trade_md.cli", "md", "--system", "alanine-dipeptide", "--temperature", "600",
               "--ns", "3", "--replicas", "2", "--frame-interval", "0.5", "--equilibration", "1",
               "--platform", "Reference", "--seed", "3", "--no-progress", "--out", str(out)]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120.0
    while not list((out / "checkpoints").glob("run_*.npz")) and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = [int(pid) for pid in Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()]
    assert len(workers) >= 2  # the two replicas (and the resource tracker)
    parent.send_signal(signal.SIGTERM)
    _, stderr = parent.communicate(timeout=30)
    assert parent.returncode == 143 and "terminated; finished checkpoints and datasets are kept" in stderr

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            return False
        return state != "Z"

    deadline = time.monotonic() + 15.0
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [pid for pid in workers if alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors
    assert (out / "plan.json").is_file() and list((out / "checkpoints").glob("run_*.npz"))


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a trade-md MD dataset"):
        load_dataset(tmp_path / "empty")


def test_invalid_md_settings(ala2: MolecularSystem, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="timestep 2.0 fs is too long .*hydrogen mass None.*--hydrogen-mass 4"):
        run_md(ala2, 600.0, tmp_path / "a", timestep_fs=2.0, **QUICK)
    with pytest.raises(InputError, match="timestep 2.0 fs is too long .*hydrogen mass 3.0: at most 1 fs"):
        run_md(ala2, 600.0, tmp_path / "a", timestep_fs=2.0, hydrogen_mass_amu=3.0, **QUICK)
    with pytest.raises(InputError, match="not a whole number"):
        run_md(ala2, 600.0, tmp_path / "b", frame_interval_ps=0.0015, **QUICK)
    with pytest.raises(InputError, match="temperature must be"):
        run_md(ala2, -5.0, tmp_path / "c", **QUICK)
    with pytest.raises(InputError, match="platform 'Nope' is not available"):
        run_md(ala2, 600.0, tmp_path / "d", replicas=1, platform="Nope", progress=False)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        run_md(ala2, 600.0, tmp_path / "e", **QUICK)


# ----------------------------------------------------------------------------------------------------- CLI


def test_cli_md_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="trade-md")
    md_cli.register(parser.add_subparsers())
    out = tmp_path / "cli"
    args = parser.parse_args(["md", "--system", "alanine-dipeptide", "--ns", "0.005", "--frame-interval", "0.5",
                              "--equilibration", "1", "--replicas", "1", "--platform", "Reference", "--seed", "2",
                              "--no-progress", "--out", str(out)])
    assert args.command == "md" and args.func(args) == 0
    printed = capsys.readouterr().out
    assert "10 frames from 1 runs" in printed and "at 600 K" in printed and "WARNING: only" in printed
    assert load_dataset(out).temperature == 600.0  # the built-in's reference temperature
    bad = parser.parse_args(["md", "--system", "alanine-dipeptide", "--timestep", "2", "--out", str(tmp_path / "x")])
    with pytest.raises(InputError, match="--hydrogen-mass 4"):
        bad.func(bad)
    heavy = parser.parse_args(["md", "--system", "alanine-dipeptide", "--ns", "0.002", "--frame-interval", "0.5",
                               "--equilibration", "1", "--replicas", "1", "--platform", "Reference", "--timestep", "2",
                               "--hydrogen-mass", "4", "--no-progress", "--out", str(tmp_path / "h")])
    assert heavy.func(heavy) == 0 and load_dataset(tmp_path / "h").metadata["hydrogen_mass_amu"] == 4.0
    custom = parser.parse_args(["md", "--pdb", str(SYSTEMS_DIR / "alanine_dipeptide" / "ala2.pdb"),
                                "--forcefield", "amber99sbildn.xml",
                                "--forcefield", "amber99_obc.xml", "--out", str(tmp_path / "y")])
    with pytest.raises(InputError, match="--temperature is required"):
        custom.func(custom)
