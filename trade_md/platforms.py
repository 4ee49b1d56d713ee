"""The one OpenMM platform policy: which platform, which precision, how many threads.

- **Dynamics** (``trade-md md``, ``remd``, ``umbrella``): CUDA/OpenCL in ``mixed`` precision (OpenMM's standard for
  MD: forces in single, integration in double); CPU with ``threads`` threads.
- **Energies for importance weights** (:class:`trade_md.energy.EnergyBridge`): CUDA/OpenCL in ``double`` precision,
  because the weights exp(−u − log q) need accurate total energies: on an H200, alanine dipeptide's CUDA energies
  differed from Reference by 3.6e-4 relative in mixed precision and by 5.5e-5 in double (benchmarks/gpu_check.sh),
  at 6.5k instead of 10k calls/s; deterministic force sums wherever the platform offers them; one thread per CPU
  worker (the workers are the parallelism).
- ``"auto"`` measures: :func:`select_platform` times a few hundred Langevin steps on each available platform and
  takes the fastest (22 atoms with OBC: Reference is ~4-20× faster than CPU; a GPU wins for large systems).

>>> platform_properties("CUDA", purpose="energy")["Precision"]
'double'
>>> platform_properties("CPU", threads=2)
{'Threads': '2'}
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import openmm
import openmm.unit as unit

from trade_md.errors import InputError

__all__ = ["PLATFORMS", "Purpose", "available_platforms", "check_platform", "measure_md_speed",
           "platform_properties", "select_platform"]

logger = logging.getLogger(__name__)

PLATFORMS: tuple[str, ...] = ("Reference", "CPU", "CUDA", "OpenCL")
"""OpenMM platforms trade-md accepts by name, besides ``"auto"``."""

Purpose = Literal["dynamics", "energy"]


def available_platforms() -> list[str]:
    """Names of the OpenMM platforms whose plugins loaded here."""
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def check_platform(name: str) -> str:
    """The canonical spelling of ``name`` (``"auto"`` or one of :data:`PLATFORMS`, any case); InputError naming the
    fix when it is unknown or its plugin is not available here."""
    names = {p.lower(): p for p in (*PLATFORMS, "auto")}
    if not isinstance(name, str) or name.lower() not in names:
        raise InputError(f"OpenMM platform {name!r} is not available: unknown platform name; choose one of "
                         f"{', '.join((*PLATFORMS, 'auto'))}")
    canonical = names[name.lower()]
    if canonical != "auto" and canonical not in available_platforms():
        failures = [f for f in openmm.Platform.getPluginLoadFailures() if f"/libOpenMM{canonical}.so:" in f]
        reason = "; ".join(failures) if failures else "no plugin for it was found"
        raise InputError(
            f"OpenMM platform {canonical!r} is not available here ({reason}; available: "
            f"{', '.join(available_platforms())}); install its OpenMM plugin and driver (e.g. pip install "
            "openmm[cuda12]) or use platform 'auto'"
        )
    return canonical


def platform_properties(name: str, *, threads: int = 1, purpose: Purpose = "dynamics") -> dict[str, str]:
    """OpenMM properties of platform ``name`` under the policy above (see the module docstring)."""
    if name == "CPU":
        return {"Threads": str(int(threads)), **({"DeterministicForces": "true"} if purpose == "energy" else {})}
    if name in ("CUDA", "OpenCL"):
        properties = {"Precision": "double" if purpose == "energy" else "mixed"}
        if name == "CUDA" and purpose == "energy":
            properties["DeterministicForces"] = "true"
        return properties
    return {}


def measure_md_speed(system: Any, name: str, properties: dict[str, str], seconds: float = 0.2) -> float:
    """Langevin MD steps per second of ``system`` (a :class:`~trade_md.systems.MolecularSystem`) on one platform;
    0 when the platform cannot run it."""
    try:
        integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 1 * unit.femtosecond)
        context = openmm.Context(system.system, integrator, openmm.Platform.getPlatformByName(name), properties)
        context.setPositions(system.positions * unit.nanometer)
        context.setVelocitiesToTemperature(300 * unit.kelvin)
        integrator.step(10)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            integrator.step(20)
            steps += 20
        rate = steps / (time.perf_counter() - start)
        del context
        return rate
    except Exception:  # a platform that cannot run this system simply loses the race
        return 0.0


def select_platform(system: Any, name: str = "auto", *, threads: int = 1,
                    purpose: Purpose = "dynamics") -> tuple[str, dict[str, str]]:
    """OpenMM platform ``(name, properties)`` for ``system``: the named one, or with ``"auto"`` the fastest for MD
    (CUDA preferred over OpenCL when both exist)."""
    name = check_platform(name)
    if name != "auto":
        return name, platform_properties(name, threads=threads, purpose=purpose)
    available = available_platforms()
    candidates = [p for p in PLATFORMS if p in available and not (p == "OpenCL" and "CUDA" in available)]
    speeds = {p: measure_md_speed(system, p, platform_properties(p, threads=threads, purpose=purpose))
              for p in candidates}
    if not any(speeds.values()):
        raise InputError("no OpenMM platform can run this system; check the OpenMM installation and the System")
    best = max(speeds, key=speeds.__getitem__)
    logger.info("platform speeds (steps/s): %s; using %s", {p: round(s) for p, s in speeds.items()}, best)
    return best, platform_properties(best, threads=threads, purpose=purpose)
