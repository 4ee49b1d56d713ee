"""Parallel tempering (openmmtools) and its analysis on tiny alanine-dipeptide runs.

One module-scoped run of 3 replicas is interrupted after a few iterations, resumed, and shared by the analysis
tests; it costs a few seconds on the Reference platform.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from trade_md import cli
from trade_md.errors import InputError, SystemMismatchError
from trade_md.replica import (
    RUN_RECORD_NAME,
    STORAGE_NAME,
    RemdSettings,
    analyse_reference,
    combine_summaries,
    count_round_trips,
    export_dataset,
    export_frames,
    geometric_ladder,
    parse_temperatures,
    read_storage,
    resume_remd,
    run_remd,
    select_platform,
)
from trade_md.systems import load_system

LADDER = (300.0, 600.0, 1200.0)
INTERRUPT_AT, TARGET = 4, 14


@pytest.fixture(scope="module")
def ala2():
    return load_system("alanine-dipeptide")


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, ala2):
    """A 3-replica run killed (KeyboardInterrupt) after INTERRUPT_AT iterations: (directory, data before resume)."""
    out = tmp_path_factory.mktemp("remd") / "ala2"
    settings = RemdSettings(temperatures=LADDER, n_iterations=TARGET, steps_per_iteration=100)

    def interrupt(iteration: int) -> None:
        if iteration == INTERRUPT_AT:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_remd(ala2, settings, out, platform="Reference", progress=False, callback=interrupt)
    return out, read_storage(out)


@pytest.fixture(scope="module")
def resumed_run(interrupted_run):
    out, _ = interrupted_run
    resume_remd(out, progress=False)
    return out, read_storage(out)


# ----------------------------------------------------------------------------------------------------- ladder


def test_geometric_ladder_has_constant_ratio():
    ladder = parse_temperatures("300:1000:9")
    assert ladder[0] == pytest.approx(300.0) and ladder[-1] == pytest.approx(1000.0) and ladder.size == 9
    assert np.allclose(ladder[1:] / ladder[:-1], (1000 / 300) ** (1 / 8))
    assert parse_temperatures([300, 310.5]).tolist() == [300.0, 310.5]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("0:1000:5", "> 0"),
        ("-5,300", "> 0"),
        ("300,nan", "> 0"),
        ("300,250,400", "strictly increasing"),
        ("300,300", "strictly increasing"),
        ("1000:300:4", "exceed"),
        ("300", "at least 2"),
        ("300:1000:1", "at least 2"),
        ("300:1000:x", "integer"),
        ("abc:1000:3", "not a number"),
        ("300,warm", "not a number"),
        ("300:1000", "Tmin:Tmax:K"),
    ],
)
def test_bad_ladders_are_input_errors_with_a_fix(spec, match):
    with pytest.raises(InputError, match=match) as error:
        parse_temperatures(spec)
    assert "e.g." in str(error.value) or "sort" in str(error.value)


def test_bad_settings_are_input_errors():
    with pytest.raises(InputError, match="positive integer"):
        RemdSettings(temperatures=LADDER, n_iterations=0)
    with pytest.raises(InputError, match="timestep"):
        RemdSettings(temperatures=LADDER, n_iterations=5, timestep_fs=-1.0)
    with pytest.raises(InputError, match="strictly increasing"):
        RemdSettings(temperatures=(600.0, 300.0), n_iterations=5)
    with pytest.raises(InputError, match="mixing"):
        RemdSettings(temperatures=LADDER, n_iterations=5, mixing="random")
    with pytest.raises(InputError, match="integrator 'verlet' unknown; choose one of ghmc, langevin"):
        RemdSettings(temperatures=LADDER, n_iterations=5, integrator="verlet")
    assert RemdSettings.iterations_for(2.0, 500, 1.0) == 4000
    with pytest.raises(InputError, match="> 0"):
        RemdSettings.iterations_for(0.0, 500, 1.0)
    assert geometric_ladder(300, 1200, 3).tolist() == pytest.approx(list(LADDER))


def test_platform_selection(ala2):
    name, _ = select_platform(ala2, "auto")
    assert name in ("Reference", "CPU", "CUDA", "OpenCL")
    assert select_platform(ala2, "CPU", cpu_threads=1) == ("CPU", {"Threads": "1"})
    with pytest.raises(InputError, match="not available"):
        select_platform(ala2, "NoSuchPlatform")


# ----------------------------------------------------------------------------------------------------- running


def test_interrupted_run_keeps_its_iterations(interrupted_run):
    out, data = interrupted_run
    assert data.n_iterations == INTERRUPT_AT
    record = json.loads((out / RUN_RECORD_NAME).read_text())
    assert record["segments"][0]["last_iteration"] == INTERRUPT_AT
    assert record["platform"]["name"] == "Reference"
    assert record["segments"][0]["context_platform"] == "Reference"  # the sampler's context cache honoured it
    assert record["segments"][0]["global_cache_contexts_added"] == 0  # openmmtools' global cache went unused
    assert record["settings"]["temperatures"] == list(LADDER) and record["fingerprint"]["n_atoms"] == 22
    assert record["settings"]["integrator"] == "langevin"
    assert record["integrator"].startswith("openmmtools LangevinDynamicsMove") and "scaled" in record["integrator"]
    assert record["system"]["format"].startswith("trade-md-system")


def test_resume_continues_without_losing_iterations(interrupted_run, resumed_run):
    _, before = interrupted_run
    out, after = resumed_run
    assert after.n_iterations == TARGET
    kept = slice(0, INTERRUPT_AT + 1)
    assert np.array_equal(after.energies[kept], before.energies[kept])
    assert np.array_equal(after.positions[kept], before.positions[kept])
    assert np.all(np.isfinite(after.energies)) and np.all(np.abs(after.positions).sum(axis=(2, 3)) > 0)
    assert np.all(np.sort(after.states, axis=1) == np.arange(len(LADDER)))  # a permutation at every iteration
    record = json.loads((out / RUN_RECORD_NAME).read_text())
    assert [(s["first_iteration"], s["last_iteration"]) for s in record["segments"]] == [
        (0, INTERRUPT_AT), (INTERRUPT_AT, TARGET)]
    assert after.proposed.sum() > 0


def test_mean_energies_increase_with_temperature(resumed_run):
    _, data = resumed_run
    iterations = np.arange(3, data.n_iterations + 1)  # skip the relaxation from the minimised start
    mean = data.by_state(data.energies[iterations], iterations).mean(axis=0)
    assert np.all(np.diff(mean) > 0), mean


def test_resume_of_a_finished_run_extends_it_only_when_asked(resumed_run):
    out, _ = resumed_run
    with pytest.raises(InputError, match="more than"):
        resume_remd(out, n_iterations=TARGET - 1, progress=False)


def test_existing_storage_is_not_overwritten(resumed_run, ala2):
    out, _ = resumed_run
    with pytest.raises(InputError, match="--resume"):
        run_remd(ala2, RemdSettings(temperatures=LADDER, n_iterations=2), out, platform="Reference", progress=False)


def test_only_rank_zero_writes_the_run_record(tmp_path, ala2, monkeypatch):
    from trade_md import replica

    monkeypatch.setattr(replica, "_mpi_rank_size", lambda: (1, 2))
    run_remd(ala2, RemdSettings(temperatures=LADDER, n_iterations=1, steps_per_iteration=10), tmp_path / "r",
             platform="Reference", progress=False)
    assert (tmp_path / "r" / STORAGE_NAME).exists()  # written by openmmtools' own rank 0 (here the only process)
    assert not (tmp_path / "r" / RUN_RECORD_NAME).exists()


# ----------------------------------------------------------------------------------------------------- bad storage


def test_missing_storage_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="trade-md remd"):
        read_storage(tmp_path)
    with pytest.raises(InputError, match="trade-md remd"):
        resume_remd(tmp_path, progress=False)


def test_storage_of_another_system_is_a_mismatch(resumed_run, tmp_path):
    out, _ = resumed_run
    vacuum = load_system("alanine-dipeptide", forcefield=["amber99sbildn.xml"])
    with pytest.raises(SystemMismatchError, match="alanine-dipeptide"):
        read_storage(out, system=vacuum)
    with pytest.raises(SystemMismatchError):
        resume_remd(out, system=vacuum, n_iterations=TARGET + 1, progress=False)
    # a storage copied next to the record of another run
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    record = json.loads((foreign / RUN_RECORD_NAME).read_text())
    record["fingerprint"] = vacuum.fingerprint()
    record["system"] = vacuum.serialize()
    (foreign / RUN_RECORD_NAME).write_text(json.dumps(record))
    with pytest.raises(SystemMismatchError, match="copied from another run"):
        read_storage(foreign)


def test_storage_without_its_record_or_positions_is_an_input_error(resumed_run, tmp_path):
    out, _ = resumed_run
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(out / STORAGE_NAME, partial / STORAGE_NAME)
    with pytest.raises(InputError, match="run.json"):
        read_storage(partial)
    shutil.copy(out / RUN_RECORD_NAME, partial / RUN_RECORD_NAME)
    with pytest.raises(InputError, match="checkpoint"):
        read_storage(partial)
    shutil.copy(out / "replicas_checkpoint.nc", partial / "replicas_checkpoint.nc")
    (partial / STORAGE_NAME).write_bytes(b"not a netcdf file")
    with pytest.raises(InputError, match="damaged"):
        read_storage(partial)


def test_runs_recorded_before_rescaling_read_as_langevin_redraw(resumed_run, ala2, tmp_path, monkeypatch):
    """A run.json of format run/1 whose integrator is langevin (or absent) redrew velocities: it is read, analysed
    and resumed as langevin-redraw, with openmmtools' plain sampler; a record that contradicts the stored dynamics
    is refused."""
    from trade_md import replica

    def as_old_record(out: Path) -> None:
        record = json.loads((out / RUN_RECORD_NAME).read_text())
        record["format"] = "trade-md remd run/1"
        del record["settings"]["integrator"]
        (out / RUN_RECORD_NAME).write_text(json.dumps(record))

    old = tmp_path / "old"
    settings = RemdSettings(temperatures=LADDER, n_iterations=2, steps_per_iteration=50, integrator="langevin-redraw")
    run_remd(ala2, settings, old, platform="Reference", progress=False)
    as_old_record(old)
    upgraded, _ = replica._read_record(old)
    assert upgraded["settings"]["integrator"] == "langevin-redraw" and upgraded["format"] == "trade-md remd run/2"
    with monkeypatch.context() as patch:  # the redraw run must not resume with the rescaling sampler
        patch.setattr(replica, "rescaling_tempering_class", lambda: pytest.fail("rescaling sampler used"))
        resume_remd(old, n_iterations=3, progress=False)
    resumed = json.loads((old / RUN_RECORD_NAME).read_text())
    assert resumed["format"] == "trade-md remd run/2" and resumed["settings"]["integrator"] == "langevin-redraw"
    assert read_storage(old).n_iterations == 3

    relabelled = tmp_path / "relabelled"  # a rescaling run whose record claims the old redraw scheme
    shutil.copytree(resumed_run[0], relabelled)
    as_old_record(relabelled)
    with pytest.raises(InputError, match="says integrator 'langevin-redraw', which redraws velocities"):
        resume_remd(relabelled, progress=False)


# ----------------------------------------------------------------------------------------------------- analysis


def test_round_trips():
    states = np.array([[0, 2], [1, 1], [2, 0], [1, 1], [0, 2], [2, 0], [0, 2]])
    assert count_round_trips(states, 3).tolist() == [2, 1]  # replica 1 starts at the top: one trip


def test_reference_analysis_and_frames(resumed_run, tmp_path):
    import mdtraj

    _, data = resumed_run
    summary, samples, estimator = analyse_reference(data, [300.0, 450.0, 1200.0], n_bootstrap=20)
    assert summary["temperatures"] == [300.0, 450.0, 1200.0] and summary["on_ladder"] == [True, False, True]
    assert summary["log_z_relative"][0] == 0.0
    assert np.all(np.diff(summary["mean_energy"]) > 0)
    assert len(summary["ramachandran"]) == 3
    for histogram in summary["ramachandran"]:
        assert np.asarray(histogram).shape == (36, 36) and sum(map(sum, histogram)) == pytest.approx(1.0, abs=1e-4)
    for t, p, kj, kt in zip(summary["temperatures"], summary["p_phi_positive"], summary["delta_f"],
                            summary["delta_f_kT"]):
        if 0 < p < 1:
            assert kj == pytest.approx(kt * 0.00831446 * t, rel=1e-5) and kt == pytest.approx(np.log((1 - p) / p))
        else:  # a basin never seen in so short a run: null in the JSON, and said so
            assert kj is None and any(f"{t:g} K" in w for w in summary["warnings"])
    diagnostics = summary["diagnostics"]
    assert len(diagnostics["neighbour_acceptance"]) == 2 and np.asarray(diagnostics["overlap_matrix"]).shape == (3, 3)
    assert isinstance(summary["warnings"], list)
    json.dumps(summary, allow_nan=False)  # strict JSON as it is

    assert samples.n_k.tolist() == [summary["decorrelation"]["n_iterations_used"]] * 3
    assert np.all(summary["mean_energy_sem"]) and np.all(np.isfinite(summary["mean_energy_sem"]))
    assert any("blocks" in w for w in summary["warnings"])  # 14 iterations: too short for trustworthy errors
    with pytest.raises(InputError, match="n_bootstrap"):
        analyse_reference(data, [300.0], n_bootstrap=2)

    manifest = export_frames(data.system, samples, estimator, summary, tmp_path / "frames")
    n = summary["decorrelation"]["n_decorrelated_per_state"]
    assert manifest["frames_per_ladder_temperature"] == {"300": n, "600": n, "1200": n} and n >= 1
    for label in ("300", "600", "1200"):
        frames = mdtraj.load(tmp_path / "frames" / f"frames_{label}K.dcd", top=tmp_path / "frames" / "topology.pdb")
        assert frames.n_frames == n and frames.n_atoms == 22
    weights = np.load(tmp_path / "frames" / "weights.npz")
    assert weights["log_weights"].shape == (3 * n, 3)
    assert np.allclose(np.exp(weights["log_weights"]).sum(axis=0), 1.0)


def test_reference_outside_the_ladder_is_an_input_error(resumed_run):
    _, data = resumed_run
    with pytest.raises(InputError, match="outside the ladder"):
        analyse_reference(data, [250.0])


def test_cli_reference_and_errors(resumed_run, tmp_path, capsys):
    out, _ = resumed_run
    summary_path = tmp_path / "summary.json"
    assert cli.main(["reference", str(out), "--out", str(summary_path), "--temperatures", "300,800",
                     "--frames-dir", str(tmp_path / "f"), "--bootstrap", "20"]) == 0
    summary = json.loads(summary_path.read_text())
    assert len(summary["delta_f_sem_kT"]) == 2 and summary["conventions"]["sem"].startswith("one standard error from 20")
    assert summary["temperatures"] == [300.0, 800.0] and (tmp_path / "f" / "frames_300K.dcd").exists()
    assert "T/K" in capsys.readouterr().out
    assert cli.main(["reference", str(tmp_path / "nothing")]) == 2
    assert "trade-md remd" in capsys.readouterr().err
    assert cli.main(["remd", "--system", "alanine-dipeptide", "--temperatures", "300,200",
                     "--out", str(tmp_path / "x")]) == 2
    assert "strictly increasing" in capsys.readouterr().err
    assert cli.main(["remd", "--temperatures", "300:400:2", "--out", str(tmp_path / "y")]) == 2
    assert "no system" in capsys.readouterr().err
    assert cli.main(["remd", "--resume", "--out", str(out), "--temperatures", "300:1000:3"]) == 2
    assert "differs from the run's ladder" in capsys.readouterr().err


def test_remd_frames_at_one_temperature_become_a_dataset(resumed_run, tmp_path, capsys):
    from trade_md.md import load_dataset

    out, data = resumed_run
    ps = 100 * 1.0e-3  # steps_per_iteration x 1 fs
    assert cli.main(["remd-data", str(out), str(out), "--temperature", "600", "--discard-ps", "0.25",
                     "--out", str(tmp_path / "d600")]) == 0
    printed = capsys.readouterr()
    assert "frames at 600 K from 2 remd run(s)" in printed.out and "trade-md remd --resume" in printed.err
    dataset = load_dataset(tmp_path / "d600")
    kept = np.arange(3, TARGET + 1)  # iterations after 0.25 ps, the minimised start excluded
    assert len(dataset) == 2 * kept.size and dataset.temperature == 600.0
    assert dataset.run.tolist() == [0] * kept.size + [1] * kept.size
    assert np.allclose(dataset.times[: kept.size], kept * ps)
    replica = np.argmax(data.states[kept] == 1, axis=1)  # the replica at ladder state 1 (600 K) in each iteration
    assert np.allclose(dataset.positions[: kept.size], data.positions[kept, replica], atol=1e-6)
    assert np.allclose(dataset.energies[: kept.size], data.energies[kept, replica])
    assert dataset.system.fingerprint() == data.system.fingerprint()
    assert dataset.metadata["source"] == "trade-md remd" and dataset.metadata["runs"][0]["frames"] == kept.size

    with pytest.raises(InputError, match="already holds a dataset"):
        export_dataset([out], 600.0, tmp_path / "d600")
    with pytest.raises(InputError, match="not on the ladder .* pick one of those"):
        export_dataset([out], 650.0, tmp_path / "x")
    with pytest.raises(InputError, match="none after --discard-ps"):
        export_dataset([out], 600.0, tmp_path / "x", discard_ps=100.0)
    assert cli.main(["remd-data", str(tmp_path / "nothing"), "--temperature", "600", "--out", str(tmp_path / "y")]) == 2
    assert "trade-md remd" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_sigkill_of_the_cli(tmp_path):
    """A `trade-md remd` process killed with SIGKILL mid-run resumes from its last stored iteration."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from openmmtools import multistate

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "trade_md.cli", "remd", "--system", "alanine-dipeptide", "--temperatures",
               "300:600:3", "--iterations", "5000", "--steps-per-iteration", "20", "--platform", "Reference",
               "--integrator", "ghmc", "--out", str(out), "--no-progress"]
    log = tmp_path / "remd.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle)
    try:
        deadline = time.monotonic() + 300
        while not (out / RUN_RECORD_NAME).exists() and time.monotonic() < deadline:
            assert process.poll() is None, f"trade-md remd exited early:\n{log.read_text()}"
            time.sleep(0.2)
        time.sleep(3.0)  # iterations are being written now
        assert process.poll() is None, f"trade-md remd exited early:\n{log.read_text()}"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    reporter = multistate.MultiStateReporter(str(out / STORAGE_NAME), open_mode="r")
    stored = reporter.read_last_iteration(last_checkpoint=True)
    reporter.close()
    assert stored < 5000
    assert (out / "backup" / STORAGE_NAME).is_file()  # made after the first iteration
    try:
        before = read_storage(out) if stored >= 1 else None
    except InputError:  # killed while HDF5 was writing: the storage is unreadable, the backup must serve
        before = None
    resume_remd(out, n_iterations=stored + 5, progress=False)
    after = read_storage(out)
    assert after.n_iterations == stored + 5
    assert json.loads((out / RUN_RECORD_NAME).read_text())["settings"]["integrator"] == "ghmc"  # kept on resume
    if before is not None and not any(out.glob("damaged-*")):
        assert np.array_equal(after.energies[: stored + 1], before.energies)


def test_a_damaged_storage_resumes_from_its_backup(tmp_path, ala2, caplog):
    out = tmp_path / "run"
    run_remd(ala2, RemdSettings(temperatures=LADDER, n_iterations=4, steps_per_iteration=20), out,
             platform="Reference", progress=False)
    assert (out / "backup" / STORAGE_NAME).stat().st_size > 0 and (out / "backup" / "replicas_checkpoint.nc").is_file()
    with open(out / STORAGE_NAME, "r+b") as handle:  # what a kill mid-write can leave: an unreadable file
        handle.write(b"\0" * 4096)
    with pytest.raises(InputError, match="damaged"):
        read_storage(out)
    with caplog.at_level("WARNING"):
        resume_remd(out, n_iterations=6, progress=False)
    assert "resuming from the backup" in caplog.text
    assert read_storage(out).n_iterations == 6
    assert len(list(out.glob("damaged-*/" + STORAGE_NAME))) == 1

    shutil.rmtree(out / "backup")
    with open(out / STORAGE_NAME, "r+b") as handle:
        handle.write(b"\0" * 4096)
    with pytest.raises(InputError, match="no backup"):
        resume_remd(out, n_iterations=8, progress=False)


def test_backbone_dihedrals_of_the_starting_structure(ala2):
    from trade_md.replica import _backbone_dihedrals, _dihedral_angles

    phi, psi = _dihedral_angles(ala2.positions[None], _backbone_dihedrals(ala2))
    # systems/alanine_dipeptide/README.md: the minimised C5 structure has φ = −144.6°, ψ = 159.2°
    assert np.degrees(phi[0]) == pytest.approx(-144.6, abs=0.2) and np.degrees(psi[0]) == pytest.approx(159.2, abs=0.2)


def test_combine_summaries_averages_runs_with_scatter_errors(tmp_path: Path) -> None:
    # Two copies of the shipped reference whose dF/kT are shifted by +0.1 and -0.3: the combination must be the
    # mean (shift -0.1) with the scatter error std([+0.1, -0.3], ddof=1) / sqrt(2) = 0.2, keep the histograms (equal
    # in both) and load as a reference.
    from trade_md.report import default_reference, load_reference

    base = json.loads(default_reference("alanine-dipeptide").read_text())
    runs = []
    for shift in (0.1, -0.3):
        run = json.loads(json.dumps(base))
        run["delta_f_kT"] = [value + shift for value in base["delta_f_kT"]]
        runs.append(run)
    combined = combine_summaries(runs, ["a", "b"])
    np.testing.assert_allclose(combined["delta_f_kT"], np.array(base["delta_f_kT"]) - 0.1, atol=1e-12)
    np.testing.assert_allclose(combined["delta_f_sem_kT"], 0.2, atol=1e-12)
    np.testing.assert_allclose(combined["delta_f"], base["delta_f"], atol=1e-12)
    np.testing.assert_allclose(combined["delta_f_sem"], 0.0, atol=1e-12)
    np.testing.assert_allclose(combined["ramachandran"], base["ramachandran"], atol=1e-12)
    np.testing.assert_allclose(combined["effective_samples"], 2 * np.array(base["effective_samples"]))
    paths = []
    for name, run in zip("ab", runs):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(run))
    assert cli.main(["reference-combine", *map(str, paths), "--out", str(tmp_path / "combined.json")]) == 0
    reference = load_reference(tmp_path / "combined.json")
    assert reference.value("delta_f_sem_kT", 1000.0) == pytest.approx(0.2)


def test_combine_summaries_refuses_mismatched_runs() -> None:
    from trade_md.report import default_reference

    base = json.loads(default_reference("alanine-dipeptide").read_text())
    with pytest.raises(InputError, match="at least two"):
        combine_summaries([base], ["a"])
    other = json.loads(json.dumps(base))
    other["system"]["fingerprint"]["n_atoms"] = 23
    with pytest.raises(InputError, match="another system"):
        combine_summaries([base, other], ["a", "b"])
    other = json.loads(json.dumps(base))
    other["temperatures"] = other["temperatures"][:-1]
    with pytest.raises(InputError, match="other temperatures"):
        combine_summaries([base, other], ["a", "b"])
    with pytest.raises(InputError, match="not a `trade-md reference` summary"):
        combine_summaries([base, {"format": "x"}], ["a", "b"])


def _harmonic_tempering(tmp_path: Path, temperatures: tuple[float, ...], n_particles: int = 2):
    """A created (not yet run) velocity-rescaling tempering sampler of stiff 3-D harmonic wells (1 amu,
    k = 3.2e5 kJ/mol/nm^2: omega dt = 0.57 at 1 fs, an X-H stretch's)."""
    import openmm
    from openmm import unit
    from openmmtools import cache, mcmc, multistate, states

    from trade_md.replica import rescaling_tempering_class

    system = openmm.System()
    wells = openmm.CustomExternalForce("0.5 * 324900 * (x^2 + y^2 + z^2)")
    for i in range(n_particles):
        system.addParticle(1.0)
        wells.addParticle(i, [])
    system.addForce(wells)
    move = mcmc.LangevinDynamicsMove(timestep=1 * unit.femtosecond, collision_rate=1 / unit.picosecond, n_steps=50,
                                     reassign_velocities=False)
    sampler = rescaling_tempering_class()(mcmc_moves=move, number_of_iterations=2, online_analysis_interval=None)
    platform = openmm.Platform.getPlatformByName("Reference")
    sampler.sampler_context_cache = cache.ContextCache(platform=platform)
    sampler.energy_context_cache = cache.ContextCache(platform=platform)
    reporter = multistate.MultiStateReporter(str(tmp_path / "h.nc"), checkpoint_interval=1)
    positions = np.random.default_rng(0).normal(0.0, 0.005, (n_particles, 3))
    sampler.create(states.ThermodynamicState(system, temperatures[0] * unit.kelvin),
                   states.SamplerState(positions * unit.nanometer), reporter,
                   temperatures=[t * unit.kelvin for t in temperatures], n_temperatures=len(temperatures))
    return sampler, reporter


def test_rescaling_tempering_scales_the_velocities_of_exchanged_replicas(tmp_path):
    from openmm import unit

    temperatures = (300.0, 320.0, 345.0)
    sampler, reporter = _harmonic_tempering(tmp_path, temperatures)
    try:
        sampler.minimize()  # as run_remd does; openmmtools leaves the replicas at rest
        assert not any(np.any(s.velocities.value_in_unit(unit.nanometer / unit.picosecond))
                       for s in sampler._sampler_states)
        sampler._replica_thermodynamic_states = sampler._mix_replicas()  # at rest: drawn, none scaled
        assert all(np.all(s.velocities.value_in_unit(unit.nanometer / unit.picosecond) != 0)
                   for s in sampler._sampler_states)
        moved = kept = 0
        for _ in range(60):
            old = np.array(sampler._replica_thermodynamic_states)
            before = [s.velocities.value_in_unit(unit.nanometer / unit.picosecond) for s in sampler._sampler_states]
            new = np.array(sampler._mix_replicas())
            sampler._replica_thermodynamic_states = new
            for replica, (a, b) in enumerate(zip(old, new, strict=True)):
                after = sampler._sampler_states[replica].velocities.value_in_unit(unit.nanometer / unit.picosecond)
                np.testing.assert_allclose(after, before[replica] * np.sqrt(temperatures[b] / temperatures[a]),
                                           rtol=1e-12)
                moved, kept = moved + int(a != b), kept + int(a == b)
        assert moved > 10 and kept > 10  # both branches were exercised
    finally:
        reporter.close()


def test_maxwell_boltzmann_velocities_have_the_equipartition_variance():
    import openmm

    from trade_md.replica import maxwell_boltzmann
    from trade_md.thermo import kT

    system = openmm.System()
    masses = np.array([1.008, 12.01, 0.0] * 4000)
    for m in masses:
        system.addParticle(float(m))
    v = maxwell_boltzmann(system, 450.0, np.random.default_rng(1))
    assert v.shape == (len(masses), 3) and np.all(v[masses == 0] == 0)
    for m in (1.008, 12.01):  # m <v_x^2> / kT = 1; 12,000 draws each: SE sqrt(2 / 12000) = 0.013, 4 SE allowed
        assert np.mean(m * v[masses == m] ** 2) / kT(450.0) == pytest.approx(1.0, abs=0.052)


def _synthetic_run(system, ladder: tuple[float, ...], n_iterations: int, dims: int, seed: int, hold: int = 1):
    """ReplicaData of exact draws from a ``dims``-dimensional harmonic well U = k|x|^2/2 at every ladder temperature
    (U / k_BT ~ Gamma(dims/2)), replicas shuffled over the states as exchanges would; each draw is held for
    ``hold`` iterations (a statistical inefficiency of about ``hold``)."""
    from trade_md.replica import ReplicaData
    from trade_md.thermo import kT

    rng = np.random.default_rng(seed)
    k, n_draws = len(ladder), -(-(n_iterations + 1) // hold)
    states = np.repeat([rng.permutation(k) for _ in range(n_draws)], hold, axis=0)[: n_iterations + 1]
    reduced = np.repeat(rng.gamma(dims / 2, size=(n_draws, k)), hold, axis=0)[: n_iterations + 1]
    energies = np.array([[kT(ladder[s]) for s in row] for row in states]) * reduced
    record = {"settings": {"temperatures": list(ladder), "steps_per_iteration": 1, "timestep_fs": 1.0,
                           "collision_rate_per_ps": 1.0, "mixing": "synthetic", "integrator": "synthetic"},
              "segments": [{"wall_s": 0.0, "cpu_s": 0.0, "n_ranks": 1}], "platform": {"name": "synthetic"},
              "versions": {}, "command": None}
    return ReplicaData(temperatures=np.asarray(ladder), energies=energies, states=states,
                       positions=np.zeros((n_iterations + 1, k, system.n_atoms, 3), dtype=np.float32),
                       accepted=np.ones((k, k)), proposed=2 * np.ones((k, k)), record=record, system=system)


def test_pooled_runs_with_different_ladders_match_the_harmonic_well(ala2, monkeypatch, tmp_path):
    # Two independent runs on different ladders (300-510 K, each draw held 8 iterations; 450-1000 K, independent
    # draws), pooled into one MBAR: <U>(T) = (d/2)k_BT and ln Z(T) - ln Z(300 K) = (d/2) ln(T/300) exactly.
    # Neither run alone covers 300 and 1000 K.
    from trade_md import replica
    from trade_md.analysis.mbar import MBAREstimator
    from trade_md.thermo import kT

    monkeypatch.setattr(replica, "_backbone_dihedrals", lambda system: None)  # positions are placeholders
    strata_given = []
    bootstrap = MBAREstimator.block_bootstrap

    def spy(self, block_n, **options):
        strata_given.append(options.get("strata"))
        return bootstrap(self, block_n, **options)

    monkeypatch.setattr(MBAREstimator, "block_bootstrap", spy)
    dims, n, hold = 12, 1500, 8
    runs = [_synthetic_run(ala2, (300.0, 390.0, 510.0), hold * n, dims, seed=1, hold=hold),
            _synthetic_run(ala2, (450.0, 600.0, 800.0, 1000.0), n, dims, seed=2)]
    targets = [300.0, 450.0, 480.0, 700.0, 1000.0]
    with pytest.raises(InputError, match="outside the ladder"):
        analyse_reference(runs[0], targets)
    summary, samples, estimator = analyse_reference(runs, targets, n_bootstrap=40, sources=["a", "b"])
    assert summary["ladder"] == [300.0, 390.0, 450.0, 510.0, 600.0, 800.0, 1000.0]
    assert [run["source"] for run in summary["runs"]] == ["a", "b"] and "run" not in summary
    # MBAR's order (by ladder state), each run's energies in its own states, blocks within one run, run strata
    assert np.all(np.diff(samples.state) >= 0)
    assert np.array_equal(samples.n_k, np.bincount(samples.state)) and samples.n_k.sum() > 6 * n
    for r, (run, ladder_index) in enumerate(zip(runs, ([0, 1, 3], [2, 4, 5, 6]))):
        assert set(np.unique(samples.state[samples.run == r])) == set(ladder_index)
        for j, state in enumerate(ladder_index):
            mine = (samples.run == r) & (samples.state == state)
            iterations = samples.iteration[mine]
            replicas = np.argmax(run.states[iterations] == j, axis=1)
            assert np.array_equal(samples.energies[mine], run.energies[iterations, replicas])
    assert all(np.unique(samples.run[samples.block == b]).size == 1 for b in np.unique(samples.block))
    assert strata_given and strata_given[-1] is samples.run
    g = [run["decorrelation"]["statistical_inefficiency_iterations"] for run in summary["runs"]]
    assert g[0] > 4 and g[1] < 2
    mean_u, mean_sem = np.array(summary["mean_energy"]), np.array(summary["mean_energy_sem"])
    log_z, log_z_sem = np.array(summary["log_z_relative"]), np.array(summary["log_z_relative_sem"])
    exact_u = np.array([dims / 2 * kT(t) for t in targets])
    exact_log_z = dims / 2 * np.log(np.array(targets) / 300.0)
    assert np.all(np.abs(mean_u - exact_u) < 4 * mean_sem), (mean_u - exact_u) / mean_sem
    assert np.all(np.abs(log_z[1:] - exact_log_z[1:]) < 4 * log_z_sem[1:]), (log_z - exact_log_z) / log_z_sem
    # The bootstrap error at 1000 K is that of ~n independent draws there: sqrt(d/2) k_BT / sqrt(n) (0.52 kJ/mol),
    # within a factor of two (samples of other states change it by tens of percent).
    assert 0.5 < mean_sem[-1] / (np.sqrt(dims / 2) * kT(1000.0) / np.sqrt(n)) < 2.0

    # The exported frames (run a thinned ~8 times more than run b) with their weights give <U> as well: within 4
    # errors of the thinned estimate (the full data's sem times sqrt(max g)); unweighted for the thinning they
    # would miss at 480 K by ~30 full-data errors.
    manifest = replica.export_frames(ala2, samples, estimator, summary, tmp_path / "frames")
    assert sum(manifest["frames_per_ladder_temperature"].values()) == int(samples.decorrelated.sum())
    with np.load(tmp_path / "frames" / "weights.npz") as frames:
        frame_u = np.exp(frames["log_weights"]).T @ frames["energies"]
    assert np.all(np.abs(frame_u - exact_u) < 4 * np.sqrt(max(g)) * mean_sem), (frame_u - exact_u) / mean_sem


def test_estimator_states_put_off_ladder_targets_after_the_ladder():
    from trade_md.replica import _estimator_states

    states, columns = _estimator_states(np.array([300.0, 600.0]), np.array([300.0, 300.002, 650.0]))
    assert states.tolist() == [300.0, 600.0, 300.002, 650.0] and columns.tolist() == [0, 2, 3]


def test_pooling_a_run_with_itself_reproduces_its_estimates(resumed_run, tmp_path, capsys):
    out, data = resumed_run
    single, _, _ = analyse_reference(data, [300.0, 450.0], n_bootstrap=20)
    pooled, samples, _ = analyse_reference([data, data], [300.0, 450.0], n_bootstrap=20)
    for name in ("mean_energy", "log_z_relative", "p_phi_positive"):
        np.testing.assert_allclose(pooled[name], single[name], rtol=1e-6, atol=1e-9)
    assert np.array_equal(samples.n_k, 2 * np.array([single["decorrelation"]["n_iterations_used"]] * 3))
    assert len(pooled["runs"]) == 2 and pooled["diagnostics"]["mbar_converged"]
    json.dumps(pooled, allow_nan=False)

    class OtherSystem:
        name = "other"

        @staticmethod
        def fingerprint():
            return {"n_atoms": 23}

    from dataclasses import replace

    with pytest.raises(SystemMismatchError, match="another system"):
        analyse_reference([data, replace(data, system=OtherSystem())], [300.0], n_bootstrap=20)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert cli.main(["reference", str(out), str(copy)]) == 2
    assert "--out" in capsys.readouterr().err
    summary_path = tmp_path / "pooled" / "summary.json"
    assert cli.main(["reference", str(out), str(out), "--out", str(summary_path)]) == 2
    assert "twice" in capsys.readouterr().err
    assert cli.main(["reference", str(out), str(copy), "--out", str(summary_path), "--temperatures", "300",
                     "--bootstrap", "20", "--no-progress"]) == 0
    assert (tmp_path / "pooled" / "summary_frames" / "frames_300K.dcd").exists()
    assert f"{copy}: neighbour acceptance" in capsys.readouterr().out
    from trade_md.report import load_reference

    (tmp_path / "pooled" / "frames").mkdir()  # another run's frames beside the summary are not taken for its own
    assert load_reference(summary_path).frames is not None
