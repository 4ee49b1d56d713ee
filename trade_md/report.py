"""Evaluation of a trained generator against a reference: ``trade-md evaluate``.

``trade-md evaluate --model runs/x --reference ref/ala2 --temperatures 300,450,600,800,1000 --out reports/x``
draws ``--n-samples`` weighted samples per temperature (:class:`trade_md.sampler.Sampler`) and compares them
with a ``trade-md reference`` analysis:

- Kish ESS of the importance weights (fraction of the samples), split by φ basin (each basin's mass in the
  generator and reweighted, its in-basin ESS and share of Σw²) with the ESS the same shapes would give with exact
  basin masses (:func:`trade_md.analysis.metrics.ess_by_stratum`), fraction of wrong-handed chiral centres;
- NLL of the reference frames (nats, and per degree of freedom), MBAR-weighted to the temperature, when the
  reference has frames (``frames/`` with ``frames_all.dcd`` + ``weights.npz``);
- reweighted φ/ψ histograms (36 × 36 bins on [−π, π)², :func:`trade_md.analysis.metrics.ramachandran_histogram`) with
  KL(reference ‖ generator) and Jensen–Shannon divergence (nats) to the reference histogram;
- ΔF = F(φ > 0) − F(φ < 0) (kJ/mol and k_BT) with a bootstrap standard error, beside the reference's MBAR value;
- ⟨U⟩ and energy histograms; Wasserstein-1 distance (kJ/mol) to the reference frames' energies when they exist.

The output directory gets ``metrics.json``, figures (PNG + SVG: ``ramachandran``, ``delta_f``, ``ess``,
``energy``) and ``summary.md`` linking them, all written atomically. ``--reference`` is a reference directory
(``summary.json`` + ``frames/``) or a summary JSON; for alanine dipeptide it defaults to the shipped
``systems/alanine_dipeptide/reference/summary.json`` (histograms and ΔF, no frames).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trade_md.errors import InputError, SystemMismatchError
from trade_md.formats.reference import Reference, ReferenceFrames, default_reference, load_reference
from trade_md.formats.files import atomic_write_path, read_json, write_json_atomic
from trade_md.analysis.metrics import (
    basin_populations,
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
from trade_md.thermo import kT

__all__ = [
    "DEFAULT_TEMPERATURES",
    "METRICS_FORMAT",
    "Reference",
    "ReferenceFrames",
    "backbone_dihedrals",
    "default_reference",
    "evaluate",
    "load_reference",
    "parse_temperatures",
    "register_cli",
]

METRICS_FORMAT = "trade-md evaluation/1"
DEFAULT_TEMPERATURES: tuple[float, ...] = (300.0, 450.0, 600.0, 800.0, 1000.0)
"""K, the evaluation temperatures of the alanine dipeptide benchmark."""
FIGURES: tuple[str, ...] = ("ramachandran", "delta_f", "ess", "energy")


def backbone_dihedrals(topology: Any, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(φ, ψ) ``[n]`` radians in [−π, π) of the single residue of a dipeptide; positions ``[n, atoms, 3]`` nm.

    topology: ``openmm.app.Topology`` or ``mdtraj.Topology``. Raises InputError unless there is exactly one φ and
    one ψ (e.g. alanine dipeptide).
    """
    import mdtraj

    if not isinstance(topology, mdtraj.Topology):
        topology = mdtraj.Topology.from_openmm(topology)
    trajectory = mdtraj.Trajectory(np.asarray(positions, dtype=np.float32), topology)
    phi_atoms, phi = mdtraj.compute_phi(trajectory)
    psi_atoms, psi = mdtraj.compute_psi(trajectory)
    if len(phi_atoms) != 1 or len(psi_atoms) != 1:
        raise InputError(f"the molecule has {len(phi_atoms)} φ and {len(psi_atoms)} ψ backbone dihedrals; the "
                         "Ramachandran evaluation needs a dipeptide with exactly one of each")
    return phi[:, 0].astype(np.float64), psi[:, 0].astype(np.float64)


def parse_temperatures(text: str) -> list[float]:
    """``"300,450,600"`` → ``[300.0, 450.0, 600.0]`` K; raises InputError on anything else."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--temperatures {text!r} is not a comma list of numbers in K, e.g. 300,450,600") from None
    if not values or any(not math.isfinite(t) or t <= 0 for t in values):
        raise InputError(f"--temperatures {text!r} must list temperatures > 0 K, e.g. 300,450,600")
    return values


def _finite(value: Any) -> Any:
    """JSON-safe: non-finite floats become None, recursively."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _trained_range(config: Any, reference_temperature: float) -> tuple[float, float]:
    if config.mode == "trade" and config.temperature_min is not None and config.temperature_max is not None:
        return float(config.temperature_min), float(config.temperature_max)
    return reference_temperature, reference_temperature


def _log_q(generator: Any, positions: np.ndarray, temperature: float, chunk: int = 4096) -> np.ndarray:
    import torch

    with torch.no_grad():
        parts = [generator.log_prob(torch.as_tensor(positions[i:i + chunk]), temperature).double().cpu().numpy()
                 for i in range(0, positions.shape[0], chunk)]
    return np.concatenate(parts)


def _evaluate_temperature(
    temperature: float, samples: Any, topology: Any, generator: Any, reference: Reference, seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics of one temperature and the arrays the figures need."""
    k_t = kT(temperature)
    phi, psi = backbone_dihedrals(topology, samples.positions)
    weights = samples.weights
    histogram = ramachandran_histogram(phi, psi, weights)
    delta_f, delta_f_sem = bootstrap_delta_f(phi, temperature, samples.log_weights, seed=seed)
    finite = np.isfinite(samples.energies)
    basins = ess_by_stratum(samples.log_weights, np.where(phi > 0, "phi>0", "phi<0"))
    metrics: dict[str, Any] = {
        "temperature": temperature,
        "n_samples": len(samples),
        "ess": samples.ess,
        "effective_samples": samples.ess * len(samples),
        "pareto_k": samples.pareto_k,
        "wrong_chirality_fraction": float(np.mean(samples.wrong_chirality)),
        "dropped_fraction": float(np.mean(~np.isfinite(samples.log_weights))),
        "basin_populations": {"generator": list(basin_populations(phi, weights))},
        "ess_by_basin": [asdict(b) for b in basins],
        "ess_exact_basin_masses": ess_with_exact_masses(basins),
        "delta_f": {"generator": delta_f, "generator_sem": delta_f_sem},
        "delta_f_kT": {"generator": delta_f / k_t, "generator_sem": delta_f_sem / k_t},
        "mean_energy": {"generator": float(np.sum(weights[finite] * samples.energies[finite])),
                        "generator_raw": float(np.mean(samples.energies[finite])) if finite.any() else math.inf},
    }
    arrays: dict[str, Any] = {"histogram": histogram, "energies": {
        "generator (reweighted)": (samples.energies, weights),
        "generator (raw)": (samples.energies, None)}}
    reference_histogram = reference.value("ramachandran", temperature)
    if reference_histogram is not None:
        reference_histogram = np.asarray(reference_histogram, dtype=np.float64)
        arrays["reference_histogram"] = reference_histogram
        metrics["kl_divergence"] = kl_divergence(reference_histogram, histogram)
        metrics["js_divergence"] = js_divergence(reference_histogram, histogram)
    p_positive = reference.value("p_phi_positive", temperature)
    if p_positive is not None:
        metrics["basin_populations"]["reference"] = [1.0 - p_positive, p_positive]
    for key, scale in (("delta_f", 1.0), ("delta_f_kT", 1.0 / k_t)):
        value, sem = reference.value("delta_f", temperature), reference.value("delta_f_sem", temperature)
        metrics[key]["reference"] = None if value is None else value * scale
        metrics[key]["reference_sem"] = None if sem is None else sem * scale
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

    reference: see :func:`load_reference`; None: the system's shipped reference. Temperatures outside the
    trained range, or missing from the reference, are evaluated with a warning (``on_warning(message)``, default
    :class:`~trade_md.sampler.OutOfRangeWarning`), also recorded in ``metrics.json``.
    mixture_ratios: defensive mixture components ``(R, f)``: a fraction ``f`` of the samples at ``R × T`` for each
    evaluated ``T`` (:meth:`~trade_md.sampler.Sampler.sample`); empty: ``q(x | T)`` alone.
    calibrated: draw from the run's basin-calibrated proposal (``trade-md calibrate``, :mod:`trade_md.basins`);
    the NLL of reference frames stays that of ``q(x | T)``.
    """
    import torch
    from tqdm.auto import tqdm

    from trade_md.basins import BasinCalibration
    from trade_md.energy import EnergyBridge
    from trade_md.sampler import OutOfRangeWarning, Sampler
    from trade_md.train import load_generator

    if n_samples < 2:
        raise InputError(f"--n-samples must be >= 2, got {n_samples}")
    if not temperatures:
        raise InputError("no temperatures to evaluate; pass --temperatures, e.g. 300,450,600")
    started = time.perf_counter()
    out = Path(out)
    generator, system, config = load_generator(model)
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
    low, high = _trained_range(config, t0)
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
        bar = tqdm(temperatures, desc="evaluate", unit="T", disable=None if progress else True, dynamic_ncols=True)
        for k, temperature in enumerate(bar):
            bar.set_postfix_str(f"{temperature:g} K")
            mixture = [(ratio * float(temperature), fraction) for ratio, fraction in mixture_ratios]
            samples = sampler.sample(n_samples, float(temperature), progress=False, mixture=mixture)
            metrics, arrays[float(temperature)] = _evaluate_temperature(float(temperature), samples, system.topology,
                                                                         generator, ref, seed + k)
            metrics["in_trained_range"] = bool(low - 1e-6 <= temperature <= high + 1e-6)
            per_temperature.append(metrics)
    figures = _figures(out, per_temperature, arrays, t0)
    result = _finite({
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
        "training_mode": config.mode,
        "training_steps": config.steps,
        "temperatures": [float(t) for t in temperatures],
        "per_temperature": per_temperature,
        "figures": figures,
        "warnings": notes,
        "seconds": time.perf_counter() - started,
    })
    write_json_atomic(out / "metrics.json", result)
    with atomic_write_path(out / "summary.md") as temp:
        temp.write_text(_markdown(result))
    return result


def _figures(out: Path, per_temperature: list[dict[str, Any]], arrays: dict[float, dict[str, Any]],
             t0: float) -> dict[str, dict[str, str]]:
    """Draw and save the four figures; returns ``{name: {"png": file, "svg": file}}`` relative to ``out``."""
    import matplotlib.pyplot as plt

    from trade_md.analysis.plots import (
        delta_f_plot,
        energy_histograms,
        ess_plot,
        ramachandran_grid,
    )

    temperatures = [m["temperature"] for m in per_temperature]
    rows: dict[str, dict[float, np.ndarray]] = {"generator": {t: arrays[t]["histogram"] for t in temperatures}}
    reference_rows = {t: arrays[t]["reference_histogram"] for t in temperatures if "reference_histogram" in arrays[t]}
    if reference_rows:
        rows["reference"] = reference_rows
    series = {"generator": ([], [], []), "reference": ([], [], [])}
    for m in per_temperature:
        for label in series:
            value, sem = m["delta_f_kT"][label], m["delta_f_kT"][f"{label}_sem"]
            if value is not None and math.isfinite(value):
                series[label][0].append(m["temperature"])
                series[label][1].append(value)
                series[label][2].append(sem if sem is not None and math.isfinite(sem) else 0.0)
    series = {label: values for label, values in series.items() if values[0]}
    with np.errstate(divide="ignore", invalid="ignore"):  # empty weighted histograms of an untrained model
        drawn = [
            ramachandran_grid(rows, out / "ramachandran"),
            delta_f_plot(series, out / "delta_f"),
            ess_plot(temperatures, [m["ess"] for m in per_temperature], out / "ess", reference_temperature=t0),
            energy_histograms({t: arrays[t]["energies"] for t in temperatures}, out / "energy",
                              limits={t: _energy_limits(arrays[t]["energies"]) for t in temperatures}),
        ]
    for figure in drawn:
        plt.close(figure)
    return {name: {"png": f"{name}.png", "svg": f"{name}.svg"} for name in FIGURES}


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray | None, q: Sequence[float]) -> np.ndarray:
    """Quantiles ``q`` (fractions) of ``values [n]`` under ``weights [n]`` (None: equal), finite values only:
    the smallest value whose cumulative weight reaches ``q`` (no interpolation, so zero weights are ignored)."""
    finite = np.isfinite(values)
    w = np.ones(int(finite.sum())) if weights is None else np.asarray(weights, dtype=np.float64)[finite]
    order = np.argsort(values[finite])
    cumulative = np.cumsum(w[order])
    index = np.searchsorted(cumulative, np.asarray(q) * cumulative[-1], side="left")
    return values[finite][order][np.minimum(index, cumulative.size - 1)]


def _energy_limits(series: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> tuple[float, float]:
    """Energy axis (kJ/mol) spanning the 0.5-99.5 % quantiles of the Boltzmann-weighted series (reference and
    reweighted generator), 10 % wider; the raw generator energies do not set it (an untrained model's are huge)."""
    weighted = [item for item in series.values() if item[1] is not None] or list(series.values())
    bounds = np.array([_weighted_quantiles(energies, weights, (0.005, 0.995)) for energies, weights in weighted])
    low, high = float(bounds[:, 0].min()), float(bounds[:, 1].max())
    margin = 0.1 * max(high - low, 1.0)
    return low - margin, high + margin


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _percent(fraction: float | None) -> str:
    return _fmt(None if fraction is None else 100 * fraction)


def _pm(value: Any, sem: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" + ("" if sem is None else f" ± {sem:.2f}")


def _proposal_note(result: dict[str, Any]) -> str:
    """How the samples were drawn, for the summary's first paragraph (empty for ``q(x | T)`` alone)."""
    if result.get("basin_calibrated"):
        return (f", drawn from the basin-calibrated proposal (calibration: "
                f"{result['calibration_energy_evaluations']:,} energy evaluations; NLL is that of q(x | T))")
    if result.get("mixture_ratios"):
        parts = ", ".join(f"{f:g} at {r:g} T" for r, f in result["mixture_ratios"])
        return f", drawn from the defensive mixture {parts}"
    return ""


def _markdown(result: dict[str, Any]) -> str:
    low, high = result["trained_range"]
    lines = [
        f"# Evaluation of `{result['model']}`",
        "",
        (f"System {result['system']} ({result['n_dof']} degrees of freedom); model trained in mode "
        f"{result['training_mode']} ({result['training_steps']} steps) with data at T0 = "
        f"{result['reference_temperature']:g} K over {low:g}–{high:g} K. Reference: `{result['reference']}`"
        f"{'' if result['reference_frames'] else ' (no frames: no NLL or energy distances)'}. "
        f"{result['n_samples']} generator samples per temperature, importance-weighted to the Boltzmann distribution"
        f"{_proposal_note(result)}."),
        "",
    ]
    if result["warnings"]:
        lines += ["**Warnings**", ""] + [f"- {note}" for note in result["warnings"]] + [""]
    lines += [
        ("| T (K) | ESS (%) | tail k | ESS, exact basin masses (%) | wrong chirality (%) | NLL/dof (nats) | "
        "JS (nats) | KL ref‖gen (nats) | ΔF gen (k_BT) | ΔF ref (k_BT) | W1 energy (kJ/mol) |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in result["per_temperature"]:
        flag = "" if m["in_trained_range"] else " *"
        lines.append(
            f"| {m['temperature']:g}{flag} | {_percent(m['ess'])} | {_fmt(m.get('pareto_k'), 2)} | "
            f"{_percent(m.get('ess_exact_basin_masses'))} | {100 * m['wrong_chirality_fraction']:.2f} | "
            f"{_fmt(m.get('nll_per_dof'))} | "
            f"{_fmt(m.get('js_divergence'))} | {_fmt(m.get('kl_divergence'))} | "
            f"{_pm(m['delta_f_kT']['generator'], m['delta_f_kT']['generator_sem'])} | "
            f"{_pm(m['delta_f_kT']['reference'], m['delta_f_kT']['reference_sem'])} | "
            f"{_fmt(m.get('energy_wasserstein'))} |")
    if any(not m["in_trained_range"] for m in result["per_temperature"]):
        lines += ["", "\\* outside the trained range (extrapolation)."]
    lines += [
        "",
        ("tail k: shape of the importance weights' tail (the Pareto-smoothed importance sampling diagnostic); above "
        "0.7 a few samples dominate and one draw's ESS and ΔF are unreliable: draw more samples. "
        "ESS, exact basin masses: what the same in-basin shapes would give if the generator put the Boltzmann "
        "mass in each φ basin; far above the ESS, the miss is the basins' weights, close to it, their shapes. "
        "ΔF = F(φ > 0) − F(φ < 0); generator errors are bootstrap standard errors of the reweighted estimate, "
        "reference errors the reference's block-bootstrap MBAR errors. All numbers are in `metrics.json`."),
        "",
        "## Figures",
        "",
    ]
    captions = {
        "ramachandran": "Ramachandran free energy, generator (reweighted) vs reference",
        "delta_f": "ΔF(T) between the φ basins",
        "ess": "Kish effective sample size",
        "energy": "Potential-energy distributions",
    }
    for name, files in result["figures"].items():
        lines += [f"### {captions[name]}", "", f"![{captions[name]}]({files['png']}) ([SVG]({files['svg']}))", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- CLI


def register_cli(subparsers: Any) -> None:
    """Add ``trade-md evaluate``."""
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a trained generator against a reference: metrics.json, figures, summary.md",
        description="Sample the generator at each temperature, reweight, and compare with a `trade-md reference` "
                    "analysis: ESS, NLL of reference frames, Ramachandran KL/JS, basin ΔF(T), energy distributions.")
    parser.add_argument("--model", required=True, help="run directory of `trade-md train` (checkpoint.pt)")
    parser.add_argument("--reference",
                        help="`trade-md reference` directory (summary.json + frames/) or summary JSON (default: the "
                             "shipped reference of a built-in system)")
    parser.add_argument("--temperatures", default=",".join(f"{t:g}" for t in DEFAULT_TEMPERATURES),
                        help="comma list in K (default %(default)s)")
    parser.add_argument("--out", required=True, help="output directory of the report")
    parser.add_argument("--n-samples", type=int, default=20000, help="generator samples per temperature "
                                                                      "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--platform", default="auto", help="OpenMM platform of the energies (default auto)")
    parser.add_argument("--mixture-ratio", action="append", default=[], metavar="R:FRACTION",
                        help="defensive mixture: this fraction of the samples at R times each temperature "
                             "(repeatable, e.g. --mixture-ratio 1.2:0.2); exact weights either way")
    parser.add_argument("--calibrated", action="store_true",
                        help="draw from the basin-calibrated proposal (MODEL/basin_calibration.json, made by "
                             "`trade-md calibrate`)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_main, command="evaluate")


def _main(args: argparse.Namespace) -> int:
    from trade_md.sampler import parse_mixture

    result = evaluate(args.model, args.out, reference=args.reference,
                      temperatures=parse_temperatures(args.temperatures), n_samples=args.n_samples, seed=args.seed,
                      energy_platform=args.platform, progress=not args.no_progress,
                      mixture_ratios=parse_mixture(args.mixture_ratio, option="--mixture-ratio"),
                      calibrated=args.calibrated,
                      on_warning=lambda note: print(f"WARNING: {note}", file=sys.stderr, flush=True))
    for m in result["per_temperature"]:
        print(f"{m['temperature']:7g} K: ESS {100 * m['ess']:.2f}% ({100 * m['ess_exact_basin_masses']:.2f}% with "
              f"exact basin masses), ΔF {_pm(m['delta_f_kT']['generator'], None)} k_BT "
              f"(reference {_pm(m['delta_f_kT']['reference'], m['delta_f_kT']['reference_sem'])}), "
              f"JS {_fmt(m.get('js_divergence'))}, NLL/dof {_fmt(m.get('nll_per_dof'))}")
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'summary.md'}")
    return 0
