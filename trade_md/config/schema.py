"""The nested training config: run settings, temperatures, data, flow, schedule, objectives, grid, energy, monitor.

A recipe (YAML; see :mod:`trade_md.config.files` for ``base:`` inheritance) reads::

    mode: trade                        # nll: maximum likelihood at T0 alone; trade: the objectives over the range
    out: runs/trade                    # run directory (checkpoint.pt, summary.json)
    seed: 0                            # model initialisation and every random draw of the trainer
    device: cpu                        # or cuda;  dtype: float32 or float64 (the model's)
    init_from: runs/boundary           # start from this run's weights (or a shipped model: alanine-dipeptide)
    trainable: all                     # or temperature: only what acts away from T0 (the model at T0 stays)
    temperatures: {reference: 600.0, range: [280.0, 1050.0]}    # T0 (default: the data's) and the trained range, K
    data: {path: data/ala2_600K, validation_fraction: 0.1, stride: 1}   # the last fraction is held out
    flow: {n_layers: 8, hidden: 128, thermal_scaling: true}     # trade_md.flows.ConditionalSplineFlow arguments
    schedule: {steps: 12000, learning_rate: 1.0e-3, lr_schedule: cosine, lr_final_fraction: 0.05, grad_clip: 1.0,
               minutes: null, fit_window: 30}         # minutes: wall-time budget, the cosine fitted to it
    objectives:                        # trade_md.objectives: each with weight, start, ramp and its own settings
      nll: {weight: 1.0}
      kl: {weight: 0.5, batch_size: 256}
      trade: {weight: 0.1, start: 6000, ramp: 2000, expectation: centred, energy_cap: 50.0}
    grid: {nodes: 26, samples: 2000, refresh_every: 250, decay: 0.5, loss_momentum: 0.9}   # the expectation grid
    energy: {cap: 1000.0, workers: 1, platform: auto}          # reduced-energy cap (k_B T), EnergyBridge workers
    monitor: {checkpoint_every: 1000, validate_every: 500, ess_samples: 2000, progress_temperatures: [], progress: true,
              validations: 0, select: null, patience: 0, patience_from: 0.0, min_delta: 0.0}  # early stopping

Unknown keys raise :class:`InputError` naming them. In mode ``trade`` the run trains every objective whose weight is
not 0, in the order of :data:`trade_md.objectives.OBJECTIVES`; in mode ``nll`` only ``objectives.nll`` (default
weight 1), and the range, the grid and the other objectives are not used.

>>> config = TrainConfig.from_dict({"mode": "trade", "temperatures": {"range": [280.0, 1050.0]},
...                                 "objectives": {"tilt": {"span": [280.0, 600.0]}, "nll": {}}})
>>> [objective.name for objective in config.active_objectives()], config.trained_range
(['nll', 'tilt'], (280.0, 1050.0))
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trade_md.config.files import deep_merge, expand_base, load_recipe
from trade_md.config.legacy import is_flat, nested_from_flat
from trade_md.errors import InputError
from trade_md.objectives import NLL, OBJECTIVES, REMOVED_OBJECTIVES, Objective
from trade_md.objectives.base import check, is_count, is_number, is_span

__all__ = ["FLOW_KEYS", "DataConfig", "EnergyConfig", "GridConfig", "MonitorConfig", "Schedule", "Temperatures",
           "TrainConfig", "config_from_checkpoint"]


@dataclass
class Temperatures:
    """reference: T0 in K (default: the data's temperature; must agree with it); range: ``[T_min, T_max]`` K, the
    trained range of mode trade (contains T0)."""

    reference: float | None = None
    range: list[float] | None = None


@dataclass
class DataConfig:
    """path: a ``trade-md md`` dataset directory at T0 (relative to the working directory); validation_fraction:
    the last frames held out for the validation NLL; stride: use every n-th frame."""

    path: str | None = None
    validation_fraction: float = 0.1
    stride: int = 1

    def split(self, frames: Any) -> tuple[Any, Any]:
        """``(training, validation)`` frames of ``frames [n, ...]``: every ``stride``-th, the last
        ``validation_fraction`` held out."""
        frames = frames[:: self.stride]
        n_validation = round(self.validation_fraction * frames.shape[0])
        if frames.shape[0] - n_validation < 1:
            raise InputError(f"{frames.shape[0]} frames leave none for training after holding out {n_validation}; "
                             "lower data.validation_fraction or data.stride")
        return frames[: frames.shape[0] - n_validation], frames[frames.shape[0] - n_validation:]


@dataclass
class Schedule:
    """steps: total optimiser steps (the run ends there; raise it and ``--resume`` to train on); Adam with
    ``learning_rate``, ``"constant"`` or ``"cosine"`` (decays to learning_rate × lr_final_fraction at the end of the
    schedule); grad_clip: maximal global gradient norm.

    minutes: a wall-time budget of the run (summed over resumed sessions; None: none). The run stops when it is
    spent, and with ``fit_window`` > 0 the schedule is fitted to it: after :data:`~trade_md.trainer.FIT_WARMUP`
    steps (counted from the first step of a term that acts away from T0, or from the resumed step) the trainer
    times ``fit_window`` steps, adds the grid refreshes and validations they left out at their cadence, and sets
    the schedule's length to the steps that fit the rest of the budget (5 % margin, at most ``steps``), so the
    cosine decays over the steps the run can reach. The fitted length is kept in the checkpoint."""

    steps: int = 20000
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    lr_final_fraction: float = 0.05
    grad_clip: float = 1.0
    minutes: float | None = None
    fit_window: int = 30

    def learning_rate_at(self, step: int, total: int | None = None) -> float:
        """The learning rate of optimiser step ``step`` of a schedule ``total`` steps long (default ``steps``)."""
        if self.lr_schedule == "constant":
            return self.learning_rate
        progress = min(step / (total or self.steps), 1.0)
        factor = self.lr_final_fraction + (1.0 - self.lr_final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.learning_rate * factor


@dataclass
class GridConfig:
    """The expectation grid (:class:`~trade_md.objectives.ExpectationGrid`): about ``nodes`` log-spaced
    temperatures over the range (T0 one of them), ``samples`` model samples per node and refresh every
    ``refresh_every`` steps (0: never; the grid then only reports), ``decay``: the share of a node's previous
    effective samples kept at a refresh, ``loss_momentum``: of the per-node residual losses. Each refresh whose
    lowest node ESS beats all earlier ones also writes ``<out>/best/checkpoint.pt``."""

    nodes: int = 26
    samples: int = 2000
    refresh_every: int = 250
    decay: float = 0.5
    loss_momentum: float = 0.9


@dataclass
class EnergyConfig:
    """cap: reduced energies above this many k_B T grow only logarithmically
    (:func:`trade_md.trade.cap_reduced_energy`); workers, platform: the ``EnergyBridge`` of a molecule."""

    cap: float = 1000.0
    workers: int = 1
    platform: str = "auto"


@dataclass
class MonitorConfig:
    """Steps between checkpoints and between validations (validation NLL, the Kish ESS at T0 of ``ess_samples``
    model samples, 0: none); progress_temperatures: K whose grid ESS the progress bar shows (default T_min, T0,
    T_max); progress: show the bar (when the command line asked for bars, :mod:`trade_md.progress`).

    validations: with a fitted schedule (``schedule.minutes``), validate about this many times over the fitted run
    instead of every ``validate_every`` steps (0: keep validate_every). select: ``"val_nll"`` keeps
    ``<out>/best_t0/checkpoint.pt``, the model of the validation with the lowest validation NLL (None: none);
    patience: with select, stop the run after this many validations in a row without a new best validation NLL
    and without a new highest ESS at T0 (0: never), counted from ``patience_from`` × the schedule's length on;
    min_delta: nats by which the NLL must improve to count."""

    checkpoint_every: int = 1000
    validate_every: int = 500
    ess_samples: int = 2000
    progress_temperatures: list[float] = field(default_factory=list)
    progress: bool = True
    validations: int = 0
    select: str | None = None
    patience: int = 0
    patience_from: float = 0.0
    min_delta: float = 0.0


FLOW_KEYS: dict[str, int | type] = {"n_layers": 1, "hidden": 1, "n_hidden_layers": 1, "n_bins": 2, "seed": 0,
                                    "thermal_scaling": bool, "width_sigmas": float, "dihedral_windows": bool}
"""The ``flow`` section's keys (:class:`~trade_md.flows.ConditionalSplineFlow` and
:func:`~trade_md.generator.molecule_generator` arguments): a count's smallest value, ``bool``, or ``float`` (> 0)."""
_SECTIONS: dict[str, type] = {"temperatures": Temperatures, "data": DataConfig, "schedule": Schedule,
                              "grid": GridConfig, "energy": EnergyConfig, "monitor": MonitorConfig}
_RESUME_MUTABLE = frozenset({"schedule.steps", "schedule.minutes", "schedule.fit_window", "device", "monitor.progress",
                             "monitor.checkpoint_every", "monitor.validate_every", "monitor.validations",
                             "monitor.patience", "monitor.patience_from", "out"})
"""Settings that may differ from the checkpoint's when resuming."""


@dataclass
class TrainConfig:
    """Everything a training run needs (see the module docs for the layout)."""

    mode: str = "nll"
    out: str | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    init_from: str | None = None
    trainable: str = "all"
    temperatures: Temperatures = field(default_factory=Temperatures)
    data: DataConfig = field(default_factory=DataConfig)
    flow: dict[str, Any] = field(default_factory=dict)
    schedule: Schedule = field(default_factory=Schedule)
    objectives: dict[str, Objective] = field(default_factory=dict)
    grid: GridConfig = field(default_factory=GridConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    # ------------------------------------------------------------------------------------------- reading
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config", *, directory: Path | None = None
                  ) -> TrainConfig:
        """A validated config from a nested mapping (its ``base:`` resolved against ``directory``, default the
        working directory) or a flat one of the layout before the restructure."""
        if not isinstance(values, dict):
            raise InputError(f"{source} must be a mapping of config keys, got {type(values).__name__}")
        values = expand_base(values, Path.cwd() if directory is None else directory, source)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys are "
                             f"{', '.join(sorted(known))}")
        settings: dict[str, Any] = {key: values[key] for key in known & set(values) if values[key] is not None}
        for name, section in _SECTIONS.items():
            settings[name] = _section(section, values.get(name), f"{source}: {name}")
        settings["objectives"] = _objectives(values.get("objectives"), f"{source}: objectives")
        flow = values.get("flow")
        settings["flow"] = {} if flow is None else dict(flow) if isinstance(flow, dict) else flow
        if isinstance(flow, dict) and flow.get("temperature_head") is False:   # older configs name the removed part
            del settings["flow"]["temperature_head"]
        config = cls(**settings)
        config.validate(source)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a recipe file (``base:`` chains resolved)."""
        return cls.from_dict(load_recipe(path), source=str(path), directory=Path(path).parent)

    def to_dict(self) -> dict[str, Any]:
        """The nested mapping (YAML/JSON-able); ``from_dict(to_dict())`` gives the same config."""
        return dataclasses.asdict(self)

    def updated(self, overrides: dict[str, Any], source: str = "config") -> TrainConfig:
        """A new config: ``overrides`` (a nested mapping) deep-merged onto this one (``None`` restores a default)."""
        return TrainConfig.from_dict(deep_merge(self.to_dict(), overrides), source)

    # ------------------------------------------------------------------------------------------- meaning
    @property
    def trained_range(self) -> tuple[float, float] | None:
        """``(T_min, T_max)`` K of mode trade, None in mode nll (trained at T0 only)."""
        span = self.temperatures.range
        return None if self.mode != "trade" or span is None else (float(span[0]), float(span[1]))

    def active_objectives(self) -> list[Objective]:
        """The objectives the trainer evaluates, in :data:`~trade_md.objectives.OBJECTIVES` order (weight > 0)."""
        if self.mode == "nll":
            return [self.objectives.get("nll") or NLL()]
        return [self.objectives[name] for name in OBJECTIVES if name in self.objectives
                and self.objectives[name].weight > 0]

    @property
    def acts_away_from_t0(self) -> bool:
        """Whether any objective trains the model away from T0."""
        return any(objective.acts_away_from_t0 for objective in self.active_objectives())

    def changed_settings(self, other: TrainConfig) -> list[str]:
        """``"key: mine -> other's"`` for every setting that differs, except those a resumed run may change."""
        mine, theirs = _flatten(self.to_dict()), _flatten(other.to_dict())
        keys = sorted(k for k in set(mine) | set(theirs) if k not in _RESUME_MUTABLE and mine.get(k) != theirs.get(k))
        return [f"{key}: {mine.get(key)!r} -> {theirs.get(key)!r}" for key in keys]

    # ------------------------------------------------------------------------------------------- checks
    def validate(self, source: str = "config") -> None:
        """Raise :class:`InputError` naming the first setting with an impossible value."""
        where = source
        check(self.mode in ("nll", "trade"), where, "mode", self.mode, "'nll' or 'trade'")
        check(is_count(self.seed, 0), where, "seed", self.seed, "an integer >= 0")
        check(self.dtype in ("float32", "float64"), where, "dtype", self.dtype, "'float32' or 'float64'")
        check(self.trainable in ("all", "temperature"), where, "trainable", self.trainable, "'all' or 'temperature'")
        check(self.trainable == "all" or self.mode == "trade", where, "trainable", self.trainable,
              "'all' in mode nll ('temperature' trains only what acts away from T0)")
        check(self.init_from is None or isinstance(self.init_from, str), where, "init_from", self.init_from,
              "a path to a run directory or checkpoint file (or absent)")
        check(isinstance(self.flow, dict), where, "flow", self.flow, "a mapping of flow keyword arguments")
        self._validate_flow(f"{source}: flow")
        self._validate_sections(source)
        self._validate_objectives(source)

    def _validate_flow(self, where: str) -> None:
        """Known keys of :data:`FLOW_KEYS` with values of their kind (sizes are counts, parts are booleans)."""
        if "temperature_head" in self.flow:
            raise InputError(f"{where}: temperature_head was removed (temperature heads did not help: "
                             "benchmarks/results/HISTORY.md, 12); delete it")
        unknown = sorted(set(self.flow) - set(FLOW_KEYS))
        if unknown:
            raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(FLOW_KEYS)}")
        for key, value in self.flow.items():
            kind = FLOW_KEYS[key]
            if kind is bool:
                check(isinstance(value, bool), where, key, value, "true or false")
            elif kind is float:
                check(is_number(value, 0.0, math.inf, open_low=True, open_high=True), where, key, value, "a number > 0")
            else:
                check(is_count(value, int(kind)), where, key, value, f"an integer >= {kind}")

    def _validate_sections(self, source: str) -> None:
        t, d, s, g, e, m = self.temperatures, self.data, self.schedule, self.grid, self.energy, self.monitor
        where = f"{source}: temperatures"
        check(t.reference is None or is_number(t.reference, 0.0, math.inf, open_low=True, open_high=True), where,
              "reference", t.reference, "a temperature in K > 0 (or absent)")
        check(t.range is None or is_span(t.range), where, "range", t.range,
              "[T_min, T_max] in K with 0 < T_min < T_max")
        if self.mode == "trade" and t.range is None:
            raise InputError(f"{source}: mode 'trade' needs temperatures.range: [T_min, T_max] (K), the range to "
                             "train over")
        where = f"{source}: data"
        check(is_number(d.validation_fraction, 0.0, 1.0), where, "validation_fraction", d.validation_fraction,
              "a number in [0, 1]")
        check(is_count(d.stride, 1), where, "stride", d.stride, "an integer >= 1")
        where = f"{source}: schedule"
        check(is_count(s.steps, 1), where, "steps", s.steps, "an integer >= 1")
        for name in ("learning_rate", "grad_clip"):
            check(is_number(getattr(s, name), 0.0, open_low=True), where, name, getattr(s, name), "a number > 0")
        check(s.lr_schedule in ("constant", "cosine"), where, "lr_schedule", s.lr_schedule, "'constant' or 'cosine'")
        check(s.minutes is None or is_number(s.minutes, 0.0, open_low=True, open_high=True), where, "minutes",
              s.minutes, "a wall-time budget in minutes > 0 (or absent)")
        check(is_count(s.fit_window, 0), where, "fit_window", s.fit_window, "an integer >= 0 (steps; 0: no fit)")
        check(is_number(s.lr_final_fraction, 0.0, 1.0), where, "lr_final_fraction", s.lr_final_fraction,
              "a number in [0, 1]")
        where = f"{source}: grid"
        check(is_count(g.nodes, 1), where, "nodes", g.nodes, "an integer >= 1")
        check(is_count(g.samples, 1), where, "samples", g.samples, "an integer >= 1")
        check(is_count(g.refresh_every, 0), where, "refresh_every", g.refresh_every, "an integer >= 0")
        check(is_number(g.decay, 0.0, 1.0), where, "decay", g.decay, "a number in [0, 1]")
        check(is_number(g.loss_momentum, 0.0, 1.0, open_high=True), where, "loss_momentum", g.loss_momentum,
              "a number in [0, 1)")
        where = f"{source}: energy"
        check(is_number(e.cap, 0.0, open_low=True), where, "cap", e.cap, "a number > 0 (k_B T)")
        check(is_count(e.workers, 1), where, "workers", e.workers, "an integer >= 1")
        where = f"{source}: monitor"
        for name in ("checkpoint_every", "validate_every"):
            check(is_count(getattr(m, name), 1), where, name, getattr(m, name), "an integer >= 1")
        check(is_count(m.ess_samples, 0), where, "ess_samples", m.ess_samples, "an integer >= 0")
        check(is_count(m.validations, 0), where, "validations", m.validations, "an integer >= 0")
        check(m.select in (None, "val_nll"), where, "select", m.select, "'val_nll' or absent")
        check(is_count(m.patience, 0), where, "patience", m.patience, "an integer >= 0 (validations)")
        check(m.patience == 0 or m.select is not None, where, "patience", m.patience,
              "0 unless monitor.select names the score it waits on (select: val_nll)")
        check(is_number(m.min_delta, 0.0), where, "min_delta", m.min_delta, "a number >= 0 (nats)")
        check(is_number(m.patience_from, 0.0, 1.0), where, "patience_from", m.patience_from, "a number in [0, 1]")
        check(isinstance(m.progress_temperatures, list) and all(is_number(v, 0.0, open_low=True)
                                                                for v in m.progress_temperatures),
              where, "progress_temperatures", m.progress_temperatures, "a list of temperatures in K")

    def _validate_objectives(self, source: str) -> None:
        checked = {"nll": self.objectives.get("nll")} if self.mode == "nll" else self.objectives
        for name, objective in checked.items():
            if objective is not None:
                objective.check(f"{source}: objectives.{name}", self.temperatures.range)
        if self.mode == "nll":
            check(self.active_objectives()[0].weight > 0, f"{source}: objectives.nll", "weight",
                  self.active_objectives()[0].weight, "> 0 in mode nll")
            return
        if self.trainable == "all" and not any(o.trains_t0 for o in self.active_objectives()):
            raise InputError(f"{source}: mode 'trade' needs a boundary at T0: give objectives.nll (data) and/or "
                             "objectives.kl (energy) a weight > 0, or train with trainable: temperature")
        if any(o.needs_grid_estimates for o in self.active_objectives()) and self.grid.refresh_every < 1:
            raise InputError(f"{source}: grid.refresh_every = {self.grid.refresh_every} is invalid; it must be >= 1 "
                             "with the trade objective's expectation 'grid' (its estimates are the TRADE target)")


def config_from_checkpoint(checkpoint: dict[str, Any], where: str = "checkpoint") -> TrainConfig:
    """The config stored in a checkpoint: nested, or the flat one of checkpoints written before the restructure
    (converted; keys added since it was written take the value that the older code used)."""
    values = checkpoint["config"]
    if is_flat(values):
        values = nested_from_flat(values, where, checkpoint=True)
    return TrainConfig.from_dict(values, source=where)


def _section(section: type, values: Any, where: str) -> Any:
    """A section dataclass from its mapping (None: defaults); unknown keys raise naming them."""
    if values is None:
        return section()
    if not isinstance(values, dict):
        raise InputError(f"{where} must be a mapping, got {values!r}")
    known = {f.name for f in dataclasses.fields(section)}
    unknown = sorted(set(values) - known)
    if unknown:
        name = where.rsplit(": ", 1)[-1]
        raise InputError(f"{where}: unknown key(s) {', '.join(f'{name}.{key}' for key in unknown)}; valid keys are "
                         f"{', '.join(sorted(known))}")
    settings = {key: value for key, value in values.items() if value is not None}
    for key in ("range", "progress_temperatures"):
        if isinstance(settings.get(key), tuple):
            settings[key] = list(settings[key])
    return section(**settings)


def _objectives(values: Any, where: str) -> dict[str, Objective]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(f"{where} must be a mapping of objective names to settings, got {values!r}")
    objectives = {}
    for name, settings in values.items():
        if name in REMOVED_OBJECTIVES:
            raise InputError(f"{where}.{name}: {REMOVED_OBJECTIVES[name]}")
        if name not in OBJECTIVES:
            raise InputError(f"{where}: unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
        if settings is None:
            continue
        objectives[name] = _section(OBJECTIVES[name], settings, f"{where}.{name}")
    return objectives


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for the leaves of a nested mapping (the flow's arguments as one leaf)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and key != "flow" and value:
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat
