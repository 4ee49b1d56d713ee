"""Reference summaries: what ``trade-md reference`` (replica exchange + MBAR) and ``trade-md umbrella`` (umbrella
sampling + MBAR) write, and their exported frames, read for evaluation (``--reference``).

A summary JSON holds per-temperature lists (``temperatures`` K, ``delta_f_kT``, ``mean_energy`` kJ/mol, ...;
null for a non-finite estimate); frames (when exported) are ``frames_all.dcd`` + ``topology.pdb`` + ``weights.npz``
(MBAR log-weights ``[n, m]`` at the summary temperatures), written by :func:`write_frames`. Summaries are written
as strict JSON: :func:`~trade_md.formats.files.json_safe` turns non-finite numbers into null. :func:`combine_summaries` makes one
reference of the summaries of independent runs (``trade-md reference-combine``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trade_md.errors import InputError
from trade_md.formats.files import atomic_write_path, json_safe, read_json
from trade_md.systems import SYSTEMS_DIR, MolecularSystem

__all__ = ["REFERENCE_FORMATS", "Reference", "ReferenceFrames", "combine_summaries", "default_reference",
           "load_reference", "round_significant", "write_frames"]

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


def round_significant(values: Any, digits: int = 6) -> list[Any]:
    """``values`` (any shape) as nested lists of floats rounded to ``digits`` significant digits (summaries stay
    readable; histograms and overlap matrices need no more)."""
    return np.vectorize(lambda v: float(f"{v:.{digits}g}"))(np.asarray(values, dtype=np.float64)).tolist()


_COMBINED_ESTIMATES = (("mean_energy", "mean_energy_sem"), ("log_z_relative", "log_z_relative_sem"),
                       ("p_phi_positive", "p_phi_positive_sem"), ("delta_f_kT", "delta_f_sem_kT"),
                       ("delta_f", "delta_f_sem"))
"""Per-temperature estimates and the names of their standard errors that :func:`combine_summaries` averages."""


def combine_summaries(summaries: Sequence[dict[str, Any]], sources: Sequence[str]) -> dict[str, Any]:
    """One reference from the ``trade-md reference`` summaries of independent runs of one system at the same
    temperatures: per temperature, the mean of each run's estimate, with the standard error from the scatter
    between runs (sample standard deviation / √runs), which holds whatever each run's own error bars missed.
    Ramachandran histograms are averaged when every run has them, and so are the per-residue φ basins
    (``phi_basins``) when every run has the same residues; effective samples add up. An estimate that is
    null in any run (an empty basin) is null. No frames: the combined reference gives ΔF, ⟨U⟩, ln Z and histograms,
    not the NLL of reference frames. sources: a label per summary (e.g. its path), kept in ``runs``.
    """
    if len(summaries) < 2:
        raise InputError(f"combining needs at least two run summaries, got {len(summaries)}")
    first, first_source = summaries[0], sources[0]
    for summary, source in zip(summaries, sources):
        if not str(summary.get("format", "")).startswith("trade-md reference summary"):
            raise InputError(f"{source} is not a `trade-md reference` summary")
        if summary.get("system") != first.get("system"):
            raise InputError(f"{source} is a reference of another system than {first_source}; combine runs of one "
                             "system and force field")
        if len(summary["temperatures"]) != len(first["temperatures"]) or not np.allclose(
                summary["temperatures"], first["temperatures"], rtol=0, atol=1e-6):
            raise InputError(f"{source} has other temperatures than {first_source}; rerun `trade-md reference` on "
                             "every run with the same --temperatures")
    n = len(summaries)
    combined: dict[str, Any] = {
        "format": first["format"],
        "conventions": {**first.get("conventions", {}),
                        "combined": f"mean over {n} independent runs; sem = sample standard deviation over the runs "
                                    "/ sqrt(runs)"},
        "system": first["system"],
        "temperatures": first["temperatures"],
        "on_ladder": first.get("on_ladder"),
        "runs": [{"source": source, "run": summary.get("run")} for summary, source in zip(summaries, sources)],
        "effective_samples": np.sum([s["effective_samples"] for s in summaries], axis=0).tolist(),
        "warnings": [f"{source}: {message}" for summary, source in zip(summaries, sources)
                     for message in summary.get("warnings", [])],
    }
    for name, sem in _COMBINED_ESTIMATES:
        if not all(name in summary for summary in summaries):
            continue
        rows = [[math.nan if value is None else value for value in summary[name]] for summary in summaries]
        values = np.asarray(rows, dtype=np.float64)
        combined[name] = json_safe(values.mean(axis=0))
        combined[sem] = json_safe(values.std(axis=0, ddof=1) / math.sqrt(n))
    if all("ramachandran" in summary for summary in summaries):
        combined["ramachandran"] = [round_significant(np.mean(histograms, axis=0)) for histograms in
                                    zip(*(np.asarray(s["ramachandran"], dtype=np.float64) for s in summaries))]
    basins = [summary.get("phi_basins") for summary in summaries]
    if all(basins) and all(b["labels"] == basins[0]["labels"] for b in basins):
        combined["phi_basins"] = _combined_basins(basins, n)
    return combined


def _combined_basins(basins: Sequence[dict[str, Any]], n: int) -> dict[str, Any]:
    """The runs' ``phi_basins`` (lists [residue][temperature]) as one: means, scatter errors, mean histograms."""
    first = basins[0]
    combined: dict[str, Any] = {key: first[key] for key in ("convention", "labels", "phi_atoms") if key in first}
    for name, sem in (("p_positive", "p_positive_sem"), ("delta_f_kT", "delta_f_sem_kT"), ("delta_f", "delta_f_sem")):
        if all(name in b for b in basins):
            values = np.asarray([[[math.nan if v is None else v for v in row] for row in b[name]] for b in basins],
                                dtype=np.float64)
            combined[name] = json_safe(values.mean(axis=0))
            combined[sem] = json_safe(values.std(axis=0, ddof=1) / math.sqrt(n))
    if all("ramachandran" in b for b in basins):
        combined["ramachandran"] = [[round_significant(np.mean(histograms, axis=0)) for histograms in
                                     zip(*(np.asarray(b["ramachandran"][i], dtype=np.float64) for b in basins))]
                                    for i in range(len(first["labels"]))]
    return combined


def _temperature_label(temperature: float) -> str:
    return f"{temperature:.1f}".rstrip("0").rstrip(".")


def write_frames(frames_dir: Path, system: MolecularSystem, positions: np.ndarray, state: np.ndarray,
                 ladder: np.ndarray, temperatures: np.ndarray, log_weights: np.ndarray,
                 energies: np.ndarray) -> dict[str, Any]:
    """Write reference frames, each file atomically; returns the manifest a summary keeps under ``"frames"``.

    positions: ``[n, atoms, 3]`` nm; state: ``[n]`` index into ``ladder`` ``[K]`` K of the temperature each frame
    was drawn at; temperatures: ``[m]`` K the summary's; log_weights: ``[n, m]`` normalised over the frames at
    each temperature; energies: ``[n]`` kJ/mol. Files: ``frames_<T>K.dcd`` per ladder temperature,
    ``frames_all.dcd`` (all frames in the given order), ``weights.npz`` (``temperatures``, ``log_weights``,
    ``energies``, ``state``) and ``topology.pdb``.
    """
    import mdtraj

    frames_dir.mkdir(parents=True, exist_ok=True)
    topology = mdtraj.Topology.from_openmm(system.topology)
    files: dict[str, Any] = {}
    with atomic_write_path(frames_dir / "topology.pdb") as temp:
        temp.write_text(system.pdb_text(positions[0]))
    files["topology"] = "topology.pdb"
    counts = {}
    for k, temperature in enumerate(ladder):
        label = _temperature_label(temperature)
        name = f"frames_{label}K.dcd"
        with atomic_write_path(frames_dir / name) as temp:
            mdtraj.Trajectory(positions[state == k], topology).save_dcd(str(temp), force_overwrite=True)
        files[label], counts[label] = name, int(np.sum(state == k))
    with atomic_write_path(frames_dir / "frames_all.dcd") as temp:
        mdtraj.Trajectory(positions, topology).save_dcd(str(temp), force_overwrite=True)
    files["all"] = "frames_all.dcd"
    with atomic_write_path(frames_dir / "weights.npz") as temp, open(temp, "wb") as handle:
        np.savez(handle, temperatures=temperatures, log_weights=log_weights, energies=energies, state=state)
    files["weights"] = "weights.npz"
    return {"dir": str(frames_dir), "files": files, "frames_per_ladder_temperature": counts}


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
