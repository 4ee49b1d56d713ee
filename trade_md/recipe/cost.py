"""What a stage of ``trade-md run`` costs: wall time, CPU time, energy evaluations and simulated nanoseconds.

A :class:`Meter` times one session of a stage: wall time by :func:`time.perf_counter`, CPU time as the user + system
time of this process and of its finished child processes (:func:`resource.getrusage`; MD replicas and energy workers
are children that end with their stage). A stage's ``cost.json`` lists its sessions (a resumed stage adds one), each
written when the session ends, also on an interruption (Ctrl-C, SIGTERM); while it runs, a meter given the stage's
directory rewrites its entry every :data:`SESSION_TICK_S` marked ``open``, so a session killed without warning still
counts to its last minute (less its running children's CPU time). :func:`stage_cost` sums them.

>>> cost = Cost(wall_s=2.0, cpu_s=3.0, energy_evaluations=10, simulated_ns=0.5)
>>> (cost + cost).wall_s, (cost + cost).energy_evaluations
(4.0, 20)
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trade_md.formats.files import read_json, write_json_atomic

__all__ = ["COST_FILE", "SESSION_TICK_S", "Cost", "Meter", "record_session", "stage_cost"]

COST_FILE = "cost.json"
SESSION_TICK_S = 60.0
"""Seconds between the writes of a running session's cost so far."""


@dataclass
class Cost:
    """wall_s, cpu_s: seconds; energy_evaluations: potential-energy (MD: force) evaluations; simulated_ns: MD time
    simulated, all replicas and equilibration included; sessions: how many sessions ran the stage."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    energy_evaluations: int = 0
    simulated_ns: float = 0.0
    sessions: int = 0
    notes: list[str] = field(default_factory=list)

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.wall_s + other.wall_s, self.cpu_s + other.cpu_s,
                    self.energy_evaluations + other.energy_evaluations, self.simulated_ns + other.simulated_ns,
                    self.sessions + other.sessions, self.notes + other.notes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Cost:
        return cls(**{key: values[key] for key in ("wall_s", "cpu_s", "energy_evaluations", "simulated_ns",
                                                   "sessions", "notes") if key in values})


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Meter:
    """Wall and CPU time since it was made (:attr:`wall_s`, :attr:`cpu_s`); given ``directory``, it writes them to
    ``directory/cost.json`` every ``every_s`` seconds (an ``open`` entry) until :func:`record_session` closes it."""

    def __init__(self, directory: Path | None = None, every_s: float = SESSION_TICK_S) -> None:
        self._wall, self._cpu = time.perf_counter(), _cpu_seconds()
        self._id = f"{os.getpid()}-{time.time_ns()}"
        self._lock, self._closed = threading.Lock(), threading.Event()
        if directory is not None:
            threading.Thread(target=self._tick, args=(directory, every_s), daemon=True, name="trade-md-cost").start()

    @property
    def id(self) -> str:
        """This session's key in ``cost.json``."""
        return self._id

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self._wall

    @property
    def cpu_s(self) -> float:
        return _cpu_seconds() - self._cpu

    def _tick(self, directory: Path, every_s: float) -> None:
        while not self._closed.wait(every_s):
            with self._lock:
                if not self._closed.is_set() and directory.is_dir():
                    try:
                        _write_session(directory, self._id, {"wall_s": self.wall_s, "cpu_s": self.cpu_s,
                                                             "open": True})
                    except OSError:        # a full or vanished disk: the final record will say it, not this thread
                        return

    def close(self, directory: Path, work: dict[str, Any]) -> None:
        """Stop the periodic writes and write this session's final entry to ``directory/cost.json``."""
        with self._lock:
            self._closed.set()
            _write_session(directory, self._id, {"wall_s": self.wall_s, "cpu_s": self.cpu_s, **work})


def _write_session(directory: Path, session: str, entry: dict[str, Any]) -> None:
    path = directory / COST_FILE
    sessions = [s for s in (read_json(path)["sessions"] if path.is_file() else []) if s.get("id") != session]
    write_json_atomic(path, {"sessions": [*sessions, {"id": session, **entry}]})


def record_session(directory: Path, meter: Meter, **work: Any) -> None:
    """Write this session's wall and CPU time and ``work`` (e.g. ``energy_evaluations=...`` counted in this session)
    to ``directory/cost.json``, in place of its ``open`` entry, if any."""
    meter.close(directory, work)


def stage_cost(directory: Path, without: Meter | None = None) -> Cost:
    """The summed sessions of ``directory/cost.json`` (zero when there is none), leaving out the ``open`` entry of the
    running session ``without``: a stage adding its own meter must not count its time twice."""
    path = directory / COST_FILE
    if not path.is_file():
        return Cost()
    total = Cost()
    for session in read_json(path)["sessions"]:
        if without is not None and session.get("id") == without.id:
            continue
        killed = [f"a session killed after {session['wall_s'] / 60:.1f} min: counted to its last minute, without "
                  "its work"] if session.get("open") else []
        total = total + Cost(wall_s=session["wall_s"], cpu_s=session["cpu_s"],
                             energy_evaluations=int(session.get("energy_evaluations", 0)),
                             simulated_ns=float(session.get("simulated_ns", 0.0)), sessions=1, notes=killed)
    return total

