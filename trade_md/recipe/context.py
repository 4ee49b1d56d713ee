"""What every stage of ``trade-md run`` reads: the run directory, the system, the resolved options, the budget plan,
the reference, and the clock of the budget (:class:`RunContext`); the stage markers; :class:`RecipeStopped`.

A stage is complete when its directory holds ``stage.json`` (:func:`mark_complete`), written last; ``--resume``
skips complete stages and continues the others from their own checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trade_md.errors import InputError, TradeMDError
from trade_md.formats.files import read_json, write_json_atomic
from trade_md.formats.reference import Reference
from trade_md.recipe.budget import BudgetPlan
from trade_md.recipe.cost import Cost, Meter, stage_cost
from trade_md.recipe.options import RunOptions
from trade_md.systems import RUN_RECORD_FILE, MolecularSystem

__all__ = ["STAGES", "STAGE_FILE", "RecipeStopped", "RunContext", "mark_complete", "run_data", "stage_result"]

logger = logging.getLogger("trade_md.recipe")

STAGES: tuple[str, ...] = ("md", "boundary", "transfer", "check", "report")
"""Stage directories of a run, in order."""
STAGE_FILE = "stage.json"


class RecipeStopped(TradeMDError):
    """The run cannot go on within its budget (e.g. MD basins that do not converge); the message says what to do.
    Finished stages and checkpoints are kept for ``--resume``."""


def stage_result(directory: Path) -> dict[str, Any] | None:
    """The result a complete stage recorded, or None when the stage is not complete."""
    path = directory / STAGE_FILE
    return read_json(path)["result"] if path.is_file() else None


def run_data(run: Path) -> Path:
    """The T0 dataset directory a ``trade-md run`` trained on: its MD stage's frames (``md/round_0`` for one round,
    ``md/pooled`` for several), its ``--boundary-data``, or those of its ``--boundary-from`` run. InputError for a
    directory that is not a run, or whose data stage is unfinished."""
    run = Path(run)
    record = run / RUN_RECORD_FILE
    if not record.is_file():
        raise InputError(f"{run} is not a `trade-md run` directory (it has no {RUN_RECORD_FILE}); give the --out "
                         "directory of `trade-md run`")
    result = stage_result(run / "md")
    if result is None:
        shared = read_json(record)["options"].get("boundary_from")
        if shared:
            return run_data(Path(shared))
        raise InputError(f"{run} holds no finished data stage; finish it with `trade-md run --resume --out {run}`")
    data = Path(result["data"])
    if not data.is_dir():
        raise InputError(f"{run}'s data {data} is not there; the path is relative to the directory the run was made "
                         "in: work from there")
    return data


def mark_complete(directory: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write ``directory/stage.json`` (last: the stage is complete once it exists); returns ``result``."""
    write_json_atomic(directory / STAGE_FILE, {"complete": True, "result": result})
    return result


@dataclass
class RunContext:
    """out: the run directory; system; options: resolved (:class:`RunOptions`); plan: the budget rule's output;
    reference: loaded reference or None; shared: the run whose MD and boundary this one shares (--boundary-from) or
    None; say: one line per message; progress: show progress bars."""

    out: Path
    system: MolecularSystem
    options: RunOptions
    plan: BudgetPlan
    reference: Reference | None
    shared: Path | None
    say: Callable[[str], None]
    progress: bool

    @property
    def t0(self) -> float:
        return float(self.options.t0)

    def stage_dir(self, name: str) -> Path:
        """Where stage ``name`` writes (a shared run's for the MD and boundary stages of --boundary-from)."""
        if self.shared is not None and name in ("md", "boundary"):
            return self.shared / name
        return self.out / name

    def cost(self, name: str, without: Meter | None = None) -> Cost:
        """The summed sessions of stage ``name`` so far, without the running session of ``without``."""
        return stage_cost(self.stage_dir(name), without)

    def spent_seconds(self, before: str) -> float:
        """Wall seconds of the stages before ``before`` (all sessions)."""
        names = STAGES[: STAGES.index(before)]
        return sum(self.cost(name).wall_s for name in names)

    def allocation_seconds(self, name: str) -> float:
        """Wall seconds stage ``name`` may use (the rule of :mod:`trade_md.recipe.budget`): MD and check get their
        shares (the MD's extension, up to the plan's ``md_max_minutes``, is decided by the MD stage); the boundary and
        the transfer share what the stages before them and the check leave, in proportion to their shares (so an MD
        extension costs both, and a boundary that stops early leaves its time to the transfer), each at least 10 %
        of the budget. When every stage keeps to its time, each gets its share."""
        budget, shares = 60.0 * self.plan.budget_minutes, self.plan.shares
        if name in ("md", "check"):
            return shares[name] * budget
        if name in ("boundary", "transfer"):
            left = budget - self.spent_seconds(name) - shares["check"] * budget
            part = shares["boundary"] / (shares["boundary"] + shares["transfer"]) if name == "boundary" else 1.0
            return max(0.1 * budget, left * part)
        return 0.0

    def note(self, line: str) -> None:
        self.say(f"      {line}")
