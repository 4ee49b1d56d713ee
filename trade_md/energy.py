"""Batched OpenMM energies and forces, as numpy arrays or through a torch autograd function.

:class:`EnergyBridge` evaluates potential energies U ``[n]`` (kJ/mol, float64) and forces F ``[n, atoms, 3]``
(kJ/mol/nm) of conformations x ``[n, atoms, 3]`` (nm) with one OpenMM Context per worker. It never stores a
temperature: reduced energies u = U / (k_B T) take the temperature at each call, so one bridge serves every
temperature.

Non-finite values never crash a call: a conformation with a NaN or infinite coordinate, a non-finite energy or
force, or one for which OpenMM raises (e.g. "Particle coordinate is NaN"), gets U = +inf and F = 0. The caller
decides what to do with it (cap, drop, or reweight to zero).

Parallelism: ``n_workers`` spawned processes (:mod:`trade_md.energy_workers`), each with its own Context built
from the System's XML, evaluate contiguous chunks of a batch. With one worker the default is to evaluate
in-process (no copies). Platform properties follow the energy policy of :mod:`trade_md.platforms` (double
precision on GPUs, one thread per CPU worker, deterministic force sums), so results are identical for any number
of workers on the same platform and precision (checked: Reference and CPU in the tests, CUDA on an H200).

>>> import openmm
>>> system = openmm.System(); _ = system.addParticle(1.0)
>>> spring = openmm.CustomExternalForce("50*(x^2+y^2+z^2)"); _ = spring.addParticle(0, []); _ = system.addForce(spring)
>>> with EnergyBridge(system, platform="Reference") as bridge:
...     energies, forces = bridge.energies_forces([[[0.1, -0.2, 0.3]]])
>>> round(float(energies[0]), 9), [round(float(f), 9) for f in forces[0, 0]]
(7.0, [-10.0, 20.0, -30.0])
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import openmm
import openmm.unit as unit

from trade_md import platforms
from trade_md.energy_workers import Evaluator, WorkerPool, shutdown_workers
from trade_md.errors import InputError, WorkerError
from trade_md.thermo import reduced_potential, temperature_array, to_kelvin, to_nm

__all__ = ["EnergyBridge"]

_AUTO_CANDIDATES = ("CUDA", "Reference", "CPU")  # platforms "auto" times, where a Context can be made


def _resolve_system(system: Any) -> tuple[openmm.System, np.ndarray | None]:
    """The OpenMM System of ``system`` (an openmm.System or any object with ``.system``) and its positions if any."""
    if isinstance(system, openmm.System):
        return system, None
    inner = getattr(system, "system", None)
    if not isinstance(inner, openmm.System):
        raise InputError(
            f"EnergyBridge needs an openmm.System or an object with a `.system` openmm.System "
            f"(e.g. trade_md.systems.MolecularSystem), got {type(system).__name__}"
        )
    positions = getattr(system, "positions", None)
    if positions is not None:
        positions = to_nm(positions)
        if positions.shape != (inner.getNumParticles(), 3) or not np.isfinite(positions).all():
            positions = None
    return inner, positions


def _lattice_positions(n_atoms: int) -> np.ndarray:
    """Atoms on a cubic lattice with 0.3 nm spacing ``[atoms, 3]`` nm: a stand-in conformation for timing."""
    side = int(np.ceil(n_atoms ** (1.0 / 3.0)))
    grid = np.stack(np.meshgrid(*(np.arange(side),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    return 0.3 * grid[:n_atoms].astype(np.float64)


def _string_properties(properties: Mapping[str, Any] | None, n_workers: int) -> list[dict[str, str]]:
    """Per-worker property dicts; a list/tuple value gives one entry per worker (e.g. ``DeviceIndex``)."""
    per_worker: list[dict[str, str]] = [{} for _ in range(n_workers)]
    for name, value in (properties or {}).items():
        values = value if isinstance(value, (list, tuple)) else [value] * n_workers
        if len(values) != n_workers:
            raise InputError(
                f"platform property {name!r} has {len(values)} per-worker values but n_workers={n_workers}; "
                "give one value, or one per worker"
            )
        for worker, item in zip(per_worker, values, strict=True):
            worker[str(name)] = str(item).lower() if isinstance(item, bool) else str(item)
    return per_worker


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _gpu_sharing_warning(platform_name: str, properties: Sequence[Mapping[str, str]]) -> str | None:
    """A warning text when several GPU workers would share one device (unset ``DeviceIndex`` = one device)."""
    devices = [worker.get("DeviceIndex", "") for worker in properties]
    if platform_name not in ("CUDA", "OpenCL") or len(set(devices)) == len(devices):
        return None
    return (
        f"{len(devices)} {platform_name} workers share GPU devices {sorted(set(devices))} ('' = default device): "
        "contexts of different processes take turns on a GPU, so they do not add up (2 CUDA workers on one H200 "
        "gave a fifth of the rate of 1 for alanine dipeptide). Use one worker per GPU, e.g. "
        "platform_properties={'DeviceIndex': ['0', '1']}, or CPU workers"
    )


def _with_defaults(platform_name: str, properties: dict[str, str], known_only: bool) -> dict[str, str]:
    """The caller's properties over the platform's energy defaults (:func:`trade_md.platforms.platform_properties`);
    ``known_only`` drops names the platform lacks."""
    known = set(openmm.Platform.getPlatformByName(platform_name).getPropertyNames())
    merged = {**platforms.platform_properties(platform_name, purpose="energy"), **properties}
    return {name: value for name, value in merged.items() if name in known or not known_only}


class EnergyBridge:
    """Batched potential energies and forces of one OpenMM System; a context manager that owns its workers.

    Parameters
    ----------
    system: an ``openmm.System``, or any object with a ``.system`` attribute holding one (e.g.
        :class:`trade_md.systems.MolecularSystem`; its ``.positions`` [atoms, 3] nm, if present, time ``"auto"``).
    n_workers: worker processes, each with its own Context; a batch is split into ``n_workers`` contiguous chunks.
        Results do not depend on it (same platform, same precision, same order).
    platform: ``"Reference"``, ``"CPU"``, ``"OpenCL"``, ``"CUDA"`` or ``"auto"``: auto times CUDA (where a Context
        can be made), Reference and CPU on this system (50 calls each) and picks the highest pool rate, counting
        one core per CPU worker and one GPU per distinct ``DeviceIndex``. Measured for alanine dipeptide (22
        atoms) on an H200 machine: Reference 24,000 calls/s per core, CUDA 8,600/s (launch-bound), CPU ~2,000/s,
        so auto picks Reference there; CUDA wins for larger systems.
    platform_properties: OpenMM platform properties over the energy policy of
        :func:`trade_md.platforms.platform_properties` (``Threads=1`` on CPU, the workers being the parallelism;
        ``Precision=double`` on GPUs; ``DeterministicForces=true`` where offered); pass ``{"Precision": "mixed"}``
        to trade accuracy for speed. A list or tuple value gives one value per worker, e.g.
        ``{"DeviceIndex": ["0", "1"]}``. With ``"auto"``, names the chosen platform does not know are dropped.
    in_process: evaluate in this process instead of a worker; only for ``n_workers=1``, and the default there
        (no inter-process copies). A worker process instead isolates crashes inside OpenMM.

    Attributes: ``platform_name`` (the platform in use), ``n_workers``, ``n_atoms``, ``properties`` (per worker,
    as the Contexts report them), ``auto_timings`` (seconds per call of each platform that "auto" timed, or None).

    Workers are spawned processes that ignore Ctrl-C; they end on :meth:`close`, on leaving a ``with`` block, when
    the bridge is garbage-collected, at interpreter exit, when a call is interrupted, and when their parent dies.
    """

    def __init__(
        self,
        system: Any,
        *,
        n_workers: int = 1,
        platform: str = "auto",
        platform_properties: Mapping[str, Any] | None = None,
        in_process: bool | None = None,
    ) -> None:
        openmm_system, positions = _resolve_system(system)
        if isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
            raise InputError(f"n_workers must be a positive integer, got {n_workers!r}")
        self.n_workers = int(n_workers)
        if in_process is None:
            in_process = self.n_workers == 1
        if in_process and self.n_workers != 1:
            raise InputError(f"in_process=True evaluates in this process only; pass n_workers=1, not {n_workers}")
        self.n_atoms = openmm_system.getNumParticles()
        if self.n_atoms == 0:
            raise InputError("the System has no particles; build it from a topology with atoms")
        system_xml = openmm.XmlSerializer.serialize(openmm_system)
        requested = _string_properties(platform_properties, self.n_workers)
        self.auto_timings: dict[str, float] | None = None
        self._lock = threading.Lock()
        self._evaluator: Evaluator | None = None
        self._pool: WorkerPool | None = None

        name = platforms.check_platform(platform)
        if name == "auto":
            name, evaluator = self._choose_platform(system_xml, requested, positions)
            properties = [_with_defaults(name, worker, known_only=True) for worker in requested]
            if in_process:
                self._evaluator = evaluator
        else:
            properties = [_with_defaults(name, worker, known_only=False) for worker in requested]
        self.platform_name = name
        warning = _gpu_sharing_warning(name, properties)
        if warning is not None:
            warnings.warn(warning, RuntimeWarning, stacklevel=2)
        if in_process:
            if self._evaluator is None:
                try:
                    self._evaluator = Evaluator(system_xml, name, properties[0])
                except openmm.OpenMMException as error:
                    raise WorkerError(
                        f"could not create an OpenMM Context on platform {name!r} with properties {properties[0]}: "
                        f"{error}; check `platform` and `platform_properties`"
                    ) from None
            self.properties = [self._evaluator.properties]
            self._finalizer = weakref.finalize(self, shutdown_workers, [], [])
        else:
            self._pool = WorkerPool(system_xml, name, properties)
            self.properties = self._pool.properties
            self._finalizer = weakref.finalize(self, shutdown_workers, self._pool.processes, self._pool.connections)

    def _choose_platform(
        self, system_xml: str, requested: list[dict[str, str]], positions: np.ndarray | None
    ) -> tuple[str, Evaluator]:
        """'auto': time CUDA (where a Context can be made), Reference and CPU; pick the fastest pool.

        A CPU platform's pool rate grows with the workers (one core each, up to the usable cores); CUDA's grows
        only with distinct devices, because workers sharing a GPU take turns on it.
        """
        candidates: dict[str, Evaluator] = {}
        for name in _AUTO_CANDIDATES:
            try:
                properties = _with_defaults(name, requested[0], known_only=True)
                candidates[name] = Evaluator(system_xml, name, properties)
            except openmm.OpenMMException:
                continue
        if not candidates:
            raise WorkerError("no OpenMM platform could create a Context for this System; check the System")
        timing_positions = positions if positions is not None else _lattice_positions(self.n_atoms)
        self.auto_timings = {name: ev.seconds_per_call(timing_positions) for name, ev in candidates.items()}
        parallel = {
            "CUDA": len({worker.get("DeviceIndex", "") for worker in requested}),
            "Reference": min(self.n_workers, _usable_cpus()),
            "CPU": min(self.n_workers, _usable_cpus()),
        }
        best = min(self.auto_timings, key=lambda name: self.auto_timings[name] / parallel[name])
        return best, candidates[best]

    # ---------------------------------------------------------------------------------------------- numpy API

    def _positions(self, positions: Any) -> np.ndarray:
        """Validated positions ``[n, atoms, 3]`` nm as a C-contiguous float64 array (a copy where needed)."""
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(positions, torch.Tensor):
            positions = positions.detach().to(device="cpu", dtype=torch.float64).numpy()
        try:
            array = np.ascontiguousarray(to_nm(positions), dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise InputError(f"positions must be a real array [n, {self.n_atoms}, 3] in nm ({error})") from None
        if array.ndim == 2 and array.shape == (self.n_atoms, 3):
            raise InputError(
                f"positions have shape {list(array.shape)}, a single conformation; expected a batch "
                f"[n, {self.n_atoms}, 3]: pass positions[None]"
            )
        if array.ndim != 3 or array.shape[1:] != (self.n_atoms, 3):
            raise InputError(
                f"positions have shape {list(array.shape)}, expected [n, {self.n_atoms}, 3] (nm) for this "
                f"{self.n_atoms}-atom system; pass conformations of the same system, atoms in the System's order"
            )
        return array

    def _evaluate(self, positions: Any, with_forces: bool) -> tuple[np.ndarray, np.ndarray | None]:
        array = self._positions(positions)
        n = len(array)
        energies = np.empty(n, dtype=np.float64)
        forces = np.empty((n, self.n_atoms, 3), dtype=np.float64) if with_forces else None
        with self._lock:
            if not self._finalizer.alive:
                raise WorkerError(
                    "this EnergyBridge is closed (close() was called, a call was interrupted or a worker died); "
                    "create a new EnergyBridge"
                )
            if n == 0:
                return energies, forces
            if self._evaluator is not None:
                self._evaluator.evaluate(array, energies, forces)
                return energies, forces
            try:
                self._pool.evaluate(array, energies, forces)
            except WorkerError:
                if self._pool.broken:
                    self._shutdown(graceful=False)
                raise
            except BaseException:
                # Interrupted mid-request (e.g. Ctrl-C): replies are still in flight, so the protocol is out of
                # step. End the workers now rather than hand back a pool that answers the wrong request.
                self._shutdown(graceful=False)
                raise
        return energies, forces

    def energies_forces(self, positions: Any) -> tuple[np.ndarray, np.ndarray]:
        """Energies U ``[n]`` kJ/mol (float64) and forces F ``[n, atoms, 3]`` kJ/mol/nm (float64).

        ``positions``: ``[n, atoms, 3]`` nm; numpy, torch (any float dtype or device), or an openmm quantity.
        Non-finite conformations, and ones OpenMM rejects, give U = +inf and F = 0.
        """
        energies, forces = self._evaluate(positions, with_forces=True)
        assert forces is not None
        return energies, forces

    def energies(self, positions: Any) -> np.ndarray:
        """Energies U ``[n]`` kJ/mol (float64) of positions ``[n, atoms, 3]`` nm; non-finite -> +inf."""
        return self._evaluate(positions, with_forces=False)[0]

    # ---------------------------------------------------------------------------------------------- torch API

    def potential(self, x: Any) -> Any:
        """U(x) ``[n]`` kJ/mol as a torch tensor of x's dtype and device; differentiable, dU/dx = -F.

        ``x``: ``[n, atoms, 3]`` nm (a numpy array is converted to a tensor). Second derivatives are not available.
        """
        import torch

        x = torch.as_tensor(x)
        if not x.is_floating_point():
            raise InputError(f"x must be a floating-point tensor [n, {self.n_atoms}, 3] in nm, got {x.dtype}")
        if torch.is_grad_enabled() and x.requires_grad:
            return _potential_function().apply(x, self)
        return torch.from_numpy(self.energies(x)).to(device=x.device, dtype=x.dtype)

    def reduced(self, x: Any, temperature: Any) -> Any:
        """Reduced energies u = U(x) / (k_B T) ``[n]`` (dimensionless); differentiable, du/dx = -F / (k_B T).

        ``temperature``: K as a float, an openmm quantity, or a tensor/array ``[n]`` (one per conformation).
        """
        import torch

        energies = self.potential(x)
        if isinstance(temperature, torch.Tensor):
            kelvin = temperature.to(device=energies.device, dtype=energies.dtype)
            values = kelvin.detach()
            if values.numel() and not bool(torch.isfinite(values).all() and (values > 0).all()):
                raise InputError("temperatures must be finite numbers of kelvin > 0; check the temperature tensor")
        elif np.ndim(temperature.value_in_unit(unit.kelvin) if unit.is_quantity(temperature) else temperature) == 0:
            kelvin = torch.tensor(to_kelvin(temperature), device=energies.device, dtype=energies.dtype)
        else:
            kelvin = torch.from_numpy(temperature_array(temperature)).to(device=energies.device, dtype=energies.dtype)
        if kelvin.ndim > 0 and tuple(kelvin.shape) != tuple(energies.shape):
            raise InputError(
                f"temperature has shape {tuple(kelvin.shape)} but x holds {energies.shape[0]} conformations; "
                "pass one temperature (float K) or one per conformation ([n])"
            )
        return reduced_potential(energies, kelvin)

    # -------------------------------------------------------------------------------------------- lifecycle

    def _shutdown(self, graceful: bool) -> None:
        if self._pool is not None and not graceful:
            shutdown_workers(self._pool.processes, self._pool.connections, graceful=False)
        self._finalizer()
        self._evaluator = None

    def close(self) -> None:
        """End the workers (or free the in-process Context); further calls raise WorkerError. Idempotent."""
        with self._lock:
            self._shutdown(graceful=True)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (empty when evaluating in-process or after close)."""
        return [] if self._pool is None else [process.pid for process in self._pool.processes]

    def __enter__(self) -> EnergyBridge:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._finalizer.alive else "closed"
        where = "in-process" if self._pool is None else f"{self.n_workers} workers"
        return f"EnergyBridge({self.n_atoms} atoms, {self.platform_name}, {where}, {state})"


@functools.cache
def _potential_function() -> type:
    """The autograd Function U(x) with backward -F; built on first use so that workers never import torch."""
    import torch

    class _Potential(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, bridge: EnergyBridge) -> Any:
            energies, forces = bridge.energies_forces(x)
            ctx.save_for_backward(torch.from_numpy(forces).to(device=x.device, dtype=x.dtype))
            return torch.from_numpy(energies).to(device=x.device, dtype=x.dtype)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx: Any, grad_energies: Any) -> tuple[Any, None]:
            (forces,) = ctx.saved_tensors
            return -forces * grad_energies[:, None, None], None

    return _Potential
