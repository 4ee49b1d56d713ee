"""The energy bridge's worker processes: one OpenMM Context each, evaluating contiguous chunks of a batch.

:class:`Evaluator` owns one Context and fills energies ``[m]`` kJ/mol and forces ``[m, atoms, 3]`` kJ/mol/nm for
positions ``[m, atoms, 3]`` nm (non-finite samples and OpenMM errors give U = +inf, F = 0). :class:`WorkerPool`
runs one Evaluator per spawned process; positions go out and energies/forces come back as raw float64 bytes over
pipes. Workers ignore Ctrl-C (the parent handles it and ends them) and exit when their parent's pipe closes.
:class:`trade_md.energy.EnergyBridge` is the public face of both.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import openmm
import openmm.unit as unit

from trade_md.errors import WorkerError

__all__ = ["Evaluator", "WorkerPool", "shutdown_workers"]

_AUTO_CALLS = 50  # calls timed per candidate platform when platform="auto" chooses
_AUTO_BUDGET_S = 0.5  # ... or fewer, once a platform has used this many seconds
_CLOSE_TIMEOUT_S = 5.0  # how long close() waits for workers to exit before terminating them


def _read_forces_fast(state: openmm.State, out: np.ndarray) -> None:
    # OpenMM's own numpy fast path: writes kJ/mol/nm straight into `out` without a unit round trip.
    state._getVectorAsNumpy(openmm.State.Forces, out)


def _read_forces_public(state: openmm.State, out: np.ndarray) -> None:
    out[...] = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)


# The fast path saves ~17 µs of a ~57 µs call at 22 atoms; the public path keeps other OpenMM versions working.
_read_forces = _read_forces_fast if hasattr(openmm.State, "_getVectorAsNumpy") else _read_forces_public


class Evaluator:
    """One OpenMM Context that evaluates conformations one after another (in-process or inside a worker)."""

    def __init__(self, system_xml: str, platform_name: str, properties: Mapping[str, str]) -> None:
        system = openmm.XmlSerializer.deserialize(system_xml)
        self.n_atoms = system.getNumParticles()
        self._virtual_sites = any(system.isVirtualSite(i) for i in range(self.n_atoms))
        self._integrator = openmm.VerletIntegrator(0.001)  # never stepped; a Context needs one
        platform = openmm.Platform.getPlatformByName(platform_name)
        self._context = openmm.Context(system, self._integrator, platform, dict(properties))
        self.properties = {name: platform.getPropertyValue(self._context, name) for name in platform.getPropertyNames()}

    def evaluate(self, positions: np.ndarray, energies: np.ndarray, forces: np.ndarray | None) -> None:
        """Fill energies ``[m]`` kJ/mol and, unless None, forces ``[m, atoms, 3]`` kJ/mol/nm for positions
        ``[m, atoms, 3]`` nm (float64, C-contiguous). Non-finite samples and OpenMM errors give U=+inf, F=0."""
        finite = np.isfinite(positions).all(axis=(1, 2))
        context = self._context
        with_forces = forces is not None
        for i in range(len(positions)):
            if not finite[i]:
                energies[i] = np.inf
                continue
            try:
                context.setPositions(positions[i])
                if self._virtual_sites:
                    context.computeVirtualSites()
                state = context.getState(getEnergy=True, getForces=with_forces)
            except openmm.OpenMMException:
                energies[i] = np.inf
                continue
            energies[i] = state.getPotentialEnergy()._value  # a State reports kJ/mol; skip a 1.7 µs conversion
            if with_forces:
                _read_forces(state, forces[i])
        bad = ~np.isfinite(energies)
        if with_forces:
            bad |= ~np.isfinite(forces).all(axis=(1, 2))
            forces[bad] = 0.0
        energies[bad] = np.inf

    def seconds_per_call(self, positions: np.ndarray) -> float:
        """Mean wall time (s) of one energy+force call at ``positions`` [atoms, 3] nm, after 3 warm-up calls."""
        batch = np.ascontiguousarray(np.broadcast_to(positions, (_AUTO_CALLS, self.n_atoms, 3)))
        energies, forces = np.empty(_AUTO_CALLS), np.empty_like(batch)
        self.evaluate(batch[:3], energies[:3], forces[:3])  # warm-up: first calls build kernels and lists
        calls, start = 0, time.perf_counter()
        while calls < _AUTO_CALLS and time.perf_counter() - start < _AUTO_BUDGET_S:
            self.evaluate(batch[calls : calls + 1], energies[calls : calls + 1], forces[calls : calls + 1])
            calls += 1
        return (time.perf_counter() - start) / calls


def _worker_main(connection: Connection, system_xml: str, platform_name: str, properties: dict[str, str]) -> None:
    """Entry point of a worker process: build a Context, then serve evaluation requests until told to close.

    Protocol (parent -> worker): ``("eval", m, with_forces)`` followed by the positions' bytes, or ``("close",)``.
    Replies: ``("ok",)`` followed by the energies' bytes (and the forces' bytes), or ``("error", traceback)``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then ends the workers
    try:
        _serve(connection, system_xml, platform_name, properties)
    except (EOFError, OSError):
        return  # the parent is gone (or its pipe broke): exit rather than linger as an orphan


def _serve(connection: Connection, system_xml: str, platform_name: str, properties: dict[str, str]) -> None:
    try:
        evaluator = Evaluator(system_xml, platform_name, properties)
    except Exception:
        connection.send(("error", traceback.format_exc()))
        return
    connection.send(("ready", evaluator.properties))
    while (message := connection.recv())[0] != "close":
        _, m, with_forces = message
        payload = connection.recv_bytes()
        try:
            positions = np.frombuffer(payload, dtype=np.float64).reshape(m, evaluator.n_atoms, 3)
            energies = np.empty(m)
            forces = np.empty((m, evaluator.n_atoms, 3)) if with_forces else None
            evaluator.evaluate(positions, energies, forces)
        except Exception:
            connection.send(("error", traceback.format_exc()))
            continue
        connection.send(("ok",))
        connection.send_bytes(energies)
        if forces is not None:
            connection.send_bytes(forces)


def shutdown_workers(processes: list, connections: list[Connection], graceful: bool = True) -> None:
    """Stop worker processes: ask them to close (if graceful), then terminate, then kill what is left."""
    if graceful:
        for connection in connections:
            with suppress(OSError, ValueError):  # already gone or closed
                connection.send(("close",))
        deadline = time.monotonic() + _CLOSE_TIMEOUT_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join()
    for connection in connections:
        connection.close()
    processes.clear()
    connections.clear()


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while workers are launched, so they start with it ignored (the disposition survives exec)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _exit_description(process: Any) -> str:
    process.join(1.0)
    code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with status {code}"


class WorkerPool:
    """Worker processes (spawned, one Context each) that evaluate contiguous chunks of a batch."""

    def __init__(self, system_xml: str, platform_name: str, properties: Sequence[dict[str, str]]) -> None:
        context = multiprocessing.get_context("spawn")  # never fork: torch/OpenMM threads do not survive it
        self.processes: list = []
        self.connections: list[Connection] = []
        self.properties: list[dict[str, str]] = []
        self.broken = False  # a worker died or the protocol lost step: the pool must not be used again
        try:
            with _sigint_ignored():
                for index, worker_properties in enumerate(properties):
                    parent_end, child_end = context.Pipe(duplex=True)
                    process = context.Process(
                        target=_worker_main,
                        args=(child_end, system_xml, platform_name, worker_properties),
                        name=f"trade-md-energy-{index}",
                        daemon=True,
                    )
                    process.start()
                    child_end.close()  # the worker holds the only other end: its exit reads as EOF here
                    self.processes.append(process)
                    self.connections.append(parent_end)
            for index in range(len(self.processes)):
                reply = self._receive(index, "while starting")
                if reply[0] == "error":
                    raise WorkerError(
                        f"energy worker {index} could not create its OpenMM Context on platform {platform_name!r} "
                        f"with properties {properties[index]}; check `platform` and `platform_properties`. "
                        f"Worker traceback:\n{reply[1]}"
                    )
                self.properties.append(reply[1])
        except BaseException:
            shutdown_workers(self.processes, self.connections, graceful=False)
            raise

    def _died(self, index: int, doing: str) -> WorkerError:
        self.broken = True
        process = self.processes[index]
        return WorkerError(
            f"energy worker {index} (pid {process.pid}) {_exit_description(process)} {doing}; the bridge is closed. "
            "Causes: out of memory, a crash inside OpenMM or its GPU driver, the process being killed, or (at "
            "start-up) a script that creates workers without an `if __name__ == '__main__':` guard. "
            "Create a new EnergyBridge (fewer workers or another platform if it happens again)."
        )

    def _receive(self, index: int, doing: str) -> tuple:
        try:
            return self.connections[index].recv()
        except (EOFError, OSError):
            raise self._died(index, doing) from None

    def evaluate(self, positions: np.ndarray, energies: np.ndarray, forces: np.ndarray | None) -> None:
        """Split ``positions`` [n, atoms, 3] into contiguous chunks, one per worker, and gather the results."""
        n, k = len(positions), len(self.processes)
        sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
        bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        active = [i for i in range(k) if sizes[i] > 0]
        doing = f"while evaluating a batch of {n} conformations"
        for i in active:
            try:
                self.connections[i].send(("eval", sizes[i], forces is not None))
                self.connections[i].send_bytes(positions[bounds[i] : bounds[i + 1]])
            except OSError:
                raise self._died(i, doing) from None
        errors = []
        for i in active:
            reply = self._receive(i, doing)
            if reply[0] == "error":
                errors.append(f"energy worker {i} (pid {self.processes[i].pid}) raised:\n{reply[1]}")
                continue
            try:
                self.connections[i].recv_bytes_into(energies[bounds[i] : bounds[i + 1]])
                if forces is not None:
                    self.connections[i].recv_bytes_into(forces[bounds[i] : bounds[i + 1]].reshape(-1))
            except (EOFError, OSError):
                raise self._died(i, doing) from None
        if errors:
            raise WorkerError(
                "an energy worker failed; the batch has no result (the other workers are still usable). "
                "Report the traceback below if it is not a resource problem:\n" + "\n".join(errors)
            )
