"""Evaluation of a trained generator against a reference (the Python API of ``trade-md evaluate``).

``trade-md evaluate --model runs/x --reference ref/ala2 --temperatures 300,450,600,800,1000 --out reports/x``
(:func:`evaluate`) draws ``n_samples`` weighted samples per temperature (:class:`trade_md.sampler.Sampler`) and
compares them with a ``trade-md reference`` analysis:

- Kish ESS of the importance weights (fraction of the samples), split by φ basin (each basin's mass in the
  generator and reweighted, its in-basin ESS and share of Σw²) with the ESS the same shapes would give with exact
  basin masses (:func:`trade_md.analysis.metrics.ess_by_stratum`), fraction of wrong-handed chiral centres;
- NLL of the reference frames (nats, and per degree of freedom), MBAR-weighted to the temperature, when the
  reference has frames (``frames/`` with ``frames_all.dcd`` + ``weights.npz``);
- reweighted φ/ψ histograms (36 × 36 bins on [−π, π)², :func:`trade_md.analysis.metrics.ramachandran_histogram`) with
  KL(reference ‖ generator) and Jensen–Shannon divergence (nats) to the reference histogram;
- ΔF = F(φ > 0) − F(φ < 0) (kJ/mol and k_BT) with a bootstrap standard error, beside the reference's MBAR value;
- ⟨U⟩ and energy histograms; Wasserstein-1 distance (kJ/mol) to the reference frames' energies when they exist.

Peptides of any length: per backbone φ_i (labelled like ``"ALA 3"``, :class:`trade_md.analysis.phi_basins.Backbone`)
``phi_basins`` lists the generator's ΔF_i and P(φ_i > 0) beside the reference's (its ``phi_basins``, found by label;
for a molecule with one φ its top-level keys); the histogram, ESS by basin and top-level ΔF are those of one
residue, ``ramachandran_residue`` (a dipeptide's only one; otherwise the first with a ψ). A molecule without any
backbone φ gets no basin metrics (ESS, chirality, ⟨U⟩, NLL, energies only; no Ramachandran or ΔF figure).

The output directory gets ``metrics.json``, figures (PNG + SVG: ``ramachandran``, ``delta_f``, ``ess``,
``energy``) and ``summary.md`` linking them (:mod:`trade_md.analysis.evaluation_report`), all written atomically.
The reference is a reference directory (``summary.json`` + ``frames/``) or a summary JSON; for alanine dipeptide it
defaults to the shipped ``systems/alanine_dipeptide/reference/summary.json`` (histograms and ΔF, no frames).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trade_md.analysis.evaluation_report import summary_markdown, write_figures
from trade_md.analysis.phi_basins import Backbone, reference_value
from trade_md.analysis.metrics import (
    bootstrap_delta_f,
    energy_wasserstein,
    ess_by_stratum,
    ess_with_exact_masses,
    js_divergence,
    kish_ess,
    kl_divergence,
    nll_per_dof,
    normalized_weights,
    ramachandran_histogram,
)
from trade_md.basins import BasinCalibration
from trade_md.energy import EnergyBridge
from trade_md.errors import InputError, SystemMismatchError
from trade_md.features import basin_populations
from trade_md.formats.checkpoint import load_generator
from trade_md.formats.files import atomic_write_path, json_safe, write_json_atomic
from trade_md.formats.reference import Reference, default_reference, load_reference
from trade_md.progress import progress_bar
from trade_md.sampler import OutOfRangeWarning, Sampler
from trade_md.thermo import kT

__all__ = ["DEFAULT_TEMPERATURES", "METRICS_FORMAT", "evaluate", "evaluate_samples"]

METRICS_FORMAT = "trade-md evaluation/1"
DEFAULT_TEMPERATURES: tuple[float, ...] = (300.0, 450.0, 600.0, 800.0, 1000.0)
"""K, the evaluation temperatures of the alanine dipeptide benchmark."""


def _log_q(generator: Any, positions: np.ndarray, temperature: float, chunk: int = 4096) -> np.ndarray:
    with torch.no_grad():
        parts = [generator.log_prob(torch.as_tensor(positions[i:i + chunk]), temperature).double().cpu().numpy()
                 for i in range(0, positions.shape[0], chunk)]
    return np.concatenate(parts)


def _basin_metrics(temperature: float, samples: Any, backbone: Backbone, reference: Reference,
                   seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The φ basin metrics of one temperature (per residue, and the main residue's at the top level) and the
    histograms the figures need."""
    k_t = kT(temperature)
    weights = samples.weights
    phi = backbone.phi(samples.positions)  # [n, k]
    residues = []
    for i, label in enumerate(backbone.labels):
        delta_f, delta_f_sem = bootstrap_delta_f(phi[:, i], temperature, samples.log_weights, seed=seed)
        value, sem, p, p_sem = (reference_value(reference, backbone, i, key, temperature)
                                for key in ("delta_f", "delta_f_sem", "p_positive", "p_positive_sem"))
        residues.append({
            "label": label,
            "delta_f": {"generator": delta_f, "generator_sem": delta_f_sem, "reference": value, "reference_sem": sem},
            "delta_f_kT": {"generator": delta_f / k_t, "generator_sem": delta_f_sem / k_t,
                           "reference": None if value is None else value * (1.0 / k_t),
                           "reference_sem": None if sem is None else sem * (1.0 / k_t)},
            "p_positive": {"generator": basin_populations(phi[:, i], weights)[1],
                           "generator_raw": float(np.mean(phi[:, i] > 0)), "reference": p, "reference_sem": p_sem},
        })
    main = backbone.main
    basins = ess_by_stratum(samples.log_weights, np.where(phi[:, main] > 0, "phi>0", "phi<0"))
    metrics: dict[str, Any] = {
        "basin_populations": {"generator": list(basin_populations(phi[:, main], weights))},
        "ess_by_basin": [asdict(b) for b in basins],
        "ess_exact_basin_masses": ess_with_exact_masses(basins),
        "delta_f": dict(residues[main]["delta_f"]),
        "delta_f_kT": dict(residues[main]["delta_f_kT"]),
        "phi_basins": residues,
    }
    p_positive = residues[main]["p_positive"]["reference"]
    if p_positive is not None:
        metrics["basin_populations"]["reference"] = [1.0 - p_positive, p_positive]
    arrays: dict[str, Any] = {}
    angles = backbone.ramachandran_angles(samples.positions, main)
    if angles is not None:
        arrays["histogram"] = ramachandran_histogram(*angles, weights)
        reference_histogram = reference_value(reference, backbone, main, "ramachandran", temperature)
        if reference_histogram is not None:
            arrays["reference_histogram"] = np.asarray(reference_histogram, dtype=np.float64)
            metrics["kl_divergence"] = kl_divergence(arrays["reference_histogram"], arrays["histogram"])
            metrics["js_divergence"] = js_divergence(arrays["reference_histogram"], arrays["histogram"])
    return metrics, arrays


def evaluate_samples(
    temperature: float, samples: Any, topology: Any, generator: Any, reference: Reference, seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics of one temperature's weighted ``samples`` (a :class:`~trade_md.samples.SampleSet` of ``generator``)
    against ``reference``, and the arrays the figures need (:func:`~trade_md.analysis.evaluation_report.write_figures`);
    φ basin metrics for a peptide only; ``seed``: of the bootstrap. :func:`evaluate` calls it for each temperature;
    ``trade-md run`` on its own draws."""
    weights = samples.weights
    finite = np.isfinite(samples.energies)
    metrics: dict[str, Any] = {
        "temperature": temperature,
        "n_samples": len(samples),
        "ess": samples.ess,
        "effective_samples": samples.ess * len(samples),
        "pareto_k": samples.pareto_k,
        "wrong_chirality_fraction": float(np.mean(samples.wrong_chirality)),
        "dropped_fraction": float(np.mean(~np.isfinite(samples.log_weights))),
    }
    arrays: dict[str, Any] = {}
    backbone = Backbone.of(topology)
    if backbone is not None:
        basin_metrics, arrays = _basin_metrics(temperature, samples, backbone, reference, seed)
        metrics.update(basin_metrics)
    metrics["mean_energy"] = {
        "generator": float(np.sum(weights[finite] * samples.energies[finite])),
        "generator_raw": float(np.mean(samples.energies[finite])) if finite.any() else math.inf}
    arrays["energies"] = {"generator (reweighted)": (samples.energies, weights),
                          "generator (raw)": (samples.energies, None)}
    metrics["mean_energy"]["reference"] = reference.value("mean_energy", temperature)
    metrics["mean_energy"]["reference_sem"] = reference.value("mean_energy_sem", temperature)
    frames = reference.frames
    log_w_frames = None if frames is None else frames.log_weights_at(temperature)
    if log_w_frames is not None:
        frame_weights = normalized_weights(log_w_frames)
        nll = -float(np.sum(frame_weights * _log_q(generator, frames.positions, temperature)))
        metrics["nll"] = nll
        metrics["nll_per_dof"] = nll_per_dof(np.array([-nll]), generator.n_dof)
        metrics["reference_frames"] = {"n": int(frames.positions.shape[0]), "ess": kish_ess(log_w_frames)}
        if finite.any():
            metrics["energy_wasserstein"] = energy_wasserstein(samples.energies[finite], frames.energies,
                                                               weights[finite], frame_weights)
            metrics["energy_wasserstein_raw"] = energy_wasserstein(samples.energies[finite], frames.energies,
                                                                   None, frame_weights)
        arrays["energies"]["reference (MBAR)"] = (frames.energies, frame_weights)
    return metrics, arrays


def evaluate(
    model: str | Path,
    out: str | Path,
    *,
    reference: str | Path | None = None,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    n_samples: int = 20000,
    seed: int = 0,
    energy_platform: str = "auto",
    progress: bool = True,
    on_warning: Callable[[str], None] | None = None,
    mixture_ratios: Sequence[tuple[float, float]] = (),
    calibrated: bool = False,
) -> dict[str, Any]:
    """Evaluate the generator of run directory ``model`` at ``temperatures`` K against ``reference`` and write
    ``metrics.json``, the figures and ``summary.md`` to ``out``; returns the metrics dict.

    reference: see :func:`trade_md.formats.reference.load_reference`; None: the system's shipped reference.
    Temperatures outside the trained range, or missing from the reference, are evaluated with a warning
    (``on_warning(message)``, default :class:`~trade_md.sampler.OutOfRangeWarning`), also recorded in
    ``metrics.json``.
    mixture_ratios: defensive mixture components ``(R, f)``: a fraction ``f`` of the samples at ``R × T`` for each
    evaluated ``T`` (:meth:`~trade_md.sampler.Sampler.sample`); empty: ``q(x | T)`` alone.
    calibrated: draw from the run's basin-calibrated proposal (``trade-md calibrate``, :mod:`trade_md.basins`);
    the NLL of reference frames stays that of ``q(x | T)``.
    """
    if n_samples < 2:
        raise InputError(f"--n-samples must be >= 2, got {n_samples}")
    if not temperatures:
        raise InputError("no temperatures to evaluate; pass --temperatures, e.g. 300,450,600")
    started = time.perf_counter()
    out = Path(out)
    trained = load_generator(model)
    generator, system = trained.generator, trained.system
    calibration = BasinCalibration.of_run(model) if calibrated else None
    if not hasattr(system, "topology"):
        raise InputError(f"{model} holds a model of the toy system {system.name!r}; `trade-md evaluate` compares "
                         "molecules with a `trade-md reference`")
    if reference is None:
        reference = default_reference(system.name)
        if reference is None:
            raise InputError(f"no shipped reference for {system.name!r}; pass --reference (a `trade-md reference` "
                             "output directory or summary JSON)")
    ref = load_reference(reference)
    fingerprint = (ref.summary.get("system") or {}).get("fingerprint")
    if fingerprint is not None and json.dumps(fingerprint, sort_keys=True) != json.dumps(system.fingerprint(),
                                                                                         sort_keys=True):
        raise SystemMismatchError(f"reference {ref.path} was computed for another system than the model {model} "
                                  f"({system.name!r}); evaluate against a reference of the same system and force field")
    t0 = generator.reference_temperature
    backbone = Backbone.of(system.topology)
    low, high = trained.trained_range or (t0, t0)  # a model trained at T0 only
    notes: list[str] = []
    for temperature in temperatures:
        if not low - 1e-6 <= temperature <= high + 1e-6:
            notes.append(f"{temperature:g} K lies outside the trained range {low:g}-{high:g} K: the generator "
                         "extrapolates there; trust its numbers only if the ESS stays high")
        if ref.index(temperature) is None:
            notes.append(f"{temperature:g} K is not a temperature of reference {ref.path}; no reference values there "
                         f"(reference temperatures: {', '.join(f'{t:g}' for t in ref.summary.get('temperatures', []))})")
    for note in notes:
        if on_warning is None:
            warnings.warn(note, OutOfRangeWarning, stacklevel=2)
        else:
            on_warning(note)
    torch.manual_seed(seed)
    per_temperature, arrays = [], {}
    with EnergyBridge(system, platform=energy_platform) as bridge, warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)  # already reported above, once per temperature
        sampler = Sampler(generator, bridge.energies, temperature_range=(low, high), topology=system.topology,
                          calibration=calibration)
        with progress_bar(total=len(temperatures), desc="evaluate", unit="T", enabled=progress) as bar:
            for k, temperature in enumerate(temperatures):
                bar.set_postfix({"T": f"{temperature:g} K"})
                mixture = [(ratio * float(temperature), fraction) for ratio, fraction in mixture_ratios]
                samples = sampler.sample(n_samples, float(temperature), progress=False, mixture=mixture)
                metrics, arrays[float(temperature)] = evaluate_samples(float(temperature), samples,
                                                                        system.topology, generator, ref, seed + k)
                metrics["in_trained_range"] = bool(low - 1e-6 <= temperature <= high + 1e-6)
                per_temperature.append(metrics)
                bar.update(1)
    figures = write_figures(out, per_temperature, arrays, t0)
    result = json_safe({
        "format": METRICS_FORMAT,
        "model": str(model),
        "reference": str(ref.path),
        "reference_frames": ref.frames is not None,
        "system": system.name,
        "n_dof": generator.n_dof,
        "n_samples": n_samples,
        "mixture_ratios": [list(component) for component in mixture_ratios],
        "basin_calibrated": calibrated,
        "calibration_energy_evaluations": None if calibration is None else calibration.energy_evaluations,
        "seed": seed,
        "reference_temperature": t0,
        "trained_range": [low, high],
        "training_steps": trained.steps,
        "temperatures": [float(t) for t in temperatures],
        "phi_labels": [] if backbone is None else list(backbone.labels),
        "ramachandran_residue": None if backbone is None else backbone.labels[backbone.main],
        "per_temperature": per_temperature,
        "figures": figures,
        "warnings": notes,
        "seconds": time.perf_counter() - started,
    })
    write_json_atomic(out / "metrics.json", result)
    with atomic_write_path(out / "summary.md") as temp:
        temp.write_text(summary_markdown(result))
    return result
