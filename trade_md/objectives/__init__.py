"""Training objectives: one loss term per module, each with its weight, schedule and (where it acts away from T0)
temperature span; the trainer loops over a list of them (:mod:`trade_md.trainer`).

============== ===================================================================================================
key            term
============== ===================================================================================================
nll            maximum likelihood on the data at T0 (:mod:`~trade_md.objectives.nll`)
kl             reverse KL on the energy at T0 (:mod:`~trade_md.objectives.kl`)
trade          the paper's derivative TRADE residual over the trained range (:mod:`~trade_md.objectives.trade_residual`)
kl_range       reverse KL on the energy over a temperature span (:mod:`~trade_md.objectives.kl_range`)
tilt           importance-weighted ML of the exact tilt q0 e^{−(β − β0) U} / Z (:mod:`~trade_md.objectives.tilt`)
reweighted_nll ML at T of the T0 frames reweighted to T (:mod:`~trade_md.objectives.reweighted_nll`)
============== ===================================================================================================

:data:`OBJECTIVES` lists them in the order the trainer evaluates them each step (which fixes the order of the
random draws, so that a run is reproducible whatever the order of the keys in a config file). Also here:
:class:`~trade_md.objectives.context.TrainingContext` (what they draw from, sharded for data-parallel runs) and
:class:`~trade_md.objectives.expectation_grid.ExpectationGrid` (E_T[U], ESS and causality weights on a grid).
"""

from __future__ import annotations

from trade_md.objectives.base import Objective
from trade_md.objectives.context import TrainingContext
from trade_md.objectives.expectation_grid import ExpectationGrid
from trade_md.objectives.kl import ReverseKL
from trade_md.objectives.kl_range import RangeReverseKL
from trade_md.objectives.nll import NLL
from trade_md.objectives.reweighted_nll import ReweightedNLL
from trade_md.objectives.tilt import Tilt
from trade_md.objectives.trade_residual import TradeResidual

__all__ = [
    "NLL",
    "OBJECTIVES",
    "REMOVED_OBJECTIVES",
    "ExpectationGrid",
    "Objective",
    "RangeReverseKL",
    "ReverseKL",
    "ReweightedNLL",
    "Tilt",
    "TradeResidual",
    "TrainingContext",
]

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (NLL, ReverseKL, TradeResidual, RangeReverseKL, Tilt, ReweightedNLL)
}
"""Objective classes by config key, in evaluation order."""

REMOVED_OBJECTIVES: dict[str, str] = {
    "fkl_range": "the forward KL to the Boltzmann density over a span was removed: it never gave a positive result "
                 "(benchmarks/results/HISTORY.md, ala2_pt/: the cis mode did not grow, the ESS above 600 K did not "
                 "improve); use kl_range and reweighted_nll",
}
"""Objectives that older configs and checkpoints name, with why they are gone."""
