"""Stage 5 of ``trade-md run``: the report, ``report/summary.md`` and ``report/report.json``.

It states what was run (system, T0, temperatures, trained range, transfer, where the data came from), the result
per temperature (self-check; the reference comparison when there is one), the cost of each stage (wall time, CPU
time, energy evaluations, simulated ns; the MD behind ``--boundary-data`` and the stages shared through
``--boundary-from`` included and marked) and the budget rule's inputs and outputs, with the step counts the training
stages fitted to their time, and what limits the run (:mod:`trade_md.recipe.diagnosis`). With a reference,
``report/metrics.json`` and the figures (Ramachandran, ΔF, ESS, energy) are those of ``trade-md evaluate``, drawn from
the check stage's samples.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trade_md.analysis.evaluation import METRICS_FORMAT
from trade_md.analysis.evaluation_report import summary_markdown, write_figures
from trade_md.formats.files import atomic_write_path, json_safe, write_json_atomic
from trade_md.recipe.check import load_arrays
from trade_md.recipe.context import STAGES, RunContext, mark_complete
from trade_md.recipe.cost import Cost, Meter, record_session
from trade_md.recipe.diagnosis import diagnose
from trade_md.recipe.options import TRANSFERS, trained_range

__all__ = ["report_stage"]

_LABELS = {"md": "data at T0", "boundary": "boundary fit", "transfer": "transfer", "check": "self-check",
           "report": "report"}


def report_stage(ctx: RunContext, header: str, results: dict[str, dict[str, Any]]) -> Path:
    """Write the report from the stages' ``results``; returns the path of ``summary.md`` (always rewritten)."""
    stage = ctx.out / "report"
    stage.mkdir(parents=True, exist_ok=True)
    meter = Meter()
    ctx.say(f"{header} report -> {stage / 'summary.md'}")
    check = results["check"]
    if ctx.reference is not None and check["evaluation"]:
        _evaluation_files(ctx, stage, check, results["transfer"])
    else:
        from trade_md.analysis.plots import ess_plot          # (matplotlib only when a report is drawn)
        import matplotlib.pyplot as plt

        plt.close(ess_plot([r["temperature"] for r in check["rows"]], [r["ess"] for r in check["rows"]],
                           stage / "ess", reference_temperature=ctx.t0))
    record_session(stage, meter)
    costs = {name: ctx.cost(name) for name in STAGES}
    report = json_safe(_report(ctx, results, costs))
    report["diagnosis"] = diagnose(report, str(ctx.out))
    write_json_atomic(stage / "report.json", report)
    with atomic_write_path(stage / "summary.md") as temp:
        temp.write_text(_markdown(report))
    mark_complete(stage, {"summary": str(stage / "summary.md")})
    for finding in report["diagnosis"]:
        ctx.note(finding.replace("`", ""))
    total = report["cost"]["total"]
    ctx.note(f"cost: {total['wall_s'] / 60:.1f} min wall, {total['cpu_s'] / 60:.1f} min CPU, "
             f"{total['energy_evaluations']:,} energy evaluations, {total['simulated_ns']:.3g} ns simulated")
    return stage / "summary.md"


def _evaluation_files(ctx: RunContext, stage: Path, check: dict[str, Any], transfer: dict[str, Any]) -> None:
    """``metrics.json``, figures and ``evaluation.md`` in the format of ``trade-md evaluate``."""
    import matplotlib.pyplot as plt

    per_temperature = [m for m in check["evaluation"] if m["temperature"] in ctx.options.temperatures]
    arrays = {m["temperature"]: load_arrays(ctx.out / "check", m["temperature"]) for m in per_temperature}
    figures = write_figures(stage, per_temperature, arrays, ctx.t0)
    plt.close("all")
    low, high = trained_range(ctx.options.temperatures)
    metrics = json_safe({
        "format": METRICS_FORMAT, "model": transfer["model"], "reference": check["reference"],
        "reference_frames": ctx.reference.frames is not None, "system": ctx.system.name,
        "n_dof": ctx.plan.n_dof, "n_samples": check["n_samples"], "mixture_ratios": [], "basin_calibrated": False,
        "calibration_energy_evaluations": None, "seed": ctx.options.seed, "reference_temperature": ctx.t0,
        "trained_range": [low, high], "training_steps": transfer["steps"],
        "temperatures": [m["temperature"] for m in per_temperature], "per_temperature": per_temperature,
        "figures": figures, "warnings": [], "seconds": None})
    write_json_atomic(stage / "metrics.json", metrics)
    with atomic_write_path(stage / "evaluation.md") as temp:
        temp.write_text(summary_markdown(metrics))


def _report(ctx: RunContext, results: dict[str, dict[str, Any]], costs: dict[str, Cost]) -> dict[str, Any]:
    data = results["md"]
    rows = {name: {**cost.to_dict(), "shared_from": str(ctx.shared) if ctx.shared and name in ("md", "boundary")
                   else None} for name, cost in costs.items()}
    total = sum(costs.values(), Cost())
    before = data.get("data_cost")
    if before is not None:
        recorded = before.get("recorded", {})
        rows["md before this run"] = {"wall_s": recorded.get("wall_s", 0.0), "cpu_s": recorded.get("cpu_s", 0.0),
                                      "energy_evaluations": before["energy_evaluations"],
                                      "simulated_ns": before["simulated_ns"], "sessions": None, "shared_from": None}
        total = total + Cost(recorded.get("wall_s", 0.0), recorded.get("cpu_s", 0.0), before["energy_evaluations"],
                             before["simulated_ns"])
    plan = ctx.plan.to_dict()
    plan["fitted"] = {"md_ns": data.get("ns"), "md_rounds": len(data.get("rounds", [])) or None,
                      "boundary_steps": results["boundary"]["steps"],
                      "boundary_minutes": results["boundary"]["minutes"],
                      "transfer_steps": results["transfer"]["steps"],
                      "transfer_minutes": results["transfer"]["minutes"],
                      "check_samples_per_temperature": results["check"]["n_samples"]}
    spent = sum(costs[name].wall_s for name in STAGES)
    return {
        "format": "trade-md run report/1",
        "system": {"name": ctx.system.name, "n_atoms": ctx.system.n_atoms, "n_dof": ctx.plan.n_dof,
                   "fingerprint": ctx.system.fingerprint()},
        "options": ctx.options.to_dict(),
        "t0": ctx.t0, "temperatures": list(ctx.options.temperatures),
        "trained_range": list(trained_range(ctx.options.temperatures)),
        "transfer": {"variant": ctx.options.transfer, "description": TRANSFERS[ctx.options.transfer]},
        "data": {key: data.get(key) for key in ("source", "data", "frames", "ns", "temperatures_sampled", "notes",
                                                "convergence", "rounds")},
        "from_several_temperatures": len(data.get("temperatures_sampled", [])) > 1,
        "budget": {"minutes": ctx.plan.budget_minutes, "spent_minutes": spent / 60.0, "rule": plan},
        "stages": {name: _stage_summary(results[name]) for name in ("boundary", "transfer")},
        "self_check": results["check"]["rows"],
        "flagged": results["check"]["flagged"],
        "evaluation": results["check"]["evaluation"] or None,
        "reference": results["check"]["reference"],
        "cost": {"stages": rows, "total": total.to_dict()},
    }


def _stage_summary(result: dict[str, Any]) -> dict[str, Any]:
    return {key: result.get(key) for key in ("steps", "fitted_steps", "stopped_by", "minutes", "seconds_per_step",
                                             "energy_evaluations", "best_validation", "fit_gap", "objectives", "flow",
                                             "flow_choice", "model")}


def _number(value: Any, spec: str = ".2f") -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _pm(value: Any, error: Any, spec: str = ".2f") -> str:
    return _number(value, spec) if error is None else f"{_number(value, spec)} ± {_number(error, spec)}"


def _reference_table(evaluation: list[dict[str, Any]]) -> list[str]:
    """ΔF (k_BT) against the reference per temperature; a peptide with several φ gets a row per residue, its JS
    (of the Ramachandran residue) and ⟨U⟩ on the first."""
    several = any(len(m.get("phi_basins") or []) > 1 for m in evaluation)
    lines = ["| T/K | " + ("φ of | " if several else "") + "ΔF k_BT | reference | JS | ⟨U⟩ − reference kJ/mol |",
             "|---|" + ("---|" if several else "") + "---|---|---|---|"]
    for m in evaluation:
        energy = m["mean_energy"]
        difference = (None if energy.get("reference") is None or energy.get("generator") is None
                      else energy["generator"] - energy["reference"])
        shared = f"{_number(m.get('js_divergence'), '.4f')} | {_number(difference)} |"
        residues = [(r["label"], r["delta_f_kT"]) for r in m["phi_basins"]] if several else [(None, m["delta_f_kT"])]
        for i, (label, f_kt) in enumerate(residues):
            lines.append(f"| {m['temperature']:g} | " + ("" if label is None else f"{label} | ")
                         + f"{_pm(f_kt['generator'], f_kt['generator_sem'])} | "
                         f"{_pm(f_kt['reference'], f_kt['reference_sem'])} | " + (shared if i == 0 else "| |"))
    return lines


def _markdown(report: dict[str, Any]) -> str:
    system, data = report["system"], report["data"]
    low, high = report["trained_range"]
    lines = [f"# trade-md run: {system['name']}", "",
             f"{system['n_atoms']} atoms ({system['n_dof']} internal degrees of freedom). T0 = {report['t0']:g} K; "
             f"evaluated at {', '.join(f'{t:g}' for t in report['temperatures'])} K; trained over {low:g}–{high:g} "
             f"K. Transfer `{report['transfer']['variant']}`: {report['transfer']['description']}.", "",
             f"Training data: {data['source']}: {data['frames']} frames, {_number(data['ns'], '.3g')} ns"
             + (" — **from several temperatures** (parallel tempering), not from T0 alone."
                if report["from_several_temperatures"] else " at T0 only."), ""]
    for note in data.get("notes") or []:
        lines.append(f"- {note}")
    lines += ["", "## Self-check (no reference needed)", "",
              "| T/K | n | ESS % | tail k | log Z(T) − log Z(T0), weights | grid | reference | ⟨U⟩ kJ/mol |",
              "|---|---|---|---|---|---|---|---|"]
    for row in report["self_check"]:
        flag = " ⚠" if row["unreliable"] else ""
        lines.append(f"| {row['temperature']:g} | {row['n_samples']} | {_number(100 * row['ess'])} | "
                     f"{_number(row['pareto_k'])}{flag} | {_pm(row['delta_log_z'], row['delta_log_z_sem'])} | "
                     f"{_number(row['delta_log_z_grid'])} | "
                     f"{_pm(row['delta_log_z_reference'], row['delta_log_z_reference_sem'])} | "
                     f"{_pm(row['mean_energy'], row['mean_energy_sem'])} |")
    flagged = report["flagged"]
    lines += ["", "ESS: Kish effective sample size of the importance weights exp(−u_T) / q(x | T). Tail k: Pareto "
              "shape of the largest weights; ⚠ marks k > 0.7, where this draw's ESS and estimates are unreliable"
              + (f" ({', '.join(f'{t:g} K' for t in flagged)})." if flagged else " (none here)."),
              "log Z from the weights: log mean w, ± its delta-method error; grid: the training grid's −∫E[U] dβ."]
    lines += ["", "## What limits this run", "", *(f"- {finding}" for finding in report["diagnosis"]),
              "", "(The rules: `trade_md.recipe.diagnosis`.)"]
    if report["evaluation"]:
        lines += ["", f"## Against the reference ({report['reference']})", ""] + _reference_table(report["evaluation"])
        lines += ["", "Full metrics and figures: [evaluation.md](evaluation.md), `metrics.json`."]
    lines += ["", "## Cost", "", "| stage | wall min | CPU min | energy evaluations | simulated ns | sessions |",
              "|---|---|---|---|---|---|"]
    for name, cost in report["cost"]["stages"].items():
        label = _LABELS.get(name, name) + (f" (shared: {cost['shared_from']})" if cost.get("shared_from") else "")
        lines.append(f"| {label} | {cost['wall_s'] / 60:.2f} | {cost['cpu_s'] / 60:.2f} | "
                     f"{cost['energy_evaluations']:,} | {cost['simulated_ns']:.3g} | {cost['sessions'] or '–'} |")
    total = report["cost"]["total"]
    lines += [f"| **total** | {total['wall_s'] / 60:.2f} | {total['cpu_s'] / 60:.2f} | "
              f"{total['energy_evaluations']:,} | {total['simulated_ns']:.3g} | |", "",
              f"Budget {report['budget']['minutes']:g} min; this run's stages took "
              f"{report['budget']['spent_minutes']:.1f} min. MD counts one force evaluation per step; the check counts "
              "one energy per sample."]
    notes = [f"- {_LABELS.get(name, name)}: {note}" for name, cost in report["cost"]["stages"].items()
             for note in cost.get("notes") or []]
    lines += ["", *notes] if notes else []
    rule = report["budget"]["rule"]
    fitted = rule["fitted"]
    flow = report["stages"]["boundary"].get("flow") or rule["flow"]
    lines += ["", "## Budget rule (trade_md.recipe.budget)", "",
              f"Inputs: budget {rule['budget_minutes']:g} min, {rule['n_atoms']} atoms ({rule['n_dof']} degrees of "
              f"freedom), {rule['cores']} cores{', --quick' if rule['quick'] else ''}.", "",
              "| output | value |", "|---|---|",
              "| stage minutes (MD, boundary, transfer, check) | "
              + ", ".join(f"{rule['stage_minutes'][k]:.1f}" for k in ("md", "boundary", "transfer", "check"))
              + f" (MD up to {rule['md_max_minutes']:.1f}) |",
              f"| flow | {_flow_line(flow, report['stages']['boundary'])} |",
              f"| batch per objective and step | {rule['batch_size']} |",
              f"| MD | {_number(fitted['md_ns'], '.3g')} ns in {fitted['md_rounds'] or '–'} round(s), "
              f"{rule['md_replicas']} replica(s) |",
              f"| boundary | {_number(fitted['boundary_minutes'], '.1f')} min → {fitted['boundary_steps']} steps "
              f"({report['stages']['boundary']['stopped_by']}) |",
              f"| transfer | {_number(fitted['transfer_minutes'], '.1f')} min → {fitted['transfer_steps']} steps "
              f"({report['stages']['transfer']['stopped_by']}) |",
              f"| self-check samples per temperature | {fitted['check_samples_per_temperature']} |"]
    best = report["stages"]["boundary"].get("best_validation") or {}
    lines += ["", f"Boundary kept from step {_number(best.get('step'), '.0f')}: validation NLL "
              f"{_number(best.get('val_nll'))}, ESS at T0 {_number(100 * best['val_ess'] if 'val_ess' in best else None)}"
              " % (from the monitor's samples).", ""]
    return "\n".join(lines)


def _flow_line(flow: dict[str, Any], boundary: dict[str, Any]) -> str:
    """The boundary's flow, and the timings that chose it (:mod:`trade_md.recipe.flow_choice`) when there were any."""
    line = (f"{flow['n_layers']} layers × {flow['hidden']} hidden ({flow['n_hidden_layers']} hidden layers), "
            f"{flow['n_bins']} bins")
    choice = boundary.get("flow_choice")
    if not choice:
        return line
    timed = "; ".join(f"{c['flow']['n_layers']} × {c['flow']['hidden']}: {c['seconds_per_step']:.3f} s/step → "
                      f"{c['projected_steps']:,} steps" for c in choice["candidates"])
    short = (f"; fewer than the {choice['min_steps']:,} wanted, --budget {choice['budget_for_min_steps']:g} would "
             "reach them" if choice["budget_short"] else "")
    return f"{line} (timed: {timed}{short})"
