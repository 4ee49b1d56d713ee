"""When a training run ends (:class:`StopRules`, used by :class:`trade_md.trainer.Trainer`, which owns the loop).

- ``schedule.steps``: the schedule's length and the most steps a run takes;
- ``schedule.minutes``: a wall-time budget, summed over resumed sessions. With ``schedule.fit_window`` > 0 the
  schedule's length is fitted to it once: after :data:`FIT_WARMUP` steps (from the first step of a term that acts
  away from T0, or from the step a session resumed at) the trainer times ``fit_window`` steps; the cost of a step is
  that window's time without grid refreshes and validations, plus their mean cost at their cadence; the fitted
  length is the steps that fit the rest of the budget with a 5 % margin (at most ``steps``), so the cosine decays
  over the steps the run reaches. After :data:`REFIT_AT` of the fitted steps it is fitted once more, from the mean
  cost of every step since the first fit (refreshes and validations included as they came): fitted from the window
  alone, three ``trade-md run`` transfers ended 11–26 % of their minutes early. With ``monitor.validations`` the
  validation cadence is then set to give about that many validations;
- early stopping (``monitor.select: val_nll`` with ``monitor.patience``): the validation with the lowest
  validation NLL is the best (the trainer keeps its checkpoint); after ``patience`` validations in a row that
  neither lowered the NLL by ``min_delta`` nor raised the ESS at T0 above its highest so far, the run stops;
  validations before ``patience_from`` × the schedule's length do not count (at a high learning rate the validation
  NLL is noisy, and a cosine schedule improves it most as the rate decays);
- how far the fit has moved onto its training frames (:func:`fit_gap`, read by a run's report).

>>> from trade_md.config import MonitorConfig, Schedule
>>> rules = StopRules(Schedule(steps=1000, minutes=1.0), MonitorConfig(select="val_nll", patience=2))
>>> rules.fit(per_step=0.1, step=40, remaining=50.0), rules.validate_every
(515, 500)
>>> [rules.track({"val_nll": v, "val_ess": 0.1}, step) for step, v in ((100, -5.0), (200, -4.0), (300, -4.5))]
[True, False, False]
>>> rules.stopped_by
'early stopping'
"""

from __future__ import annotations

import math
import time
from typing import Any

from trade_md.config import MonitorConfig, Schedule

__all__ = ["FIT_GAP_VALIDATIONS", "FIT_WARMUP", "REFIT_AT", "StopRules", "fit_gap"]

FIT_WARMUP = 10
"""Steps left out before the timing window of a fitted schedule (one-off warm-up, e.g. of GPU kernels)."""
FIT_MARGIN = 0.95
"""Share of the remaining budget the fitted schedule plans to use."""
REFIT_AT = 0.25
"""Share of the fitted schedule (counted from the first fit) after which its length is fitted again."""


class StopRules:
    """The state of the stopping rules of one run (module docs): ``total_steps`` (the schedule's length),
    ``fitted_steps`` (None until fitted), ``validate_every``, ``seconds`` (training wall time of finished sessions),
    ``best_validation`` (step, val_nll, val_ess of the best validation), ``stopped_by`` (why the run ended)."""

    def __init__(self, schedule: Schedule, monitor: MonitorConfig) -> None:
        self.schedule, self.monitor = schedule, monitor
        self.total_steps = schedule.steps
        self.fitted_steps: int | None = None
        self.validate_every = monitor.validate_every
        self.seconds = 0.0
        self.best_validation: dict[str, float] = {}
        self.best_val_ess = -1.0
        self.stale_validations = 0
        self.stopped_by: str | None = None
        self._window: tuple[float, int, float, float] | None = None
        self._refit: tuple[float, int, int] | None = None       # (time and step of the first fit, step to refit at)
        self._refitted = False

    @property
    def budget_seconds(self) -> float:
        return math.inf if self.schedule.minutes is None else 60.0 * self.schedule.minutes

    def fit_start(self, step: int, first_away_start: int) -> int | None:
        """The step at which this session's timing window opens (None: no fit to do)."""
        if self.schedule.minutes is None or self.schedule.fit_window < 1 or self.fitted_steps is not None:
            return None
        return max(first_away_start, step) + FIT_WARMUP

    def open_window(self, step: int, refresh_seconds: float, validation_seconds: float) -> None:
        """Start timing at ``step`` (the trainer's refresh and validation seconds so far are left out later)."""
        self._window = (time.perf_counter(), step, refresh_seconds, validation_seconds)

    def close_window(self, step: int, remaining: float, *, refresh_seconds: float, refreshes: int,
                     refresh_every: int, validation_seconds: float, validations: int) -> int | None:
        """Once ``fit_window`` steps are timed: fit the schedule to ``remaining`` seconds (:meth:`fit`) from the
        window's time without the refreshes and validations in it, plus their mean costs (``refresh_seconds`` and
        ``validation_seconds`` so far, over ``refreshes`` and ``validations``; refreshes 0: none are due) and
        return the fitted length; None while the window is open or when there is none. At :data:`REFIT_AT` of the
        fitted schedule: the length fitted again from the mean cost of the steps since the first fit."""
        if self._refit is not None and step >= self._refit[2]:
            started, first, _ = self._refit
            self._refit, self._refitted = None, True
            return self.fit(per_step=(time.perf_counter() - started) / max(step - first, 1), step=step,
                            remaining=remaining)
        if self._window is None or step - self._window[1] < self.schedule.fit_window:
            return None
        started, first, refresh_before, validation_before = self._window
        self._window = None
        left_out = (refresh_seconds - refresh_before) + (validation_seconds - validation_before)
        per_step = max(time.perf_counter() - started - left_out, 1e-9) / max(step - first, 1)
        return self.fit(per_step=per_step, step=step, remaining=remaining,
                        refresh_seconds=refresh_seconds / refreshes if refreshes else None,
                        refresh_every=refresh_every,
                        validation_seconds=validation_seconds / validations if validations else None)

    def fit(self, *, per_step: float, step: int, remaining: float, refresh_seconds: float | None = None,
            refresh_every: int = 0, validation_seconds: float | None = None) -> int:
        """The fitted schedule length for steps of ``per_step`` seconds (refreshes and validations left out; their
        mean costs ``refresh_seconds`` every ``refresh_every`` steps and ``validation_seconds`` are added at their
        cadence) and ``remaining`` seconds of budget at ``step``; call :meth:`set_fitted` with it."""
        if refresh_seconds is not None and refresh_every > 0:
            per_step += refresh_seconds / refresh_every
        validations = self.monitor.validations
        if validation_seconds is not None:
            cadence = self.validate_every if validations < 1 else max(1, int(remaining / per_step) // validations)
            per_step += validation_seconds / cadence
        reachable = step + max(int(FIT_MARGIN * remaining / per_step), 1)
        fitted = max(step + 1, min(self.schedule.steps, reachable))
        self.set_fitted(fitted, step)
        return fitted

    def set_fitted(self, fitted: int, step: int) -> None:
        """Use ``fitted`` as the schedule's length from ``step`` on (and the validation cadence it implies)."""
        self.fitted_steps = self.total_steps = int(fitted)
        if not self._refitted:
            self._refit = (time.perf_counter(), step, step + max(1, int(REFIT_AT * (self.total_steps - step))))
        if self.monitor.validations > 0:
            self.validate_every = max(1, (self.total_steps - step) // self.monitor.validations)

    def reason(self, step: int, seconds: float) -> str | None:
        """Why the run ends before ``step`` after ``seconds`` of training (all sessions), or None."""
        if self.stopped_by is None:
            if step >= self.total_steps:
                self.stopped_by = "fitted steps" if self.fitted_steps is not None else "steps"
            elif seconds >= self.budget_seconds:
                self.stopped_by = "time budget"
        return self.stopped_by

    def track(self, shown: dict[str, float], step: int) -> bool:
        """Record a validation (``val_nll``, ``val_ess``); True when it is the new best (its model is to be kept).
        Sets :attr:`stopped_by` when the patience is spent."""
        if self.monitor.select is None or "val_nll" not in shown:
            return False
        best = self.best_validation.get("val_nll", math.inf)
        better = shown["val_nll"] < best
        progress = shown["val_nll"] < best - self.monitor.min_delta or not self.best_validation
        if better:
            self.best_validation = {"step": float(step), "val_nll": shown["val_nll"],
                                    **({"val_ess": shown["val_ess"]} if "val_ess" in shown else {})}
        if shown.get("val_ess", -1.0) > self.best_val_ess:
            self.best_val_ess = shown["val_ess"]
            progress = True
        if step < self.monitor.patience_from * self.total_steps:
            progress = True                              # early, noisy validations at a high learning rate
        self.stale_validations = 0 if progress else self.stale_validations + 1
        if self.monitor.patience and self.stale_validations >= self.monitor.patience:
            self.stopped_by = "early stopping"
        return better

    def state_dict(self) -> dict[str, Any]:
        return {"fitted_steps": self.fitted_steps, "validate_every": self.validate_every, "seconds": self.seconds,
                "best_validation": self.best_validation, "best_val_ess": self.best_val_ess,
                "stale_validations": self.stale_validations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (keys absent in checkpoints written before them take the defaults)."""
        self.seconds = float(state.get("seconds", 0.0))
        self.fitted_steps = state.get("fitted_steps")
        if self.fitted_steps is not None:
            self.total_steps = min(int(self.fitted_steps), self.schedule.steps)
        self.validate_every = int(state.get("validate_every") or self.monitor.validate_every)
        self.best_validation = dict(state.get("best_validation") or {})
        self.best_val_ess = float(state.get("best_val_ess", -1.0))
        self.stale_validations = int(state.get("stale_validations", 0))


FIT_GAP_VALIDATIONS = 5
"""Validations averaged by :func:`fit_gap`."""


def fit_gap(history: list[dict[str, float]]) -> dict[str, float] | None:
    """The NLL (nats) of the training batches and of the validation frames, each the mean over the last
    :data:`FIT_GAP_VALIDATIONS` validations of ``history``, and ``gap`` = validation − training: how far the fit has
    moved from what it learns about the molecule onto the frames it saw. None without NLL validations."""
    shown = [h for h in history if "nll" in h and "val_nll" in h][-FIT_GAP_VALIDATIONS:]
    if not shown:
        return None
    train = sum(h["nll"] for h in shown) / len(shown)
    validation = sum(h["val_nll"] for h in shown) / len(shown)
    return {"train_nll": train, "val_nll": validation, "gap": validation - train, "validations": len(shown)}
