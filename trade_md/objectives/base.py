"""What every training objective is: a loss term with a weight and a schedule, and the checks of its settings.

An objective is a frozen dataclass of its settings (``weight``, the step ``start`` of its schedule and the
``ramp`` over which its weight rises linearly from 0, plus its own fields) with one method that matters,
``loss(context) -> (loss, logged terms)``: ``loss`` a 0-dim tensor (the term's global batch mean, unweighted),
``logged`` floats for the history. The :class:`~trade_md.objectives.context.TrainingContext` it receives hands out
model samples, data frames and energies for this process's share of the global batch and reduces per-point
values to global means, so an objective reads the same on one process and under ``torchrun``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from trade_md.errors import InputError
from trade_md.trade import ramp

if TYPE_CHECKING:                                   # annotations only: the context module imports nothing of ours
    from trade_md.objectives.context import TrainingContext

__all__ = ["Objective", "check", "is_count", "is_number", "is_span"]


def is_count(value: Any, minimum: int) -> bool:
    """Whether ``value`` is an int (not a bool) >= ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_number(value: Any, low: float = -math.inf, high: float = math.inf, *, open_low: bool = False,
              open_high: bool = False) -> bool:
    """Whether ``value`` is a finite-or-inf real number (int or float, not bool) in the given interval."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return False
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    return above and below


def is_span(value: Any) -> bool:
    """Whether ``value`` is ``[low, high]`` K with 0 < low < high."""
    return (isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(v, 0.0, open_low=True)
                                                                         for v in value) and value[0] < value[1])


def check(ok: bool, where: str, name: str, value: Any, requirement: str) -> None:
    """Raise :class:`InputError` ``"<where>: <name> = <value> is invalid; it must be <requirement>"`` unless ``ok``."""
    if not ok:
        raise InputError(f"{where}: {name} = {value!r} is invalid; it must be {requirement}")


@dataclass(frozen=True)
class Objective(ABC):
    """A loss term (see the module docs). Class attributes describe it to the trainer and the config:

    name: its key under ``objectives:``; acts_away_from_t0: it trains the model at temperatures other than T0 (the
    trainer refreshes the expectation grid only while such a term is on); trains_t0: it can form the boundary at
    T0 (a run that trains every weight needs one); needs_data: it reads the data frames at T0.
    """

    name: ClassVar[str] = "objective"
    acts_away_from_t0: ClassVar[bool] = False
    trains_t0: ClassVar[bool] = False
    needs_data: ClassVar[bool] = False

    weight: float = 1.0
    start: int = 0
    ramp: int = 0

    def factor(self, step: int) -> float:
        """The term's weight at ``step``: ``weight`` × 0 before ``start``, rising linearly over ``ramp`` steps."""
        return self.weight * ramp(step, self.start, self.ramp)

    @property
    def needs_data_energies(self) -> bool:
        """Whether the term reads the energies of the data frames (evaluated once when training starts)."""
        return False

    @property
    def needs_grid_estimates(self) -> bool:
        """Whether the term reads the grid's E[U], which must then be refreshed before its first use."""
        return False

    @abstractmethod
    def loss(self, context: TrainingContext) -> tuple[Tensor, dict[str, float]]:
        """``(loss, logged)`` of this step (module docs)."""

    def check(self, where: str, trained_range: Sequence[float] | None) -> None:
        """Raise :class:`InputError` naming the first setting with an impossible value (``where``: e.g.
        ``"config: objectives.tilt"``); ``trained_range``: ``[T_min, T_max]`` K of the run, or None."""
        check(is_number(self.weight, 0.0), where, "weight", self.weight, "a number >= 0")
        check(is_count(self.start, 0), where, "start", self.start, "an integer >= 0 (a step)")
        check(is_count(self.ramp, 0), where, "ramp", self.ramp, "an integer >= 0 (steps)")
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in ("batch_size", "temperatures_per_step"):
                check(is_count(value, 1), where, field.name, value, "an integer >= 1")
            elif field.name == "energy_cap" and value is not None:
                check(is_number(value, 0.0, open_low=True), where, field.name, value,
                      "a number > 0 (k_B T), or absent to use energy.cap")
            elif field.name == "span" and value is not None:
                low, high = trained_range if trained_range is not None else (math.nan, math.nan)
                check(is_span(value) and low <= value[0] and value[1] <= high, where, "span", value,
                      f"[low, high] in K with {low} <= low < high <= {high} (the trained range), or absent")

    def span_or(self, trained_range: Sequence[float]) -> tuple[float, float]:
        """``(low, high)`` K where the term draws its temperatures: its ``span``, else the trained range."""
        span = getattr(self, "span", None)
        low, high = trained_range if span is None else span
        return float(low), float(high)
