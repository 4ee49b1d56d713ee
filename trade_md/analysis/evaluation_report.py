"""The written report of an evaluation (:func:`trade_md.analysis.evaluation.evaluate`): figures and ``summary.md``.

:func:`write_figures` draws the Ramachandran grid, ΔF(T), ESS(T) and the energy distributions (PNG + SVG,
:mod:`trade_md.analysis.plots`; a molecule without backbone φ gets the last two only, a peptide with several φ one ΔF
line per residue); :func:`summary_markdown` turns the metrics dict of ``metrics.json`` into the page that links them,
with a per-residue ΔF table for several φ. Energies in kJ/mol, free energies in k_BT, temperatures in K.

>>> format_number(None), format_number(0.012345), format_pm(1.0, 0.25)
('–', '0.0123', '1.00 ± 0.25')
>>> format_z({"generator": 1.0, "generator_sem": 0.3, "reference": 0.5, "reference_sem": 0.4}), format_z({})
('1.00', '–')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trade_md.analysis.plots import delta_f_plot, energy_histograms, ess_plot, ramachandran_grid

__all__ = ["FIGURES", "format_number", "format_pm", "format_z", "summary_markdown", "write_figures"]

FIGURES: tuple[str, ...] = ("ramachandran", "delta_f", "ess", "energy")
"""The figures of a report, each written as ``NAME.png`` and ``NAME.svg`` (the first two for peptides only)."""


def _delta_f_series(per_temperature: list[dict[str, Any]]) -> dict[str, tuple[list, list, list]]:
    """ΔF(T) lines of the ΔF figure, ``{label: (T, ΔF k_BT, sem k_BT)}``: generator and reference, per residue when
    the molecule has several φ; non-finite values are left out."""
    several = any(len(m.get("phi_basins", [])) > 1 for m in per_temperature)
    series: dict[str, tuple[list, list, list]] = {}
    for m in per_temperature:
        entries = [(f" {r['label']}", r["delta_f_kT"]) for r in m["phi_basins"]] if several else [("", m["delta_f_kT"])]
        for suffix, values in entries:
            for label in ("generator", "reference"):
                value, sem = values[label], values[f"{label}_sem"]
                if value is not None and math.isfinite(value):
                    line = series.setdefault(label + suffix, ([], [], []))
                    line[0].append(m["temperature"])
                    line[1].append(value)
                    line[2].append(sem if sem is not None and math.isfinite(sem) else 0.0)
    return series


def write_figures(out: Path, per_temperature: list[dict[str, Any]], arrays: dict[float, dict[str, Any]],
                  t0: float) -> dict[str, dict[str, str]]:
    """Draw and save the figures of ``per_temperature`` metrics and their ``arrays`` (per temperature: the
    generator's histogram, the reference's if any, and the energy series; ``t0`` K marks T0): the Ramachandran grid
    and ΔF(T) for a peptide, ESS(T) and the energy distributions for any molecule; returns
    ``{name: {"png": file, "svg": file}}`` relative to ``out``, of the figures drawn."""
    import matplotlib.pyplot as plt

    temperatures = [m["temperature"] for m in per_temperature]
    rows: dict[str, dict[float, np.ndarray]] = {}
    generator_rows = {t: arrays[t]["histogram"] for t in temperatures if "histogram" in arrays[t]}
    if generator_rows:
        rows["generator"] = generator_rows
    reference_rows = {t: arrays[t]["reference_histogram"] for t in temperatures if "reference_histogram" in arrays[t]}
    if reference_rows:
        rows["reference"] = reference_rows
    drawn = {}
    with np.errstate(divide="ignore", invalid="ignore"):  # empty weighted histograms of an untrained model
        if rows:
            drawn["ramachandran"] = ramachandran_grid(rows, out / "ramachandran")
        if any("delta_f_kT" in m for m in per_temperature):
            drawn["delta_f"] = delta_f_plot(_delta_f_series(per_temperature), out / "delta_f")
        drawn["ess"] = ess_plot(temperatures, [m["ess"] for m in per_temperature], out / "ess",
                                reference_temperature=t0)
        drawn["energy"] = energy_histograms({t: arrays[t]["energies"] for t in temperatures}, out / "energy",
                                            limits={t: _energy_limits(arrays[t]["energies"]) for t in temperatures})
    for figure in drawn.values():
        plt.close(figure)
    return {name: {"png": f"{name}.png", "svg": f"{name}.svg"} for name in FIGURES if name in drawn}


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


def format_number(value: Any, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, ``–`` for None."""
    return "–" if value is None else f"{value:.{digits}g}"


def _percent(fraction: float | None) -> str:
    return format_number(None if fraction is None else 100 * fraction)


def format_pm(value: Any, sem: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" + ("" if sem is None else f" ± {sem:.2f}")


def format_z(values: dict[str, Any]) -> str:
    """z = (generator − reference) / √(σ_generator² + σ_reference²) of a ``{"generator", "generator_sem",
    "reference", "reference_sem"}`` entry, ``–`` where a value or error is missing or not finite."""
    numbers = [values.get(key) for key in ("generator", "reference", "generator_sem", "reference_sem")]
    if any(v is None or not math.isfinite(v) for v in numbers) or numbers[2] == numbers[3] == 0:
        return "–"
    return f"{(numbers[0] - numbers[1]) / math.hypot(numbers[2], numbers[3]):.2f}"


def _delta_f_cell(m: dict[str, Any], source: str) -> str:
    """ΔF ± sem (k_BT) of ``source`` (generator or reference) in one temperature's metrics (– without basins)."""
    values = m.get("delta_f_kT") or {}
    return format_pm(values.get(source), values.get(f"{source}_sem"))


def _residue_table(result: dict[str, Any]) -> list[str]:
    """The per-residue ΔF table of a peptide with several φ (empty otherwise)."""
    if len(result.get("phi_labels", [])) < 2:
        return []
    lines = ["", "## φ basins per residue", "",
             "ΔF_i = F(φ_i > 0) − F(φ_i < 0) of each backbone φ_i in k_BT, P(φ_i > 0) reweighted; z = (gen − ref) / "
             "√(σ_gen² + σ_ref²) from the two standard errors.", "",
             "| T (K) | residue | P(φ>0) gen | P(φ>0) ref | ΔF gen (k_BT) | ΔF ref (k_BT) | z |",
             "|---:|:---|---:|---:|---:|---:|---:|"]
    for m in result["per_temperature"]:
        for r in m["phi_basins"]:
            values = r["delta_f_kT"]
            lines.append(f"| {m['temperature']:g} | {r['label']} | {format_number(r['p_positive']['generator'])} | "
                         f"{format_number(r['p_positive']['reference'])} | "
                         f"{format_pm(values['generator'], values['generator_sem'])} | "
                         f"{format_pm(values['reference'], values['reference_sem'])} | {format_z(values)} |")
    return lines


def _proposal_note(result: dict[str, Any]) -> str:
    """How the samples were drawn, for the summary's first paragraph (empty for ``q(x | T)`` alone)."""
    if result.get("basin_calibrated"):
        return (f", drawn from the basin-calibrated proposal (calibration: "
                f"{result['calibration_energy_evaluations']:,} energy evaluations; NLL is that of q(x | T))")
    if result.get("mixture_ratios"):
        parts = ", ".join(f"{f:g} at {r:g} T" for r, f in result["mixture_ratios"])
        return f", drawn from the defensive mixture {parts}"
    return ""


def summary_markdown(result: dict[str, Any]) -> str:
    """The ``summary.md`` page of an evaluation's metrics dict (as written to ``metrics.json``)."""
    low, high = result["trained_range"]
    lines = [
        f"# Evaluation of `{result['model']}`",
        "",
        (f"System {result['system']} ({result['n_dof']} degrees of freedom); model trained for "
        f"{result['training_steps']} steps with data at T0 = "
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
            f"| {m['temperature']:g}{flag} | {_percent(m['ess'])} | {format_number(m.get('pareto_k'), 2)} | "
            f"{_percent(m.get('ess_exact_basin_masses'))} | {100 * m['wrong_chirality_fraction']:.2f} | "
            f"{format_number(m.get('nll_per_dof'))} | "
            f"{format_number(m.get('js_divergence'))} | {format_number(m.get('kl_divergence'))} | "
            f"{_delta_f_cell(m, 'generator')} | {_delta_f_cell(m, 'reference')} | "
            f"{format_number(m.get('energy_wasserstein'))} |")
    if any(not m["in_trained_range"] for m in result["per_temperature"]):
        lines += ["", "\\* outside the trained range (extrapolation)."]
    residue = result.get("ramachandran_residue")
    if "ramachandran_residue" in result and residue is None:
        lines += ["", "The molecule has no backbone φ: no basin, Ramachandran or ΔF metrics."]
    elif len(result.get("phi_labels", [])) > 1:
        lines += ["", f"ESS by basin, JS, KL and the ΔF columns are those of φ/ψ of {residue}; every residue below."]
    lines += _residue_table(result)
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
    several = len(result.get("phi_labels", [])) > 1
    captions = {
        "ramachandran": "Ramachandran free energy"
                        f"{f' of {residue}' if several else ''}, generator (reweighted) vs reference",
        "delta_f": "ΔF(T) between the φ basins",
        "ess": "Kish effective sample size",
        "energy": "Potential-energy distributions",
    }
    for name, files in result["figures"].items():
        lines += [f"### {captions[name]}", "", f"![{captions[name]}]({files['png']}) ([SVG]({files['svg']}))", ""]
    return "\n".join(lines)
