"""Unbiasing umbrella windows with MBAR (``trade-md umbrella``'s analysis): ΔF, P(φ > 0), ⟨U⟩, F(φ) and
Ramachandran histograms of the unbiased density, with block-bootstrap standard errors.

At one temperature the reduced potentials of the windows differ only by their biases,
u_k(x) = β (U(x) + b_k(φ(x))) with b_k(φ) = ½ κ d(φ, c_k)² (d the shortest signed angle), so MBAR needs no energy
re-evaluation; the unbiased state is an unsampled state (N = 0) with bias 0. The summary
(:func:`analyse_umbrella`, written by :func:`write_summary`) holds per temperature ΔF = F(φ > 0) − F(φ < 0)
= −k_B T ln(P(φ > 0)/P(φ < 0)) in k_B T, P(φ > 0), ⟨U⟩, the free-energy profile F(φ) on 36 bins, each with a
block-bootstrap standard error (time blocks of ``block_ps``; MBAR re-solved per replicate), and diagnostics (each
window's mean and spread of φ, the slowest statistical inefficiency of φ and ψ, neighbour overlap, swap
acceptance, replicas that crossed between the basins, cis fractions per window). The keys ``temperatures``,
``delta_f_kT``, ``delta_f_sem_kT``, ``delta_f(_sem)`` (kJ/mol), ``p_phi_positive(_sem)``, ``mean_energy(_sem)``
and ``ramachandran`` mean what they mean in a ``trade-md reference`` summary, so the file serves as
``--reference`` of ``trade-md evaluate`` (no frames: no NLL).

>>> bias_energies(np.array([3.0]), np.array([-3.0]), 2.0).round(4).tolist()  # across ±π, not the long way round
[[0.0802]]
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trade_md.analysis.mbar import MBAREstimator
from trade_md.analysis.metrics import ramachandran_histogram
from trade_md.analysis.plots import profile_plot
from trade_md.errors import InputError
from trade_md.features import wrap_angle
from trade_md.formats.files import write_json_atomic
from trade_md.formats.files import json_safe
from trade_md.formats.umbrella import (
    finished,
    load_windows,
    read_run_record,
    recorded_settings,
    windows_path,
)
from trade_md.systems import MolecularSystem
from trade_md.thermo import kT, reduced_potential

__all__ = ["PMF_BINS", "SUMMARY_FORMAT", "analyse_umbrella", "bias_energies", "unbias_windows", "write_summary"]

SUMMARY_FORMAT = "trade-md umbrella summary/1"
PMF_BINS = 36
"""Bins of F(φ) (and of the Ramachandran histogram's axes) on [−π, π)."""


def bias_energies(phi: np.ndarray, centres: np.ndarray, force_constant: float) -> np.ndarray:
    """b_k(φ_n) [K, N] kJ/mol: ½ κ d(φ_n, c_k)², φ [N] and centres [K] in radians, κ in kJ/mol/rad²."""
    return 0.5 * force_constant * wrap_angle(np.asarray(phi)[None, :] - np.asarray(centres)[:, None]) ** 2


def unbias_windows(phi_windows: Sequence[np.ndarray], centres: np.ndarray, force_constant: float, temperature: float,
                   *, energies: Sequence[np.ndarray] | None = None, psi_windows: Sequence[np.ndarray] | None = None,
                   block_frames: int | None = None, exchanged: bool = False,
                   n_bootstrap: int = 100, seed: int = 0) -> dict[str, Any]:
    """MBAR over umbrella windows at one temperature: P(φ > 0), ΔF, ⟨U⟩ and F(φ) of the unbiased density.

    phi_windows: one array [n_k] of φ (radians) per window, in the order of ``centres [K]`` (radians);
    force_constant: κ kJ/mol/rad²; temperature: K; energies: the unbiased U [n_k] kJ/mol per window (for ⟨U⟩);
    psi_windows: ψ [n_k] radians per window (for the Ramachandran histogram, ``PMF_BINS``² bins, rows φ);
    block_frames: frames per bootstrap block (default: n_k // 20 of each window, at least 1); exchanged: the
    windows swapped configurations, so frame i of every window belongs to time step i and a block takes all
    windows' frames of a time interval together (otherwise blocks are resampled within each window). ΔF and F(φ)
    in k_B T; errors are block-bootstrap standard errors.
    """
    phi = np.concatenate([np.asarray(p, dtype=np.float64) for p in phi_windows])
    n_k = np.array([len(p) for p in phi_windows] + [0])
    u_kn = np.vstack([reduced_potential(bias_energies(phi, centres, force_constant), temperature),
                      np.zeros((1, phi.size))])
    estimator = MBAREstimator(u_kn, n_k)
    if exchanged and len(set(n_k[:-1].tolist())) != 1:
        raise InputError("exchanging windows must hold the same number of frames each")
    blocks = np.concatenate([(0 if exchanged else k * 10**9) + np.arange(n) // (block_frames or max(1, n // 20))
                             for k, n in enumerate(n_k[:-1])])
    edges = np.linspace(-math.pi, math.pi, PMF_BINS + 1)
    bins = np.clip(np.digitize(phi, edges) - 1, 0, PMF_BINS - 1)
    observables = {f"bin{b}": (bins == b).astype(np.float64) for b in range(PMF_BINS)}
    if energies is not None:
        observables["energy"] = np.concatenate([np.asarray(e, dtype=np.float64) for e in energies])
    positive = phi > 0
    errors = estimator.block_bootstrap(blocks, observables=observables, indicators={"phi_positive": positive},
                                       n_bootstrap=n_bootstrap, seed=seed,
                                       strata=None if exchanged else np.repeat(np.arange(n_k.size), n_k))
    weights = estimator.weights()[:, -1]
    delta_f, _, p, _ = estimator.indicator_free_energy(positive)
    histogram = np.array([weights[bins == b].sum() for b in range(PMF_BINS)])
    with np.errstate(divide="ignore"):
        profile = -np.log(histogram)
    profile -= np.min(profile)
    histogram_sem = np.array([errors[f"bin{b}"][-1] for b in range(PMF_BINS)])
    overlap = estimator.overlap()
    result: dict[str, Any] = {
        "temperature": float(temperature),
        "delta_f_kT": float(delta_f[-1]),
        "delta_f_sem_kT": float(errors["phi_positive"][-1]),
        "p_phi_positive": float(p[-1]),
        "p_phi_positive_sem": float(errors["phi_positive_p"][-1]),
        "pmf_bin_edges": edges,
        "pmf_kT": np.where(np.isfinite(profile), profile, np.nan),
        "pmf_sem_kT": np.where(histogram > 0, histogram_sem / np.maximum(histogram, 1e-300), np.nan),
        "effective_samples": float(estimator.effective_sample_numbers()[-1]),
        "neighbour_overlap": np.append(overlap.neighbours, overlap.matrix[-1, 0]),
        "mbar_converged": estimator.converged,
        "warnings": list(estimator.warnings),
    }
    if psi_windows is not None:
        psi = np.concatenate([np.asarray(p, dtype=np.float64) for p in psi_windows])
        result["ramachandran"] = ramachandran_histogram(phi, psi, weights, bins=PMF_BINS)
    if energies is not None:
        result["mean_energy"] = float(weights @ observables["energy"])
        result["mean_energy_sem"] = float(errors["energy"][-1])
    if np.min(result["neighbour_overlap"]) < 0.03:
        result["warnings"].append(f"neighbouring windows barely overlap (smallest overlap "
                                  f"{np.min(result['neighbour_overlap']):.3f} < 0.03): use more windows or a wider width")
    return result


def analyse_umbrella(out: str | os.PathLike, *, block_ps: float = 25.0, stride_ps: float = 1.0,
                     discard_ps: float = 0.0, n_bootstrap: int = 100) -> dict[str, Any]:
    """Analyse every temperature of the umbrella run in ``out`` (all windows must be finished); see the module doc.

    stride_ps: MBAR uses every frame this far apart (a solve costs ∝ frames × windows, and frames closer than φ's
    correlation time add little); block_ps: bootstrap block length; discard_ps: production dropped from the start
    of every window (on top of the run's equilibration).
    """
    if not (stride_ps > 0 and block_ps >= stride_ps):
        raise InputError(f"need block_ps >= stride_ps > 0, got block_ps {block_ps} and stride_ps {stride_ps}")
    if abs(block_ps / stride_ps - round(block_ps / stride_ps)) > 1e-6:
        raise InputError(f"block_ps {block_ps} must be a whole multiple of stride_ps {stride_ps}")
    if not 0 <= discard_ps:
        raise InputError(f"discard_ps must be >= 0, got {discard_ps}")
    from pymbar import timeseries

    out = Path(out)
    record = read_run_record(out)
    settings = recorded_settings(record)
    missing = [f"{t:g} K" for t in settings.temperatures if not finished(out, settings, t)]
    if missing:
        raise InputError(f"the windows of {out} at {', '.join(missing)} are not finished; run "
                         f"`trade-md umbrella --resume --out {out} ...` first")
    per_temperature = []
    for temperature in settings.temperatures:
        stride = round(stride_ps / settings.frame_interval_ps)
        if stride < 1 or abs(stride_ps / settings.frame_interval_ps - stride) > 1e-6:
            raise InputError(f"stride_ps {stride_ps} must be a whole multiple of the run's "
                             f"{settings.frame_interval_ps} ps frame interval")
        first = round(discard_ps / settings.frame_interval_ps)
        if first >= settings.frames_per_window:
            raise InputError(f"discard_ps {discard_ps} leaves no frames of the {settings.ns_per_window} ns windows")
        data = load_windows(windows_path(out, temperature))
        frames = {key: data[key][:, first:settings.frames_per_window:stride]
                  for key in ("phi", "psi", "energy", "cis", "wrong_chirality", "lineage")}
        phi = list(frames["phi"])
        result = unbias_windows(phi, settings.centres, settings.force_constant(temperature), temperature,
                                energies=list(frames["energy"]), psi_windows=list(frames["psi"]),
                                block_frames=max(1, round(block_ps / (stride * settings.frame_interval_ps))),
                                exchanged=bool(settings.exchange_every_ps), n_bootstrap=n_bootstrap)
        # slowest of φ about the centre and ψ (which φ does not drive and which switches slowly at low T)
        inefficiency = [max(float(timeseries.statistical_inefficiency(series))
                            for series in (np.cos(p - c), np.cos(q), np.sin(q)))
                        for p, q, c in zip(phi, frames["psi"], settings.centres)]
        cis = frames["cis"].mean(axis=1)
        wrong = int(frames["wrong_chirality"].sum())
        result["exchange_acceptance"] = (data["accepts"] / np.maximum(data["attempts"], 1)
                                         if settings.exchange_every_ps else None)
        result["replicas_crossing_phi_zero"] = int(sum(
            np.any(frames["phi"][frames["lineage"] == r] > 0.5) and np.any(frames["phi"][frames["lineage"] == r] < -0.5)
            for r in range(settings.n_windows)))
        result["wall_s"] = float(data["wall_s"])
        result["windows"] = {
            "centre_deg": np.degrees(settings.centres),
            "mean_phi_deg": [float(np.degrees(settings.centres[k] + np.angle(np.mean(np.exp(1j * wrap_angle(p - c))))))
                             for k, (p, c) in enumerate(zip(phi, settings.centres))],
            "std_phi_deg": [float(np.degrees(np.std(wrap_angle(p - c)))) for p, c in zip(phi, settings.centres)],
            "statistical_inefficiency_frames": inefficiency,
            "cis_fraction_per_bond": cis,
        }
        result["wrong_chirality_frames"] = wrong
        result["frames_per_window_analysed"] = int(len(phi[0]))
        blocks_per_window = (settings.frames_per_window - first) // max(1, round(block_ps / settings.frame_interval_ps))
        if blocks_per_window < 10:
            result["warnings"].append(f"each window holds only {blocks_per_window} bootstrap blocks of {block_ps:g} "
                                      "ps; the standard errors are unreliable below 10: run longer windows or analyse "
                                      "with shorter --block-ps")
        if wrong:
            result["warnings"].append(f"{wrong} frames at {temperature:g} K have a wrong-handed Cα (inverted, or "
                                      "momentarily flattened at high temperature); they are kept in the estimates")
        slowest_ps = max(inefficiency) * stride * settings.frame_interval_ps
        if slowest_ps > block_ps / 2:
            result["warnings"].append(f"φ or ψ decorrelates in up to {slowest_ps:.1f} ps in a window, more than half "
                                      f"the {block_ps:g} ps bootstrap blocks: errors are optimistic; analyse with "
                                      "--block-ps of at least twice that (and run longer if that leaves < 10 blocks)")
        per_temperature.append(result)
    summary: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        "conventions": {
            "units": "energies kJ/mol, temperatures K, angles radians unless named _deg",
            "delta_f": "F(φ>0) − F(φ<0) = −k_B T ln(P(φ>0)/P(φ<0)) in k_B T, φ the backbone dihedral",
            "sem": f"one standard error from {n_bootstrap} bootstrap MBAR re-solves over blocks of {block_ps:g} ps "
                   "(all windows' frames of a time block together when windows exchange, else within each window)",
            "frames": f"every {stride_ps:g} ps of each window's production after the first {discard_ps:g} ps enters "
                      "MBAR",
            "pmf": f"F(φ)/k_B T − min on {PMF_BINS} equal bins of [−π, π)",
            "ramachandran": f"{PMF_BINS}×{PMF_BINS} bins of equal width on [−π, π)², rows φ, columns ψ, MBAR-weighted "
                            "probabilities summing to 1",
        },
        "run": {"command": record.get("command"), "settings": record["settings"], "platform": record.get("platform"),
                "versions": record.get("versions")},
        "system": {"name": record["system"]["name"],
                   "fingerprint": MolecularSystem.deserialize(record["system"]).fingerprint()},
        "temperatures": [r["temperature"] for r in per_temperature],
        "warnings": [f"{r['temperature']:g} K: {m}" for r in per_temperature for m in r["warnings"]],
    }
    for key in ("delta_f_kT", "delta_f_sem_kT", "p_phi_positive", "p_phi_positive_sem", "mean_energy",
                "mean_energy_sem", "ramachandran"):
        summary[key] = [r.pop(key) if key == "ramachandran" else r[key] for r in per_temperature]
    summary["delta_f"] = [r["delta_f_kT"] * kT(r["temperature"]) for r in per_temperature]
    summary["delta_f_sem"] = [r["delta_f_sem_kT"] * kT(r["temperature"]) for r in per_temperature]
    summary["per_temperature"] = per_temperature
    return summary


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """``summary.json`` and the figure ``profile.png``/``.svg`` (F(φ) at every temperature)."""
    import matplotlib.pyplot as plt

    write_json_atomic(out / "summary.json", json_safe(summary))
    figure = profile_plot({f"{r['temperature']:g} K": (r["pmf_bin_edges"], r["pmf_kT"], r["pmf_sem_kT"])
                           for r in summary["per_temperature"]}, out / "profile")
    plt.close(figure)
