"""Train a generator of a molecule on a ``trade-md md`` dataset: the Python API behind ``trade-md train``.

:func:`train` reads the dataset of ``config.data.path`` (its temperature is T0), builds the model
(:func:`generator_for`: a fresh flow, the weights of ``config.init_from``, or the checkpoint being resumed),
starts the system's energy workers and runs the :class:`~trade_md.trainer.Trainer`. Under ``torchrun`` it joins
the process group first and trains data-parallel (:mod:`trade_md.distributed`); rank 0 alone writes files.

>>> from trade_md.config import TrainConfig
>>> config = TrainConfig.from_dict({"base": "alanine-dipeptide/trade", "out": "runs/trade"})
>>> config.trained_range, config.active_objectives()[-1].name
((280.0, 1050.0), 'trade')
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trade_md.config import TrainConfig, config_from_checkpoint
from trade_md.distributed import init_from_environment
from trade_md.energy import EnergyBridge
from trade_md.errors import InputError
from trade_md.generator import ADDABLE_FLOW_PARTS, Generator, molecule_generator
from trade_md.formats.checkpoint import CHECKPOINT_NAME, SystemRecord, read_checkpoint
from trade_md.formats.dataset import Dataset, load_dataset
from trade_md.trainer import Trainer

__all__ = ["TrainingRun", "fresh_trainer", "generator_for", "train"]


@dataclass
class TrainingRun:
    """What :func:`train` did: ``summary`` (also ``<out>/summary.json``), the run directory, and whether this
    process is the one that reports (rank 0, or the only process)."""

    summary: dict[str, Any]
    out: Path
    is_main: bool


def train(config: TrainConfig, *, resume: bool = False) -> TrainingRun:
    """Train (or, with ``resume``, continue) the run ``config.out`` on the dataset ``config.data.path``."""
    if config.out is None:
        raise InputError("no run directory: pass --out DIR (or set out: in the config file)")
    if config.data.path is None:
        raise InputError("no data: pass --data DIR of a `trade-md md` dataset at T0 (or set data.path in the config)")
    distributed = init_from_environment(config.device)
    try:
        run = _train(config, resume, distributed)
    except BaseException:
        if distributed is not None:
            distributed.close(wait=False)
        raise
    if distributed is not None:
        distributed.close()
    return run


def _train(config: TrainConfig, resume: bool, distributed: Any) -> TrainingRun:
    dataset = load_dataset(config.data.path)
    reference = config.temperatures.reference
    if reference is not None and not math.isclose(reference, dataset.temperature, rel_tol=1e-6):
        raise InputError(f"--temperature {reference} K differs from the dataset's {dataset.temperature} K; train "
                         "at the temperature the data were sampled at")
    config = config.updated({"temperatures": {"reference": float(dataset.temperature)}})
    span = config.trained_range
    if span is not None and not span[0] <= dataset.temperature <= span[1]:
        raise InputError(f"T0 = {dataset.temperature} K lies outside temperatures.range = {span[0]}..{span[1]} K; "
                         "widen the range")
    out = Path(config.out)
    record = SystemRecord.of(dataset.system)
    checkpoint = None
    if resume:
        checkpoint = read_checkpoint(out)
        SystemRecord(**checkpoint["system"]).check_same(record, f"checkpoint {out}")
    elif (out / CHECKPOINT_NAME).exists():
        raise InputError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
    generator = generator_for(dataset, config, checkpoint)
    positions = torch.as_tensor(dataset.positions, dtype=torch.float64)
    with EnergyBridge(dataset.system, n_workers=config.energy.workers, platform=config.energy.platform) as bridge:
        trainer = Trainer(generator, config, record, potential=bridge.potential, data=positions, out=out,
                          distributed=distributed)
        if checkpoint is not None:
            trainer.load_state(checkpoint, f"checkpoint {out}")
        summary = trainer.run()
    return TrainingRun(summary, out, trainer.is_main)


@contextmanager
def fresh_trainer(config: TrainConfig, out: Path | None = None) -> Iterator[Trainer]:
    """A :class:`Trainer` of ``config``'s starting model (:func:`generator_for`, no checkpoint) on its dataset, one
    process, with the system's energy bridge open while the context lasts; ``out``: where it writes (None: nowhere)."""
    dataset = load_dataset(config.data.path)
    generator = generator_for(dataset, config)
    with EnergyBridge(dataset.system, platform=config.energy.platform) as bridge:
        yield Trainer(generator, config, SystemRecord.of(dataset.system), potential=bridge.potential,
                      data=torch.as_tensor(dataset.positions, dtype=torch.float64), out=out)


def generator_for(dataset: Dataset, config: TrainConfig, checkpoint: dict[str, Any] | None = None) -> Generator:
    """The molecule generator of a run: rebuilt from ``checkpoint`` when resuming, else the model of
    ``config.init_from`` (checked against the dataset's system, T0 and flow settings), else a fresh one whose
    internal-coordinate normalisation comes from the training frames of ``dataset`` (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    if checkpoint is not None:
        return Generator.from_config(checkpoint["generator_config"], checkpoint["model_state"])
    training, _ = config.data.split(dataset.positions)
    if config.init_from is not None:
        return _initial_generator(config, SystemRecord.of(dataset.system), training)
    if config.trainable == "temperature":
        raise InputError("trainable 'temperature' keeps the model at T0 as it starts; set init_from to a trained "
                         "boundary run (or use trainable 'all')")
    return molecule_generator(dataset.system, training, config.temperatures.reference, **config.flow)


def _initial_generator(config: TrainConfig, system: SystemRecord, training: Any) -> Generator:
    """The trained model of ``config.init_from`` as the starting point of a new run (its system, T0 and flow
    settings must be this run's). A run may add ``thermal_scaling`` to a model trained without it: it acts
    only away from T0, so the model is unchanged there; the scaling layer's centres and exponents come from
    ``training`` (``[n, atoms, 3]`` nm). A model that was trained at T0 alone starts with its context weights at
    zero: the same model at every T."""
    where = f"init_from {config.init_from}"
    start = read_checkpoint(config.init_from)
    SystemRecord(**start["system"]).check_same(system, where)
    saved = config_from_checkpoint(start, where)
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
    if not saved.acts_away_from_t0:
        generator.flow.reset_context_weights()       # never trained (context 0 at T0); older code drew them at random
    reference = config.temperatures.reference
    if reference is not None and not math.isclose(generator.reference_temperature, reference, rel_tol=1e-9):
        raise InputError(f"{where} was trained at T0 = {generator.reference_temperature} K, this run's T0 is "
                         f"{reference} K; start from a model of the same reference temperature")
    return generator
