"""Parallel tempering (openmmtools): running, resuming, storage checks and backup, the velocity-rescaling sampler.

One module-scoped run of 3 replicas is interrupted after a few iterations and resumed (tests/remd_run.py); it
costs a few seconds on the Reference platform.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from remd_run import INTERRUPT_AT, LADDER, TARGET, interrupted_run_in

from trade_md.errors import InputError, SystemMismatchError
from trade_md.formats.remd import RUN_RECORD_NAME, STORAGE_NAME, read_storage
from trade_md.platforms import select_platform
from trade_md.remd import RemdSettings, resume_remd, run_remd
from trade_md.systems import load_system
from trade_md.thermo import geometric_ladder, parse_temperatures


@pytest.fixture(scope="module")
def ala2():
    return load_system("alanine-dipeptide")


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, ala2):
    """A 3-replica run killed (KeyboardInterrupt) after INTERRUPT_AT iterations: (directory, data before resume)."""
    out = tmp_path_factory.mktemp("remd") / "ala2"
    return out, interrupted_run_in(out, ala2)


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
        parse_temperatures(spec, ladder=True)
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
    assert select_platform(ala2, "CPU", threads=1) == ("CPU", {"Threads": "1"})
    with pytest.raises(InputError, match="unknown platform"):
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
    from trade_md import mpi

    monkeypatch.setattr(mpi, "rank_size", lambda: (1, 2))
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
    from trade_md import remd
    from trade_md.formats.remd import read_record

    def as_old_record(out: Path) -> None:
        record = json.loads((out / RUN_RECORD_NAME).read_text())
        record["format"] = "trade-md remd run/1"
        del record["settings"]["integrator"]
        (out / RUN_RECORD_NAME).write_text(json.dumps(record))

    old = tmp_path / "old"
    settings = RemdSettings(temperatures=LADDER, n_iterations=2, steps_per_iteration=50, integrator="langevin-redraw")
    run_remd(ala2, settings, old, platform="Reference", progress=False)
    as_old_record(old)
    upgraded, _ = read_record(old)
    assert upgraded["settings"]["integrator"] == "langevin-redraw" and upgraded["format"] == "trade-md remd run/2"
    with monkeypatch.context() as patch:  # the redraw run must not resume with the rescaling sampler
        patch.setattr(remd, "rescaling_tempering_class", lambda: pytest.fail("rescaling sampler used"))
        resume_remd(old, n_iterations=3, progress=False)
    resumed = json.loads((old / RUN_RECORD_NAME).read_text())
    assert resumed["format"] == "trade-md remd run/2" and resumed["settings"]["integrator"] == "langevin-redraw"
    assert read_storage(old).n_iterations == 3

    relabelled = tmp_path / "relabelled"  # a rescaling run whose record claims the old redraw scheme
    shutil.copytree(resumed_run[0], relabelled)
    as_old_record(relabelled)
    with pytest.raises(InputError, match="says integrator 'langevin-redraw', which redraws velocities"):
        resume_remd(relabelled, progress=False)


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
    command = [sys.executable, "-c", "from trade_md.cli import main; raise SystemExit(main())", "remd",
               "--system", "alanine-dipeptide", "--temperatures", "300:600:3", "--iterations", "5000",
               "--steps-per-iteration", "20", "--platform", "Reference", "--integrator", "ghmc", "--out", str(out),
               "--no-progress"]
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


def _harmonic_tempering(tmp_path: Path, temperatures: tuple[float, ...], n_particles: int = 2):
    """A created (not yet run) velocity-rescaling tempering sampler of stiff 3-D harmonic wells (1 amu,
    k = 3.2e5 kJ/mol/nm^2: omega dt = 0.57 at 1 fs, an X-H stretch's)."""
    import openmm
    from openmm import unit
    from openmmtools import cache, mcmc, multistate, states

    from trade_md.remd import rescaling_tempering_class

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

    from trade_md.remd import maxwell_boltzmann
    from trade_md.thermo import kT

    system = openmm.System()
    masses = np.array([1.008, 12.01, 0.0] * 4000)
    for m in masses:
        system.addParticle(float(m))
    v = maxwell_boltzmann(system, 450.0, np.random.default_rng(1))
    assert v.shape == (len(masses), 3) and np.all(v[masses == 0] == 0)
    for m in (1.008, 12.01):  # m <v_x^2> / kT = 1; 12,000 draws each: SE sqrt(2 / 12000) = 0.013, 4 SE allowed
        assert np.mean(m * v[masses == m] ** 2) / kT(450.0) == pytest.approx(1.0, abs=0.052)


