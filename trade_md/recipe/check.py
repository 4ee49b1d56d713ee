"""Stage 4 of ``trade-md run``: the self-check, and the evaluation against a reference when there is one, from one
draw of weighted samples per temperature.

At every evaluated temperature (and T0) the transferred model draws ``n`` samples (n from the check share of the
budget and the sampling speed measured on the model, :func:`trade_md.recipe.budget.check_samples`) with energies
and importance weights w = exp(−u_T(x)) / q(x | T) (:class:`~trade_md.sampler.Sampler`; wrong-handed chiral
centres and non-finite energies weigh 0). The self-check needs no reference (:func:`self_check`):

- Kish ESS and the tail shape k of the weights (:func:`trade_md.analysis.metrics.pareto_k`); k > 0.7 flags a
  temperature whose ESS and estimates from this draw are unreliable;
- log Z(T) − log Z(T0) from the model's own weights, log Ẑ(T) = log mean w, with the delta-method standard error
  √((1/ESS − 1)/n); beside it the curve the training's expectation grid integrated (−∫ E[U] dβ);
- ⟨U⟩ reweighted, with its delta-method standard error.

With a reference (``--reference``, or the built-in system's shipped one) the same samples give the metrics of
``trade-md evaluate`` (:func:`trade_md.analysis.evaluation.evaluate_samples`: ΔF between φ basins, Ramachandran JS
and KL, ⟨U⟩) and log Z(T) − log Z(T0) against the reference's. Each temperature's results are written as soon as
they exist (``check/T<K>.json`` and ``.npz``), so a resumed stage draws only the missing temperatures.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp

from trade_md.analysis.evaluation import evaluate_samples
from trade_md.analysis.metrics import PARETO_K_UNRELIABLE
from trade_md.energy import EnergyBridge
from trade_md.formats.checkpoint import load_generator
from trade_md.formats.files import atomic_write_path, json_safe, read_json, write_json_atomic
from trade_md.recipe.budget import check_samples
from trade_md.recipe.context import RunContext, mark_complete, stage_result
from trade_md.recipe.cost import Meter, record_session
from trade_md.samples import SampleSet
from trade_md.sampler import OutOfRangeWarning, Sampler
from trade_md.thermo import reduced_potential

__all__ = ["check_stage", "free_energy_rows", "load_arrays", "self_check"]

SPEED_SAMPLES = 1000
"""Samples drawn at T0 to measure the sampling speed (counted in the stage's energy evaluations)."""


def self_check(samples: SampleSet) -> dict[str, Any]:
    """The reference-free metrics of one temperature's weighted ``samples`` (module docs): n, ess, pareto_k,
    unreliable (k > 0.7), log_z (log Ẑ(T), nats; the model's density is normalised, so this is log Z(T) up to the
    coordinates' constant) with log_z_sem, mean_energy and its sem (kJ/mol), dropped and wrong-chirality fractions.

    >>> n = 4000; rng = np.random.default_rng(0); x = rng.normal(size=n)
    >>> log_q = -0.5 * x**2 - 0.5 * math.log(2 * math.pi)      # q = p = N(0, 1) at k_B T = 1 kJ/mol: w = Z
    >>> T = 1.0 / 0.00831446261815324
    >>> s = SampleSet(x[:, None], 0.5 * x**2, log_q, np.full(n, -math.log(n)), np.zeros(n, bool), T)
    >>> round(self_check(s)["log_z"], 6) == round(0.5 * math.log(2 * math.pi), 6), round(self_check(s)["ess"], 9)
    (True, 1.0)
    """
    n = len(samples)
    finite = np.isfinite(samples.log_weights)
    with np.errstate(invalid="ignore", over="ignore"):
        raw = np.where(finite, -reduced_potential(samples.energies, samples.temperature) - samples.log_q, -np.inf)
    ess = samples.ess
    weights = samples.weights
    energies = np.where(finite, samples.energies, 0.0)
    mean_energy = float(np.sum(weights * energies))
    k = samples.pareto_k
    return {
        "temperature": samples.temperature,
        "n_samples": n,
        "ess": ess,
        "effective_samples": ess * n,
        "pareto_k": k,
        "unreliable": bool(not k <= PARETO_K_UNRELIABLE),
        "log_z": float(logsumexp(raw) - math.log(n)) if finite.any() else -math.inf,
        "log_z_sem": math.sqrt(max(1.0 / ess - 1.0, 0.0) / n) if ess > 0 else math.inf,
        "mean_energy": mean_energy,
        "mean_energy_sem": float(np.sqrt(np.sum(weights**2 * (energies - mean_energy) ** 2))),
        "mean_energy_raw": float(np.mean(samples.energies[finite])) if finite.any() else math.inf,
        "dropped_fraction": float(np.mean(~finite)),
        "wrong_chirality_fraction": float(np.mean(samples.wrong_chirality)),
    }


def _file(stage: Path, temperature: float) -> Path:
    return stage / f"T{temperature:g}.json"


def check_stage(ctx: RunContext, header: str, model: str, grid: dict[str, Any] | None) -> dict[str, Any]:
    """Draw, check and (with a reference) evaluate at every temperature; returns the stage's result."""
    stage = ctx.out / "check"
    done = stage_result(stage)
    temperatures = sorted({*ctx.options.temperatures, ctx.t0})
    if done is not None:
        ctx.say(f"{header} self-check{' and evaluation' if ctx.reference else ''}: complete "
                f"({done['n_samples']} samples per temperature), skipped")
        return done
    stage.mkdir(parents=True, exist_ok=True)
    meter = Meter(stage)
    counted = {"energy_evaluations": 0}
    try:
        return _check(ctx, stage, header, model, grid, temperatures, meter, counted)
    finally:
        record_session(stage, meter, **counted)


def _check(ctx: RunContext, stage: Path, header: str, model: str, grid: dict[str, Any] | None,
           temperatures: list[float], meter: Meter, counted: dict[str, int]) -> dict[str, Any]:
    trained = load_generator(model, device=ctx.options.device)
    generator, system = trained.generator, trained.system
    span = trained.trained_range or (ctx.t0, ctx.t0)
    with EnergyBridge(system, platform="auto") as bridge, warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)  # temperatures outside the range are reported as such
        sampler = Sampler(generator, bridge.energies, temperature_range=span, topology=system.topology)
        plan_path = stage / "plan.json"
        if plan_path.is_file():
            n = int(read_json(plan_path)["n_samples"])
        else:
            started = time.perf_counter()
            torch.manual_seed(ctx.options.seed)
            sampler.sample(SPEED_SAMPLES, ctx.t0, progress=False)
            counted["energy_evaluations"] += SPEED_SAMPLES
            speed = SPEED_SAMPLES / (time.perf_counter() - started)
            n = check_samples(ctx.plan, ctx.allocation_seconds("check"), speed, len(temperatures))
            n = int(ctx.options.overrides.get("check", {}).get("samples", n))
            write_json_atomic(plan_path, {"n_samples": n, "samples_per_second": speed,
                                          "seconds": ctx.allocation_seconds("check")})
        what = "self-check and evaluation against the reference" if ctx.reference else "self-check (no reference)"
        ctx.say(f"{header} {what} at {', '.join(f'{t:g}' for t in temperatures)} K: {n} samples each -> {stage}")
        for k, temperature in enumerate(temperatures):
            if _file(stage, temperature).is_file():
                continue
            torch.manual_seed(ctx.options.seed + 1000 + k)
            samples = sampler.sample(n, temperature, progress=ctx.progress)
            counted["energy_evaluations"] += n
            entry = {"self_check": self_check(samples),
                     "in_trained_range": bool(span[0] - 1e-6 <= temperature <= span[1] + 1e-6)}
            arrays: dict[str, Any] = {}
            if ctx.reference is not None:
                metrics, arrays = evaluate_samples(temperature, samples, system.topology, generator, ctx.reference,
                                                   ctx.options.seed + k)
                metrics["in_trained_range"] = entry["in_trained_range"]
                entry["evaluation"] = metrics
            _save(stage, temperature, entry, arrays)
            check = entry["self_check"]
            ctx.note(f"{temperature:6g} K: ESS {100 * check['ess']:6.2f} %  k {check['pareto_k']:.2f}"
                     f"{' (unreliable)' if check['unreliable'] else ''}" + _evaluation_line(entry))
    per_temperature = [read_json(_file(stage, t)) for t in temperatures]
    rows = free_energy_rows(ctx, per_temperature, grid)
    flagged = [row["temperature"] for row in rows if row["unreliable"]]
    return mark_complete(stage, json_safe({
        "n_samples": n, "temperatures": temperatures, "rows": rows, "flagged": flagged,
        "reference": None if ctx.reference is None else str(ctx.reference.path),
        "evaluation": [entry["evaluation"] for entry in per_temperature if "evaluation" in entry]}))


def _evaluation_line(entry: dict[str, Any]) -> str:
    metrics = entry.get("evaluation")
    if metrics is None:
        return ""
    generator, reference = metrics["delta_f_kT"]["generator"], metrics["delta_f_kT"]["reference"]
    js = metrics.get("js_divergence")
    return (f"  ΔF {generator:.2f} k_BT (reference {'–' if reference is None else f'{reference:.2f}'})"
            f"  JS {'–' if js is None else f'{js:.3f}'}")


def _save(stage: Path, temperature: float, entry: dict[str, Any], arrays: dict[str, Any]) -> None:
    """``T<K>.npz`` (the figures' arrays) first, then ``T<K>.json``, whose presence marks the temperature done."""
    if arrays:
        energies, weights = arrays["energies"]["generator (reweighted)"]
        payload = {"histogram": arrays["histogram"], "energies": energies, "weights": weights}
        if "reference_histogram" in arrays:
            payload["reference_histogram"] = arrays["reference_histogram"]
        if "reference (MBAR)" in arrays["energies"]:
            payload["reference_energies"], payload["reference_weights"] = arrays["energies"]["reference (MBAR)"]
        with atomic_write_path(stage / f"T{temperature:g}.npz") as temp, open(temp, "wb") as handle:
            np.savez(handle, **payload)
    write_json_atomic(_file(stage, temperature), json_safe(entry))


def load_arrays(stage: Path, temperature: float) -> dict[str, Any]:
    """The figure arrays :func:`_save` wrote for one temperature, in the layout of ``write_figures``."""
    with np.load(stage / f"T{temperature:g}.npz") as data:
        values = {key: data[key] for key in data.files}
    arrays: dict[str, Any] = {"histogram": values["histogram"], "energies": {
        "generator (reweighted)": (values["energies"], values["weights"]),
        "generator (raw)": (values["energies"], None)}}
    if "reference_histogram" in values:
        arrays["reference_histogram"] = values["reference_histogram"]
    if "reference_energies" in values:
        arrays["energies"]["reference (MBAR)"] = (values["reference_energies"], values["reference_weights"])
    return arrays


def free_energy_rows(ctx: RunContext, per_temperature: list[dict[str, Any]], grid: dict[str, Any] | None
                     ) -> list[dict[str, Any]]:
    """One row per temperature: the self-check, log Z(T) − log Z(T0) from the weights (± sem), from the training
    grid, and from the reference when it has both temperatures."""
    checks = {entry["self_check"]["temperature"]: entry["self_check"] for entry in per_temperature}
    at_t0 = checks[ctx.t0]
    rows = []
    for temperature, check in checks.items():
        row = {**check, "delta_log_z": check["log_z"] - at_t0["log_z"],
               "delta_log_z_sem": 0.0 if temperature == ctx.t0 else math.hypot(check["log_z_sem"], at_t0["log_z_sem"]),
               "delta_log_z_grid": _grid_value(grid, temperature), "delta_log_z_reference": None,
               "delta_log_z_reference_sem": None}
        if ctx.reference is not None:
            here, there = (ctx.reference.value("log_z_relative", t) for t in (temperature, ctx.t0))
            if here is not None and there is not None:
                row["delta_log_z_reference"] = here - there
                sems = [ctx.reference.value("log_z_relative_sem", t) for t in (temperature, ctx.t0)]
                if all(s is not None for s in sems):
                    row["delta_log_z_reference_sem"] = math.hypot(*sems) if temperature != ctx.t0 else 0.0
        rows.append(row)
    return rows


def _grid_value(grid: dict[str, Any] | None, temperature: float) -> float | None:
    """The training grid's log Z(T) − log Z(T0) at ``temperature`` (linear in log T; None outside the grid)."""
    if not grid or not grid.get("temperatures"):
        return None
    nodes = np.log(np.asarray(grid["temperatures"], dtype=np.float64))
    values = np.asarray(grid["log_Z_minus_log_Z0"], dtype=np.float64)
    if not nodes[0] - 1e-9 <= math.log(temperature) <= nodes[-1] + 1e-9:
        return None
    return float(np.interp(math.log(temperature), nodes, values))

