"""MPI for command-line handlers: an error raised on every rank is printed once (rank 0) and every rank exits with
status 2; an error raised on some ranks only is printed by the rank that raised it, which then aborts the whole
job (``MPI_Abort``) after waiting ``ERROR_AGREEMENT_S`` seconds for the others. The library side is
:mod:`trade_md.mpi`."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any

from trade_md.errors import TradeMDError
from trade_md.mpi import get_comm, is_collective, launcher_rank

__all__ = ["ERROR_AGREEMENT_S", "mpi_command"]

ERROR_AGREEMENT_S = 20.0
"""How long a rank that failed waits for the other ranks to fail too before it aborts the job."""


def _all_ranks_failed(comm: Any, timeout_s: float) -> bool:
    """True when every rank of ``comm`` (a communicator used for nothing else) enters this within ``timeout_s``."""
    request = comm.Ibarrier()
    deadline = time.monotonic() + timeout_s
    while not request.Test():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def mpi_command(handler: Callable[[Any], int]) -> Callable[[Any], int]:
    """Wrap a command-line handler ``(args) -> int`` for MPI (see the module docs). A single process runs the
    handler unchanged, except for the launcher checks of :func:`get_comm`."""

    @functools.wraps(handler)
    def wrapper(args: Any) -> int:
        try:
            comm = get_comm()
        except TradeMDError:
            if launcher_rank() != 0:  # every process failed alike, without MPI between them: rank 0 says it
                raise SystemExit(2) from None
            raise
        if comm is None or comm.Get_size() == 1:
            return handler(args)
        errors = comm.Dup()  # only ever used to agree on a failure, so it cannot cross the run's own collectives
        try:
            return handler(args)
        except TradeMDError as error:
            if is_collective(error) or _all_ranks_failed(errors, ERROR_AGREEMENT_S):
                if comm.Get_rank() == 0:
                    raise
                raise SystemExit(2) from None
            print(f"trade-md {getattr(args, 'command', '')}: error: {error} (rank {comm.Get_rank()} of "
                  f"{comm.Get_size()}; aborting the other ranks)", file=sys.stderr, flush=True)
            comm.Abort(2)
            raise  # not reached
        except KeyboardInterrupt:
            print(f"trade-md: interrupted on rank {comm.Get_rank()}; aborting the other ranks", file=sys.stderr,
                  flush=True)
            comm.Abort(130)
            raise  # not reached

    return wrapper
