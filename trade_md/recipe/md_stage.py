"""Stage 1 of ``trade-md run``: the training data at T0.

By default Langevin MD at T0 only (:func:`trade_md.md.run_md`), in rounds under ``md/round_<k>/`` that fill the MD
share of the budget: the first half of it at the MD speed of one replica measured alone on the molecule
(:func:`trade_md.recipe.budget.md_length`), the rest in up to two more rounds at the speed the rounds reached with
every replica running (on a shared CPU much lower; ``--quick``: one round). Then the basin convergence of the pooled
frames (:mod:`trade_md.convergence`) decides: converged (or nothing to judge: no backbone φ, or ``--quick``) → done;
not converged → another round with a new seed, as long as the estimated length that converges fits the MD allowance
(the plan's ``md_max_minutes``); otherwise the run stops (:class:`~trade_md.recipe.context.RecipeStopped`) and says
what to do. Rounds pool into ``md/pooled/``.

With ``--boundary-data DIR`` the stage takes that dataset instead (e.g. ``trade-md remd-data``: frames at T0 from
parallel tempering over several temperatures) and counts the MD that made it: wall and CPU time of the tempering
runs' recorded segments, their simulated ns and force evaluations.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from trade_md.convergence import MAX_RELATIVE_ERROR, MIN_MINOR_ENTRIES, ConvergenceWarning, dataset_convergence
from trade_md.errors import InputError, SystemMismatchError
from trade_md.formats.dataset import Dataset, load_dataset, write_dataset
from trade_md.formats.files import read_json, write_json_atomic
from trade_md.md import HMR_MIN_MASS_AMU, max_timestep_fs, openmm_seed, run_md
from trade_md.platforms import measure_md_speed, select_platform
from trade_md.recipe.budget import MD_FIRST_ROUND_SHARE, MD_STARTUP_SHARE, BudgetPlan, md_length, md_round
from trade_md.recipe.context import RecipeStopped, RunContext, mark_complete, stage_result
from trade_md.recipe.cost import Meter, record_session
from trade_md.recipe.options import RunOptions

__all__ = ["check_dataset", "data_cost", "first_round", "md_dynamics", "md_stage", "needed_length_factor"]

MD_TIMESTEP_FS = 2.0
"""fs, with hydrogens of :data:`~trade_md.md.HMR_MIN_MASS_AMU` (no constraints) or HBonds constraints: twice the
simulated time of 1 fs per minute, and the same distribution of positions (results §10b); a user System with other
constraints runs 1 fs. ``--config`` ``md: {timestep_fs: 1.0, hydrogen_mass_amu: null}``: 1 fs, force-field masses."""
MAX_EXTENSIONS = 3
"""MD rounds at most that extend the MD beyond its share for convergence."""
MAX_FILLS = 2
"""MD rounds at most that fill the MD share after the first."""
FILL_MIN_SHARE = 0.2
"""A round fills the rest of the MD share only when at least this share of it is left."""


def md_stage(ctx: RunContext, header: str) -> dict[str, Any]:
    """Run (or resume, or skip when complete) the data stage; returns its result (``data``: the dataset path)."""
    stage = ctx.stage_dir("md")
    done = stage_result(stage)
    if done is not None:
        ctx.say(f"{header} data at {ctx.t0:g} K: complete ({done['frames']} frames, {done['source']}), skipped"
                + (f" (shared with {ctx.shared})" if ctx.shared is not None else ""))
        return done
    if ctx.shared is not None:
        raise InputError(f"--boundary-from {ctx.shared}: its data stage is not complete; finish that run first "
                         f"(trade-md run --resume --out {ctx.shared})")
    stage.mkdir(parents=True, exist_ok=True)
    if ctx.options.boundary_data is not None:
        return _imported(ctx, stage, header)
    meter = Meter(stage)
    counted = {"energy_evaluations": 0, "simulated_ns": 0.0}
    try:
        return _md_rounds(ctx, stage, header, meter, counted)
    finally:
        record_session(stage, meter, **counted)


def _md_rounds(ctx: RunContext, stage: Path, header: str, meter: Meter, counted: dict[str, Any]) -> dict[str, Any]:
    state_path = stage / "rounds.json"
    state = read_json(state_path) if state_path.is_file() else None
    if state is None:
        state = first_round(ctx.system, ctx.plan, ctx.options, ctx.allocation_seconds("md"))
        write_json_atomic(state_path, state)
    if not (stage / "round_0").exists():
        first = state["rounds"][0]
        masses = f", hydrogens {first['hydrogen_mass_amu']:g} amu" if first.get("hydrogen_mass_amu") else ""
        ctx.say(f"{header} MD at {ctx.t0:g} K: {first['ns']:.3g} ns ({first['replicas']} x "
                f"{first['ns'] / first['replicas']:.3g} ns, {first['timestep_fs']:g} fs steps{masses}, "
                f"{state['speed_steps_per_s']:.0f} steps/s per replica on {state['platform']}) -> {stage}")
    else:
        ctx.say(f"{header} MD at {ctx.t0:g} K: resuming round {len(state['rounds'])} -> {stage}")
    while True:
        for k, settings in enumerate(state["rounds"]):
            directory = stage / f"round_{k}"
            if not (directory / "run.json").is_file():
                dataset = _run_round(ctx, directory, settings)
                metadata = dataset.metadata
                counted["energy_evaluations"] += int(metadata["replicas"] * metadata["steps_per_replica"])
                counted["simulated_ns"] += _simulated_ns(metadata)
        datasets = [load_dataset(stage / f"round_{k}") for k in range(len(state["rounds"]))]
        ns = sum(d.metadata["ns_total"] for d in datasets)
        fixed = ctx.options.quick or "ns" in ctx.options.overrides.get("md", {})
        fill = None if fixed else _fill(ctx, state, ns, meter)
        if fill is not None:
            _add_round(ctx, stage, state, fill, "share")
            ctx.note(f"{ns:.3g} ns in {len(datasets)} round(s); filling the MD share with {fill:.3g} ns more")
            continue
        positions, run = _pooled(datasets)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            report = dataset_convergence(ctx.system.topology, positions, run,
                                         remedy="the recipe extends MD within its budget")
        verdict = _verdict(report)
        ctx.note(f"{len(positions)} frames, {ns:.3g} ns: {verdict}")
        if report["converged"] is not False or fixed:
            break
        if sum(r.get("kind") == "extension" for r in state["rounds"]) >= MAX_EXTENSIONS:
            raise RecipeStopped(_stop_message(ctx, ns, verdict, f"{MAX_EXTENSIONS} extensions did not converge it",
                                              None))
        extension = _extension(ctx, report, ns, meter)
        _add_round(ctx, stage, state, extension, "extension")
        ctx.note(f"not converged: extending by {extension:.3g} ns (round {len(state['rounds']) - 1})")
    data = stage / "round_0" if len(datasets) == 1 else _pool(ctx, stage, datasets, positions, run, report)
    notes = [] if report["converged"] is not False else [
        "the basins of the MD data are not converged (" + "; ".join(report["warnings"][:-1]) + ")"]
    return mark_complete(stage, {
        "source": "MD at T0", "data": str(data), "frames": int(len(positions)), "ns": float(ns),
        "rounds": state["rounds"], "platform": state["platform"], "speed_steps_per_s": state["speed_steps_per_s"],
        "convergence": report, "temperatures_sampled": [ctx.t0], "notes": notes})


def _spent(ctx: RunContext, meter: Meter) -> float:
    """Wall seconds of MD so far: the stage's earlier sessions and this one (its own ``open`` entry left out)."""
    return ctx.cost("md", without=meter).wall_s + meter.wall_s


def _fill(ctx: RunContext, state: dict[str, Any], ns: float, meter: Meter) -> float | None:
    """ns of a round that fills the rest of the MD share at the speed reached so far, or None (little left)."""
    share = ctx.allocation_seconds("md")
    spent = _spent(ctx, meter)
    fills = sum(r.get("kind") == "share" for r in state["rounds"][1:])
    if share - spent < FILL_MIN_SHARE * share or fills >= MAX_FILLS:
        return None
    return (1.0 - MD_STARTUP_SHARE) * (share - spent) * ns / spent


def _add_round(ctx: RunContext, stage: Path, state: dict[str, Any], ns: float, kind: str) -> None:
    first = state["rounds"][0]
    settings = {**md_round(ctx.plan, ns), "timestep_fs": first["timestep_fs"],
                "hydrogen_mass_amu": first.get("hydrogen_mass_amu"), "kind": kind,
                "seed": openmm_seed(ctx.options.seed, 0x6D64, len(state["rounds"]))}
    state["rounds"].append(settings)
    write_json_atomic(stage / "rounds.json", state)


def first_round(system: Any, plan: BudgetPlan, options: RunOptions, seconds: float) -> dict[str, Any]:
    """The MD plan's first round (``rounds.json``): the MD share's first part (``seconds`` × the first-round share;
    all of it with ``--quick``, and at least ``plan.md_min_ns`` there) at the MD speed measured here on ``system``, or
    the ``--config`` md section. InputError when the budget is too small for the molecule."""
    platform, properties = select_platform(system, "auto", threads=1, purpose="dynamics")
    speed = measure_md_speed(system, platform, properties, seconds=1.0)
    dynamics = md_dynamics(system, options.overrides.get("md", {}))
    share = 1.0 if options.quick else MD_FIRST_ROUND_SHARE
    settings = md_length(plan, share * seconds, speed, timestep_fs=dynamics["timestep_fs"])
    if options.quick and settings["ns"] < plan.md_min_ns:       # a first look: the minimum MD, however slow the CPU
        settings = md_round(plan, plan.md_min_ns)
    settings.update({key: value for key, value in options.overrides.get("md", {}).items() if key != "share"})
    if settings["ns"] < share * plan.md_min_ns and "ns" not in options.overrides.get("md", {}):
        needed = plan.budget_minutes * share * plan.md_min_ns / max(settings["ns"], 1e-9)
        raise InputError(f"--budget {plan.budget_minutes:g} min is too small for this molecule: its MD share "
                         f"simulates {settings['ns'] / share:.2g} ns at {speed:.0f} steps/s, at least "
                         f"{plan.md_min_ns:g} ns are needed; raise --budget to {math.ceil(needed)} or more, or use "
                         "--quick")
    settings.update(**dynamics, kind="share", seed=openmm_seed(options.seed, 0x6D64, 0))
    return {"platform": platform, "speed_steps_per_s": speed, "rounds": [settings]}


def md_dynamics(system: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """``timestep_fs`` and ``hydrogen_mass_amu`` of the MD (:data:`MD_TIMESTEP_FS`), the ``--config`` md section's
    values put on; InputError, naming those keys, when the step is too long for the masses and constraints."""
    dynamics = {"timestep_fs": 1.0 if system.constraints == "custom" else MD_TIMESTEP_FS,
                "hydrogen_mass_amu": HMR_MIN_MASS_AMU if system.constraints is None else None}
    dynamics.update({key: value for key, value in overrides.items() if key in dynamics})
    longest = max_timestep_fs(system.constraints, dynamics["hydrogen_mass_amu"])
    if dynamics["timestep_fs"] > longest + 1e-9:
        raise InputError(f"--config md: timestep_fs {dynamics['timestep_fs']:g} is too long with hydrogen_mass_amu "
                         f"{dynamics['hydrogen_mass_amu']} and constraints {system.constraints}: at most {longest:g} "
                         f"fs; set md.timestep_fs: 1.0, or md.hydrogen_mass_amu: {HMR_MIN_MASS_AMU:g}")
    return dynamics


def _run_round(ctx: RunContext, directory: Path, settings: dict[str, Any]) -> Dataset:
    replicas = int(settings["replicas"])
    frame_interval = float(settings["frame_interval_ps"])
    per_replica = settings["ns"] * 1000.0 / replicas
    frame_interval = min(frame_interval, max(0.1, math.floor(10 * per_replica / 10) / 10))  # >= 10 frames each
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # judged on the pooled rounds
        return run_md(ctx.system, ctx.t0, directory, ns=float(settings["ns"]), replicas=replicas,
                      seed=int(settings["seed"]), timestep_fs=float(settings["timestep_fs"]),
                      hydrogen_mass_amu=settings.get("hydrogen_mass_amu"),
                      frame_interval_ps=frame_interval, equilibration_ps=float(settings["equilibration_ps"]),
                      resume=(directory / "plan.json").is_file(), progress=ctx.progress)


def _simulated_ns(metadata: dict[str, Any]) -> float:
    return metadata["replicas"] * metadata["steps_per_replica"] * metadata["timestep_fs"] * 1e-6


def _pooled(datasets: list[Dataset]) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``[n, atoms, 3]`` and run index ``[n]`` of the rounds, each round's replicas their own runs."""
    offset, runs = 0, []
    for dataset in datasets:
        runs.append(dataset.run + offset)
        offset += int(dataset.run.max()) + 1
    return np.concatenate([d.positions for d in datasets]), np.concatenate(runs)


def _pool(ctx: RunContext, stage: Path, datasets: list[Dataset], positions: np.ndarray, run: np.ndarray,
          report: dict[str, Any]) -> Path:
    out = stage / "pooled"
    record = {"source": "trade-md run: MD rounds at T0", "rounds": [str(d.path) for d in datasets],
              "ns_total": sum(d.metadata["ns_total"] for d in datasets),
              "replicas": sum(d.metadata["replicas"] for d in datasets)}
    write_dataset(out, ctx.system, ctx.t0, positions=positions, energies=np.concatenate([d.energies for d in datasets]),
                  times=np.concatenate([d.times for d in datasets]), run=run, record=record, convergence=report)
    return out


def _verdict(report: dict[str, Any]) -> str:
    if report["converged"] is None:
        return "no backbone φ: basin convergence not assessed"
    parts = [f"φ({d['label']}) > 0: {d['population_phi_positive']:.3f} from {d['entries_phi_positive']} entries"
             for d in report["dihedrals"]]
    return ("converged; " if report["converged"] else "NOT converged; ") + ", ".join(parts)


def needed_length_factor(report: dict[str, Any]) -> float | None:
    """How many times longer the data must be for every φ to converge (entries ≥ ``MIN_MINOR_ENTRIES``, relative
    error ≤ ``MAX_RELATIVE_ERROR``, the error falling as 1/√length); None when a basin was never entered."""
    factors = [1.0]
    for dihedral in report["dihedrals"]:
        if dihedral["converged"]:
            continue
        entries = dihedral["entries_phi_positive"]
        if entries == 0:
            return None
        factor = MIN_MINOR_ENTRIES / entries
        error = dihedral.get("relative_error")
        if error is not None and math.isfinite(error):
            factor = max(factor, (error / MAX_RELATIVE_ERROR) ** 2)
        factors.append(factor)
    return max(factors)


def _extension(ctx: RunContext, report: dict[str, Any], ns: float, meter: Meter) -> float:
    """ns to add for convergence (20 % margin), or RecipeStopped when that does not fit the MD allowance."""
    factor = needed_length_factor(report)
    verdict = _verdict(report)
    if factor is None:
        raise RecipeStopped(_stop_message(ctx, ns, verdict, "a basin was never entered, so no MD length can be "
                                                            "estimated", None))
    extension = max(1.2 * factor - 1.0, 0.2) * ns
    spent = _spent(ctx, meter)
    seconds_per_ns = spent / ns
    allowed = 60.0 * ctx.plan.md_max_minutes - spent
    if extension * seconds_per_ns > allowed:
        minutes = (spent + extension * seconds_per_ns) / 60.0
        raise RecipeStopped(_stop_message(ctx, ns, verdict, f"converging needs about {minutes:.0f} min of MD, more "
                                          f"than this budget allows ({ctx.plan.md_max_minutes:.0f} min)", minutes))
    return extension


def _stop_message(ctx: RunContext, ns: float, verdict: str, reason: str, md_minutes: float | None) -> str:
    budget = (None if md_minutes is None else
              math.ceil(md_minutes / ctx.plan.md_max_minutes * ctx.plan.budget_minutes - 1e-6))
    resume = "" if budget is None else f"continue with `trade-md run --resume --out {ctx.out} --budget {budget}`, or "
    return (f"MD at {ctx.t0:g} K is not converged after {ns:.3g} ns ({verdict}); {reason}. To go on: {resume}"
            f"raise --t0, or give parallel-tempering data (`trade-md remd` + `trade-md remd-data`) with "
            f"--boundary-data DIR and a new --out")


# ---------------------------------------------------------------------------------------------- given data


def _imported(ctx: RunContext, stage: Path, header: str) -> dict[str, Any]:
    meter = Meter()
    path = Path(ctx.options.boundary_data)
    dataset = load_dataset(path)
    check_dataset(ctx, dataset, f"--boundary-data {path}")
    meta = dataset.metadata
    work, temperatures, note = data_cost(meta)
    ctx.say(f"{header} data at {ctx.t0:g} K: {len(dataset)} frames from {path} ({note})")
    record_session(stage, meter)            # reading the data; the MD behind it is work done before this run
    return mark_complete(stage, {
        "source": f"--boundary-data {path} ({note})", "data": str(path), "frames": len(dataset),
        "ns": work["simulated_ns"], "convergence": meta.get("convergence"), "temperatures_sampled": temperatures,
        "notes": [], "data_cost": work})


def check_dataset(ctx: RunContext, dataset: Dataset, where: str) -> None:
    """InputError unless ``dataset`` holds frames of this run's system at T0."""
    if dataset.system.fingerprint() != ctx.system.fingerprint():
        raise SystemMismatchError(f"{where} holds frames of another system ({dataset.system.n_atoms} atoms) than this "
                                  "run's; give a dataset of the same molecule and force field")
    if not math.isclose(dataset.temperature, ctx.t0, rel_tol=1e-6):
        raise InputError(f"{where} was sampled at {dataset.temperature:g} K, not at T0 = {ctx.t0:g} K; drop --t0 "
                         "(T0 is then the data's temperature) or give data at T0")


def data_cost(meta: dict[str, Any]) -> tuple[dict[str, Any], list[float], str]:
    """The MD behind a dataset's ``run.json`` record: ``(work, temperatures sampled, description)``; work holds
    simulated_ns, energy_evaluations and, where the source runs recorded them, ``recorded`` wall and CPU seconds."""
    if meta.get("source") != "trade-md remd":
        ns = _simulated_ns(meta) if "steps_per_replica" in meta else float(meta.get("ns_total", 0.0))
        evaluations = int(meta.get("replicas", 0) * meta.get("steps_per_replica", 0))
        recorded = {"wall_s": float(meta.get("wall_seconds_last_session", 0.0)),
                    "cpu_s": float(sum(meta.get("replica_seconds", [])))}
        return ({"simulated_ns": ns, "energy_evaluations": evaluations, "recorded": recorded},
                [float(meta["temperature"])], "MD at T0 only")
    ns, evaluations, wall, cpu, ladder, missing = 0.0, 0, 0.0, 0.0, set(), []
    for source in meta.get("runs", []):
        ladder.update(float(t) for t in source.get("ladder", []))
        record_path = Path(source["dir"]) / "run.json"
        if not record_path.is_file():
            missing.append(source["dir"])
            continue
        record = read_json(record_path)
        settings = record["settings"]
        iterations = max((s["last_iteration"] for s in record.get("segments", [])), default=0)
        k = len(settings["temperatures"])
        ns += iterations * settings["steps_per_iteration"] * settings["timestep_fs"] * 1e-6 * k
        evaluations += iterations * (settings["steps_per_iteration"] * k + k * k)   # dynamics + exchange energies
        wall += sum(s.get("wall_s", 0.0) for s in record.get("segments", []))
        cpu += sum(s.get("cpu_s", 0.0) for s in record.get("segments", []))
    note = (f"parallel tempering over {len(ladder)} temperatures {min(ladder, default=0):g}-{max(ladder, default=0):g}"
            f" K ({len(meta.get('runs', []))} runs), frames at T0: data from several temperatures")
    if missing:
        note += f"; cost of {len(missing)} run(s) unknown (their directories are gone)"
    return ({"simulated_ns": ns, "energy_evaluations": evaluations, "recorded": {"wall_s": wall, "cpu_s": cpu}},
            sorted(ladder), note)
