"""Reference summaries: what ``trade-md reference`` (replica exchange + MBAR) and ``trade-md umbrella`` (umbrella
sampling + MBAR) write, and their exported frames, read for evaluation (``--reference``).

A summary JSON holds per-temperature lists (``temperatures`` K, ``delta_f_kT``, ``mean_potential`` kJ/mol, ...;
null for a non-finite estimate); frames (when exported) are ``frames_all.dcd`` + ``topology.pdb`` + ``weights.npz``
(MBAR log-weights ``[n, m]`` at the summary temperatures).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trade_md.errors import InputError
from trade_md.formats.files import read_json

__all__ = ["REFERENCE_FORMATS", "Reference", "ReferenceFrames", "default_reference", "load_reference"]

REFERENCE_FORMATS: tuple[str, ...] = ("trade-md reference summary", "trade-md umbrella summary")
"""Summary formats ``load_reference`` accepts (replica exchange + MBAR, umbrella sampling + MBAR)."""
_MATCH_K = 0.05
"""Temperatures closer than this (K) are the same temperature of the reference."""


@dataclass
class ReferenceFrames:
    """Decorrelated reference frames with MBAR log-weights at each summary temperature.

    positions: ``[n, atoms, 3]`` nm; energies: ``[n]`` kJ/mol; temperatures: ``[m]`` K;
    log_weights: ``[n, m]`` normalised over the frames for each temperature.
    """

    positions: np.ndarray
    energies: np.ndarray
    temperatures: np.ndarray
    log_weights: np.ndarray

    def log_weights_at(self, temperature: float) -> np.ndarray | None:
        """Log-weights ``[n]`` of the frames at ``temperature`` K, None when it is not a summary temperature."""
        index = np.flatnonzero(np.abs(self.temperatures - temperature) < _MATCH_K)
        return None if index.size == 0 else self.log_weights[:, int(index[0])]


@dataclass
class Reference:
    """A ``trade-md reference`` summary (``summary`` dict) and, when exported, its frames; ``path``: the source."""

    summary: dict[str, Any]
    path: Path
    frames: ReferenceFrames | None

    def index(self, temperature: float) -> int | None:
        """Index of ``temperature`` K among the summary temperatures, or None."""
        temperatures = np.asarray(self.summary.get("temperatures", []), dtype=np.float64)
        match = np.flatnonzero(np.abs(temperatures - temperature) < _MATCH_K)
        return None if match.size == 0 else int(match[0])

    def value(self, key: str, temperature: float) -> float | None:
        """The summary's ``key`` list at ``temperature`` (None if absent, null or not a summary temperature)."""
        i = self.index(temperature)
        values = self.summary.get(key)
        if i is None or values is None or values[i] is None:
            return None
        return values[i]


def default_reference(system_name: str) -> Path | None:
    """The shipped reference summary of a built-in system, or None when there is none."""
    from trade_md.systems import SYSTEMS_DIR

    candidate = SYSTEMS_DIR / system_name.replace("-", "_") / "reference" / "summary.json"
    return candidate if candidate.is_file() else None


def load_reference(source: str | Path) -> Reference:
    """Read a reference: a ``trade-md reference`` directory (``summary.json`` [+ ``frames/``]) or a summary JSON.

    Frames are looked up at the summary's ``frames.dir`` (as given, or by that name beside the JSON), or in
    ``frames/`` beside the JSON when the summary lists none; a reference without them still gives histograms, ΔF
    and ⟨U⟩.
    """
    path = Path(source)
    if path.is_dir():
        summary_path = path / "summary.json"
        if not summary_path.is_file():
            raise InputError(f"{path} holds no summary.json; run `trade-md reference {path}` first, or pass the "
                             "summary JSON itself")
    elif path.is_file():
        summary_path = path
    else:
        raise InputError(f"reference {path} does not exist; pass a `trade-md reference` directory or summary JSON")
    summary = read_json(summary_path)
    if not isinstance(summary, dict) or not str(summary.get("format", "")).startswith(REFERENCE_FORMATS):
        raise InputError(f"{summary_path} is not a `trade-md reference` summary; pass the output of "
                         "`trade-md reference` (or the summary.json of `trade-md umbrella`)")
    listed = (summary.get("frames") or {}).get("dir")  # the summary's own frames, never another run's beside it
    candidates = [Path(listed), summary_path.parent / Path(listed).name] if listed else [summary_path.parent / "frames"]
    frames_dir = next((c for c in candidates if (c / "weights.npz").is_file() and (c / "frames_all.dcd").is_file()),
                      None)
    return Reference(summary, summary_path, None if frames_dir is None else _read_frames(frames_dir))


def _read_frames(frames_dir: Path) -> ReferenceFrames:
    import mdtraj

    trajectory = mdtraj.load(str(frames_dir / "frames_all.dcd"), top=str(frames_dir / "topology.pdb"))
    with np.load(frames_dir / "weights.npz") as data:
        arrays = {key: data[key] for key in data.files}
    positions = trajectory.xyz.astype(np.float64)
    if arrays["log_weights"].shape[0] != positions.shape[0]:
        raise InputError(f"{frames_dir}: weights.npz has {arrays['log_weights'].shape[0]} frames, frames_all.dcd "
                         f"{positions.shape[0]}; re-export them with `trade-md reference`")
    return ReferenceFrames(positions, np.asarray(arrays["energies"], dtype=np.float64),
                           np.asarray(arrays["temperatures"], dtype=np.float64),
                           np.asarray(arrays["log_weights"], dtype=np.float64))
