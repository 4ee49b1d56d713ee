"""Figures: Ramachandran grids, ΔF(T), ESS(T), energy histograms and free-energy profiles F(φ). Each function returns the matplotlib
``Figure`` (so notebooks show it) and, given ``path``, also saves it as PNG and SVG beside each other.

Angles in degrees on the axes, energies in kJ/mol, free energies in units of k_B T, temperatures in K.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trade_md.formats.files import atomic_write_path

__all__ = ["ramachandran_grid", "delta_f_plot", "ess_plot", "energy_histograms", "profile_plot", "save_figure"]


def _pyplot() -> Any:
    import matplotlib

    backend = str(matplotlib.get_backend()).lower()
    if not any(name in backend for name in ("ipykernel", "inline", "nbagg", "widget")) and not os.environ.get("DISPLAY"):
        matplotlib.use("Agg")  # headless: files only; Jupyter keeps its inline backend
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str | os.PathLike) -> list[Path]:
    """Save ``figure`` as ``path.png`` and ``path.svg`` (suffix of ``path`` ignored), atomically; returns both."""
    stem = Path(path).with_suffix("")
    written = []
    for suffix in (".png", ".svg"):
        target = stem.with_suffix(suffix)
        with atomic_write_path(target) as temp:
            figure.savefig(temp, format=suffix[1:], dpi=150, bbox_inches="tight")
        written.append(target)
    return written


def _finish(figure: Any, path: str | os.PathLike | None) -> Any:
    """Save ``figure`` when ``path`` is given (see `save_figure`) and return it."""
    if path is not None:
        save_figure(figure, path)
    return figure


def ramachandran_grid(
    rows: Mapping[str, Mapping[float, np.ndarray]], path: str | os.PathLike | None = None
) -> Any:
    """A grid of Ramachandran densities: one row per source (e.g. "generator", "reference"), one column per T.

    rows: ``{label: {temperature K: histogram [bins, bins] over (φ, ψ) on [−π, π)², summing to 1}}``.
    Colour: −log density in k_B T relative to each panel's minimum (free energy), capped at 10 k_B T.
    """
    plt = _pyplot()
    labels = list(rows)
    temperatures = sorted({t for row in rows.values() for t in row})
    figure, axes = plt.subplots(len(labels), len(temperatures), figsize=(2.6 * len(temperatures), 2.6 * len(labels)),
                                squeeze=False, sharex=True, sharey=True)
    image = None
    for i, label in enumerate(labels):
        for j, temperature in enumerate(temperatures):
            axis = axes[i, j]
            histogram = rows[label].get(temperature)
            if histogram is None:
                axis.set_axis_off()
                continue
            with np.errstate(divide="ignore"):
                free = -np.log(np.asarray(histogram, dtype=np.float64))
            free = np.minimum(free - np.min(free), 10.0)
            image = axis.imshow(free.T, origin="lower", extent=(-180, 180, -180, 180), cmap="viridis_r",
                                vmin=0.0, vmax=10.0, aspect="equal")
            if i == 0:
                axis.set_title(f"{temperature:g} K")
            if j == 0:
                axis.set_ylabel(f"{label}\nψ (degrees)")
            if i == len(labels) - 1:
                axis.set_xlabel("φ (degrees)")
            axis.set_xticks([-180, 0, 180])
            axis.set_yticks([-180, 0, 180])
    if image is not None:
        figure.colorbar(image, ax=axes, shrink=0.8, label="free energy (k$_B$T)")
    return _finish(figure, path)


def delta_f_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    path: str | os.PathLike | None = None,
) -> Any:
    """ΔF(T) = F(φ > 0) − F(φ < 0) in k_B T with error bars, one line per source.

    series: ``{label: (temperatures K [k], ΔF k_BT [k], standard error k_BT [k])}``.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.0, 3.6))
    for label, (temperatures, values, errors) in series.items():
        axis.errorbar(temperatures, values, yerr=errors, marker="o", capsize=3, label=label)
    axis.set_xlabel("temperature (K)")
    axis.set_ylabel("ΔF(φ>0 − φ<0) (k$_B$T)")
    axis.legend()
    axis.grid(alpha=0.3)
    return _finish(figure, path)


def profile_plot(
    profiles: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    path: str | os.PathLike | None = None,
) -> Any:
    """Free-energy profiles F(φ) in k_B T with one-standard-error bands, one line per label (e.g. temperature).

    profiles: ``{label: (bin edges radians [b + 1], F k_BT [b], standard error k_BT [b])}``; NaN bins are gaps.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.6, 3.6))
    for label, (edges, values, errors) in profiles.items():
        centres = np.degrees(0.5 * (np.asarray(edges[:-1]) + np.asarray(edges[1:])))
        values, errors = np.asarray(values, dtype=np.float64), np.asarray(errors, dtype=np.float64)
        line = axis.plot(centres, values, marker=".", label=label)[0]
        axis.fill_between(centres, values - errors, values + errors, color=line.get_color(), alpha=0.25)
    axis.axvline(0.0, color="grey", lw=0.8, ls="--")
    axis.set_xlim(-180, 180)
    axis.set_xticks([-180, -90, 0, 90, 180])
    axis.set_xlabel("φ (degrees)")
    axis.set_ylabel("F(φ) − min (k$_B$T)")
    axis.legend()
    axis.grid(alpha=0.3)
    return _finish(figure, path)


def ess_plot(
    temperatures: Sequence[float], ess: Sequence[float], path: str | os.PathLike | None = None,
    reference_temperature: float | None = None,
) -> Any:
    """Kish ESS (percent of samples) against temperature; the training temperature T0 marked if given."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.0, 3.6))
    axis.plot(temperatures, 100.0 * np.asarray(ess, dtype=np.float64), marker="o")
    if reference_temperature is not None:
        axis.axvline(reference_temperature, color="grey", linestyle="--", label="T$_0$ (data)")
        axis.legend()
    axis.set_xlabel("temperature (K)")
    axis.set_ylabel("Kish ESS (%)")
    axis.set_ylim(0.0, 100.0)
    axis.grid(alpha=0.3)
    return _finish(figure, path)


def energy_histograms(
    panels: Mapping[float, Mapping[str, tuple[np.ndarray, np.ndarray | None]]],
    path: str | os.PathLike | None = None,
    *,
    limits: Mapping[float, tuple[float, float]] | None = None,
) -> Any:
    """Potential-energy distributions per temperature: ``{T: {label: (energies kJ/mol [n], weights [n] or None)}}``.

    limits: optional ``{T: (low, high)}`` kJ/mol energy axis per panel (default: 0.5-99.5 percentiles of all
    series), e.g. to keep an untrained model's huge energies from squeezing the reference into one bin.
    """
    plt = _pyplot()
    temperatures = sorted(panels)
    figure, axes = plt.subplots(1, len(temperatures), figsize=(3.2 * len(temperatures), 3.0), squeeze=False)
    for axis, temperature in zip(axes[0], temperatures):
        if limits is not None and temperature in limits:
            low, high = limits[temperature]
        else:
            finite = [e[np.isfinite(e)] for e, _ in panels[temperature].values()]
            low, high = np.percentile(np.concatenate(finite), [0.5, 99.5])
        edges = np.linspace(low, high, 50)
        for label, (energies, weights) in panels[temperature].items():
            mask = np.isfinite(energies)
            axis.hist(energies[mask], bins=edges, weights=None if weights is None else weights[mask],
                      density=True, histtype="step", label=label)
        axis.set_title(f"{temperature:g} K")
        axis.set_xlabel("potential energy (kJ/mol)")
    axes[0, 0].set_ylabel("density (mol/kJ)")
    axes[0, 0].legend(fontsize="small")
    return _finish(figure, path)
