"""The checkpoint file: a trained generator's weights, its config, and the identity of its system.

A run directory holds ``checkpoint.pt`` (``torch.save`` of a dict, format ``trade-md-checkpoint-1``, written
atomically by the trainer). Keys every reader may rely on:

- ``format``: :data:`CHECKPOINT_FORMAT`; ``generator_config`` and ``model_state``: the model
  (:meth:`trade_md.generator.Generator.from_config`); ``system``: a :class:`SystemRecord` as a dict;
- ``config``: the training config as a dict. Checkpoints written before the restructure hold the flat
  ``TrainConfig`` (``mode``, ``temperature_min``, ``temperature_max``, ``steps``, ...); newer ones may also hold
  ``trained_range`` (``[T_min, T_max]`` K or None) and ``steps``. :func:`trained_range` reads both.
- training state (``step``, ``optimizer_state``, RNG states, ``grid_state``, ``history``, ...): only the trainer
  reads these; an exported model (e.g. a shipped one) may lack the optimiser state.

Loading a model for sampling (:func:`load_generator`) imports no training code.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trade_md.errors import InputError, SystemMismatchError
from trade_md.generator import Generator
from trade_md.systems import MolecularSystem, resolve_model
from trade_md.toys import ToySystem, toy_from_spec

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "SystemRecord", "TrainedModel", "load_generator",
           "read_checkpoint", "trained_range"]

CHECKPOINT_NAME = "checkpoint.pt"
"""File name of the checkpoint inside a run directory."""
CHECKPOINT_FORMAT = "trade-md-checkpoint-1"


@dataclass(frozen=True)
class SystemRecord:
    """Identity of the system a model is trained for, stored in checkpoints (no physics).

    kind: ``"molecule"`` (``MolecularSystem``) or ``"toy"`` (:mod:`trade_md.toys`); name: for messages;
    serialized: ``MolecularSystem.serialize()`` or the toy's spec; fingerprint: compared on load.
    """

    kind: str
    name: str
    serialized: dict[str, Any]
    fingerprint: dict[str, Any]

    @classmethod
    def of(cls, system: Any) -> SystemRecord:
        """The record of a ``MolecularSystem`` or a ``ToySystem``."""
        if isinstance(system, ToySystem):
            return cls("toy", system.name, system.spec(), system.fingerprint())
        return cls("molecule", system.name, system.serialize(), system.fingerprint())

    def build(self) -> Any:
        """Rebuild the ``MolecularSystem`` or ``ToySystem``."""
        if self.kind == "toy":
            return toy_from_spec(self.serialized)
        return MolecularSystem.deserialize(self.serialized)

    def check_same(self, other: SystemRecord, where: str) -> None:
        """Raise :class:`SystemMismatchError` naming both systems when the fingerprints differ."""
        if _canonical(self.fingerprint) != _canonical(other.fingerprint):
            mine, theirs = _describe(self), _describe(other)
            raise SystemMismatchError(f"{where} was trained for {mine}, but the given system is {theirs}; use the "
                                      "checkpoint with its own system, or train a new model in another directory")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _describe(record: SystemRecord) -> str:
    fp = record.fingerprint
    details = [f"{fp['n_atoms']} atoms"] if "n_atoms" in fp else []
    if fp.get("forcefield"):
        details.append("force field " + "+".join(fp["forcefield"]))
    if record.kind == "toy":
        details.append(f"parameters {fp.get('params')}")
    return f"{record.kind} {record.name!r}" + (f" ({', '.join(details)})" if details else "")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint from a run directory, the ``checkpoint.pt`` file itself, or the name of a built-in system
    that ships a trained generator (e.g. ``"alanine-dipeptide"``)."""
    file = resolve_model(path)
    if file.is_dir():
        file = file / CHECKPOINT_NAME
    if not file.is_file():
        raise InputError(f"no checkpoint at {file}; pass the --out directory of `trade-md train` or `trade-md run`, "
                         "or the name of a built-in system that ships a model")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as error:  # a damaged or foreign file
        raise InputError(f"{file} is not a readable trade-md checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{file} is not a {CHECKPOINT_FORMAT} checkpoint; it was written by another program")
    return checkpoint


def trained_range(checkpoint: dict[str, Any]) -> tuple[float, float] | None:
    """The temperature range (K) a checkpoint's model was trained over, or None for a model trained at T0 only."""
    config = checkpoint.get("config", {})
    if "trained_range" in checkpoint:
        span = checkpoint["trained_range"]
        return None if span is None else (float(span[0]), float(span[1]))
    if config.get("mode") == "trade" and config.get("temperature_min") is not None \
            and config.get("temperature_max") is not None:
        return float(config["temperature_min"]), float(config["temperature_max"])
    return None


@dataclass
class TrainedModel:
    """A trained generator ready for sampling: the model (eval mode), its system, and facts about its training.

    trained_range: (T_min, T_max) K or None (T0 only); steps: optimiser steps run; config: the stored training
    config as a plain dict (for reports; its layout depends on the trade-md version that wrote it).
    """

    generator: Generator
    system: Any
    trained_range: tuple[float, float] | None
    steps: int
    config: dict[str, Any]


def load_generator(path: str | Path, system: Any | None = None, *, device: str = "cpu") -> TrainedModel:
    """The trained model of a run directory or checkpoint file.

    system: optional system to check the checkpoint against (:class:`SystemMismatchError` if it differs).
    """
    checkpoint = read_checkpoint(path)
    record = SystemRecord(**checkpoint["system"])
    if system is not None:
        record.check_same(SystemRecord.of(system), f"checkpoint {path}")
    generator = Generator.from_config(checkpoint["generator_config"], checkpoint["model_state"]).to(device)
    generator.eval()
    config = dict(checkpoint.get("config", {}))
    steps = int(checkpoint.get("step", config.get("steps", 0)))
    return TrainedModel(generator, record.build(), trained_range(checkpoint), steps, config)
