"""MPI for ``trade-md remd``: which process is which, and errors that end every rank instead of hanging one.

``mpirun -n K trade-md remd ...`` runs K copies of the command; openmmtools (through ``mpiplus`` and ``mpi4py``)
spreads the replicas over them round-robin, gathers energies and states to rank 0, and rank 0 alone writes the
storage. This module adds what that needs around it:

* :func:`get_comm` recognises a launcher from its environment variables (Open MPI, MPICH/Hydra, Intel MPI,
  MVAPICH, Slurm's srun) and refuses, with a one-line :class:`~trade_md.errors.InputError`, to run K > 1 copies
  without mpi4py (or with an mpi4py whose MPI library is not the launcher's and sees a world of one process; other
  mismatches, such as Open MPI's mpirun with the MPICH wheel, stop inside ``MPI_Init`` with that MPI's message):
  each copy would run every replica and write the same storage.
* :func:`check_ranks` refuses more ranks than replicas (a rank with no replica).
* :func:`run_on_root` runs a task on rank 0 and broadcasts its result *or its error*, so an error seen by rank 0
  (a missing platform, an unreadable storage) is raised on every rank instead of leaving the others waiting in the
  broadcast forever (``mpiplus.run_single_node`` broadcasts only results).
* :func:`sampler_from_storage` loads a sampler for ``--resume`` on every rank without racing rank 0's reopening
  of the storage for writing.
* :func:`is_collective` tells an error raised on every rank from one raised on some ranks only;
  :func:`trade_md.cli.mpi.mpi_command` uses it to print an error once and end every rank.
* :func:`describe` is the MPI part of a run segment in ``run.json``: world size, MPI library, host:pid per rank.

Install: ``pip install "trade-md[mpi]"`` brings mpi4py and the MPICH wheel (``mpirun`` lands in the environment's
``bin``). On a cluster use its own MPI instead: ``MPICC=mpicc pip install --no-binary mpi4py mpi4py`` builds
mpi4py against the ``mpicc`` on the PATH.

>>> launcher_size({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "1"}), launcher_rank({"PMI_RANK": "3"})
(4, 3)
>>> launcher_size({}) is None
True
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from trade_md.errors import InputError

__all__ = [
    "INSTALL_HINT",
    "launcher_size",
    "launcher_rank",
    "get_comm",
    "rank_size",
    "check_ranks",
    "run_on_root",
    "sampler_from_storage",
    "is_collective",
    "describe",
]

T = TypeVar("T")

INSTALL_HINT = 'pip install "trade-md[mpi]"'
"""The fix named by the error for a launcher without mpi4py."""

# World size and rank as launchers export them to every process they start, first match wins (Open MPI; MPICH,
# Intel MPI and other Hydra/PMI launchers; MVAPICH; Slurm's srun; MPICH's local count as a last resort).
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS",
                   "MPI_LOCALNRANKS")
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")
_COLLECTIVE = "_trade_md_collective"  # attribute of an exception raised identically on every rank


def launcher_size(environ: Mapping[str, str] | None = None) -> int | None:
    """Number of processes an MPI launcher started, from its environment variables; None outside a launcher."""
    environ = os.environ if environ is None else environ
    for name in _SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def launcher_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank as the launcher exported it (0 outside a launcher)."""
    environ = os.environ if environ is None else environ
    for name in _RANK_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def is_collective(error: BaseException) -> bool:
    """True for an error raised identically on every rank (the command line prints it once; no rank waits)."""
    return bool(getattr(error, _COLLECTIVE, False))


def _collective(error: BaseException) -> BaseException:
    """Mark ``error`` as raised on every rank (so the command line prints it once and no rank waits)."""
    setattr(error, _COLLECTIVE, True)
    return error


def get_comm() -> Any:
    """The MPI world communicator (mpi4py) when an MPI launcher started this process, else None.

    Raises :class:`InputError` when a launcher started more than one process but mpi4py is missing or cannot load
    its MPI library, or when its MPI is not the launcher's (every process then sees a world of one).
    """
    size = launcher_size()
    if size is not None and size > 1:
        try:
            from mpi4py import MPI
        except ImportError:
            raise _collective(InputError(
                f"started by mpirun/mpiexec as {size} processes, but mpi4py is not installed, so each process would "
                f"run every replica into the same storage; install it with {INSTALL_HINT} (on a cluster: mpi4py "
                "built against its MPI) or run without mpirun")) from None
        except Exception as error:  # mpi4py present, MPI shared library missing or broken
            raise _collective(InputError(
                f"started by mpirun/mpiexec as {size} processes, but mpi4py cannot load an MPI library "
                f"({' '.join(str(error).split())}); install one with {INSTALL_HINT} or run without mpirun")) from None
        world = MPI.COMM_WORLD.Get_size()
        if world == 1:
            raise _collective(InputError(
                f"started by mpirun/mpiexec as {size} processes, but each sees an MPI world of 1: the launcher is not "
                f"of the MPI library mpi4py uses ({_library_name(MPI)}); launch with that MPI's own mpirun (an "
                f"environment with {INSTALL_HINT} has it in {os.path.dirname(sys.executable)})"))
    import mpiplus

    comm = mpiplus.get_mpicomm()
    if comm is None and size is not None and size > 1:
        raise _collective(InputError(
            f"started by mpirun/mpiexec as {size} processes, but openmmtools' mpiplus did not recognise the launcher "
            "(it reads PMI_RANK, OMPI_COMM_WORLD_RANK or SLURM_PROCID); launch with mpirun or mpiexec"))
    return comm


def _library_name(mpi_module: Any) -> str:
    """First words of the MPI library's version string, e.g. 'MPICH Version: 5.0.2' or 'Open MPI v5.0.11'."""
    return " ".join(mpi_module.Get_library_version().splitlines()[0].split(",")[0].split())


def rank_size() -> tuple[int, int]:
    """(rank, number of ranks); (0, 1) for a single process."""
    comm = get_comm()
    return (0, 1) if comm is None else (int(comm.Get_rank()), int(comm.Get_size()))


def check_ranks(n_ranks: int, n_replicas: int) -> None:
    """Refuse more MPI ranks than replicas (raised identically on every rank)."""
    if n_ranks > n_replicas:
        raise _collective(InputError(
            f"{n_ranks} MPI ranks for {n_replicas} replicas: every rank needs at least one replica; start at most "
            f"{n_replicas} (mpirun -n {n_replicas}) or use a ladder of at least {n_ranks} temperatures"))


def run_on_root(task: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``task(*args, **kwargs)`` on rank 0, its result broadcast to every rank; an exception that the task raises
    on rank 0 is raised on every rank (an error that cannot be pickled as a ``RuntimeError`` with its message).
    A single process just runs the task."""
    comm = get_comm()
    if comm is None or comm.Get_size() == 1:
        return task(*args, **kwargs)
    outcome: tuple[bool, Any] | None = None
    failure: BaseException | None = None
    if comm.Get_rank() == 0:
        try:
            outcome = (True, task(*args, **kwargs))
        except BaseException as error:  # every rank must leave the broadcast below, whatever happened
            failure = _collective(error)
            try:
                sent: BaseException = pickle.loads(pickle.dumps(error))
            except Exception:
                sent = RuntimeError(f"rank 0: {type(error).__name__}: {error}")
            outcome = (False, _collective(sent))
    ok, value = comm.bcast(outcome, root=0)
    if failure is not None:
        raise failure
    if not ok:
        raise value
    return value


def sampler_from_storage(sampler_class: Any, storage: str | os.PathLike) -> Any:
    """``sampler_class.from_storage(storage)`` (openmmtools) on every rank, with rank 0 last.

    openmmtools reads the storage on every rank and then reopens it on rank 0 to append; HDF5 locks a file open
    for writing, so a rank still opening it to read then fails (``NetCDF: HDF error``: 5 of 20 resumes with 2 ranks
    failed so on the 2-core development machine). Here the other ranks read first, and rank 0 reads and reopens
    the storage only when all of them are done. An error on any rank is raised on every rank.
    """
    comm = get_comm()
    if comm is None or comm.Get_size() == 1:
        return sampler_class.from_storage(str(storage))
    sampler, failure = None, None
    if comm.Get_rank() != 0:
        try:
            sampler = sampler_class.from_storage(str(storage))  # reads only: rank 0 alone appends
        except Exception as error:
            failure = f"rank {comm.Get_rank()}: {type(error).__name__}: {' '.join(str(error).split())}"
    failures = [f for f in comm.allgather(failure) if f is not None]
    if failures:
        raise _collective(InputError(f"cannot read {storage} on {failures[0]}; every rank reads the storage to "
                                     "resume: put --out on a file system that all nodes share"))
    loaded: dict[str, Any] = {}

    def load_on_root() -> None:
        loaded["sampler"] = sampler_class.from_storage(str(storage))

    run_on_root(load_on_root)
    return loaded.get("sampler", sampler)


def describe() -> dict[str, Any]:
    """``{"mpi": {...}}`` for a run record under MPI (world size, MPI library, host:pid of each rank), ``{}`` for a
    single process. Collective: every rank must call it."""
    comm = get_comm()
    if comm is None:
        return {}
    from mpi4py import MPI

    processes = comm.allgather(f"{socket.gethostname()}:{os.getpid()}")
    return {"mpi": {"size": int(comm.Get_size()), "library": _library_name(MPI),
                    "processes": processes}}
