"""The files of a ``trade-md umbrella`` run and the settings they record.

- ``run.json`` (:data:`RUN_FORMAT`): the :class:`UmbrellaSettings`, the serialized system, the platform name and
  versions (written first; a resume reads it and must match it);
- ``windows/T{T}K.npz`` per temperature (:func:`load_windows` / :func:`save_windows`): ``phi``, ``psi`` [K, n]
  radians, ``energy`` [K, n] kJ/mol (the unbiased potential), ``cis`` [K, n, bonds] and ``wrong_chirality`` [K, n]
  flags of frames every ``frame_interval_ps``, ``lineage`` [K, n] (which starting replica is in each window), swap
  ``attempts``/``accepts`` [K] of pair (k, k + 1 mod K), the current ``positions`` and ``velocities``
  [K, atoms, 3] (nm, nm/ps), ``lineage_now`` [K] and ``wall_s``; rewritten atomically every ``chunk_ps``.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trade_md.errors import InputError
from trade_md.formats.files import atomic_write_path, read_json
from trade_md.thermo import kT

__all__ = [
    "RUN_FORMAT",
    "UmbrellaSettings",
    "finished",
    "load_windows",
    "read_run_record",
    "recorded_settings",
    "save_windows",
    "settings_json",
    "windows_path",
]

RUN_FORMAT = "trade-md umbrella run/1"


@dataclass(frozen=True)
class UmbrellaSettings:
    """What ``run_umbrella`` runs, per temperature.

    temperatures: K. width_deg: the bias's standard deviation in φ, degrees (κ = k_B T / width², so the windows
    overlap alike at every temperature). ns_per_window: production per window after ``equilibration_ps``.
    Dynamics as ``trade-md md``: LangevinMiddle, ``timestep_fs``, ``friction_per_ps``. exchange_every_ps:
    neighbouring windows attempt to swap configurations this often (replica-exchange umbrella sampling; 0: never).
    chunk_ps: checkpoint interval.
    """

    temperatures: tuple[float, ...]
    n_windows: int = 36
    width_deg: float = 6.0
    ns_per_window: float = 0.5
    equilibration_ps: float = 100.0
    frame_interval_ps: float = 0.1
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    exchange_every_ps: float = 1.0
    chunk_ps: float = 50.0
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [t for t in self.temperatures if not (math.isfinite(t) and t > 0)]
        if not self.temperatures or bad:
            raise InputError(f"temperatures must be finite and > 0 K, got {list(self.temperatures)}; e.g. 300,450")
        if self.n_windows < 4:
            raise InputError(f"n_windows must be at least 4, got {self.n_windows}; 36 (10° apart) is the default")
        spacing = 360.0 / self.n_windows
        if not 0 < self.width_deg <= 360.0:
            raise InputError(f"width_deg must be in (0, 360], got {self.width_deg}")
        if self.width_deg < 0.3 * spacing:
            raise InputError(f"windows {spacing:.1f}° apart with a {self.width_deg}° width do not overlap; use more "
                             f"windows or a width of at least {0.3 * spacing:.1f}°")
        for name in ("ns_per_window", "frame_interval_ps", "timestep_fs", "friction_per_ps", "chunk_ps"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.equilibration_ps < 0 or self.exchange_every_ps < 0:
            raise InputError(f"equilibration_ps and exchange_every_ps must be >= 0, got {self.equilibration_ps} and "
                             f"{self.exchange_every_ps}")
        if self.frame_interval_ps * 1000.0 < self.timestep_fs:
            raise InputError(f"frame_interval_ps {self.frame_interval_ps} is shorter than one {self.timestep_fs} fs step")
        if self.exchange_every_ps:
            ratio = self.exchange_every_ps / self.frame_interval_ps
            if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
                raise InputError(f"exchange_every_ps {self.exchange_every_ps} must be a whole multiple of the "
                                 f"{self.frame_interval_ps} ps frame interval (or 0 for independent windows)")
            if self.n_windows % 2:
                raise InputError(f"exchanging windows form a ring of alternating pairs and need an even number of "
                                 f"windows, got {self.n_windows}")
        names = [f"{t:g}" for t in self.temperatures]
        if len(set(names)) != len(names):
            raise InputError(f"temperatures {list(self.temperatures)} repeat (as {names}); give each once")
        if self.seed < 0:
            raise InputError(f"seed must be >= 0, got {self.seed}")

    @property
    def centres(self) -> np.ndarray:
        """Window centres [n_windows], radians in [−π, π)."""
        return -math.pi + 2.0 * math.pi * np.arange(self.n_windows) / self.n_windows

    def force_constant(self, temperature: float) -> float:
        """κ in kJ/mol/rad² at ``temperature`` (K)."""
        return kT(temperature) / math.radians(self.width_deg) ** 2

    @property
    def steps_per_frame(self) -> int:
        return max(1, round(self.frame_interval_ps * 1000.0 / self.timestep_fs))

    @property
    def frames_per_window(self) -> int:
        return max(1, round(self.ns_per_window * 1000.0 / self.frame_interval_ps))


def settings_json(settings: UmbrellaSettings) -> dict[str, Any]:
    """``settings`` as the dict ``run.json`` stores."""
    data = asdict(settings)
    data["temperatures"] = [float(t) for t in settings.temperatures]
    return data


def recorded_settings(record: dict[str, Any]) -> UmbrellaSettings:
    """The :class:`UmbrellaSettings` stored in a ``run.json`` record."""
    return UmbrellaSettings(**{**record["settings"], "temperatures": tuple(record["settings"]["temperatures"])})


def read_run_record(out: Path) -> dict[str, Any]:
    """``out/run.json`` of an umbrella run; InputError unless it is one."""
    record = read_json(out / "run.json")
    if record.get("format") != RUN_FORMAT:
        raise InputError(f"{out / 'run.json'} is not a trade-md umbrella run (format {record.get('format')!r})")
    return record


def windows_path(out: Path, temperature: float) -> Path:
    """The windows checkpoint of ``temperature`` K in the run directory ``out``."""
    return out / "windows" / f"T{temperature:g}K.npz"


def load_windows(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a windows checkpoint (module docs), None when it does not exist yet."""
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise InputError(f"checkpoint {path} is damaged ({type(error).__name__}: {error}); delete it to rerun that "
                         "temperature") from None


def save_windows(path: Path, windows: dict[str, np.ndarray]) -> None:
    """Write a windows checkpoint atomically."""
    with atomic_write_path(path) as temp, open(temp, "wb") as handle:
        np.savez(handle, **windows)


def finished(out: Path, settings: UmbrellaSettings, temperature: float) -> bool:
    """Whether every window at ``temperature`` K holds its ``frames_per_window`` frames."""
    windows = load_windows(windows_path(out, temperature))
    return windows is not None and windows["phi"].shape[1] >= settings.frames_per_window
