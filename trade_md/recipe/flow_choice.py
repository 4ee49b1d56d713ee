"""The boundary's flow sized to the budget (stage 2 of ``trade-md run``): the budget rule's flow
(:func:`~trade_md.recipe.budget.flow_size`, from the molecule's size) when the boundary's time holds
:data:`MIN_BOUNDARY_STEPS` steps of it, else the first smaller candidate that does: 8 layers at the rule's width, then
8 × 128 (the J1 flow; never smaller). Each candidate is judged by timing :data:`PROBE_STEPS` training steps of it on
this machine before the fit, so a GPU or a fast CPU keeps the rule's flow.

Why steps before size: on alanine tetrapeptide (42 atoms, 35 min of boundary on the development CPU) the rule's 10 × 256
ran 3,989 steps to a validation NLL of −371.3, and 8 × 128 ran 7,562 steps to −384.3, still improving at its end;
alanine dipeptide's boundary (8 × 128) took 24,193 steps to its ESS at T0 of 36 %. When even 8 × 128 falls short of
the minimum, the run says so and names the ``--budget`` that would reach it.

The choice is written to ``boundary/flow_choice.json`` and kept when the run resumes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from trade_md.config import TrainConfig
from trade_md.train import fresh_trainer

__all__ = ["FLOOR", "MIN_BOUNDARY_STEPS", "PROBE_STEPS", "USABLE_SHARE", "candidates", "choose_flow",
           "seconds_per_step"]

MIN_BOUNDARY_STEPS = 20_000
"""Boundary steps the chosen flow must reach in its time (alanine dipeptide's boundary: 24,193)."""
FLOOR: dict[str, int] = {"n_layers": 8, "hidden": 128}
"""The smallest flow the choice falls back to: J1's flow for alanine dipeptide."""
PROBE_STEPS = 8
"""Timed training steps per candidate, after :data:`WARMUP_STEPS` untimed ones."""
WARMUP_STEPS = 2
USABLE_SHARE = 0.85
"""Share of the boundary's time spent in training steps (the rest: validations, checkpoints; 0.81–0.96 measured)."""


def candidates(rule: dict[str, Any]) -> list[dict[str, Any]]:
    """The rule's flow, then 8 layers at its width, then :data:`FLOOR`: largest first, no repeats, none larger than
    the rule's in layers or width."""
    sizes = [(rule["n_layers"], rule["hidden"]), (min(rule["n_layers"], FLOOR["n_layers"]), rule["hidden"]),
             (min(rule["n_layers"], FLOOR["n_layers"]), min(rule["hidden"], FLOOR["hidden"]))]
    unique = list(dict.fromkeys(sizes))
    return [{**rule, "n_layers": layers, "hidden": hidden} for layers, hidden in unique]


def choose_flow(rule: dict[str, Any], minutes: float, budget_minutes: float,
                time_step: Callable[[dict[str, Any]], float]) -> dict[str, Any]:
    """The first of :func:`candidates` whose projected steps in ``minutes`` (``USABLE_SHARE`` of them at
    ``time_step(flow)`` seconds per step) reach :data:`MIN_BOUNDARY_STEPS`, else the last. Returns the record of
    ``flow_choice.json``: chosen flow, the timed candidates, whether the budget falls short, and the budget (minutes,
    rounded up to 10) that would give the chosen flow the minimum when it does."""
    timed = []
    for flow in candidates(rule):
        seconds = float(time_step(flow))
        steps = int(USABLE_SHARE * 60.0 * minutes / seconds)
        timed.append({"flow": flow, "seconds_per_step": seconds, "projected_steps": steps})
        if steps >= MIN_BOUNDARY_STEPS:
            break
    chosen = timed[-1]
    short = chosen["projected_steps"] < MIN_BOUNDARY_STEPS
    needed = 10.0 * math.ceil(budget_minutes * MIN_BOUNDARY_STEPS / max(chosen["projected_steps"], 1) / 10.0)
    return {"chosen": chosen["flow"], "candidates": timed, "min_steps": MIN_BOUNDARY_STEPS, "minutes": minutes,
            "budget_short": short, "budget_for_min_steps": needed if short else None}


def seconds_per_step(config: TrainConfig) -> tuple[float, int]:
    """Wall seconds of one training step of ``config`` (its flow, objectives and batch, on this machine and its
    threads), timed over :data:`PROBE_STEPS` steps of a fresh model, and the energy evaluations spent; nothing is
    written."""
    with fresh_trainer(config) as trainer:
        for _ in range(WARMUP_STEPS):
            trainer.train_step()
        start = time.perf_counter()
        for _ in range(PROBE_STEPS):
            trainer.train_step()
        return (time.perf_counter() - start) / PROBE_STEPS, int(trainer.energy_evaluations)
