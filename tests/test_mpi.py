"""Replica exchange under MPI (``mpirun -n 2 trade-md remd``) and the errors around it.

The launcher checks run everywhere (no MPI needed: the launcher is simulated by its environment variables). The
tests that start ``mpirun`` need mpi4py and an ``mpirun``/``mpiexec`` (``pip install "trade-md[mpi]"``, which
``.ci/run`` installs) and are skipped with that reason otherwise. Every subprocess runs under a timeout, so a rank
left waiting for another fails the test instead of hanging it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from trade_md import cli, mpi
from trade_md.errors import InputError
from trade_md.analysis.mbar import MBAREstimator, tempering_reduced_potentials
from trade_md.features import cis_flags, peptide_bonds
from trade_md.formats.remd import RUN_RECORD_NAME, STORAGE_NAME, read_storage
from trade_md.systems import load_system

LADDER = "300:1000:4"
N_REPLICAS = 4
ITERATIONS, FIRST_SEGMENT = 1200, 600
STEPS_PER_ITERATION = 250
SEM_CEILING = 5.0  # kJ/mol: the runs must be long enough that the comparison below means something
N_SEM = 4.0
N_BLOCKS = 10  # of 108 iterations each, longer than ⟨U⟩'s correlation time


def _mpirun() -> str | None:
    """The launcher of the environment that runs the tests (the MPICH wheel puts it next to python), else PATH's."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    for name in ("mpirun", "mpiexec"):
        found = shutil.which(name, path=search)
        if found:
            return found
    return None


MPIRUN = _mpirun()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(
    not (HAVE_MPI4PY and MPIRUN),
    reason="MPI tests need mpi4py and mpirun: pip install \"trade-md[mpi]\" (found: "
           f"mpi4py {'yes' if HAVE_MPI4PY else 'no'}, mpirun {MPIRUN or 'no'})",
)


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",  # Open MPI as root (CI); MPICH ignores
        "OMPI_MCA_rmaps_base_oversubscribe": "1", "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
        "OMP_NUM_THREADS": "1",
    })
    return env


def _trade_md() -> list[str]:
    script = Path(sys.executable).parent / "trade-md"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from trade_md.cli import main; sys.exit(main())"]


def _run(command: list[str], timeout: float, ranks: int | None = None) -> subprocess.CompletedProcess:
    if ranks is not None:
        command = [str(MPIRUN), "-n", str(ranks), *command]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_environment(),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{' '.join(command)} did not finish in {timeout} s (a rank waiting for another?):\n"
                    f"{error.stderr}")


def _remd(out: Path, *extra: str) -> list[str]:
    return [*_trade_md(), "remd", "--system", "alanine-dipeptide", "--temperatures", LADDER, "--platform",
            "Reference", "--steps-per-iteration", str(STEPS_PER_ITERATION), "--out", str(out), "--no-progress", *extra]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


# ----------------------------------------------------------------------------------------------------- no MPI needed


def test_launcher_variables():
    assert mpi.launcher_size({}) is None and mpi.launcher_rank({}) == 0
    assert mpi.launcher_size({"PMI_SIZE": "2", "PMI_RANK": "1", "MPI_LOCALNRANKS": "2"}) == 2
    assert mpi.launcher_rank({"PMI_SIZE": "2", "PMI_RANK": "1"}) == 1
    assert mpi.launcher_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    assert mpi.launcher_rank({"PMIX_RANK": "2"}) == 2
    assert mpi.launcher_size({"SLURM_PROCID": "0"}) is None  # a batch script is not a launch of several copies


def test_more_ranks_than_replicas_is_an_input_error():
    mpi.check_ranks(4, 4)
    with pytest.raises(InputError, match=r"5 MPI ranks for 4 replicas.*mpirun -n 4"):
        mpi.check_ranks(5, 4)


def test_a_single_process_runs_root_tasks_itself():
    assert mpi.run_on_root(sum, [1, 2, 3]) == 6
    assert mpi.rank_size() == (0, 1)
    assert mpi.describe() == {}


@pytest.mark.parametrize("variables", [{"PMI_SIZE": "2", "PMI_RANK": "0"},
                                       {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}])
def test_launcher_without_mpi4py_is_a_one_line_error(variables, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    argv = ["remd", "--system", "alanine-dipeptide", "--out", str(tmp_path / "x"), "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "trade-md[mpi]"' in err and "2 processes" in err, err
    assert not (tmp_path / "x").exists()
    # the other ranks exit alike without repeating the line
    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------------------------------- under mpirun


@needs_mpi
def test_mpirun_reaches_mpi4py():
    probe = ("from mpi4py import MPI; c = MPI.COMM_WORLD; ranks = c.gather(c.Get_rank()); "
             "c.Get_rank() or print(sorted(ranks), c.Get_size())")  # one print: the ranks' output may interleave
    result = _run([sys.executable, "-c", probe], timeout=120, ranks=2)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0, 1] 2", result.stdout


@needs_mpi
def test_mpirun_without_mpi4py_and_too_many_ranks_are_one_line_errors(tmp_path):
    """Both fail fast with exit status 2 and one error line, and no rank is left waiting."""
    hide = "import sys; sys.modules['mpi4py'] = None; from trade_md.cli import main; sys.exit(main())"
    out = tmp_path / "nompi"
    result = _run([sys.executable, "-c", hide, "remd", "--system", "alanine-dipeptide", "--out", str(out)],
                  timeout=120, ranks=2)
    assert result.returncode == 2, result.stderr
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and 'pip install "trade-md[mpi]"' in lines[0], result.stderr
    assert not out.exists()

    out = tmp_path / "crowded"
    result = _run([*_remd(out, "--iterations", "2"), "--temperatures", "300,450"], timeout=180, ranks=3)
    assert result.returncode == 2, result.stderr
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and "3 MPI ranks for 2 replicas" in lines[0], result.stderr
    assert not (out / STORAGE_NAME).exists()


@needs_mpi
def test_an_error_of_rank_zero_ends_every_rank(tmp_path):
    """Rank 0 chooses the platform; its error reaches the other rank (which used to wait in a broadcast forever)."""
    result = _run(_remd(tmp_path / "r", "--iterations", "2", "--platform", "NoSuchPlatform"), timeout=180, ranks=2)
    assert result.returncode == 2, result.stderr
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and "'NoSuchPlatform' is not available" in lines[0], result.stderr


@needs_mpi
def test_an_error_of_one_rank_only_aborts_the_job(tmp_path):
    """A user error on one rank while the other waits in a collective: printed by that rank, then MPI_Abort."""
    script = tmp_path / "one_rank_fails.py"
    script.write_text(textwrap.dedent("""
        import sys
        from trade_md import mpi
        from trade_md.cli import mpi as cli_mpi
        from trade_md.errors import InputError

        cli_mpi.ERROR_AGREEMENT_S = 1.0

        def handler(args):
            comm = mpi.get_comm()
            if comm.Get_rank() == 1:
                raise InputError("only rank 1 sees this")
            comm.bcast(None, root=1)  # waits for rank 1 forever unless the job is aborted
            return 0

        sys.exit(cli_mpi.mpi_command(handler)(None))
    """))
    result = _run([sys.executable, str(script)], timeout=120, ranks=2)
    assert result.returncode != 0
    assert "only rank 1 sees this (rank 1 of 2; aborting the other ranks)" in result.stderr, result.stderr


@needs_mpi
def test_resume_waits_for_every_rank_to_read_the_storage(tmp_path):
    """openmmtools reads the storage on every rank and reopens it on rank 0 for appending, which HDF5 locks: a rank
    slower to read (here rank 1, delayed 3 s) must not find it locked (it used to fail with NetCDF: HDF error)."""
    from trade_md.remd import RemdSettings, run_remd

    out = tmp_path / "r"
    run_remd(load_system("alanine-dipeptide"), RemdSettings(temperatures=(300.0, 450.0), n_iterations=2,
                                                            steps_per_iteration=20), out, platform="Reference",
             progress=False)
    script = tmp_path / "slow_reader.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from trade_md import mpi, remd

        sampler_class = remd.rescaling_tempering_class()
        load = sampler_class.from_storage.__func__

        def slow_on_rank_1(cls, storage):
            if mpi.rank_size()[0] == 1:
                time.sleep(3.0)
            return load(cls, storage)

        sampler_class.from_storage = classmethod(slow_on_rank_1)
        remd.resume_remd(sys.argv[1], n_iterations=3, progress=False)
    """))
    result = _run([sys.executable, str(script), str(out)], timeout=180, ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_storage(out).n_iterations == 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run (ITERATIONS iterations of 4 replicas) in one process, and with `mpirun -n 2` in two
    segments: FIRST_SEGMENT iterations, then --resume up to ITERATIONS. Returns (single dir, MPI dir, the MPI
    storage as read after its first segment)."""
    root = tmp_path_factory.mktemp("mpi_remd")
    single, parallel = root / "single", root / "mpi"
    result = _run(_remd(single, "--iterations", str(ITERATIONS)), timeout=300)
    assert result.returncode == 0, result.stderr
    result = _run(_remd(parallel, "--iterations", str(FIRST_SEGMENT)), timeout=300, ranks=2)
    assert result.returncode == 0, result.stderr
    first = read_storage(parallel)
    result = _run([*_trade_md(), "remd", "--resume", "--iterations", str(ITERATIONS), "--out", str(parallel),
                   "--no-progress"], timeout=300, ranks=2)
    assert result.returncode == 0, result.stderr
    return single, parallel, first


@needs_mpi
@pytest.mark.slow
def test_mpi_run_is_stored_once_by_rank_zero_and_resumes(runs):
    _, parallel, first = runs
    assert sorted(p.name for p in parallel.iterdir()) == sorted(
        ["backup", RUN_RECORD_NAME, STORAGE_NAME, STORAGE_NAME.replace(".nc", "_checkpoint.nc")])
    record = json.loads((parallel / RUN_RECORD_NAME).read_text())
    segments = record["segments"]
    assert [(s["first_iteration"], s["last_iteration"]) for s in segments] == [
        (0, FIRST_SEGMENT), (FIRST_SEGMENT, ITERATIONS)]
    for segment in segments:  # two processes ran each segment, and rank 0 alone wrote it down
        assert segment["n_ranks"] == 2 and segment["mpi"]["size"] == 2, segment
        assert len(set(segment["mpi"]["processes"])) == 2, segment
    data = read_storage(parallel)
    assert data.n_iterations == ITERATIONS and first.n_iterations == FIRST_SEGMENT
    assert np.all(np.isfinite(data.energies)) and np.all(np.isfinite(data.positions))
    assert np.all(np.sort(data.states, axis=1) == np.arange(N_REPLICAS))  # a permutation at every iteration
    # the resume continued the stored iterations without rewriting them; every replica moved in every iteration
    # (rank 1 propagates half of the replicas)
    assert np.array_equal(data.energies[: FIRST_SEGMENT + 1], first.energies)
    assert np.all(np.any(np.diff(data.positions, axis=0) != 0, axis=(2, 3)))
    assert data.proposed.sum() > 0


def _trans_mean_energies(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """MBAR ⟨U⟩ [K] kJ/mol at each ladder temperature over the frames (after the first tenth of the iterations) with
    every peptide bond trans, and its block-bootstrap standard error (N_BLOCKS blocks of consecutive iterations).

    Why trans only: above ~600 K alanine dipeptide's peptide bonds turn cis (5-7 % of the frames at 1000 K in 10 ns
    per replica of replica exchange, U about 20 kJ/mol higher), but so rarely that a run this short holds none, one
    or two such events, which swing ⟨U⟩ at 669-1000 K by up to 20 kJ/mol between correct runs, far beyond what its
    block errors can see. ⟨U | all trans⟩ is an equilibrium average all the same (the same indicator restricts
    every state, so MBAR holds), and converges in these runs."""
    data = read_storage(run_dir)
    start = data.states.shape[0] // 10
    iteration = np.arange(start, data.states.shape[0])
    positions = data.positions[iteration]
    trans = ~cis_flags(positions.reshape(-1, *positions.shape[2:]),
                       peptide_bonds(load_system("alanine-dipeptide").topology)).any(axis=1)
    trans = trans.reshape(positions.shape[:2])                                    # [iterations, replicas]
    states = data.states[iteration][trans]
    order = np.argsort(states, kind="stable")                                     # samples grouped by state
    energies = data.energies[iteration][trans][order]
    blocks = (np.broadcast_to(iteration[:, None], trans.shape)[trans][order] - start) * N_BLOCKS // iteration.size
    estimator = MBAREstimator(tempering_reduced_potentials(energies, data.temperatures),
                              np.bincount(states, minlength=data.temperatures.size))
    mean, _ = estimator.expectations(energies)
    return mean, estimator.block_bootstrap(blocks, observables={"U": energies}, n_bootstrap=50)["U"]


@needs_mpi
@pytest.mark.slow
def test_mpi_and_single_process_runs_agree_on_mean_energies(runs):
    """MBAR ⟨U⟩ over all-trans frames (:func:`_trans_mean_energies`) at every ladder temperature of the MPI run
    (2 ranks, resumed once) agrees with that of a single-process run of the same length within N_SEM (4) combined block
    standard errors, |ΔU| < 4 sqrt(σ_mpi² + σ_single²); the errors are below SEM_CEILING kJ/mol, far below the
    ~170 kJ/mol that ⟨U⟩ spans over the ladder, so a run whose ranks sampled the wrong temperatures would fail."""
    single, parallel, _ = runs
    (u_single, sem_single), (u_mpi, sem_mpi) = _trans_mean_energies(single), _trans_mean_energies(parallel)
    combined = np.sqrt(sem_single ** 2 + sem_mpi ** 2)
    ladder = read_storage(single).temperatures
    report = "\n".join(f"{t:7.1f} K: single {a:9.2f} ± {sa:4.2f}, mpi {b:9.2f} ± {sb:4.2f} kJ/mol"
                       for t, a, sa, b, sb in zip(ladder, u_single, sem_single, u_mpi, sem_mpi))
    print(report)
    sems = np.concatenate([sem_single, sem_mpi])
    assert np.all(sems > 0) and np.all(sems < SEM_CEILING), report
    assert u_single[-1] - u_single[0] > 20 * SEM_CEILING, report
    assert np.all(np.abs(u_single - u_mpi) < N_SEM * combined), report
