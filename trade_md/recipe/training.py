"""Stages 2 and 3 of ``trade-md run``: the boundary fit at T0 and the transfer to the trained range.

**Boundary** (``boundary/``): maximum likelihood on the frames at T0 mixed with reverse KL on the energy at T0
(``nll`` 1.0 + ``kl`` 0.5: NLL alone overfits a finite MD set), the budget rule's flow or a smaller one when the
stage's time holds too few steps of it (:mod:`trade_md.recipe.flow_choice`), Adam 1e-3 with a
cosine schedule fitted to the stage's time (``schedule.minutes``); validation NLL and Kish ESS at T0 about 40 times;
the validation with the lowest NLL is kept (``boundary/best_t0/``), and in the second half of the schedule the fit
stops early after 8 validations in a row without a better NLL or ESS (:mod:`trade_md.stopping`).

**Transfer** (``transfer/``, ``--transfer``, :data:`~trade_md.recipe.options.TRANSFERS`): from ``boundary/best_t0``,
frozen (``trainable: temperature``: only what acts away from T0 trains, so the model at T0 stays the boundary's),
with the thermal scaling layer added; Adam 3e-4 decaying to 10 %, the schedule fitted to the stage's time:

- ``tilt+kl`` (default, the J1 recipe of ``benchmarks/configs/ala2_split.yaml``): the exact tilt of the boundary
  below T0 (``tilt`` over [T_min, T0], energy cap 50) and the reverse KL on the energy above it (``kl_range`` over
  [T0, T_max]);
- ``kl``: ``kl_range`` over the whole trained range;
- ``trade``: the paper's derivative residual (``trade``, centred, energy cap 50, causality ε 0.05);
- ``none``: no training; the boundary with its scaling layer at the harmonic start, written as the transfer model.

Each stage writes its effective config to ``<stage>/train.yaml`` (``trade-md train --config <stage>/train.yaml
--resume`` reruns it alone) and continues an interrupted run from its checkpoint.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml

from trade_md.config import TrainConfig, deep_merge
from trade_md.formats.checkpoint import CHECKPOINT_NAME, read_checkpoint
from trade_md.formats.files import atomic_write_path, read_json, write_json_atomic
from trade_md.recipe.context import RunContext, mark_complete, stage_result
from trade_md.recipe.cost import Meter, record_session
from trade_md.recipe.flow_choice import MIN_BOUNDARY_STEPS, choose_flow, seconds_per_step
from trade_md.recipe.options import trained_range
from trade_md.train import fresh_trainer, train
from trade_md.trainer import BEST_T0_DIR

FLOW_CHOICE_FILE = "flow_choice.json"
FLOW_SIZE_KEYS = frozenset({"n_layers", "hidden", "n_hidden_layers", "n_bins"})
"""``--config`` boundary flow keys that fix the flow's size (the flow choice is then skipped)."""

__all__ = ["FLOW_CHOICE_FILE", "boundary_config", "boundary_stage", "check_stage_configs", "transfer_config",
           "transfer_stage"]


def _common(ctx: RunContext, data: str, out: Path, minutes: float, flow: dict[str, Any]) -> dict[str, Any]:
    plan = ctx.plan
    return {
        "mode": "trade", "out": str(out), "seed": ctx.options.seed, "device": ctx.options.device,
        "temperatures": {"reference": ctx.t0, "range": list(trained_range(ctx.options.temperatures))},
        "data": {"path": data, "validation_fraction": 0.1},
        "flow": {**flow, "seed": ctx.options.seed},
        "schedule": {"steps": 1_000_000, "minutes": round(minutes, 4), "fit_window": plan.fit_window},
        "energy": {"workers": 1, "platform": "auto"},
        "monitor": {"checkpoint_every": plan.checkpoint_every, "validate_every": plan.validate_every,
                    "validations": plan.validations, "ess_samples": plan.ess_samples, "progress": ctx.progress},
    }


def boundary_config(ctx: RunContext, data: str, out: Path, minutes: float,
                    flow: dict[str, Any] | None = None) -> TrainConfig:
    """The boundary's TrainConfig (module docs) with ``flow`` (default: the budget rule's) and the ``--config``
    boundary section merged on."""
    plan = ctx.plan
    values = deep_merge(_common(ctx, data, out, minutes, plan.flow if flow is None else flow), {
        "schedule": {"learning_rate": plan.boundary_learning_rate, "lr_final_fraction": 0.05},
        "objectives": {"nll": {"weight": 1.0, "batch_size": plan.batch_size},
                       "kl": {"weight": 0.5, "batch_size": plan.batch_size}},
        "monitor": {"select": "val_nll", "patience": plan.patience, "patience_from": 0.5, "min_delta": 0.01},
    })
    values = deep_merge(values, copy.deepcopy(ctx.options.overrides.get("boundary", {})))
    return TrainConfig.from_dict(values, source="trade-md run: boundary")


def transfer_config(ctx: RunContext, data: str, out: Path, minutes: float, boundary: str,
                    flow: dict[str, Any] | None = None) -> TrainConfig:
    """The transfer's TrainConfig for ``--transfer`` (module docs) from the boundary checkpoint ``boundary``, with
    that checkpoint's flow (whatever the rule or a ``--config`` boundary section chose for it; ``flow`` when given)
    plus thermal scaling."""
    plan = ctx.plan
    flow = read_checkpoint(boundary)["config"]["flow"] if flow is None else flow
    low, high = trained_range(ctx.options.temperatures)
    batch = plan.batch_size
    objectives = {
        "tilt+kl": {"tilt": {"span": [low, ctx.t0], "ramp": 200, "energy_cap": 50.0, "batch_size": batch},
                    "kl_range": {"span": [ctx.t0, high], "ramp": 200, "batch_size": batch}},
        "kl": {"kl_range": {"ramp": 200, "batch_size": batch}},
        "trade": {"trade": {"weight": 1.0, "ramp": 200, "expectation": "centred", "energy_cap": 50.0,
                            "causality_epsilon": 0.05, "batch_size": batch}},
        "none": {},
    }[ctx.options.transfer]
    if ctx.t0 <= low + 1e-9:
        objectives.pop("tilt", None)
    if ctx.t0 >= high - 1e-9:
        objectives.pop("kl_range", None)
    values = deep_merge(_common(ctx, data, out, minutes, flow), {
        "init_from": boundary, "trainable": "temperature", "flow": {**flow, "thermal_scaling": True},
        "schedule": {"learning_rate": plan.transfer_learning_rate, "lr_final_fraction": 0.1},
        "objectives": objectives, "grid": dict(plan.grid),
        "monitor": {"ess_samples": plan.ess_samples // 2, "progress_temperatures": [low, ctx.t0, high]},
    })
    if ctx.options.transfer == "none":
        values["schedule"]["steps"] = 1
    values = deep_merge(values, copy.deepcopy(ctx.options.overrides.get("transfer", {})))
    return TrainConfig.from_dict(values, source=f"trade-md run: transfer {ctx.options.transfer}")


def check_stage_configs(ctx: RunContext) -> None:
    """InputError, before any work, when the ``--config`` boundary or transfer section makes an invalid training
    config (an unknown key, a value of the wrong kind)."""
    boundary = boundary_config(ctx, "data", ctx.out / "boundary", 1.0)
    transfer_config(ctx, "data", ctx.out / "transfer", 1.0, str(ctx.out / "boundary"), flow=boundary.flow)


def _write_config(config: TrainConfig, stage: Path) -> None:
    with atomic_write_path(stage / "train.yaml") as temp:
        temp.write_text("# effective training config of this `trade-md run` stage; rerun the stage alone with\n"
                        f"#   trade-md train --config {stage / 'train.yaml'} --resume\n"
                        + yaml.safe_dump(config.to_dict(), sort_keys=False))


def _allocation(ctx: RunContext, stage: Path, name: str) -> float:
    """Minutes of stage ``name``: decided when it first starts (kept for a resume with the same budget)."""
    path = stage / "allocation.json"
    if path.is_file():
        stored = read_json(path)
        if math.isclose(stored["budget_minutes"], ctx.plan.budget_minutes):
            return float(stored["minutes"])
    minutes = ctx.allocation_seconds(name) / 60.0
    write_json_atomic(path, {"budget_minutes": ctx.plan.budget_minutes, "minutes": minutes})
    return minutes


def _train(ctx: RunContext, config: TrainConfig, stage: Path) -> dict[str, Any]:
    meter = Meter(stage)
    before = int(read_checkpoint(stage)["energy_evaluations"]) if (stage / CHECKPOINT_NAME).is_file() else 0
    evaluations = before
    try:
        summary = train(config, resume=(stage / CHECKPOINT_NAME).is_file()).summary
        evaluations = int(summary["energy_evaluations"])
    finally:
        if (stage / CHECKPOINT_NAME).is_file() and evaluations == before:
            evaluations = int(read_checkpoint(stage)["energy_evaluations"])
        record_session(stage, meter, energy_evaluations=evaluations - before)
    return summary


def _training_result(summary: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    return {"steps": summary["step"], "fitted_steps": summary["fitted_steps"], "stopped_by": summary["stopped_by"],
            "minutes": config.schedule.minutes, "seconds_per_step": summary["seconds_per_step"],
            "energy_evaluations": summary["energy_evaluations"], "best_validation": summary.get("best_validation"),
            "last": summary.get("last", {}), "fit_gap": summary.get("fit_gap"), "grid": summary.get("grid"),
            "objectives": [o.name for o in config.active_objectives()], "flow": config.flow}


def boundary_stage(ctx: RunContext, header: str, data: str) -> dict[str, Any]:
    """Fit (or resume, or skip) the boundary; returns its result (``model``: the kept checkpoint's directory)."""
    stage = ctx.stage_dir("boundary")
    done = stage_result(stage)
    if done is not None:
        ctx.say(f"{header} boundary at {ctx.t0:g} K: complete ({done['steps']} steps, best at step "
                f"{done['best_validation']['step']:.0f}), skipped" + (f" (shared with {ctx.shared})" if ctx.shared
                                                                        else ""))
        return done
    if ctx.shared is not None:
        raise ValueError("unreachable: a shared boundary is checked complete before the run starts")
    stage.mkdir(parents=True, exist_ok=True)
    minutes = _allocation(ctx, stage, "boundary")
    step = int(read_checkpoint(stage)["step"]) if (stage / CHECKPOINT_NAME).is_file() else 0
    choice = _flow_choice(ctx, data, stage, minutes, fresh=not step)
    config = boundary_config(ctx, data, stage, minutes, choice["chosen"] if choice else None)
    _write_config(config, stage)
    flow = config.flow
    ctx.say(f"{header} boundary at {ctx.t0:g} K: NLL + reverse KL, flow {flow['n_layers']} x {flow['hidden']}, "
            f"{minutes:.1f} min{f' (resuming at step {step})' if step else ''} -> {stage}")
    summary = _train(ctx, config, stage)
    best = summary["best_validation"] or {}
    ctx.note(f"{summary['step']} steps ({summary['stopped_by']}); best validation at step {best.get('step', 0):.0f}: "
             f"NLL {best.get('val_nll', math.nan):.2f}, ESS at T0 {100 * best.get('val_ess', math.nan):.1f} %")
    return mark_complete(stage, {**_training_result(summary, config), "model": str(stage / BEST_T0_DIR),
                                 "flow_choice": choice})


def _flow_choice(ctx: RunContext, data: str, stage: Path, minutes: float, *, fresh: bool) -> dict[str, Any] | None:
    """The flow sized to the boundary's time (:mod:`trade_md.recipe.flow_choice`): stored, else timed on a fresh
    stage; None (the rule's flow) with ``--quick``, a ``--config`` boundary flow size (:data:`FLOW_SIZE_KEYS`), or a
    checkpoint made without one. Other ``--config`` flow keys (``dihedral_windows``) apply to every candidate."""
    path = stage / FLOW_CHOICE_FILE
    if path.is_file():
        return read_json(path)
    sized = FLOW_SIZE_KEYS & set(ctx.options.overrides.get("boundary", {}).get("flow", {}))
    if ctx.plan.quick or sized or not fresh:
        return None
    rule = ctx.plan.flow
    ctx.note(f"timing the flow: the rule's {rule['n_layers']} x {rule['hidden']}, smaller if the boundary's "
             f"{minutes:.1f} min hold fewer than {MIN_BOUNDARY_STEPS:,} steps")
    meter, evaluations = Meter(), []

    def time_step(flow: dict[str, Any]) -> float:
        seconds, spent = seconds_per_step(boundary_config(ctx, data, stage, minutes, flow))
        evaluations.append(spent)
        return seconds

    choice = choose_flow(rule, minutes, ctx.plan.budget_minutes, time_step)
    record_session(stage, meter, energy_evaluations=sum(evaluations))
    chosen = choice["candidates"][-1]
    ctx.note(f"flow {chosen['flow']['n_layers']} x {chosen['flow']['hidden']}: {chosen['seconds_per_step']:.3f} s "
             f"per step, about {chosen['projected_steps']:,} steps")
    if choice["budget_short"]:
        ctx.note(f"warning: fewer than the {MIN_BOUNDARY_STEPS:,} boundary steps the recipe wants; a run with "
                 f"--budget {choice['budget_for_min_steps']:g} would reach them")
    write_json_atomic(path, choice)
    return choice


def transfer_stage(ctx: RunContext, header: str, data: str, boundary: str) -> dict[str, Any]:
    """Train (or resume, or skip) the transfer; returns its result (``model``: the run directory)."""
    stage = ctx.out / "transfer"
    done = stage_result(stage)
    low, high = trained_range(ctx.options.temperatures)
    if done is not None:
        ctx.say(f"{header} transfer ({ctx.options.transfer}) over {low:g}-{high:g} K: complete ({done['steps']} "
                "steps), skipped")
        return done
    stage.mkdir(parents=True, exist_ok=True)
    minutes = _allocation(ctx, stage, "transfer")
    config = transfer_config(ctx, data, stage, minutes, boundary)
    _write_config(config, stage)
    if ctx.options.transfer == "none":
        ctx.say(f"{header} transfer (none): the boundary with the thermal scaling layer at its start -> {stage}")
        summary = _untrained(ctx, config, stage)
        return mark_complete(stage, {**_training_result(summary, config), "model": str(stage)})
    step = int(read_checkpoint(stage)["step"]) if (stage / CHECKPOINT_NAME).is_file() else 0
    ctx.say(f"{header} transfer ({ctx.options.transfer}) over {low:g}-{high:g} K: "
            f"{', '.join(o.name for o in config.active_objectives())}, {minutes:.1f} min"
            f"{f' (resuming at step {step})' if step else ''} -> {stage}")
    summary = _train(ctx, config, stage)
    grid = summary.get("grid") or {}
    shown = ", ".join(f"{t:.0f} K {100 * e:.1f} %" for t, e in zip(grid.get("temperatures", [])[::3],
                                                                  grid.get("ess", [])[::3]))
    ctx.note(f"{summary['step']} steps ({summary['stopped_by']}); grid ESS {shown}")
    return mark_complete(stage, {**_training_result(summary, config), "model": str(stage)})


def _untrained(ctx: RunContext, config: TrainConfig, stage: Path) -> dict[str, Any]:
    """``--transfer none``: the boundary plus its thermal scaling layer, saved as a checkpoint without training."""
    meter = Meter()
    with fresh_trainer(config, stage) as trainer:
        trainer.save_checkpoint()
        summary = trainer.summary(seconds=0.0, steps_run=0)
    write_json_atomic(stage / "summary.json", summary)
    record_session(stage, meter)
    return summary
