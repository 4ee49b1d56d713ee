"""MBAR analysis of parallel-tempering runs (``trade-md reference``): the reference summary a generator is checked
against.

Equilibration detection on the total reduced energy and the statistical inefficiency g of the slowest observable
(the energy or a backbone φ_i > 0 basin indicator); MBAR over every equilibrated sample of every replica, which for
tempering needs no re-evaluation (u_k(x) = U(x) / (k_B T_k)); at any temperature in [Tmin, Tmax] (off-ladder ones as
unsampled states): ⟨U⟩, ln Z relative to Tmin and, for every backbone φ_i of a peptide, P(φ_i > 0) and
ΔF_i = F(φ_i > 0) − F(φ_i < 0) = −k_B T ln(P(φ_i > 0) / P(φ_i < 0)) with (φ_i, ψ_i) Ramachandran histograms (36 × 36
bins on [−π, π)²; ``phi_basins``, :mod:`trade_md.analysis.phi_basins`; a dipeptide's also as the top-level keys it
always had), with standard errors from a block bootstrap over 2g-iteration blocks (MBAR's asymptotic errors would
ignore the time correlation); diagnostics (exchange acceptance, round trips, MBAR overlap). Independent runs of one
system pool into one MBAR (their ladders may differ; each run is decorrelated and block-resampled within itself);
the summaries of independent runs combine with
:func:`trade_md.formats.reference.combine_summaries`. Poor overlap, too few blocks or a failed MBAR solve is a
logged warning, listed in the summary. The subsample spaced by g is exported with its MBAR weights
(:func:`export_frames`) for evaluating a generator's NLL.

>>> count_round_trips(np.array([[0], [1], [2], [1], [0]]), 3).tolist()
[1]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import logsumexp

from trade_md.analysis.mbar import MBAREstimator, Overlap, decorrelate, tempering_reduced_potentials
from trade_md.analysis.metrics import RAMACHANDRAN_BINS
from trade_md.analysis.phi_basins import Backbone, phi_basin_summary
from trade_md.errors import InputError, SystemMismatchError
from trade_md.formats.files import json_safe
from trade_md.formats.reference import round_significant, write_frames
from trade_md.formats.remd import ReplicaData
from trade_md.systems import MolecularSystem
from trade_md.thermo import reduced_potential

__all__ = [
    "DEFAULT_TARGET_TEMPERATURES",
    "POOR_OVERLAP",
    "SUMMARY_FORMAT",
    "PooledSamples",
    "analyse_reference",
    "count_round_trips",
    "export_frames",
    "union_ladder",
]

logger = logging.getLogger(__name__)

SUMMARY_FORMAT = "trade-md reference summary/1"
POOR_OVERLAP = 0.03
"""Smallest acceptable MBAR overlap O[k, k+1] between neighbouring ladder temperatures."""
DEFAULT_TARGET_TEMPERATURES: tuple[float, ...] = (300.0, 400.0, 450.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0)
"""Temperatures (K) reported by ``trade-md reference`` besides the ladder (those inside the ladder's range)."""


def count_round_trips(states: np.ndarray, n_states: int) -> np.ndarray:
    """Completed round trips per replica: lowest → highest → lowest ladder state. states: [T, R] → [R] ints."""
    trips = np.zeros(states.shape[1], dtype=np.int64)
    for r in range(states.shape[1]):
        reached_top = None  # None: not yet at the bottom; False: left the bottom; True: has been at the top since
        for s in states[:, r]:
            if s == 0:
                if reached_top:
                    trips[r] += 1
                reached_top = False
            elif s == n_states - 1 and reached_top is False:
                reached_top = True
    return trips


def union_ladder(ladders: Sequence[np.ndarray]) -> np.ndarray:
    """The sorted temperatures [K] K of all ``ladders``, each once (temperatures within 10⁻⁶ K are one)."""
    values = np.sort(np.concatenate([np.asarray(ladder, dtype=np.float64) for ladder in ladders]))
    return values[np.concatenate([[True], np.diff(values) > 1e-6])]


def _backbone(system: MolecularSystem) -> Backbone | None:
    """The backbone φ (and ψ) of a peptide, or None for a molecule without any backbone φ."""
    return Backbone.of(system.topology)


def _targets(ladder: np.ndarray, requested: Sequence[float] | None) -> np.ndarray:
    low, high = ladder[0], ladder[-1]
    if requested is None:
        extra = [t for t in DEFAULT_TARGET_TEMPERATURES if low <= t <= high]
        return np.unique(np.round(np.concatenate([ladder, extra]), 6))
    values = np.asarray([float(t) for t in requested], dtype=np.float64)
    outside = values[(values < low - 1e-6) | (values > high + 1e-6) | ~np.isfinite(values)]
    if outside.size:
        raise InputError(f"temperature {outside[0]} K is outside the ladder [{low:g}, {high:g}] K; reweighting does "
                         "not extrapolate — run a wider ladder or ask for temperatures inside it")
    return np.unique(values)


def _estimator_states(ladder: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The estimator's states [K + off-ladder] K (the ladder, then the targets not on it) and each target's
    column [M] among them."""
    off_ladder = [t for t in targets if not np.any(np.isclose(t, ladder, rtol=0, atol=1e-6))]
    states = np.concatenate([ladder, np.asarray(off_ladder, dtype=np.float64)])
    return states, np.array([int(np.argmin(np.abs(states - t))) for t in targets], dtype=np.int64)


@dataclass
class PooledSamples:
    """Every equilibrated sample of every replica, ordered by the ladder state that produced it (MBAR's order).

    energies: [N] kJ/mol; state: [N] ladder index; iteration: [N] stored iteration of its run; positions:
    [N, atoms, 3] nm; n_k: [K] samples per ladder state; decorrelated: [N] bool, the subsample spaced by the
    statistical inefficiency (exported as frames); run: [N] index of the run the sample comes from (0 for a single
    run); block: [N] block label for the bootstrap (blocks of ≥ 2 statistical inefficiencies, never spanning runs).
    """

    energies: np.ndarray
    state: np.ndarray
    iteration: np.ndarray
    positions: np.ndarray
    n_k: np.ndarray
    decorrelated: np.ndarray
    run: np.ndarray
    block: np.ndarray


def _pooled_samples(data: ReplicaData, phi: np.ndarray | None) -> tuple[PooledSamples, dict[str, Any], list[float]]:
    """Equilibrated samples of all replicas, the time-correlation analysis behind their uncertainties and the
    statistical inefficiency of each φ_i indicator.

    Equilibration is detected on the total reduced energy Σ_k u_k(x_k(t)); the statistical inefficiency g is the
    largest of that series' and (given φ [(T + 1) R, k] radians of every stored frame) of each mean φ_i > 0 indicator
    over states, the slowest observables here (a replica keeps its basins while it travels the ladder).
    """
    k = data.temperatures.size
    after_start = np.arange(1, data.n_iterations + 1)
    energies = data.by_state(data.energies[after_start], after_start)  # [T, K]
    extra = []
    if phi is not None:
        positive = phi.reshape(data.energies.shape + phi.shape[-1:])[after_start] > 0  # [T, R, k]
        extra = [data.by_state(positive[..., i].astype(np.float64), after_start).mean(axis=1)
                 for i in range(positive.shape[-1])]
    result = decorrelate(reduced_potential(energies, data.temperatures[None, :]).sum(axis=1), *extra)
    used = after_start[result.t0:]
    n = used.size
    decorrelated = np.isin(used, result.indices + 1)
    block = max(1, math.ceil(2.0 * result.g))
    samples = PooledSamples(
        energies=data.by_state(data.energies[used], used).T.reshape(-1),
        state=np.repeat(np.arange(k), n),
        iteration=np.tile(used, k),
        positions=data.by_state(data.positions[used], used).transpose(1, 0, 2, 3).reshape(k * n, data.system.n_atoms, 3),
        n_k=np.full(k, n, dtype=np.int64),
        decorrelated=np.tile(decorrelated, k),
        run=np.zeros(k * n, dtype=np.int64),
        block=np.tile((used - used[0]) // block, k),
    )
    info = {
        "equilibration_iteration": int(used[0]),
        "n_iterations_used": int(n),
        "n_samples": int(k * n),
        "statistical_inefficiency_iterations": result.g,
        "statistical_inefficiency_energy": result.inefficiencies[0],
        "statistical_inefficiency_phi_indicator": max(result.inefficiencies[1:]) if extra else None,
        "block_length_iterations": block,
        "n_blocks": math.ceil(n / block),
        "n_decorrelated_per_state": int(decorrelated.sum()),
    }
    return samples, info, list(result.inefficiencies[1:])


def _pool_runs(runs: Sequence[ReplicaData], ladder: np.ndarray,
               backbone: Backbone | None) -> tuple[PooledSamples, list[dict[str, Any]], list[float]]:
    """The equilibrated samples of every run in MBAR's order over ``ladder`` (the union of the runs' ladders),
    each run decorrelated on its own; returns them with each run's decorrelation record and the largest
    statistical inefficiency over the runs of each φ_i indicator."""
    pieces, records, phi_g = [], [], []
    for r, run in enumerate(runs):
        phi = None if backbone is None else backbone.phi(run.positions.reshape(-1, run.system.n_atoms, 3))
        piece, record, g = _pooled_samples(run, phi)
        phi_g.append(g)
        to_union = np.array([int(np.argmin(np.abs(ladder - t))) for t in run.temperatures])
        piece.state, piece.run = to_union[piece.state], np.full(piece.state.size, r, dtype=np.int64)
        pieces.append(piece)
        records.append(record)
    order = np.argsort(np.concatenate([p.state for p in pieces]), kind="stable")
    state = np.concatenate([p.state for p in pieces])[order]
    run = np.concatenate([p.run for p in pieces])[order]
    within = np.concatenate([p.block for p in pieces])[order]
    block = np.unique(np.stack([run, within], axis=1), axis=0, return_inverse=True)[1].reshape(-1)
    samples = PooledSamples(
        energies=np.concatenate([p.energies for p in pieces])[order], state=state,
        iteration=np.concatenate([p.iteration for p in pieces])[order],
        positions=np.concatenate([p.positions for p in pieces])[order],
        n_k=np.bincount(state, minlength=ladder.size).astype(np.int64),
        decorrelated=np.concatenate([p.decorrelated for p in pieces])[order], run=run, block=block,
    )
    return samples, records, np.max(phi_g, axis=0).tolist()


def _pooled_decorrelation(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The decorrelation record of pooled runs: totals, and the largest inefficiency and block length."""
    return {
        "n_samples": int(sum(r["n_samples"] for r in records)),
        "n_blocks": int(sum(r["n_blocks"] for r in records)),
        "statistical_inefficiency_iterations": max(r["statistical_inefficiency_iterations"] for r in records),
        "block_length_iterations": max(r["block_length_iterations"] for r in records),
    }


def analyse_reference(
    data: ReplicaData | Sequence[ReplicaData],
    temperatures: Sequence[float] | None = None,
    *,
    histograms: bool = True,
    n_bootstrap: int = 100,
    sources: Sequence[str] | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], PooledSamples, MBAREstimator]:
    """MBAR analysis of a replica-exchange run, or of several independent runs of one system pooled into one MBAR,
    at ``temperatures`` [K] (default: the ladder — the union of the runs' ladders — plus
    :data:`DEFAULT_TARGET_TEMPERATURES` inside it).

    Estimates use every equilibrated sample; standard errors come from ``n_bootstrap`` block-bootstrap MBAR
    re-solves over blocks of 2g iterations (g: the largest statistical inefficiency of the run), which keeps the
    time correlation that MBAR's asymptotic errors ignore; pooled runs are resampled each within itself. Returns
    (summary dict, the pooled samples, the estimator whose states are the ladder followed by the off-ladder
    targets). Warnings (poor overlap, unconverged MBAR, too few blocks, an empty basin) are logged and listed in
    ``summary["warnings"]``. sources: a label per run for the summary (default "run 0", "run 1", ...); progress: a
    progress bar over the bootstrap re-solves (when the caller enabled bars).
    """
    runs = [data] if isinstance(data, ReplicaData) else list(data)
    if not runs:
        raise InputError("give at least one trade-md remd run to analyse")
    sources = [f"run {r}" for r in range(len(runs))] if sources is None else list(sources)
    if len(sources) != len(runs):
        raise InputError(f"{len(sources)} source labels for {len(runs)} runs")
    if int(n_bootstrap) < 10:
        raise InputError(f"n_bootstrap must be at least 10 for usable standard errors, got {n_bootstrap}; use 100")
    system = runs[0].system
    for run, source in zip(runs[1:], sources[1:]):
        if run.system.fingerprint() != system.fingerprint():
            raise SystemMismatchError(f"{source} is a run of another system or force field than {sources[0]}; pool "
                                      "only runs of one system")
    ladder = union_ladder([run.temperatures for run in runs])
    targets = _targets(ladder, temperatures)
    states_t, index = _estimator_states(ladder, targets)
    backbone = _backbone(system)
    samples, run_decorrelation, phi_g = _pool_runs(runs, ladder, backbone)
    decorrelation = run_decorrelation[0] if len(runs) == 1 else _pooled_decorrelation(run_decorrelation)
    n_k = np.concatenate([samples.n_k, np.zeros(states_t.size - ladder.size, dtype=np.int64)])
    estimator = MBAREstimator(tempering_reduced_potentials(samples.energies, states_t), n_k)
    warnings: list[str] = []  # besides the estimator's own, added at the end

    def warn(message: str) -> None:
        logger.warning(message)
        warnings.append(message)

    for source, record in zip(sources, run_decorrelation):
        if record["n_blocks"] < 10:
            warn(f"{source + ': ' if len(runs) > 1 else ''}only {record['n_blocks']} independent blocks of "
                 f"{record['block_length_iterations']} iterations: the bootstrap standard errors are unreliable; "
                 "run longer")
    phi = None if backbone is None else backbone.phi(samples.positions)  # [N, k]
    errors = estimator.block_bootstrap(samples.block, observables={"energy": samples.energies},
                                       indicators={} if phi is None else backbone.indicators(phi),
                                       n_bootstrap=int(n_bootstrap), strata=samples.run, progress=progress)
    f = estimator.f_k
    mean_u, _ = estimator.expectations(samples.energies)
    overlap = estimator.overlap(np.arange(ladder.size))
    if overlap.neighbours.size and overlap.neighbours.min() < POOR_OVERLAP:
        worst = int(np.argmin(overlap.neighbours))
        warn(f"poor MBAR overlap {overlap.neighbours[worst]:.3g} < {POOR_OVERLAP} between {ladder[worst]:g} K and "
             f"{ladder[worst + 1]:g} K: estimates between them are unreliable; add temperatures or run longer")
    summary: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        "conventions": {
            "units": "energies kJ/mol, temperatures K, angles radians",
            "estimates": "MBAR over every equilibrated sample of every replica (u_k = U / k_B T_k)",
            "sem": f"one standard error from {int(n_bootstrap)} block-bootstrap MBAR re-solves over blocks of "
                   "block_length_iterations iterations (≥ 2 statistical inefficiencies"
                   + (", each run's own, resampled within the run)" if len(runs) > 1 else ")"),
            "log_z_relative": "ln Z(T) − ln Z(Tmin) (Tmin = lowest ladder temperature) = −(f(T) − f(Tmin))",
            "delta_f": "F(φ>0) − F(φ<0) = −k_B T ln(P(φ>0)/P(φ<0)), φ the first backbone φ with a ψ (per residue: "
                       "phi_basins)",
            "ramachandran": f"{RAMACHANDRAN_BINS}×{RAMACHANDRAN_BINS} bins of equal width on [−π, π)², rows φ, "
                            "columns ψ, MBAR-weighted probabilities summing to 1",
            "effective_samples": "Kish effective sample number of the MBAR weights divided by the statistical "
                                 "inefficiency",
        },
        "system": {"name": system.name, "fingerprint": system.fingerprint()},
        "decorrelation": decorrelation,
        "ladder": ladder.tolist(),
        "temperatures": targets.tolist(),
        "on_ladder": [bool(np.any(np.isclose(t, ladder, rtol=0, atol=1e-6))) for t in targets],
        "mean_energy": mean_u[index].tolist(),
        "mean_energy_sem": json_safe(errors["energy"][index]),
        "log_z_relative": (-f[index]).tolist(),
        "log_z_relative_sem": json_safe(errors["f"][index]),
        "effective_samples": (estimator.effective_sample_numbers()[index]
                              / decorrelation["statistical_inefficiency_iterations"]).tolist(),
    }
    if backbone is not None:
        basins, legacy, messages = phi_basin_summary(
            backbone, estimator, samples.positions, phi, errors, index=index, temperatures=targets,
            state=samples.state, n_ladder=ladder.size, inefficiencies=phi_g, histograms=histograms)
        summary.update(legacy)  # a dipeptide's keys, as they always were
        summary["phi_basins"] = basins
        for message in messages:
            warn(message)
    if len(runs) == 1:
        summary["run"] = _run_summary(runs[0])
        summary["diagnostics"] = {**_run_diagnostics(runs[0]), **_mbar_diagnostics(estimator, overlap)}
    else:
        summary["conventions"]["pooled"] = (f"one MBAR over {len(runs)} independent runs; each run decorrelated and "
                                            "block-resampled within itself; effective samples divided by the largest "
                                            "statistical inefficiency of the runs")
        summary["runs"] = [{"source": source, "run": _run_summary(run), "decorrelation": record,
                            "diagnostics": _run_diagnostics(run)}
                           for run, source, record in zip(runs, sources, run_decorrelation)]
        summary["diagnostics"] = _mbar_diagnostics(estimator, overlap)
    summary["warnings"] = estimator.warnings + warnings
    return summary, samples, estimator


def _run_summary(data: ReplicaData) -> dict[str, Any]:
    settings = data.record["settings"]
    segments = data.record["segments"]
    return {
        "command": data.record.get("command"),
        "ladder": data.temperatures.tolist(),
        "steps_per_iteration": settings["steps_per_iteration"],
        "timestep_fs": settings["timestep_fs"],
        "collision_rate_per_ps": settings["collision_rate_per_ps"],
        "mixing": settings["mixing"],
        "integrator": settings["integrator"],
        "iterations_analysed": data.n_iterations,
        "ns_per_replica": data.n_iterations * data.ps_per_iteration * 1e-3,
        "platform": data.record["platform"]["name"],
        "wall_s": float(sum(s["wall_s"] for s in segments)),
        "cpu_s": float(sum(s["cpu_s"] * s["n_ranks"] for s in segments)),
        "segments": len(segments),
        "versions": data.record["versions"],
    }


def _run_diagnostics(data: ReplicaData) -> dict[str, Any]:
    """Exchange acceptance and round trips of one run."""
    k = data.temperatures.size
    with np.errstate(divide="ignore", invalid="ignore"):
        acceptance = np.where(data.proposed > 0, data.accepted / np.maximum(data.proposed, 1), np.nan)
    trips = count_round_trips(data.states, k)
    total_trips = int(trips.sum())
    return {
        "acceptance_matrix": [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in acceptance],
        "neighbour_acceptance": [round(float(acceptance[i, i + 1]), 4) for i in range(k - 1)],
        "round_trips_per_replica": trips.tolist(),
        "round_trips": total_trips,
        "mean_round_trip_ps": (data.n_iterations * k * data.ps_per_iteration / total_trips) if total_trips else None,
    }


def _mbar_diagnostics(estimator: MBAREstimator, overlap: Overlap) -> dict[str, Any]:
    """Convergence and overlap of the MBAR solve."""
    return {
        "mbar_converged": estimator.converged,
        "mbar_residual": estimator.residual,
        "overlap_matrix": round_significant(overlap.matrix, 4),
        "overlap_eigenvalues": round_significant(overlap.eigenvalues, 6),
        "overlap_scalar": overlap.scalar,
        "overlap_neighbours": round_significant(overlap.neighbours, 4),
    }


def export_frames(system: MolecularSystem, samples: PooledSamples, estimator: MBAREstimator, summary: dict[str, Any],
                  frames_dir: Path) -> dict[str, Any]:
    """Write the decorrelated subsample of :func:`analyse_reference`'s ``samples`` with their weights at the
    ``summary`` temperatures (:func:`trade_md.formats.reference.write_frames`; ladder order); returns the manifest.

    A frame's MBAR ln-weight is divided by the fraction of its run's samples kept (runs pooled may be thinned at
    different strides: a kept frame stands for used / kept samples of its run), then renormalised over the frames.
    """
    ladder = np.asarray(summary["ladder"], dtype=np.float64)
    targets = np.asarray(summary["temperatures"], dtype=np.float64)
    _, columns = _estimator_states(ladder, targets)
    chosen = samples.decorrelated
    kept_fraction = np.array([chosen[samples.run == r].mean() for r in range(int(samples.run.max()) + 1)])
    log_w = estimator.log_weights()[chosen][:, columns] - np.log(kept_fraction[samples.run[chosen]])[:, None]
    return write_frames(frames_dir, system, samples.positions[chosen], samples.state[chosen], ladder, targets,
                        log_w - logsumexp(log_w, axis=0, keepdims=True), samples.energies[chosen])
