"""The budget rule of ``trade-md run``: one function, :func:`plan_budget`, turns ``--budget`` and the molecule's size
into every size and share of the run. The README's "Budget rule" section states the same rule.

**Stage shares** of the budget B (wall-clock minutes, the whole job; :func:`stage_shares`): for a molecule of up to
d = 60 internal degrees of freedom (d = 3N − 6; alanine dipeptide) MD at T0 15 %, boundary fit 40 %, transfer 35 %,
self-check and evaluation 10 % (:data:`SHARES`). A larger molecule needs more T0 data: MD takes 0.5 % more per degree of
freedom beyond 60, at most 30 % (d ≥ 90: capped PHE, alanine tetrapeptide), and the boundary gives up what MD gains.
Measured on capped PHE (d = 90, results §0e): with 38 ns of MD (15 %) the boundary overfit its frames and the ESS was
about 1 % at 300–600 K; with 76 ns (about what 30 % of 120 min simulates on §0c's CPU) 3.9–4.3 %. MD may grow by
:data:`MD_EXTENSION_SHARE` (20 % of B) when its basins are not converged; ``--config`` ``md: {share: ...}`` sets its
share. The check gets its share; the boundary and the transfer share what MD (and, for the transfer, the boundary)
left, in proportion to their shares, each at least 10 % of B: an MD extension shortens both (before, it came out of the
boundary alone, which on the tetrapeptide left it the 10 % floor), and a boundary that stops early leaves its time to
the transfer. Transfer variants trained from one boundary (``--boundary-from``) still train for the same time.

**Flow size** from the degrees of freedom d = 3N − 6 of an N-atom molecule (the J1 flow for alanine dipeptide, d = 60):
``hidden = min(512, 64 ⌈d / 30⌉)``, ``n_layers = min(12, 8 + 2 max(0, ⌈log2(d / 60)⌉))``, two hidden layers of
the conditioners, 8 spline bins, stiff dihedrals on windows (``dihedral_windows``, :mod:`trade_md.ic`): 8 × 128 for
22 atoms, 10 × 256 for 42 atoms, 12 × 512 for 82 and more. On 42 atoms a boundary step (batch 256) took 0.41 s
with 8 × 128, 0.48 s with 10 × 128 and 0.60 s with 10 × 256 (one thread, development CPU): the layers and the
coordinates cost more than the width. The boundary stage then sizes this flow to its time
(:mod:`trade_md.recipe.flow_choice`). ``--quick``: 4 × 32, one hidden layer.

**Batches**: 256 samples or frames per objective and step (``--quick`` 64); validation ESS at T0 from 4,000 model
samples (256), expectation grid of 16 nodes × 1,000 samples refreshed every 250 steps (6 × 128 every 25).

**Step counts** are not fixed: each training stage gets its time share as ``schedule.minutes``, and the trainer fits
the cosine schedule to the steps that time reaches, measured over its first ``fit_window`` steps
(:class:`~trade_md.config.Schedule`). The boundary also stops early when, in the second half of its schedule, 8
validations in a row (of about 40) bring neither a lower validation NLL nor a higher ESS at T0, and keeps its best
validation.

**MD length** from the MD share and the MD speed measured on the molecule (:func:`md_length`): one replica per CPU
core, at most 8 (``--quick``: one), 10 % of the time kept for start-up, the rest simulated (2 fs steps with 4 amu
hydrogens, :data:`trade_md.recipe.md_stage.MD_TIMESTEP_FS`); equilibration 10 % of each
replica, at most 100 ps; a frame every 1 ps, or more often for short runs (at least 10,000 frames, at most every
0.1 ps). A first round fills half the share at the speed of one replica measured alone; further rounds fill the rest at
the speed the rounds so far reached (with every replica running, on a CPU maybe shared), so MD keeps to its share.

**Self-check samples** per temperature from the check share and the sampling speed measured on the trained model
(:func:`check_samples`): 70 % of the share spent drawing, between 2,000 and 300,000 samples per temperature.

The plan (:class:`BudgetPlan`) is recorded in the run's ``recipe.json`` and its report.

>>> plan = plan_budget(22, 120.0)
>>> plan.flow["n_layers"], plan.flow["hidden"], plan.stage_minutes["boundary"]
(8, 128, 48.0)
>>> plan_budget(42, 120.0).flow["n_layers"], plan_budget(42, 120.0).flow["hidden"]
(10, 256)
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from trade_md.errors import InputError

__all__ = [
    "DEFAULT_BUDGET_MINUTES",
    "MAX_CHECK_SAMPLES",
    "MD_EXTENSION_SHARE",
    "MD_FIRST_ROUND_SHARE",
    "MD_MAX_SHARE",
    "MD_SHARE_PER_DOF",
    "MIN_BUDGET_MINUTES",
    "QUICK_BUDGET_MINUTES",
    "SHARES",
    "BudgetPlan",
    "check_samples",
    "flow_size",
    "md_length",
    "md_round",
    "plan_budget",
    "stage_shares",
]

SHARES: dict[str, float] = {"md": 0.15, "boundary": 0.40, "transfer": 0.35, "check": 0.10}
"""Share of the budget of each stage for a molecule of up to :data:`REFERENCE_DOF` internal degrees of freedom (the
report takes no measurable time); :func:`stage_shares` for any molecule."""
REFERENCE_DOF = 60
"""Internal degrees of freedom (3N − 6) up to which :data:`SHARES` hold: alanine dipeptide's, where they were set."""
MD_SHARE_PER_DOF = 0.005
"""The MD share grows by this much per internal degree of freedom beyond :data:`REFERENCE_DOF` ..."""
MD_MAX_SHARE = 0.30
"""... up to this share of the budget (reached at d = 90)."""
MD_EXTENSION_SHARE = 0.20
"""MD may extend by up to this share of the budget beyond its own when its basins are not converged (at 15 % the
tetrapeptide's default run stopped: it needed 57.8 of 120 min, results §0b)."""
MD_FIRST_ROUND_SHARE = 0.5
"""Share of the MD share the first MD round fills at the speed measured on one replica alone."""
DEFAULT_BUDGET_MINUTES = 120.0
"""The whole job on a 2-core laptop CPU."""
QUICK_BUDGET_MINUTES = 1.0
"""``--quick``: the rule's time; start-up, energy workers and figures add about a minute on the development CPU."""
MIN_BUDGET_MINUTES = 10.0
"""Smallest budget of a run without ``--quick``."""
MAX_CHECK_SAMPLES = 300_000
"""Self-check samples per temperature at most (the project's standard for claims)."""
MIN_CHECK_SAMPLES = 2_000
CHECK_DRAW_SHARE = 0.7
"""Share of the check stage's time spent drawing samples; the rest goes to metrics, figures and the report."""
MAX_MD_REPLICAS = 8
"""MD replicas at most (each equilibrates on its own; more, shorter ones buy nothing)."""
MD_STARTUP_SHARE = 0.1
"""Share of the MD time kept for starting processes, minimisation and pooling the frames."""


@dataclass
class BudgetPlan:
    """The output of :func:`plan_budget` (module docs): the inputs (budget_minutes, n_atoms, n_dof, cores, quick)
    and what follows from them. stage_minutes: nominal wall time of each stage; flow: ConditionalSplineFlow
    arguments; batch_size: per objective and step; the monitor, grid and MD settings; learning rates."""

    budget_minutes: float
    n_atoms: int
    n_dof: int
    cores: int
    quick: bool
    shares: dict[str, float]
    stage_minutes: dict[str, float]
    md_max_minutes: float
    flow: dict[str, Any]
    batch_size: int
    ess_samples: int
    validations: int
    validate_every: int
    checkpoint_every: int
    patience: int
    fit_window: int
    grid: dict[str, int]
    md_replicas: int
    md_min_ns: float
    boundary_learning_rate: float = 1.0e-3
    transfer_learning_rate: float = 3.0e-4
    check_samples: tuple[int, int] = (MIN_CHECK_SAMPLES, MAX_CHECK_SAMPLES)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (for ``recipe.json`` and the report)."""
        values = asdict(self)
        values["check_samples"] = list(self.check_samples)
        return values


def flow_size(n_dof: int, quick: bool = False) -> dict[str, Any]:
    """ConditionalSplineFlow arguments for a molecule of ``n_dof`` internal degrees of freedom (module docs)."""
    if quick:
        return {"n_layers": 4, "hidden": 32, "n_hidden_layers": 1, "n_bins": 8, "dihedral_windows": True}
    hidden = min(512, 64 * math.ceil(n_dof / 30))
    n_layers = min(12, 8 + 2 * max(0, math.ceil(math.log2(max(n_dof, 1) / 60))))
    return {"n_layers": n_layers, "hidden": hidden, "n_hidden_layers": 2, "n_bins": 8, "dihedral_windows": True}


def stage_shares(n_dof: int, md_share: float | None = None) -> dict[str, float]:
    """Share of the budget of each stage for a molecule of ``n_dof`` internal degrees of freedom (module docs): MD
    15 % + 0.5 % per degree of freedom beyond :data:`REFERENCE_DOF`, at most :data:`MD_MAX_SHARE`, or ``md_share``;
    the boundary gives up what MD takes beyond 15 %.

    >>> stage_shares(60)["md"], stage_shares(72)["md"], stage_shares(72)["boundary"], stage_shares(120)["md"]
    (0.15, 0.21, 0.34, 0.3)
    """
    if md_share is None:
        md_share = min(MD_MAX_SHARE, SHARES["md"] + MD_SHARE_PER_DOF * max(0, n_dof - REFERENCE_DOF))
    md = round(md_share, 4)
    return {**SHARES, "md": md, "boundary": round(SHARES["boundary"] - (md - SHARES["md"]), 4)}


def plan_budget(n_atoms: int, budget_minutes: float | None = None, *, quick: bool = False,
                cores: int | None = None, md_share: float | None = None) -> BudgetPlan:
    """The budget rule (module docs) for a molecule of ``n_atoms`` atoms and ``budget_minutes`` of wall time
    (default :data:`DEFAULT_BUDGET_MINUTES`, with ``quick`` :data:`QUICK_BUDGET_MINUTES`); cores: CPU cores for MD
    replicas (default: those this process may use); md_share: MD's share of the budget instead of the rule's
    (``--config`` ``md: {share: ...}``). InputError when the budget is too small."""
    if budget_minutes is None:
        budget_minutes = QUICK_BUDGET_MINUTES if quick else DEFAULT_BUDGET_MINUTES
    if not (isinstance(budget_minutes, (int, float)) and math.isfinite(budget_minutes) and budget_minutes > 0):
        raise InputError(f"--budget {budget_minutes!r} is invalid; give the wall time of the whole job in minutes, "
                         f"e.g. --budget {DEFAULT_BUDGET_MINUTES:g}")
    if not quick and budget_minutes < MIN_BUDGET_MINUTES:
        raise InputError(f"--budget {budget_minutes:g} min is too small for a run (at least {MIN_BUDGET_MINUTES:g} "
                         "min); raise --budget, or use --quick for a first look")
    if n_atoms < 3:
        raise InputError(f"a molecule of {n_atoms} atoms has no internal coordinates to model; give one of >= 3 atoms")
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n_dof = 3 * n_atoms - 6
    shares = stage_shares(n_dof, md_share)
    return BudgetPlan(
        budget_minutes=float(budget_minutes), n_atoms=int(n_atoms), n_dof=n_dof, cores=int(cores), quick=quick,
        shares=shares, stage_minutes={name: share * budget_minutes for name, share in shares.items()},
        md_max_minutes=(shares["md"] + MD_EXTENSION_SHARE) * budget_minutes,
        flow=flow_size(n_dof, quick), batch_size=64 if quick else 256, ess_samples=256 if quick else 4000,
        validations=10 if quick else 40, validate_every=10 if quick else 100,
        checkpoint_every=25 if quick else 250, patience=0 if quick else 8, fit_window=10 if quick else 30,
        grid={"nodes": 6, "samples": 128, "refresh_every": 25} if quick else
        {"nodes": 16, "samples": 1000, "refresh_every": 250},
        md_replicas=1 if quick else min(int(cores), MAX_MD_REPLICAS), md_min_ns=0.05 if quick else 1.0,
    )


def md_length(plan: BudgetPlan, seconds: float, steps_per_second: float, *, timestep_fs: float = 1.0
              ) -> dict[str, float]:
    """MD settings that fill ``seconds`` of wall time at the measured speed of one replica (steps/s): ``ns`` (total
    over replicas, production only), ``replicas``, ``equilibration_ps`` and ``frame_interval_ps`` (module docs)."""
    replica_ps = steps_per_second * timestep_fs * 1e-3 * seconds * (1.0 - MD_STARTUP_SHARE)
    equilibration_ps = min(100.0, 0.1 * replica_ps)
    return md_round(plan, plan.md_replicas * (replica_ps - equilibration_ps) / 1000.0)


def md_round(plan: BudgetPlan, ns: float) -> dict[str, float]:
    """The settings of an MD round of ``ns`` production ns in all: the plan's replicas, equilibration 10 % of each
    replica's time (at most 100 ps), a frame every ps or at least 10,000 frames (at most every 0.1 ps)."""
    production_ps = ns * 1000.0 / plan.md_replicas
    frame_interval_ps = min(1.0, max(0.1, math.floor(10.0 * ns * 1000.0 / 10_000) / 10.0))
    return {"ns": ns, "replicas": plan.md_replicas, "equilibration_ps": round(min(100.0, production_ps / 9.0), 1),
            "frame_interval_ps": frame_interval_ps}


def check_samples(plan: BudgetPlan, seconds: float, samples_per_second: float, n_temperatures: int) -> int:
    """Self-check samples per temperature that fit ``seconds`` at the measured sampling speed (module docs)."""
    low, high = plan.check_samples
    n = int(CHECK_DRAW_SHARE * seconds * samples_per_second / max(n_temperatures, 1))
    return int(min(high, max(low, n)))
