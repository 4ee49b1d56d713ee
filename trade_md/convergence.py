"""Is MD data long enough? Basin convergence of the backbone φ, judged from independent runs.

The backbone dihedral φ = C(i−1)–N–CA–C (:func:`trade_md.features.backbone_phi`) splits frames into the basins
φ < 0 and φ > 0. A basin is entered when φ reaches its core (more than ``margin`` = 30° from the boundaries at 0
and ±180°, :func:`trade_md.features.basin_entries`); this hysteresis keeps recrossings at the boundary from
counting. :func:`convergence_report` gives the entries into each basin and the φ > 0 population with a
block-averaged standard error (and the spread across runs), and warns when the minor basin was entered fewer than
:data:`MIN_MINOR_ENTRIES` times or the relative error exceeds :data:`MAX_RELATIVE_ERROR`.

>>> round(block_standard_error([np.array([0.0, 1.0] * 32)]), 4)
0.063
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from trade_md.features import BASIN_MARGIN, backbone_phi, basin_entries
from trade_md.formats.files import json_safe

__all__ = [
    "MAX_RELATIVE_ERROR",
    "MIN_MINOR_ENTRIES",
    "MIN_RUNS_FOR_SPREAD",
    "ConvergenceWarning",
    "block_standard_error",
    "convergence_report",
    "dataset_convergence",
]

MIN_MINOR_ENTRIES = 20
"""Fewest entries into the φ > 0 basin for a converged population."""

MAX_RELATIVE_ERROR = 0.2
"""Largest relative standard error of the φ > 0 population for a converged one."""

MIN_RUNS_FOR_SPREAD = 4
"""The spread of K run means has K − 1 degrees of freedom: too noisy to judge below 4 runs."""


class ConvergenceWarning(UserWarning):
    """The MD data visit the backbone basins too rarely for a reliable population."""


def block_standard_error(series: list[np.ndarray], min_blocks: int = 16) -> float:
    """Standard error of the mean of time series pooled from independent runs, by block averaging.

    series: list of ``[n_r]`` arrays. For block lengths 1, 2, 4, ... frames (at least ``min_blocks`` blocks in
    all), the standard error of the block means is computed; the largest value is returned (conservative once the
    blocks exceed the correlation time). NaN when there are too few frames.
    """
    longest = max((len(s) for s in series), default=0)
    estimates = []
    length = 1
    while length <= longest:
        means = np.concatenate([s[: len(s) // length * length].reshape(-1, length).mean(axis=1) for s in series
                                if len(s) >= length])
        if means.size < min_blocks:
            break
        estimates.append(float(np.std(means, ddof=1) / math.sqrt(means.size)))
        length *= 2
    return max(estimates) if estimates else float("nan")


def dataset_convergence(topology: Any, positions: np.ndarray, run: np.ndarray,
                        remedy: str = "increase --ns or --replicas") -> dict[str, Any]:
    """The :func:`convergence_report` of a dataset's frames (``positions [n, atoms, 3]`` nm, ``run [n]``) for the
    molecule of ``topology`` (openmm or mdtraj); each of its warnings is also issued as a
    :class:`ConvergenceWarning` whose last words say ``remedy``."""
    _, labels, phi = backbone_phi(topology, positions)
    report = convergence_report(phi, run, labels, remedy=remedy)
    for line in report["warnings"]:
        warnings.warn(line, ConvergenceWarning, stacklevel=3)
    return report


def convergence_report(phi: np.ndarray, run: np.ndarray, labels: list[str] | None = None, *,
                       margin: float = BASIN_MARGIN, min_entries: int = MIN_MINOR_ENTRIES,
                       max_relative_error: float = MAX_RELATIVE_ERROR,
                       remedy: str = "increase --ns or --replicas") -> dict[str, Any]:
    """Basin entries and φ > 0 populations with errors for each backbone φ.

    phi: ``[n, k]`` radians; run: ``[n]`` replica index (frames of a run contiguous and in time order).
    The standard error judged is the block-averaged one (blocks pooled over runs), or the larger of it and the
    spread of the run means when there are at least :data:`MIN_RUNS_FOR_SPREAD` runs of equal length. Returns a
    JSON-able dict with per-dihedral reports (undefined errors as null), ``converged`` (bool, None without a φ)
    and ``warnings`` (the last says ``remedy``).
    """
    phi = np.asarray(phi, dtype=np.float64).reshape(len(run), -1)
    labels = labels or [f"phi{j}" for j in range(phi.shape[1])]
    runs = [np.flatnonzero(run == r) for r in np.unique(run)]
    reports, warning_lines = [], []
    for j, label in enumerate(labels):
        report = _dihedral_report(phi[:, j], runs, label, margin)
        problems = []
        if report["entries_phi_positive"] < min_entries:
            problems.append(f"only {report['entries_phi_positive']} entries into the φ>0 basin of {label} "
                            f"(want ≥ {min_entries})")
        if not report["relative_error"] <= max_relative_error:
            problems.append(f"φ>0 population of {label} = {report['population_phi_positive']:.4f} ± "
                            f"{report['standard_error']:.4f} (relative error {report['relative_error']:.0%} > "
                            f"{max_relative_error:.0%})")
        warning_lines += problems
        reports.append(json_safe({**report, "converged": not problems}))
    if not reports:
        warning_lines.append("no backbone φ dihedral found; basin convergence not assessed")
    if warning_lines and reports:
        warning_lines.append(f"the data are too short for a converged boundary: {remedy}")
    return {"dihedrals": reports, "converged": all(r["converged"] for r in reports) if reports else None,
            "warnings": warning_lines}


def _dihedral_report(phi: np.ndarray, runs: list[np.ndarray], label: str, margin: float) -> dict[str, Any]:
    """Entries, φ > 0 population and its standard errors for one dihedral ``phi [n]`` split into ``runs``
    (frame indices per run); errors may be NaN or inf here."""
    entries = np.array([basin_entries(phi[idx], margin) for idx in runs]).reshape(-1, 2)
    indicators = [(phi[idx] > 0).astype(np.float64) for idx in runs]
    per_run = [float(h.mean()) for h in indicators]
    population = float(np.mean(np.concatenate(indicators)))
    block_se = block_standard_error(indicators)
    lengths = {len(h) for h in indicators}
    across_se = (float(np.std(per_run, ddof=1) / math.sqrt(len(per_run)))
                 if len(per_run) >= 2 and len(lengths) == 1 else float("nan"))
    trusted = (block_se, across_se) if len(per_run) >= MIN_RUNS_FOR_SPREAD else (block_se,)
    known = [value for value in trusted if not math.isnan(value)]
    se = max(known) if known else math.nan
    return {
        "label": label,
        "frames": int(phi.shape[0]),
        "runs": len(runs),
        "margin_deg": math.degrees(margin),
        "entries_phi_negative": int(entries[:, 0].sum()),
        "entries_phi_positive": int(entries[:, 1].sum()),
        "entries_phi_positive_per_run": entries[:, 1].tolist(),
        "population_phi_positive": population,
        "population_phi_positive_per_run": per_run,
        "block_standard_error": block_se,
        "across_runs_standard_error": across_se,
        "standard_error": se,
        "relative_error": se / population if population > 0 and known else math.inf,
    }
