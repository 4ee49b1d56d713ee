"""Test helper shared by test_report.py and test_notebook.py: a tiny TRADE model of alanine dipeptide.

Not a fixture module (tests/conftest.py is the lead's); the test files wrap these functions in module-scoped
fixtures. Everything is small enough to build in a few seconds on one CPU thread.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["TINY_TRAIN", "make_reference_with_frames", "make_tiny_dataset", "make_tiny_model"]

TINY_TRAIN: dict[str, object] = {
    "mode": "trade", "temperature_min": 300.0, "temperature_max": 1000.0, "steps": 6, "batch_size": 16,
    "kl_weight": 0.1, "kl_batch_size": 8, "trade_batch_size": 16, "trade_start": 2, "trade_ramp": 2,
    "grid_nodes": 4, "grid_samples": 32, "grid_refresh_every": 2, "checkpoint_every": 3, "validate_every": 3,
    "energy_platform": "Reference", "progress": False, "flow": {"n_layers": 2, "hidden": 16, "n_bins": 4},
}
"""TrainConfig fields of the tiny model (mode trade over 300-1000 K, T0 = 600 K, 6 steps)."""


def make_tiny_dataset(directory: Path) -> Path:
    """A 5 ps MD set of alanine dipeptide at 600 K (100 frames) in ``directory``; returns it."""
    from trade_md.convergence import ConvergenceWarning
    from trade_md.md import run_md
    from trade_md.systems import load_system

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        run_md(load_system("alanine-dipeptide"), 600.0, directory, ns=0.005, replicas=1, seed=1,
               equilibration_ps=1.0, frame_interval_ps=0.05, platform="Reference", progress=False)
    return directory


def make_tiny_model(directory: Path) -> Path:
    """Train the tiny model on a fresh tiny dataset; returns the run directory (``directory / "model"``)."""
    from trade_md.energy import EnergyBridge
    from trade_md.formats.checkpoint import SystemRecord
    from trade_md.formats.dataset import load_dataset
    from trade_md.generator import molecule_generator
    from trade_md.config import TrainConfig
    from trade_md.trainer import Trainer

    dataset = load_dataset(make_tiny_dataset(directory / "data"))
    out = directory / "model"
    config = TrainConfig.from_dict({**TINY_TRAIN, "data": str(dataset.path), "out": str(out),
                                    "reference_temperature": dataset.temperature})
    torch.manual_seed(0)
    training, _ = config.data.split(dataset.positions)
    generator = molecule_generator(dataset.system, training, dataset.temperature, **config.flow)
    with EnergyBridge(dataset.system, platform="Reference") as bridge:
        Trainer(generator, config, SystemRecord.of(dataset.system), potential=bridge.potential,
                data=torch.as_tensor(dataset.positions), out=out).run()
    return out


def make_reference_with_frames(summary: Path, dataset_dir: Path, directory: Path) -> Path:
    """A reference directory: ``summary`` copied to ``directory/summary.json`` plus ``frames/`` made from the MD
    frames of ``dataset_dir`` (equal weights at every summary temperature). Returns ``directory``."""
    import json

    import mdtraj

    from trade_md.formats.dataset import load_dataset

    dataset = load_dataset(dataset_dir)
    frames = directory / "frames"
    frames.mkdir(parents=True)
    shutil.copy(summary, directory / "summary.json")
    topology = mdtraj.Topology.from_openmm(dataset.system.topology)
    trajectory = mdtraj.Trajectory(dataset.positions.astype(np.float32), topology)
    trajectory[0].save_pdb(str(frames / "topology.pdb"))
    trajectory.save_dcd(str(frames / "frames_all.dcd"))
    temperatures = np.asarray(json.loads(summary.read_text())["temperatures"])
    n = dataset.positions.shape[0]
    np.savez(frames / "weights.npz", temperatures=temperatures,
             log_weights=np.full((n, temperatures.size), -np.log(n)), energies=dataset.energies,
             state=np.zeros(n, dtype=np.int64))
    return directory
