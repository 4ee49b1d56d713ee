"""``trade-md run``: from a molecule and data at one temperature to a transferable generator, in one command and a
stated budget.

Stages, each in its own directory of the run (``--out``, default ``runs/main``), each resumable and marked complete
by its ``stage.json`` (``--resume`` skips complete stages and continues the interrupted one from its checkpoints):

1. ``md/`` (:mod:`~trade_md.recipe.md_stage`): Langevin MD at T0 only, as long as the MD share of the budget allows
   at the measured MD speed, with the basin-convergence report; unconverged basins extend the MD within the budget,
   or stop the run with what to do. ``--boundary-data DIR`` takes a dataset instead (e.g. parallel tempering from
   ``trade-md remd-data``), and the report counts the MD behind it.
2. ``boundary/`` (:mod:`~trade_md.recipe.training`): NLL + reverse-KL fit at T0, schedule fitted to its time, early
   stopping on the validation NLL and ESS at T0; the best validation is kept (``boundary/best_t0/``).
3. ``transfer/``: the frozen boundary transferred over the trained range (``--transfer``: ``tilt+kl`` default,
   ``kl``, ``trade``: the paper's derivative residual, ``none``), schedule fitted to its time.
4. ``check/`` (:mod:`~trade_md.recipe.check`): per temperature, Kish ESS, Pareto tail shape k and log Z(T) − log Z(T0)
   from the model's own importance weights (no reference needed); with ``--reference`` (default: the built-in
   system's shipped one) the same samples are evaluated against it (ΔF, JS, ⟨U⟩, log Z).
5. ``report/`` (:mod:`~trade_md.recipe.report`): ``summary.md`` and ``report.json``: results, the cost of each stage
   (wall, CPU, energy evaluations, simulated ns) and the budget rule's inputs and outputs.

Sizes, step counts and sample counts follow from the number of atoms and ``--budget`` by the one rule of
:mod:`~trade_md.recipe.budget`. Library code only: messages go to the ``say`` callback of :func:`run_recipe`,
progress bars through :mod:`trade_md.progress`; the command line is :mod:`trade_md.cli.run`.

An ablation of the transfer at equal budget from one boundary is one command per variant::

    trade-md run --out runs/a                                   # tilt+kl, and the shared MD + boundary
    trade-md run --out runs/a_trade --boundary-from runs/a --transfer trade
    trade-md run --out runs/a_kl --boundary-from runs/a --transfer kl
"""

from __future__ import annotations

from trade_md.recipe.budget import (
    DEFAULT_BUDGET_MINUTES,
    QUICK_BUDGET_MINUTES,
    SHARES,
    BudgetPlan,
    flow_size,
    plan_budget,
    stage_shares,
)
from trade_md.recipe.context import STAGES, RecipeStopped
from trade_md.recipe.options import DEFAULT_TEMPERATURES, TRANSFERS, RunOptions, trained_range
from trade_md.recipe.pipeline import RECIPE_FILE, run_recipe

__all__ = [
    "DEFAULT_BUDGET_MINUTES",
    "DEFAULT_TEMPERATURES",
    "QUICK_BUDGET_MINUTES",
    "RECIPE_FILE",
    "SHARES",
    "STAGES",
    "TRANSFERS",
    "BudgetPlan",
    "RecipeStopped",
    "RunOptions",
    "flow_size",
    "plan_budget",
    "run_recipe",
    "stage_shares",
    "trained_range",
]
