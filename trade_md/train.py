"""Training loop for the temperature-conditioned generator: maximum likelihood at T0, and TRADE over a range.

The :class:`Trainer` is generic: it receives a :class:`~trade_md.flows.Generator`, a potential ``x -> U [n]`` in
kJ/mol (``EnergyBridge.potential`` for molecules, a toy's ``potential`` for toys), optional data at the
reference temperature T0 and a :class:`TrainConfig`; there is no physics in it beyond ``u = U / (k_B T)``.

Modes:

- ``nll``: maximum likelihood on data at T0, ``−E_data[log q(x | T0)]``.
- ``trade``: a boundary at T0 (``nll_weight`` × NLL on data and/or ``kl_weight`` × reverse KL
  ``E_q[log q + u]`` at T0, mixable) plus ``trade_weight`` × ramp × the causality-weighted Huber loss of the TRADE
  residual (see :mod:`trade_md.trade`) at temperatures drawn log-uniformly over ``[temperature_min,
  temperature_max]``.

A step whose loss or gradient is not finite is skipped and counted, never handed to the optimiser. Checkpoints
(``<out>/checkpoint.pt``, written atomically every ``checkpoint_every`` steps and at the end) hold the model
state and config, optimiser state, RNG states, step, the expectation grid, the TrainConfig, the system's
serialisation and fingerprint, and the coordinate normalisation; ``--resume`` continues bit-for-bit as an
uninterrupted run would. :func:`load_generator` rebuilds the trained model for sampling and evaluation.
Under ``torchrun`` the same command trains data-parallel on several processes (:mod:`trade_md.distributed`).

Command line::

    trade-md train --mode nll --data data/ala2_600K --temperature 600 --out runs/nll600
    trade-md train --mode trade --config systems/alanine_dipeptide/trade.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trade_md.distributed import DistributedContext, init_from_environment
from trade_md.errors import InputError, SystemMismatchError
from trade_md.flows import ADDABLE_FLOW_PARTS, Generator
from trade_md.formats.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, SystemRecord, read_checkpoint
from trade_md.formats.files import atomic_write_path, write_json_atomic
from trade_md.trade import (
    ExpectationGrid,
    centred_trade_residual,
    group_softmax,
    huber,
    importance_estimate,
    ramp,
    reduced_energy,
    sample_log_uniform,
    trade_residual,
)
from trade_md.thermo import KB

__all__ = [
    "CHECKPOINT_NAME",
    "SystemRecord",
    "TrainConfig",
    "Trainer",
    "generator_for",
    "load_generator",
    "read_checkpoint",
    "register_cli",
    "split_frames",
]

BEST_DIR = "best"
"""Sub-directory of a run that holds the checkpoint of the grid refresh with the highest lowest-node ESS."""
MAX_CONSECUTIVE_SKIPS = 100
"""Training stops with an error after this many consecutive non-finite steps."""
LEGACY_CONFIG: dict[str, Any] = {"expectation": "grid"}
"""Values of TrainConfig keys for checkpoints written before the key existed (the behaviour of that code)."""
_RESUME_MUTABLE = frozenset({"steps", "device", "progress", "checkpoint_every", "validate_every", "out"})
"""TrainConfig fields that may differ from the checkpoint's when resuming."""

TRANSFER_TERMS: tuple[str, ...] = ("kl_range", "tilt", "fkl_range", "reweighted_nll")
"""The terms of mode trade that act away from T0 besides the TRADE residual; each has TrainConfig fields
``<name>_weight`` and ``<name>_span``."""


@dataclass
class TrainConfig:
    """Everything a training run needs; YAML keys are the field names, unknown keys raise InputError.

    Run and data:
        mode: ``"nll"`` (maximum likelihood at T0 only) or ``"trade"`` (boundary at T0 + TRADE over the range).
        data: directory of a ``trade-md md`` dataset at T0 (relative paths are taken from the working directory).
        out: run directory (checkpoint.pt, summary.json).
        reference_temperature: T0 in K; default the dataset's temperature (must agree with it when both are set).
        temperature_min, temperature_max: K, the trained range of mode ``trade`` (must contain T0).
        validation_fraction: fraction of frames held out (the last ones) for the validation NLL.
        data_stride: use every n-th frame.
        init_from: run directory (or checkpoint file) whose model weights start this run, e.g. a boundary
        pre-trained with mode nll or with trade_weight 0; same system, T0 and flow settings required (the optimiser
        and the step count start afresh).
    Optimisation:
        steps: total optimiser steps (the run ends there; raise it and ``--resume`` to train on).
        batch_size: data frames per step for the NLL term.
        learning_rate: Adam step size; lr_schedule: ``"constant"`` or ``"cosine"`` (decays to
        ``learning_rate × lr_final_fraction`` at ``steps``).
        grad_clip: maximal global gradient norm (clipped above).
        trainable: ``"all"`` (every weight) or ``"temperature"`` (mode trade, starting from ``init_from``): only the
        weights that act away from T0, i.e. the conditioners' weights on the context, the temperature heads and the
        thermal scaling layer (:meth:`trade_md.flows.ConditionalSplineFlow.temperature_gradient_masks`). The model at T0 then stays
        exactly the boundary of ``init_from``: TRADE cannot erode it, and the boundary terms may be 0.
        seed: seeds model initialisation and every random draw of the trainer.
        device: ``"cpu"`` or ``"cuda"``; dtype: ``"float32"`` or ``"float64"`` of the model.
    Boundary (mode trade; mode nll uses NLL only):
        nll_weight: weight of the NLL on data at T0 (needs data).
        kl_weight: weight of the reverse KL ``E_q[log q + u]`` at T0 (energy only); kl_batch_size samples per step.
        kl_range_weight: weight of the same reverse KL at temperatures drawn log-uniformly over ``kl_range_span``
        (energy only, no data; ramped in with the TRADE term; 0, the default, is TRADE alone). Its minimum is the
        Boltzmann density at every T, so it cannot bias the transfer; it penalises what the exact TRADE solution
        of an imperfect boundary does at the hot end: the boundary's few high-energy samples, multiplied by
        ``exp((beta0 - beta) U)``.
        tilt_weight: weight of the tilt term (ramped in with the TRADE term; default 0): the forward KL from the
        exact solution of the TRADE equation for the model at T0, q(x | T0) exp(−(β − β0) U(x)) / Z, to q(x | T),
        estimated with self-normalised importance weights on the model's own samples at T (kl_batch_size of them,
        in groups that share a temperature, as trade_temperatures does). Same fixed point as the TRADE residual,
        without derivatives in the loss; with trainable "temperature" its target is fixed. At T > T0 the exact
        tilt multiplies the boundary's high-energy samples by exp((β0 − β) U): use it below T0, or with
        kl_range_weight (``trade_md.analysis.metrics.tilted_ess`` says what the tilt is worth at each T).
        fkl_range_weight: weight of the forward KL from the Boltzmann density at T to q(x | T) (ramped in with the
        TRADE term; default 0), estimated like the tilt term with the target exp(−u_T(x)): mass-covering where the
        reverse KL is mode-seeking, so it raises q where p/q is large (a mode the model under-weights, such as cis
        peptide bonds at high T); its gradient is as noisy as the model's ESS at T is low.
        reweighted_nll_weight: weight of the NLL at T on the T0 frames resampled with weights
        ``exp(−(β − β0) U(x))`` (ramped in with the TRADE term; default 0; needs data): the T0 data reweighted to T
        is a sample of the Boltzmann density at T exactly, the TRADE identity integrated on the data, so this term
        is mass-covering where the model's own samples miss a mode its data holds (cis peptide bonds). Its
        effective number of frames falls fast away from T0 (:func:`trade_md.analysis.metrics.reweighted_frames`): keep
        ``reweighted_nll_span`` where it is in the hundreds or more, or the model learns those few frames.
        kl_range_span, tilt_span, fkl_range_span, reweighted_nll_span: ``[low, high]`` K inside the trained range
        where the range KL, the tilt term, the forward range KL and the reweighted NLL draw their temperatures
        (default: the whole range); e.g. the tilt below T0 and the range KL above it.
    TRADE (mode trade):
        trade_weight: final weight of the TRADE loss; trade_start: first step with the TRADE term;
        trade_ramp: steps over which its weight rises linearly from 0 to trade_weight.
        expectation: the constant E_T[u] of the residual's target: ``"centred"`` (default; the residual minus its
        mean over the points at the same temperature, exact because q is normalised, needs no importance weights)
        or ``"grid"`` (self-normalised importance sampling on the expectation grid, the paper's estimator; biased
        when the grid ESS is low). See :mod:`trade_md.trade`.
        trade_temperatures: distinct temperatures per step in ``"centred"`` mode; the batch is dealt out evenly
        among them (at most trade_batch_size / 2 of them, so that every centre rests on at least 2 points).
        trade_batch_size: residual points per step, split by residual_from_model (model samples at the
        point's own T), residual_from_reference (model samples at T0) and residual_from_data (data frames at T0);
        without data the data share goes to reference samples. Fractions are relative (normalised to sum 1).
        huber_delta: Huber threshold on the residual (reduced units).
        causality_epsilon: ε of the causality weights exp(−ε Σ L_j); 0 switches causality off.
        grid_nodes: about this many log-spaced temperature nodes for E[U] (T0 is one of them).
        grid_samples: model samples per node and refresh; grid_refresh_every: steps between refreshes (0: never,
        allowed with expectation ``"centred"``, where the grid only reports ESS and the free-energy curve).
        grid_decay: fraction of a node's previous effective sample count kept at a refresh (0 = replace).
        loss_momentum: running-average momentum of the per-node residual losses.
        energy_cap: reduced energies above this many k_B T grow only logarithmically (trade_md.trade).
        trade_energy_cap: the same cap for the TRADE target only (default: energy_cap). The exact tilt
        q_T ∝ q_T0 exp(−(β − β0) U) multiplies a boundary sample of reduced energy u by up to exp((1 − T0/T) u)
        at T > T0, so the high-energy debris of an imperfect boundary would dominate the hot end; a lower cap here
        (e.g. 50) bounds that growth and keeps the derivative targets, and with them the context pathway of the
        flow, of the size of the physical ones.
    Model and energies:
        flow: keyword arguments of the flow (n_layers, hidden, n_hidden_layers, n_bins, seed, thermal_scaling,
        temperature_head; see :class:`trade_md.flows.ConditionalSplineFlow`).
        energy_workers, energy_platform: EnergyBridge worker processes and OpenMM platform (molecules).
    Bookkeeping:
        checkpoint_every: steps between checkpoints; validate_every: steps between validation NLL / ESS reports.
        In mode trade every grid refresh whose lowest ESS over the nodes beats all earlier ones also writes
        ``<out>/best/checkpoint.pt`` (load it with ``load_generator(out / "best")``): TRADE runs can lose the
        temperatures away from T0 while T0 stays fine, and the grid ESS is what sees it.
        ess_samples: model samples for the ESS at T0 shown at each validation (0: none).
        progress_temperatures: K, temperatures whose grid ESS the progress bar shows (default T_min, T0, T_max).
        progress: show a tqdm progress bar.
    """

    mode: str = "nll"
    data: str | None = None
    out: str | None = None
    reference_temperature: float | None = None
    temperature_min: float | None = None
    temperature_max: float | None = None
    validation_fraction: float = 0.1
    data_stride: int = 1
    init_from: str | None = None
    steps: int = 20000
    batch_size: int = 256
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    lr_final_fraction: float = 0.05
    grad_clip: float = 1.0
    trainable: str = "all"
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    nll_weight: float = 1.0
    kl_weight: float = 0.0
    kl_range_weight: float = 0.0
    tilt_weight: float = 0.0
    fkl_range_weight: float = 0.0
    reweighted_nll_weight: float = 0.0
    kl_range_span: list[float] | None = None
    tilt_span: list[float] | None = None
    fkl_range_span: list[float] | None = None
    reweighted_nll_span: list[float] | None = None
    kl_batch_size: int = 256
    trade_weight: float = 1.0
    trade_start: int = 0
    trade_ramp: int = 2000
    expectation: str = "centred"
    trade_temperatures: int = 16
    trade_batch_size: int = 256
    residual_from_model: float = 0.5
    residual_from_reference: float = 0.25
    residual_from_data: float = 0.25
    huber_delta: float = 1.0
    causality_epsilon: float = 0.1
    grid_nodes: int = 26
    grid_samples: int = 2000
    grid_refresh_every: int = 250
    grid_decay: float = 0.5
    loss_momentum: float = 0.9
    energy_cap: float = 1000.0
    trade_energy_cap: float | None = None
    flow: dict[str, Any] = field(default_factory=dict)
    energy_workers: int = 1
    energy_platform: str = "auto"
    checkpoint_every: int = 1000
    validate_every: int = 500
    ess_samples: int = 2000
    progress_temperatures: tuple[float, ...] = ()
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """A config from a mapping; unknown keys raise :class:`InputError` naming them."""
        if not isinstance(values, dict):
            raise InputError(f"{source} must be a mapping of TrainConfig fields, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys are "
                             f"{', '.join(sorted(known))}")
        values = dict(values)
        if "progress_temperatures" in values:
            values["progress_temperatures"] = tuple(float(t) for t in values["progress_temperatures"] or ())
        config = cls(**values)
        config.validate(source)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a YAML file of TrainConfig fields."""
        import yaml

        file = Path(path)
        if not file.is_file():
            raise InputError(f"config file {file} does not exist; check the path")
        try:
            values = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as error:
            raise InputError(f"{file} is not valid YAML ({error}); fix the file") from None
        return cls.from_dict(values, source=str(file))

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able field values."""
        values = dataclasses.asdict(self)
        values["progress_temperatures"] = list(self.progress_temperatures)
        return values

    @property
    def acts_away_from_t0(self) -> bool:
        """Whether any term trains the model away from T0: the TRADE residual or one of :data:`TRANSFER_TERMS`."""
        return self.trade_weight > 0 or any(getattr(self, f"{term}_weight") > 0 for term in TRANSFER_TERMS)

    def validate(self, source: str = "config") -> None:
        """Raise :class:`InputError` naming the first field with an impossible value."""
        def bad(name: str, requirement: str) -> InputError:
            return InputError(f"{source}: {name} = {getattr(self, name)!r} is invalid; it must be {requirement}")

        if self.mode not in ("nll", "trade"):
            raise bad("mode", "'nll' or 'trade'")
        for name in ("steps", "batch_size", "kl_batch_size", "trade_batch_size", "grid_nodes", "grid_samples",
                     "trade_temperatures", "checkpoint_every", "validate_every", "data_stride", "energy_workers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        for name in ("trade_start", "trade_ramp", "ess_samples", "seed", "grid_refresh_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(name, "an integer >= 0")
        if self.trade_energy_cap is not None and not (
            isinstance(self.trade_energy_cap, (int, float)) and self.trade_energy_cap > 0
        ):
            raise bad("trade_energy_cap", "a number > 0 (k_B T), or absent to use energy_cap")
        for name in ("learning_rate", "grad_clip", "huber_delta", "energy_cap"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                raise bad(name, "a number > 0")
        for name in ("nll_weight", "kl_weight", *(f"{term}_weight" for term in TRANSFER_TERMS), "trade_weight",
                     "causality_epsilon",
                     "residual_from_model", "residual_from_reference", "residual_from_data"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) >= 0):
                raise bad(name, "a number >= 0")
        for name in ("validation_fraction", "grid_decay", "lr_final_fraction"):
            if not (isinstance(getattr(self, name), (int, float)) and 0 <= getattr(self, name) <= 1):
                raise bad(name, "a number in [0, 1]")
        if not 0 <= self.loss_momentum < 1:
            raise bad("loss_momentum", "a number in [0, 1)")
        if self.trainable not in ("all", "temperature"):
            raise bad("trainable", "'all' or 'temperature'")
        if self.trainable == "temperature" and self.mode != "trade":
            raise bad("trainable", "'all' in mode nll ('temperature' trains only what acts away from T0)")
        if self.expectation not in ("centred", "grid"):
            raise bad("expectation", "'centred' or 'grid'")
        if self.expectation == "grid" and self.grid_refresh_every < 1:
            raise bad("grid_refresh_every", ">= 1 with expectation 'grid' (its estimates are the TRADE target)")
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise bad("init_from", "a path to a run directory or checkpoint file (or absent)")
        if self.lr_schedule not in ("constant", "cosine"):
            raise bad("lr_schedule", "'constant' or 'cosine'")
        if self.dtype not in ("float32", "float64"):
            raise bad("dtype", "'float32' or 'float64'")
        if not isinstance(self.flow, dict):
            raise bad("flow", "a mapping of flow keyword arguments")
        for name in ("reference_temperature", "temperature_min", "temperature_max"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise bad(name, "a temperature in K > 0 (or absent)")
        if self.mode == "trade":
            if self.temperature_min is None or self.temperature_max is None:
                raise InputError(f"{source}: mode 'trade' needs temperature_min and temperature_max (K), the range "
                                 "to train over")
            if self.temperature_min >= self.temperature_max:
                raise bad("temperature_min", f"below temperature_max = {self.temperature_max}")
            if self.trainable == "all" and self.nll_weight == 0 and self.kl_weight == 0 and self.kl_range_weight == 0:
                raise InputError(f"{source}: mode 'trade' needs a boundary at T0: set nll_weight > 0 (data) and/or "
                                 "kl_weight > 0 (reverse KL on the energy)")
            for name in (f"{term}_span" for term in TRANSFER_TERMS):
                span = getattr(self, name)
                if span is not None and not (
                    isinstance(span, (list, tuple)) and len(span) == 2
                    and all(isinstance(v, (int, float)) for v in span)
                    and self.temperature_min <= span[0] < span[1] <= self.temperature_max
                ):
                    raise bad(name, f"[low, high] in K with {self.temperature_min} <= low < high <= "
                                    f"{self.temperature_max} (the trained range), or absent")
            if self.residual_from_model + self.residual_from_reference + self.residual_from_data <= 0:
                raise InputError(f"{source}: residual_from_model/_reference/_data are all 0; give at least one a "
                                 "positive share")


def load_generator(
    checkpoint_dir: str | Path, system: Any | None = None, *, device: str = "cpu"
) -> tuple[Generator, Any, TrainConfig]:
    """``(generator, system, config)`` of a training run: the trained model (eval mode), the ``MolecularSystem``
    or ``ToySystem`` it was trained for, and its :class:`TrainConfig`.

    system: optional system to check the checkpoint against (:class:`SystemMismatchError` if it differs).
    """
    checkpoint = read_checkpoint(checkpoint_dir)
    record = SystemRecord(**checkpoint["system"])
    if system is not None:
        record.check_same(SystemRecord.of(system), f"checkpoint {checkpoint_dir}")
    generator = Generator.from_config(checkpoint["generator_config"], checkpoint["model_state"]).to(device)
    generator.eval()
    return generator, record.build(), _saved_config(checkpoint, f"{checkpoint_dir}")


def generator_for(dataset: Any, config: TrainConfig, checkpoint: dict[str, Any] | None = None) -> Generator:
    """The molecule generator of a run: rebuilt from ``checkpoint`` when resuming, else the model of
    ``config.init_from`` (checked against the dataset's system, T0 and flow settings), else a fresh one whose
    internal-coordinate normalisation comes from the training frames of ``dataset`` (seeded by ``config.seed``)."""
    from trade_md.flows import molecule_generator

    torch.manual_seed(config.seed)
    if checkpoint is not None:
        return Generator.from_config(checkpoint["generator_config"], checkpoint["model_state"])
    training, _ = split_frames(dataset.positions, config)
    if config.init_from is not None:
        return _initial_generator(config, SystemRecord.of(dataset.system), training)
    if config.trainable == "temperature":
        raise InputError("trainable 'temperature' keeps the model at T0 as it starts; set init_from to a trained "
                         "boundary run (or use trainable 'all')")
    return molecule_generator(dataset.system, training, config.reference_temperature, **config.flow)


def _initial_generator(config: TrainConfig, system: SystemRecord, training: Any) -> Generator:
    """The trained model of ``config.init_from`` as the starting point of a new run (its system, T0 and flow
    settings must be this run's). A run may add ``thermal_scaling`` and ``temperature_head`` to a model trained
    without them: both act only away from T0, so the model is unchanged there; the scaling layer's centres and
    exponents come from ``training`` (``[n, atoms, 3]`` nm), the heads start at zero. A model that was trained at
    T0 alone starts with its context weights at zero: the same model at every T."""
    where = f"init_from {config.init_from}"
    start = read_checkpoint(config.init_from)
    SystemRecord(**start["system"]).check_same(system, where)
    saved = _saved_config(start, where)
    wanted = {**config.flow, **{key: bool(config.flow.get(key, False)) for key in ADDABLE_FLOW_PARTS}}
    had = {**saved.flow, **{key: bool(saved.flow.get(key, False)) for key in ADDABLE_FLOW_PARTS}}
    added = [key for key in ADDABLE_FLOW_PARTS if wanted[key] and not had[key]]
    if wanted != {**had, **{key: True for key in added}}:
        raise InputError(f"{where} has flow {saved.flow}, this run asks for {config.flow}; use the same flow "
                         "settings (copy them from that run's config; only "
                         f"{' and '.join(ADDABLE_FLOW_PARTS)} may be added)")
    try:
        generator = Generator.from_config(start["generator_config"], start["model_state"], adding=added)
    except InputError as error:
        raise InputError(f"{where}: {error}") from None
    if "thermal_scaling" in added:
        generator.initialise_thermal_scaling(training)
    if saved.mode == "nll" or not saved.acts_away_from_t0:
        generator.flow.reset_context_weights()       # never trained (context 0 at T0); older code drew them at random
    if config.reference_temperature is not None and not math.isclose(
        generator.reference_temperature, config.reference_temperature, rel_tol=1e-9
    ):
        raise InputError(f"{where} was trained at T0 = {generator.reference_temperature} K, this run's T0 is "
                         f"{config.reference_temperature} K; start from a model of the same reference temperature")
    return generator


def _saved_config(checkpoint: dict[str, Any], where: str) -> TrainConfig:
    """The :class:`TrainConfig` stored in a checkpoint; keys added since it was written take the value that the
    older code used (expectation ``"grid"``) or their default."""
    values = {**LEGACY_CONFIG, **checkpoint["config"]}
    return TrainConfig.from_dict(values, source=where)


def split_frames(data: Any, config: TrainConfig) -> tuple[Any, Any]:
    """``(training, validation)`` frames: every ``data_stride``-th frame, the last ``validation_fraction`` held out."""
    data = data[:: config.data_stride]
    n_validation = round(config.validation_fraction * data.shape[0])
    if data.shape[0] - n_validation < 1:
        raise InputError(f"{data.shape[0]} frames leave none for training after holding out {n_validation}; lower "
                         "validation_fraction or data_stride")
    return data[: data.shape[0] - n_validation], data[data.shape[0] - n_validation:]


def _lr_factor(config: TrainConfig, step: int) -> float:
    if config.lr_schedule == "constant":
        return 1.0
    progress = min(step / config.steps, 1.0)
    return config.lr_final_fraction + (1.0 - config.lr_final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    """The training loop (see the module docs).

    generator: the model (its ``reference_temperature`` is T0); config: a validated :class:`TrainConfig`;
    system: a :class:`SystemRecord` (stored in checkpoints); potential: ``x -> U [n]`` kJ/mol, differentiable in
    x when ``kl_weight > 0`` (needed in mode trade; in mode nll only for the ESS report); data: frames at T0
    (``[n, ...]`` in the generator's coordinates, e.g. ``[n, atoms, 3]`` nm); the last ``validation_fraction``
    are held out. ``out``: run directory for checkpoints (None: no files). distributed: this rank's
    :class:`~trade_md.distributed.DistributedContext` under torchrun (None: one process); batch sizes in the
    config are then global (see :mod:`trade_md.distributed`).
    """

    def __init__(
        self,
        generator: Generator,
        config: TrainConfig,
        system: SystemRecord,
        *,
        potential: Callable[[Tensor], Tensor] | None = None,
        data: Tensor | None = None,
        out: str | Path | None = None,
        distributed: DistributedContext | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.distributed = distributed
        self.system = system
        self.device = torch.device(config.device)
        self.generator = generator.to(device=self.device, dtype=getattr(torch, config.dtype))
        self.reference_temperature = generator.reference_temperature
        if config.reference_temperature is not None and not math.isclose(
            config.reference_temperature, self.reference_temperature, rel_tol=1e-9
        ):
            raise InputError(f"the config's reference_temperature {config.reference_temperature} K differs from the "
                             f"model's T0 {self.reference_temperature} K; make them agree")
        self.potential = potential
        self.out = None if out is None else Path(out)
        self._split_data(data)
        self._check_inputs()
        self.gradient_masks = self._trainable_masks()
        self.optimizer = torch.optim.Adam([p for p, _ in self.gradient_masks], lr=config.learning_rate)
        self.rng = torch.Generator().manual_seed(config.seed)
        self.grid: ExpectationGrid | None = None
        if config.mode == "trade":
            self.grid = ExpectationGrid(self.reference_temperature, config.temperature_min, config.temperature_max,
                                        config.grid_nodes, decay=config.grid_decay,
                                        loss_momentum=config.loss_momentum,
                                        all_reduce=None if distributed is None else distributed.all_reduce)
        if distributed is not None:
            distributed.broadcast_parameters(self.generator)
        self.step = 0
        self.skipped_steps = 0
        self._consecutive_skips = 0
        self.last_refresh: int | None = None
        self.history: list[dict[str, float]] = []
        self.energy_evaluations = 0
        self.refreshes = 0
        self.refresh_seconds = 0.0
        self.best_ess = -1.0
        self._data_energy = (self._data_energies() if self._uses_data_residuals or config.reweighted_nll_weight > 0
                             else None)
        self._data_energy_cpu = None if self._data_energy is None else self._data_energy.cpu()  # multinomial draws

    # ------------------------------------------------------------------------------------------- set-up
    @property
    def rank(self) -> int:
        """This process's rank (0 without torch.distributed)."""
        return 0 if self.distributed is None else self.distributed.rank

    @property
    def is_main(self) -> bool:
        """Whether this process shows progress, validates and writes files (rank 0)."""
        return self.rank == 0

    def _share(self, n: int) -> tuple[int, int]:
        """``[start, stop)``: this rank's slice of ``n`` draws of the global batch (all of them in one process)."""
        if self.distributed is None:
            return 0, n
        world = self.distributed.world_size
        return n * self.rank // world, n * (self.rank + 1) // world

    def _mean(self, values: Tensor, n: int) -> Tensor:
        """Mean over the global batch of ``n``, from this rank's slice ``values`` (exact once gradients are averaged
        over ranks: ``world_size × Σ_slice / n``)."""
        if self.distributed is None:
            return values.mean()
        return values.sum() * (self.distributed.world_size / n)

    def _split_data(self, data: Tensor | None) -> None:
        self.train_data: Tensor | None = None
        self.validation_data: Tensor | None = None
        if data is not None:
            train, validation = split_frames(data, self.config)
            self.train_data = train.to(device=self.device, dtype=self.generator.dtype)
            if validation.shape[0]:
                self.validation_data = validation.to(device=self.device, dtype=self.generator.dtype)

    def _trainable_masks(self) -> list[tuple[torch.nn.Parameter, Tensor | None]]:
        """The optimised parameters with their gradient masks (None: every entry); with ``trainable`` "temperature"
        every other parameter is frozen (``requires_grad`` False)."""
        if self.config.trainable == "all":
            return [(p, None) for p in self.generator.parameters()]
        masks = self.generator.flow.temperature_gradient_masks()
        chosen = {id(p) for p, _ in masks}
        for parameter in self.generator.parameters():
            parameter.requires_grad_(id(parameter) in chosen)
        return masks

    def _check_inputs(self) -> None:
        config = self.config
        if config.mode == "nll" and self.train_data is None:
            raise InputError("mode 'nll' needs data at the reference temperature; pass --data")
        if config.mode == "trade":
            if self.potential is None:
                raise InputError("mode 'trade' needs the potential energy function")
            if config.nll_weight > 0 and self.train_data is None:
                raise InputError("nll_weight > 0 needs data at T0; pass --data, or set nll_weight: 0 and "
                                 "kl_weight > 0 to train the boundary on the energy alone")
            if config.reweighted_nll_weight > 0 and self.train_data is None:
                raise InputError("reweighted_nll_weight > 0 needs data at T0 (it reweights those frames to other "
                                 "temperatures); pass --data, or set reweighted_nll_weight: 0")

    @property
    def _uses_data_residuals(self) -> bool:
        config = self.config
        return (config.mode == "trade" and config.trade_weight > 0 and self.train_data is not None
                and config.residual_from_data > 0)

    @torch.no_grad()
    def _energies(self, x: Tensor, chunk: int = 4096) -> Tensor:
        return torch.cat([self.energy(part).detach().to(torch.float64) for part in torch.split(x, chunk)])

    def _data_energies(self) -> Tensor:
        """``U [n]`` kJ/mol of the training frames; under torchrun each rank evaluates a contiguous share."""
        if self.distributed is None:
            return self._energies(self.train_data)
        n, world = self.train_data.shape[0], self.distributed.world_size
        low, high = n * self.rank // world, n * (self.rank + 1) // world
        energy = torch.zeros(n, dtype=torch.float64, device=self.device)
        if high > low:
            energy[low:high] = self._energies(self.train_data[low:high]).to(self.device)
        return self.distributed.all_reduce(energy)

    def energy(self, x: Tensor) -> Tensor:
        """``U(x)`` ``[n]`` kJ/mol from the potential, counted in :attr:`energy_evaluations`."""
        self.energy_evaluations += int(x.shape[0])
        return self.potential(x)

    # ------------------------------------------------------------------------------------------- losses
    def _batch_indices(self, n: int) -> Tensor:
        """This rank's slice of ``n`` random data indices (all ranks draw the same ``n``)."""
        start, stop = self._share(n)
        return torch.randint(self.train_data.shape[0], (n,), generator=self.rng)[start:stop].to(self.device)

    def _sample(self, n: int, temperature: float | Tensor) -> tuple[Tensor, Tensor]:
        """This rank's slice of ``n`` model samples at ``temperature`` (float K or ``[n]`` K).

        Under torchrun every rank advances the shared random stream past all ``n`` samples (the flow draws one
        uniform per feature and sample) but transforms only its own slice, so the ranks together draw exactly
        the samples one process would.
        """
        if isinstance(temperature, Tensor):
            temperature = temperature.to(self.device)
        if self.distributed is None:
            return self.generator.sample(n, temperature, generator=self.rng)
        start, stop = self._share(n)
        self._skip_draws(start)
        if stop > start:
            if isinstance(temperature, Tensor) and temperature.numel() > 1:
                temperature = temperature[start:stop]
            x, log_q = self.generator.sample(stop - start, temperature, generator=self.rng)
        else:                                              # more ranks than draws: an empty slice of the right shape
            x, log_q = self.generator.sample(1, self.reference_temperature, generator=torch.Generator())
            x, log_q = x[:0], log_q[:0]
        self._skip_draws(n - stop)
        return x, log_q

    def _skip_draws(self, n: int) -> None:
        """Advance the random stream past ``n`` flow samples (``[n, d]`` uniforms in the model's dtype)."""
        if n > 0:
            torch.rand(n, self.generator.flow.dim, generator=self.rng, dtype=self.generator.dtype)

    def _boundary_loss(self, terms: dict[str, float]) -> Tensor:
        config = self.config
        t0 = self.reference_temperature
        loss = torch.zeros((), dtype=self.generator.dtype, device=self.device)
        if config.mode == "nll" or (config.nll_weight > 0 and self.train_data is not None):
            batch = self.train_data[self._batch_indices(config.batch_size)]
            nll = self._mean(-self.generator.log_prob(batch, t0), config.batch_size)
            terms["nll"] = float(nll.detach())
            loss = loss + (1.0 if config.mode == "nll" else config.nll_weight) * nll
        if config.mode == "trade" and config.kl_weight > 0:
            x, log_q = self._sample(config.kl_batch_size, t0)
            u = reduced_energy(self.energy(x).to(log_q.dtype), t0, config.energy_cap)
            kl = self._mean(log_q + u, config.kl_batch_size)
            terms["kl"] = float(kl.detach())
            loss = loss + config.kl_weight * kl
        terms["boundary"] = float(loss.detach())
        return loss

    def _residual_points(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Temperatures ``[n]`` K, detached points ``[n, ...]``, their energies ``[n]`` kJ/mol and group ids ``[n]``.

        With expectation ``"grid"`` every point has its own temperature (group ids are unused); with
        ``"centred"`` :attr:`n_centres` temperatures are drawn and the batch (model, reference and data points, in
        that order) is dealt out among them in turn, so every group mixes all kinds of points.
        """
        config = self.config
        n = config.trade_batch_size
        shares = [config.residual_from_model, config.residual_from_reference,
                  config.residual_from_data if self.train_data is not None else 0.0]
        total = sum(shares)
        n_model = round(n * shares[0] / total)
        n_data = round(n * shares[2] / total)
        n_reference = n - n_model - n_data
        parts = ((0, n_model), (n_model, n - n_data), (n - n_data, n))   # model, reference and data points
        if config.expectation == "centred":
            levels = sample_log_uniform(self.n_centres, config.temperature_min, config.temperature_max,
                                        generator=self.rng)
            groups = torch.arange(n) % self.n_centres
            drawn = levels[groups]
        else:
            drawn = sample_log_uniform(n, config.temperature_min, config.temperature_max, generator=self.rng)
            groups = torch.zeros(n, dtype=torch.long)
        temperature = torch.cat([drawn[a:b][slice(*self._share(b - a))] for a, b in parts])  # this rank's slices
        group = torch.cat([groups[a:b][slice(*self._share(b - a))] for a, b in parts])
        points, energies = [], []
        with torch.no_grad():
            for count, at in ((n_model, drawn[:n_model]), (n_reference, self.reference_temperature)):
                if count > 0:
                    x, _ = self._sample(count, at)
                    points.append(x)
                    energies.append(self.energy(x).to(torch.float64) if x.shape[0] else
                                    torch.zeros(0, dtype=torch.float64, device=x.device))
            if n_data > 0:
                index = self._batch_indices(n_data)
                points.append(self.train_data[index])
                energies.append(self._data_energy[index])
        return temperature.to(self.device), torch.cat(points).detach(), torch.cat(energies), group.to(self.device)

    @property
    def n_centres(self) -> int:
        """Temperatures per step of the centred residual: trade_temperatures, at most trade_batch_size / 2."""
        return max(1, min(self.config.trade_temperatures, self.config.trade_batch_size // 2))

    def _trade_loss(self, terms: dict[str, float]) -> Tensor:
        config = self.config
        temperature, x, energy, group = self._residual_points()
        cap = config.energy_cap if config.trade_energy_cap is None else config.trade_energy_cap
        if config.expectation == "centred":
            residual, _ = centred_trade_residual(
                self.generator.log_prob, x, temperature, energy, group, self.n_centres, cap,
                None if self.distributed is None else self.distributed.all_reduce)
        else:
            mean_energy = self.grid.mean_energy_at(temperature.cpu()).to(self.device)
            residual = trade_residual(self.generator.log_prob, x, temperature, energy, mean_energy, cap)
        losses = huber(residual, config.huber_delta)
        weights = self.grid.causality_weight_at(temperature.cpu(), config.causality_epsilon)
        loss = self._mean(weights.to(losses) * losses, config.trade_batch_size)
        if self._everywhere(bool(torch.all(torch.isfinite(losses)))):
            self.grid.update_losses(temperature.cpu(), losses.cpu())
        terms["trade"] = float(loss.detach())
        return loss

    def _range_kl_loss(self, terms: dict[str, float]) -> Tensor:
        """Reverse KL ``E_q[log q + u_T]`` averaged over kl_batch_size temperatures drawn log-uniformly over the
        trained range (the constant ``-log Z(T)`` of each T does not reach the gradient)."""
        config = self.config
        n = config.kl_batch_size
        temperature = sample_log_uniform(n, *self._span(config.kl_range_span), generator=self.rng)
        x, log_q = self._sample(n, temperature)
        local = temperature[slice(*self._share(n))].to(device=self.device, dtype=log_q.dtype)
        u = reduced_energy(self.energy(x).to(log_q.dtype), local, config.energy_cap)
        kl = self._mean(log_q + u, n)
        terms["kl_range"] = float(kl.detach())
        return kl

    def _reweighted_nll_loss(self, terms: dict[str, float]) -> Tensor:
        """NLL at T of batch_size T0 frames drawn with probabilities ∝ exp(−(β − β0) U) over the whole training
        set, in groups that share a temperature T drawn log-uniformly over ``reweighted_nll_span`` (TrainConfig)."""
        config = self.config
        n_groups = max(1, min(config.trade_temperatures, config.batch_size // 2))
        per_group = config.batch_size // n_groups
        n = n_groups * per_group
        levels = sample_log_uniform(n_groups, *self._span(config.reweighted_nll_span), generator=self.rng)
        delta_beta = 1.0 / (KB * levels.to(torch.float64)) - 1.0 / (KB * self.reference_temperature)
        log_w = -delta_beta[:, None] * self._data_energy_cpu[None, :]
        probabilities = torch.softmax(log_w, dim=1)
        index = torch.multinomial(probabilities, per_group, replacement=True, generator=self.rng).reshape(n)
        mine = slice(*self._share(n))
        temperature = levels.repeat_interleave(per_group)[mine].to(device=self.device, dtype=self.generator.dtype)
        log_q = self.generator.log_prob(self.train_data[index[mine].to(self.device)], temperature)
        loss = self._mean(-log_q, n)
        terms["reweighted_nll"] = float(loss.detach())
        return loss

    def _span(self, span: list[float] | None) -> tuple[float, float]:
        """``(low, high)`` K: ``span``, or the trained range when it is None."""
        if span is None:
            return self.config.temperature_min, self.config.temperature_max
        return float(span[0]), float(span[1])

    def _tilt_loss(self, terms: dict[str, float]) -> Tensor:
        """Forward KL to the tilt of the model at T0 (TrainConfig.tilt_weight): target q(x | T0) exp(−(β − β0) U)."""
        return self._weighted_nll(terms, "tilt", self.config.tilt_span, tilted=True)

    def _forward_range_kl_loss(self, terms: dict[str, float]) -> Tensor:
        """Forward KL to the Boltzmann density (TrainConfig.fkl_range_weight): target exp(−u_T(x))."""
        return self._weighted_nll(terms, "fkl_range", self.config.fkl_range_span, tilted=False)

    def _weighted_nll(self, terms: dict[str, float], name: str, span: list[float] | None, tilted: bool) -> Tensor:
        """``−Σ_groups Σ_i w_i log q(x_i | T_g) / n_groups``: x_i model samples at the group's temperature T_g
        (drawn log-uniformly over ``span``), w_i ∝ p̃(x_i) / q(x_i | T_g) normalised within the group, with
        p̃ = q(x | T0) exp(−(β − β0) U) when ``tilted`` (the tilt uses the capped reduced energy:
        −(β − β0) U = −u_T (1 − T / T0)), else exp(−u_T)."""
        config = self.config
        n = config.kl_batch_size
        n_groups = max(1, min(config.trade_temperatures, n // 2))
        levels = sample_log_uniform(n_groups, *self._span(span), generator=self.rng)
        groups = torch.arange(n) % n_groups
        with torch.no_grad():
            x, log_q_sampled = self._sample(n, levels[groups])
        mine = slice(*self._share(n))
        temperature = levels[groups][mine].to(device=self.device, dtype=log_q_sampled.dtype)
        group = groups[mine].to(self.device)
        cap = config.energy_cap if config.trade_energy_cap is None else config.trade_energy_cap
        u = reduced_energy(self.energy(x).to(log_q_sampled.dtype), temperature, cap)
        if tilted:
            with torch.no_grad():
                log_q0 = self.generator.log_prob(x, self.reference_temperature)
            log_w = log_q0 - u * (1.0 - temperature / self.reference_temperature) - log_q_sampled
        else:
            log_w = -u - log_q_sampled
        weights = group_softmax(log_w, group, n_groups,
                                None if self.distributed is None else self.distributed.all_reduce)
        log_q = self.generator.log_prob(x, temperature)
        world = 1 if self.distributed is None else self.distributed.world_size   # gradients are averaged over ranks
        loss = -world * torch.sum(weights.to(log_q) * log_q) / n_groups
        terms[name] = float(loss.detach())
        return loss

    # ------------------------------------------------------------------------------------------- loop
    def trade_factor(self, step: int) -> float:
        """Current TRADE weight: trade_weight × linear ramp (0 in mode nll)."""
        if self.config.mode != "trade":
            return 0.0
        return self.config.trade_weight * ramp(step, self.config.trade_start, self.config.trade_ramp)

    def _refresh_due(self) -> bool:
        """Whether the grid needs fresh estimates now: always before its first use as the target (mode grid),
        then every ``grid_refresh_every`` steps (never when that is 0)."""
        every = self.config.grid_refresh_every
        if self.config.expectation == "grid" and not self.grid.ready:
            return True
        return every > 0 and (self.last_refresh is None or self.step - self.last_refresh >= every)

    def refresh_grid(self) -> None:
        """Re-estimate E[U] and the ESS at every grid node from fresh model samples."""
        start = time.perf_counter()
        self.generator.eval()
        self.grid.refresh(self._sample, self.energy, self.config.grid_samples, self.config.energy_cap)
        self.generator.train()
        self.last_refresh = self.step
        self.refresh_seconds += time.perf_counter() - start
        self.refreshes += 1
        lowest = float(self.grid.ess.min())
        if lowest > self.best_ess:                       # the same on every rank: the grid pools all ranks' samples
            self.best_ess = lowest
            if self.out is not None and self.is_main:
                self.save_checkpoint(self.out / BEST_DIR / CHECKPOINT_NAME)

    def train_step(self) -> dict[str, float]:
        """One optimiser step (or a counted skip); returns the loss terms as floats."""
        config = self.config
        terms: dict[str, float] = {}
        factor = self.trade_factor(self.step)
        growing = ramp(self.step, config.trade_start, config.trade_ramp) if config.mode == "trade" else 0.0
        transferring = growing > 0 and config.acts_away_from_t0
        if transferring and self._refresh_due():         # not in boundary-only runs; ESS and best/ for the rest
            self.refresh_grid()
        for group in self.optimizer.param_groups:
            group["lr"] = config.learning_rate * _lr_factor(config, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._boundary_loss(terms)
        if factor > 0:
            loss = loss + factor * self._trade_loss(terms)
        if growing > 0 and config.kl_range_weight > 0:
            loss = loss + growing * config.kl_range_weight * self._range_kl_loss(terms)
        if growing > 0 and config.tilt_weight > 0:
            loss = loss + growing * config.tilt_weight * self._tilt_loss(terms)
        if growing > 0 and config.fkl_range_weight > 0:
            loss = loss + growing * config.fkl_range_weight * self._forward_range_kl_loss(terms)
        if growing > 0 and config.reweighted_nll_weight > 0:
            loss = loss + growing * config.reweighted_nll_weight * self._reweighted_nll_loss(terms)
        terms["loss"] = float(loss.detach())
        finite = self._everywhere(bool(torch.isfinite(loss)))
        if finite:
            if loss.requires_grad:                      # not when every term is off (a frozen boundary, no TRADE yet)
                loss.backward()
            for parameter, mask in self.gradient_masks:
                if parameter.grad is not None and mask is not None:
                    parameter.grad.mul_(mask)
            if self.distributed is not None:
                self.distributed.average_gradients(self.generator.parameters())
            norm = torch.nn.utils.clip_grad_norm_(self.generator.parameters(), config.grad_clip)
            finite = bool(torch.isfinite(norm))
        if finite:
            self.optimizer.step()
            self._consecutive_skips = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self._consecutive_skips += 1
            if self._consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                raise InputError(f"training diverged: {MAX_CONSECUTIVE_SKIPS} consecutive steps had a non-finite "
                                 "loss or gradient; resume from the last checkpoint with a lower learning_rate")
        terms["skipped"] = float(not finite)
        self.step += 1
        return terms if self.distributed is None else self.distributed.mean_terms(terms)

    def _everywhere(self, flag: bool) -> bool:
        """``flag`` on every rank (so that all ranks take the same branch and reach the same collectives)."""
        return flag if self.distributed is None else self.distributed.all_true(flag)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation NLL at T0 on held-out frames (mean −log q, nats) and, with a potential, the Kish ESS at T0 of
        ``ess_samples`` model samples."""
        self.generator.eval()
        report: dict[str, float] = {}
        if self.validation_data is not None:
            nll = torch.cat([-self.generator.log_prob(part, self.reference_temperature)
                             for part in torch.split(self.validation_data, 4096)])
            report["val_nll"] = float(nll.mean())
        if self.potential is not None and self.config.ess_samples > 0:
            rng = torch.Generator().manual_seed(self.config.seed + self.step)  # leaves the training draws alone
            x, log_q = self.generator.sample(self.config.ess_samples, self.reference_temperature, generator=rng)
            u = reduced_energy(self.energy(x).to(torch.float64), self.reference_temperature, self.config.energy_cap)
            _, ess = importance_estimate(u, u, log_q.to(torch.float64))
            report["val_ess"] = float(ess)                # Kish ESS at T0 (grid ESS: "ess<T>")
        self.generator.train()
        return report

    def _progress_temperatures(self) -> list[float]:
        if self.config.progress_temperatures:
            return list(self.config.progress_temperatures)
        return [self.config.temperature_min, self.reference_temperature, self.config.temperature_max]

    def grid_report(self) -> dict[str, float]:
        """ESS (fraction) of the last refresh at the nodes nearest the progress temperatures."""
        if self.grid is None or self.last_refresh is None:
            return {}
        temperatures = torch.tensor(self._progress_temperatures(), dtype=torch.float64)
        index = self.grid.nearest(temperatures)
        return {f"ess{float(self.grid.temperatures[k]):.0f}": float(self.grid.ess[k]) for k in index.tolist()}

    def run(self) -> dict[str, Any]:
        """Train until ``config.steps``; checkpoints on the way and at the end; returns the summary."""
        from tqdm.auto import tqdm

        config = self.config
        self.generator.train()
        start = time.perf_counter()
        start_step = self.step
        bar = tqdm(total=config.steps, initial=self.step, disable=not (config.progress and self.is_main) or None,
                   desc=config.mode, dynamic_ncols=True)
        shown: dict[str, float] = {}
        try:
            while self.step < config.steps:
                terms = self.train_step()
                if self.is_main and (self.step % config.validate_every == 0 or self.step == config.steps):
                    shown.update(self.validate())
                    shown.update(self.grid_report())
                    self.history.append({"step": self.step, **terms, **shown})
                if self.out is not None and self.is_main and (self.step % config.checkpoint_every == 0
                                                              or self.step == config.steps):
                    self.save_checkpoint()
                bar.update(1)
                bar.set_postfix(_postfix(terms, shown), refresh=False)
        finally:
            bar.close()
        elapsed = time.perf_counter() - start
        summary = self.summary(seconds=elapsed, steps_run=self.step - start_step)
        if self.distributed is not None:
            summary["processes"] = self.distributed.world_size
            summary["energy_evaluations_all_ranks"] = int(self.distributed.all_reduce(
                torch.tensor([float(self.energy_evaluations)], dtype=torch.float64)).item())
        if self.out is not None and self.is_main:
            write_json_atomic(self.out / "summary.json", summary)
        return summary

    def summary(self, *, seconds: float, steps_run: int) -> dict[str, Any]:
        """JSON-able end-of-run report (also written to ``<out>/summary.json``)."""
        summary: dict[str, Any] = {
            "mode": self.config.mode,
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "seconds": seconds,
            "seconds_per_step": seconds / steps_run if steps_run else None,
            "seconds_per_refresh": self.refresh_seconds / self.refreshes if self.refreshes else None,
            "energy_evaluations": self.energy_evaluations,
            "reference_temperature": self.reference_temperature,
            "system": self.system.name,
            "last": self.history[-1] if self.history else {},
        }
        if self.grid is not None and self.grid.ready:
            summary["grid"] = {
                "temperatures": self.grid.temperatures.tolist(),
                "mean_energy": self.grid.mean_energy.tolist(),
                "ess": self.grid.ess.tolist(),
                "loss": self.grid.loss.tolist(),
                "log_Z_minus_log_Z0": self.grid.free_energy_curve().tolist(),
            }
        return summary

    # ------------------------------------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        """The checkpoint payload (see the module docs)."""
        generator_config = self.generator.config()
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "energy_evaluations": self.energy_evaluations,
            "last_refresh": self.last_refresh,
            "generator_config": generator_config,
            "model_state": {k: v.detach().cpu() for k, v in self.generator.state_dict().items()},
            "normalisation": generator_config["coordinates"],
            "optimizer_state": self.optimizer.state_dict(),
            "rng_state": self.rng.get_state(),
            "torch_rng_state": torch.get_rng_state(),
            "grid_state": None if self.grid is None else self.grid.state_dict(),
            "config": self.config.to_dict(),
            "system": dataclasses.asdict(self.system),
            "history": self.history,
            "best_ess": self.best_ess,
        }

    def save_checkpoint(self, path: Path | None = None) -> Path:
        """Write the checkpoint atomically to ``path`` (default ``<out>/checkpoint.pt``); returns its path."""
        if self.out is None:
            raise InputError("this trainer has no output directory; pass out=... to save checkpoints")
        path = self.out / CHECKPOINT_NAME if path is None else path
        with atomic_write_path(path) as temp:
            torch.save(self.state(), temp)
        return path

    def load_state(self, checkpoint: dict[str, Any], where: str = "checkpoint") -> None:
        """Continue from a checkpoint payload of the same system and compatible config."""
        SystemRecord(**checkpoint["system"]).check_same(self.system, where)
        saved = _saved_config(checkpoint, where).to_dict()
        current = self.config.to_dict()
        changed = sorted(k for k in current if k not in _RESUME_MUTABLE and saved.get(k) != current[k])
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
            raise InputError(f"{where} was written with other settings ({details}); resume with the same settings "
                             f"(only {', '.join(sorted(_RESUME_MUTABLE))} may change) or start a new run")
        self.generator.load_state_dict(checkpoint["model_state"])
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        self.rng.set_state(checkpoint["rng_state"])
        torch.set_rng_state(checkpoint["torch_rng_state"])
        if self.grid is not None:
            self.grid.load_state_dict(checkpoint["grid_state"])
        self.step = int(checkpoint["step"])
        self.skipped_steps = int(checkpoint["skipped_steps"])
        self.energy_evaluations = int(checkpoint["energy_evaluations"])
        self.last_refresh = checkpoint["last_refresh"]
        self.history = list(checkpoint["history"])
        self.best_ess = float(checkpoint.get("best_ess", -1.0))


def _postfix(terms: dict[str, float], shown: dict[str, float]) -> dict[str, str]:
    postfix = {key: f"{terms[key]:.3g}" for key in ("boundary", "trade") if key in terms}
    for key, value in shown.items():
        postfix[key] = f"{100 * value:.1f}%" if key.startswith(("ess", "val_ess")) else f"{value:.3g}"
    return postfix


# ----------------------------------------------------------------------------------------------------- CLI


def register_cli(subparsers: Any) -> None:
    """Add ``trade-md train``."""
    parser = subparsers.add_parser(
        "train", help="train the generator: maximum likelihood at T0 (nll) or TRADE over a temperature range",
        description="Train a temperature-conditioned generator on a `trade-md md` dataset. Settings come from "
                    "--config (YAML of TrainConfig fields, see trade_md.train.TrainConfig); the flags override it.")
    parser.add_argument("--mode", choices=("nll", "trade"), help="training mode (default: the config's, else nll)")
    parser.add_argument("--config", help="YAML file of TrainConfig fields")
    parser.add_argument("--data", help="directory of a `trade-md md` dataset at T0")
    parser.add_argument("--temperature", type=float, help="T0 in K (default: the dataset's temperature)")
    parser.add_argument("--out", help="run directory for checkpoint.pt and summary.json")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--steps", type=int, help="total optimiser steps")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="torch device")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_main, command="train")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a `trade-md train` command: the --config file (or defaults) overridden by the flags."""
    values = TrainConfig.from_yaml(args.config).to_dict() if args.config else {}
    overrides = {"mode": args.mode, "data": args.data, "reference_temperature": args.temperature, "out": args.out,
                 "steps": args.steps, "seed": args.seed, "device": args.device}
    values.update({key: value for key, value in overrides.items() if value is not None})
    if args.no_progress:
        values["progress"] = False
    config = TrainConfig.from_dict(values, source=args.config or "command line")
    if config.out is None:
        raise InputError("no run directory: pass --out DIR (or set out: in the config file)")
    if config.data is None:
        raise InputError("no data: pass --data DIR of a `trade-md md` dataset at T0 (or set data: in the config)")
    return config


def _main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    distributed = init_from_environment(config.device)
    try:
        status = _train(args, config, distributed)
    except BaseException:
        if distributed is not None:
            distributed.close(wait=False)
        raise
    if distributed is not None:
        distributed.close()
    return status


def _train(args: argparse.Namespace, config: TrainConfig, distributed: DistributedContext | None) -> int:
    """`trade-md train` on this process (one of several under torchrun: rank 0 prints and writes)."""
    from trade_md.energy import EnergyBridge
    from trade_md.md import load_dataset

    dataset = load_dataset(config.data)
    if config.reference_temperature is not None and not math.isclose(
        config.reference_temperature, dataset.temperature, rel_tol=1e-6
    ):
        raise InputError(f"--temperature {config.reference_temperature} K differs from the dataset's "
                         f"{dataset.temperature} K; train at the temperature the data were sampled at")
    config = dataclasses.replace(config, reference_temperature=float(dataset.temperature))
    config.validate()
    if config.mode == "trade" and not config.temperature_min <= config.reference_temperature <= config.temperature_max:
        raise InputError(f"T0 = {config.reference_temperature} K lies outside temperature_min..temperature_max = "
                         f"{config.temperature_min}..{config.temperature_max} K; widen the range")
    out = Path(config.out)
    record = SystemRecord.of(dataset.system)
    checkpoint = None
    if args.resume:
        checkpoint = read_checkpoint(out)
        SystemRecord(**checkpoint["system"]).check_same(record, f"checkpoint {out}")
    elif (out / CHECKPOINT_NAME).exists():
        raise InputError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
    positions = torch.as_tensor(dataset.positions, dtype=torch.float64)
    generator = generator_for(dataset, config, checkpoint)
    with EnergyBridge(dataset.system, n_workers=config.energy_workers, platform=config.energy_platform) as bridge:
        trainer = Trainer(generator, config, record, potential=bridge.potential, data=positions, out=out,
                          distributed=distributed)
        if checkpoint is not None:
            trainer.load_state(checkpoint, f"checkpoint {out}")
        summary = trainer.run()
    if not trainer.is_main:
        return 0
    last = summary["last"]
    shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.startswith(("val", "ess", "boundary", "trade")))
    per_step = summary["seconds_per_step"]
    print(f"wrote {out / CHECKPOINT_NAME}: {summary['step']} steps ({summary['skipped_steps']} skipped), "
          f"{'no new steps' if per_step is None else f'{per_step * 1000:.1f} ms/step'}, "
          f"{summary.get('energy_evaluations_all_ranks', summary['energy_evaluations'])} energy evaluations; "
          f"{shown}")
    return 0
