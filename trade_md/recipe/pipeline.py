"""The orchestration of ``trade-md run`` (:func:`run_recipe`): checks every input before any work, creates or
resumes the run directory, and runs the stages in order (:mod:`trade_md.recipe` lists them)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trade_md.errors import InputError, SystemMismatchError
from trade_md.formats.dataset import load_dataset
from trade_md.formats.files import atomic_write_path, read_json, write_json_atomic
from trade_md.formats.reference import Reference, default_reference, load_reference
from trade_md.recipe.budget import DEFAULT_BUDGET_MINUTES, QUICK_BUDGET_MINUTES, plan_budget
from trade_md.recipe.check import check_stage
from trade_md.recipe.context import STAGES, RecipeStopped, RunContext, stage_result
from trade_md.recipe.md_stage import first_round, md_stage
from trade_md.recipe.options import RunOptions
from trade_md.recipe.report import report_stage
from trade_md.recipe.training import boundary_stage, check_stage_configs, transfer_stage
from trade_md.systems import RUN_RECORD_FILE, MolecularSystem, builtin_config, builtin_systems, load_system

__all__ = ["RECIPE_FILE", "RECIPE_FORMAT", "run_recipe"]

logger = logging.getLogger("trade_md.recipe")

RECIPE_FILE = RUN_RECORD_FILE
RECIPE_FORMAT = "trade-md run/2"
SYSTEM_FILE = "system.json"
"""The molecule of a run directory (:meth:`MolecularSystem.serialize`)."""
DEFAULT_SYSTEM = "alanine-dipeptide"

STOPPED_FILE = "stopped.md"
"""In the run directory while the run is stopped: why, and what to do (:class:`RecipeStopped`)."""


def run_recipe(
    out: str | Path = "runs/main", *, system: MolecularSystem | None = None, options: RunOptions | None = None,
    resume: bool = False, progress: bool = True, say: Callable[[str], None] | None = None, threads: int | None = 1,
) -> Path:
    """Run (or, with ``resume``, continue) ``trade-md run`` in ``out``; returns the path of the report's
    ``summary.md``.

    system: the molecule (default: the stored one on resume, else the built-in alanine dipeptide); options:
    :class:`RunOptions` (fields left None take their defaults, or the stored run's on resume); say: one line per
    stage and result (default ``logging.info``); threads: torch threads while the run lasts (None: leave torch's
    setting; the default 1 because on a 2-core or shared CPU more threads slow these small flows down several
    times, and the energies run beside them). Raises :class:`~trade_md.errors.InputError` for bad input before any
    work starts, and :class:`~trade_md.recipe.context.RecipeStopped` when the run cannot go on within its budget.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _run(Path(out), system, options or RunOptions(), resume, progress, say or logger.info)
    finally:
        torch.set_num_threads(previous)


def _run(out: Path, system: MolecularSystem | None, options: RunOptions, resume: bool, progress: bool,
         say: Callable[[str], None]) -> Path:
    started = time.perf_counter()
    system, options, shared = _prepare(out, system, options, resume)
    budget = options.budget
    plan = plan_budget(system.n_atoms, budget, quick=bool(options.quick), md_share=options.md_share)
    reference = _reference(options, system)
    ctx = RunContext(out, system, options, plan, reference, shared, say, progress)
    _record_session(out, options, plan)
    n = len(STAGES)
    results: dict[str, dict[str, Any]] = {}
    try:
        results["md"] = md_stage(ctx, f"[1/{n}]")
        results["boundary"] = boundary_stage(ctx, f"[2/{n}]", results["md"]["data"])
        results["transfer"] = transfer_stage(ctx, f"[3/{n}]", results["md"]["data"], results["boundary"]["model"])
        results["check"] = check_stage(ctx, f"[4/{n}]", results["transfer"]["model"], results["transfer"].get("grid"))
    except RecipeStopped as stop:
        _record_stop(out, stop, list(results))
        raise
    (out / STOPPED_FILE).unlink(missing_ok=True)
    summary = report_stage(ctx, f"[5/{n}]", results)
    say(f"done in {time.perf_counter() - started:.0f} s")
    return summary


def _record_stop(out: Path, stop: RecipeStopped, finished: list[str]) -> None:
    """Write why the run stopped, and how to go on, to ``out/stopped.md`` (removed once a resumed run gets through
    its stages), so that a run left unattended says it in its own directory."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    kept = ", ".join(f"`{name}/`" for name in finished) or "none"
    with atomic_write_path(out / STOPPED_FILE) as temp:
        temp.write_text(f"# `trade-md run` stopped ({when})\n\n{stop}\n\nFinished stages, kept for `--resume`: "
                        f"{kept}.\n")


def _prepare(out: Path, system: MolecularSystem | None, options: RunOptions, resume: bool
             ) -> tuple[MolecularSystem, RunOptions, Path | None]:
    """The run's system, resolved options and shared run, after every check; creates ``out`` for a new run."""
    record = out / RECIPE_FILE
    if (out / "pipeline.json").is_file():
        raise InputError(f"{out} holds a run of an earlier trade-md (pipeline.json) that this version cannot resume; "
                         "choose another --out")
    if record.is_file():
        if not resume:
            raise InputError(f"{out} already holds a `trade-md run`; pass --resume to continue it, or choose another "
                             "--out")
        stored = read_json(record)
        if stored.get("format") != RECIPE_FORMAT:
            raise InputError(f"{record} is not a {RECIPE_FORMAT} record; choose another --out")
        saved = _stored_system(out)
        if system is not None and system.fingerprint() != saved.fingerprint():
            raise SystemMismatchError(f"{out} was started with another system ({saved.name}, {saved.n_atoms} atoms); "
                                      "resume with the same system options (or none), or choose another --out")
        resolved = options.resume_from(RunOptions.from_dict(stored["options"]), out)
        resolved.check()
        shared = Path(resolved.boundary_from) if resolved.boundary_from else None
        return saved, resolved, shared
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not a `trade-md run` directory; choose another --out")
    if system is None and options.boundary_from is not None and (Path(options.boundary_from) / SYSTEM_FILE).is_file():
        system = _stored_system(Path(options.boundary_from))                       # the shared run's molecule
    system = system or load_system(DEFAULT_SYSTEM)
    default_t0 = (builtin_config(system.name)["reference_temperature"] if system.name in builtin_systems()
                  else None)
    shared = None
    if options.boundary_data is not None:
        default_t0 = load_dataset(options.boundary_data).temperature
    if options.boundary_from is not None:
        shared, options = _shared(Path(options.boundary_from), system, options)
        default_t0 = options.t0
    builtin_reference = default_reference(system.name) if system.name in builtin_systems() else None
    resolved = options.resolve(default_t0, None if builtin_reference is None else str(builtin_reference))
    if resolved.budget is None:
        resolved = dataclasses.replace(resolved, budget=QUICK_BUDGET_MINUTES if resolved.quick
                                       else DEFAULT_BUDGET_MINUTES)
    _reference(resolved, system)                                                   # reference checks
    if resolved.boundary_data is not None:
        data = load_dataset(resolved.boundary_data)
        if data.system.fingerprint() != system.fingerprint():
            raise SystemMismatchError(f"--boundary-data {resolved.boundary_data} holds frames of another system "
                                      f"({data.system.n_atoms} atoms); give a dataset of this molecule")
        if abs(data.temperature - float(resolved.t0)) > 1e-6 * resolved.t0:
            raise InputError(f"--boundary-data {resolved.boundary_data} was sampled at {data.temperature:g} K, not "
                             f"at --t0 {resolved.t0:g} K; drop --t0 or give data at T0")
    plan = plan_budget(system.n_atoms, resolved.budget, quick=bool(resolved.quick), md_share=resolved.md_share)
    check_stage_configs(RunContext(out, system, resolved, plan, None, shared, lambda line: None, False))
    rounds = None if resolved.boundary_data or resolved.boundary_from else first_round(
        system, plan, resolved, plan.shares["md"] * 60.0 * plan.budget_minutes)  # a budget too small for MD
    out.mkdir(parents=True, exist_ok=True)
    if rounds is not None:
        write_json_atomic(out / "md" / "rounds.json", rounds)
    write_json_atomic(out / SYSTEM_FILE, system.serialize())
    write_json_atomic(record, {"format": RECIPE_FORMAT, "options": resolved.to_dict(),
                               "system": system.fingerprint(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "sessions": []})
    return system, resolved, shared


def _stored_system(run: Path) -> MolecularSystem:
    """The molecule a `trade-md run` directory was started with."""
    return MolecularSystem.deserialize(read_json(run / SYSTEM_FILE))


def _shared(run: Path, system: MolecularSystem, options: RunOptions) -> tuple[Path, RunOptions]:
    """``--boundary-from RUN``: the run whose complete MD and boundary stages this one shares, and the options
    with RUN's T0, temperatures, quick and boundary settings (InputError when given ones contradict them) and, unless
    given, its reference. (Its molecule applies when no system option is given: :func:`_prepare`.)"""
    record = run / RECIPE_FILE
    if not record.is_file():
        raise InputError(f"--boundary-from {run} is not a `trade-md run` directory (no {RECIPE_FILE}); give the --out "
                         "of an earlier run")
    stored = RunOptions.from_dict(read_json(record)["options"])
    saved = _stored_system(run)
    if saved.fingerprint() != system.fingerprint():
        raise SystemMismatchError(f"--boundary-from {run} trained another system ({saved.name}, {saved.n_atoms} atoms)"
                                  "; give the same system options as that run")
    if stage_result(run / "boundary") is None:
        raise InputError(f"--boundary-from {run}: its boundary stage is not complete; finish it first "
                         f"(trade-md run --resume --out {run})")
    inherited = {"t0": stored.t0, "temperatures": stored.temperatures, "quick": stored.quick,
                 "boundary_data": stored.boundary_data}
    for name, value in inherited.items():
        given = getattr(options, name)
        if name == "temperatures" and given is not None:
            given = tuple(sorted({float(t) for t in given}))
        if given is not None and given != value and not (name == "quick" and not given and not value):
            raise InputError(f"--boundary-from {run} was trained with {name.replace('_', '-')} {value}, this run asks "
                             f"for {given}; leave the option out (the shared run's value applies)")
    overrides = dict(options.overrides or {})
    if json.dumps(overrides.get("boundary"), sort_keys=True) != json.dumps((stored.overrides or {}).get("boundary"),
                                                                          sort_keys=True):
        overrides["boundary"] = (stored.overrides or {}).get("boundary")
        overrides = {key: value for key, value in overrides.items() if value is not None}
    reference = options.reference if options.reference is not None else stored.reference
    return run, dataclasses.replace(options, **inherited, overrides=overrides, reference=reference,
                                    boundary_from=str(run))


def _reference(options: RunOptions, system: MolecularSystem) -> Reference | None:
    """The loaded reference (None without one); SystemMismatchError when it is another system's."""
    if options.reference is None:
        return None
    reference = load_reference(options.reference)
    fingerprint = (reference.summary.get("system") or {}).get("fingerprint")
    if fingerprint is not None and json.dumps(fingerprint, sort_keys=True) != json.dumps(system.fingerprint(),
                                                                                         sort_keys=True):
        raise SystemMismatchError(f"--reference {options.reference} was computed for another system "
                                  f"({fingerprint.get('n_atoms')} atoms, {fingerprint.get('residue_names')}) than "
                                  f"this run's {system.name!r}; give a reference of the same molecule and force field")
    return reference


def _record_session(out: Path, options: RunOptions, plan: Any) -> None:
    record = read_json(out / RECIPE_FILE)
    record["options"] = options.to_dict()
    record["plan"] = plan.to_dict()
    record["sessions"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_minutes": plan.budget_minutes,
                               "device": options.device})
    write_json_atomic(out / RECIPE_FILE, record)
